"""No N+1 queries: each list endpoint costs as many queries for 20 rows as for 2.

A list that queries once per row is slow under load long before it looks slow in a test; the
benchmark's API load (bench/portal.py) measures the pages, this pins the count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from builds import services
from builds.models import Artifact, Build, BuildStep, Webhook, WebhookDelivery
from catalog.models import VersionStatus
from tests.builds.catalog_fixtures import make_extension
from tests.factories import Cast


def _flavour_with_build(cast: Cast, n: int) -> Build:
    flavour, _ = services.flavour_create(
        user=cast.bob,
        team=cast.blue,
        name=f"nodes {n}",
        arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}, {"name": "hello-tools", "version": "v1.0.0"}],
        options={"hostname": f"node-{n}"},
    )
    build, _ = services.build_request(flavour=flavour, user=cast.bob)
    now = timezone.now()
    BuildStep.objects.create(build=build, name="plan", started_at=now, finished_at=now, outcome="ok")
    Artifact.objects.create(
        build=build, flavour=flavour, kind="config", name="config.ign", key=f"k/{n}", sha256="0" * 64, size=1
    )
    return build


def _rows(cast: Cast, count: int, hook: Webhook) -> None:
    for n in range(Build.objects.count(), count):
        build = _flavour_with_build(cast, n)
        WebhookDelivery.objects.create(webhook=hook, build=build, event="build.succeeded", payload={})
        Webhook.objects.create(
            team=cast.blue, url=f"https://hooks.example.com/{n}", secret="s", created_by=cast.alice
        )
        make_extension(f"tool{n:02d}", versions={"v1.0.0": VersionStatus.APPROVED, "v2.0.0": "proposed"})


ENDPOINTS: dict[str, Callable[[Build, Webhook], str]] = {
    "flavours": lambda build, hook: "/api/flavours/",
    "builds": lambda build, hook: "/api/builds/",
    "flavour builds": lambda build, hook: f"/api/flavours/{build.flavour_id}/builds/",
    "webhooks": lambda build, hook: "/api/webhooks/",
    "deliveries": lambda build, hook: f"/api/webhooks/{hook.pk}/deliveries/",
    "extensions": lambda build, hook: "/api/extensions/",
}


def _queries(client: APIClient, url: str) -> tuple[int, Any]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured.captured_queries), response.json()


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_a_list_costs_the_same_queries_for_twenty_rows_as_for_two(small_catalog: Cast, endpoint: str) -> None:
    client = APIClient()
    client.force_authenticate(small_catalog.alice)
    hook = Webhook.objects.create(
        team=small_catalog.blue, url="https://hooks.example.com/", secret="s", created_by=small_catalog.alice
    )
    _rows(small_catalog, 2, hook)
    url = ENDPOINTS[endpoint](Build.objects.first(), hook)
    few, body = _queries(client, url)
    _rows(small_catalog, 20, hook)
    many, body = _queries(client, url)
    listed = body["results"] if isinstance(body, dict) and "results" in body else body
    assert len(listed) >= 20 or endpoint == "flavour builds"
    assert many <= few, f"{endpoint}: {few} queries for 2 rows, {many} for 20"
