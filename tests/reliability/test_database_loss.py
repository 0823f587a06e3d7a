# ruff: noqa: F811 - the end-to-end fixtures are imported, then requested by name
"""Issue 10, hole 6: database connections dropped mid-build (``pg_terminate_backend``) are replaced.

Only the backends of this run's own test database are terminated. A real worker runs a build that
the fixture upstream keeps in its fetch step; after the terminate, its heartbeat must go on (so
the reaper leaves the live build alone), the bake must retry and the build succeed. A real
gunicorn with persistent connections must answer every request after a terminate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from builds import recovery
from builds.models import Build
from tests.builds.build_support import serve_extension
from tests.builds.test_end_to_end import (  # noqa: F401 - fixtures
    REPO,
    Worker,
    api,
    bucket,
    cast,
    compose,
    finished,
    portal_side,
    queue_name,
    s3,
    upstream_server,
    wait_for,
    worker,
    worker_env,
)
from tests.builds.test_end_to_end import pytestmark as end_to_end_marks
from tests.reliability.redis_server import free_port
from tests.upstream import UpstreamServer

pytestmark = [*end_to_end_marks, pytest.mark.reliability]


def terminate_other_backends() -> int:
    """Drop every connection to this test database but our own; the number dropped."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def test_a_build_survives_its_database_connections_being_dropped(
    cast: Any, worker: Worker, portal_side: Any, upstream_server: UpstreamServer
) -> None:
    serve_extension(upstream_server, "db-dropped", delay=10.0)
    client = api(cast.teammate)
    flavour = compose(client, "db dropped", ["db-dropped"])
    build_id = client.post(f"/api/flavours/{flavour['id']}/builds/").json()["id"]
    wait_for(client, build_id, worker, lambda b: b["state"] == "fetching" and b["heartbeat_at"])
    time.sleep(1.5)  # the heartbeat thread has its own connection open by now
    assert terminate_other_backends() >= 1
    dropped_at = timezone.now()

    # The heartbeat reconnects: it keeps beating (interval 1 s), so the reaper sees a live build.
    time.sleep(5)
    build = Build.objects.get(pk=build_id)
    assert build.is_active
    assert build.heartbeat_at is not None and build.heartbeat_at > dropped_at, worker.tail()
    assert build_id not in recovery.builds_reap_stale(timeout=4)

    # The bake's own connection died too: its next write fails, the task retries and succeeds.
    body = wait_for(client, build_id, worker, finished)
    assert body["state"] == "succeeded", (body, worker.tail())
    log = [line["text"] for line in client.get(f"/api/builds/{build_id}/log").json()["lines"]]
    assert any("Infrastructure trouble" in text for text in log), log
    assert Build.objects.get(pk=build_id).tasks_running == 0


@pytest.fixture
def gunicorn(worker_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "portal.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", "2"],
        cwd=REPO, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(url + "/healthz", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        assert os.path.exists(tmp_path / "gunicorn.log")


def test_web_requests_after_the_database_dropped_their_connections_answer_200(
    cast: Any, gunicorn: str
) -> None:
    token = Token.objects.create(user=cast.teammate)
    headers = {"Authorization": f"Token {token.key}"}

    def statuses() -> list[int]:
        return [
            requests.get(gunicorn + "/api/builds/", headers=headers, timeout=10).status_code for _ in range(6)
        ]

    assert statuses() == [200] * 6  # both gunicorn workers now hold a persistent connection
    assert terminate_other_backends() >= 1
    assert statuses() == [200] * 6
