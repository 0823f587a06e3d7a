"""Onboarding from the command line: a first admin gets a team to build in."""

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from catalog.models import Membership, Role, Team

pytestmark = pytest.mark.django_db


def test_creates_the_team_and_sets_the_role_idempotently(capsys):
    User.objects.create_user("ada", password="pw-unused-123")
    call_command("team_member", "platform", "ada", "--team-name", "Platform")
    assert "ada is admin of team platform" in capsys.readouterr().out
    call_command("team_member", "platform", "ada", "--role", "builder")
    team = Team.objects.get(slug="platform")
    assert team.name == "Platform"
    assert Membership.objects.get(team=team).role == Role.BUILDER
    assert Team.objects.count() == 1


def test_unknown_user_is_a_clear_error():
    with pytest.raises(CommandError, match="No user called 'ghost'"):
        call_command("team_member", "platform", "ghost")
    assert not Team.objects.exists()
