"""Fixtures of the catalog tests: in-process Celery, a fetch cache and recipe files. The cast of
users (``cast``) is the project's one, from tests/conftest.py and tests/factories.py."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.celery import app as celery_app
from tests.factories import Cast

__all__ = ["Cast"]  # imported from here by the catalog tests


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Run tasks in-process (unit tests only; the real-worker tests live with builds)."""
    before = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = before


@pytest.fixture
def fetch_cache(tmp_path: Path, settings: object) -> Path:
    cache = tmp_path / "fetch-cache"
    settings.FETCH_CACHE_DIR = cache  # type: ignore[attr-defined]
    return cache


DEMO_RECIPE = """\
name: demo
description: A demo tool from a fake GitHub
homepage: https://example.org/demo
category: tool
arches: {x86-64: x86_64, arm64: aarch64}
sources:
  - url: https://github.com/example/demo/releases/download/{version}/demo-{version}-{arch}.tar.gz
    install:
      - {from: demo, to: usr/bin/demo, mode: "0755"}
versions:
  v1.0.0: {}
  v1.0.1: {}
"""


def write_recipe(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path
