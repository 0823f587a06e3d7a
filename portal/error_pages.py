"""The pages' one handler of ``BakehouseError``: the error's sentence, code and status as a page.

A view may catch a refusal to show it next to a form field; anything it lets through reaches
``BakehouseErrorMiddleware``, so a refused or failed request is never a 500 page. Under /api/
(views outside DRF) the answer is the API's ``{code, message}``. An infrastructure or upstream
fault says so, so that it never reads as the user's mistake.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from builds.pipeline.error_codes import ErrorKind
from builds.pipeline.errors import BakehouseError

# What a user reads under the message, by whose problem it is (a user's own needs no note).
KIND_NOTES = {
    ErrorKind.UPSTREAM: "A server Bakehouse downloads from is misbehaving; this is not a mistake in your "
    "request. Try again later, or ask the team's curators to look at the upstream.",
    ErrorKind.INFRASTRUCTURE: "This is a problem with the portal, not with your request: an operator has "
    "to fix it. Try again later.",
}
KIND_TITLES = {
    ErrorKind.UPSTREAM: "An upstream server failed",
    ErrorKind.INFRASTRUCTURE: "The portal cannot do that right now",
}


def error_page(request: HttpRequest, exc: BakehouseError, *, back: str = "") -> HttpResponse:
    """``exc`` as the error page, with its status (404, 409, 503 ...) and whose problem it is."""
    context = {
        "title": KIND_TITLES.get(exc.kind, ""),
        "message": exc.message,
        "code": exc.code,
        "note": KIND_NOTES.get(exc.kind, ""),
        "back": back or request.META.get("HTTP_REFERER", ""),
    }
    response = render(request, "error.html", context, status=exc.status)
    if exc.retryable and exc.status == 503:
        response["Retry-After"] = "30"
    return response


class BakehouseErrorMiddleware:
    """Answers any ``BakehouseError`` a view lets through (pages and non-DRF API views)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, BakehouseError):
            return None
        if request.path.startswith("/api/"):
            return JsonResponse(
                {"code": exception.code, "message": exception.message}, status=exception.status
            )
        return error_page(request, exception)
