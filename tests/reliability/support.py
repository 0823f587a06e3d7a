"""Harness for the reliability suite: real processes that a test may kill, stop and pause.

- :class:`RedisServer`: a redis-server of our own on a free port (never the shared 6379), which a
  test restarts (same port), kills or pauses with SIGSTOP/SIGCONT.
- :class:`RestartableS3`: moto's ThreadedMotoServer on a fixed free port; stopping and starting it
  again keeps the buckets (moto's state lives in this process).
- :class:`HoldingProxy`: an HTTP proxy in front of the S3 server that can hold one kind of
  request (say the PUT of ``SHA256SUMS.gpg``) so that a test kills the worker at exactly that
  moment, then drops the held request as a dead worker would never have sent it.
- :func:`tool_shims`: ``gpg`` and ``mksquashfs`` wrappers that run the real tools after a delay
  taken from the worker's environment, so that "kill while signing / making the image" lands
  inside that step.
- :func:`make_signing_key`: a passphrase-protected key in files, as an operator configures it.
- :func:`assert_bucket_consistent`: no half-published listing in a bucket.
- :func:`point_celery_at`: this test process queues tasks on our broker and queue.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kombu import pools as kombu_pools
from moto.server import ThreadedMotoServer

from builds.pipeline.checksums import parse_sums
from builds.pipeline.signing import GpgSigner, generate_signing_key
from portal.celery import app
from tests.builds.build_support import verify_signature
from tests.builds.s3_server import S3Endpoint

# Every wait in this suite is bounded; a timeout says what it waited for.
SERVICE_START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- Redis ------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of our own on 127.0.0.1 (no persistence)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(self.ping, SERVICE_START_TIMEOUT, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self, downtime: float = 2.0) -> None:
        self.stop()
        time.sleep(downtime)
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)


# --- S3 -------------------------------------------------------------------------------------


class RestartableS3:
    """moto's S3 server on a fixed port; ``stop()`` then ``start()`` is an outage, data kept."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadedMotoServer | None = None
        self.endpoint = S3Endpoint(url=f"http://127.0.0.1:{self.port}")

    def start(self) -> RestartableS3:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        wait_until(self.answers, SERVICE_START_TIMEOUT, f"moto S3 on port {self.port}")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class HoldingProxy:
    """Forwards HTTP to ``target``; a request matching ``hold_when`` waits until released.

    ``released(forward=False)`` drops the held request (the connection is closed without an
    answer), which is what the server sees of a client killed before it sent it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hold_when: Callable[[str, str], bool] | None = None
        self.holding = threading.Event()
        self._release = threading.Event()
        self._forward_held = True
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rule = proxy.hold_when
                if rule is not None and rule(self.command, self.path):
                    proxy.hold_when = None  # hold one request only
                    proxy.holding.set()
                    proxy._release.wait(120)
                    if not proxy._forward_held:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                except OSError:
                    self.send_error(502)
                    return
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def hold(self, rule: Callable[[str, str], bool]) -> None:
        self.holding.clear()
        self._release.clear()
        self.hold_when = rule

    def release(self, *, forward: bool) -> None:
        self._forward_held = forward
        self._release.set()

    def close(self) -> None:
        self.release(forward=False)
        self.httpd.shutdown()
        self.httpd.server_close()


# --- tools and keys ---------------------------------------------------------------------------


def tool_shims(directory: Path) -> Path:
    """``gpg`` and ``mksquashfs`` that sleep ``BH_TEST_DELAY_<TOOL>`` seconds, then exec the real
    tool (``gpg --version`` is never delayed). Put the directory first on the worker's PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in ("gpg", "mksquashfs"):
        real = shutil.which(tool)
        assert real, f"{tool} is not installed"
        variable = f"BH_TEST_DELAY_{tool.upper()}"
        shim = directory / tool
        shim.write_text(
            "#!/bin/sh\n"
            f'case "$1" in --version) ;; *) [ -n "${{{variable}:-}}" ] && sleep "${variable}" ;; esac\n'
            f'exec {real} "$@"\n'
        )
        shim.chmod(0o755)
    return directory


