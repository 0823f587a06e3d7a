"""The catalog's names for ``BakehouseError``: refusals with a stable code and an HTTP status.

Services stay free of DRF; portal.api's exception handler (API) and portal.pages' middleware
(pages) turn these into ``{code, message}`` answers. Codes are listed in builds.pipeline.error_codes.
"""

from __future__ import annotations

from builds.pipeline.errors import BakehouseError


class CatalogError(BakehouseError):
    """A request the catalog refuses (400 unless the code's registry entry says otherwise)."""


class CatalogNotFound(CatalogError):
    """Missing, or invisible to this user (another team's private things are never "forbidden")."""

    default_status = 404


class CatalogForbidden(CatalogError):
    default_status = 403


class CatalogConflict(CatalogError):
    default_status = 409
