"""Writes of the builds app, and the only code that speaks both the models and the pipeline.

Views call the request-side services (``flavour_create``, ``build_request``, ``build_cancel``,
``build_retry``, ``webhook_create``); Celery tasks load ids and call one run-side service each
(``build_start``, ``build_image_bake``, ``build_finalize``, ``builds_reap_stale``,
``webhook_deliver``). Tasks are queued with ``transaction.on_commit`` so a worker never sees an
id whose row is not committed yet.

Errors: a ``PipelineError`` that is not retryable is the user's problem (a wrong pin, a hostile
archive): the build fails with its code and sentence, once. Anything retryable, and any other
infrastructure trouble, propagates so the task retries it with backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from builds.flavours import FlavourChoices, FlavourOptions, flavour_choices_resolve
from builds.models import (
    ACTIVE_BUILD_STATES,
    Artifact,
    Build,
    BuildImage,
    BuildLogLine,
    BuildState,
    BuildStep,
    Flavour,
    FlavourExtension,
    Webhook,
    WebhookDelivery,
)
from catalog.models import Delivery, ExtensionVersion, Team

logger = logging.getLogger(__name__)

# Order in which states advance; parallel bake tasks only ever move a build forward.
STATE_ORDER = [
    BuildState.QUEUED,
    BuildState.FETCHING,
    BuildState.BAKING,
    BuildState.VERIFYING,
    BuildState.SIGNING,
    BuildState.PUBLISHING,
]
# Share of the progress bar: fetch+bake up to 70%, then verify, sign and publish.
BAKE_SHARE = 70
PROGRESS_AT = {BuildState.VERIFYING: 72, BuildState.SIGNING: 82, BuildState.PUBLISHING: 88}


class BuildRefused(Exception):
    """A request the builds app refuses: a stable code, a sentence and the HTTP status."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class BuildCancelled(Exception):
    """Raised inside a running step when the build's cancel flag is seen."""


def heartbeat_interval() -> float:
    return float(getattr(settings, "BUILD_HEARTBEAT_INTERVAL", 10))


def heartbeat_timeout() -> float:
    return float(getattr(settings, "BUILD_HEARTBEAT_TIMEOUT", 180))


def queue_timeout() -> float:
    return float(getattr(settings, "BUILD_QUEUE_TIMEOUT", 24 * 3600))


# --- flavours -----------------------------------------------------------------------------------


@transaction.atomic
def flavour_create(
    *,
    user: Any,
    team: Team,
    name: Any,
    description: Any = "",
    arch: Any,
    extensions: Any,
    options: Any = None,
    revision_of: Flavour | None = None,
) -> tuple[Flavour, bool]:
    """Validate the choices and store the flavour; returns (flavour, created).

    The same choices give the same ID, so submitting them again returns the existing flavour.
    With ``revision_of`` the new flavour is the next revision of that one (same lineage).
    Raises ``FlavourInvalid`` with the problems per field.
    """
    if revision_of is not None and revision_of.team_id != team.pk:
        raise BuildRefused(
            "flavour.wrong-team", "A revision must belong to the team of the flavour it edits."
        )
    previous = list(revision_of.extension_versions.all()) if revision_of is not None else []
    choices = flavour_choices_resolve(
        team=team,
        name=name,
        description=description,
        arch=arch,
        extensions=extensions,
        options=options,
        previous=previous,
    )
    return _flavour_store(choices, user=user, revision_of=revision_of)


