"""REST representations of flavours, builds and webhooks.

Flavour submissions are validated by ``builds.flavours`` on the raw request (so that nothing a
user sends is dropped silently); the input serializers here describe that shape for OpenAPI.
"""

from __future__ import annotations

import json
from typing import Any, cast
from urllib.parse import urlsplit

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from builds import build_report, selectors
from builds.flavours import OPTIONS, OptionSpec
from builds.models import (
    Arch,
    Artifact,
    Build,
    BuildLogLine,
    BuildState,
    BuildStep,
    Flavour,
    Webhook,
    WebhookDelivery,
)
from builds.published import PublishedFile, published_file


def _absolute(request: Any, path: str) -> str:
    return request.build_absolute_uri(path) if request is not None else path


# --- input shapes -------------------------------------------------------------------------------


class ExtensionChoiceSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="Extension name, e.g. wasmtime.")
    version = serializers.CharField(help_text="An approved version, e.g. v31.0.0.")


def _option_field(option: OptionSpec) -> serializers.Field:
    """The serializer field describing one flavour option (``builds.flavours.OPTIONS``)."""
    common: dict[str, Any] = {"help_text": option.help}
    if option.kind == "choice":
        return serializers.ChoiceField(choices=option.values, default=option.default, **common)
    if option.kind == "flag":
        return serializers.BooleanField(default=option.default, **common)
    if option.kind == "subset":
        return serializers.ListField(
            child=serializers.ChoiceField(choices=option.values), default=list, **common
        )
    if option.kind == "lines":
        return serializers.ListField(child=serializers.CharField(), default=list, **common)
    return serializers.CharField(
        default=option.default,
        allow_blank=True,
        trim_whitespace=option.strip,
        max_length=option.max_length,
        **common,
    )


# Made from the one declaration of the options, so the OpenAPI document matches the validator.
FlavourOptionsSerializer = type(
    "FlavourOptionsSerializer",
    (serializers.Serializer,),
    {
        "__module__": __name__,
        "__doc__": "Provisioning options; each omitted one takes its default.",
        **{option.name: _option_field(option) for option in OPTIONS},
    },
)


class FlavourCreateSerializer(serializers.Serializer):
    team = serializers.SlugField(
        required=False, help_text="Owning team's slug; needed only when you build in several teams."
    )
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(required=False, allow_blank=True)
    arch = serializers.ChoiceField(choices=Arch.choices)
    extensions = ExtensionChoiceSerializer(many=True)
    options = FlavourOptionsSerializer(required=False)
    revision_of = serializers.CharField(
        required=False, help_text="ID of the flavour this one edits: the result is its next revision."
    )


class WebhookCreateSerializer(serializers.Serializer):
    team = serializers.SlugField(required=False)
    url = serializers.URLField(max_length=500)
    secret = serializers.CharField(
        required=False, min_length=16, max_length=128, help_text="Generated when omitted (returned once)."
    )

    def validate_url(self, value: str) -> str:
        if not value.lower().startswith(("http://", "https://")):
            raise serializers.ValidationError("Webhook URLs are http or https.")
        try:
            urlsplit(value).port  # noqa: B018 - raises for a port outside 0-65535
        except ValueError:
            raise serializers.ValidationError("The URL's port must be a number from 1 to 65535.") from None
        return value


# --- output -------------------------------------------------------------------------------------


class FlavourSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    team = serializers.CharField(source="team.slug")
    extensions = serializers.SerializerMethodField()
    document = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", default=None)
    butane_url = serializers.SerializerMethodField()
    ignition_url = serializers.SerializerMethodField()
    builds_url = serializers.SerializerMethodField()
    private = serializers.SerializerMethodField(
        help_text="Whether the artifacts are private (the option, or the team's private_artifacts)."
    )
    artifacts_url = serializers.SerializerMethodField(
        help_text="Where nodes read the flavour's files: PUBLIC_BASE_URL/flavours/ID/, or for a "
        "private flavour PUBLIC_BASE_URL/private/TOKEN/flavours/ID/ (a secret: keep it to the team)."
    )

    class Meta:
        model = Flavour
        fields = [
            "id", "url", "team", "name", "description", "arch", "extensions", "options",
            "lineage", "revision", "revision_of", "document", "created_by", "created_at",
            "butane_url", "ignition_url", "builds_url", "private", "artifacts_url",
        ]  # fmt: skip

    def get_private(self, obj: Flavour) -> bool:
        from builds.access import flavour_is_private

        return flavour_is_private(obj)

    def get_artifacts_url(self, obj: Flavour) -> str:
        from builds.access import artifact_url_for
        from builds.publication import flavour_prefix

        return artifact_url_for(obj)(flavour_prefix(obj.pk))

    def _url(self, name: str, obj: Flavour) -> str:
        return _absolute(self.context.get("request"), reverse(name, args=[obj.pk]))

    def get_url(self, obj: Flavour) -> str:
        return self._url("builds-api:flavour-detail", obj)

    def get_butane_url(self, obj: Flavour) -> str:
        return self._url("builds-api:flavour-butane", obj)

    def get_ignition_url(self, obj: Flavour) -> str:
        return self._url("builds-api:flavour-ignition", obj)

    def get_builds_url(self, obj: Flavour) -> str:
        return self._url("builds-api:flavour-builds", obj)

    @extend_schema_field(
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "catalog": {"type": "string", "description": "'global' or the owning team's slug"},
                    "delivery": {"type": "string"},
                    "recipe_digest": {"type": "string"},
                    "pins": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        }
    )
    def get_extensions(self, obj: Flavour) -> list[dict[str, Any]]:
        return list(json.loads(obj.canonical)["extensions"])

    @extend_schema_field({"type": "object", "description": "The canonical document whose sha256 is the ID."})
    def get_document(self, obj: Flavour) -> dict[str, Any]:
        return dict(json.loads(obj.canonical))


class BuildStepSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.SerializerMethodField()
    extension = serializers.CharField(
        read_only=True,
        help_text="The extension a per-image step (bake, verify) works on; '' for the flavour's.",
    )
    outcome = serializers.CharField(
        read_only=True, help_text="ok, failed, cancelled, reused, skipped; '' while it runs."
    )

    class Meta:
        model = BuildStep
        fields = ["id", "name", "extension", "started_at", "finished_at", "duration_seconds", "outcome"]

    def get_duration_seconds(self, obj: BuildStep) -> float | None:
        return build_report.step_duration_seconds(obj)


class BuildStepGroupSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="'extension:NAME' or 'flavour'.")
    title = serializers.CharField()
    extension = serializers.CharField(help_text="'' for the flavour's steps (plan, sign, publish, notify).")
    outcome = serializers.CharField(
        help_text="failed if a step failed, cancelled if one was stopped, '' while one runs, else ok."
    )
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)
    steps = BuildStepSerializer(many=True)


class QueueEstimateSerializer(serializers.Serializer):
    position = serializers.IntegerField(help_text="1 for the next queued build to start.")
    running = serializers.IntegerField(
        help_text="Builds working right now (at least that many run side by side)."
    )
    typical_seconds = serializers.FloatField(
        allow_null=True, help_text="Median duration of the recent succeeded builds; null without any."
    )
    wait_seconds = serializers.FloatField(
        allow_null=True,
        help_text="About how long until the build starts: typical_seconds x position / max(running, 1).",
    )
    text = serializers.CharField(help_text='The same, in a sentence ("about"; says so without history).')


class FailureAdviceSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="The stable error code (build.cancelled for a cancelled build).")
    sentence = serializers.CharField(help_text="What went wrong.")
    kind = serializers.CharField(help_text="Whose move it is: user, upstream, infrastructure.")
    advice = serializers.CharField(help_text="What to do next, addressed to the caller.")
    can_retry = serializers.BooleanField(help_text="The caller may retry (POST .../retry).")
    ask = serializers.CharField(help_text="Whom to ask when the caller cannot act.")


class BuildRetrySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    attempt = serializers.IntegerField()
    state = serializers.CharField()
    url = serializers.CharField()
    page_url = serializers.CharField()


