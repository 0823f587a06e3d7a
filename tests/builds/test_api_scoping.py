"""Every builds endpoint, for each of the cast: owner, teammate, watcher (viewer), outsider, anonymous.

Another team's flavour, build or webhook does not exist for you (404, and absent from lists);
reading needs any role in the team, writing needs builder (admin for webhooks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from builds import services
from builds.adapters.store import get_artifact_store
from builds.models import Artifact, ArtifactKind, Build, BuildState, Flavour, Webhook, WebhookDelivery
from tests.builds.catalog_fixtures import Cast

pytestmark = pytest.mark.django_db


@dataclass
class World:
    cast: Cast
    flavour: Flavour
    done: Build  # succeeded, with published configs
    running: Build  # active, of a second flavour
    failed: Build  # of a third flavour
    artifact: Artifact
    webhook: Webhook


@pytest.fixture
def world(small_catalog: Cast, settings: Any, tmp_path: Path) -> World:
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.S3 = None
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    cast = small_catalog
    ext = [{"name": "hello", "version": "v1.0.0"}]
    flavour, _ = services.flavour_create(
        user=cast.owner, team=cast.blue, name="a", arch="x86-64", extensions=ext
    )
    second, _ = services.flavour_create(
        user=cast.owner, team=cast.blue, name="b", arch="x86-64", extensions=ext
    )
    third, _ = services.flavour_create(
        user=cast.owner, team=cast.blue, name="c", arch="x86-64", extensions=ext
    )
    done = Build.objects.create(flavour=flavour, state=BuildState.SUCCEEDED, progress=100)
    running = Build.objects.create(flavour=second, state=BuildState.BAKING)
    failed = Build.objects.create(flavour=third, state=BuildState.FAILED, error_code="fetch.sha256-mismatch")
    store = get_artifact_store()
    artifact = None
    for name, kind, data in (
        ("config.bu", ArtifactKind.BUTANE, b"variant: flatcar\nversion: 1.0.0\n"),
        ("config.ign", ArtifactKind.IGNITION, b'{"ignition":{"version":"3.3.0"}}\n'),
    ):
        stored = store.put_bytes(f"flavours/{flavour.pk}/{name}", data)
        artifact = Artifact.objects.create(
            build=done,
            flavour=flavour,
            kind=kind,
            name=name,
            key=stored.key,
            sha256=stored.sha256,
            size=stored.size,
        )
    assert artifact is not None
    webhook = services.webhook_create(team=cast.blue, user=cast.owner, url="http://127.0.0.1:9/hook")
    WebhookDelivery.objects.create(webhook=webhook, build=done, event="build.succeeded", payload={})
    return World(cast, flavour, done, running, failed, artifact, webhook)


def client(user: Any) -> APIClient:
    api = APIClient()
    if user is not None:
        api.force_authenticate(user)
    return api


READS = [
    ("flavour detail", lambda w: f"/api/flavours/{w.flavour.pk}/"),
    ("butane", lambda w: f"/api/flavours/{w.flavour.pk}/butane"),
    ("ignition", lambda w: f"/api/flavours/{w.flavour.pk}/ignition"),
    ("flavour builds", lambda w: f"/api/flavours/{w.flavour.pk}/builds/"),
    ("build detail", lambda w: f"/api/builds/{w.done.pk}/"),
    ("build log", lambda w: f"/api/builds/{w.done.pk}/log"),
    ("download", lambda w: f"/api/builds/{w.done.pk}/artifacts/{w.artifact.pk}/download"),
    ("webhook detail", lambda w: f"/api/webhooks/{w.webhook.pk}/"),
    ("webhook deliveries", lambda w: f"/api/webhooks/{w.webhook.pk}/deliveries/"),
]


@pytest.mark.parametrize(("what", "url"), READS, ids=[r[0] for r in READS])
@pytest.mark.parametrize(
    ("who", "expected"), [("owner", 200), ("teammate", 200), ("watcher", 200), ("outsider", 404)]
)
def test_reads_are_scoped_to_the_team(world: World, what: str, url: Any, who: str, expected: int) -> None:
    response = client(getattr(world.cast, who)).get(url(world))
    assert response.status_code == expected, response.content
    if expected == 404:
        assert response.json()["code"] == "not_found"


@pytest.mark.parametrize(("what", "url"), READS, ids=[r[0] for r in READS])
def test_reads_need_a_signed_in_user(world: World, what: str, url: Any) -> None:
    assert client(None).get(url(world)).status_code in (401, 403)


@pytest.mark.parametrize(
    ("url", "key"),
    [("/api/flavours/", "id"), ("/api/builds/", "id"), ("/api/webhooks/", "id")],
)
def test_lists_show_only_the_teams_objects(world: World, url: str, key: str) -> None:
    mine = client(world.cast.watcher).get(url).json()["results"]
    theirs = client(world.cast.outsider).get(url).json()["results"]
    assert mine and theirs == []


def test_butane_download_serves_the_published_bytes(world: World) -> None:
    response = client(world.cast.watcher).get(f"/api/flavours/{world.flavour.pk}/butane")
    assert response.content == b"variant: flatcar\nversion: 1.0.0\n"
    assert response["Content-Type"].startswith("application/yaml")
    download = client(world.cast.watcher).get(
        f"/api/builds/{world.done.pk}/artifacts/{world.artifact.pk}/download"
    )
    assert b"".join(download.streaming_content) == b'{"ignition":{"version":"3.3.0"}}\n'


def test_configs_of_an_unbuilt_flavour_are_a_clear_409(world: World) -> None:
    response = client(world.cast.owner).get(f"/api/flavours/{world.running.flavour_id}/butane")
    assert response.status_code == 409
    assert response.json()["code"] == "flavour.not-built"


WRITES = {
    "compose": ("post", lambda w: "/api/flavours/", lambda w: {
        "team": "blue", "name": "new", "arch": "x86-64",
        "extensions": [{"name": "hello", "version": "v1.0.0"}],
    }),
    "build": ("post", lambda w: f"/api/flavours/{w.flavour.pk}/builds/", lambda w: None),
    "cancel": ("post", lambda w: f"/api/builds/{w.running.pk}/cancel", lambda w: None),
    "retry": ("post", lambda w: f"/api/builds/{w.failed.pk}/retry", lambda w: None),
    "add webhook": ("post", lambda w: "/api/webhooks/", lambda w: {"team": "blue", "url": "https://example.org/h"}),
    "delete webhook": ("delete", lambda w: f"/api/webhooks/{w.webhook.pk}/", lambda w: None),
}  # fmt: skip

# Who may do what: builder and up write flavours and builds; only admins manage webhooks. An
# outsider naming team blue in a body gets a field error; an outsider's URL is a 404.
EXPECTED = {
    "compose": {"owner": 201, "teammate": 201, "watcher": 403, "outsider": 400},
    "build": {"owner": 202, "teammate": 202, "watcher": 403, "outsider": 404},
    "cancel": {"owner": 202, "teammate": 202, "watcher": 403, "outsider": 404},
    "retry": {"owner": 202, "teammate": 202, "watcher": 403, "outsider": 404},
    "add webhook": {"owner": 201, "teammate": 403, "watcher": 403, "outsider": 400},
    "delete webhook": {"owner": 204, "teammate": 403, "watcher": 403, "outsider": 404},
}


@pytest.mark.parametrize("action", list(WRITES))
@pytest.mark.parametrize("who", ["owner", "teammate", "watcher", "outsider"])
def test_writes_need_the_right_role_in_the_team(world: World, action: str, who: str) -> None:
    method, url, body = WRITES[action]
    response = getattr(client(getattr(world.cast, who)), method)(url(world), body(world), format="json")
    assert response.status_code == EXPECTED[action][who], response.content
    if response.status_code >= 400:
        assert {"code", "message"} <= set(response.json())
    if response.status_code in (403, 404):  # refused requests change nothing
        world.running.refresh_from_db()
        assert not world.running.cancel_requested
        assert Build.objects.filter(retry_of=world.failed).count() == 0
        assert Webhook.objects.filter(pk=world.webhook.pk).exists()


@pytest.mark.parametrize("action", list(WRITES))
def test_writes_need_a_signed_in_user(world: World, action: str) -> None:
    method, url, body = WRITES[action]
    assert getattr(client(None), method)(url(world), body(world), format="json").status_code in (401, 403)
