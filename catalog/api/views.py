"""REST views of the catalog: a few lines each; scoping in selectors, rules in services."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.generics import GenericAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from catalog import services, uploads
from catalog.api.serializers import (
    PRIVACY_NOTE,
    CustomExtensionSerializer,
    ExtensionDetailSerializer,
    ExtensionListSerializer,
    ExtensionVersionSerializer,
    TeamMemberAddSerializer,
    TeamMemberRoleSerializer,
    TeamMemberSerializer,
    TeamSerializer,
    VersionDecisionSerializer,
    VersionProposeSerializer,
)
from catalog.errors import CatalogError, CatalogNotFound
from catalog.filters import ExtensionFilterSet
from catalog.models import Extension, ExtensionVersion, Role, Team
from catalog.permissions import has_team_role, team_for_user, teams_of
from catalog.selectors import (
    extension_detail_queryset,
    extension_get_for_user,
    extensions_visible_to,
    version_get_for_user,
)
from portal.read_cache import CachedRead


class CatalogAPIView(GenericAPIView):
    """The catalog's views; their refusals (``CatalogError``, ``PipelineError``) are answered as
    ``{code, message}`` by portal.api.exception_handler, never a 500."""

    def team_param(self) -> Team | None:
        slug = self.request.query_params.get("team")
        return team_for_user(self.request.user, slug) if slug else None


def _with_versions(qs: Any) -> Any:
    return qs.prefetch_related(
        Prefetch("versions", queryset=ExtensionVersion.objects.order_by("-proposed_at"))
    )


class ExtensionListView(CachedRead, mixins.ListModelMixin, CatalogAPIView):
    """GET: the extensions you can see (``?search=&status=&category=&arch=&team=``).
    POST: add a custom one."""

    # ListModelMixin only tells the OpenAPI generator that GET is a paginated list; the filter
    # backend documents ExtensionFilterSet's parameters and answers a wrong value with a 400.
    serializer_class = ExtensionListSerializer
    queryset = Extension.objects.none()  # the model, for the schema; get() scopes it to the user
    filter_backends = [DjangoFilterBackend]
    filterset_class = ExtensionFilterSet

    @extend_schema(
        parameters=[OpenApiParameter("team", str, description="Only this team's catalog (its slug).")]
    )
    def get(self, request: Request) -> Response:
        qs = self.filter_queryset(extensions_visible_to(request.user, team=self.team_param()))
        page = self.paginate_queryset(_with_versions(qs).order_by("name", "team__slug"))
        data = ExtensionListSerializer(page, many=True).data
        return self.get_paginated_response(data)

    @extend_schema(
        request=CustomExtensionSerializer,
        responses={201: ExtensionDetailSerializer, 202: ExtensionDetailSerializer},
        description="Add a team's private extension (builders). Only the team sees it in the catalog. "
        + PRIVACY_NOTE,
    )
    def post(self, request: Request) -> Response:
        form = CustomExtensionSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        team = self._target_team(data.get("team"))
        if "recipe" in data:
            extension = services.extension_create_custom(
                team=team, actor=request.user, recipe_text=data["recipe"]
            )
        else:
            upload = data["file"]
            limit = uploads.max_upload_bytes()
            if upload.size > limit:
                raise CatalogError(
                    "upload.too-large",
                    f"The archive is {upload.size} bytes; uploads are limited to {limit} bytes.",
                )
            archive = uploads.CustomArchive(
                name=data["name"],
                version=data["version"],
                file_name=upload.name or "upload",
                data=upload.read(),
                description=data["description"],
                category=data["category"],
                arches=data["arches"],
            )
            extension = services.extension_create_custom(team=team, actor=request.user, archive=archive)
        fresh = extension_detail_queryset(request.user, team=team).get(pk=extension.pk)
        # An upload is kept, not yet checked: its version stays "checking" until a worker has
        # unpacked it, then becomes "proposed" or "rejected" (with the refusal's code in "reason").
        answer = status.HTTP_201_CREATED if "recipe" in data else status.HTTP_202_ACCEPTED
        return Response(ExtensionDetailSerializer(fresh).data, status=answer)

    def _target_team(self, slug: str | None) -> Team:
        user = self.request.user
        if slug:
            return team_for_user(user, slug)
        candidates = [t for t in teams_of(user) if has_team_role(user, t, Role.BUILDER)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise CatalogError("forbidden", "Adding a custom extension needs the builder role in a team.")
        raise CatalogError("team.required", "You are in several teams: say which one with 'team' (its slug).")


class ExtensionDetailView(CachedRead, CatalogAPIView):
    """One extension with its relations, versions, digests and audit trail (``?team=`` if ambiguous)."""

    serializer_class = ExtensionDetailSerializer

    def get(self, request: Request, name: str) -> Response:
        team = self.team_param()
        extension = extension_get_for_user(
            request.user,
            name=name,
            team_slug=team.slug if team else None,
            queryset=extension_detail_queryset(request.user, team=team),
        )
        return Response(ExtensionDetailSerializer(extension).data)


class VersionProposeView(CatalogAPIView):
    """Propose a new version of an extension (builder or above)."""

    serializer_class = VersionProposeSerializer

    @extend_schema(request=VersionProposeSerializer, responses={201: ExtensionVersionSerializer})
    def post(self, request: Request, name: str) -> Response:
        team = self.team_param()
        extension: Extension = extension_get_for_user(
            request.user, name=name, team_slug=team.slug if team else None
        )
        form = VersionProposeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        version = services.version_propose(
            extension=extension,
            version=form.validated_data["version"],
            actor=request.user,
            vars=form.validated_data["vars"],
            reason=form.validated_data["reason"],
        )
        return Response(ExtensionVersionSerializer(version).data, status=status.HTTP_201_CREATED)


class VersionDetailView(CatalogAPIView):
    serializer_class = ExtensionVersionSerializer

    def get(self, request: Request, version_id: int) -> Response:
        version = version_get_for_user(request.user, version_id=version_id)
        return Response(ExtensionVersionSerializer(version).data)


class VersionDecisionView(CatalogAPIView):
    """Approve (then digests are pinned by a task) or reject (reason required): curators only."""

    serializer_class = VersionDecisionSerializer
    decision = "approve"

    @extend_schema(request=VersionDecisionSerializer, responses={200: ExtensionVersionSerializer})
    def post(self, request: Request, version_id: int) -> Response:
        version = version_get_for_user(request.user, version_id=version_id)
        form = VersionDecisionSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        decide = services.version_approve if self.decision == "approve" else services.version_reject
        decided = decide(version=version, actor=request.user, reason=form.validated_data["reason"])
        decided.refresh_from_db()
        return Response(ExtensionVersionSerializer(decided).data)


class VersionDeprecateView(CatalogAPIView):
    """Stop (deprecate) or resume (undeprecate) offering an approved version for new flavours:
    curators only. Existing flavours keep building it either way."""

    serializer_class = VersionDecisionSerializer
    deprecated = True

    @extend_schema(request=VersionDecisionSerializer, responses={200: ExtensionVersionSerializer})
    def post(self, request: Request, version_id: int) -> Response:
        version = version_get_for_user(request.user, version_id=version_id)
        form = VersionDecisionSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        changed = services.version_deprecate(
            version=version,
            actor=request.user,
            reason=form.validated_data["reason"],
            deprecated=self.deprecated,
        )
        changed.refresh_from_db()
        return Response(ExtensionVersionSerializer(changed).data)


class TeamDetailView(CatalogAPIView):
    """GET: a team of yours and its rules. PATCH: a team admin switches them
    (``two_person_approval``, ``private_artifacts``)."""

    serializer_class = TeamSerializer

    def get(self, request: Request, slug: str) -> Response:
        return Response(TeamSerializer(team_for_user(request.user, slug)).data)

    @extend_schema(request=TeamSerializer, responses={200: TeamSerializer})
    def patch(self, request: Request, slug: str) -> Response:
        team = team_for_user(request.user, slug)
        form = TeamSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        services.team_settings_update(team=team, actor=request.user, **form.validated_data)
        return Response(TeamSerializer(team).data)


class TeamMemberListView(CatalogAPIView):
    """GET: a team's members and roles (any member). POST: a team admin adds an existing account
    (``{username, role}``); an unknown username is a 400 saying so, an existing member a 409."""

    serializer_class = TeamMemberSerializer

    @extend_schema(responses={200: TeamMemberSerializer(many=True)})
    def get(self, request: Request, slug: str) -> Response:
        team = team_for_user(request.user, slug)
        members = team.memberships.select_related("user").order_by("user__username")
        return Response(TeamMemberSerializer(members, many=True).data)

    @extend_schema(request=TeamMemberAddSerializer, responses={201: TeamMemberSerializer})
    def post(self, request: Request, slug: str) -> Response:
        team = team_for_user(request.user, slug)
        form = TeamMemberAddSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        membership = services.team_member_add(team=team, actor=request.user, **form.validated_data)
        return Response(TeamMemberSerializer(membership).data, status=status.HTTP_201_CREATED)


class TeamMemberDetailView(CatalogAPIView):
    """PATCH ``{role}``: a team admin changes a member's role. DELETE: removes the member.
    The team's last admin can be neither demoted nor removed (409)."""

    serializer_class = TeamMemberSerializer

    def get(self, request: Request, slug: str, username: str) -> Response:
        team = team_for_user(request.user, slug)
        membership = team.memberships.select_related("user").filter(user__username=username).first()
        if membership is None:
            raise CatalogNotFound("team.not-member", f"{username!r} is not a member of team {team.slug}.")
        return Response(TeamMemberSerializer(membership).data)

    @extend_schema(request=TeamMemberRoleSerializer, responses={200: TeamMemberSerializer})
    def patch(self, request: Request, slug: str, username: str) -> Response:
        team = team_for_user(request.user, slug)
        form = TeamMemberRoleSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        membership = services.team_member_change_role(
            team=team, actor=request.user, username=username, role=form.validated_data["role"]
        )
        return Response(TeamMemberSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, username: str) -> Response:
        team = team_for_user(request.user, slug)
        services.team_member_remove(team=team, actor=request.user, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)