class ArtifactSerializer(serializers.ModelSerializer):
    download_url = serializers.SerializerMethodField(help_text="For people: checks access, then serves.")
    public_url = serializers.SerializerMethodField(
        help_text="The stable URL nodes fetch from (with the flavour's token when it is private)."
    )

    sha256sums_url = serializers.SerializerMethodField(
        help_text="The signed SHA256SUMS that lists this file (in the same directory), null for a "
        "SHA256SUMS or its signature. Verify: gpg --verify its .gpg with the flavour's "
        "import-pubring.gpg, then sha256sum -c --ignore-missing."
    )
    signature_url = serializers.SerializerMethodField(
        help_text="The detached signature of that SHA256SUMS (of this file, when it is a SHA256SUMS); "
        "null for a signature."
    )

    class Meta:
        model = Artifact
        fields = [
            "id", "kind", "name", "key", "sha256", "size", "content_type", "download_url", "public_url",
            "sha256sums_url", "signature_url",
        ]  # fmt: skip
        extra_kwargs = {
            "sha256": {
                "help_text": "As published by this build. An extension's SHA256SUMS is re-signed when "
                "later builds add versions of it, so its bytes may have changed since."
            }
        }

    def _published(self, obj: Artifact) -> PublishedFile:
        from builds.access import artifact_url_for

        # One URL rule per flavour per response (a private flavour's token is read once).
        cache: dict[str, Any] = self.__dict__.setdefault("_node_urls", {})
        if obj.flavour_id not in cache:
            cache[obj.flavour_id] = artifact_url_for(obj.flavour)
        return published_file(obj, cache[obj.flavour_id])

    def get_download_url(self, obj: Artifact) -> str:
        path = reverse("builds-api:artifact-download", args=[obj.build_id, obj.pk])
        return _absolute(self.context.get("request"), path)

    def get_public_url(self, obj: Artifact) -> str:
        # A private flavour's nodes use its token URL; the public one answers 404.
        return self._published(obj).url

    def get_sha256sums_url(self, obj: Artifact) -> str | None:
        return self._published(obj).sums_url

    def get_signature_url(self, obj: Artifact) -> str | None:
        return self._published(obj).signature_url


class BuildImageSerializer(serializers.Serializer):
    name = serializers.CharField(source="extension_version.extension.name")
    version = serializers.CharField(source="extension_version.version")
    state = serializers.CharField()
    reused = serializers.BooleanField(help_text="Taken from the image cache instead of baked.")
    file_name = serializers.CharField(source="image.file_name", default=None, allow_null=True)
    sha256 = serializers.CharField(source="image.sha256", default=None, allow_null=True)
    size = serializers.IntegerField(source="image.size", default=None, allow_null=True)
    verification = serializers.CharField()
    verification_reason = serializers.CharField()


class BuildSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    flavour_url = serializers.SerializerMethodField()
    log_url = serializers.SerializerMethodField()
    queue_position = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username", default=None)
    error_kind = serializers.ChoiceField(
        choices=["", "user", "upstream", "infrastructure"],
        read_only=True,
        help_text="Whose move a failure is: the request (user), a server we download from (upstream), "
        "or this installation (infrastructure: an operator has to act; then retry).",
    )
    steps = BuildStepSerializer(many=True, read_only=True)
    step_groups = serializers.SerializerMethodField()
    duration_seconds = serializers.SerializerMethodField(
        help_text="From the start to the end (to now while it runs); null before it started."
    )
    queued_seconds = serializers.SerializerMethodField(help_text="How long it waited for a worker.")
    queue = serializers.SerializerMethodField()
    failure = serializers.SerializerMethodField()
    install_command = serializers.SerializerMethodField(
        help_text="Once succeeded: the commands that install a node from the published Ignition."
    )
    page_url = serializers.SerializerMethodField(help_text="The build's page, for people.")
    flavour_page_url = serializers.SerializerMethodField(help_text="The flavour's page: downloads, install.")
    retries = serializers.SerializerMethodField()
    images = BuildImageSerializer(many=True, read_only=True)
    artifacts = ArtifactSerializer(many=True, read_only=True)

    class Meta:
        model = Build
        fields = [
            "id", "url", "page_url", "flavour", "flavour_url", "flavour_page_url", "state", "progress",
            "current_step", "queue_position", "queue",
            "error_code", "error_message", "error_kind", "failure", "verification", "verification_reason",
            "cancel_requested",
            "attempt", "retry_of", "retries", "created_by", "created_at", "started_at", "finished_at",
            "heartbeat_at", "duration_seconds", "queued_seconds",
            "steps", "step_groups", "images", "artifacts", "install_command", "log_url",
        ]  # fmt: skip

    def _list_memo(self) -> dict[str, Any]:
        """What the rows of one list share (their serializers share the root's context dict)."""
        return cast(dict[str, Any], self.context)

    def get_url(self, obj: Build) -> str:
        return _absolute(self.context.get("request"), reverse("builds-api:build-detail", args=[obj.pk]))

    def get_flavour_url(self, obj: Build) -> str:
        return _absolute(
            self.context.get("request"), reverse("builds-api:flavour-detail", args=[obj.flavour_id])
        )

    def get_log_url(self, obj: Build) -> str:
        return _absolute(self.context.get("request"), reverse("builds-api:build-log", args=[obj.pk]))

    def get_queue_position(self, obj: Build) -> int | None:
        return selectors.build_queue_position(build=obj)

    @extend_schema_field(BuildStepGroupSerializer(many=True))
    def get_step_groups(self, obj: Build) -> list[dict[str, Any]]:
        groups = build_report.step_groups(list(obj.steps.all()))
        return [
            BuildStepGroupSerializer(
                {
                    "key": group.key,
                    "title": group.title,
                    "extension": group.extension,
                    "outcome": group.outcome,
                    "started_at": group.started_at,
                    "finished_at": group.finished_at,
                    "duration_seconds": group.duration_seconds,
                    "steps": group.steps,
                }
            ).data
            for group in groups
        ]

    def get_duration_seconds(self, obj: Build) -> float | None:
        return build_report.build_duration_seconds(obj)

    def get_queued_seconds(self, obj: Build) -> float | None:
        return build_report.queued_seconds(obj)

    @extend_schema_field(QueueEstimateSerializer(allow_null=True))
    def get_queue(self, obj: Build) -> dict[str, Any] | None:
        """A queued build's position and about when it starts; null once it started."""
        # One queue load for a whole list (the context is shared by a list's rows).
        memo = self._list_memo()
        load = memo.get("queue_load")
        if load is None and obj.state == BuildState.QUEUED:
            load = memo["queue_load"] = build_report.queue_load()
        estimate = build_report.queue_estimate(obj, load=load)
        if estimate is None:
            return None
        return {
            "position": estimate.position,
            "running": estimate.running,
            "typical_seconds": estimate.typical_seconds,
            "wait_seconds": estimate.wait_seconds,
            "text": estimate.text,
        }

    @extend_schema_field(FailureAdviceSerializer(allow_null=True))
    def get_failure(self, obj: Build) -> dict[str, Any] | None:
        """A failed or cancelled build's code, sentence and what to do; null otherwise."""
        from catalog.models import Role
        from catalog.permissions import has_team_role

        if obj.state not in (BuildState.FAILED, BuildState.CANCELLED):
            return None
        request = self.context.get("request")
        # The reader's role per team, looked up once per list rather than once per row.
        roles = self._list_memo().setdefault("can_build_in_team", {})
        if obj.flavour.team_id not in roles:
            roles[obj.flavour.team_id] = request is not None and has_team_role(
                request.user, obj.flavour.team, Role.BUILDER
            )
        advice = build_report.failure_advice(obj, can_build=roles[obj.flavour.team_id])
        return None if advice is None else FailureAdviceSerializer(advice).data

    def get_install_command(self, obj: Build) -> str:
        return build_report.install_command(obj)

    def get_page_url(self, obj: Build) -> str:
        return _absolute(self.context.get("request"), reverse("builds:build-detail", args=[obj.pk]))

    def get_flavour_page_url(self, obj: Build) -> str:
        return _absolute(self.context.get("request"), reverse("builds:flavour-detail", args=[obj.flavour_id]))

    @extend_schema_field(BuildRetrySerializer(many=True))
    def get_retries(self, obj: Build) -> list[dict[str, Any]]:
        """The builds that retried this one, newest first (a retry is a new build)."""
        request = self.context.get("request")
        return [
            {
                "id": retry.pk,
                "attempt": retry.attempt,
                "state": retry.state,
                "url": _absolute(request, reverse("builds-api:build-detail", args=[retry.pk])),
                "page_url": _absolute(request, reverse("builds:build-detail", args=[retry.pk])),
            }
            for retry in sorted(obj.retries.all(), key=lambda retry: retry.created_at, reverse=True)
        ]


