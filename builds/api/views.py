"""REST views of flavours, builds and webhooks: thin, team-scoped, errors as ``{code, message}``.

Every queryset is scoped to the asking user's teams, so another team's flavour or build is a
404 exactly like an ID that does not exist. Writing needs a role in the owning team: builder to
create flavours and start, cancel or retry builds; admin to manage webhooks.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from builds import selectors, services
from builds.access import flavour_token_rotate
from builds.adapters.store import ArtifactNotFound, ArtifactStoreError, get_artifact_store
from builds.api.serializers import (
    BuildLogSerializer,
    BuildSerializer,
    FlavourComparisonSerializer,
    FlavourCreateSerializer,
    FlavourSerializer,
    WebhookCreatedSerializer,
    WebhookCreateSerializer,
    WebhookDeliverySerializer,
    WebhookSerializer,
    _absolute,
)
from builds.cache_scopes import IMAGES_SCOPE, build_scope, flavour_scope
from builds.compare import flavour_compare
from builds.flavours import FlavourInvalid
from builds.models import FINISHED_BUILD_STATES, Artifact, ArtifactKind, Build, BuildImage
from catalog.models import Role, Team
from catalog.permissions import has_team_role
from portal import read_cache
from portal.read_cache import CachedRead

ERROR = inline_serializer("Error", {"code": serializers.CharField(), "message": serializers.CharField()})
VALIDATION_ERROR = inline_serializer(
    "ValidationErrorBody",
    # A body that is not JSON at all (parse_error) has no per-field detail.
    {
        "code": serializers.CharField(),
        "message": serializers.CharField(),
        "fields": serializers.DictField(required=False),
    },
)


def _store_refusal(artifact: Artifact, exc: ArtifactStoreError) -> services.BuildRefused:
    """A store failure while serving a published file, as a JSON answer instead of a 500."""
    if isinstance(exc, ArtifactNotFound) or exc.code == "store.invalid-key":
        return services.BuildRefused(
            "artifact.missing",
            f"{artifact.name} of this build is no longer in the artifact store; "
            "start a build of the flavour again (POST .../builds/) to publish it anew.",
        )
    # The operator's problem (store.unavailable is infrastructure: 503), not the user's.
    return services.BuildRefused(
        "store.unavailable",
        f"The artifact store cannot be read right now ({exc.message}); try again shortly.",
    )


def _require_role(user: Any, team: Team, role: str, action: str) -> None:
    if not has_team_role(user, team, role):
        raise exceptions.PermissionDenied(
            detail=f"To {action} you need the {role} role in team {team.slug}.", code="forbidden"
        )


def _choose_team(user: Any, slug: Any, role: str, action: str) -> Team:
    """The team a new object belongs to: the one named, or the user's only team with ``role``."""
    teams = selectors.teams_where_user_is(user=user, at_least=Role.VIEWER)
    if slug not in (None, ""):
        team = next((t for t in teams if t.slug == slug), None)
        if team is None:
            raise exceptions.ValidationError({"team": [f"No team {slug!r} among your teams."]})
        _require_role(user, team, role, action)
        return team
    allowed = [t for t in teams if has_team_role(user, t, role)]
    if len(allowed) == 1:
        return allowed[0]
    if not allowed:
        raise exceptions.PermissionDenied(
            detail=f"To {action} you need the {role} role in a team.", code="forbidden"
        )
    slugs = ", ".join(t.slug for t in allowed)
    raise exceptions.ValidationError({"team": [f"You are in several teams; choose one of {slugs}."]})


def _reject_unknown_fields(data: Any, known: set[str]) -> None:
    if not isinstance(data, dict):
        raise exceptions.ValidationError({"non_field_errors": ["Expected a JSON object."]})
    unknown = sorted(set(data) - known)
    if unknown:
        raise exceptions.ValidationError({name: ["Unknown field."] for name in unknown})


def _build_queryset(user: Any) -> Any:
    images = BuildImage.objects.select_related("extension_version__extension", "image").order_by(
        "extension_version__extension__name"
    )
    # Artifacts check their flavour's team (privacy) when serialized: fetched with them.
    artifacts = Artifact.objects.select_related("flavour__team")
    return selectors.builds_with_queue_position(selectors.builds_visible_to(user=user)).prefetch_related(
        "steps", "retries", Prefetch("artifacts", queryset=artifacts), Prefetch("images", queryset=images)
    )


