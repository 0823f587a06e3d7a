"""Flavours, builds and the artifacts they publish.

A flavour never changes: its primary key is the sha256 of a canonical document of the user's
choices (see ``builds/flavours.py``), so the same choices always mean the same artifacts. Editing
makes a new revision that points back at the one it came from; old revisions stay downloadable.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from builds.pipeline import error_codes, vocabulary

# Architectures in systemd's spelling, as used in image file names (``%a``): X86_64, ARM64.
# django-stubs types only the one-string form of the functional API.
Arch = models.TextChoices(  # type: ignore[call-overload]
    "Arch", [(arch.upper().replace("-", "_"), (arch, arch)) for arch in vocabulary.ARCHES], module=__name__
)


class Flavour(models.Model):
    """A team's chosen set of approved extension versions plus provisioning options.

    ``canonical`` holds the exact JSON text whose sha256 is ``id``; it names every extension with
    its recipe digest and upstream pins, so the ID changes whenever the bytes of an image would.
    """

    id = models.CharField(primary_key=True, max_length=64, editable=False)
    team = models.ForeignKey("catalog.Team", on_delete=models.PROTECT, related_name="flavours")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    arch = models.CharField(max_length=16, choices=Arch.choices)
    options = models.JSONField(default=dict)
    canonical = models.TextField(editable=False)
    # Revisions of "the same flavour" share a lineage; each edit is a new row with a new ID.
    lineage = models.UUIDField(default=uuid.uuid4, db_index=True)
    revision = models.PositiveIntegerField(default=1)
    revision_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="revisions"
    )
    extension_versions = models.ManyToManyField(
        "catalog.ExtensionVersion", through="FlavourExtension", related_name="flavours"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id[:12]})"


class FlavourToken(models.Model):
    """The secret that lets nodes read a private flavour's artifacts (see ``builds.access``).

    It lives in a path segment (``PUBLIC_BASE_URL/private/TOKEN/...``) because sysupdate appends
    file names to its URL and sends no headers. Rotating replaces it: the old URLs answer 404.
    """

    flavour = models.OneToOneField(Flavour, on_delete=models.CASCADE, primary_key=True, related_name="token")
    token = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"token of {self.flavour_id[:12]}"


class FlavourExtension(models.Model):
    """One extension version chosen in a flavour."""

    flavour = models.ForeignKey(Flavour, on_delete=models.CASCADE, related_name="flavour_extensions")
    extension_version = models.ForeignKey(
        "catalog.ExtensionVersion", on_delete=models.PROTECT, related_name="flavour_extensions"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["flavour", "extension_version"], name="builds_flavour_ext_unique")
        ]

    def __str__(self) -> str:
        return f"{self.flavour_id[:12]}: {self.extension_version}"


class BuildState(models.TextChoices):
    QUEUED = "queued", "Queued"
    FETCHING = "fetching", "Fetching"
    BAKING = "baking", "Baking"
    VERIFYING = "verifying", "Verifying"
    SIGNING = "signing", "Signing"
    PUBLISHING = "publishing", "Publishing"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_BUILD_STATES: tuple[str, ...] = (
    BuildState.QUEUED,
    BuildState.FETCHING,
    BuildState.BAKING,
    BuildState.VERIFYING,
    BuildState.SIGNING,
    BuildState.PUBLISHING,
)
FINISHED_BUILD_STATES: tuple[str, ...] = (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED)


class Verification(models.TextChoices):
    """Whether the real systemd-sysext merged the images before they were published."""

    PENDING = "", "Not yet"
    VERIFIED = "verified", "Verified with systemd-sysext"
    SKIPPED = "skipped", "Skipped"
    FAILED = "failed", "Failed"


class Build(models.Model):
    """One run that bakes, verifies, signs and publishes a flavour's artifacts.

    At most one build per flavour is active at a time (a partial unique constraint), so
    concurrent identical requests share one build instead of racing.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    flavour = models.ForeignKey(Flavour, on_delete=models.PROTECT, related_name="builds")
    state = models.CharField(max_length=16, choices=BuildState.choices, default=BuildState.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    current_step = models.CharField(max_length=64, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    verification = models.CharField(max_length=16, choices=Verification.choices, blank=True, default="")
    verification_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    # 1 for a first build; a retry is a new build pointing at the one it retries.
    attempt = models.PositiveIntegerField(default=1)
    retry_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    # Set once, by whichever bake task finishes last, so finalize is queued exactly once.
    finalize_queued = models.BooleanField(default=False)
    # Tasks of this build working right now. A stale heartbeat only means a dead worker while
    # one is running; with none running the build is merely waiting in the queue.
    tasks_running = models.PositiveIntegerField(default=0)
    # When the reaper last queued this build's next task again because nothing had worked on
    # it for BUILD_REQUEUE_AFTER seconds (its message lost with a broker restart).
    requeued_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["flavour"],
                condition=Q(state__in=ACTIVE_BUILD_STATES),
                name="builds_one_active_build_per_flavour",
            ),
            models.CheckConstraint(condition=Q(progress__lte=100), name="builds_progress_at_most_100"),
        ]
        indexes = [models.Index(fields=["state", "heartbeat_at"], name="builds_state_heartbeat")]

    def __str__(self) -> str:
        return f"build {self.id} of {self.flavour_id[:12]} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_BUILD_STATES

    @property
    def error_kind(self) -> str:
        """Whose move a failure is (user, upstream, infrastructure; the code registry's word)."""
        known = error_codes.lookup(self.error_code) if self.error_code else None
        return str(known.kind) if known else ""


