"""Reading a published file through the API when the store cannot deliver it: a JSON answer a
user can act on ({code, message}), never a 500 page; and asking to build again publishes anew."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache

from builds.adapters.store import get_artifact_store
from builds.models import Build
from tests.builds.test_api_scoping import World, client, world

__all__ = ["world"]

pytestmark = pytest.mark.django_db


def reads(w: World) -> list[str]:
    return [
        f"/api/flavours/{w.flavour.pk}/butane",
        f"/api/flavours/{w.flavour.pk}/ignition",
        f"/api/builds/{w.done.pk}/artifacts/{w.artifact.pk}/download",
    ]


def test_a_published_file_missing_from_the_store_is_a_json_404(world: World) -> None:
    store = get_artifact_store()
    for artifact in world.done.artifacts.all():
        store.delete(artifact.key)
    api = client(world.cast.watcher)
    api.raise_request_exception = False
    for url in reads(world):
        response = api.get(url)
        assert response.status_code == 404, (url, response.content)
        body = response.json()
        assert body["code"] == "artifact.missing"
        assert "no longer in the artifact store" in body["message"]


def test_a_succeeded_build_whose_files_are_gone_is_built_again(world: World) -> None:
    api = client(world.cast.owner)
    kept = api.post(f"/api/flavours/{world.flavour.pk}/builds/")
    assert kept.status_code == 202 and kept.json()["id"] == str(world.done.pk)

    get_artifact_store().delete(world.artifact.key)
    # Once the store is due to be listed again (the files were last seen present long enough ago).
    cache.delete(f"builds:files-present:{world.done.pk}")
    again = api.post(f"/api/flavours/{world.flavour.pk}/builds/")

    assert again.status_code == 202, again.content
    assert again.json()["id"] != str(world.done.pk)
    assert again.json()["state"] == "queued"
    assert Build.objects.filter(flavour=world.flavour).count() == 2


def test_a_cached_flavour_requested_again_does_not_list_the_store_each_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = get_artifact_store()
    listed: list[str] = []
    real_list = store.list
    monkeypatch.setattr(store, "list", lambda prefix="": listed.append(prefix) or real_list(prefix))
    monkeypatch.setattr("builds.adapters.store.get_artifact_store", lambda: store)
    api = client(world.cast.owner)

    answers = [api.post(f"/api/flavours/{world.flavour.pk}/builds/") for _ in range(3)]

    assert [a.json()["id"] for a in answers] == [str(world.done.pk)] * 3
    assert listed and len(listed) == len(set(listed)), "listed once, then the recent check stands"


def test_an_unreachable_store_is_a_json_503(
    world: World, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from portal.config import S3Config

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    # Port 9 (discard) refuses connections on 127.0.0.1: the S3 server is down.
    settings.S3 = S3Config(
        bucket="gone", endpoint_url="http://127.0.0.1:9", region="us-east-1", checksum_mode="when_required"
    )
    api = client(world.cast.watcher)
    api.raise_request_exception = False
    for url in reads(world)[:2]:
        response = api.get(url)
        assert response.status_code == 503, (url, response.content)
        assert response.json()["code"] == "store.unavailable"
