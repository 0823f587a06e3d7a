"""``manage.py team_member SLUG USERNAME [--role ROLE] [--team-name NAME]``: onboarding without the admin."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog.errors import CatalogError
from catalog.models import Role
from catalog.services import team_member_set


class Command(BaseCommand):
    help = "Create a team if needed and give a user a role in it (viewer, builder, curator, admin)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="team slug, e.g. platform")
        parser.add_argument("username")
        parser.add_argument("--role", default=Role.ADMIN, choices=Role.values)
        parser.add_argument("--team-name", default="", help="display name when the team is created")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            membership = team_member_set(
                team_slug=options["team"],
                team_name=options["team_name"],
                username=options["username"],
                role=options["role"],
            )
        except CatalogError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{membership.user.username} is {membership.role} of team {membership.team.slug}")