class BuildStep(models.Model):
    """A timed step of a build: plan, bake and verify (one per extension), sign, publish, notify.

    ``extension`` names the extension a per-image step works on; empty for the flavour's steps.
    """

    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="steps")
    name = models.CharField(max_length=100)
    extension = models.CharField(max_length=100, blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, blank=True)  # ok | failed | cancelled | reused | skipped

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.outcome or 'running'})"


class BuildLogLine(models.Model):
    """One line of a build's live log; ``seq`` counts from 1 per build for tailing."""

    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="log_lines")
    # The step that wrote the line (the page folds the log per step); null outside any step.
    step = models.ForeignKey(BuildStep, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    seq = models.PositiveIntegerField()
    at = models.DateTimeField(auto_now_add=True)
    text = models.TextField()

    class Meta:
        ordering = ["seq"]
        constraints = [models.UniqueConstraint(fields=["build", "seq"], name="builds_log_seq_unique")]

    def __str__(self) -> str:
        return f"{self.seq}: {self.text[:60]}"


class ImageArtifact(models.Model):
    """A baked sysext image, stored once and reused by every build that needs the same bytes.

    ``cache_key`` is the pipeline's ``image_cache_key``: everything that determines the bytes
    (recipe digest, version, arch, upstream digests, format, compression, tool versions).
    """

    cache_key = models.CharField(max_length=128, unique=True)
    extension_version = models.ForeignKey(
        "catalog.ExtensionVersion", on_delete=models.PROTECT, related_name="images"
    )
    arch = models.CharField(max_length=16, choices=Arch.choices)
    file_name = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    sha512 = models.CharField(max_length=128, blank=True)
    size = models.BigIntegerField()
    key = models.CharField(max_length=512, help_text="Where the image lives in the artifact store.")
    image_format = models.CharField(max_length=16, default="squashfs")
    compression = models.CharField(max_length=16, default="gzip")
    built_by = models.ForeignKey(Build, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.file_name


class BuildImage(models.Model):
    """One extension image a build needs: baked by a parallel task, or reused from the cache."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="images")
    extension_version = models.ForeignKey(
        "catalog.ExtensionVersion", on_delete=models.PROTECT, related_name="+"
    )
    image = models.ForeignKey(
        ImageArtifact, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    reused = models.BooleanField(default=False)
    verification = models.CharField(max_length=16, choices=Verification.choices, blank=True, default="")
    verification_reason = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["build", "extension_version"], name="builds_build_image_unique")
        ]

    def __str__(self) -> str:
        return f"{self.extension_version} in {self.build_id}"


class ArtifactKind(models.TextChoices):
    IMAGE = "image", "Sysext image"
    SHA256SUMS = "sha256sums", "SHA256SUMS"
    SIGNATURE = "signature", "SHA256SUMS.gpg"
    TRANSFER = "transfer", "sysupdate transfer file"
    BUTANE = "butane", "Butane config"
    IGNITION = "ignition", "Ignition config"
    KEYRING = "keyring", "Public keyring"
    SBOM = "sbom", "SBOM (SPDX)"
    DISK_IMAGE = "disk-image", "Pre-baked Flatcar disk image"


class Artifact(models.Model):
    """A published object of a build, as uploaded and re-read (sha256 checked) in the store."""

    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="artifacts")
    flavour = models.ForeignKey(Flavour, on_delete=models.PROTECT, related_name="artifacts")
    kind = models.CharField(max_length=16, choices=ArtifactKind.choices)
    name = models.CharField(max_length=255, help_text="File name shown to people.")
    key = models.CharField(max_length=512)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    content_type = models.CharField(max_length=100, default="application/octet-stream")

    class Meta:
        ordering = ["kind", "name"]
        constraints = [models.UniqueConstraint(fields=["build", "key"], name="builds_artifact_key_unique")]

    def __str__(self) -> str:
        return self.key


class Webhook(models.Model):
    """A URL of a team that receives an HMAC-signed JSON event when one of its builds ends."""

    team = models.ForeignKey("catalog.Team", on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=128)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.url


class WebhookDelivery(models.Model):
    """One event sent (or being retried) to a webhook; kept so a team can see what happened."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    build = models.ForeignKey(Build, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event = models.CharField(max_length=50)
    payload = models.JSONField()
    attempts = models.PositiveIntegerField(default=0)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.event} -> {self.webhook_id}"
