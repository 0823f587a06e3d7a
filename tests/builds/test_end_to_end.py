"""End to end: a real Celery worker process on Redis and PostgreSQL, moto's S3 over HTTP, and the
fixture upstream behind the mirror map.

A flavour is composed and built through the API; then every published object is checked the
way a node would: SHA256SUMS lines match the bytes, the signature verifies as systemd runs gpg,
and the Ignition's verification hashes match the images. Plus: a second request builds nothing,
concurrent identical requests share one build, cancel, and the reaper after a worker dies.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from django.db import connection
from django.test import Client
from rest_framework.test import APIClient

from builds import recovery
from builds.models import Build, BuildState
from builds.pipeline.butane.dataurl import decode_data_url
from portal.celery import app
from portal.config import S3Config
from portal.routing import queue_names
from tests.builds.build_support import (
    check_published_extension,
    ignition_image_hashes,
    serve_extension,
    shared_signing_key,
    upstream_mirrors,
)
from tests.builds.catalog_fixtures import Cast
from tests.builds.s3_server import S3Endpoint, moto_s3_server
from tests.builds.verify_support import download_all, gnupg_home, page_downloads, store_key, verify_downloads
from tests.upstream import UpstreamServer, readelf_machine, static_hello

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
        or not os.environ.get("REDIS_URL"),
        reason="needs DATABASE_URL (PostgreSQL) and REDIS_URL: a real worker shares the test database",
    ),
]

BUILD_TIMEOUT = 240
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[UpstreamServer]:
    server = UpstreamServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def bucket(s3: S3Endpoint) -> str:
    """A bucket whose published prefixes nodes read with plain GETs (the image cache stays private)."""
    name = s3.new_bucket()
    public = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": [f"arn:aws:s3:::{name}/extensions/*", f"arn:aws:s3:::{name}/flavours/*"],
    }
    s3.client().put_bucket_policy(
        Bucket=name, Policy=json.dumps({"Version": "2012-10-17", "Statement": [public]})
    )
    return name


@pytest.fixture(scope="module")
def queue_name() -> Iterator[str]:
    """A queue of our own, so that no other worker on the same Redis takes our tasks."""
    name = f"bh-e2e-{uuid.uuid4().hex[:10]}"
    previous = app.conf.task_default_queue
    _route_to(name)
    yield name
    _route_to(previous)


def _route_to(queue: str) -> None:
    app.conf.task_default_queue = queue
    for cached in ("router", "queues", "default_queue"):
        app.amqp.__dict__.pop(cached, None)


def _worker_database_url() -> str:
    """The configured DATABASE_URL, pointed at the test database pytest-django created."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.fixture(scope="module")
def worker_env(
    django_db_setup: Any,
    tmp_path_factory: pytest.TempPathFactory,
    s3: S3Endpoint,
    bucket: str,
    upstream_server: UpstreamServer,
) -> dict[str, str]:
    var = tmp_path_factory.mktemp("worker-var")
    mirrors = " ".join(f"{k}={v}" for k, v in upstream_mirrors(upstream_server).items())
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": _worker_database_url(),
        "REDIS_URL": os.environ["REDIS_URL"],
        "BAKEHOUSE_VAR_DIR": str(var),
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3.url,
        "S3_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PUBLIC_BASE_URL": f"{s3.url}/{bucket}/",
        "UPSTREAM_MIRRORS": mirrors,
        "BUILD_HEARTBEAT_INTERVAL": "1",
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1",  # the receiver listens on 127.0.0.1
        # Workers on a real broker share one configured key (they refuse to start without it).
        "SIGNING_KEY_FILE": str(shared_signing_key(tmp_path_factory.mktemp("signing"))),
        "SIGNING_PASSPHRASE_FILE": "",
        "PYTHONUNBUFFERED": "1",
    }


