"""Who may see and do what: team-scoped querysets and role checks, shared by catalog and builds.

Rules (also in the README of the API):

- Visibility: a user sees the global catalog (``team is None``) and the private extensions of
  every team they are a member of. Superusers see everything. Anything else does not exist for
  them (404, never 403), in lists as well as on object fetches.
- Roles rank ``viewer < builder < curator < admin``; a role includes the rights of the ones
  before it. Team things: builders propose versions and add custom extensions; curators approve,
  reject and deprecate.
- The global catalog has no team, so Django staff act as its curators: staff (and superusers)
  approve, reject and deprecate built-in versions. Any builder of any team, and staff, may
  propose a new version of a built-in extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.models import Q, QuerySet
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from catalog.errors import CatalogForbidden, CatalogNotFound
from catalog.models import Extension, ExtensionVersion, Membership, Role, Team

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    AnyUser = AbstractBaseUser | AnonymousUser


def _authenticated(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def is_global_curator(user: Any) -> bool:
    """Staff act as curators of the global (built-in) catalog."""
    return _authenticated(user) and bool(user.is_staff or user.is_superuser)


def teams_of(user: Any) -> QuerySet[Team]:
    """The teams a user is a member of (superusers: every team)."""
    if not _authenticated(user):
        return Team.objects.none()
    if user.is_superuser:
        return Team.objects.all()
    return Team.objects.filter(memberships__user=user).distinct()


def team_role(user: Any, team: Team | None) -> Role | None:
    """The user's role in ``team`` (None: not a member). Superusers are admins of every team.

    For the global catalog (``team is None``) staff count as curators and every other member of
    any team as a builder (they may propose, not decide).
    """
    if not _authenticated(user):
        return None
    if user.is_superuser:
        return Role.ADMIN
    if team is None:
        if user.is_staff:
            return Role.CURATOR
        return Role.BUILDER if Membership.objects.filter(user=user).exists() else None
    role = Membership.objects.filter(user=user, team=team).values_list("role", flat=True).first()
    return Role(role) if role else None


def has_team_role(user: Any, team: Team | None, role: str) -> bool:
    current = team_role(user, team)
    return current is not None and current.at_least(role)


def require_team_role(user: Any, team: Team | None, role: str, *, action: str) -> None:
    """Raise ``CatalogForbidden`` unless ``user`` has at least ``role`` in ``team``.

    Call it only once the object is known to be visible to the user (visibility is a 404 matter).
    """
    if has_team_role(user, team, role):
        return
    where = "the global catalog (Django staff curate it)" if team is None else f"team {team.slug}"
    raise CatalogForbidden("forbidden", f"To {action} you need the {role} role in {where}.")


def visible_teams_filter(user: Any, prefix: str = "") -> Q:
    """A Q over ``<prefix>team`` matching the global catalog plus the user's teams."""
    team_field = f"{prefix}team"
    if _authenticated(user) and user.is_superuser:
        return Q()
    global_q = Q(**{f"{team_field}__isnull": True})
    if not _authenticated(user):
        return global_q
    return global_q | Q(**{f"{team_field}__memberships__user": user})


def extensions_for_user(user: Any, team: Team | None = None) -> QuerySet[Extension]:
    """Extensions the user may see; with ``team``, only the global catalog plus that team's."""
    if not _authenticated(user):
        return Extension.objects.none()
    qs = Extension.objects.filter(visible_teams_filter(user)).distinct()
    if team is not None:
        qs = qs.filter(Q(team__isnull=True) | Q(team=team))
    return qs


def versions_for_user(user: Any, team: Team | None = None) -> QuerySet[ExtensionVersion]:
    """Versions of the extensions the user may see (same scoping as ``extensions_for_user``)."""
    if not _authenticated(user):
        return ExtensionVersion.objects.none()
    qs = ExtensionVersion.objects.filter(visible_teams_filter(user, "extension__")).distinct()
    if team is not None:
        qs = qs.filter(Q(extension__team__isnull=True) | Q(extension__team=team))
    return qs


def team_for_user(user: Any, slug: str) -> Team:
    """The team ``slug`` if the user is a member of it; otherwise 404 (teams are private too)."""
    team = teams_of(user).filter(slug=slug).first()
    if team is None:
        raise CatalogNotFound("team.not-found", f"No team {slug!r} among your teams.")
    return team


def object_team(obj: Any) -> Team | None:
    """The team that owns a catalog object (or anything with a ``team`` attribute)."""
    if isinstance(obj, Team):
        return obj
    if isinstance(obj, ExtensionVersion):
        return obj.extension.team
    if hasattr(obj, "team"):
        team = obj.team
        return team if isinstance(team, Team) or team is None else None
    raise TypeError(f"cannot tell which team owns {obj!r}")


class TeamRolePermission(BasePermission):
    """DRF object permission: the user needs ``required_role`` in the object's owning team.

    Use it on views whose querysets are already scoped (so invisible objects are 404 first).
    Subclass and set ``required_role``, or use ``TeamRolePermission.at_least("curator")``.
    """

    required_role: str = Role.VIEWER
    message = "You do not have the role this action needs in the owning team."

    def has_permission(self, request: Request, view: Any) -> bool:
        return _authenticated(request.user)

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        return has_team_role(request.user, object_team(obj), self.required_role)

    @classmethod
    def at_least(cls, role: str) -> type[TeamRolePermission]:
        return type(f"TeamRole{role.capitalize()}Permission", (cls,), {"required_role": role})


class IsTeamMember(TeamRolePermission):
    """Any role in the owning team (or, for global objects, any signed-in user)."""

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        team = object_team(obj)
        if team is None:
            return _authenticated(request.user)
        return team_role(request.user, team) is not None
