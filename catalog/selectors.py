"""Reads of the catalog, always scoped to what the asking user may see (see permissions.py)."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, Q, QuerySet

from catalog.errors import CatalogNotFound
from catalog.models import (
    ApprovalRecord,
    Delivery,
    Extension,
    ExtensionVersion,
    Team,
    UpstreamDigest,
    VersionStatus,
    version_sort_key,
)
from catalog.permissions import extensions_for_user, team_for_user, team_role, versions_for_user

__all__ = [
    "extension_get_for_user",
    "extensions_visible_to",
    "team_role",
    "version_get_for_user",
    "version_sort_key",
    "versions_usable_for_new_flavours",
]


def extensions_visible_to(user: Any, *, team: Team | None = None) -> QuerySet[Extension]:
    """The global catalog plus the user's teams' extensions (with ``team``: only that team's)."""
    return extensions_for_user(user, team).select_related("team")


def extension_detail_queryset(user: Any, *, team: Team | None = None) -> QuerySet[Extension]:
    """Visible extensions with versions, digests and the audit trail prefetched."""
    versions = ExtensionVersion.objects.select_related("proposed_by", "decided_by").prefetch_related(
        Prefetch("digests", queryset=UpstreamDigest.objects.order_by("arch", "source_id")),
        Prefetch("approvals", queryset=ApprovalRecord.objects.select_related("actor").order_by("at", "id")),
    )
    return extensions_visible_to(user, team=team).prefetch_related(Prefetch("versions", queryset=versions))


def extension_get_for_user(
    user: Any, *, name: str, team_slug: str | None = None, queryset: QuerySet[Extension] | None = None
) -> Extension:
    """The extension called ``name`` that the user can see (names are unique installation-wide).

    ``team_slug`` narrows the lookup to that team's catalog plus the global one; another team's
    private extension is "not found", exactly like one that does not exist.
    """
    team = team_for_user(user, team_slug) if team_slug else None
    qs = queryset if queryset is not None else extensions_visible_to(user, team=team)
    if team is not None:
        qs = qs.filter(Q(team__isnull=True) | Q(team=team))
    extension = qs.filter(name=name).first()
    if extension is None:
        raise CatalogNotFound("extension.not-found", f"No extension {name!r} in your catalog.")
    return extension


def version_get_for_user(user: Any, *, version_id: int) -> ExtensionVersion:
    version = (
        versions_for_user(user).select_related("extension", "extension__team").filter(pk=version_id).first()
    )
    if version is None:
        raise CatalogNotFound("version.not-found", f"No version with id {version_id} in your catalog.")
    return version


def versions_usable_for_new_flavours(
    user: Any, *, team: Team | None = None, extension: Extension | None = None, arch: str | None = None
) -> QuerySet[ExtensionVersion]:
    """Approved, non-deprecated versions of selectable extensions the user can see.

    Deprecated versions stay buildable for flavours that already use them; they are simply not
    offered here.
    """
    qs = (
        versions_for_user(user, team)
        .filter(status=VersionStatus.APPROVED, deprecated=False)
        .exclude(extension__delivery=Delivery.SOURCE_BUILD_REQUIRED)
        .select_related("extension", "extension__team")
    )
    if extension is not None:
        qs = qs.filter(extension=extension)
    if arch is not None:
        # SQLite has no JSON containment lookup; the catalog is small enough to filter here.
        qs = qs.filter(pk__in=[v.pk for v in qs if arch in v.extension.arches])
    return qs
