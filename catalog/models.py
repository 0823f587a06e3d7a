"""Models of the catalog app: teams, extensions, their versions, pinned digests and the audit trail.

The catalog is what a team trusts. Built-in extensions (``Extension.team is None``) come from
``catalog/recipes/*.yaml`` and every team sees them; a team's private extensions are visible to
its members only. A version is usable for new flavours once it is ``approved`` (its upstream
files' sha256 pinned) and not ``deprecated``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import models

from builds.pipeline import vocabulary

if TYPE_CHECKING:
    from builds.pipeline.recipe import Recipe


_NUMBER = re.compile(r"(\d+)")


def version_sort_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural order for version strings ("v1.10.0" after "v1.9.2"; "rc" parts sort as text)."""
    key: list[tuple[int, int | str]] = []
    for part in _NUMBER.split(version.lstrip("vV")):
        if not part:
            continue
        key.append((1, int(part)) if part.isdigit() else (0, part))
    return tuple(key)


class Role(models.TextChoices):
    """A member's role in a team; each role includes the rights of the ones before it."""

    VIEWER = "viewer", "Viewer"
    BUILDER = "builder", "Builder"
    CURATOR = "curator", "Curator"
    ADMIN = "admin", "Admin"

    @property
    def rank(self) -> int:
        return ROLE_ORDER.index(self.value)

    def at_least(self, other: str) -> bool:
        """True when this role grants everything ``other`` grants (admin.at_least("curator"))."""
        return self.rank >= ROLE_ORDER.index(str(other))


ROLE_ORDER: tuple[str, ...] = (Role.VIEWER, Role.BUILDER, Role.CURATOR, Role.ADMIN)


class Team(models.Model):
    """A group of people sharing a catalog of private extensions and their flavours."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True)
    two_person_approval = models.BooleanField(
        "two people approve",
        default=False,
        help_text="A version must be approved by someone other than the person who proposed it.",
    )
    private_artifacts = models.BooleanField(
        default=False,
        help_text="Serve this team's extension images and flavour files only to signed-in members and "
        "to nodes holding a flavour's token (not at the public /artifacts/ URLs).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in one team. A user may belong to several teams."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_unique_team_user")]
        ordering = ["team__slug", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    def has_role(self, role: str) -> bool:
        return Role(self.role).at_least(role)


def _choices(name: str, labels: Mapping[str, str]) -> Any:
    """TextChoices whose members are the vocabulary's values ("wasm-runtime" -> WASM_RUNTIME)."""
    members = [(value.upper().replace("-", "_"), (value, label)) for value, label in labels.items()]
    return models.TextChoices(name, members, module=__name__)  # type: ignore[call-overload]


# WASM_RUNTIME, CONTAINER_RUNTIME, KUBERNETES, NETWORKING, TOOL.
Category = _choices("Category", vocabulary.CATEGORIES)
# How an extension reaches a node: BAKE, FLATCAR_OFFICIAL, SOURCE_BUILD_REQUIRED.
Delivery = _choices("Delivery", vocabulary.DELIVERIES)


class Origin(models.TextChoices):
    """Where an extension's definition came from."""

    BUILTIN = "builtin", "Built-in recipe"
    RECIPE = "recipe", "Team recipe"
    UPLOAD = "upload", "Uploaded archive"