# --- flavours -----------------------------------------------------------------------------------


class FlavourListCreateView(CachedRead, generics.ListAPIView):
    """The flavours of your teams; POST composes a new one."""

    serializer_class = FlavourSerializer

    def get_queryset(self) -> Any:
        return selectors.flavours_visible_to(user=self.request.user).order_by("-created_at")

    @extend_schema(
        request=FlavourCreateSerializer,
        responses={
            201: OpenApiResponse(
                FlavourSerializer,
                description="The flavour: new, or the existing one when the same choices were posted before.",
            ),
            400: VALIDATION_ERROR,
            403: ERROR,
        },
        description=(
            "Compose a flavour. Its ID is the sha256 of the canonical document of the choices, so the "
            "same choices return the existing flavour with the same ID. Every problem is reported per "
            "field (400). "
            "Flavours never change: to edit one, post the new choices with revision_of=<its ID>; the "
            "result is its next revision, and earlier revisions and their artifacts stay available."
        ),
    )
    def post(self, request: Request) -> Response:
        data: Any = request.data
        _reject_unknown_fields(data, set(FlavourCreateSerializer().fields))
        team = _choose_team(request.user, data.get("team"), Role.BUILDER, "compose flavours")
        revision_of = None
        if data.get("revision_of"):
            revision_of = (
                selectors.flavours_visible_to(user=request.user).filter(pk=data["revision_of"]).first()
            )
            if revision_of is None:
                raise exceptions.ValidationError({"revision_of": ["No such flavour among your teams."]})
        try:
            flavour, _created = services.flavour_create(
                user=request.user,
                team=team,
                name=data.get("name"),
                description=data.get("description", ""),
                arch=data.get("arch"),
                extensions=data.get("extensions"),
                options=data.get("options"),
                revision_of=revision_of,
            )
        except FlavourInvalid as invalid:
            raise exceptions.ValidationError(invalid.errors) from None
        body = FlavourSerializer(flavour, context={"request": request}).data
        # 201 either way: a flavour is addressed by its choices, so posting them again names the
        # same resource; the Location is where it lives.
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})


class FlavourDetailView(CachedRead, generics.RetrieveAPIView):
    serializer_class = FlavourSerializer

    def get_queryset(self) -> Any:
        return selectors.flavours_visible_to(user=self.request.user)


