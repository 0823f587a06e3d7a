"""Fuzz the REST API from its own OpenAPI schema: hostile input gets a JSON 4xx, never a 500.

schemathesis reads ``/api/schema/`` and sends, for every operation, both valid-looking and
deliberately malformed requests (wrong types, missing fields, odd strings, bad path ids) through
the portal's WSGI application, in process, inside the test's database transaction. Requests are
authenticated with the token of a team admin, so they reach the code behind the permission
checks. Work that services queue (builds, digest pinning) goes through ``transaction.on_commit``,
which never fires inside the rolled-back test transaction, and a guard fails the test if a task
is sent anyway: no worker, broker or upstream is needed.

Examples are bounded and derandomized so CI sees the same requests on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from celery.app.task import Task
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from builds import services as build_services
from builds.models import Webhook
from catalog.models import ExtensionVersion
from portal.wsgi import application
from tests.builds.catalog_fixtures import Cast, flavour_payload

pytestmark = pytest.mark.django_db

MAX_EXAMPLES = 25  # per operation and generation mode


@dataclass
class World:
    """Objects that exist, so fuzzed requests with their ids get past the 404s."""

    token: str
    flavour_id: str
    build_id: str
    webhook_id: int
    version_id: int


@pytest.fixture
def no_celery_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if a request would queue real Celery work."""

    def refuse(self: Task, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the fuzz test must not queue Celery task {self.name}")

    monkeypatch.setattr(Task, "apply_async", refuse)


@pytest.fixture
def wsgi_in_test_transaction() -> Iterator[None]:
    """Keep Django's request signals from closing the test's connection (as its test client does)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def world(small_catalog: Cast, no_celery_tasks: None, wsgi_in_test_transaction: None) -> World:
    cast = small_catalog
    flavour, _ = build_services.flavour_create(
        user=cast.owner, team=cast.blue, **_flavour_arguments(flavour_payload())
    )
    build, _ = build_services.build_request(flavour=flavour, user=cast.owner)
    hook = Webhook.objects.create(team=cast.blue, url="https://hooks.example.org/bakehouse", secret="s" * 32)
    proposed = ExtensionVersion.objects.get(extension__name="hello", version="v2.0.0")
    token = Token.objects.create(user=cast.owner)
    return World(
        token=token.key,
        flavour_id=flavour.pk,
        build_id=str(build.pk),
        webhook_id=hook.pk,
        version_id=proposed.pk,
    )


def _flavour_arguments(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": payload["name"],
        "description": "",
        "arch": payload["arch"],
        "extensions": payload["extensions"],
        "options": None,
    }


def _auth(world: World) -> dict[str, str]:
    return {"Authorization": f"Token {world.token}"}


def _known_path_parameters(path: str, world: World) -> dict[str, Any]:
    """Real ids for the operation's path, so fuzzing also reaches the code behind the lookups."""
    known: dict[str, Any] = {}
    if path.startswith("/api/flavours/{id}"):
        known["id"] = world.flavour_id
    elif path.startswith("/api/builds/{id}"):
        known["id"] = world.build_id
    elif path.startswith("/api/webhooks/{id}"):
        known["id"] = world.webhook_id
    if "{version_id}" in path:
        known["version_id"] = world.version_id
    if "{name}" in path:
        known["name"] = "hello"
    return known


def error_is_json(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """A refusal a user can read: JSON with a stable code and a message."""
    if 400 <= response.status_code < 500:
        try:
            body = response.json()
        except ValueError:
            raise AssertionError(
                f"{response.status_code} body is not JSON: {response.content[:200]!r}"
            ) from None
        assert isinstance(body, dict), f"{response.status_code} body is not a JSON object: {body!r}"
        assert {"code", "message"} <= set(body), f"{response.status_code} body lacks code/message: {body!r}"
    return None


CHECKS = [not_a_server_error, error_is_json, response_schema_conformance]


def _fuzz(strategy: Any, call: Callable[[schemathesis.Case], None]) -> None:
    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        call(case)

    run()


@pytest.fixture
def api_schema(world: World) -> Any:
    return schemathesis.openapi.from_wsgi("/api/schema/", application, headers=_auth(world))


def test_every_operation_answers_hostile_input_without_a_server_error(api_schema: Any, world: World) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20, "the schema lost its operations"
    failures: list[str] = []
    for operation in operations:
        if operation.path == "/api/auth/token/":
            continue  # anonymous and throttled: fuzzed separately below
        known = _known_path_parameters(operation.path, world)
        variants: list[tuple[str, Any]] = [
            ("positive", operation.as_strategy(generation_mode=GenerationMode.POSITIVE)),
            ("negative", operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)),
        ]
        if known:
            variants.append(
                (
                    "known ids",
                    operation.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=known),
                )
            )

        def call(case: schemathesis.Case) -> None:
            response = case.call(headers=_auth(world))
            case.validate_response(response, checks=CHECKS)

        for label, strategy in variants:
            try:
                _fuzz(strategy, call)
            except Unsatisfiable:
                pass  # e.g. no negative form of a free-text path parameter exists
            except (Exception, BaseExceptionGroup) as exc:  # collect every failure, report all
                failures.append(f"{operation.method.upper()} {operation.path} ({label}):\n{exc}")
    assert not failures, "\n\n".join(failures)


def test_token_endpoint_answers_hostile_input_without_a_server_error(api_schema: Any) -> None:
    operation = api_schema["/api/auth/token/"]["POST"]

    def call(case: schemathesis.Case) -> None:
        response = case.call()
        # 429 once the throttle kicks in is a fine answer too; it is JSON like the rest.
        case.validate_response(response, checks=[not_a_server_error, error_is_json])

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        _fuzz(operation.as_strategy(generation_mode=mode), call)
