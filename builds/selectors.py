"""Reads of the builds app, always scoped to the teams a user belongs to.

A flavour or build of another team is simply absent from these querysets, so views answer 404
for it exactly as for an ID that does not exist.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Case, Count, IntegerField, OuterRef, QuerySet, Subquery, When
from django.db.models.functions import Coalesce

from builds.models import Build, BuildLogLine, BuildState, Flavour, Webhook
from catalog.models import Role, Team
from catalog.permissions import teams_of


def teams_where_user_is(*, user: Any, at_least: str = Role.VIEWER) -> QuerySet[Team]:
    """Teams in which ``user`` holds at least the role ``at_least`` (superusers: every team)."""
    teams = teams_of(user)
    if getattr(user, "is_superuser", False):
        return teams
    roles = [role for role in Role.values if Role(role).at_least(at_least)]
    return teams.filter(memberships__user=user, memberships__role__in=roles).distinct()


def flavours_visible_to(*, user: Any) -> QuerySet[Flavour]:
    return Flavour.objects.filter(team__in=teams_of(user)).select_related("team", "created_by")


def builds_visible_to(*, user: Any) -> QuerySet[Build]:
    return Build.objects.filter(flavour__team__in=teams_of(user)).select_related(
        "flavour", "flavour__team", "created_by"
    )


def webhooks_visible_to(*, user: Any) -> QuerySet[Webhook]:
    return Webhook.objects.filter(team__in=teams_of(user)).select_related("team")


def build_queue_position(*, build: Build) -> int | None:
    """1 for the next queued build to start; None once the build has started or ended."""
    if build.state != BuildState.QUEUED:
        return None
    ahead = getattr(build, "queued_ahead", None)  # builds_with_queue_position: no query per row
    if ahead is None:
        ahead = Build.objects.filter(state=BuildState.QUEUED, created_at__lt=build.created_at).count()
    return int(ahead) + 1


def builds_with_queue_position(builds: QuerySet[Build]) -> QuerySet[Build]:
    """``builds``, each queued one with ``queued_ahead`` counted in the same query (lists)."""
    ahead = (
        Build.objects.filter(state=BuildState.QUEUED, created_at__lt=OuterRef("created_at"))
        .order_by()
        .values("state")
        .annotate(n=Count("pk"))
        .values("n")
    )
    counted = Coalesce(Subquery(ahead, output_field=IntegerField()), 0)
    return builds.annotate(
        queued_ahead=Case(
            When(state=BuildState.QUEUED, then=counted), default=None, output_field=IntegerField()
        )
    )


def build_log_lines(*, build: Build, after: int = 0, limit: int = 1000) -> QuerySet[BuildLogLine]:
    """Log lines with ``seq > after``, oldest first: what a live tail has not seen yet."""
    return BuildLogLine.objects.filter(build=build, seq__gt=after).order_by("seq")[:limit]


def flavour_latest_build(*, flavour: Flavour, state: str | None = None) -> Build | None:
    builds = Build.objects.filter(flavour=flavour)
    if state:
        builds = builds.filter(state=state)
    return builds.order_by("-created_at").first()
