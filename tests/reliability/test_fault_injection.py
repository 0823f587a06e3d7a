"""Fault injection with real processes: a Celery worker on our own redis-server and the test
PostgreSQL database, moto's S3 server and the fixture upstream; then we kill, stop and pause them.

What must hold (issue 10): 0 builds lost (every build ends within RECOVERY_BOUND), 0
half-published objects (every SHA256SUMS verifies with its SHA256SUMS.gpg and lists only objects
with the listed sha256, at every moment a reader could look), the worker keeps going through
broker and database trouble (same pid), and every later build succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from tests.builds.build_support import serve_extension
from tests.builds.catalog_fixtures import Cast, make_cast
from tests.reliability.support import (
    RECOVERY_BOUND,
    Rig,
    api_client,
    compose,
    ends_succeeded,
    ends_well,
    finished,
    point_celery_at,
    request_build,
    step_running,
    wait_for_build,
)

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
        reason="needs DATABASE_URL (PostgreSQL): real workers share the test database",
    ),
]

STEP_WAIT = 90.0  # to reach the step where a fault is injected


@pytest.fixture(scope="module")
def rig(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    made = Rig(tmp_path_factory.mktemp("rig"))
    try:
        with point_celery_at(made.redis.url, made.queue):
            yield made
    finally:
        made.close()


@pytest.fixture
def cast(transactional_db: Any, rig: Rig, settings: Any) -> Cast:
    rig.use_new_bucket()
    rig.configure_portal(settings)
    return make_cast()


def later_build_succeeds(rig: Rig, cast: Cast, name: str, workers: list[Any]) -> None:
    serve_extension(rig.upstream, name)
    client = api_client(cast.teammate)
    build_id = request_build(client, compose(client, f"{name} later", [name]))
    body = wait_for_build(client, build_id, finished, timeout=RECOVERY_BOUND, what="the end", workers=workers)
    assert body["state"] == "succeeded", (body["error_code"], body["error_message"])


# --- (a) a worker killed at each step ---------------------------------------------------------------

KILL_STEPS = {
    # step: (the running step and build state that mark the moment, worker tool delays, upstream delay)
    "download": (("bake", "fetching"), {}, 5.0),
    "image": (("bake", "baking"), {"mksquashfs": 5}, 0.0),
    "sign": (("sign", None), {"gpg": 2}, 0.0),
}


@pytest.mark.parametrize("step", [*KILL_STEPS, "publish"])
def test_worker_killed_at_each_step_loses_no_build_and_publishes_nothing_half(
    rig: Rig, cast: Cast, step: str
) -> None:
    name = f"kill-{step}"
    client = api_client(cast.teammate)
    if step == "publish":
        serve_extension(rig.upstream, name)
        assert rig.proxy is not None
        # Hold the worker's upload of the signature of the extension's listing: SHA256SUMS is
        # up, its signature is not, and then the worker dies.
        rig.proxy.hold(
            lambda method, path: method == "PUT" and path.endswith(f"/extensions/{name}/SHA256SUMS.gpg")
        )
        doomed = rig.start_worker(f"doomed-{step}")
    else:
        marker, delays, upstream_delay = KILL_STEPS[step]
        serve_extension(rig.upstream, name, delay=upstream_delay)
        doomed = rig.start_worker(f"doomed-{step}", **delays)
    build_id = request_build(client, compose(client, name, [name]))
    if step == "publish":
        assert rig.proxy is not None
        if not rig.proxy.holding.wait(STEP_WAIT):
            raise AssertionError(
                f"the worker never uploaded extensions/{name}/SHA256SUMS.gpg:\n{doomed.tail()}"
            )
    else:
        wait_for_build(
            client,
            build_id,
            step_running(marker[0], state=marker[1]),
            timeout=STEP_WAIT,
            what=f"step {marker!r}",
            workers=[doomed],
        )
        time.sleep(1.0)
    doomed.kill()  # SIGKILL to the whole process group: no goodbye, no ack
    if step == "publish":
        assert rig.proxy is not None
        rig.proxy.release(forward=False)  # a dead worker never sends the rest

    # Readers see only signed listings, even right after the kill (checked at the end, so that
    # the recovery is exercised and reported too).
    right_after_kill = rig.published_problem()

    rescuer = rig.start_worker(f"rescuer-{step}")
    try:
        ends_well(client, build_id, [doomed, rescuer])
        assert rig.assert_published_consistent() >= 2  # the extension's and the flavour's listing
        later_build_succeeds(rig, cast, f"after-kill-{step}", [rescuer])
        assert rescuer.process.poll() is None
    finally:
        rescuer.stop()
    assert not right_after_kill, f"right after the worker was killed at {step}: {right_after_kill}"


# --- (b) Redis restarted and paused -----------------------------------------------------------------


def test_redis_restart_while_idle_keeps_the_worker(rig: Rig, cast: Cast) -> None:
    worker = rig.start_worker("redis-idle")
    try:
        pid = worker.process.pid
        rig.redis.restart(downtime=2.0)
        time.sleep(5.0)  # the worker notices the lost connection and reconnects
        assert worker.process.poll() is None, f"the worker exited when Redis restarted:\n{worker.tail()}"
        assert worker.process.pid == pid
        later_build_succeeds(rig, cast, "after-redis-idle", [worker])
        assert worker.process.poll() is None, worker.tail()
    finally:
        worker.stop()


def build_caught_fetching(rig: Rig, cast: Cast, worker: Any, name: str, delay: float) -> tuple[Any, str]:
    """A build of one extension whose upstream answers ``delay`` s late, caught while downloading."""
    serve_extension(rig.upstream, name, delay=delay)
    client = api_client(cast.teammate)
    build_id = request_build(client, compose(client, name.replace("-", " "), [name]))
    wait_for_build(
        client,
        build_id,
        step_running("bake", state="fetching"),
        timeout=STEP_WAIT,
        what="fetch",
        workers=[worker],
    )
    return client, build_id


def test_redis_restart_mid_build_keeps_the_worker_and_the_build(rig: Rig, cast: Cast) -> None:
    worker = rig.start_worker("redis-mid")
    try:
        client, build_id = build_caught_fetching(rig, cast, worker, "redis-mid", delay=5.0)
        rig.redis.restart(downtime=2.0)
        ends_succeeded(client, build_id, [worker])
        assert worker.process.poll() is None, f"the worker exited when Redis restarted:\n{worker.tail()}"
        later_build_succeeds(rig, cast, "after-redis-mid", [worker])
        assert worker.process.poll() is None, worker.tail()
    finally:
        worker.stop()


def test_redis_paused_mid_build_keeps_the_worker_and_the_build(rig: Rig, cast: Cast) -> None:
    worker = rig.start_worker("redis-pause")
    try:
        client, build_id = build_caught_fetching(rig, cast, worker, "redis-pause", delay=4.0)
        pid = worker.process.pid
        rig.redis.pause()
        try:
            time.sleep(5.0)
        finally:
            rig.redis.resume()
        ends_succeeded(client, build_id, [worker])
        assert worker.process.poll() is None and worker.process.pid == pid, worker.tail()
        later_build_succeeds(rig, cast, "after-redis-pause", [worker])
    finally:
        worker.stop()


# --- (c) S3 down during publish -----------------------------------------------------------------------


def test_s3_down_during_publish_retries_and_publishes_nothing_half(rig: Rig, cast: Cast) -> None:
    assert rig.s3 is not None
    # The publisher signs each SHA256SUMS (gpg takes a few seconds here), then uploads: S3 goes
    # down as the publish step starts, so the uploads after signing meet it.
    worker = rig.start_worker("s3-down", gpg=2)
    try:
        serve_extension(rig.upstream, "s3-down")
        client = api_client(cast.teammate)
        build_id = request_build(client, compose(client, "s3 down", ["s3-down"]))
        wait_for_build(
            client, build_id, step_running("publish"), timeout=STEP_WAIT, what="publish", workers=[worker]
        )
        rig.s3.stop()
        try:
            time.sleep(10.0)  # longer than boto3's own retries: the task itself must retry
        finally:
            rig.s3.start()
        while_down = rig.published_problem()
        body = ends_well(client, build_id, [worker])
        log = client.get(f"/api/builds/{body['id']}/log").json()["lines"]
        met_outage = build_id != body["id"] or any("Infrastructure trouble" in line["text"] for line in log)
        assert met_outage, "the build never met the S3 outage (the test's timing is off)"
        assert rig.assert_published_consistent() >= 2
        assert worker.process.poll() is None, worker.tail()
        assert not while_down, f"after S3 came back: {while_down}"
    finally:
        worker.stop()


# --- (d) database connections terminated --------------------------------------------------------------


def terminate_test_database_backends() -> int:
    """pg_terminate_backend on every other connection to the test database (and only it)."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(
        **{k: v for k, v in params.items() if k in ("host", "port", "user", "password", "dbname")},
        autocommit=True,
    ) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_database_connections_terminated_mid_build(rig: Rig, cast: Cast) -> None:
    worker = rig.start_worker("db-terminate")
    try:
        client, build_id = build_caught_fetching(rig, cast, worker, "db-term", delay=5.0)
        assert terminate_test_database_backends() >= 1
        # The web side (real gunicorn processes answering right after a termination) is
        # test_database_loss.py's: Django's test client skips the per-request connection check.
        connection.close()  # the test's own polling starts on a fresh connection either way
        ends_succeeded(client, build_id, [worker])
        assert worker.process.poll() is None, worker.tail()
        later_build_succeeds(rig, cast, "after-db-term", [worker])
    finally:
        connection.close()  # never leave a terminated connection to the database flush
        worker.stop()


def test_signals_are_delivered_to_our_own_processes_only(rig: Rig) -> None:
    """A guard for this file: the redis-server we stop and pause is ours, never the shared one."""
    assert rig.redis.port != 6379
    assert rig.redis.process is not None
    os.kill(rig.redis.process.pid, 0)
    assert signal.SIGSTOP and rig.redis.ping()
