"""Hostile requests found by hand and by tests/test_api_fuzz.py: each gets a JSON 4xx, never a 500.

Run against PostgreSQL too (DATABASE_URL): NUL characters only break there.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from builds import services as build_services
from tests.builds.catalog_fixtures import Cast, flavour_payload

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(small_catalog: Cast) -> Client:
    token = Token.objects.create(user=small_catalog.owner)
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


@pytest.fixture
def build_id(small_catalog: Cast) -> str:
    flavour, _ = build_services.flavour_create(
        user=small_catalog.owner,
        team=small_catalog.blue,
        name="web",
        arch="x86-64",
        extensions=flavour_payload()["extensions"],
    )
    build, _ = build_services.build_request(flavour=flavour, user=small_catalog.owner)
    return str(build.pk)


def _error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    body = json.loads(response.content)
    assert {"code", "message"} <= set(body)
    if code is not None:
        assert body["code"] == code
    return body


def _post_json(client: Client, path: str, body: Any) -> Any:
    return client.post(
        path,
        data=body if isinstance(body, str | bytes) else json.dumps(body),
        content_type="application/json",
    )


def test_json_nested_too_deep_is_a_parse_error(client: Client) -> None:
    body = _error(_post_json(client, "/api/flavours/", "[" * 100_000 + "]" * 100_000), 400, "parse_error")
    assert "nested too deeply" in body["message"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/flavours/", flavour_payload(name="web\x00nodes")),
        ("/api/flavours/", flavour_payload(extensions=[{"name": "hel\x00lo", "version": "v1.0.0"}])),
        ("/api/flavours/", flavour_payload(revision_of="abc\x00")),
        ("/api/extensions/hello/versions/", {"version": "v3.0.0", "vars": {"k\x00": "v"}}),
        ("/api/webhooks/", {"url": "https://example.org/\x00"}),
    ],
)
def test_nul_in_a_json_body_is_refused(client: Client, path: str, body: Any) -> None:
    body = _error(_post_json(client, path, body), 400, "parse_error")
    assert "NUL" in body["message"]


def test_nul_in_a_form_body_is_refused(client: Client) -> None:
    _error(client.post("/api/flavours/", {"name": "a\x00", "arch": "x86-64"}), 400, "parse_error")


@pytest.mark.parametrize(
    "url",
    [
        "/api/flavours/ab%00cd/",
        "/api/extensions/hel%00lo/",
        "/api/extensions/?search=a%00",
        "/api/extensions/?team=b%00",
    ],
)
def test_nul_in_the_url_is_refused(client: Client, url: str) -> None:
    _error(client.get(url), 400, "bad_request")


def test_nul_in_a_page_url_is_a_plain_400(client: Client) -> None:
    assert client.get("/catalog/?q=%00").status_code == 400


@pytest.mark.parametrize(
    "url", ["/api/builds/not-a-uuid/", "/api/builds/zzz/log", "/api/versions/-1/", "/api/no-such-endpoint"]
)
def test_urls_no_route_matches_get_a_json_404(client: Client, url: str) -> None:
    _error(client.get(url), 404, "not_found")


def test_pages_keep_their_html_404(client: Client) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_body_over_the_upload_limit_is_a_json_400(client: Client, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = _error(_post_json(client, "/api/flavours/", {"name": "a" * 4096}), 400, "bad_request")
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in body["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml"])
def test_wrong_content_type_is_a_415(client: Client, content_type: str) -> None:
    _error(client.post("/api/flavours/", data="name: x", content_type=content_type), 415)


@pytest.mark.parametrize("after", ["-1", "abc", "1e5", ""])
def test_log_after_must_be_a_whole_number(client: Client, build_id: str, after: str) -> None:
    _error(client.get(f"/api/builds/{build_id}/log", {"after": after}), 400, "invalid")


def test_log_after_beyond_any_line_is_an_empty_tail(client: Client, build_id: str) -> None:
    response = client.get(f"/api/builds/{build_id}/log", {"after": str(2**64)})
    assert response.status_code == 200
    assert response.json()["lines"] == []


def test_webhook_port_out_of_range_is_refused(client: Client) -> None:
    body = _error(
        _post_json(client, "/api/webhooks/", {"url": "https://example.org:99999/hook"}), 400, "invalid"
    )
    assert "port" in body["fields"]["url"][0]


def test_unicode_names_are_kept(client: Client) -> None:
    response = _post_json(client, "/api/flavours/", flavour_payload(name="nœuds ünïcode ✓"))
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "nœuds ünïcode ✓"


def test_artifact_ids_are_not_keys(client: Client, build_id: str) -> None:
    """Artifacts are fetched by database id, so a traversal in the URL matches no route."""
    _error(client.get(f"/api/builds/{build_id}/artifacts/..%2F..%2Fetc%2Fpasswd/download"), 404, "not_found")
    _error(client.get(f"/api/builds/{build_id}/artifacts/999999/download"), 404, "not_found")
