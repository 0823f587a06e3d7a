"""A generated access matrix: every URL pattern of the portal, every method it answers, requested as
anonymous, each role of team blue, an admin of team red and a staff user with no team.

The URL conf is walked at run time (``django.urls.get_resolver``), so a new endpoint is in the
matrix the moment it is routed, and an endpoint this file does not know how to fill FAILS
``test_every_url_pattern_is_in_the_matrix`` until someone adds a row to ``ROUTES`` saying which
object fills its parameters and who may do what. The rules (catalog/permissions.py, README's roles):

- another team's objects do not exist for you: 404, never 403 (API and pages alike);
- anonymous: the API answers 401/403, pages redirect to sign-in;
- roles rank viewer < builder < curator < admin: builders compose, build, propose; curators
  approve, reject, deprecate; admins manage webhooks;
- no request of the matrix answers 5xx, and nothing team blue keeps private (names,
  descriptions, webhook targets, logs) appears in an answer to someone outside blue.

Each request runs in a transaction that is rolled back, so a write by one cell never changes what
the next cell sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from builds import services
from builds.access import flavour_token
from builds.adapters.store import get_artifact_store
from builds.models import Artifact, ArtifactKind, Build, BuildState, WebhookDelivery
from catalog.models import ExtensionVersion, VersionStatus
from tests.builds.catalog_fixtures import make_extension
from tests.factories import make_cast

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

PRIVATE_EXTENSION = "bluetool"
PRIVATE_MARKERS = (
    "Blue private flavour 7f3a",  # flavour name
    "hooks.blue-private.example.org",  # webhook target
    "Blue-private-failure 41c9",  # a build's error message
    "blue-private-butane-bytes",  # published config text (served only behind the team check)
    "Test extension bluetool",  # the private extension's description
)

ROLES = ("anonymous", "viewer", "builder", "curator", "admin", "outsider", "staff")
MEMBERS = ("viewer", "builder", "curator", "admin")
RANK = {"viewer": 0, "builder": 1, "curator": 2, "admin": 3}


@dataclass
class World:
    users: dict[str, User | None]
    values: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def world(db: Any, settings: Any, tmp_path: Path) -> Iterator[World]:
    _CLIENTS.clear()  # signed-in clients hold sessions of this test's users
    yield make_world(settings, tmp_path)
    _CLIENTS.clear()


def make_world(settings: Any, tmp_path: Path) -> World:
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.S3 = None
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    # Sign-in cells check wrong passwords; a slow hasher would only slow the matrix down.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cast = make_cast()
    blue = cast.blue
    users: dict[str, User | None] = {
        "anonymous": None,
        "viewer": cast.viewer,
        "builder": cast.builder,
        "curator": cast.curator,
        "admin": cast.admin,
        "outsider": cast.outsider,  # admin of team red
        "staff": cast.staff,  # in no team
    }

    make_extension("hello")
    private = make_extension(
        PRIVATE_EXTENSION,
        team=blue,
        versions={"v1.0.0": VersionStatus.APPROVED, "v1.1.0": VersionStatus.PROPOSED},
    )
    approved = ExtensionVersion.objects.get(extension=private, version="v1.0.0")
    proposed = ExtensionVersion.objects.get(extension=private, version="v1.1.0")
    proposed.approvals.create(action="proposed", actor=users["builder"])

    def flavour(name: str, ext: str = "hello") -> Any:
        made, _ = services.flavour_create(
            user=users["admin"],
            team=blue,
            name=name,
            arch="x86-64",
            extensions=[{"name": ext, "version": "v1.0.0"}],
        )
        return made

    done_flavour = flavour("Blue private flavour 7f3a", PRIVATE_EXTENSION)
    running_flavour, failed_flavour = flavour("second"), flavour("third")
    done = Build.objects.create(flavour=done_flavour, state=BuildState.SUCCEEDED, progress=100)
    running = Build.objects.create(flavour=running_flavour, state=BuildState.BAKING)
    failed = Build.objects.create(
        flavour=failed_flavour,
        state=BuildState.FAILED,
        error_code="fetch.sha256-mismatch",
        error_message="Blue-private-failure 41c9",
    )
    store = get_artifact_store()
    artifact = None
    for name, kind in (("config.bu", ArtifactKind.BUTANE), ("config.ign", ArtifactKind.IGNITION)):
        stored = store.put_bytes(f"flavours/{done_flavour.pk}/{name}", b"blue-private-butane-bytes\n")
        artifact = Artifact.objects.create(
            build=done, flavour=done_flavour, kind=kind, name=name, key=stored.key,
            sha256=stored.sha256, size=stored.size,
        )  # fmt: skip
    assert artifact is not None
    private_flavour, _ = services.flavour_create(
        user=users["admin"],
        team=blue,
        name="Blue token flavour",
        arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}],
        options={"private": True},
    )
    private_key = store.put_bytes(f"flavours/{private_flavour.pk}/config.ign", b"blue-private-ign\n").key
    hook = services.webhook_create(
        team=blue, user=users["admin"], url="https://hooks.blue-private.example.org/h"
    )
    WebhookDelivery.objects.create(webhook=hook, build=done, event="build.succeeded", payload={})
    values = {
        "flavour": done_flavour.pk,
        "done": str(done.pk),
        "running": str(running.pk),
        "failed": str(failed.pk),
        "artifact": str(artifact.pk),
        "artifact_key": artifact.key,
        "webhook": str(hook.pk),
        "extension": PRIVATE_EXTENSION,
        "approved": str(approved.pk),
        "proposed": str(proposed.pk),
        "team": "blue",
        "member": "vera",  # blue's viewer
        "private_flavour": private_flavour.pk,
        "token": flavour_token(private_flavour),
        "private_key": private_key,
    }
    return World(users, values)


# --- expectations ---------------------------------------------------------------------------------

Expect = Callable[[str], set[int]]  # role -> acceptable statuses
ANON_API = {401, 403}
SIGNIN = {302}  # to /signin/?next=..., checked below


def api_read(role: str) -> set[int]:
    """Any role in the team reads; everyone else is told the object does not exist."""
    if role == "anonymous":
        return ANON_API
    return {200} if role in MEMBERS else {404}


def api_list(role: str) -> set[int]:
    return ANON_API if role == "anonymous" else {200}


def api_write(least: str, ok: int, *, outsider: int = 404) -> Expect:
    def expect(role: str) -> set[int]:
        if role == "anonymous":
            return ANON_API
        if role in MEMBERS:
            return {ok} if RANK[role] >= RANK[least] else {403}
        return {outsider}

    return expect


def page_read(role: str) -> set[int]:
    if role == "anonymous":
        return SIGNIN
    return {200} if role in MEMBERS else {404}


def page_any_user(role: str) -> set[int]:
    return SIGNIN if role == "anonymous" else {200}


def page_write(least: str, ok: set[int]) -> Expect:
    def expect(role: str) -> set[int]:
        if role == "anonymous":
            return SIGNIN
        if role in MEMBERS:
            return ok if RANK[role] >= RANK[least] else {403}
        return {404}

    return expect


def page_builder_teams(role: str) -> set[int]:
    """Pages that need a team where you are a builder: red's admin has one, blue's viewer and the
    team-less staff user have none (a page that says so: 403, or 400 from the custom-extension form)."""
    if role == "anonymous":
        return SIGNIN
    return {400, 403} if role in ("viewer", "staff") else {200}


def everyone(status: set[int]) -> Expect:
    return lambda role: status


def signed_in(status: set[int]) -> Expect:
    return lambda role: SIGNIN if role == "anonymous" else status


@dataclass(frozen=True)
class Call:
    expect: Expect
    body: dict[str, Any] | None = None


@dataclass(frozen=True)
class Route:
    params: dict[str, str]  # URL parameter -> key of World.values
    calls: dict[str, Call]  # method -> who gets what


RECIPE = """\
name: brandnew
description: A new private tool
category: tool
arches: {x86-64: x86_64}
sources:
  - url: https://github.com/example/brandnew/releases/download/{version}/brandnew-{version}-{arch}.tar.gz
    install:
      - {from: brandnew, to: usr/bin/brandnew, mode: "0755"}
