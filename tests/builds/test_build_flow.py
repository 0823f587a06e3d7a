"""A whole build in one process (Celery eager, local store): plan, bake, verify, sign, publish.

The real worker process, Redis, Postgres and S3 are exercised by test_end_to_end.py; this one
keeps the flow's logic quick to debug: cache reuse, failures with codes, cancel, the reaper.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from builds import recovery, services
from builds.adapters.store import get_artifact_store
from builds.models import Build, BuildImage, BuildState, ImageArtifact
from catalog.models import UpstreamDigest
from portal.celery import app
from tests.builds.build_support import (
    check_published_extension,
    ignition_image_hashes,
    serve_extension,
    upstream_mirrors,
)
from tests.builds.catalog_fixtures import Cast, hello_flavour
from tests.upstream import UpstreamServer

pytestmark = pytest.mark.django_db


@pytest.fixture
def eager(settings: Any, tmp_path: Path, upstream: UpstreamServer) -> Iterator[None]:
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.FETCH_CACHE_DIR = tmp_path / "cache"
    settings.UPSTREAM_MIRRORS = upstream_mirrors(upstream)
    settings.S3 = None
    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    try:
        yield
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = previous


def _build(client: APIClient, flavour_id: str, capture: Any) -> dict[str, Any]:
    with capture(execute=True):
        response = client.post(f"/api/flavours/{flavour_id}/builds/")
    assert response.status_code == 202, response.json()
    return client.get(f"/api/builds/{response.json()['id']}/").json()


def test_build_publishes_signed_images_and_configs(
    cast: Cast,
    upstream: UpstreamServer,
    eager: None,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serve_extension(upstream, "hello")
    client = APIClient()
    client.force_authenticate(cast.teammate)
    flavour = client.post(
        "/api/flavours/",
        {"name": "n", "arch": "x86-64", "extensions": [{"name": "hello", "version": "v1.0.0"}]},
        format="json",
    ).json()

    build = _build(client, flavour["id"], django_capture_on_commit_callbacks)
    assert build["state"] == "succeeded", build
    assert build["progress"] == 100
    # Merged by the real systemd-sysext where this machine allows mounts; otherwise a stated reason.
    assert build["verification"] == "verified" or (
        build["verification"] == "skipped" and build["verification_reason"]
    )
    assert [s["name"] for s in build["steps"]] == ["plan", "bake", "verify", "sign", "publish", "notify"]

    store = get_artifact_store()
    keyring = store.get_bytes(f"flavours/{flavour['id']}/import-pubring.gpg")
    entries = check_published_extension(store.get_bytes, "extensions/hello/", keyring)
    assert list(entries) == ["hello-v1.0.0-x86-64.raw"]
    check_published_extension(store.get_bytes, f"flavours/{flavour['id']}/", keyring)
    image = store.get_bytes("extensions/hello/hello-v1.0.0-x86-64.raw")
    hashes = ignition_image_hashes(client.get(f"/api/flavours/{flavour['id']}/ignition").content)
    assert (
        hashes["/opt/extensions/hello/hello-v1.0.0-x86-64.raw"]
        == "sha512-" + hashlib.sha512(image).hexdigest()
    )
    butane = client.get(f"/api/flavours/{flavour['id']}/butane")
    assert butane.status_code == 200 and b"variant: flatcar" in butane.content

    # Same flavour again: the succeeded build is returned, nothing is built; and the store is not
    # listed to see whether its files are still there (the publisher has just read each back).
    listed: list[str] = []
    real_list = store.list
    monkeypatch.setattr(store, "list", lambda prefix="": listed.append(prefix) or real_list(prefix))
    monkeypatch.setattr("builds.adapters.store.get_artifact_store", lambda: store)
    again = _build(client, flavour["id"], django_capture_on_commit_callbacks)
    assert again["id"] == build["id"]
    assert Build.objects.count() == 1
    assert listed == []

    # A new revision reuses the stored image instead of baking it.
    hits = upstream.hits("/example/hello/releases/download/v1.0.0/hello-v1.0.0-x86_64.tar.gz")
    revision = client.post(
        "/api/flavours/",
        {
            "name": "n",
            "arch": "x86-64",
            "extensions": [{"name": "hello", "version": "v1.0.0"}],
            "options": {"hostname": "edited"},
            "revision_of": flavour["id"],
        },
        format="json",
    ).json()
    second = _build(client, revision["id"], django_capture_on_commit_callbacks)
    assert second["state"] == "succeeded", second
    assert [i["reused"] for i in second["images"]] == [True]
    assert ImageArtifact.objects.count() == 1
    assert upstream.hits("/example/hello/releases/download/v1.0.0/hello-v1.0.0-x86_64.tar.gz") == hits


def test_wrong_pin_fails_the_build_with_its_code_and_publishes_nothing(
    cast: Cast, upstream: UpstreamServer, eager: None, django_capture_on_commit_callbacks: Any
) -> None:
    serve_extension(upstream, "hello")
    UpstreamDigest.objects.filter(arch="x86-64").update(sha256="0" * 64)
    client = APIClient()
    client.force_authenticate(cast.teammate)
    flavour = client.post(
        "/api/flavours/",
        {"name": "n", "arch": "x86-64", "extensions": [{"name": "hello", "version": "v1.0.0"}]},
        format="json",
    ).json()
    build = _build(client, flavour["id"], django_capture_on_commit_callbacks)
    assert build["state"] == "failed"
    assert build["error_code"] == "fetch.sha256-mismatch"
    assert build["error_message"]
    assert get_artifact_store().list("extensions/") == []
    log = client.get(f"/api/builds/{build['id']}/log").json()
    assert log["finished"] is True
    assert any("fetch.sha256-mismatch" in line["text"] for line in log["lines"])


def test_reaper_fails_a_build_whose_heartbeat_stopped(cast: Cast, db: Any, settings: Any) -> None:
    flavour = hello_flavour(cast)
    build, created = services.build_request(flavour=flavour, user=cast.teammate)
    assert created
    long_ago = timezone.now() - timedelta(minutes=10)
    # Waiting for a free worker is not death: no task of the build is running.
    Build.objects.filter(pk=build.pk).update(state=BuildState.BAKING, heartbeat_at=long_ago, tasks_running=0)
    assert recovery.builds_reap_stale(timeout=60) == []
    # A task said it was running, then stopped beating: its worker died.
    Build.objects.filter(pk=build.pk).update(tasks_running=1)
    assert recovery.builds_reap_stale(timeout=60) == [str(build.pk)]
    build.refresh_from_db()
    assert build.state == BuildState.FAILED
    assert build.error_code == "build.worker-lost"
    assert build.finished_at is not None

    # A build that beats is left alone.
    other, _ = services.build_request(flavour=flavour, user=cast.teammate)
    Build.objects.filter(pk=other.pk).update(
        state=BuildState.BAKING, heartbeat_at=timezone.now(), tasks_running=2
    )
    assert recovery.builds_reap_stale(timeout=60) == []
    assert BuildImage.objects.filter(build=other).count() == 1

    # Nothing running and nothing happening for longer than the queue timeout: the message is lost.
    settings.BUILD_QUEUE_TIMEOUT = 300
    Build.objects.filter(pk=other.pk).update(state=BuildState.QUEUED, heartbeat_at=None, tasks_running=0)
    Build.objects.filter(pk=other.pk).update(created_at=long_ago)
    assert recovery.builds_reap_stale(timeout=60) == [str(other.pk)]
    other.refresh_from_db()
    assert other.error_code == "build.queue-timeout"


def test_the_log_names_steps_extensions_and_published_urls_never_worker_paths(
    cast: Cast, upstream: UpstreamServer, eager: None, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    serve_extension(upstream, "hello")
    serve_extension(upstream, "hello-tools", requires=[["hello"]])
    client = APIClient()
    client.force_authenticate(cast.teammate)
    picks = [{"name": "hello", "version": "v1.0.0"}, {"name": "hello-tools", "version": "v1.0.0"}]
    flavour = client.post(
        "/api/flavours/", {"name": "n", "arch": "x86-64", "extensions": picks}, format="json"
    )
    build = _build(client, flavour.json()["id"], django_capture_on_commit_callbacks)
    assert build["state"] == "succeeded", build
    groups = {group["key"]: [step["name"] for step in group["steps"]] for group in build["step_groups"]}
    assert groups == {
        "extension:hello": ["bake", "verify"],
        "extension:hello-tools": ["bake", "verify"],
        "flavour": ["plan", "sign", "publish", "notify"],
    }

    lines = client.get(f"/api/builds/{build['id']}/log").json()["lines"]
    log = "\n".join(line["text"] for line in lines)
    worker_dirs = ["/tmp/", str(settings.VAR_DIR), str(settings.ARTIFACT_DIR), str(settings.FETCH_CACHE_DIR)]
    assert not [d for d in worker_dirs if d in log], log
    for extension in ("hello", "hello-tools"):
        assert f"[{extension} v1.0.0]" in log  # the bake's stages name the extension
        assert f"{settings.PUBLIC_BASE_URL}extensions/{extension}/SHA256SUMS" in log
    assert f"{settings.PUBLIC_BASE_URL}flavours/{flavour.json()['id']}/" in log
    # Each extension's lines are in its own steps' sections.
    steps = {step["id"]: (step["name"], step["extension"]) for step in build["steps"]}
    for line in lines:
        if line["text"].startswith("[hello-tools v1.0.0]"):
            assert steps[line["step"]] == ("bake", "hello-tools")

    # A failing bake whose tool trouble mentions its scratch files: still no worker path.
    path = "/example/broken/releases/download/v1.0.0/broken-v1.0.0-x86_64.tar.gz"
    serve_extension(upstream, "broken")
    upstream.add_bytes(path, b"this is not a gzip archive")
    UpstreamDigest.objects.filter(version__extension__name="broken", arch="x86-64").update(
        sha256=hashlib.sha256(b"this is not a gzip archive").hexdigest()
    )
    broken = client.post(
        "/api/flavours/",
        {"name": "b", "arch": "x86-64", "extensions": [{"name": "broken", "version": "v1.0.0"}]},
        format="json",
    )
    failed = _build(client, broken.json()["id"], django_capture_on_commit_callbacks)
    assert failed["state"] == "failed" and failed["failure"]["code"], failed
    failed_log = "\n".join(
        line["text"] for line in client.get(f"/api/builds/{failed['id']}/log").json()["lines"]
    )
    assert "[broken v1.0.0]" in failed_log and failed["failure"]["code"] in failed_log
    assert not [d for d in worker_dirs if d in failed_log + failed["error_message"]], failed_log
