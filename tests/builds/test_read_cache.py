"""Cached API reads (portal.read_cache): a repeated read with the same token is answered without
the view or the database, and whatever changes the answer shows at once, access above all."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from builds import services
from builds.adapters.store import get_artifact_store
from builds.api.views import ACTIVE_BUILD_SECONDS
from builds.models import Artifact, ArtifactKind, Build, BuildState
from builds.steps import build_end
from catalog.models import Membership, VersionStatus
from portal import read_cache
from portal.read_cache import STATUS_HEADER, _generation_key
from tests.builds.catalog_fixtures import make_extension
from tests.builds.test_api_scoping import World, world

__all__ = ["world"]

pytestmark = pytest.mark.django_db


def token_client(user: Any) -> APIClient:
    token, _ = Token.objects.get_or_create(user=user)
    return APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")


def read_twice(api: APIClient, url: str) -> tuple[Any, Any, int]:
    """The first and second answers, and how many queries the second one cost."""
    first = api.get(url)
    with CaptureQueriesContext(connection) as queries:
        second = api.get(url)
    return first, second, len(queries)


@pytest.mark.parametrize(
    "url",
    [
        lambda w: "/api/extensions/",
        lambda w: "/api/extensions/hello/",
        lambda w: "/api/flavours/",
        lambda w: f"/api/flavours/{w.flavour.pk}/",
        lambda w: f"/api/flavours/{w.flavour.pk}/butane",
        lambda w: f"/api/flavours/{w.flavour.pk}/ignition",
        lambda w: f"/api/builds/{w.done.pk}/",
    ],
    ids=["catalog", "extension", "flavours", "flavour", "butane", "ignition", "finished build"],
)
def test_a_repeated_read_is_answered_without_the_database(world: World, url: Any) -> None:
    first, second, queries = read_twice(token_client(world.cast.watcher), url(world))

    assert first.status_code == 200, first.content
    assert first[STATUS_HEADER] == "stored"
    assert second.status_code == 200 and second[STATUS_HEADER] == "hit"
    assert second.content == first.content
    assert second["Content-Type"] == first["Content-Type"]
    assert second["X-Content-Type-Options"] == "nosniff"  # the security headers come along
    assert queries == 0


def test_each_token_has_its_own_answers(world: World) -> None:
    url = f"/api/flavours/{world.flavour.pk}/"
    assert token_client(world.cast.owner).get(url).status_code == 200

    outsider = token_client(world.cast.outsider).get(url)
    assert outsider.status_code == 404
    teammate = token_client(world.cast.teammate).get(url)
    assert teammate.status_code == 200 and teammate[STATUS_HEADER] == "stored"


def test_a_revoked_token_is_refused_at_once(world: World) -> None:
    api = token_client(world.cast.watcher)
    url = f"/api/flavours/{world.flavour.pk}/"
    assert api.get(url).status_code == 200
    assert api.get(url)[STATUS_HEADER] == "hit"

    Token.objects.filter(user=world.cast.watcher).delete()

    assert api.get(url).status_code in {401, 403}


def test_a_member_removed_from_the_team_loses_its_flavours_at_once(world: World) -> None:
    api = token_client(world.cast.watcher)
    url = f"/api/flavours/{world.flavour.pk}/"
    assert api.get(url).status_code == 200

    removed = token_client(world.cast.owner).delete(f"/api/teams/blue/members/{world.cast.watcher.username}/")
    assert removed.status_code == 204, removed.content

    assert not Membership.objects.filter(user=world.cast.watcher, team=world.cast.blue).exists()
    assert api.get(url).status_code == 404


def test_the_catalog_shows_a_new_extension_at_once(world: World) -> None:
    api = token_client(world.cast.watcher)
    before = [row["name"] for row in api.get("/api/extensions/").json()["results"]]
    assert api.get("/api/extensions/")[STATUS_HEADER] == "hit"

    make_extension("freshly-added", versions={"v1.0.0": VersionStatus.APPROVED})

    after = api.get("/api/extensions/")
    assert after[STATUS_HEADER] == "stored"
    assert [row["name"] for row in after.json()["results"]] == sorted([*before, "freshly-added"])


def test_a_running_build_is_answered_again_for_a_second_and_its_end_at_once(world: World) -> None:
    api = token_client(world.cast.watcher)
    url = f"/api/builds/{world.running.pk}/"
    first, second, queries = read_twice(api, url)
    assert first[STATUS_HEADER] == "stored" and second[STATUS_HEADER] == "hit"
    assert queries == 0

    # Progress moves by update(), which throws nothing away: a poll sees it once the second is up.
    Build.objects.filter(pk=world.running.pk).update(progress=57)
    time.sleep(ACTIVE_BUILD_SECONDS + 0.1)
    moved = api.get(url)
    assert moved.json()["progress"] == 57 and moved[STATUS_HEADER] == "stored"

    build_end(world.running, BuildState.FAILED, code="fetch.unreachable", message="upstream down")

    ended = api.get(url)
    assert ended.json()["state"] == "failed" and ended[STATUS_HEADER] == "stored"
    assert api.get(url)[STATUS_HEADER] == "hit"


def test_a_retry_shows_on_the_finished_build_at_once(world: World) -> None:
    api = token_client(world.cast.owner)
    url = f"/api/builds/{world.failed.pk}/"
    assert api.get(url).json()["retries"] == []
    assert api.get(url)[STATUS_HEADER] == "hit"

    retried = api.post(f"/api/builds/{world.failed.pk}/retry")
    assert retried.status_code == 202, retried.content

    assert [retry["id"] for retry in api.get(url).json()["retries"]] == [retried.json()["id"]]


def test_a_newer_build_publishes_the_butane_read_next(world: World) -> None:
    Build.objects.filter(pk=world.done.pk).update(finished_at=timezone.now())
    api = token_client(world.cast.watcher)
    url = f"/api/flavours/{world.flavour.pk}/butane"
    assert api.get(url).content == b"variant: flatcar\nversion: 1.0.0\n"
    assert api.get(url)[STATUS_HEADER] == "hit"

    newer = Build.objects.create(flavour=world.flavour, state=BuildState.PUBLISHING)
    key = f"flavours/{world.flavour.pk}/config-2.bu"
    stored = get_artifact_store().put_bytes(key, b"variant: flatcar\nversion: 1.1.0\n")
    Artifact.objects.create(
        build=newer, flavour=world.flavour, kind=ArtifactKind.BUTANE, name="config.bu", key=key,
        sha256=stored.sha256, size=stored.size,
    )  # fmt: skip
    assert api.get(url).content == b"variant: flatcar\nversion: 1.0.0\n"  # not succeeded yet

    assert build_end(newer, BuildState.SUCCEEDED)
    assert api.get(url).content == b"variant: flatcar\nversion: 1.1.0\n"


def test_writes_session_reads_and_anonymous_reads_are_not_cached(world: World) -> None:
    browser = APIClient()
    browser.force_login(world.cast.owner)
    url = f"/api/flavours/{world.flavour.pk}/"
    assert STATUS_HEADER not in browser.get(url) and STATUS_HEADER not in browser.get(url)
    assert APIClient().get(url).status_code in {401, 403}

    api = token_client(world.cast.owner)
    posted = api.post(f"/api/flavours/{world.flavour.pk}/builds/")
    assert posted.status_code == 202 and STATUS_HEADER not in posted


def test_reads_still_answer_when_the_cache_is_down(world: World, settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
        }
    }
    api = token_client(world.cast.watcher)
    url = f"/api/flavours/{world.flavour.pk}/"
    for _ in range(2):
        response = api.get(url)
        assert response.status_code == 200 and STATUS_HEADER not in response


def test_a_flavour_made_by_a_teammate_is_listed_at_once(world: World) -> None:
    api = token_client(world.cast.watcher)
    before = api.get("/api/flavours/").json()["count"]
    assert api.get("/api/flavours/")[STATUS_HEADER] == "hit"

    services.flavour_create(
        user=world.cast.owner, team=world.cast.blue, name="d", arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}], options={"hostname": "d"},
    )  # fmt: skip

    assert api.get("/api/flavours/").json()["count"] == before + 1


def wsgi_get(path: str, token: str) -> tuple[str, dict[str, str], bytes]:
    """GET through portal.wsgi.application, as gunicorn calls it."""
    from portal.wsgi import application

    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(), "HTTP_AUTHORIZATION": f"Token {token}",
    }  # fmt: skip
    started: list[Any] = []
    # As Django's test client does: the test's database connection must outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        chunks = application(environ, lambda status, headers: started.append((status, dict(headers))))
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return started[0][0], started[0][1], body


def test_the_web_server_answers_a_stored_read_before_django_builds_a_request(world: World) -> None:
    token, _ = Token.objects.get_or_create(user=world.cast.watcher)
    url = f"/api/flavours/{world.flavour.pk}/"
    first = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}").get(url)
    assert first[STATUS_HEADER] == "stored"

    with CaptureQueriesContext(connection) as queries:
        status, headers, body = wsgi_get(url, token.key)
    assert status == "200 OK", body[:3000]
    assert headers[STATUS_HEADER] == "hit"
    assert body == first.content and headers["Content-Type"] == "application/json"
    assert len(queries) == 0

    Token.objects.filter(pk=token.pk).delete()
    status, headers, _ = wsgi_get(url, token.key)
    assert status.split()[0] in {"401", "403"} and STATUS_HEADER not in headers


def test_strangers_and_made_up_ids_leave_nothing_in_the_cache(world: World) -> None:
    stranger, member = "e" * 64, "f" * 64
    refused = APIClient(HTTP_AUTHORIZATION="Token not-a-token").get(f"/api/flavours/{stranger}/butane")
    assert refused.status_code in {401, 403}
    missing = token_client(world.cast.watcher).get(f"/api/flavours/{member}/butane")
    assert missing.status_code == 404

    assert cache.get(_generation_key(f"flavour:{stranger}")) is None
    assert cache.get(_generation_key(f"flavour:{member}")) is None


def test_a_token_stores_a_bounded_amount_of_answers_per_minute(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(read_cache, "_budget_window", lambda: 1)  # no new minute mid-test
    api = token_client(world.cast.watcher)
    size = len(api.get("/api/extensions/?search=warm").content)
    monkeypatch.setattr(read_cache, "STORED_BYTES_PER_MINUTE", 3 * size + size // 2)

    answers = [api.get(f"/api/extensions/?search=x{n}") for n in range(6)]

    assert all(a.status_code == 200 for a in answers)
    stored = [a.get(STATUS_HEADER) for a in answers]
    assert stored[:2] == ["stored", "stored"] and stored[3:] == [None, None, None]
    other = token_client(world.cast.owner).get("/api/extensions/?search=x5")  # a budget per token
    assert other[STATUS_HEADER] == "stored"