def start_worker(env: dict[str, str], queue: str, log: Path, concurrency: int = 2) -> Worker:
    env = {**env, "CELERY_TASK_DEFAULT_QUEUE": queue}  # tasks the worker queues stay on our queue
    handle = open(log, "wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", ",".join(queue_names(queue)),
            f"--concurrency={concurrency}", "--pool=prefork", "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"{queue}-{uuid.uuid4().hex[:6]}@%h",
        ],
        cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    worker = Worker(process, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the worker exited at start:\n{worker.tail()}")
        if " ready." in log.read_text(errors="replace"):
            return worker
        time.sleep(0.2)
    worker.stop()
    raise AssertionError(f"the worker did not get ready:\n{worker.tail()}")


@pytest.fixture(scope="module")
def worker(
    worker_env: dict[str, str], queue_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    process = start_worker(worker_env, queue_name, tmp_path_factory.mktemp("worker") / "worker.log")
    yield process
    process.stop()


@pytest.fixture
def portal_side(settings: Any, s3: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """This test process sees the same S3 store as the worker."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    settings.S3 = S3Config(
        bucket=bucket, endpoint_url=s3.url, region=s3.region, checksum_mode="when_required"
    )
    settings.PUBLIC_BASE_URL = f"{s3.url}/{bucket}/"
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    return s3.client()


@pytest.fixture
def cast(transactional_db: Any, cast: Cast) -> Cast:
    """The cast, committed, so that the worker process sees it."""
    return cast


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def compose(client: APIClient, name: str, extensions: list[str], **extra: Any) -> dict[str, Any]:
    response = client.post(
        "/api/flavours/",
        {
            "name": name,
            "arch": "x86-64",
            "extensions": [{"name": e, "version": "v1.0.0"} for e in extensions],
            **extra,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return dict(response.json())


def wait_for(
    client: APIClient, build_id: str, worker: Worker, until: Callable[[dict[str, Any]], bool]
) -> Any:
    deadline = time.monotonic() + BUILD_TIMEOUT
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = client.get(f"/api/builds/{build_id}/").json()
        if until(body):
            return body
        time.sleep(0.5)
    raise AssertionError(f"build {build_id} stuck at {body.get('state')}; worker log:\n{worker.tail()}")


def _task_running(build_id: str) -> bool:
    return Build.objects.filter(pk=build_id, tasks_running__gt=0).exists()


def finished(body: dict[str, Any]) -> bool:
    return body["state"] in ("succeeded", "failed", "cancelled")


class WebhookReceiver:
    """Collects POSTed events on 127.0.0.1."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_build_publishes_what_nodes_need(
    cast: Cast,
    worker: Worker,
    portal_side: Any,
    bucket: str,
    upstream_server: UpstreamServer,
    tmp_path: Path,
) -> None:
    serve_extension(upstream_server, "hello")
    serve_extension(upstream_server, "hello-tools", requires=[["hello"]])
    owner, builder = api(cast.owner), api(cast.teammate)
    receiver = WebhookReceiver()
    try:
        hook = owner.post("/api/webhooks/", {"url": receiver.url}, format="json").json()
        flavour = compose(builder, "edge nodes", ["hello", "hello-tools"], options={"hostname": "edge-1"})

        response = builder.post(f"/api/flavours/{flavour['id']}/builds/")
        assert response.status_code == 202, response.json()
        assert response["Location"].endswith(f"/api/builds/{response.json()['id']}/")
        build = wait_for(builder, response.json()["id"], worker, finished)
        assert build["state"] == "succeeded", (build, worker.tail())
        assert build["progress"] == 100
        assert build["verification"] == "verified" or build["verification_reason"]
        step_names = {s["name"] for s in build["steps"]}
        assert step_names == {"plan", "bake", "verify", "sign", "publish", "notify"}
        assert all(s["finished_at"] for s in build["steps"])
        log = builder.get(f"/api/builds/{build['id']}/log").json()
        texts = [line["text"] for line in log["lines"]]  # per-image detail is in the log
        assert any(t.startswith("[hello v1.0.0] fetch:") for t in texts)
        assert any(t.startswith("[hello-tools v1.0.0] image:") for t in texts)
        assert log["finished"] and any("Build succeeded." == line["text"] for line in log["lines"])
        assert builder.get(f"/api/builds/{build['id']}/log?after={log['next_after']}").json()["lines"] == []

        # Every object in the bucket, read back over HTTP.
        def get(key: str) -> bytes:
            return bytes(portal_side.get_object(Bucket=bucket, Key=key)["Body"].read())

        keys = {o["Key"] for o in portal_side.list_objects_v2(Bucket=bucket)["Contents"]}
        prefix = f"flavours/{flavour['id']}/"
        keyring = get(prefix + "import-pubring.gpg")
        listed = set()
        for name in ("hello", "hello-tools"):
            entries = check_published_extension(get, f"extensions/{name}/", keyring)
            assert list(entries) == [f"{name}-v1.0.0-x86-64.raw"]
            listed |= {f"extensions/{name}/{f}" for f in [*entries, "SHA256SUMS", "SHA256SUMS.gpg"]}
        flavour_entries = check_published_extension(get, prefix, keyring)
        assert {"config.bu", "config.ign", "sbom.spdx.json", "import-pubring.gpg", "hello.conf"} <= set(
            flavour_entries
        )
        listed |= {prefix + f for f in [*flavour_entries, "SHA256SUMS", "SHA256SUMS.gpg"]}
        # Nothing else is published: only the content-addressed image cache lives beside it.
        assert {k for k in keys - listed if not k.startswith("images/")} == set()

        # The flavour page links exactly these files, each beside the signed listing that vouches
        # for it; fetched through the portal's /artifacts/ (streamed from S3), the real gpg and
        # sha256sum verify every one as the page says to.
        member = Client()
        member.force_login(cast.teammate)
        links, command = page_downloads(member.get(f"/flavours/{flavour['id']}/").content.decode())
        assert {store_key(link) for link in links} == listed

        def through_portal(url: str) -> bytes:
            response = Client().get("/artifacts/" + store_key(url))
            assert response.status_code == 200, url
            return b"".join(response.streaming_content)

        saved = download_all(through_portal, links, tmp_path / "page")
        assert set(saved.values()) <= verify_downloads(saved, command, gnupg_home(tmp_path))

        # The Ignition a node boots with pins each image by hash and points at the public URLs.
        ignition = builder.get(f"/api/flavours/{flavour['id']}/ignition")
        assert ignition.status_code == 200
        assert ignition.content == get(prefix + "config.ign")
        hashes = ignition_image_hashes(ignition.content)
        for name in ("hello", "hello-tools"):
            image = get(f"extensions/{name}/{name}-v1.0.0-x86-64.raw")
            path = f"/opt/extensions/{name}/{name}-v1.0.0-x86-64.raw"
            assert hashes[path] == "sha512-" + hashlib.sha512(image).hexdigest()
            source = next(
                f["contents"]["source"]
                for f in json.loads(ignition.content)["storage"]["files"]
                if f["path"] == path
            )
            assert requests.get(source, timeout=10).content == image  # a plain GET, as nodes do

        # Artifacts in the API carry the stored sha256; a person's download redirects to a
        # short-lived presigned URL after the permission check.
        artifacts = {a["name"]: a for a in build["artifacts"]}
        assert artifacts["config.ign"]["sha256"] == hashlib.sha256(get(prefix + "config.ign")).hexdigest()
        download = builder.get(urlsplit(artifacts["config.bu"]["download_url"]).path)
        assert download.status_code == 302
        assert requests.get(download["Location"], timeout=10).content == get(prefix + "config.bu")
        assert (
            api(cast.outsider).get(urlsplit(artifacts["config.bu"]["download_url"]).path).status_code == 404
        )

        # A second identical request builds nothing: the same build comes back.
        hits = upstream_server.hits("/example/hello/releases/download/v1.0.0/hello-v1.0.0-x86_64.tar.gz")
        again = builder.post(f"/api/flavours/{flavour['id']}/builds/")
        assert again.status_code == 202
        assert again.json()["id"] == build["id"]
        assert Build.objects.count() == 1
        assert (
            upstream_server.hits("/example/hello/releases/download/v1.0.0/hello-v1.0.0-x86_64.tar.gz") == hits
        )

        # The team's webhook got a signed event.
        deadline = time.monotonic() + 30
        while not receiver.events and time.monotonic() < deadline:
            time.sleep(0.2)
        assert receiver.events, worker.tail()
        headers, body = receiver.events[0]
        secret = hook["secret"].encode()
        assert (
            headers["X-Bakehouse-Signature"] == "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        )
        event = json.loads(body)
        assert event["event"] == "build.succeeded" and event["build"]["id"] == build["id"]
    finally:
        receiver.close()


def image_member(image: bytes, path: str, scratch: Path) -> bytes:
    """``path`` inside a published squashfs image, read with the real unsquashfs."""
    file = scratch / "image.raw"
    file.write_bytes(image)
    return subprocess.run(["unsquashfs", "-cat", str(file), path], capture_output=True, check=True).stdout


def test_an_arm64_flavour_publishes_arm64_images_and_configs_naming_them(
    cast: Cast,
    worker: Worker,
    portal_side: Any,
    bucket: str,
    upstream_server: UpstreamServer,
    tmp_path: Path,
) -> None:
    binaries = {"x86-64": static_hello("x86-64"), "arm64": static_hello("arm64")}
    serve_extension(upstream_server, "armhello", ("v1.0.0",), binaries=binaries)
    builder = api(cast.teammate)
    flavour = compose(builder, "arm nodes", ["armhello"], arch="arm64")
    response = builder.post(f"/api/flavours/{flavour['id']}/builds/")
    build = wait_for(builder, response.json()["id"], worker, finished)
    assert build["state"] == "succeeded", (build, worker.tail())

    def get(key: str) -> bytes:
        return bytes(portal_side.get_object(Bucket=bucket, Key=key)["Body"].read())

    prefix = f"flavours/{flavour['id']}/"
    keyring = get(prefix + "import-pubring.gpg")
    entries = check_published_extension(get, "extensions/armhello/", keyring)
    assert list(entries) == ["armhello-v1.0.0-arm64.raw"]
    image = get("extensions/armhello/armhello-v1.0.0-arm64.raw")
    assert readelf_machine(image_member(image, "usr/bin/armhello", tmp_path)) == "AArch64"
    release = image_member(image, "usr/lib/extension-release.d/extension-release.armhello", tmp_path)
    assert b"ARCHITECTURE=arm64\n" in release
    # An x86-64 worker cannot merge it (systemd-sysext merges its own arch only): never "verified".
    if platform.machine() == "x86_64":
        assert build["verification"] == "skipped"
        assert "arm64" in build["verification_reason"]

    # Butane and Ignition put the arm64 image where the node loads it, pinned by its hash.
    path = "/opt/extensions/armhello/armhello-v1.0.0-arm64.raw"
    butane = get(prefix + "config.bu").decode()
    assert path in butane and "x86-64" not in butane
    ignition = get(prefix + "config.ign")
    assert ignition_image_hashes(ignition) == {path: "sha512-" + hashlib.sha512(image).hexdigest()}
    files = {f["path"]: f["contents"] for f in json.loads(ignition)["storage"]["files"]}
    source = files[path]["source"]
    assert source.endswith("/extensions/armhello/armhello-v1.0.0-arm64.raw")
    assert requests.get(source, timeout=10).content == image
    # The transfer file selects that image on an arm64 node (%a is the node's arch), no other.
    transfer = get(prefix + "armhello.conf").decode()
    lines = transfer.splitlines()
    pattern = next(line.removeprefix("MatchPattern=") for line in lines if line.startswith("MatchPattern="))
    regex = re.escape(pattern).replace("@v", r"[A-Za-z0-9.,_+-]+")
    assert re.fullmatch(regex.replace("%a", "arm64"), "armhello-v1.0.0-arm64.raw")
    assert not re.fullmatch(regex.replace("%a", "x86-64"), "armhello-v1.0.0-arm64.raw")
    # ... and the node gets that same transfer file from its Ignition.
    inline = files["/etc/sysupdate.armhello.d/armhello.conf"]
    data = decode_data_url(inline["source"])
    assert (gzip.decompress(data) if inline.get("compression") == "gzip" else data).decode() == transfer


def test_an_x86_64_binary_in_an_arm64_download_fails_the_build_with_its_code(
    cast: Cast, worker: Worker, portal_side: Any, bucket: str, upstream_server: UpstreamServer
) -> None:
    # The upstream's arm64 asset holds an x86-64 executable (a wrong upload, a wrong recipe).
    binaries = {"x86-64": static_hello("x86-64"), "arm64": static_hello("x86-64")}
    serve_extension(upstream_server, "mixedup", ("v1.0.0",), binaries=binaries)
    builder = api(cast.teammate)
    flavour = compose(builder, "mixed", ["mixedup"], arch="arm64")
    response = builder.post(f"/api/flavours/{flavour['id']}/builds/")
    build = wait_for(builder, response.json()["id"], worker, finished)
    assert build["state"] == "failed", (build, worker.tail())
    assert build["error_code"] == "image.wrong-architecture"
    assert "usr/bin/mixedup is an ELF file for x86-64" in build["error_message"]
    assert "the arm64 image" in build["error_message"] and "aarch64" in build["error_message"]
    assert "Contents" not in portal_side.list_objects_v2(Bucket=bucket, Prefix="extensions/mixedup/")
    assert "Contents" not in portal_side.list_objects_v2(Bucket=bucket, Prefix=f"flavours/{flavour['id']}/")


def test_concurrent_identical_requests_share_one_build_which_can_be_cancelled(
    cast: Cast, worker: Worker, portal_side: Any, bucket: str, upstream_server: UpstreamServer
) -> None:
    serve_extension(upstream_server, "slowpoke", delay=4.0)
    flavour = compose(api(cast.teammate), "slow", ["slowpoke"])
    barrier = threading.Barrier(6)
    answers: list[tuple[int, str]] = []

    def request() -> None:
        from django.db import connection as thread_connection

        try:
            barrier.wait()
            response = api(cast.teammate).post(f"/api/flavours/{flavour['id']}/builds/")
            answers.append((response.status_code, response.json()["id"]))
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=request) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 6
    assert {status for status, _ in answers} == {202}
    assert len({build_id for _, build_id in answers}) == 1
    assert Build.objects.filter(flavour_id=flavour["id"]).count() == 1

    build_id = answers[0][1]
    client = api(cast.teammate)
    wait_for(client, build_id, worker, lambda b: b["state"] in ("fetching", "baking"))
    cancel = client.post(f"/api/builds/{build_id}/cancel")
    assert cancel.status_code == 202
    body = wait_for(client, build_id, worker, finished)
    assert body["state"] == "cancelled", (body, worker.tail())
    assert body["error_code"] == "build.cancelled"
    assert "Contents" not in portal_side.list_objects_v2(Bucket=bucket, Prefix="extensions/slowpoke/")
    # A cancelled build can be retried: a new attempt of the same flavour.
    retry = client.post(f"/api/builds/{build_id}/retry")
    assert retry.status_code == 202
    assert retry.json()["id"] != build_id and retry.json()["attempt"] == 2
    client.post(f"/api/builds/{retry.json()['id']}/cancel")
    wait_for(client, retry.json()["id"], worker, finished)


def test_reaper_fails_the_build_of_a_worker_that_died(
    cast: Cast,
    worker_env: dict[str, str],
    portal_side: Any,
    upstream_server: UpstreamServer,
    tmp_path: Path,
) -> None:
    queue = f"bh-e2e-doomed-{uuid.uuid4().hex[:8]}"
    previous = app.conf.task_default_queue
    _route_to(queue)
    doomed = start_worker(worker_env, queue, tmp_path / "doomed.log", concurrency=1)
    try:
        serve_extension(upstream_server, "stuck", delay=60.0)
        client = api(cast.teammate)
        flavour = compose(client, "stuck", ["stuck"])
        build_id = client.post(f"/api/flavours/{flavour['id']}/builds/").json()["id"]
        # Wait until the bake task itself runs (the plan task sets "fetching" before it hands
        # over; a kill in between would leave nothing running for the reaper to find).
        wait_for(client, build_id, doomed, lambda b: b["state"] == "fetching" and _task_running(build_id))
        doomed.kill()  # the whole process group, pool children included: no goodbye, no ack
        # While the heartbeat is fresh the reaper leaves the build alone ...
        assert build_id not in recovery.builds_reap_stale(timeout=3600)
        time.sleep(4)
        # ... once it has stopped for longer than the timeout, the build fails with a clear code.
        assert recovery.builds_reap_stale(timeout=3) == [build_id]
        body = client.get(f"/api/builds/{build_id}/").json()
        assert body["state"] == "failed"
        assert body["error_code"] == "build.worker-lost"
        assert "heartbeat" in body["error_message"]
        assert Build.objects.get(pk=build_id).state == BuildState.FAILED
    finally:
        doomed.kill()
        _route_to(previous)
