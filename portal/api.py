"""Shared REST conventions: every error is JSON with a stable ``code`` and a ``message``.

``exception_handler`` is the one place an API request's ``BakehouseError`` (a refusal from the
catalog or builds services, a pipeline failure) becomes an answer: its status comes from the code
(builds.pipeline.error_codes), so an operator's fault is a 503, never the user's 400.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from builds.pipeline.errors import BakehouseError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, BakehouseError):
        return bakehouse_error_response(exc)
    # Django's own 404 and 403 (get_object_or_404, generic views) get the same {code, message}.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {
            "code": "invalid",
            "message": "The request has invalid fields; see 'fields'.",
            "fields": exc.detail,
        }
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail
        code = detail.code if hasattr(detail, "code") else exc.default_code
        response.data = {"code": str(code), "message": str(detail)}
    return response


def bakehouse_error_response(exc: BakehouseError) -> Response:
    """``{code, message}`` with the error's status; a transient infrastructure fault says when to retry."""
    headers = (
        {"Retry-After": "30"} if exc.retryable and exc.status == status.HTTP_503_SERVICE_UNAVAILABLE else None
    )
    return Response({"code": exc.code, "message": exc.message}, status=exc.status, headers=headers)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


# Django answers some requests before any DRF view runs: a URL no route matches (a build id that is
# not a UUID, a negative artifact id) and a request it refuses outright (a body over
# DATA_UPLOAD_MAX_MEMORY_SIZE, too many fields). Under /api/ those get the same {code, message}.


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: JSON under /api/, Django's page elsewhere."""
    if _is_api(request):
        return JsonResponse({"code": "not_found", "message": "No such API resource."}, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400: JSON under /api/ (oversized bodies land here), Django's page elsewhere."""
    if _is_api(request):
        message = str(exception) if exception is not None and str(exception) else "The request was refused."
        return JsonResponse({"code": "bad_request", "message": message}, status=400)
    return defaults.bad_request(request, exception)  # type: ignore[arg-type]
