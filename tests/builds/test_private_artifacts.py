"""Private artifacts, built by a real worker: closed at /artifacts/ (404) to anonymous readers and
other teams, open to members and to nodes through the flavour's token URL, which the published
configs use; rotating the token closes the old URL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from builds.models import Flavour
from catalog.models import Team
from portal.config import S3Config
from tests.builds.build_support import serve_extension
from tests.builds.catalog_fixtures import Cast
from tests.builds.s3_server import S3Endpoint
from tests.builds.test_end_to_end import (
    Worker,
    api,
    compose,
    finished,
    queue_name,
    s3,
    start_worker,
    upstream_server,
    wait_for,
    worker_env,
)
from tests.upstream import UpstreamServer

__all__ = ["queue_name", "s3", "upstream_server", "worker_env"]

pytestmark = [
    pytest.mark.reliability,
    *__import__("tests.builds.test_end_to_end", fromlist=["pytestmark"]).pytestmark,
]

# The portal serves PUBLIC_BASE_URL (it must, for private artifacts): the test client reads it.
PORTAL_ARTIFACTS = "http://testserver/artifacts/"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPrivateFlavourKeyForTests0000000000000 ops@example.org"


@pytest.fixture(scope="module")
def bucket(s3: S3Endpoint) -> str:
    """A bucket with no public policy: only the portal reads it."""
    return s3.new_bucket()


@pytest.fixture(scope="module")
def private_worker(
    worker_env: dict[str, str],
    bucket: str,
    queue_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    env = {**worker_env, "PUBLIC_BASE_URL": PORTAL_ARTIFACTS}
    process = start_worker(env, queue_name, tmp_path_factory.mktemp("worker") / "worker.log")
    yield process
    process.stop()


@pytest.fixture
def portal(settings: Any, s3: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings.S3 = S3Config(
        bucket=bucket, endpoint_url=s3.url, region=s3.region, checksum_mode="when_required"
    )
    settings.PUBLIC_BASE_URL = PORTAL_ARTIFACTS


@pytest.fixture
def cast(transactional_db: Any, cast: Cast) -> Cast:
    """The cast, committed, so that the worker process sees it."""
    return cast


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def path_of(url: str) -> str:
    assert url.startswith(PORTAL_ARTIFACTS), url
    return "/artifacts/" + url[len(PORTAL_ARTIFACTS) :]


def read(client: Client, path: str) -> tuple[int, bytes]:
    response = client.get(path)
    body = b"".join(response.streaming_content) if response.status_code == 200 else response.content
    return response.status_code, body


def build(client: Any, flavour_id: str, worker: Worker) -> dict[str, Any]:
    response = client.post(f"/api/flavours/{flavour_id}/builds/")
    assert response.status_code == 202, response.json()
    done = wait_for(client, response.json()["id"], worker, finished)
    assert done["state"] == "succeeded", (done, worker.tail())
    return dict(done)


def test_a_private_teams_artifacts_reach_members_and_token_holders_only(
    cast: Cast, private_worker: Worker, portal: None, upstream_server: UpstreamServer
) -> None:
    suffix = uuid.uuid4().hex[:6]
    secret, common = f"secret{suffix}", f"common{suffix}"
    serve_extension(upstream_server, secret, team=cast.blue)
    serve_extension(upstream_server, common)
    owner, builder = api(cast.owner), api(cast.teammate)
    switched = owner.patch("/api/teams/blue/", {"private_artifacts": True}, format="json")
    assert switched.status_code == 200 and switched.json()["private_artifacts"] is True
    assert Team.objects.get(slug="blue").private_artifacts

    refused = builder.post(
        "/api/flavours/",
        {"name": "x", "arch": "x86-64", "extensions": [{"name": secret, "version": "v1.0.0"}],
         "options": {"private": False}},
        format="json",
    )  # fmt: skip
    assert refused.status_code == 400 and "options.private" in json.dumps(refused.json())

    flavour = compose(builder, "private nodes", [secret, common], options={"ssh_keys": [SSH_KEY]})
    assert flavour["private"] is True and flavour["options"]["private"] is True
    token_base = flavour["artifacts_url"]
    assert token_base.startswith(PORTAL_ARTIFACTS + "private/")
    token = token_base[len(PORTAL_ARTIFACTS + "private/") :].split("/")[0]
    assert len(token) >= 40
    build(builder, flavour["id"], private_worker)

    prefix = f"flavours/{flavour['id']}/"
    private_keys = [
        prefix + "config.ign",
        prefix + "config.bu",
        prefix + "SHA256SUMS",
        f"extensions/{secret}/SHA256SUMS",
        f"extensions/{secret}/{secret}-v1.0.0-x86-64.raw",
    ]
    anonymous, outsider, member = Client(), signed_in(cast.outsider), signed_in(cast.watcher)
    for key in private_keys:
        # Anyone outside the team: the 404 of a missing key, so the names do not leak either.
        assert read(anonymous, f"/artifacts/{key}")[0] == 404, key
        assert read(outsider, f"/artifacts/{key}")[0] == 404, key
        assert read(member, f"/artifacts/{key}")[0] == 200, key
        assert read(anonymous, f"/artifacts/private/{token}/{key}")[0] == 200, key
        assert read(anonymous, f"/artifacts/private/{token}x/{key}")[0] == 404, key
    assert read(anonymous, f"/artifacts/extensions/{common}/SHA256SUMS")[0] == 200  # global: public
    assert read(anonymous, "/artifacts/extensions/nonexistent/SHA256SUMS")[0] == 404

    # What nodes get: every URL in the configs and transfer files carries the token.
    _, ignition = read(anonymous, f"/artifacts/private/{token}/{prefix}config.ign")
    _, butane = read(anonymous, f"/artifacts/private/{token}/{prefix}config.bu")
    _, transfer = read(anonymous, f"/artifacts/private/{token}/{prefix}{secret}.conf")
    image_url = f"{PORTAL_ARTIFACTS}private/{token}/extensions/{secret}/{secret}-v1.0.0-x86-64.raw"
    assert image_url in ignition.decode() and image_url in butane.decode()
    assert f"{PORTAL_ARTIFACTS}private/{token}/extensions/{secret}/" in transfer.decode()
    assert f"{PORTAL_ARTIFACTS}extensions/" not in ignition.decode() + butane.decode() + transfer.decode()
    assert SSH_KEY in ignition.decode()
    page = signed_in(cast.teammate).get(f"/flavours/{flavour['id']}/").content.decode()
    assert f"curl -fsSLo config.ign {token_base}config.ign" in page

    # The token opens only this flavour and the extensions it includes.
    other = Flavour.objects.exclude(pk=flavour["id"]).first()
    if other is not None:
        assert read(anonymous, f"/artifacts/private/{token}/flavours/{other.pk}/config.ign")[0] == 404
    assert read(anonymous, f"/artifacts/private/{token}/extensions/nonexistent/SHA256SUMS")[0] == 404

    # Rotation: the old URL is closed at once; the files are published again with the new token.
    rotated = builder.post(f"/api/flavours/{flavour['id']}/rotate-token")
    assert rotated.status_code == 200, rotated.json()
    new_base = rotated.json()["artifacts_url"]
    assert new_base != token_base
    new_token = new_base[len(PORTAL_ARTIFACTS + "private/") :].split("/")[0]
    assert read(anonymous, path_of(token_base + "config.ign"))[0] == 404
    republished = wait_for(
        builder, rotated.json()["build_url"].rstrip("/").rsplit("/", 1)[-1], private_worker, finished
    )
    assert republished["state"] == "succeeded", (republished, private_worker.tail())
    status, ignition = read(anonymous, path_of(new_base + "config.ign"))
    assert status == 200
    assert f"private/{new_token}/extensions/{secret}/" in ignition.decode()
    assert token not in ignition.decode()
    assert read(anonymous, f"/artifacts/private/{token}/extensions/{secret}/SHA256SUMS")[0] == 404
    assert api(cast.watcher).post(f"/api/flavours/{flavour['id']}/rotate-token").status_code == 403
    assert api(cast.outsider).post(f"/api/flavours/{flavour['id']}/rotate-token").status_code == 404
