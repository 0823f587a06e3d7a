"""Project-wide pytest fixtures: the cast of users (tests/factories.py), a small catalog, the
fixture upstream server and per-test cache keys."""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builds.catalog_fixtures import make_small_catalog
from tests.factories import Cast, make_cast
from tests.upstream import UpstreamServer


@pytest.fixture
def cast(db: Any) -> Cast:
    """alice (admin of blue), bob (builder), cora (curator), vera (viewer), carol (admin of red)
    and sam (staff): see tests/factories.py. A test that needs a live server or a worker also asks
    for ``transactional_db`` (or is marked ``django_db(transaction=True)``)."""
    return make_cast()


@pytest.fixture
def small_catalog(cast: Cast) -> Cast:
    """The cast, and a small catalog: see tests/builds/catalog_fixtures.make_small_catalog."""
    make_small_catalog(cast)
    return cast


@pytest.fixture
def upstream() -> Iterator[UpstreamServer]:
    """A started fixture upstream HTTP server on 127.0.0.1 (see tests/upstream.py)."""
    server = UpstreamServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _cache_keys_of_this_test(settings) -> str:
    """Each test counts in the cache (sign-in budgets...) under a key prefix of its own.

    The cache is the shared Redis when REDIS_URL is set: without this, failed sign-ins of one test
    (or of a parallel run on the same Redis) would lock users of another. Never clear that cache
    instead: clearing a Redis cache flushes the whole database, broker queues included.
    """
    prefix = f"bakehouse-test-{uuid.uuid4().hex[:12]}"
    settings.CACHES = {name: {**conf, "KEY_PREFIX": prefix} for name, conf in settings.CACHES.items()}
    return prefix