@dataclass(frozen=True)
class SigningKey:
    key_file: Path
    passphrase_file: Path
    armored: str
    passphrase: str

    def public_keyring(self) -> bytes:
        with GpgSigner(self.key_file, self.passphrase_file) as signer:
            return signer.export_public_keyring()

    def fingerprint(self) -> str:
        with GpgSigner(self.key_file, self.passphrase_file) as signer:
            return str(signer.fingerprint)

    def secret_fragments(self) -> list[str]:
        """The passphrase, the whole armored key, and every base64 line of its body (long enough
        to mean something: armor's short CRC line and blank lines are left out)."""
        body = [
            line.strip()
            for line in self.armored.splitlines()
            if line.strip() and not line.startswith("-----") and ":" not in line and len(line.strip()) >= 16
        ]
        return [self.passphrase, self.armored.strip(), *body]


def make_signing_key(directory: Path) -> SigningKey:
    directory.mkdir(parents=True, exist_ok=True)
    passphrase = "bh-test-" + hashlib.sha256(os.urandom(16)).hexdigest()[:24]
    passphrase_file = directory / "passphrase"
    passphrase_file.write_text(passphrase + "\n")
    passphrase_file.chmod(0o600)
    key_file = directory / "signing-key.asc"
    generate_signing_key(
        key_file,
        name="Bakehouse reliability",
        email="reliability@example.org",
        passphrase=passphrase.encode(),
    )
    return SigningKey(key_file, passphrase_file, key_file.read_text(), passphrase)


# --- published state ----------------------------------------------------------------------------


def bucket_objects(client: Any, bucket: str) -> dict[str, bytes]:
    objects: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return objects


def assert_bucket_consistent(client: Any, bucket: str, keyring: bytes) -> int:
    """Every SHA256SUMS has its SHA256SUMS.gpg, the signature verifies as systemd checks it, and
    every listed object exists with the listed sha256. Returns how many listings were checked."""
    objects = bucket_objects(client, bucket)
    # pending-publication/ holds staged pairs that no node reads (the portal never serves it):
    # a publisher killed while staging leaves one there for the next publication to finish.
    objects = {k: v for k, v in objects.items() if not k.startswith("pending-publication/")}
    listings = sorted(k for k in objects if k.rsplit("/", 1)[-1] == "SHA256SUMS")
    problems: list[str] = []
    for key in listings:
        prefix = key[: -len("SHA256SUMS")]
        signature = objects.get(key + ".gpg")
        if signature is None:
            problems.append(f"{key} is published without {key}.gpg")
            continue
        try:
            verify_signature(objects[key], signature, keyring)
        except Exception as exc:
            problems.append(f"{key}.gpg does not verify {key}: {exc}")
        for name, digest in parse_sums(objects[key]).items():
            data = objects.get(prefix + name)
            if data is None:
                problems.append(f"{key} lists {name}, which is not published")
            elif hashlib.sha256(data).hexdigest() != digest:
                problems.append(f"{key} lists {name} with a sha256 its bytes do not have")
    orphans = [k for k in objects if k.endswith("/SHA256SUMS.gpg") and k[:-4] not in objects]
    problems += [f"{k} is published without its SHA256SUMS" for k in orphans]
    assert not problems, "half-published state in the bucket:\n" + "\n".join(problems)
    return len(listings)


# --- Celery in this process ---------------------------------------------------------------------


@contextmanager
def point_celery_at(broker_url: str, queue: str) -> Iterator[None]:
    """Queue this process's tasks on ``broker_url`` / ``queue`` for the duration of the block."""
    previous = app.conf.broker_url, app.conf.task_default_queue
    _switch(broker_url, queue)
    try:
        yield
    finally:
        _switch(*previous)


def _switch(broker_url: str, queue: str) -> None:
    with suppress(Exception):  # a dead broker's pool may not close cleanly
        app.pool.force_close_all()
    # kombu also keeps producer pools in a registry keyed by broker URL: a closed one left there
    # would be handed back when we switch back to that URL ("Acquire on closed pool").
    with suppress(Exception):
        kombu_pools.reset()
    app._pool = None
    app.amqp._producer_pool = None
    app.conf.broker_url = broker_url
    app.conf.task_default_queue = queue
    for cached in ("router", "queues", "default_queue"):
        app.amqp.__dict__.pop(cached, None)


# --- the rig: broker, store, upstream, key and workers of one test module --------------------------

# Small bounds so that recovery is seen within the suite's time: the worker beats every second and
# the reaper (which beat runs every minute in production; the tests call it every second, as
# beat would) fails a build whose heartbeat stopped for BUILD_HEARTBEAT_TIMEOUT seconds.
HEARTBEAT_INTERVAL = 1
HEARTBEAT_TIMEOUT = 10
# A build that lost its worker, or whose broker, store or database went away, reaches a final
# state within this bound (heartbeat timeout + the task retries' first backoffs + a bake).
RECOVERY_BOUND = 120.0
FINAL_STATES = ("succeeded", "failed", "cancelled")
# Failures the design says to retry (the error says "retry the build"), not user errors.
RETRYABLE_CODES = ("build.worker-lost", "build.infrastructure", "store.unavailable", "fetch.unavailable")