def _flavour_store(
    choices: FlavourChoices, *, user: Any, revision_of: Flavour | None
) -> tuple[Flavour, bool]:
    canonical = choices.canonical_json()
    flavour_id = choices.flavour_id()
    existing = Flavour.objects.filter(pk=flavour_id).first()
    if existing is not None:
        return existing, False
    fields: dict[str, Any] = {
        "id": flavour_id,
        "team": choices.team,
        "name": choices.name,
        "description": choices.description,
        "arch": choices.arch,
        "options": choices.options.as_document(),
        "canonical": canonical,
        "created_by": user if getattr(user, "is_authenticated", False) else None,
    }
    if revision_of is not None:
        latest = Flavour.objects.filter(lineage=revision_of.lineage).order_by("-revision").first()
        fields.update(
            lineage=revision_of.lineage,
            revision=(latest.revision if latest else revision_of.revision) + 1,
            revision_of=revision_of,
        )
    try:
        with transaction.atomic():
            flavour = Flavour.objects.create(**fields)
            FlavourExtension.objects.bulk_create(
                FlavourExtension(flavour=flavour, extension_version=e.version) for e in choices.extensions
            )
    except IntegrityError:
        # Someone stored the very same choices a moment ago: theirs is ours.
        return Flavour.objects.get(pk=flavour_id), False
    return flavour, True


def flavour_options(flavour: Flavour) -> FlavourOptions:
    return FlavourOptions.from_document(flavour.options)


# --- build requests -----------------------------------------------------------------------------


def build_request(*, flavour: Flavour, user: Any, retry_of: Build | None = None) -> tuple[Build, bool]:
    """Start a build of ``flavour``, or return the build that already covers it.

    Returns (build, created). An active build of the flavour is shared (the database allows at
    most one, so concurrent requests cannot both create one); a succeeded build is returned as is,
    since the same flavour always means the same artifacts.
    """
    if retry_of is None:
        done = (
            Build.objects.filter(flavour=flavour, state=BuildState.SUCCEEDED).order_by("-created_at").first()
        )
        if done is not None:
            return done, False
    active = Build.objects.filter(flavour=flavour, state__in=ACTIVE_BUILD_STATES).first()
    if active is not None:
        return active, False
    try:
        with transaction.atomic():
            build = Build.objects.create(
                flavour=flavour,
                created_by=user if getattr(user, "is_authenticated", False) else None,
                attempt=retry_of.attempt + 1 if retry_of else 1,
                retry_of=retry_of,
            )
            versions = (
                ExtensionVersion.objects.filter(flavour_extensions__flavour=flavour)
                .select_related("extension")
                .order_by("extension__name")
            )
            BuildImage.objects.bulk_create(
                BuildImage(build=build, extension_version=v)
                for v in versions
                if v.extension.delivery == Delivery.BAKE
            )
            _log(build.pk, f"Build of flavour {flavour.name} ({flavour.pk}) queued.")
            _queue("build_start", str(build.pk))
    except IntegrityError:
        # Lost the race to a concurrent request: the one-active-build constraint chose theirs.
        active = Build.objects.filter(flavour=flavour, state__in=ACTIVE_BUILD_STATES).first()
        if active is None:
            raise
        return active, False
    return build, True


def build_retry(*, build: Build, user: Any) -> tuple[Build, bool]:
    """A new attempt of a failed or cancelled build (its log and steps stay with the old one)."""
    if build.state not in (BuildState.FAILED, BuildState.CANCELLED):
        raise BuildRefused(
            "build.not-retryable",
            f"Only failed or cancelled builds can be retried; this one is {build.state}.",
            status=409,
        )
    return build_request(flavour=build.flavour, user=user, retry_of=build)


def build_cancel(*, build: Build, user: Any) -> Build:
    """Ask a build to stop. A queued build stops at once; a running one at its next checkpoint."""
    with transaction.atomic():
        build = Build.objects.select_for_update().get(pk=build.pk)
        if not build.is_active:
            raise BuildRefused(
                "build.not-cancellable", f"The build has already ended ({build.state}).", status=409
            )
        build.cancel_requested = True
        build.save(update_fields=["cancel_requested"])
        who = getattr(user, "username", "") or "someone"
        _log(build.pk, f"Cancel requested by {who}.")
        if build.state == BuildState.QUEUED:
            _build_end(build, BuildState.CANCELLED, code="build.cancelled", message=f"Cancelled by {who}.")
    build.refresh_from_db()
    return build


