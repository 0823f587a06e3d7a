"""Project-wide pytest fixtures."""

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
