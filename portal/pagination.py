"""The one pagination of every API list: ``?limit=&offset=`` with a ceiling.

DRF's own LimitOffsetPagination passes any limit to the database (``?limit=99999999999999999999``
overflowed PostgreSQL's bigint: a 500) and silently ignores values it cannot read. Here a limit
above MAX_LIMIT is clamped to it (the ``next`` link continues from there), an offset past the end is
an empty page, and a value that is not a whole number (``abc``, ``-1``, ``1.5``, a limit of 0) is a
400 naming the parameter.
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions, pagination
from rest_framework.request import Request

MAX_LIMIT = 1000
# Longer digit strings are beyond any page anyway; int() of thousands of digits is refused by
# Python itself (and is slow), so such values are read as this.
_HUGE = 10**18


def _whole_number(request: Request, name: str, *, minimum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdecimal()):
        raise exceptions.ValidationError({name: [f"Must be a whole number, at least {minimum}."]})
    value = int(raw) if len(raw) <= 18 else _HUGE
    if value < minimum:
        raise exceptions.ValidationError({name: [f"Must be at least {minimum}."]})
    return value


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    max_limit = MAX_LIMIT

    def get_limit(self, request: Request) -> int:
        limit = _whole_number(request, self.limit_query_param, minimum=1)
        if limit is None:
            return self.default_limit or MAX_LIMIT  # PAGE_SIZE
        return min(limit, MAX_LIMIT)

    def get_offset(self, request: Request) -> int:
        return _whole_number(request, self.offset_query_param, minimum=0) or 0

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit},
            self.offset_query_param: {"minimum": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                limit = self.max_limit
                parameter["description"] += f" At most {limit}; larger values are read as {limit}."
        return parameters