# --- webhooks -----------------------------------------------------------------------------------


def webhook_create(*, team: Team, user: Any, url: str, secret: str | None = None) -> Webhook:
    """Register ``url`` to receive build events; the secret signs them (generated when omitted)."""
    return Webhook.objects.create(
        team=team,
        url=url,
        secret=secret or secrets.token_urlsafe(32),
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )


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
        response = requests.post(
            delivery.webhook.url, data=body, headers=headers, timeout=(5, 10), allow_redirects=False
        )
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


def _webhooks_queue(build: Build) -> None:
    """Record one delivery per active webhook of the team; sent by tasks after commit."""
    hooks = Webhook.objects.filter(team_id=build.flavour.team_id, active=True)
    if not hooks:
        return
    payload = build_event_payload(build)
    for hook in hooks:
        delivery = WebhookDelivery.objects.create(
            webhook=hook, build=build, event=payload["event"], payload=payload
        )
        _queue("webhook_deliver", delivery.pk)


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


# --- queueing -----------------------------------------------------------------------------------


def _queue(task_name: str, *args: Any) -> None:
    """Send a task once the current transaction commits (at once outside one)."""
    from builds import tasks

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: task.delay(*args))


# --- log, steps, progress -----------------------------------------------------------------------


def _log(build_id: Any, text: str) -> None:
    """Append a line to the build's log; ``seq`` is dense per build (tails use ``?after=``)."""
    for _ in range(20):
        last = (
            BuildLogLine.objects.filter(build_id=build_id)
            .order_by("-seq")
            .values_list("seq", flat=True)
            .first()
        )
        try:
            with transaction.atomic():
                BuildLogLine.objects.create(build_id=build_id, seq=(last or 0) + 1, text=text[:10000])
            return
        except IntegrityError:
            continue  # a parallel task took that number: take the next
    logger.warning("build %s: log line dropped after repeated seq conflicts: %s", build_id, text)


def build_log(*, build_id: Any, text: str) -> None:
    _log(build_id, text)


def _advance(build_id: Any, state: str, *, step: str | None = None, progress: int | None = None) -> None:
    """Move the build forward to ``state`` (never backwards) and refresh its heartbeat."""
    earlier = STATE_ORDER[: STATE_ORDER.index(BuildState(state))]
    now = timezone.now()
    Build.objects.filter(pk=build_id, state__in=earlier).update(state=state)
    updates: dict[str, Any] = {"heartbeat_at": now}
    if step is not None:
        updates["current_step"] = step[:64]
    if progress is not None:
        updates["progress"] = Greatest(F("progress"), min(progress, 100))
    Build.objects.filter(pk=build_id, state__in=ACTIVE_BUILD_STATES).update(**updates)


@contextmanager
def _step(build_id: Any, name: str) -> Iterator[BuildStep]:
    """A timed step; its outcome is ok, or failed when the block raises."""
    step = BuildStep.objects.create(build_id=build_id, name=name[:100], started_at=timezone.now())
    try:
        yield step
    except BaseException:
        BuildStep.objects.filter(pk=step.pk).update(finished_at=timezone.now(), outcome="failed")
        raise
    BuildStep.objects.filter(pk=step.pk).update(finished_at=timezone.now(), outcome=step.outcome or "ok")


def _check_cancel(build_id: Any) -> None:
    row = Build.objects.filter(pk=build_id).values("cancel_requested", "state").first()
    if row is None or row["cancel_requested"] or row["state"] not in ACTIVE_BUILD_STATES:
        raise BuildCancelled()


