"""One active build per flavour (a database constraint), one stored image per cache key, and
signed webhook deliveries that retry on server trouble."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction

from builds import services, webhooks
from builds import steps as build_steps
from builds.models import Build, BuildState, ImageArtifact, Webhook, WebhookDelivery
from catalog.models import ExtensionVersion
from tests.builds.catalog_fixtures import Cast, hello_flavour, make_cast, make_extension


@pytest.mark.django_db
def test_the_database_refuses_a_second_active_build_of_a_flavour(cast: Cast) -> None:
    flavour = hello_flavour(cast)
    Build.objects.create(flavour=flavour, state=BuildState.BAKING)
    with pytest.raises(IntegrityError), transaction.atomic():
        Build.objects.create(flavour=flavour, state=BuildState.QUEUED)
    # Finished builds do not count: history may hold many.
    Build.objects.create(flavour=flavour, state=BuildState.FAILED)
    Build.objects.create(flavour=flavour, state=BuildState.CANCELLED)
    assert Build.objects.filter(flavour=flavour).count() == 3


@pytest.mark.django_db
def test_requesting_again_returns_the_active_build(cast: Cast) -> None:
    flavour = hello_flavour(cast)
    first, created = services.build_request(flavour=flavour, user=cast.teammate)
    again, created_again = services.build_request(flavour=flavour, user=cast.owner)
    assert created and not created_again
    assert again.pk == first.pk


@pytest.mark.django_db
def test_failed_builds_are_not_reused_but_retried(cast: Cast) -> None:
    flavour = hello_flavour(cast)
    first, _ = services.build_request(flavour=flavour, user=cast.teammate)
    Build.objects.filter(pk=first.pk).update(state=BuildState.FAILED)
    first.refresh_from_db()
    retried, created = services.build_retry(build=first, user=cast.teammate)
    assert created and retried.pk != first.pk
    assert retried.retry_of_id == first.pk and retried.attempt == 2
    with pytest.raises(services.BuildRefused) as refused:
        services.build_retry(build=retried, user=cast.teammate)
    assert refused.value.code == "build.not-retryable"


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_share_one_build() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (SQLite serialises the whole database)")
    cast = make_cast()
    flavour = hello_flavour(cast)
    barrier = threading.Barrier(8)
    results: list[tuple[str, bool]] = []

    def request() -> None:
        try:
            barrier.wait()
            build, created = services.build_request(flavour=flavour, user=cast.teammate)
            results.append((str(build.pk), created))
        finally:
            connection.close()

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len({build_id for build_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert Build.objects.filter(flavour=flavour).count() == 1


@pytest.mark.django_db
def test_an_image_cache_key_is_stored_once(cast: Cast) -> None:
    make_extension("hello")
    version = ExtensionVersion.objects.get(extension__name="hello")
    fields = {
        "extension_version": version,
        "arch": "x86-64",
        "file_name": "hello-v1.0.0-x86-64.raw",
        "sha256": "a" * 64,
        "size": 1,
        "key": "images/k/hello-v1.0.0-x86-64.raw",
    }
    ImageArtifact.objects.create(cache_key="k" * 64, **fields)
    with pytest.raises(IntegrityError), transaction.atomic():
        ImageArtifact.objects.create(cache_key="k" * 64, **fields)


# --- webhooks -----------------------------------------------------------------------------------


class Receiver:
    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True  # the receiver listens on 127.0.0.1
    server = Receiver(204)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.mark.django_db
def test_a_build_that_ends_sends_a_signed_event_to_its_team_only(
    cast: Cast, receiver: Receiver, django_capture_on_commit_callbacks: Any
) -> None:
    flavour = hello_flavour(cast)
    hook = services.webhook_create(team=cast.blue, user=cast.owner, url=receiver.url)
    services.webhook_create(team=cast.red, user=cast.outsider, url=receiver.url + "/red")
    build, _ = services.build_request(flavour=flavour, user=cast.teammate)
    build_steps.build_fail(build_id=build.pk, code="fetch.sha256-mismatch", message="hello: wrong pin.")

    (delivery,) = WebhookDelivery.objects.all()
    assert delivery.webhook == hook and delivery.event == "build.failed"
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) is True
    ((headers, body),) = receiver.requests
    expected = "sha256=" + hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Bakehouse-Signature"] == expected
    event = json.loads(body)
    assert event["build"]["id"] == str(build.pk)
    assert event["build"]["error_code"] == "fetch.sha256-mismatch"
    assert event["flavour"]["team"] == "blue"
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None and delivery.status_code == 204 and delivery.attempts == 1


@pytest.mark.django_db
@pytest.mark.parametrize(("status", "retry"), [(500, True), (503, True), (429, True), (410, False)])
def test_server_trouble_is_retried_and_a_refusal_is_not(
    cast: Cast, receiver: Receiver, status: int, retry: bool
) -> None:
    receiver.status = status
    flavour = hello_flavour(cast)
    services.webhook_create(team=cast.blue, user=cast.owner, url=receiver.url)
    build, _ = services.build_request(flavour=flavour, user=cast.teammate)
    build_steps.build_fail(build_id=build.pk, code="x.y", message="z")
    delivery = WebhookDelivery.objects.get()
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) is (not retry)
    delivery.refresh_from_db()
    assert delivery.delivered_at is None
    assert delivery.last_error == f"HTTP {status}"


@pytest.mark.django_db
def test_an_unreachable_webhook_is_retried(cast: Cast, settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    flavour = hello_flavour(cast)
    services.webhook_create(team=cast.blue, user=cast.owner, url="http://127.0.0.1:9/nobody-listens")
    build, _ = services.build_request(flavour=flavour, user=cast.teammate)
    build_steps.build_fail(build_id=build.pk, code="x.y", message="z")
    delivery = WebhookDelivery.objects.get()
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) is False
    delivery.refresh_from_db()
    assert delivery.last_error and delivery.attempts == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/",
        "http://[::1]/x",
    ],
)
def test_webhooks_to_internal_addresses_are_refused(cast: Cast, settings: Any, url: str) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    response = _api(cast.owner).post("/api/webhooks/", {"url": url}, format="json")
    assert response.status_code == 400
    assert "private or local" in response.json()["fields"]["url"][0]
    # One stored before the rule (or by an operator) is never contacted either.
    flavour = hello_flavour(cast)
    Webhook.objects.create(team=cast.blue, url=url, secret="s" * 32)
    build, _ = services.build_request(flavour=flavour, user=cast.teammate)
    build_steps.build_fail(build_id=build.pk, code="x.y", message="z")
    delivery = WebhookDelivery.objects.get()
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) is True
    delivery.refresh_from_db()
    assert delivery.delivered_at is None and "private or local" in delivery.last_error


def _api(user: Any) -> Any:
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.reliability
@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 form of 169.254.169.254
        "http://[64:ff9b::7f00:1]:8000/hook",  # NAT64 form of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/",  # 6to4 form of 169.254.169.254
        "http://[2002:0a00:0005::]/",  # 6to4 form of 10.0.0.5
        "http://[::ffff:10.0.0.5]/",
        "http://[64:ff9b:1::a00:5]/",  # local-use NAT64
    ],
)
def test_webhooks_to_nat64_and_6to4_forms_of_internal_addresses_are_refused(
    cast: Cast, settings: Any, url: str
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    response = _api(cast.owner).post("/api/webhooks/", {"url": url}, format="json")
    assert response.status_code == 400, response.content
    assert "private or local" in response.json()["fields"]["url"][0]


@pytest.mark.reliability
@pytest.mark.django_db
def test_a_stored_webhook_whose_name_resolves_to_loopback_is_never_contacted(
    cast: Cast, settings: Any
) -> None:
    from tests.pipeline.test_egress import Listener

    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    receiver = Listener("127.0.0.1")
    try:
        # Registration refuses the name; a row stored earlier is checked again, after resolving.
        url = f"http://localhost:{receiver.port}/hook"
        assert _api(cast.owner).post("/api/webhooks/", {"url": url}, format="json").status_code == 400
        Webhook.objects.create(team=cast.blue, url=url, secret="s" * 32)
        build, _ = services.build_request(flavour=hello_flavour(cast), user=cast.teammate)
        build_steps.build_fail(build_id=build.pk, code="x.y", message="z")
        delivery = WebhookDelivery.objects.get()
        assert webhooks.webhook_deliver(delivery_id=delivery.pk) is True  # abandoned, not retried
        delivery.refresh_from_db()
        assert delivery.delivered_at is None
        assert delivery.last_error.startswith("webhook.refused-address: ")
        assert "the host localhost is " in delivery.last_error
        assert receiver.connections == 0
    finally:
        receiver.close()
