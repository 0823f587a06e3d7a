"""Races: 50 identical requests at once against a live server on PostgreSQL give one object.

Each request is a real HTTP request from its own thread (token authentication, as scripts use
the API), released together by a barrier. Tasks the requests queue go to a redis-server and queue
of our own that no worker reads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.core.servers.basehttp import ThreadedWSGIServer
from rest_framework.authtoken.models import Token

from builds.models import Build, Flavour
from catalog.models import ApprovalRecord, ExtensionVersion, VersionStatus
from tests.builds.catalog_fixtures import Cast, make_cast, make_extension
from tests.reliability.support import RedisServer, point_celery_at

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
        reason="needs PostgreSQL: SQLite serialises writers, so it cannot show these races",
    ),
]

CONCURRENCY = 50
# Django's live server listens with socketserver's backlog of 5, so 50 simultaneous connects get
# resets before the application sees them; gunicorn's is 2048. Give the test server a real one.
ThreadedWSGIServer.request_queue_size = 128


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        with point_celery_at(redis.url, f"bh-race-{os.urandom(4).hex()}"):
            yield
    finally:
        redis.stop()


@pytest.fixture
def cast(transactional_db: Any, broker: None, settings: Any, tmp_path: Path) -> Cast:
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.S3 = None
    return make_cast()


def at_once(method: str, url: str, user: Any, body: Any = None) -> list[tuple[int, Any]]:
    """CONCURRENCY identical requests released together; (status, JSON or text) of each."""
    token = Token.objects.get_or_create(user=user)[0].key
    barrier = threading.Barrier(CONCURRENCY)
    answers: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def one() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        barrier.wait(timeout=60)
        try:
            response = session.request(method, url, json=body, timeout=120)
            answer: tuple[int, Any] = (
                response.status_code,
                response.json()
                if "json" in response.headers.get("Content-Type", "")
                else response.text[:300],
            )
        except requests.RequestException as exc:
            answer = (0, repr(exc))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len(answers) == CONCURRENCY, f"only {len(answers)} of {CONCURRENCY} requests answered"
    return answers


def no_server_errors(answers: list[tuple[int, Any]]) -> None:
    bad = [a for a in answers if a[0] >= 500 or a[0] == 0]
    assert not bad, f"{len(bad)} of {len(answers)} answers failed: {bad[:3]}"


def test_identical_flavours_and_builds_at_once_make_one_of_each(live_server: Any, cast: Cast) -> None:
    make_extension("hello")
    body = {"name": "race", "arch": "x86-64", "extensions": [{"name": "hello", "version": "v1.0.0"}]}
    flavours = at_once("POST", f"{live_server.url}/api/flavours/", cast.teammate, body)
    no_server_errors(flavours)
    assert {status for status, _ in flavours} == {201}, flavours[:3]
    ids = {answer["id"] for _, answer in flavours}
    assert len(ids) == 1, ids
    assert Flavour.objects.count() == 1
    (flavour_id,) = ids

    builds = at_once("POST", f"{live_server.url}/api/flavours/{flavour_id}/builds/", cast.teammate)
    no_server_errors(builds)
    assert {status for status, _ in builds} == {202}, builds[:3]
    assert len({answer["id"] for _, answer in builds}) == 1
    assert Build.objects.filter(flavour_id=flavour_id).count() == 1


def test_approvals_of_one_version_at_once_record_one_approval(live_server: Any, cast: Cast) -> None:
    extension = make_extension("bluetool", team=cast.blue, versions={"v2.0.0": VersionStatus.PROPOSED})
    version = ExtensionVersion.objects.get(extension=extension, version="v2.0.0")
    version.approvals.create(action="proposed", actor=cast.teammate)
    answers = at_once(
        "POST", f"{live_server.url}/api/versions/{version.pk}/approve", cast.owner, {"reason": "ok"}
    )
    no_server_errors(answers)
    assert any(status == 200 for status, _ in answers), answers[:3]
    refused = [a for a in answers if a[0] != 200]
    assert all(status == 409 for status, _ in refused), refused[:3]
    assert ApprovalRecord.objects.filter(version=version, action="approved").count() == 1
    version.refresh_from_db()
    assert version.status != VersionStatus.PROPOSED


def test_two_admins_demoting_each_other_at_once_leave_one_admin(live_server: Any, cast: Cast) -> None:
    """Each sees another admin, so each demotion alone is allowed; together they must not leave
    team blue without an admin (nor deadlock into a 500)."""
    from catalog.models import Membership, Role

    Membership.objects.filter(team=cast.blue, user=cast.curator).update(role=Role.ADMIN)
    barrier = threading.Barrier(2)
    answers: list[int] = []

    def demote(actor: Any, target: str) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {Token.objects.get_or_create(user=actor)[0].key}"
        barrier.wait(timeout=30)
        url = f"{live_server.url}/api/teams/blue/members/{target}/"
        answers.append(session.patch(url, json={"role": "viewer"}, timeout=60).status_code)

    threads = [
        threading.Thread(target=demote, args=(cast.admin, cast.curator.username)),
        threading.Thread(target=demote, args=(cast.curator, cast.admin.username)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    # The first demotion wins; the second is refused: its actor is no longer an admin (403) or
    # its target is now the last admin (409).
    assert sorted(answers)[0] == 200 and sorted(answers)[1] in (403, 409), answers
    assert Membership.objects.filter(team=cast.blue, role=Role.ADMIN).count() == 1