class BuildLogLineSerializer(serializers.ModelSerializer):
    step = serializers.IntegerField(
        source="step_id", allow_null=True, read_only=True, help_text="The id of the step that wrote it."
    )

    class Meta:
        model = BuildLogLine
        fields = ["seq", "at", "step", "text"]


class BuildLogSerializer(serializers.Serializer):
    state = serializers.CharField(help_text="The build's state when the lines were read.")
    finished = serializers.BooleanField(help_text="True once no more lines will come.")
    next_after = serializers.IntegerField(help_text="Pass as ?after= to get only newer lines.")
    lines = BuildLogLineSerializer(many=True)


class WebhookSerializer(serializers.ModelSerializer):
    team = serializers.CharField(source="team.slug")

    class Meta:
        model = Webhook
        fields = ["id", "team", "url", "active", "created_at"]


class WebhookCreatedSerializer(WebhookSerializer):
    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "build",
            "event",
            "attempts",
            "status_code",
            "delivered_at",
            "last_error",
            "created_at",
        ]


# --- compare ------------------------------------------------------------------------------------


class FlavourRefSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    revision = serializers.IntegerField()
    url = serializers.SerializerMethodField()

    def get_url(self, obj: Flavour) -> str:
        return _absolute(self.context.get("request"), reverse("builds-api:flavour-detail", args=[obj.pk]))


class ExtensionChangeSerializer(serializers.Serializer):
    name = serializers.CharField()
    change = serializers.ChoiceField(
        choices=["added", "removed", "changed", "recipe-changed"],
        help_text="changed: another version; recipe-changed: the same version with another recipe "
        "digest or upstream pins (other image bytes).",
    )
    old_version = serializers.CharField(allow_null=True)
    new_version = serializers.CharField(allow_null=True)


class OptionChangeSerializer(serializers.Serializer):
    name = serializers.CharField()
    old = serializers.JSONField(allow_null=True)
    new = serializers.JSONField(allow_null=True)


class ButaneDiffSerializer(serializers.Serializer):
    base_source = serializers.CharField(
        source="old_butane.source",
        help_text="Where the base's Butane came from: 'published' (its latest successful build's "
        "config.bu), 'preview' (not built yet: the composer's preview) or '' (none could be rendered).",
    )
    flavour_source = serializers.CharField(
        source="new_butane.source", help_text="The same for the flavour's Butane."
    )
    diff = serializers.SerializerMethodField(
        help_text="Unified diff from the base's config.bu to the flavour's."
    )

    def get_diff(self, obj: Any) -> str:
        return "".join(line.text + "\n" for line in obj.butane_diff)


class FlavourComparisonSerializer(serializers.Serializer):
    base = FlavourRefSerializer(source="old")
    flavour = FlavourRefSerializer(source="new")
    extensions = ExtensionChangeSerializer(many=True, help_text="Extensions that differ, by name.")
    unchanged_extensions = serializers.ListField(child=serializers.CharField(), source="unchanged")
    options = OptionChangeSerializer(many=True, help_text="Options that differ (and arch).")
    butane = ButaneDiffSerializer(source="*")