class Extension(models.Model):
    """A sysext the catalog knows about, defined by a recipe (YAML text kept verbatim).

    The relation and metadata fields are denormalised from the recipe so lists and filters need
    no YAML parsing; ``recipe()`` is the authority for building.
    """

    name = models.CharField(max_length=64)
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="extensions",
        help_text="Owning team; empty for the global built-in catalog every team sees.",
    )
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.BUILTIN)
    description = models.TextField(blank=True)
    homepage = models.URLField(blank=True)
    category = models.CharField(max_length=32, choices=Category.choices, default=Category.TOOL)
    delivery = models.CharField(max_length=32, choices=Delivery.choices, default=Delivery.BAKE)
    arches = models.JSONField(default=list, help_text="Supported systemd arches, e.g. ['x86-64', 'arm64'].")
    keywords = models.JSONField(
        default=list, blank=True, help_text="Search words from the recipe's 'keywords', e.g. ['wasm']."
    )
    recipe_text = models.TextField(help_text="The recipe YAML, verbatim.")
    recipe_digest = models.CharField(max_length=64, help_text="sha256 of the canonical recipe content.")
    requires = models.JSONField(default=list, help_text="List of any-of groups: [['containerd', 'docker']].")
    conflicts = models.JSONField(default=list)
    replaces_builtin = models.JSONField(default=list)
    min_flatcar = models.CharField(max_length=32, blank=True)
    minor_pinning = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # One name, one extension across the installation: the name is the published
            # sysupdate directory (extensions/NAME/) and /etc/extensions/NAME.raw on nodes, so two
            # teams' private "foo" would mix their SHA256SUMS.
            models.UniqueConstraint(fields=["name"], name="extension_unique_name"),
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name if self.team_id is None else f"{self.name} ({self.team})"

    @property
    def is_global(self) -> bool:
        return self.team_id is None

    @property
    def selectable(self) -> bool:
        """Whether a flavour may include it at all (source-build-only extensions may not)."""
        return self.delivery != Delivery.SOURCE_BUILD_REQUIRED

    def newest_versions(self) -> list[ExtensionVersion]:
        """Its versions, newest version number first (v1.10.0 before v1.9.2); uses the prefetch."""
        return sorted(self.versions.all(), key=lambda v: (version_sort_key(v.version), v.pk), reverse=True)

    def recipe(self) -> Recipe:
        """The pipeline's view of this extension, parsed from ``recipe_text``.

        Uploaded extensions have a generated recipe built from their uploads (catalog.uploads).
        """
        from builds.pipeline.recipe import parse_recipe

        if self.origin == Origin.UPLOAD:
            from catalog.uploads import upload_recipe

            return upload_recipe(self)
        return parse_recipe(self.recipe_text, source=f"{self.name}.yaml")


class VersionStatus(models.TextChoices):
    """Life cycle of a version: proposed -> pinning -> approved, or -> rejected.

    Pinning that fails (an upstream 404, a changed file, a lost task) leaves the version in
    ``pin-failed`` with ``pinning_error`` saying why: never back in "proposed", which would read
    as a fresh proposal. A curator approves it again (or rejects it) from there.

    An uploaded version starts as ``checking`` while a worker unpacks its archive, then becomes
    proposed, or rejected when the archive is refused (``UploadedArchive`` says why).
    """

    CHECKING = "checking", "Checking upload"
    PROPOSED = "proposed", "Proposed"
    PINNING = "pinning", "Pinning digests"
    PIN_FAILED = "pin-failed", "Pinning failed"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"

    @property
    def badge(self) -> str:
        """The colour pages use for this status."""
        return STATUS_BADGES[self.value]


# Each colour pairs with the status's text in the badge (colour alone is not enough to read).
STATUS_BADGES = {
    "checking": "yellow",
    "proposed": "blue",
    "pinning": "yellow",
    "pin-failed": "red",
    "approved": "green",
    "rejected": "grey",
}
# A curator may decide (approve or reject) a version in these states.
DECIDABLE_STATUSES: tuple[str, ...] = ("proposed", "pin-failed")


