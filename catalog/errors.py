"""Errors the catalog's services raise: a stable code, a sentence a user can act on, an HTTP status.

Services stay free of DRF; the API turns these into ``{code, message}`` responses.
"""

from __future__ import annotations


class CatalogError(Exception):
    """A request the catalog refuses. ``status`` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CatalogNotFound(CatalogError):
    """Missing, or invisible to this user (another team's private things are never "forbidden")."""

    status = 404


class CatalogForbidden(CatalogError):
    status = 403


class CatalogConflict(CatalogError):
    status = 409