class _Heartbeat:
    """Touches ``heartbeat_at`` from a side thread while a task works.

    A step that runs for minutes without reporting (mksquashfs on a big tree) must not look
    like a dead worker; a worker that really died stops the thread with it.
    """

    def __init__(self, build_id: Any) -> None:
        self.build_id = build_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{build_id}", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(heartbeat_interval()):
                try:
                    Build.objects.filter(pk=self.build_id, state__in=ACTIVE_BUILD_STATES).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception:  # the next beat will try again; never kill the build over it
                    logger.exception("heartbeat of build %s failed", self.build_id)
        finally:
            connection.close()

    def __enter__(self) -> _Heartbeat:
        Build.objects.filter(pk=self.build_id).update(heartbeat_at=timezone.now())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


# --- ending builds ------------------------------------------------------------------------------


def _build_end(build: Build, state: str, *, code: str = "", message: str = "") -> bool:
    """Move an active build to a final state; False when it had already ended."""
    now = timezone.now()
    updates: dict[str, Any] = {"state": state, "finished_at": now, "current_step": ""}
    if state == BuildState.SUCCEEDED:
        updates["progress"] = 100
    if code:
        updates.update(error_code=code[:100], error_message=message)
    with transaction.atomic():
        changed = Build.objects.filter(pk=build.pk, state__in=ACTIVE_BUILD_STATES).update(**updates)
        if not changed:
            return False
        BuildStep.objects.filter(build_id=build.pk, finished_at__isnull=True).update(
            finished_at=now, outcome="failed" if state != BuildState.SUCCEEDED else "ok"
        )
        text = {
            BuildState.SUCCEEDED: "Build succeeded.",
            BuildState.CANCELLED: f"Build cancelled. {message}".strip(),
            BuildState.FAILED: f"Build failed: {code}: {message}",
        }[BuildState(state)]
        _log(build.pk, text)
        build.refresh_from_db()
        _webhooks_queue(build)
    return True


def build_fail(*, build_id: Any, code: str, message: str) -> bool:
    """Fail a build that is still active (used by tasks that gave up retrying)."""
    build = Build.objects.select_related("flavour", "flavour__team").filter(pk=build_id).first()
    if build is None:
        return False
    return _build_end(build, BuildState.FAILED, code=code, message=message)


def builds_reap_stale(*, now: Any = None, timeout: float | None = None) -> list[str]:
    """Fail builds whose worker stopped beating, and builds stuck in the queue for too long.

    With ``acks_late`` a dead worker's task is redelivered, but a message can still be lost
    (broker flushed, retries exhausted in a crash): this is the safety net that guarantees every
    build ends. Returns the ids of the builds it failed.
    """
    now = now or timezone.now()
    stale_after = timedelta(seconds=timeout if timeout is not None else heartbeat_timeout())
    running = [s for s in ACTIVE_BUILD_STATES if s != BuildState.QUEUED]
    stale = Build.objects.filter(
        Q(state__in=running) & (Q(heartbeat_at__lt=now - stale_after) | Q(heartbeat_at__isnull=True))
    ).select_related("flavour", "flavour__team")
    forgotten = Build.objects.filter(
        state=BuildState.QUEUED, created_at__lt=now - timedelta(seconds=queue_timeout())
    ).select_related("flavour", "flavour__team")
    reaped: list[str] = []
    for build in stale:
        seconds = int((now - (build.heartbeat_at or build.created_at)).total_seconds())
        if _build_end(
            build,
            BuildState.FAILED,
            code="build.worker-lost",
            message=(
                f"The worker running this build stopped sending heartbeats {seconds} s ago "
                "(it died or lost its connection); retry the build."
            ),
        ):
            reaped.append(str(build.pk))
    for build in forgotten:
        if _build_end(
            build,
            BuildState.FAILED,
            code="build.queue-timeout",
            message="No worker picked this build up in time; check that a worker is running, then retry.",
        ):
            reaped.append(str(build.pk))
    for build_id in reaped:
        logger.warning("reaped build %s", build_id)
    return reaped