class Rig:
    """Our own redis-server, moto S3 behind a holding proxy (or the local store), the fixture
    upstream, a passphrase-protected signing key, tool shims and a queue of our own."""

    def __init__(self, workdir: Path, *, store: str = "s3") -> None:
        from tests.upstream import UpstreamServer

        self.workdir = workdir
        self.store = store
        self.redis = RedisServer(workdir).start()
        self.upstream = UpstreamServer().start()
        self.key = make_signing_key(workdir / "keys")
        self.shims = tool_shims(workdir / "bin")
        self.queue = f"bh-rel-{os.urandom(5).hex()}"
        self.artifact_dir = workdir / "artifacts"
        self.s3: RestartableS3 | None = None
        self.proxy: HoldingProxy | None = None
        self.bucket = ""
        if store == "s3":
            self.s3 = RestartableS3().start()
            self.proxy = HoldingProxy(self.s3.port)
            self.bucket = self.s3.endpoint.new_bucket()
        self.workers: list[Any] = []

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.proxy is not None:
            self.proxy.close()
        if self.s3 is not None:
            self.s3.stop()
        self.upstream.stop()
        self.redis.stop()

    def use_new_bucket(self) -> None:
        """A fresh bucket for the next test (workers started afterwards publish there), so that
        one test's half-published leftovers are not blamed on the next."""
        if self.s3 is not None:
            self.bucket = self.s3.endpoint.new_bucket()

    def s3_client(self) -> Any:
        assert self.s3 is not None
        return self.s3.endpoint.client()

    def mirrors(self) -> str:
        from tests.builds.build_support import upstream_mirrors

        return " ".join(f"{k}={v}" for k, v in upstream_mirrors(self.upstream).items())

    def worker_env(self, **delays: float) -> dict[str, str]:
        from tests.builds.test_end_to_end import _worker_database_url

        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": _worker_database_url(),
            "REDIS_URL": self.redis.url,
            "BAKEHOUSE_VAR_DIR": str(self.workdir / "var"),
            "UPSTREAM_MIRRORS": self.mirrors(),
            "BUILD_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "BUILD_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1",
            "SIGNING_KEY_FILE": str(self.key.key_file),
            "SIGNING_PASSPHRASE_FILE": str(self.key.passphrase_file),
            "PATH": f"{self.shims}:{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        for variable in ("S3_BUCKET", "S3_ENDPOINT_URL", "S3_REGION", "PUBLIC_BASE_URL"):
            env.pop(variable, None)
        if self.store == "s3":
            assert self.proxy is not None and self.s3 is not None
            env.update(
                S3_BUCKET=self.bucket,
                S3_ENDPOINT_URL=self.proxy.url,
                S3_REGION=self.s3.endpoint.region,
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                PUBLIC_BASE_URL=f"{self.s3.endpoint.url}/{self.bucket}/",
            )
        else:
            env["ARTIFACT_DIR"] = str(self.artifact_dir)
        for tool, seconds in delays.items():
            env[f"BH_TEST_DELAY_{tool.upper()}"] = str(seconds)
        return env

    def start_worker(self, name: str, **delays: float) -> Any:
        from tests.builds.test_end_to_end import start_worker

        worker = start_worker(
            self.worker_env(**delays), self.queue, self.workdir / f"{name}.log", concurrency=2
        )
        self.workers.append(worker)
        return worker

    def configure_portal(self, settings: Any) -> None:
        """This process (the web side) sees the same store, key and bounds as the workers."""
        from portal.config import S3Config

        settings.BUILD_HEARTBEAT_INTERVAL = HEARTBEAT_INTERVAL
        settings.BUILD_HEARTBEAT_TIMEOUT = HEARTBEAT_TIMEOUT
        settings.UPSTREAM_MIRRORS = dict(pair.split("=", 1) for pair in self.mirrors().split())
        settings.SIGNING_KEY_FILE = self.key.key_file
        settings.SIGNING_PASSPHRASE_FILE = self.key.passphrase_file
        settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
        if self.store == "s3":
            assert self.s3 is not None
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
            settings.S3 = S3Config(
                bucket=self.bucket,
                endpoint_url=self.s3.endpoint.url,
                region=self.s3.endpoint.region,
                checksum_mode="when_required",
            )
            settings.PUBLIC_BASE_URL = f"{self.s3.endpoint.url}/{self.bucket}/"
        else:
            settings.S3 = None
            settings.ARTIFACT_DIR = self.artifact_dir

    def assert_published_consistent(self) -> int:
        return assert_bucket_consistent(self.s3_client(), self.bucket, self.key.public_keyring())

    def published_problem(self) -> str:
        """What is half-published right now ("" if nothing): for checks whose failure should not
        stop the test from also showing whether the system recovers."""
        try:
            self.assert_published_consistent()
        except AssertionError as problem:
            return str(problem)
        return ""


