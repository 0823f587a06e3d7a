"""The first hour of a team: the steps from a fresh install to a running flavour, each ticked from
the database (never from a flag someone must remember to set)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.urls import reverse

from builds.models import BuildState
from builds.selectors import builds_visible_to, flavours_visible_to
from catalog.models import Membership, Role, VersionStatus
from catalog.permissions import has_team_role, is_global_curator, teams_of, versions_for_user


@dataclass(frozen=True)
class ChecklistStep:
    key: str
    title: str
    done: bool
    how: str  # what to do, and who can
    link: str = ""
    link_text: str = ""


def first_run_steps(user: Any) -> list[ChecklistStep]:
    """Create a team, approve versions, compose a flavour, build it: where each is done."""
    memberships = list(Membership.objects.filter(user=user).select_related("team").order_by("team__name"))
    teams = list(teams_of(user))
    first_team = memberships[0].team if memberships else (teams[0] if teams else None)
    approved = versions_for_user(user).filter(status=VersionStatus.APPROVED, deprecated=False).exists()
    flavours = flavours_visible_to(user=user)
    succeeded = builds_visible_to(user=user).filter(state=BuildState.SUCCEEDED).exists()
    curates_teams = any(has_team_role(user, t, Role.CURATOR) for t in teams)
    can_build = any(has_team_role(user, t, Role.BUILDER) for t in teams)

    if first_team is not None:
        team_step = ChecklistStep(
            "team",
            "Be in a team",
            True,
            f"You are in team {first_team.name}; its admins add members and change roles on the team page.",
            reverse("builds:team-detail", args=[first_team.slug]),
            "Team page",
        )
    elif user.is_staff:
        team_step = ChecklistStep(
            "team",
            "Create a team",
            False,
            "Create a team in the admin site and add yourself as its admin (or run "
            "manage.py team_member SLUG USERNAME).",
            reverse("admin:catalog_team_add"),
            "Add a team",
        )
    else:
        team_step = ChecklistStep(
            "team",
            "Join a team",
            False,
            "An administrator adds you to a team (admin site, or manage.py team_member SLUG "
            f"{user.get_username()}); until then you can browse the catalog.",
        )
    if is_global_curator(user):
        approve_how = "Approve a version on its catalog page: the worker fetches and pins each upstream file."
    elif curates_teams:
        approve_how = (
            "You approve your team's own extensions on their catalog pages; Django staff approve the "
            "built-in catalog (docker, kubernetes, the Wasm runtimes...): ask one of them."
        )
    else:
        approve_how = (
            "Built-in versions start as proposed. Django staff approve the built-in catalog and team "
            "curators their team's own extensions; ask one of them."
        )
    steps = [
        team_step,
        ChecklistStep(
            "approve",
            "Approve extension versions",
            approved,
            approve_how,
            f"{reverse('catalog:extension-list')}?status=proposed",
            "Proposed versions",
        ),
        ChecklistStep(
            "compose",
            "Compose a flavour",
            flavours.exists(),
            "Pick an arch, approved extensions and options."
            + ("" if can_build else " Composing needs the builder role in a team."),
            reverse("builds:compose-target"),
            "Compose",
        ),
        ChecklistStep(
            "build",
            "Build it",
            succeeded,
            "Start a build on the flavour's page; its images, Butane config and sysupdate files are "
            "published when it succeeds.",
            reverse("builds:flavour-list"),
            "Your flavours",
        ),
    ]
    return steps
