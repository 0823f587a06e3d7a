# ruff: noqa: F811 - the end-to-end fixtures are imported, then requested by name
"""Issue 10, hole 5: a Redis restart must not stop the worker or lose a build.

A real Celery worker consumes from a private redis-server that the test restarts (with nothing
persisted, as an operator's restart of a cache-configured Redis does): while the worker is idle,
and while a build is running. The worker must reconnect and keep consuming, the build in flight
must finish (not fail as ``build.internal-error``), and a build whose message the restart lost
must be queued again by the reaper rather than sit in the queue until ``build.queue-timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from builds import recovery
from builds.models import Build, BuildState
from portal.celery import app
from tests.builds.build_support import serve_extension
from tests.builds.test_end_to_end import (  # noqa: F401 - fixtures
    Worker,
    api,
    bucket,
    cast,
    compose,
    finished,
    portal_side,
    queue_name,
    s3,
    start_worker,
    upstream_server,
    wait_for,
    worker_env,
)
from tests.builds.test_end_to_end import pytestmark as end_to_end_marks
from tests.reliability.redis_server import RedisServer
from tests.upstream import UpstreamServer

pytestmark = [*end_to_end_marks, pytest.mark.reliability]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def _use_broker(url: str) -> None:
    """Point this (the web) process's producer at ``url``: new connection and producer pools."""
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture(scope="module")
def broker(redis: RedisServer, queue_name: str) -> Iterator[RedisServer]:
    previous = app.conf.broker_url
    _use_broker(redis.url)
    yield redis
    _use_broker(previous)


@pytest.fixture(scope="module")
def restarted_worker(
    worker_env: dict[str, str], broker: RedisServer, queue_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    env = {**worker_env, "REDIS_URL": broker.url}
    worker = start_worker(env, queue_name, tmp_path_factory.mktemp("worker") / "worker.log")
    yield worker
    worker.stop()


def _assert_alive(worker: Worker) -> None:
    assert worker.process.poll() is None, f"the worker exited:\n{worker.tail()}"


def _wait_reconnected(worker: Worker, since: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _assert_alive(worker)
        if "Connected to " in worker.log.read_text(errors="replace")[since:]:
            return
        time.sleep(0.2)
    raise AssertionError(f"the worker did not reconnect:\n{worker.tail()}")


def test_the_worker_survives_a_redis_restart_while_idle_and_builds_afterwards(
    cast: Any,
    restarted_worker: Worker,
    broker: RedisServer,
    portal_side: Any,
    upstream_server: UpstreamServer,
) -> None:
    since = len(restarted_worker.log.read_text(errors="replace"))
    broker.restart(down_for=3)
    _wait_reconnected(restarted_worker, since)
    time.sleep(2)
    _assert_alive(restarted_worker)

    serve_extension(upstream_server, "after-restart")
    client = api(cast.teammate)
    flavour = compose(client, "after restart", ["after-restart"])
    response = client.post(f"/api/flavours/{flavour['id']}/builds/")
    assert response.status_code == 202, response.content
    body = wait_for(client, response.json()["id"], restarted_worker, finished)
    assert body["state"] == "succeeded", (body, restarted_worker.tail())


def test_a_build_in_flight_survives_a_redis_restart(
    cast: Any,
    restarted_worker: Worker,
    broker: RedisServer,
    portal_side: Any,
    upstream_server: UpstreamServer,
) -> None:
    serve_extension(upstream_server, "through-restart", delay=8.0)
    client = api(cast.teammate)
    flavour = compose(client, "through restart", ["through-restart"])
    build_id = client.post(f"/api/flavours/{flavour['id']}/builds/").json()["id"]
    wait_for(client, build_id, restarted_worker, lambda b: b["state"] == "fetching" and b["heartbeat_at"])
    since = len(restarted_worker.log.read_text(errors="replace"))
    # Down for a while: the bake finishes its fetch meanwhile and queues finalize into a dead broker.
    broker.restart(down_for=4)
    _wait_reconnected(restarted_worker, since)
    body = wait_for(client, build_id, restarted_worker, finished)
    assert body["state"] == "succeeded", (body, restarted_worker.tail())
    _assert_alive(restarted_worker)


def test_a_build_requested_while_redis_is_down_is_accepted_and_queued_again_by_the_reaper(
    cast: Any,
    restarted_worker: Worker,
    broker: RedisServer,
    portal_side: Any,
    upstream_server: UpstreamServer,
) -> None:
    serve_extension(upstream_server, "while-down")
    client = api(cast.teammate)
    flavour = compose(client, "while down", ["while-down"])
    broker.stop()
    try:
        response = client.post(f"/api/flavours/{flavour['id']}/builds/")
    finally:
        broker.start()
    # Accepted: the build is committed even though its task could not be sent.
    assert response.status_code == 202, response.content
    build_id = response.json()["id"]
    assert Build.objects.get(pk=build_id).state == BuildState.QUEUED
    # Nothing will come for it; once it has waited BUILD_REQUEUE_AFTER the reaper queues it again.
    assert recovery.builds_reap_stale() == []
    assert Build.objects.get(pk=build_id).requeued_at is None
    later = timezone.now() + timedelta(seconds=recovery.requeue_after() + 1)
    assert recovery.builds_reap_stale(now=later) == []
    assert Build.objects.get(pk=build_id).requeued_at == later
    body = wait_for(client, build_id, restarted_worker, finished)
    assert body["state"] == "succeeded", (body, restarted_worker.tail())
    _assert_alive(restarted_worker)