def api_client(user: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    return client


def compose(client: Any, name: str, extensions: list[str]) -> str:
    response = client.post(
        "/api/flavours/",
        {
            "name": name,
            "arch": "x86-64",
            "extensions": [{"name": e, "version": "v1.0.0"} for e in extensions],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return str(response.json()["id"])


def request_build(client: Any, flavour_id: str) -> str:
    response = client.post(f"/api/flavours/{flavour_id}/builds/")
    assert response.status_code == 202, response.content
    return str(response.json()["id"])


def build_body(client: Any, build_id: str) -> dict[str, Any]:
    """The build as the API shows it; a dropped database connection is reopened (test side)."""
    from django.db import connection

    for _ in range(3):
        response = client.get(f"/api/builds/{build_id}/")
        if response.status_code == 200:
            return dict(response.json())
        connection.close()
    raise AssertionError(
        f"GET /api/builds/{build_id}/ answered {response.status_code}: {response.content[:300]!r}"
    )


def reap() -> None:
    """What beat's builds-reap-stale does every minute in production."""
    from django.db import DatabaseError, connection

    from builds import recovery

    try:
        recovery.builds_reap_stale()
    except DatabaseError:
        connection.close()


def wait_for_build(
    client: Any,
    build_id: str,
    until: Callable[[dict[str, Any]], bool],
    *,
    timeout: float,
    what: str,
    workers: list[Any] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = build_body(client, build_id)
        if until(body):
            return body
        reap()
        time.sleep(0.25)
    logs = "\n".join(f"--- {w.log.name}:\n{w.tail(40)}" for w in workers)
    raise AssertionError(
        f"build {build_id} did not reach {what} within {timeout:.0f} s: state {body.get('state')}, "
        f"steps {[(s['name'], s.get('finished_at') is not None) for s in body.get('steps', [])]}\n{logs}"
    )


def finished(body: dict[str, Any]) -> bool:
    return body["state"] in FINAL_STATES


def step_running(name: str, *, state: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """Step ``name`` is running (and the build is in ``state``: a bake is "fetching" while it
    downloads, "baking" from then on)."""

    def check(body: dict[str, Any]) -> bool:
        if state is not None and body.get("state") != state:
            return False
        return any(s["name"] == name and not s.get("finished_at") for s in body.get("steps", []))

    return check


def ends_succeeded(client: Any, build_id: str, workers: list[Any]) -> dict[str, Any]:
    """The build in flight itself succeeds within RECOVERY_BOUND (no retry by a person)."""
    body = wait_for_build(
        client, build_id, finished, timeout=RECOVERY_BOUND, what="a final state", workers=workers
    )
    assert body["state"] == "succeeded", (body["state"], body.get("error_code"), body.get("error_message"))
    return body


def ends_well(client: Any, build_id: str, workers: list[Any]) -> dict[str, Any]:
    """The build ends within RECOVERY_BOUND: succeeded, or failed with a retryable code and then
    a retry succeeds. Returns the succeeded build."""
    body = wait_for_build(
        client, build_id, finished, timeout=RECOVERY_BOUND, what="a final state", workers=workers
    )
    if body["state"] == "failed":
        assert body["error_code"] in RETRYABLE_CODES, (
            f"build {build_id} failed with {body['error_code']}: {body['error_message']}"
        )
        retry = client.post(f"/api/builds/{build_id}/retry")
        assert retry.status_code == 202, retry.content
        body = wait_for_build(
            client,
            retry.json()["id"],
            finished,
            timeout=RECOVERY_BOUND,
            what="a final state",
            workers=workers,
        )
    assert body["state"] == "succeeded", (body["state"], body.get("error_code"), body.get("error_message"))
    return body