class FlavourRotateTokenView(APIView):
    @extend_schema(
        request=None,
        responses={200: FlavourSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
        description=(
            "Replace a private flavour's token (builders). The old token URLs answer 404 at once; the "
            "flavour's files are published again with the new token by a build (build_url)."
        ),
    )
    def post(self, request: Request, pk: str) -> Response:
        flavour = get_object_or_404(selectors.flavours_visible_to(user=request.user), pk=pk)
        _token, build = flavour_token_rotate(flavour=flavour, user=request.user)
        body = dict(FlavourSerializer(flavour, context={"request": request}).data)
        body["build_url"] = _absolute(request, reverse("builds-api:build-detail", args=[build.pk]))
        return Response(body)


class FlavourCompareView(APIView):
    @extend_schema(
        responses={200: FlavourComparisonSerializer, 404: ERROR},
        description=(
            "What changed from flavour {base} to flavour {pk}, typically two revisions of one flavour "
            "(any two flavours of your teams): extensions added, removed or at another version, "
            "options, and a unified diff of their Butane configs (a flavour not built yet is compared "
            "with its preview)."
        ),
    )
    def get(self, request: Request, pk: str, base: str) -> Response:
        visible = selectors.flavours_visible_to(user=request.user)
        flavour = get_object_or_404(visible, pk=pk)
        base_flavour = get_object_or_404(visible, pk=base)
        comparison = flavour_compare(old=base_flavour, new=flavour)
        return Response(FlavourComparisonSerializer(comparison, context={"request": request}).data)


class _FlavourConfigView(CachedRead, APIView):
    kind: str = ""
    content_type: str = ""

    def read_cache_scopes(self) -> list[str]:
        return [read_cache.DATA, flavour_scope(self.kwargs["pk"])]

    def get(self, request: Request, pk: str) -> HttpResponse:
        flavour = get_object_or_404(selectors.flavours_visible_to(user=request.user), pk=pk)
        artifact = (
            Artifact.objects.filter(flavour=flavour, kind=self.kind, build__state="succeeded")
            .order_by("-build__finished_at")
            .first()
        )
        if artifact is None:
            raise services.BuildRefused(
                "flavour.not-built",
                "This flavour has no successful build yet; start one (POST .../builds/) and wait for it.",
            )
        try:
            data = get_artifact_store().get_bytes(artifact.key)
        except ArtifactStoreError as exc:
            raise _store_refusal(artifact, exc) from None
        return HttpResponse(data, content_type=self.content_type)


class FlavourButaneView(_FlavourConfigView):
    kind = ArtifactKind.BUTANE
    content_type = "application/yaml; charset=utf-8"

    @extend_schema(
        responses={(200, "application/yaml"): OpenApiTypes.STR, 404: ERROR, 409: ERROR, 503: ERROR},
        description="The Butane config (YAML) published by the flavour's latest successful build.",
    )
    def get(self, request: Request, pk: str) -> HttpResponse:
        return super().get(request, pk)


class FlavourIgnitionView(_FlavourConfigView):
    kind = ArtifactKind.IGNITION
    content_type = "application/json"

    @extend_schema(
        responses={(200, "application/json"): OpenApiTypes.OBJECT, 404: ERROR, 409: ERROR, 503: ERROR},
        description="The Ignition config (JSON) transpiled from the flavour's Butane config.",
    )
    def get(self, request: Request, pk: str) -> HttpResponse:
        return super().get(request, pk)


class FlavourBuildsView(generics.ListAPIView):
    """The builds of one flavour; POST starts one (or returns the build that already covers it)."""

    serializer_class = BuildSerializer

    def get_queryset(self) -> Any:
        flavour = get_object_or_404(
            selectors.flavours_visible_to(user=self.request.user), pk=self.kwargs["pk"]
        )
        return _build_queryset(self.request.user).filter(flavour=flavour).order_by("-created_at")

    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(
                BuildSerializer,
                description=(
                    "The build, with its URL in Location: a newly queued one, or the identical build that "
                    "is already queued, running or succeeded (see its state); poll it until it ends."
                ),
            ),
            403: ERROR,
            404: ERROR,
        },
    )
    def post(self, request: Request, pk: str) -> Response:
        flavour = get_object_or_404(selectors.flavours_visible_to(user=request.user), pk=pk)
        _require_role(request.user, flavour.team, Role.BUILDER, "start builds")
        build, _created = services.build_request(flavour=flavour, user=request.user)
        return _build_response(request, build)


def _build_response(request: Request, build: Build) -> Response:
    """202 with the build and its URL: clients poll it whether it is new, running or already done."""
    build = _build_queryset(request.user).get(pk=build.pk)
    body = BuildSerializer(build, context={"request": request}).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


# --- builds -------------------------------------------------------------------------------------


class BuildListView(generics.ListAPIView):
    """Builds of your teams, newest first."""

    serializer_class = BuildSerializer

    def get_queryset(self) -> Any:
        return _build_queryset(self.request.user).order_by("-created_at")


# How long a queued or running build's status may be answered again (see read_cache_seconds).
ACTIVE_BUILD_SECONDS = 1


class BuildDetailView(CachedRead, generics.RetrieveAPIView):
    """State, progress, steps with timings, queue position, images and artifacts of a build."""

    serializer_class = BuildSerializer

    def read_cache_scopes(self) -> list[str]:
        return [read_cache.DATA, build_scope(self.kwargs["pk"]), IMAGES_SCOPE]

    def read_cache_seconds(self, response: Any) -> int:
        if response.data.get("state") in FINISHED_BUILD_STATES:
            return read_cache.ENTRY_SECONDS
        # A running build's progress moves by update() (no signal, no bump) many times a minute;
        # clients polling it every fraction of a second share one answer a second. Its end shows
        # at once: build_end bumps the build's scope.
        return ACTIVE_BUILD_SECONDS

    def get_queryset(self) -> Any:
        return _build_queryset(self.request.user)


class BuildLogView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "after", int, description="Only lines with seq greater than this (live tailing)."
            )
        ],
        responses={200: BuildLogSerializer, 400: ERROR, 404: ERROR},
    )
    def get(self, request: Request, pk: str) -> Response:
        build = get_object_or_404(selectors.builds_visible_to(user=request.user), pk=pk)
        raw_after = request.query_params.get("after", "0")
        try:
            after = int(raw_after)
            if after < 0:
                raise ValueError
        except ValueError:
            raise exceptions.ValidationError({"after": ["Expected a whole number, 0 or more."]}) from None
        lines = list(selectors.build_log_lines(build=build, after=after))
        # A tail that read every line of an ended build can stop polling.
        finished = build.state in FINISHED_BUILD_STATES and len(lines) < 1000
        body = {
            "state": build.state,
            "finished": finished,
            "next_after": lines[-1].seq if lines else after,
            "lines": lines,
        }
        return Response(BuildLogSerializer(body).data)