class ExtensionVersion(models.Model):
    """One version of an extension, and where it stands in the approval flow.

    ``deprecated`` is orthogonal to ``status``: a deprecated approved version stays buildable for
    flavours that already use it but is not offered for new ones.
    """

    extension = models.ForeignKey(Extension, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=128)
    status = models.CharField(max_length=10, choices=VersionStatus.choices, default=VersionStatus.PROPOSED)
    proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    proposed_via = models.CharField(
        max_length=20, default="user", help_text="user, built-in, discovery or upload: who filed it."
    )
    proposed_at = models.DateTimeField(auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, help_text="Why it was approved or rejected.")
    deprecated = models.BooleanField(default=False)
    vars = models.JSONField(
        default=dict, blank=True, help_text="Extra URL template variables for this version (recipe 'vars')."
    )
    pinning_error = models.TextField(blank=True, help_text="Last digest-pinning failure, code and message.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["extension", "version"], name="version_unique_extension_version")
        ]
        ordering = ["extension__name", "-proposed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.extension.name} {self.version}"

    @property
    def status_badge(self) -> str:
        return VersionStatus(self.status).badge

    @property
    def decidable(self) -> bool:
        """Whether a curator may approve or reject it now (proposed, or its pinning failed)."""
        return self.status in DECIDABLE_STATUSES

    @property
    def status_text(self) -> str:
        """The status as pages and the API spell it; "pinning failed: <reason>" says why."""
        if self.status == VersionStatus.PIN_FAILED:
            return f"pinning failed: {self.pinning_error}" if self.pinning_error else "pinning failed"
        return VersionStatus(self.status).label.lower()

    @property
    def usable_for_new_flavours(self) -> bool:
        return self.status == VersionStatus.APPROVED and not self.deprecated

    def pins(self, arch: str) -> dict[str, str]:
        """source id -> pinned sha256 for one systemd arch (empty before approval)."""
        return {d.source_id: d.sha256 for d in self.digests.all() if d.arch == arch}

    def recipe(self) -> Recipe:
        """The extension's recipe, guaranteed to know this version.

        Versions proposed through the catalog (API, discovery) are not in the recipe file; they
        get an entry with this version's ``vars`` and no pins (pins come from ``pins()``).
        """
        from builds.pipeline.recipe import VersionSpec

        recipe = self.extension.recipe()
        if self.version in recipe.versions:
            return recipe
        spec = VersionSpec(sha256={}, vars=dict(self.vars), deprecated=self.deprecated)
        return dataclasses.replace(recipe, versions={**recipe.versions, self.version: spec})

    def source_build(self) -> dict[str, Any] | None:
        """How this version is compiled when its recipe builds from source (toolchain, commands,
        install rules, limits), or None for release assets."""
        build = self.recipe().build
        return build.as_document() if build is not None else None

    def source_urls(self) -> list[dict[str, str]]:
        """What approving fetches and pins: ``{arch, source_id, url}`` per arch and source, the
        URLs filled in from this version and its vars. Raises PipelineError when they do not
        resolve (a var that would leave the recipe's URL prefix, say)."""
        recipe = self.recipe()
        if not recipe.bakeable:
            return []
        return [
            {"arch": arch, "source_id": source.id, "url": source.url}
            for arch in recipe.arches
            for source in recipe.resolve(self.version, arch)
        ]


class UpstreamDigest(models.Model):
    """The sha256 of one upstream file for one arch, pinned when the version was approved."""

    class Origin(models.TextChoices):
        RECIPE = "recipe", "Pinned in the built-in recipe"
        FETCHED = "fetched", "Fetched and hashed by the portal"
        UPLOAD = "upload", "Uploaded archive"

    version = models.ForeignKey(ExtensionVersion, on_delete=models.CASCADE, related_name="digests")
    arch = models.CharField(max_length=16)
    source_id = models.CharField(max_length=128)
    url = models.TextField()
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField(null=True, blank=True)
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.FETCHED)
    fetched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "arch", "source_id"], name="digest_unique_version_arch_source"
            )
        ]
        ordering = ["version", "arch", "source_id"]

    def __str__(self) -> str:
        return f"{self.version} {self.arch} {self.source_id}: {self.sha256[:12]}"


class ApprovalAction(models.TextChoices):
    PROPOSED = "proposed", "Proposed"
    APPROVED = "approved", "Approved"
    PINNED = "pinned", "Digests pinned"
    PIN_FAILED = "pin-failed", "Digest pinning failed"
    REJECTED = "rejected", "Rejected"
    DEPRECATED = "deprecated", "Deprecated"


class ApprovalRecord(models.Model):
    """The audit trail: who did what to a version, when and why.

    ``actor`` is None for the system (built-in recipes, upstream discovery, the pinning task);
    ``actor_label`` then says which. An approval also names who proposed the version
    (``proposer``, or ``proposer_label`` for the system), so both people are on the record.
    """

    version = models.ForeignKey(ExtensionVersion, on_delete=models.CASCADE, related_name="approvals")
    action = models.CharField(max_length=12, choices=ApprovalAction.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150, blank=True)
    proposer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    proposer_label = models.CharField(max_length=150, blank=True)
    at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["version", "at", "id"]

    def __str__(self) -> str:
        return f"{self.version} {self.action} by {self.actor or self.actor_label or 'system'}"


class UploadedArchive(models.Model):
    """The archive behind a custom (uploaded) extension version, validated and kept in the database.

    Kept as bytes in the database so any worker host can materialise it (see
    ``catalog.services.uploaded_archive_materialize``) without a shared filesystem; uploads are
    capped by ``CUSTOM_UPLOAD_MAX_BYTES``. The web only stores the bytes; a worker unpacks them
    (``catalog.services.uploaded_archive_check``) and sets ``state`` to ready or refused.
    """

    class State(models.TextChoices):
        CHECKING = "checking", "Checking"
        READY = "ready", "Ready"
        REFUSED = "refused", "Refused"

    version = models.OneToOneField(ExtensionVersion, on_delete=models.CASCADE, related_name="upload")
    file_name = models.CharField(max_length=255)
    kind = models.CharField(max_length=10, help_text="Archive kind as the pipeline names it: tar.gz, zip...")
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    data = models.BinaryField()
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    uploaded_at = models.DateTimeField(auto_now_add=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.CHECKING)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.file_name} ({self.sha256[:12]})"
