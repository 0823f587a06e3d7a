"""Catalog pages. Reads go through catalog.selectors, writes through catalog.services."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from builds.pipeline.errors import PipelineError
from catalog import services, uploads
from catalog.errors import CatalogError, CatalogNotFound
from catalog.filters import ExtensionFilterSet
from catalog.forms import (
    CustomRecipeForm,
    CustomUploadForm,
    VersionDecisionForm,
    VersionProposeForm,
)
from catalog.models import Extension, ExtensionVersion, Role, Team, VersionStatus
from catalog.permissions import teams_of
from catalog.selectors import (
    extension_detail_queryset,
    extension_get_for_user,
    extensions_visible_to,
    team_role,
    version_get_for_user,
)
from portal.error_pages import error_page


@login_required
def extension_list(request: HttpRequest) -> HttpResponse:
    """Every extension the user may see, filtered by text, category and arch."""
    filterset = ExtensionFilterSet(
        request.GET, queryset=extensions_visible_to(request.user).prefetch_related("versions")
    )
    extensions = filterset.qs if filterset.is_valid() else filterset.queryset.none()
    return render(request, "catalog/extension_list.html", {"form": filterset.form, "extensions": extensions})


@login_required
def extension_detail(request: HttpRequest, name: str) -> HttpResponse:
    """One extension: description, relations, versions with status, pinned digests and audit trail."""
    try:
        extension = _visible_extension(request, name, queryset=extension_detail_queryset(request.user))
    except CatalogError as exc:
        return error_page(request, exc)
    role = team_role(request.user, extension.team)
    return render(
        request,
        "catalog/extension_detail.html",
        {
            "extension": extension,
            "versions": extension.newest_versions(),
            "can_propose": role is not None and role.at_least(Role.BUILDER),
            "can_decide": role is not None and role.at_least(Role.CURATOR),
        },
    )


def _visible_extension(
    request: HttpRequest, name: str, queryset: QuerySet[Extension] | None = None
) -> Extension:
    """The extension ``name`` the user sees; ``?team=slug`` picks a team's own one."""
    try:
        return extension_get_for_user(
            request.user, name=name, team_slug=request.GET.get("team") or None, queryset=queryset
        )
    except CatalogNotFound as exc:
        raise Http404(exc.message) from None


def extension_url(extension: Extension) -> str:
    url = reverse("catalog:extension-detail", args=[extension.name])
    return f"{url}?team={extension.team.slug}" if extension.team else url


def _attach_error(
    form: forms.Form, exc: CatalogError, field_for_code: dict[str, str], *, default: str | None = None
) -> None:
    """Show a service's refusal next to the field it concerns (else ``default``, else above the form)."""
    prefix = exc.code.split(".", 1)[0]
    field = field_for_code.get(exc.code) or field_for_code.get(prefix) or default
    form.add_error(field if field in form.fields else None, exc.message)


@login_required
@require_http_methods(["GET", "POST"])
def version_propose(request: HttpRequest, name: str) -> HttpResponse:
    """A builder files a new version of an extension for the curators."""
    try:
        extension = _visible_extension(request, name)
    except CatalogError as exc:
        return error_page(request, exc)
    form = VersionProposeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            version = services.version_propose(
                extension=extension,
                version=form.cleaned_data["version"].strip(),
                vars=form.cleaned_data["vars"],
                reason=form.cleaned_data["reason"],
                actor=request.user,
            )
        except CatalogError as exc:
            if exc.status == 403:
                return error_page(request, exc, back=extension_url(extension))
            _attach_error(form, exc, {"version": "version"})
        else:
            messages.success(request, f"{version} proposed; a curator will review it.")
            return redirect(extension_url(extension))
    return render(request, "catalog/version_propose.html", {"extension": extension, "form": form})


