"""Input refused before it reaches a view's logic: bodies Python cannot parse safely, and NUL
characters, which PostgreSQL can neither store nor compare (a query with one is a DataError, a 500).

Separate from portal.api because DRF imports the parser classes while loading its views.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, parsers

NUL_REFUSED = "Text may not contain NUL characters (\\u0000)."


def _holds_nul(value: Any) -> bool:
    """True if any string in a parsed body (keys included) holds a NUL; iterative for deep bodies."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif hasattr(item, "lists"):  # QueryDict from a form body
            for key, values in item.lists():
                pending.append(key)
                pending.extend(values)
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing (400) bodies nested deeper than Python's recursion limit and
    strings with NUL, which PostgreSQL can neither store nor compare."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - the document is nested too deeply.") from None
        if _holds_nul(data):
            raise exceptions.ParseError(NUL_REFUSED)
        return data


class FormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        if _holds_nul(data):
            raise exceptions.ParseError(NUL_REFUSED)
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        if _holds_nul(parsed.data):  # file contents may hold anything; names and fields may not
            raise exceptions.ParseError(NUL_REFUSED)
        return parsed


class RejectNulCharactersMiddleware:
    """A NUL in the path or the query string is a 400 before any view queries the database."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or _holds_nul(request.GET):
            if request.path.startswith("/api/"):
                return JsonResponse({"code": "bad_request", "message": NUL_REFUSED}, status=400)
            return HttpResponse(NUL_REFUSED, status=400, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
