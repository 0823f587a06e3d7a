"""Webhooks: which URLs may receive build events, how an event is signed and delivered.

Registering one is a request-side service (``builds.services.webhook_create``); delivery runs in
the ``webhook_deliver`` task, queued by ``webhooks_queue`` when a build ends.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from builds.models import Artifact, Build, Webhook, WebhookDelivery
from builds.pipeline.egress import EgressRule, address_problem, pinned_session, send_pinned
from builds.pipeline.errors import PipelineError
from portal import queueing

WEBHOOK_HINT = (
    "a private or local address: webhooks go to public hosts (operators may set "
    "WEBHOOK_ALLOW_PRIVATE_NETWORKS)"
)


def webhook_egress() -> EgressRule:
    """The shared egress rule (builds.pipeline.egress), as webhook deliveries use it."""
    return EgressRule(
        area="webhook", allow_private=settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS, hint=WEBHOOK_HINT
    )


def webhook_url_problem(url: str) -> str | None:
    """Why the portal will not register ``url`` as a webhook (None when it may).

    Registration checks the URL as written, without a DNS lookup (names change anyway): delivery
    checks again with the shared egress rule, resolving the host and connecting to the checked
    address. WEBHOOK_ALLOW_PRIVATE_NETWORKS lifts the address checks.
    """
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        host = None
    if parts.scheme not in ("http", "https") or not host:
        return "Webhook URLs are http(s) URLs with a host."
    if settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        return None
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"{host} is a local name; webhooks go to public hosts."
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    problem = address_problem(literal)
    return f"{host} is {problem}, {WEBHOOK_HINT}." if problem else None


def webhook_signature(secret: str, body: bytes) -> str:
    """The ``X-Bakehouse-Signature`` header value: ``sha256=`` + HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def webhook_deliver(*, delivery_id: int) -> bool:
    """POST one event; True when delivered or abandoned, False when it should be retried."""
    import requests

    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.delivered_at is not None or not delivery.webhook.active:
        return True
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "bakehouse-webhook/1",
        "X-Bakehouse-Event": delivery.event,
        "X-Bakehouse-Delivery": str(delivery.pk),
        "X-Bakehouse-Signature": webhook_signature(delivery.webhook.secret, body),
    }
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=F("attempts") + 1)
    try:
        # Resolved once, refused unless public, and then POSTed to exactly that address.
        destination = webhook_egress().check(delivery.webhook.url)
    except PipelineError as exc:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(last_error=f"{exc.code}: {exc.message}"[:2000])
        return not exc.retryable  # a refused address stays refused; DNS trouble may pass
    try:
        with pinned_session("bakehouse-webhook/1") as session:
            response = send_pinned(session, "POST", destination, data=body, headers=headers, timeout=(5, 10))
    except requests.RequestException as exc:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(last_error=str(exc)[:2000])
        return False
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status_code=response.status_code)
    if 200 <= response.status_code < 300:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(delivered_at=timezone.now(), last_error="")
        return True
    WebhookDelivery.objects.filter(pk=delivery.pk).update(last_error=f"HTTP {response.status_code}")
    # A 4xx other than 408/429 will not get better by asking again.
    return 400 <= response.status_code < 500 and response.status_code not in (408, 429)


def webhooks_queue(build: Build) -> None:
    """Record one delivery per active webhook of the team; sent by tasks after commit."""
    hooks = Webhook.objects.filter(team_id=build.flavour.team_id, active=True)
    if not hooks:
        return
    payload = build_event_payload(build)
    for hook in hooks:
        delivery = WebhookDelivery.objects.create(
            webhook=hook, build=build, event=payload["event"], payload=payload
        )
        queueing.queue_task("builds.tasks.webhook_deliver", delivery.pk)


def build_event_payload(build: Build) -> dict[str, Any]:
    flavour = build.flavour
    return {
        "event": f"build.{build.state}",
        "build": {
            "id": str(build.pk),
            "state": build.state,
            "error_code": build.error_code,
            "error_message": build.error_message,
            "verification": build.verification,
            "created_at": build.created_at.isoformat() if build.created_at else None,
            "finished_at": build.finished_at.isoformat() if build.finished_at else None,
        },
        "flavour": {"id": flavour.pk, "name": flavour.name, "team": flavour.team.slug, "arch": flavour.arch},
        "artifacts": [
            {"kind": a.kind, "name": a.name, "key": a.key, "sha256": a.sha256, "size": a.size}
            for a in Artifact.objects.filter(build=build).order_by("kind", "name")
        ],
    }