@login_required
@require_http_methods(["GET", "POST"])
def version_review(request: HttpRequest, pk: int) -> HttpResponse:
    """A curator approves (digests get pinned by a task) or rejects a proposed version, with a reason."""
    try:
        version = version_get_for_user(request.user, version_id=pk)
    except CatalogNotFound as exc:
        raise Http404(exc.message) from None
    extension = version.extension
    can_decide = (role := team_role(request.user, extension.team)) is not None and role.at_least(Role.CURATOR)
    if request.method == "POST" and "deprecated" in request.POST:
        return _version_deprecate(request, version)
    form = VersionDecisionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        decide = (
            services.version_approve
            if form.cleaned_data["decision"] == "approve"
            else services.version_reject
        )
        try:
            decided = decide(version=version, actor=request.user, reason=form.cleaned_data["reason"])
        except CatalogError as exc:
            if exc.status == 403:
                return error_page(request, exc, back=extension_url(extension))
            _attach_error(form, exc, {"reason": "reason"})
        else:
            if decided.status == "rejected":
                messages.success(request, f"{decided} rejected.")
                return redirect(extension_url(extension))
            # The review page follows the pinning live until it is approved or fails.
            messages.success(request, f"{decided} approved: its upstream digests are being pinned.")
            return redirect("catalog:version-review", decided.pk)
    own_proposal = services.two_person_rule(extension.team) and version.proposed_by_id == request.user.pk
    try:
        source_urls, source_urls_error = version.source_urls(), ""
        source_build = version.source_build()
    except PipelineError as exc:
        source_urls, source_urls_error, source_build = [], f"{exc.code}: {exc.message}", None
    pinned = {(d.arch, d.source_id): d.sha256 for d in version.digests.all()}
    for source in source_urls:
        source["sha256"] = pinned.get((source["arch"], source["source_id"]), "")
    context = {
        "version": version,
        "extension": extension,
        "form": form,
        "can_decide": can_decide,
        # While pinning runs the form is kept hidden: the page shows it again if pinning fails.
        "show_decision": can_decide and (version.decidable or version.status == VersionStatus.PINNING),
        "own_proposal": own_proposal,
        "source_urls": source_urls,
        "source_urls_error": source_urls_error,
        "source_build": source_build,
    }
    return render(request, "catalog/version_review.html", context)


def _version_deprecate(request: HttpRequest, version: ExtensionVersion) -> HttpResponse:
    """Stop offering an approved version for new flavours (or offer it again)."""
    deprecated = request.POST["deprecated"] == "yes"
    try:
        services.version_deprecate(
            version=version,
            actor=request.user,
            reason=request.POST.get("reason", "")[:2000],
            deprecated=deprecated,
        )
    except CatalogError as exc:
        return error_page(request, exc, back=extension_url(version.extension))
    verb = (
        "deprecated: existing flavours keep building it" if deprecated else "offered for new flavours again"
    )
    messages.success(request, f"{version} {verb}.")
    return redirect(extension_url(version.extension))


@login_required
@require_http_methods(["GET", "POST"])
def custom_extension_create(request: HttpRequest) -> HttpResponse:
    """A team adds a private extension, from a recipe or an uploaded archive; versions await a curator."""
    teams = [
        t for t in teams_of(request.user) if (r := team_role(request.user, t)) and r.at_least(Role.BUILDER)
    ]
    if not teams:
        return error_page(
            request,
            CatalogError(
                "forbidden", "Adding a custom extension needs the builder role in one of your teams."
            ),
        )
    posted = request.POST.get("kind") if request.method == "POST" else None
    recipe_form = CustomRecipeForm(request.POST if posted == "recipe" else None, teams=teams, prefix="recipe")
    upload_form = CustomUploadForm(
        request.POST if posted == "upload" else None,
        request.FILES if posted == "upload" else None,
        teams=teams,
        prefix="upload",
    )
    form = recipe_form if posted == "recipe" else upload_form
    if posted in ("recipe", "upload") and form.is_valid():
        team = next(t for t in teams if t.slug == form.cleaned_data["team"])
        try:
            extension = _create_custom(request, team, posted, form.cleaned_data)
        except CatalogError as exc:
            if exc.status == 403:
                return error_page(request, exc)
            if posted == "recipe":
                form.add_error("recipe", exc.message)
            else:
                _attach_error(form, exc, UPLOAD_ERROR_FIELDS, default="file")
        else:
            if posted == "upload":
                note = "the archive is being checked; the version awaits review once it passes."
            else:
                note = "its versions await review."
            messages.success(request, f"{extension.name} added to team {team.name}; {note}")
            return redirect(extension_url(extension))
    context = {
        "recipe_form": recipe_form,
        "upload_form": upload_form,
        "max_bytes": uploads.max_upload_bytes(),
    }
    return render(request, "catalog/custom_extension.html", context)


# Where an upload refusal is shown; anything about the archive itself goes next to the file.
UPLOAD_ERROR_FIELDS = {
    "upload.invalid-name": "name",
    "upload.invalid-version": "version",
    "upload.invalid-category": "category",
    "upload.invalid-arch": "arches",
    "extension": "name",
    "version": "version",
}


def _create_custom(request: HttpRequest, team: Team, kind: str, data: dict) -> Extension:
    if kind == "recipe":
        return services.extension_create_custom(team=team, actor=request.user, recipe_text=data["recipe"])
    upload = data["file"]
    limit = uploads.max_upload_bytes()
    if upload.size > limit:
        raise CatalogError(
            "upload.too-large", f"The archive is {upload.size} bytes; uploads are limited to {limit}."
        )
    archive = uploads.CustomArchive(
        name=data["name"].strip(),
        version=data["version"].strip(),
        file_name=upload.name or "upload",
        data=upload.read(),
        description=data["description"],
        category=data["category"],
        arches=tuple(data["arches"]),
    )
    return services.extension_create_custom(team=team, actor=request.user, archive=archive)
