"""Django admin for the catalog: teams and members, extensions, versions with digests and audit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm

from catalog import services
from catalog.errors import CatalogError
from catalog.models import (
    ApprovalRecord,
    Extension,
    ExtensionVersion,
    Membership,
    Team,
    UploadedArchive,
    UpstreamDigest,
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "two_person_approval", "private_artifacts", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "team__slug"]
    autocomplete_fields = ["user", "team"]


class VersionInline(admin.TabularInline):
    model = ExtensionVersion
    extra = 0
    fields = ["version", "status", "deprecated", "proposed_via", "proposed_at", "decided_by", "decided_at"]
    readonly_fields = ["status", "proposed_via", "proposed_at", "decided_by", "decided_at"]
    show_change_link = True


@admin.register(Extension)
class ExtensionAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "origin", "category", "delivery", "updated_at"]
    list_filter = ["origin", "category", "delivery", "team"]
    search_fields = ["name", "description"]
    readonly_fields = ["recipe_digest", "created_by", "created_at", "updated_at"]
    inlines = [VersionInline]


class DigestInline(admin.TabularInline):
    model = UpstreamDigest
    extra = 0
    fields = readonly_fields = ("arch", "source_id", "url", "sha256", "size", "origin", "fetched_at")


class ApprovalInline(admin.TabularInline):
    """The audit trail is append-only, even for admins."""

    model = ApprovalRecord
    extra = 0
    fields = readonly_fields = (
        "at",
        "action",
        "actor",
        "actor_label",
        "proposer",
        "proposer_label",
        "reason",
    )
    can_delete = False

    def has_add_permission(self, request: object, obj: object = None) -> bool:
        return False


class VersionActionForm(ActionForm):
    """The changelist's action bar, with the reason the audit record keeps (rejecting needs one)."""

    reason = forms.CharField(required=False, max_length=2000, label="Reason")


def _decide(
    model_admin: admin.ModelAdmin,
    request: Any,
    queryset: Any,
    decide: Callable[..., ExtensionVersion],
    done: str,
    **kwargs: Any,
) -> None:
    """Run one approval-flow service per selected version, reporting each refusal by name."""
    reason = request.POST.get("reason", "")
    count = 0
    for version in queryset.select_related("extension", "extension__team"):
        try:
            decide(version=version, actor=request.user, reason=reason, **kwargs)
        except CatalogError as error:
            model_admin.message_user(request, f"{version}: {error.message}", messages.ERROR)
        else:
            count += 1
    if count:
        model_admin.message_user(request, f"{count} version(s) {done}.", messages.SUCCESS)


@admin.action(description="Approve selected versions (pins their upstream digests)", permissions=["change"])
def approve_versions(model_admin: Any, request: Any, queryset: Any) -> None:
    _decide(model_admin, request, queryset, services.version_approve, "approved; pinning digests")


@admin.action(description="Reject selected versions (give a reason)", permissions=["change"])
def reject_versions(model_admin: Any, request: Any, queryset: Any) -> None:
    _decide(model_admin, request, queryset, services.version_reject, "rejected")


@admin.action(description="Deprecate selected versions (no longer offered)", permissions=["change"])
def deprecate_versions(model_admin: Any, request: Any, queryset: Any) -> None:
    _decide(model_admin, request, queryset, services.version_deprecate, "deprecated", deprecated=True)


@admin.action(description="Undeprecate selected versions", permissions=["change"])
def undeprecate_versions(model_admin: Any, request: Any, queryset: Any) -> None:
    _decide(model_admin, request, queryset, services.version_deprecate, "undeprecated", deprecated=False)


@admin.register(ExtensionVersion)
class ExtensionVersionAdmin(admin.ModelAdmin):
    """Status changes belong to the approval flow (services); here they are shown, not edited,
    and the actions run that flow (role checks, audit record, digest pinning) like the API does."""

    action_form = VersionActionForm
    actions = [approve_versions, reject_versions, deprecate_versions, undeprecate_versions]

    list_display = [
        "extension",
        "version",
        "status",
        "deprecated",
        "proposed_via",
        "proposed_at",
        "decided_by",
    ]
    list_filter = ["status", "deprecated", "proposed_via", "extension__team"]
    search_fields = ["extension__name", "version"]
    readonly_fields = [
        "status",
        "proposed_by",
        "proposed_via",
        "proposed_at",
        "decided_by",
        "decided_at",
        "pinning_error",
    ]
    inlines = [DigestInline, ApprovalInline]

    def has_add_permission(self, request: object) -> bool:
        # Versions are proposed through the catalog (API or page), which checks them against the
        # recipe and records the proposer the two-people rule compares with.
        return False

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        # What was proposed is what gets approved: editing it here would let the approver change
        # someone else's proposal and then approve it as their own.
        return [*self.readonly_fields, "extension", "version", "vars"] if obj else list(self.readonly_fields)


@admin.register(UpstreamDigest)
class UpstreamDigestAdmin(admin.ModelAdmin):
    list_display = ["version", "arch", "source_id", "sha256", "size", "origin", "fetched_at"]
    list_filter = ["arch", "origin"]
    search_fields = ["version__extension__name", "version__version", "sha256", "url"]


@admin.register(ApprovalRecord)
class ApprovalRecordAdmin(admin.ModelAdmin):
    list_display = ["version", "action", "actor", "actor_label", "proposer", "proposer_label", "at"]
    list_filter = ["action"]
    search_fields = ["version__extension__name", "version__version", "reason"]

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False


@admin.register(UploadedArchive)
class UploadedArchiveAdmin(admin.ModelAdmin):
    list_display = ["file_name", "version", "kind", "size", "sha256", "uploaded_by", "uploaded_at"]
    exclude = ["data"]
    readonly_fields = ["version", "file_name", "kind", "sha256", "size", "uploaded_by", "uploaded_at"]
