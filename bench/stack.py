"""The whole product on this machine, for ``make bench``: what a deployment runs, on loopback.

A fresh PostgreSQL database on the server of ``DATABASE_URL`` (dropped at the end), the Redis of
``REDIS_URL`` under a queue prefix of our own, moto's S3 server, an upstream HTTP server serving
the input archives, gunicorn, and Celery workers started and stopped per measurement. The
bench process itself is a Django process on the same database (it files the catalog rows).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_HOST = "https://bench.bakehouse.invalid/"
ARCH = "x86-64"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def peak_rss_kib(pid: int) -> int:
    """VmHWM (peak resident memory) of one live process, 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid`` (a worker and its pool children and tools)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid:
                    pids.append(int(entry.name))
    return pids


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def python_peak_kib(self) -> int:
        """The highest VmHWM among the worker's own Python processes (main and pool)."""
        peaks = [peak_rss_kib(self.process.pid)]
        for pid in session_pids(self.process.pid):
            with contextlib.suppress(OSError):
                if "python" in Path(f"/proc/{pid}/comm").read_text() or "celery" in Path(
                    f"/proc/{pid}/cmdline"
                ).read_text(errors="replace"):
                    peaks.append(peak_rss_kib(pid))
        return max(peaks)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@dataclass
class Stack:
    work: Path
    env: dict[str, str]
    web_url: str
    upstream_dir: Path
    token: str = ""
    workers: list[Worker] = field(default_factory=list)
    web: subprocess.Popen[bytes] | None = None
    session: requests.Session = field(default_factory=requests.Session)

    # --- processes ------------------------------------------------------------------------

    def start_workers(self, count: int, *, concurrency: int = 1, separate_var_dirs: bool = False) -> None:
        from portal.routing import queue_names

        self.stop_workers()
        queues = ",".join(queue_names(self.env["CELERY_TASK_DEFAULT_QUEUE"]))
        for n in range(count):
            env = dict(self.env)
            if separate_var_dirs:  # as on two machines: own fetch cache, scratch and key copy
                var = self.work / f"var-machine-{n}"
                var.mkdir(exist_ok=True)
                env["BAKEHOUSE_VAR_DIR"] = str(var)
            name = f"bench{n}-{uuid.uuid4().hex[:6]}"
            log = self.work / f"{name}.log"
            argv = [
                sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", queues, "-n", f"{name}@%h",
                f"--concurrency={concurrency}", "--loglevel=WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            with log.open("wb") as out:
                process = subprocess.Popen(
                    argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            self.workers.append(Worker(name, process, log))
        for worker in self.workers:
            self._wait_ready(worker)

    def _wait_ready(self, worker: Worker) -> None:
        # --loglevel=WARNING hides " ready."; the worker answers a ping once it consumes.
        from portal.celery import app

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise SystemExit(f"worker {worker.name} exited:\n{worker.log.read_text()[-3000:]}")
            with contextlib.suppress(Exception):
                if app.control.ping(destination=[f"{worker.name}@{socket.gethostname()}"], timeout=1.0):
                    return
            time.sleep(0.3)
        raise SystemExit(f"worker {worker.name} did not start:\n{worker.log.read_text()[-3000:]}")

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def start_web(self, *, workers: int = 3) -> None:
        """gunicorn as the Dockerfile and docker-compose run it: ``workers`` sync workers (a
        process per request in flight, no threads fighting over one GIL), a longer timeout for
        the 1 GB download of measure 5."""
        port = int(urlsplit(self.web_url).port or 0)
        log = (self.work / "gunicorn.log").open("wb")
        self.web = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "portal.wsgi:application", "--bind", f"127.0.0.1:{port}",
                "--workers", str(workers), "--timeout", "300",
            ],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.web_url}/healthz", timeout=2).status_code < 500:
                    return
            time.sleep(0.3)
        raise SystemExit(f"gunicorn did not start:\n{(self.work / 'gunicorn.log').read_text()[-3000:]}")

    def web_pids(self) -> list[int]:
        return session_pids(self.web.pid) if self.web else []

    # --- the API, as a client -------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Token {self.token}"}
        return self.session.request(method, f"{self.web_url}{path}", headers=headers, timeout=60, **kwargs)

    def compose(self, name: str, extensions: list[str], team: str = "bench") -> str:
        response = self.api(
            "POST",
            "/api/flavours/",
            json={
                "name": name,
                "team": team,
                "arch": ARCH,
                "extensions": [{"name": e, "version": "v1.0.0"} for e in extensions],
                "options": {"hostname": name.replace(" ", "-")[:60]},
            },
        )
        if response.status_code != 201:
            raise SystemExit(f"compose {name}: {response.status_code} {response.text[:500]}")
        return str(response.json()["id"])

    def request_build(self, flavour_id: str, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Token {token or self.token}"}
        response = self.session.post(
            f"{self.web_url}/api/flavours/{flavour_id}/builds/", headers=headers, timeout=60
        )
        if response.status_code not in (200, 201, 202):
            raise SystemExit(f"build of {flavour_id}: {response.status_code} {response.text[:500]}")
        return dict(response.json())

    def wait_finished(
        self, build_id: str, timeout: float = 3600, poll: float = 0.02, token: str | None = None
    ) -> dict[str, Any]:
        """Poll the build's status until it ends: every 20 ms at first (a cached flavour answers
        at once), backing off to 250 ms so a long bake is not slowed by the polling itself."""
        headers = {"Authorization": f"Token {token or self.token}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.session.get(f"{self.web_url}/api/builds/{build_id}/", headers=headers, timeout=60)
            if response.status_code != 200:
                raise SystemExit(f"build {build_id}: {response.status_code} {response.text[:300]}")
            body = dict(response.json())
            if body["state"] in ("succeeded", "failed", "cancelled"):
                if body["state"] != "succeeded":
                    logs = "\n".join(w.log.read_text(errors="replace")[-2000:] for w in self.workers)
                    raise SystemExit(f"build {build_id} {body['state']}: {body.get('error_message')}\n{logs}")
                return body
            time.sleep(poll)
            poll = min(poll * 1.25, 0.25)
        raise SystemExit(f"build {build_id} did not finish in {timeout} s")

    # --- the catalog --------------------------------------------------------------------------

    def add_extension(self, name: str, archive: Path) -> None:
        """A global extension whose v1.0.0 is the archive (served by the upstream), approved and pinned."""
        from catalog.models import Extension, ExtensionVersion, UpstreamDigest, VersionStatus

        served = self.upstream_dir / name / archive.name
        served.parent.mkdir(parents=True, exist_ok=True)
        served.symlink_to(archive.resolve())
        url = f"{UPSTREAM_HOST}{name}/{archive.name}"
        text = (
            f"name: {name}\ndescription: Real binaries from the build machine\ncategory: tool\n"
            f"arches: {{x86-64: x86_64}}\nsources:\n  - url: {url}\n    id: payload\n    archive: tar.gz\n"
            f"    strip_components: 1\n    install:\n      - {{from: files, to: usr/lib/{name}}}\n"
            "versions:\n  v1.0.0: {}\n"
        )
        extension = Extension.objects.create(
            name=name,
            description="Real binaries from the build machine",
            arches=[ARCH],
            recipe_text=text,
            recipe_digest=hashlib.sha256(text.encode()).hexdigest(),
        )
        version = ExtensionVersion.objects.create(
            extension=extension, version="v1.0.0", status=VersionStatus.APPROVED
        )
        UpstreamDigest.objects.create(
            version=version,
            arch=ARCH,
            source_id="payload",
            url=url,
            sha256=_sha256(archive),
            size=archive.stat().st_size,
        )


_DIGESTS: dict[Path, str] = {}


def _sha256(path: Path) -> str:
    if path not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(partial(f.read, 1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[path] = digest.hexdigest()
    return _DIGESTS[path]


def _database_urls() -> tuple[str, str]:
    """(admin URL on the server's ``postgres`` database, URL of a new database of our own)."""
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith(("postgres://", "postgresql://")):
        raise SystemExit("make bench measures the product on PostgreSQL: set DATABASE_URL=postgres://...")
    if not os.environ.get("REDIS_URL"):
        raise SystemExit("make bench measures the product on Redis: set REDIS_URL=redis://...")
    parts = urlsplit(configured)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    return urlunsplit(parts._replace(path="/postgres")), urlunsplit(parts._replace(path=f"/{name}"))


def _admin(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(sql)


@contextlib.contextmanager
def product_stack(work: Path) -> Iterator[Stack]:
    """Everything started; the bench process set up as a Django process on the new database."""
    from moto.server import ThreadedMotoServer

    from builds.pipeline.signing import generate_signing_key

    admin_url, database_url = _database_urls()
    database = urlsplit(database_url).path.lstrip("/")
    _admin(admin_url, f'CREATE DATABASE "{database}"')
    s3_port, web_port = free_port(), free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    upstream_dir = work / "upstream"
    upstream_dir.mkdir()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietFiles, directory=str(upstream_dir)))
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    key = work / "signing-key.asc"
    generate_signing_key(key, name="Bakehouse Bench", email="bench@bakehouse.invalid")
    queue = f"bh-bench-{uuid.uuid4().hex[:8]}"
    web_url = f"http://127.0.0.1:{web_port}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "DATABASE_URL": database_url,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "CACHE_KEY_PREFIX": queue,
        "BAKEHOUSE_VAR_DIR": str(work / "var"),
        "S3_BUCKET": "bench",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "PUBLIC_BASE_URL": f"{web_url}/artifacts/",
        "UPSTREAM_MIRRORS": f"{UPSTREAM_HOST}=http://127.0.0.1:{upstream.server_address[1]}/",
        "SIGNING_KEY_FILE": str(key),
        "SIGNING_PASSPHRASE_FILE": "",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("CELERY_TASK_ALWAYS_EAGER", "DEBUG"):
        env.pop(name, None)
    stack = Stack(work=work, env=env, web_url=web_url, upstream_dir=upstream_dir)
    try:
        os.environ.update(env)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=REPO, env=env, check=True
        )
        import django

        django.setup()
        from builds.adapters.store import get_artifact_store

        get_artifact_store().ensure_bucket()  # type: ignore[attr-defined]
        stack.token = _member("bench", "bench-admin")
        stack.start_web()
        yield stack
    finally:
        stack.stop_workers()
        if stack.web is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(stack.web.pid, signal.SIGTERM)
            stack.web.wait(timeout=30)
        upstream.shutdown()
        moto.stop()
        from django.db import connections

        connections.close_all()
        with contextlib.suppress(Exception):
            _admin(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _member(team_slug: str, username: str) -> str:
    """A team admin's API token (teams are made on first use)."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from catalog.models import Membership, Role, Team

    team, _ = Team.objects.get_or_create(slug=team_slug, defaults={"name": team_slug.title()})
    user, _ = get_user_model().objects.get_or_create(username=username)
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": Role.ADMIN})
    token, _ = Token.objects.get_or_create(user=user)
    return str(token.key)


def member_token(team_slug: str, username: str) -> str:
    return _member(team_slug, username)