versions:
  v1.0.0: {}
"""
FLAVOUR_BODY = {
    "team": "blue",
    "name": "new",
    "arch": "x86-64",
    "extensions": [{"name": PRIVATE_EXTENSION, "version": "v1.0.0"}],
}

# Every URL pattern of the portal: which World value fills each parameter, and who may do what.
ROUTES: dict[str, Route] = {
    "healthz": Route({}, {"GET": Call(everyone({200}))}),
    # The API's description is public (it names no team's objects; the leak check below holds).
    "api/schema/": Route({}, {"GET": Call(everyone({200}))}),
    "api/docs/": Route({}, {"GET": Call(everyone({200}))}),
    # Wrong credentials are a 400 for everyone (the throttle may answer 429): never a 5xx.
    "api/auth/token/": Route(
        {}, {"POST": Call(everyone({400, 429}), {"username": "alice", "password": "wrong"})}
    ),
    "api/extensions/": Route(
        {},
        {
            "GET": Call(api_list),
            "POST": Call(api_write("builder", 201), {"team": "blue", "recipe": RECIPE}),
        },
    ),
    "api/extensions/<str:name>/": Route({"name": "extension"}, {"GET": Call(api_read)}),
    "api/extensions/<str:name>/versions/": Route(
        {"name": "extension"}, {"POST": Call(api_write("builder", 201), {"version": "v9.9.9"})}
    ),
    "api/versions/<int:version_id>/": Route({"version_id": "proposed"}, {"GET": Call(api_read)}),
    "api/versions/<int:version_id>/approve": Route(
        {"version_id": "proposed"}, {"POST": Call(api_write("curator", 200), {"reason": "fine"})}
    ),
    "api/versions/<int:version_id>/reject": Route(
        {"version_id": "proposed"}, {"POST": Call(api_write("curator", 200), {"reason": "broken"})}
    ),
    "api/versions/<int:version_id>/deprecate": Route(
        {"version_id": "approved"}, {"POST": Call(api_write("curator", 200), {"reason": "old"})}
    ),
    "api/versions/<int:version_id>/undeprecate": Route(
        {"version_id": "approved"}, {"POST": Call(api_write("curator", 200), {"reason": "back"})}
    ),
    # An outsider naming team blue in a body gets a field error (400): blue is not among their teams.
    "api/flavours/": Route(
        {},
        {
            "GET": Call(api_list),
            "POST": Call(api_write("builder", 201, outsider=400), FLAVOUR_BODY),
        },
    ),
    "api/flavours/<str:pk>/": Route({"pk": "flavour"}, {"GET": Call(api_read)}),
    "api/flavours/<str:pk>/compare/<str:base>": Route(
        {"pk": "flavour", "base": "flavour"}, {"GET": Call(api_read)}
    ),
    "api/flavours/<str:pk>/butane": Route({"pk": "flavour"}, {"GET": Call(api_read)}),
    "api/flavours/<str:pk>/ignition": Route({"pk": "flavour"}, {"GET": Call(api_read)}),
    "api/flavours/<str:pk>/builds/": Route(
        {"pk": "flavour"},
        {
            "GET": Call(api_read),
            "POST": Call(api_write("builder", 202)),
        },
    ),
    "api/flavours/<str:pk>/rotate-token": Route(
        {"pk": "private_flavour"}, {"POST": Call(api_write("builder", 200))}
    ),
    "api/teams/<slug:slug>/": Route(
        {"slug": "team"},
        {
            "GET": Call(api_read),
            "PATCH": Call(api_write("admin", 200), {"two_person_approval": True}),
        },
    ),
    # Every member reads the member list; only admins change it ("sam" is staff in no team).
    "api/teams/<slug:slug>/members/": Route(
        {"slug": "team"},
        {
            "GET": Call(api_read),
            "POST": Call(api_write("admin", 201), {"username": "sam", "role": "viewer"}),
        },
    ),
    "api/teams/<slug:slug>/members/<str:username>/": Route(
        {"slug": "team", "username": "member"},
        {
            "GET": Call(api_read),
            "PATCH": Call(api_write("admin", 200), {"role": "builder"}),
            "DELETE": Call(api_write("admin", 204)),
        },
    ),
    "api/builds/": Route({}, {"GET": Call(api_list)}),
    "api/builds/<uuid:pk>/": Route({"pk": "done"}, {"GET": Call(api_read)}),
    "api/builds/<uuid:pk>/log": Route({"pk": "failed"}, {"GET": Call(api_read)}),
    "api/builds/<uuid:pk>/cancel": Route({"pk": "running"}, {"POST": Call(api_write("builder", 202))}),
    "api/builds/<uuid:pk>/retry": Route({"pk": "failed"}, {"POST": Call(api_write("builder", 202))}),
    "api/builds/<uuid:pk>/artifacts/<int:artifact_id>/download": Route(
        {"pk": "done", "artifact_id": "artifact"}, {"GET": Call(api_read)}
    ),
    "api/webhooks/": Route(
        {},
        {
            "GET": Call(api_list),
            "POST": Call(
                api_write("admin", 201, outsider=400), {"team": "blue", "url": "https://example.org/h"}
            ),
        },
    ),
    "api/webhooks/<int:pk>/": Route(
        {"pk": "webhook"},
        {
            "GET": Call(api_read),
            "DELETE": Call(api_write("admin", 204)),
        },
    ),
    "api/webhooks/<int:pk>/deliveries/": Route({"pk": "webhook"}, {"GET": Call(api_read)}),
    # Pages.
    "": Route({}, {"GET": Call(page_any_user)}),
    "signin/": Route(
        {},
        {
            "GET": Call(lambda role: {200} if role == "anonymous" else {302}),
            "POST": Call(everyone({200, 302, 429}), {"username": "alice", "password": "wrong"}),
        },
    ),
    "signout/": Route({}, {"POST": Call(everyone({302}))}),
    "account/tokens/": Route(
        {},
        {
            "GET": Call(page_any_user),
            "POST": Call(signed_in({200}), {"action": "create"}),
        },
    ),
    "catalog/": Route({}, {"GET": Call(page_any_user)}),
    "catalog/<str:name>/": Route({"name": "extension"}, {"GET": Call(page_read)}),
    "catalog/<str:name>/propose/": Route(
        {"name": "extension"},
        {
            # The form shows to any member; sending it needs builder.
            "GET": Call(page_read),
            "POST": Call(page_write("builder", {302}), {"version": "v9.9.8"}),
        },
    ),
    "versions/<int:pk>/review/": Route(
        {"pk": "proposed"},
        {
            "GET": Call(page_read),
            "POST": Call(page_write("curator", {302}), {"decision": "approve", "reason": "fine"}),
        },
    ),
    "custom-extensions/new/": Route({}, {"GET": Call(page_builder_teams)}),
    # Published objects are public by design (nodes fetch them with plain GETs).
    "artifacts/<path:key>": Route({"key": "artifact_key"}, {"GET": Call(everyone({200}))}),
    # A private flavour's files, for nodes holding its token (the token is the credential).
    "artifacts/private/<str:token>/<path:key>": Route(
        {"token": "token", "key": "private_key"}, {"GET": Call(everyone({200}))}
    ),
    "compose/": Route({}, {"GET": Call(page_builder_teams)}),
    "compose/extensions/": Route({}, {"GET": Call(signed_in({200, 302, 403}))}),
    "compose/options/": Route({}, {"GET": Call(signed_in({200, 302, 403}))}),
    "compose/review/": Route({}, {"GET": Call(signed_in({200, 302, 403}))}),
    "compose/build/": Route({}, {"POST": Call(signed_in({302, 403}))}),
    "compose/check-fragment/": Route({}, {"POST": Call(signed_in({200, 400, 403}), {"fragment": "x: ["})}),
    "flavours/": Route({}, {"GET": Call(page_any_user)}),
    "flavours/<str:flavour_id>/": Route({"flavour_id": "flavour"}, {"GET": Call(page_read)}),
    "flavours/<str:flavour_id>/compare/": Route({"flavour_id": "flavour"}, {"GET": Call(page_read)}),
    "flavours/<str:flavour_id>/build/": Route(
        {"flavour_id": "flavour"}, {"POST": Call(page_write("builder", {302}))}
    ),
    "flavours/<str:flavour_id>/rotate-token/": Route(
        {"flavour_id": "private_flavour"}, {"POST": Call(page_write("builder", {302}))}
    ),
    "builds/<uuid:build_id>/": Route({"build_id": "failed"}, {"GET": Call(page_read)}),
    "builds/<uuid:build_id>/cancel/": Route(
        {"build_id": "running"}, {"POST": Call(page_write("builder", {302}))}
    ),
    "builds/<uuid:build_id>/retry/": Route(
        {"build_id": "failed"}, {"POST": Call(page_write("builder", {302}))}
    ),
    "teams/<slug:slug>/": Route(
        {"slug": "team"},
        {
            "GET": Call(page_read),
            "POST": Call(page_write("admin", {200}), {"url": "https://example.org/h2"}),
        },
    ),
}

# Django's admin has its own gate (is_staff); it is covered by its index and one change list.
ADMIN_PREFIX = "admin/"
ADMIN_CHECKS = ("/admin/", "/admin/catalog/extension/")


def url_patterns() -> Iterator[tuple[str, URLPattern]]:
    """Every routed pattern, as the full route text, from the live URL conf."""

    def walk(resolver: URLResolver, prefix: str) -> Iterator[tuple[str, URLPattern]]:
        for entry in resolver.url_patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                if route == ADMIN_PREFIX:
                    continue
                yield from walk(entry, route)
            else:
                yield route, entry

    yield from walk(get_resolver(), "")


def test_every_url_pattern_is_in_the_matrix() -> None:
    routed = {route for route, _ in url_patterns()}
    unknown = sorted(routed - set(ROUTES))
    assert not unknown, (
        "These URL patterns are not in the access matrix; add a row to ROUTES in "
        f"{__file__} saying which object fills them and who may do what: {unknown}"
    )
    stale = sorted(set(ROUTES) - routed)
    assert not stale, f"ROUTES has rows for patterns that are no longer routed: {stale}"


def fill(route: str, values: dict[str, str]) -> str:
    pattern = dict(url_patterns())[route].pattern
    spec = ROUTES[route]
    path = route
    for name, converter in pattern.converters.items():
        assert name in spec.params, f"{route}: no filler for parameter {name!r}"
        value = values[spec.params[name]]
        converter.to_python(value)  # the filler really matches the converter
        path = path.replace(f"<{_converter_name(route, name)}:{name}>", value)
    assert "<" not in path, f"{route}: a parameter was left unfilled in {path}"
    return "/" + path


def _converter_name(route: str, name: str) -> str:
    start = route.index(f":{name}>")
    return route[route.rindex("<", 0, start) + 1 : start]


def client_for(route: str, user: User | None) -> Client:
    client: Client = (
        APIClient(raise_request_exception=False)
        if route.startswith("api/")
        else Client(raise_request_exception=False)
    )
    if user is not None:
        client.force_login(user)
    return client


_CLIENTS: dict[tuple[bool, int | None], Client] = {}


def request(route: str, method: str, user: User | None, path: str, body: dict[str, Any] | None) -> Any:
    key = (route.startswith("api/"), user.pk if user is not None else None)
    client = _CLIENTS.get(key)
    if client is None:
        client = _CLIENTS[key] = client_for(route, user)
    call = getattr(client, method.lower())
    with transaction.atomic():
        if route.startswith("api/"):
            response = call(path, body, format="json") if body is not None else call(path)
        else:
            response = call(path, body or {})
        if hasattr(response, "streaming_content"):
            content = b"".join(response.streaming_content)
        else:
            content = response.content
        transaction.set_rollback(True)
    return response, content


CELLS = [(route, method) for route, spec in ROUTES.items() for method in spec.calls]


@pytest.mark.parametrize(("route", "method"), CELLS, ids=[f"{m} /{r}" for r, m in CELLS])
def test_access(world: World, route: str, method: str) -> None:
    if route not in {r for r, _ in url_patterns()}:
        pytest.fail(f"/{route} is in ROUTES but no longer routed")
    path = fill(route, world.values)
    call = ROUTES[route].calls[method]
    wrong: list[str] = []
    for role in ROLES:
        response, content = request(route, method, world.users[role], path, call.body)
        expected = call.expect(role)
        status = response.status_code
        where = f"{method} {path} as {role}: {status}"
        if status >= 500:
            wrong.append(f"{where} (server error) {content[:300]!r}")
            continue
        if status not in expected:
            wrong.append(f"{where}, expected one of {sorted(expected)}; {content[:200]!r}")
        if status == 302 and expected == SIGNIN and role == "anonymous":
            if not response["Location"].startswith("/signin/"):
                wrong.append(f"{where} redirects to {response['Location']}, not to sign-in")
        if role in ("anonymous", "outsider", "staff") and route != "artifacts/<path:key>":
            text = content.decode(errors="replace")
            leaked = [m for m in PRIVATE_MARKERS if m in text]
            if leaked:
                wrong.append(f"{where} shows team blue's private {leaked}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", ROLES)
def test_other_methods_never_fail_or_leak(world: World, role: str) -> None:
    """Methods a route does not list: no 5xx, and no private content for someone outside blue."""
    wrong: list[str] = []
    for route, spec in ROUTES.items():
        path = fill(route, world.values)
        for method in ("GET", "POST", "PUT", "DELETE"):
            if method in spec.calls:
                continue
            response, content = request(
                route, method, world.users[role], path, {} if method != "GET" else None
            )
            if response.status_code >= 500:
                wrong.append(f"{method} {path} as {role}: {response.status_code}")
            if role in ("anonymous", "outsider", "staff") and route != "artifacts/<path:key>":
                leaked = [m for m in PRIVATE_MARKERS if m in content.decode(errors="replace")]
                if leaked:
                    wrong.append(f"{method} {path} as {role} shows {leaked}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("role", ROLES)
def test_admin_is_for_staff_only(world: World, role: str) -> None:
    for path in ADMIN_CHECKS:
        response, _ = request("admin/", "GET", world.users[role], path, None)
        if role == "staff":
            # Staff without model permissions get the index (200) and a 403 on a change list.
            assert response.status_code in (200, 403), (path, response.status_code)
        else:
            assert response.status_code == 302, (path, role, response.status_code)
            assert response["Location"].startswith("/admin/login/"), response["Location"]
