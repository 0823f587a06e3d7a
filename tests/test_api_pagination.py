"""Every API list takes ``?limit=&offset=`` safely (issue 10, item 10).

``?limit=99999999999999999999`` was a 500 (PostgreSQL's bigint overflowed). The lists are found by
walking the URL conf, so a list added later is covered without touching this file (or it fails
here, asking for an object to fill its URL).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.authtoken.models import Token
from rest_framework.mixins import ListModelMixin

from builds import services as build_services
from builds.models import Webhook, WebhookDelivery
from portal.pagination import MAX_LIMIT
from tests.builds.catalog_fixtures import Cast, flavour_payload

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]


def _list_routes(patterns: list[Any] | None = None, prefix: str = "") -> list[str]:
    """Routes (``api/flavours/<str:pk>/builds/``) of every view that answers GET with a list."""
    routes: list[str] = []
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes += _list_routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            view_class = getattr(pattern.callback, "view_class", None)
            if view_class is not None and issubclass(view_class, ListModelMixin):
                routes.append(route)
    return routes


LIST_ROUTES = _list_routes()


@pytest.fixture
def world(small_catalog: Cast) -> dict[str, Any]:
    """An object behind every path parameter, by the collection it follows (``flavours/<pk>``)."""
    flavour, _ = build_services.flavour_create(
        user=small_catalog.owner,
        team=small_catalog.blue,
        name="web",
        arch="x86-64",
        extensions=flavour_payload()["extensions"],
    )
    build, _ = build_services.build_request(flavour=flavour, user=small_catalog.owner)
    hook = Webhook.objects.create(team=small_catalog.blue, url="https://hooks.example.org/", secret="s" * 32)
    for n in range(3):
        WebhookDelivery.objects.create(webhook=hook, build=build, event=f"build.test{n}", payload={})
    token = Token.objects.create(user=small_catalog.owner)
    return {
        "client": Client(HTTP_AUTHORIZATION=f"Token {token.key}"),
        "flavours": flavour.pk,
        "builds": build.pk,
        "webhooks": hook.pk,
        "extensions": "hello",
    }


def _url(route: str, world: dict[str, Any]) -> str:
    def fill(match: re.Match[str]) -> str:
        collection = match.group(1)
        assert collection in world, f"tests/test_api_pagination.py: give an object for {route!r}"
        return f"{collection}/{world[collection]}"

    return "/" + re.sub(r"([\w-]+)/<[^>]+>", fill, route)


def test_the_url_conf_has_the_known_lists() -> None:
    expected = {"api/extensions/", "api/flavours/", "api/builds/", "api/webhooks/"}
    assert expected <= set(LIST_ROUTES)
    assert "api/flavours/<str:pk>/builds/" in LIST_ROUTES


@pytest.mark.parametrize("route", LIST_ROUTES)
@pytest.mark.parametrize(
    "query",
    [
        {"limit": "99999999999999999999"},
        {"limit": "9" * 5000},  # past the digits Python's int() accepts
        {"limit": str(MAX_LIMIT + 1)},
        {"offset": "99999999999999999999", "limit": "99999999999999999999"},
    ],
)
def test_huge_values_are_clamped_not_a_server_error(world: dict[str, Any], route: str, query: dict) -> None:
    response = world["client"].get(_url(route, world), query)
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert len(body["results"]) <= MAX_LIMIT
    if "offset" in query:
        assert body["results"] == []  # past the end: an empty page
    assert body["next"] is None  # these lists are short; a huge limit covers them


@pytest.mark.parametrize("route", LIST_ROUTES)
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "abc"),
        ("limit", "-1"),
        ("limit", "0"),
        ("limit", "1.5"),
        ("limit", ""),
        ("offset", "-5"),
        ("offset", "x"),
        ("offset", "1e3"),
    ],
)
def test_values_that_are_not_whole_numbers_are_a_400(
    world: dict[str, Any], route: str, name: str, value: str
) -> None:
    response = world["client"].get(_url(route, world), {name: value})
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["code"] == "invalid"
    assert name in body["fields"]


@pytest.mark.parametrize("route", LIST_ROUTES)
def test_limit_and_offset_still_page(world: dict[str, Any], route: str) -> None:
    client, url = world["client"], _url(route, world)
    everything = client.get(url).json()
    assert everything["count"] >= 1, f"{route}: give the world an object in this list"
    first = client.get(url, {"limit": "1"}).json()
    assert first["count"] == everything["count"]
    assert _identities(first["results"]) == _identities(everything["results"][:1])
    rest = client.get(url, {"limit": "1", "offset": "1"}).json()
    assert _identities(rest["results"]) == _identities(everything["results"][1:2])


def _identities(rows: list[dict[str, Any]]) -> list[Any]:
    """Which objects a page holds (a queued build's ``queued_seconds`` grows between two requests)."""
    return [row.get("id", row.get("url", row.get("slug", row))) for row in rows]
