"""Fixtures shared by the builds tests: the cast of users and a small catalog (catalog_fixtures.py)."""

from tests.builds.catalog_fixtures import cast, small_catalog

__all__ = ["cast", "small_catalog"]