class BuildCancelView(APIView):
    @extend_schema(request=None, responses={202: BuildSerializer, 403: ERROR, 404: ERROR, 409: ERROR})
    def post(self, request: Request, pk: str) -> Response:
        build = get_object_or_404(selectors.builds_visible_to(user=request.user), pk=pk)
        _require_role(request.user, build.flavour.team, Role.BUILDER, "cancel builds")
        build = services.build_cancel(build=build, user=request.user)
        return _build_response(request, build)


class BuildRetryView(APIView):
    @extend_schema(request=None, responses={202: BuildSerializer, 403: ERROR, 404: ERROR, 409: ERROR})
    def post(self, request: Request, pk: str) -> Response:
        build = get_object_or_404(selectors.builds_visible_to(user=request.user), pk=pk)
        _require_role(request.user, build.flavour.team, Role.BUILDER, "retry builds")
        retried, _created = services.build_retry(build=build, user=request.user)
        return _build_response(request, retried)


class ArtifactDownloadView(APIView):
    """For people: check access, then stream from the local store or redirect to a presigned URL."""

    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            302: OpenApiResponse(description="Redirect to a short-lived presigned URL."),
            404: ERROR,
            503: ERROR,
        }
    )
    def get(self, request: Request, pk: str, artifact_id: int) -> HttpResponseBase:
        build = get_object_or_404(selectors.builds_visible_to(user=request.user), pk=pk)
        artifact = get_object_or_404(Artifact, pk=artifact_id, build=build)
        store = get_artifact_store()
        try:
            presigned = store.presigned_url(artifact.key, expires=300)
            if presigned:
                return HttpResponseRedirect(presigned)
            stream = store.open(artifact.key)
        except ArtifactStoreError as exc:
            raise _store_refusal(artifact, exc) from None
        response: FileResponse | StreamingHttpResponse = FileResponse(
            stream,
            as_attachment=True,
            filename=artifact.name,
            content_type=artifact.content_type,
        )
        return response


# --- webhooks -----------------------------------------------------------------------------------


class WebhookListCreateView(generics.ListAPIView):
    """Your teams' webhooks; POST registers a URL for signed build events (admin role)."""

    serializer_class = WebhookSerializer

    def get_queryset(self) -> Any:
        return selectors.webhooks_visible_to(user=self.request.user)

    @extend_schema(
        request=WebhookCreateSerializer,
        responses={201: WebhookCreatedSerializer, 400: VALIDATION_ERROR, 403: ERROR},
        description=(
            "Each event is a JSON POST with header X-Bakehouse-Signature: sha256=<hex HMAC-SHA256 of the "
            "body with the secret>. The secret is shown only in this response."
        ),
    )
    def post(self, request: Request) -> Response:
        _reject_unknown_fields(request.data, set(WebhookCreateSerializer().fields))
        serializer = WebhookCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        team = _choose_team(
            request.user, serializer.validated_data.get("team"), Role.ADMIN, "manage webhooks"
        )
        try:
            hook = services.webhook_create(
                team=team,
                user=request.user,
                url=serializer.validated_data["url"],
                secret=serializer.validated_data.get("secret"),
            )
        except services.BuildRefused as refused:
            raise exceptions.ValidationError({"url": [refused.message]}) from None
        return Response(WebhookCreatedSerializer(hook).data, status=status.HTTP_201_CREATED)


class WebhookDetailView(generics.RetrieveDestroyAPIView):
    serializer_class = WebhookSerializer

    def get_queryset(self) -> Any:
        return selectors.webhooks_visible_to(user=self.request.user)

    def perform_destroy(self, instance: Any) -> None:
        _require_role(self.request.user, instance.team, Role.ADMIN, "manage webhooks")
        instance.delete()


class WebhookDeliveriesView(generics.ListAPIView):
    serializer_class = WebhookDeliverySerializer

    def get_queryset(self) -> Any:
        hook = get_object_or_404(selectors.webhooks_visible_to(user=self.request.user), pk=self.kwargs["pk"])
        return hook.deliveries.all()
