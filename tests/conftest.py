"""Project-wide pytest fixtures."""

import uuid
from collections.abc import Iterator

import pytest

from tests.upstream import UpstreamServer


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
