"""Representations of the catalog for the REST API (reads) and the shapes of its inputs."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from builds.pipeline.errors import PipelineError
from builds.pipeline.vocabulary import ARCHES
from catalog.models import (
    ApprovalRecord,
    Category,
    Extension,
    ExtensionVersion,
    Membership,
    Role,
    Team,
    UpstreamDigest,
)


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


class UpstreamDigestSerializer(serializers.ModelSerializer):
    class Meta:
        model = UpstreamDigest
        fields = ["arch", "source_id", "url", "sha256", "size", "origin", "fetched_at"]


class ApprovalRecordSerializer(serializers.ModelSerializer):
    actor = serializers.SerializerMethodField()
    proposer = serializers.SerializerMethodField(
        help_text="On approvals: who proposed the version (a username, or the system part that filed it)."
    )

    class Meta:
        model = ApprovalRecord
        fields = ["action", "actor", "proposer", "at", "reason"]

    def get_actor(self, record: ApprovalRecord) -> str:
        return _username(record.actor) or record.actor_label or "system"

    def get_proposer(self, record: ApprovalRecord) -> str | None:
        return _username(record.proposer) or record.proposer_label or None


class TeamSerializer(serializers.ModelSerializer):
    """A team and its rules; admins change the rules with PATCH."""

    two_person_approval = serializers.BooleanField(
        required=False,
        help_text="Whoever proposed a version cannot approve it; another curator must.",
    )
    private_artifacts = serializers.BooleanField(
        required=False,
        help_text="Serve the team's extension images and flavour files only to signed-in members "
        "and to nodes holding a flavour's token, never at the public /artifacts/ URLs (404 there). "
        "Extension names stay global and visible to everyone adding an extension.",
    )

    class Meta:
        model = Team
        fields = ["slug", "name", "two_person_approval", "private_artifacts"]
        read_only_fields = ["slug", "name"]


class TeamMemberSerializer(serializers.ModelSerializer):
    """A member of a team and their role; every member sees the list, admins change it."""

    username = serializers.CharField(source="user.username", read_only=True)
    since = serializers.DateTimeField(source="created_at", read_only=True)

    class Meta:
        model = Membership
        fields = ["username", "role", "since"]


class TeamMemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, help_text="An existing account's username.")
    role = serializers.ChoiceField(
        choices=Role.choices,
        default=Role.VIEWER,
        help_text="viewer reads, builder composes and builds, curator approves versions, admin manages "
        "the team and its members.",
    )


class TeamMemberRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class SourceUrlSerializer(serializers.Serializer):
    arch = serializers.CharField()
    source_id = serializers.CharField()
    url = serializers.CharField()


class SourceBuildSerializer(serializers.Serializer):
    toolchain = serializers.DictField(
        child=serializers.CharField(), help_text="Debian package -> the exact version the worker must have."
    )
    commands = serializers.ListField(
        child=serializers.CharField(), help_text="Shell lines run in order inside the build sandbox."
    )
    install = serializers.ListField(
        child=serializers.DictField(child=serializers.CharField()),
        help_text="Install rules {from, to, mode} reading from the build's output directory.",
    )
    limits = serializers.DictField(
        child=serializers.IntegerField(), help_text="seconds, cpu_seconds and memory_mb (per process)."
    )


class ExtensionVersionSerializer(serializers.ModelSerializer):
    extension = serializers.CharField(source="extension.name", read_only=True)
    source_build = serializers.SerializerMethodField(
        help_text="How this version is compiled from its sources, or null when it installs release assets."
    )
    source_urls = serializers.SerializerMethodField(
        help_text="The upstream URLs approving this version fetches and pins, per arch and source."
    )
    team = serializers.SerializerMethodField()
    proposed_by = serializers.SerializerMethodField()
    decided_by = serializers.SerializerMethodField()
    usable_for_new_flavours = serializers.BooleanField(read_only=True)
    status_text = serializers.CharField(
        read_only=True,
        help_text='The status as people read it; after a failed pinning "pinning failed: <code>: <reason>" '
        "(status pin-failed: a curator approves again or rejects).",
    )
    digests = UpstreamDigestSerializer(many=True, read_only=True)
    approvals = ApprovalRecordSerializer(many=True, read_only=True)

    class Meta:
        model = ExtensionVersion
        fields = [
            "id",
            "extension",
            "team",
            "version",
            "status",
            "status_text",
            "deprecated",
            "usable_for_new_flavours",
            "vars",
            "proposed_by",
            "proposed_via",
            "proposed_at",
            "decided_by",
            "decided_at",
            "reason",
            "pinning_error",
            "source_urls",
            "source_build",
            "digests",
            "approvals",
        ]

    def get_team(self, version: ExtensionVersion) -> str | None:
        team = version.extension.team
        return team.slug if team is not None else None

    def get_proposed_by(self, version: ExtensionVersion) -> str | None:
        return _username(version.proposed_by)

    @extend_schema_field(SourceUrlSerializer(many=True))
    def get_source_urls(self, version: ExtensionVersion) -> list[dict[str, str]]:
        try:
            return version.source_urls()
        except PipelineError:
            return []  # a version that does not resolve is refused when approved; nothing to show

    @extend_schema_field(SourceBuildSerializer(allow_null=True))
    def get_source_build(self, version: ExtensionVersion) -> dict[str, Any] | None:
        try:
            return version.source_build()
        except PipelineError:
            return None  # a recipe that no longer parses shows no build either

    def get_decided_by(self, version: ExtensionVersion) -> str | None:
        return _username(version.decided_by)


class ExtensionListSerializer(serializers.ModelSerializer):
    team = serializers.SerializerMethodField()
    selectable = serializers.BooleanField(read_only=True)
    approved_versions = serializers.SerializerMethodField()

    class Meta:
        model = Extension
        fields = [
            "name",
            "team",
            "origin",
            "description",
            "homepage",
            "category",
            "delivery",
            "selectable",
            "arches",
            "keywords",
            "approved_versions",
        ]

    def get_team(self, extension: Extension) -> str | None:
        return extension.team.slug if extension.team is not None else None

    def get_approved_versions(self, extension: Extension) -> list[str]:
        """Versions offered for new flavours (approved, not deprecated), newest first."""
        return [v.version for v in extension.newest_versions() if v.usable_for_new_flavours]


class ExtensionDetailSerializer(ExtensionListSerializer):
    relations = serializers.SerializerMethodField()
    versions = ExtensionVersionSerializer(
        many=True, read_only=True, source="newest_versions", help_text="Newest version first."
    )

    class Meta(ExtensionListSerializer.Meta):
        fields = [
            *ExtensionListSerializer.Meta.fields,
            "relations",
            "recipe_digest",
            "recipe_text",
            "created_at",
            "updated_at",
            "versions",
        ]

    def get_relations(self, extension: Extension) -> dict[str, Any]:
        return {
            "requires": extension.requires,
            "conflicts": extension.conflicts,
            "replaces_builtin": extension.replaces_builtin,
            "min_flatcar": extension.min_flatcar or None,
            "minor_pinning": extension.minor_pinning,
        }


class VersionProposeSerializer(serializers.Serializer):
    version = serializers.CharField(max_length=128)
    vars = serializers.DictField(child=serializers.CharField(max_length=200), required=False, default=dict)
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class VersionDecisionSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


PRIVACY_NOTE = (
    "Names are global: an extension's name is unique across Bakehouse (it names the published "
    "directory extensions/NAME/), so adding one tells you whether the name is taken, and others "
    "can tell yours is. Published images are public by default: anyone who knows the URL "
    "downloads them. A team that needs private images switches on private artifacts (team page, "
    "or PATCH /api/teams/SLUG/); then they are served only to its members and to nodes holding a "
    "flavour's token."
)


class CustomExtensionSerializer(serializers.Serializer):
    """Either ``recipe`` (YAML text) or ``file`` (an archive) with its name and version.

    The extension is private to the team in the catalog, but its name is global and its published
    images are public unless the team has private artifacts (see ``PRIVACY_NOTE``).
    """

    team = serializers.SlugField(required=False)
    recipe = serializers.CharField(
        required=False,
        trim_whitespace=False,
        max_length=256 * 1024,
        help_text="The recipe YAML; its 'name' is global. " + PRIVACY_NOTE,
    )
    file = serializers.FileField(required=False, allow_empty_file=False)
    name = serializers.CharField(required=False, max_length=64, help_text="Global name. " + PRIVACY_NOTE)
    version = serializers.CharField(required=False, max_length=128)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
    category = serializers.ChoiceField(choices=Category.choices, required=False, default=Category.TOOL)
    arches = serializers.CharField(
        required=False,
        default=",".join(ARCHES),
        help_text="Comma-separated systemd arches the files suit (default: all).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        has_recipe, has_file = "recipe" in attrs, "file" in attrs
        if has_recipe == has_file:
            raise serializers.ValidationError("Send either 'recipe' (YAML text) or 'file' (an archive).")
        if has_file:
            missing = [f for f in ("name", "version") if not attrs.get(f)]
            if missing:
                raise serializers.ValidationError({f: "Required with an uploaded file." for f in missing})
        attrs["arches"] = tuple(a.strip() for a in str(attrs.get("arches", "")).split(",") if a.strip())
        return attrs
