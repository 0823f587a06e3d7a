"""The cast of the catalog tests: two teams, an owner (curator), a teammate (builder), a viewer,
an outsider (curator of another team) and a staff user (curator of the global catalog)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from catalog.models import Membership, Role, Team
from portal.celery import app as celery_app


@dataclass
class Cast:
    team: Team
    other_team: Team
    owner: User
    teammate: User
    viewer: User
    outsider: User
    staff: User

    def client(self, user: User) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client


@pytest.fixture
def cast(db: None) -> Cast:
    team = Team.objects.create(name="Blue", slug="blue")
    other = Team.objects.create(name="Red", slug="red")
    users = {name: User.objects.create_user(name) for name in ("owner", "mate", "viewer", "out")}
    Membership.objects.create(team=team, user=users["owner"], role=Role.CURATOR)
    Membership.objects.create(team=team, user=users["mate"], role=Role.BUILDER)
    Membership.objects.create(team=team, user=users["viewer"], role=Role.VIEWER)
    Membership.objects.create(team=other, user=users["out"], role=Role.CURATOR)
    staff = User.objects.create_user("staff", is_staff=True)
    return Cast(team, other, users["owner"], users["mate"], users["viewer"], users["out"], staff)


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
