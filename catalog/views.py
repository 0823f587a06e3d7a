"""Catalog pages. Reads go through catalog.selectors, writes through catalog.services."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from catalog.errors import CatalogError, CatalogNotFound
from catalog.forms import ExtensionSearchForm
from catalog.models import Extension, Role
from catalog.selectors import (
    extension_detail_queryset,
    extension_get_for_user,
    extensions_visible_to,
    team_role,
)


@login_required
def extension_list(request: HttpRequest) -> HttpResponse:
    """Every extension the user may see, filtered by text, category and arch."""
    form = ExtensionSearchForm(request.GET or None)
    extensions = extensions_visible_to(request.user).prefetch_related("versions")
    return render(request, "catalog/extension_list.html", {"form": form, "extensions": extensions})


@login_required
def extension_detail(request: HttpRequest, name: str) -> HttpResponse:
    """One extension: description, relations, versions with status, pinned digests and audit trail."""
    try:
        extension = _visible_extension(request, name, queryset=extension_detail_queryset(request.user))
    except CatalogError as exc:
        return catalog_error_page(request, exc)
    role = team_role(request.user, extension.team)
    return render(
        request,
        "catalog/extension_detail.html",
        {
            "extension": extension,
            "versions": extension.versions.all(),
            "can_propose": role is not None and role.at_least(Role.BUILDER),
            "can_decide": role is not None and role.at_least(Role.CURATOR),
        },
    )


def _visible_extension(request: HttpRequest, name: str, queryset=None) -> Extension:
    """The extension ``name`` the user sees; ``?team=slug`` picks a team's own one."""
    try:
        return extension_get_for_user(
            request.user, name=name, team_slug=request.GET.get("team") or None, queryset=queryset
        )
    except CatalogNotFound as exc:
        raise Http404(exc.message) from None


def catalog_error_page(request: HttpRequest, exc: CatalogError, *, back: str = "") -> HttpResponse:
    """A refused request as a page: the service's sentence, its code, and the matching status."""
    return render(
        request, "error.html", {"message": exc.message, "code": exc.code, "back": back}, status=exc.status
    )
