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

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from builds.flavours import (
    FlavourChoices,
    FlavourOptions,
    PublishedImage,
    butane_config,
    flavour_choices_resolve,
)
from builds.models import (
    ACTIVE_BUILD_STATES,
    Artifact,
    ArtifactKind,
    Build,
    BuildImage,
    BuildLogLine,
    BuildState,
    BuildStep,
    Flavour,
    FlavourExtension,
    ImageArtifact,
    Verification,
    Webhook,
    WebhookDelivery,
)
from builds.pipeline.egress import EgressRule, address_problem, pinned_session, send_pinned
from builds.pipeline.errors import PipelineError
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


def requeue_after() -> float:
    return float(getattr(settings, "BUILD_REQUEUE_AFTER", 600))


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


def build_request(
    *, flavour: Flavour, user: Any, retry_of: Build | None = None, republish: bool = False
) -> tuple[Build, bool]:
    """Start a build of ``flavour``, or return the build that already covers it.

    Returns (build, created). An active build of the flavour is shared (the database allows at
    most one, so concurrent requests cannot both create one); a succeeded build is returned as is,
    since the same flavour always means the same artifacts, unless ``republish`` (a private
    flavour's token was rotated, so its files must be published again with the new one).
    """
    if retry_of is None and not republish:
        done = (
            Build.objects.filter(flavour=flavour, state=BuildState.SUCCEEDED).order_by("-created_at").first()
        )
        if done is not None and _published_files_present(done):
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


def _published_files_present(build: Build) -> bool:
    """Whether the store still holds every file ``build`` published.

    A succeeded build stands for its artifacts; once some are gone (a wiped bucket, a lifecycle
    rule) a new request must publish them again rather than hand back download links that 404.
    A store that cannot be reached right now proves nothing, so the build is kept.
    """
    from builds.adapters.store import ArtifactStoreError, get_artifact_store

    store = get_artifact_store()
    try:
        return all(store.stat(key) is not None for key in build.artifacts.values_list("key", flat=True))
    except ArtifactStoreError:
        return True


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
    problem = webhook_url_problem(url)
    if problem is not None:
        raise BuildRefused("webhook.refused-url", problem)
    return Webhook.objects.create(
        team=team,
        url=url,
        secret=secret or secrets.token_urlsafe(32),
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )


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
    """Send a task once the current transaction commits (at once outside one).

    A broker that stays unreachable through the publish retries (settings) does not fail the
    request or the task that queues: the build is committed, and the reaper queues its next
    task again once it has waited ``BUILD_REQUEUE_AFTER`` (``builds_reap_stale``).
    """
    from kombu.exceptions import OperationalError as BrokerUnreachable

    from builds import tasks

    task = getattr(tasks, task_name)

    def send() -> None:
        try:
            task.delay(*args)
        except (BrokerUnreachable, OSError) as exc:
            logger.warning(
                "could not queue %s%r (%s); the reaper queues it again later", task_name, args, exc
            )

    transaction.on_commit(send)


# --- log, steps, progress -----------------------------------------------------------------------


def _log(build_id: Any, text: str) -> None:
    """Append a line to the build's log; ``seq`` is dense per build (tails use ``?after=``).

    The build's row is locked before the next number is taken, so writers queue on that one
    lock in the same order as every other build update. Taking the number first and locking
    the build afterwards deadlocked a cancel against a worker's progress update on PostgreSQL.
    """
    for _ in range(20):
        try:
            with transaction.atomic():
                if not Build.objects.select_for_update().filter(pk=build_id).exists():
                    return  # the build is gone: nothing to log to
                last = (
                    BuildLogLine.objects.filter(build_id=build_id)
                    .order_by("-seq")
                    .values_list("seq", flat=True)
                    .first()
                )
                BuildLogLine.objects.create(build_id=build_id, seq=(last or 0) + 1, text=text[:10000])
            return
        except IntegrityError:
            continue  # only without row locks (SQLite serialises writers anyway): take the next
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


def database_reconnect_if_broken() -> None:
    """Drop this thread's database connection if it failed, so the next query opens a new one.

    Not inside a transaction: there the connection must stay (an eager task in a test's atomic
    block; a real task is never in one when it reaches its error handling).
    """
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


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
                # A connection that failed (the server restarted or dropped it) is replaced here,
                # else every later beat would fail on it and the reaper would take a live build
                # for a dead worker's.
                close_old_connections()
                try:
                    Build.objects.filter(pk=self.build_id, state__in=ACTIVE_BUILD_STATES).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception:  # the next beat will try again; never kill the build over it
                    logger.exception("heartbeat of build %s failed", self.build_id)
        finally:
            connection.close()

    def __enter__(self) -> _Heartbeat:
        Build.objects.filter(pk=self.build_id).update(
            heartbeat_at=timezone.now(), tasks_running=F("tasks_running") + 1
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # A worker that dies skips this, which is exactly what the reaper looks for. The block
        # may be leaving because the database connection dropped: reconnect and try once more,
        # so a retried task does not count itself twice.
        for attempt in (1, 2):
            try:
                Build.objects.filter(pk=self.build_id, tasks_running__gt=0).update(
                    tasks_running=F("tasks_running") - 1
                )
                return
            except (OperationalError, InterfaceError):
                if attempt == 2:
                    raise
                database_reconnect_if_broken()


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
    waited_too_long = now - timedelta(seconds=queue_timeout())
    # A task of the build is (said to be) running, but nobody has touched the heartbeat.
    stale = Build.objects.filter(
        Q(state__in=ACTIVE_BUILD_STATES, tasks_running__gt=0)
        & (Q(heartbeat_at__lt=now - stale_after) | Q(heartbeat_at__isnull=True))
    ).select_related("flavour", "flavour__team")
    # Nothing running and nothing happened for a day: the queued message is lost.
    forgotten = Build.objects.filter(
        Q(state__in=ACTIVE_BUILD_STATES, tasks_running=0)
        & (Q(heartbeat_at__lt=waited_too_long) | Q(heartbeat_at__isnull=True, created_at__lt=waited_too_long))
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
    _requeue_lost(now)
    return reaped


def _requeue_lost(now: Any) -> list[str]:
    """Queue again the next task of builds nobody has worked on for ``BUILD_REQUEUE_AFTER``.

    Nothing runs (``tasks_running`` is 0) and nothing happened for that long: the message was
    lost (a Redis restart without persistence) or never sent (the broker was down when the web
    or a task queued it). Every task finds work already done and skips it, so a build that was
    merely waiting in a long queue costs at most a duplicate message.
    """
    cutoff = now - timedelta(seconds=requeue_after())
    lost = Build.objects.filter(
        Q(state__in=ACTIVE_BUILD_STATES, tasks_running=0, created_at__lt=cutoff)
        & (Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=cutoff))
        & (Q(requeued_at__isnull=True) | Q(requeued_at__lt=cutoff))
    )
    requeued: list[str] = []
    for build in lost:
        if not Build.objects.filter(pk=build.pk, requeued_at=build.requeued_at).update(requeued_at=now):
            continue  # another reaper took it
        pending = list(
            BuildImage.objects.filter(build_id=build.pk, state=BuildImage.State.PENDING).values_list(
                "pk", flat=True
            )
        )
        if build.finalize_queued:
            _queue("build_finalize", str(build.pk))
        elif build.started_at is None:
            _queue("build_start", str(build.pk))
        elif pending:
            for build_image_id in pending:
                _queue("build_bake_image", str(build.pk), build_image_id)
        else:
            _maybe_finalize(build.pk)
        _log(
            build.pk, "Nothing worked on this build for a while (its queued task was lost); queued it again."
        )
        logger.warning("re-queued build %s", build.pk)
        requeued.append(str(build.pk))
    return requeued


# --- running builds (called by tasks) -----------------------------------------------------------


def _load_build(build_id: Any) -> Build | None:
    return Build.objects.select_related("flavour", "flavour__team").filter(pk=build_id).first()


def _flavour_entries(flavour: Flavour) -> dict[str, dict[str, Any]]:
    """The flavour's canonical extension entries by name: the pins the ID promises."""
    return {entry["name"]: entry for entry in json.loads(flavour.canonical)["extensions"]}


@dataclass(frozen=True)
class _ImagePlan:
    """What the pipeline needs to bake one image of a build, read from the flavour and catalog."""

    name: str
    version: str
    arch: str
    recipe: Any
    pins: dict[str, str]
    cache_key: str | None  # None when some source has no pin: such an image is never reused
    file_name: str


def _image_cache_key(
    version: ExtensionVersion, arch: str, pins: dict[str, str], options: FlavourOptions
) -> str | None:
    """The image cache key of ``version`` baked for ``arch`` with these pins and options.

    None when some source has no pinned sha256: such an image is never reused.
    """
    from builds.pipeline.bake import image_cache_key
    from builds.pipeline.image import tool_versions

    recipe = version.recipe()
    resolved = recipe.resolve(version.version, arch, pins)
    if not all(source.sha256 for source in resolved):
        return None
    return image_cache_key(
        recipe_digest=recipe.image_digest(version.version),
        version=version.version,
        arch=arch,
        source_digests={source.id: str(source.sha256) for source in resolved},
        image_format=options.image_format,
        compression=options.compression,
        tools=tool_versions(),
    )


def _image_plan(build: Build, build_image: BuildImage) -> _ImagePlan:
    from builds.pipeline.sysupdate import image_file_name

    version = build_image.extension_version
    extension = version.extension
    entry = _flavour_entries(build.flavour).get(extension.name)
    if entry is None or entry["version"] != version.version:
        raise PipelineError(
            "flavour.inconsistent",
            f"{extension.name} {version.version} is not part of this flavour's document",
        )
    recipe = version.recipe()
    if entry["recipe_digest"] != recipe.image_digest(version.version):
        raise PipelineError(
            "flavour.stale",
            f"the recipe of {extension.name} {version.version} changed since this flavour was composed; "
            "compose a new revision of the flavour to build with the new recipe",
        )
    pins = dict(entry["pins"])
    cache_key = _image_cache_key(version, build.flavour.arch, pins, flavour_options(build.flavour))
    return _ImagePlan(
        name=extension.name,
        version=version.version,
        arch=build.flavour.arch,
        recipe=recipe,
        pins=pins,
        cache_key=cache_key,
        file_name=image_file_name(extension.name, version.version, build.flavour.arch),
    )


def _cached_image(cache_key: str | None) -> ImageArtifact | None:
    """A stored image with this key whose bytes are still in the store, unchanged."""
    if cache_key is None:
        return None
    from builds.adapters.store import get_artifact_store

    image = ImageArtifact.objects.filter(cache_key=cache_key).first()
    if image is None:
        return None
    stored = get_artifact_store().stat(image.key)
    if stored is None or stored.sha256 != image.sha256:
        return None
    return image


def _run_guarded(build_id: Any, work: Any) -> None:
    """Run ``work``; a user error or a cancel ends the build here, infrastructure errors propagate."""
    try:
        work()
    except BuildCancelled:
        build = _load_build(build_id)
        if build is not None:
            _build_end(build, BuildState.CANCELLED, code="build.cancelled", message="Stopped on request.")
    except PipelineError as error:
        if error.retryable:
            raise
        if error.output:
            _log(build_id, error.output[-4000:])
        build = _load_build(build_id)
        if build is not None:
            _build_end(build, BuildState.FAILED, code=error.code, message=error.message)


def build_start(*, build_id: Any) -> None:
    """Plan a queued build: reuse each image already in the store, queue a bake for the others."""
    build = _load_build(build_id)
    if build is None or not build.is_active:
        return

    def work() -> None:
        _check_cancel(build_id)
        Build.objects.filter(pk=build_id, started_at__isnull=True).update(started_at=timezone.now())
        _advance(build_id, BuildState.FETCHING, step="plan", progress=2)
        with _step(build_id, "plan"):
            pending = BuildImage.objects.filter(
                build_id=build_id, state=BuildImage.State.PENDING
            ).select_related("extension_version__extension")
            for build_image in pending:
                plan = _image_plan(build, build_image)
                cached = _cached_image(plan.cache_key)
                if cached is not None:
                    _log(
                        build_id,
                        f"{plan.file_name}: reusing the stored image {cached.sha256[:16]}… (not rebuilt).",
                    )
                    _image_done(build_id, build_image.pk, cached, reused=True)
                else:
                    _log(build_id, f"{plan.file_name}: queued for baking.")
                    _queue("build_bake_image", str(build_id), build_image.pk)
        _maybe_finalize(build_id)

    _run_guarded(build_id, work)


def _image_done(build_id: Any, build_image_id: int, image: ImageArtifact, *, reused: bool) -> None:
    BuildImage.objects.filter(pk=build_image_id).update(
        state=BuildImage.State.DONE, image=image, reused=reused
    )


def _maybe_finalize(build_id: Any) -> None:
    """Queue finalize exactly once, when the last image of the build is ready."""
    with transaction.atomic():
        build = Build.objects.select_for_update().filter(pk=build_id).first()
        if build is None or not build.is_active or build.finalize_queued:
            return
        if BuildImage.objects.filter(build_id=build_id).exclude(state=BuildImage.State.DONE).exists():
            return
        Build.objects.filter(pk=build_id).update(finalize_queued=True)
        _queue("build_finalize", str(build_id))


class _BakeReporter:
    """The pipeline's ``progress(step, message, fraction)`` as build state, steps, log and heartbeat."""

    def __init__(self, build_id: Any, image_label: str, image_index: float, image_count: int) -> None:
        self.build_id = build_id
        self.label = image_label
        self.index = image_index
        self.count = max(image_count, 1)
        self._step: BuildStep | None = None
        self._step_name = ""
        self._last_message = ""
        self._last_write = 0.0
        self._last_cancel_check = 0.0

    def __call__(self, step: str, message: str, fraction: float) -> None:
        from builds.pipeline.bake import STEPS

        now = time.monotonic()
        if now - self._last_cancel_check > 1.0:
            self._last_cancel_check = now
            _check_cancel(self.build_id)
        if step != self._step_name:
            self.close("ok")
            self._step_name = step
            # The bake's own "publish" only moves files into its scratch output directory.
            shown = "stage" if step == "publish" else step
            self._step = BuildStep.objects.create(
                build_id=self.build_id, name=f"{self.label}: {shown}"[:100], started_at=timezone.now()
            )
        position = STEPS.index(step) if step in STEPS else len(STEPS) - 1
        within = (position + fraction) / len(STEPS)
        progress = 5 + int(BAKE_SHARE * (self.index + within) / self.count)
        state = BuildState.FETCHING if step == "fetch" else BuildState.BAKING
        if message != self._last_message and (
            fraction >= 1.0 or fraction == 0.0 or now - self._last_write > 2.0
        ):
            self._last_message = message
            self._last_write = now
            _log(self.build_id, f"[{self.label}] {step}: {message}")
            _advance(self.build_id, state, step=f"{self.label}: {step}", progress=progress)

    def close(self, outcome: str) -> None:
        if self._step is not None:
            BuildStep.objects.filter(pk=self._step.pk).update(finished_at=timezone.now(), outcome=outcome)
            self._step = None


def _sha512_file(path: Path) -> str:
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def build_image_bake(*, build_id: Any, build_image_id: int) -> None:
    """Bake one image of a build (or take it from the cache if another build just made it)."""
    build = _load_build(build_id)
    build_image = (
        BuildImage.objects.select_related("extension_version__extension").filter(pk=build_image_id).first()
    )
    if build is None or build_image is None or not build.is_active:
        return
    if build_image.state == BuildImage.State.DONE:  # a redelivered message: the work is done
        _maybe_finalize(build_id)
        return

    def work() -> None:
        from builds.adapters.store import get_artifact_store
        from builds.pipeline.bake import bake_sysext
        from catalog.services import upstream_fetcher

        _check_cancel(build_id)
        Build.objects.filter(pk=build_id, started_at__isnull=True).update(started_at=timezone.now())
        plan = _image_plan(build, build_image)
        cached = _cached_image(plan.cache_key)
        if cached is not None:
            _log(build_id, f"{plan.file_name}: another build stored this image meanwhile; reusing it.")
            _image_done(build_id, build_image.pk, cached, reused=True)
            _maybe_finalize(build_id)
            return
        version = build_image.extension_version
        if hasattr(version, "upload"):
            from catalog.services import uploaded_archive_materialize

            uploaded_archive_materialize(version=version)
        done = BuildImage.objects.filter(build_id=build_id, state=BuildImage.State.DONE).count()
        count = BuildImage.objects.filter(build_id=build_id).count()
        label = f"{plan.name} {plan.version}"
        reporter = _BakeReporter(build_id, label, done, count)
        options = flavour_options(build.flavour)
        with _Heartbeat(build_id), tempfile.TemporaryDirectory(prefix="bh-build-") as scratch:
            try:
                with upstream_fetcher(version.extension) as fetcher:
                    result = bake_sysext(
                        plan.recipe,
                        plan.version,
                        plan.arch,
                        Path(scratch) / "out",
                        fetcher=fetcher,
                        work_dir=scratch,
                        image_format=options.image_format,
                        compression=options.compression,
                        pins=plan.pins,
                        progress=reporter,
                    )
            except BaseException:
                reporter.close("failed")
                raise
            reporter.close("ok")
            cache_key = plan.cache_key or result.cache_key
            with _step(build_id, f"{label}: store"):
                stored = get_artifact_store().put_file(
                    f"images/{cache_key}/{result.image_name}", result.image_path
                )
                if stored.sha256 != result.image_sha256:
                    raise PipelineError(
                        "store.sha256-mismatch",
                        f"{result.image_name} was stored as {stored.sha256}, baked as {result.image_sha256}",
                        retryable=True,
                    )
                sha512 = _sha512_file(result.image_path)
        try:
            with transaction.atomic():
                image, _created = ImageArtifact.objects.update_or_create(
                    cache_key=cache_key,
                    defaults={
                        "extension_version": version,
                        "arch": plan.arch,
                        "file_name": result.image_name,
                        "sha256": result.image_sha256,
                        "sha512": sha512,
                        "size": result.image_size,
                        "key": stored.key,
                        "image_format": result.image_format,
                        "compression": result.compression,
                        "built_by_id": build_id,
                    },
                )
        except IntegrityError:  # a parallel bake of the same key won: same bytes, same key
            image = ImageArtifact.objects.get(cache_key=cache_key)
        _log(
            build_id, f"{result.image_name}: baked, sha256 {result.image_sha256}, {result.image_size} bytes."
        )
        _image_done(build_id, build_image.pk, image, reused=False)
        _maybe_finalize(build_id)

    _run_guarded(build_id, work)


@dataclass(frozen=True)
class _ReadyImage:
    """An image of the build, downloaded for verification and publication."""

    build_image: BuildImage
    image: ImageArtifact
    path: Path

    @property
    def extension(self) -> Any:
        return self.build_image.extension_version.extension

    @property
    def version(self) -> str:
        return str(self.build_image.extension_version.version)


def _download_image(image: ImageArtifact, directory: Path) -> Path:
    """Copy an image from the store, refusing bytes that are not the ones we baked."""
    from builds.adapters.store import get_artifact_store

    target = directory / image.file_name
    digest = hashlib.sha256()
    with get_artifact_store().open(image.key) as stream, open(target, "wb") as out:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != image.sha256:
        raise PipelineError(
            "store.sha256-mismatch",
            f"the stored {image.file_name} reads back as {digest.hexdigest()}, not {image.sha256}",
            retryable=True,
        )
    return target


def flavour_config(
    flavour: Flavour, images: list[_ReadyImage], *, keyring: bytes, public_url: Callable[[str], str]
) -> Any:
    """The pipeline's ``FlavourConfig`` for a flavour whose images are about to be published."""
    published = {
        ready.extension.name: _published_image(
            ready.extension.name, ready.image.file_name, f"sha512-{ready.image.sha512}", public_url
        )
        for ready in images
    }
    return butane_config(
        arch=flavour.arch,
        options=flavour_options(flavour),
        versions=list(flavour.extension_versions.select_related("extension")),
        images=published,
        keyring=keyring,
    )


def _published_image(
    name: str, file_name: str, image_hash: str, public_url: Callable[[str], str]
) -> PublishedImage:
    """Where publication puts image ``file_name`` of extension ``name``, as nodes see it."""
    from builds.publication import extension_prefix

    prefix = extension_prefix(name)
    return PublishedImage(url=public_url(prefix + file_name), hash=image_hash, publish_url=public_url(prefix))


# Stand-ins of a preview, chosen so they cannot be a real value: the hash of nothing a bake writes,
# a keyring that is not OpenPGP. Their lines are replaced by these comments in the text shown.
PREVIEW_HASH_NOTE = "# sha512 filled in when the image is baked"
PREVIEW_KEYRING_NOTE = "# public keyring (import-pubring.gpg) filled in when the build signs"
_PREVIEW_HASH = "sha512-" + "0" * 128
_PREVIEW_KEYRING = b"\x00 bakehouse preview: the signing key's public keyring goes here"


@dataclass(frozen=True)
class ButanePreview:
    """The Butane config a flavour's choices will publish, shown before they are built.

    ``baked`` lists the extensions whose image is already stored, so their real hash is in
    ``text``; ``pending`` those whose hash line is a ``PREVIEW_HASH_NOTE`` comment until a build
    bakes them. ``keyring_pending`` says the keyring line is a ``PREVIEW_KEYRING_NOTE`` comment.
    """

    text: str
    baked: tuple[str, ...]
    pending: tuple[str, ...]
    keyring_pending: bool


def flavour_preview_butane(*, choices: FlavourChoices) -> ButanePreview:
    """Render the Butane for validated ``choices`` with the URLs a build would publish them at.

    Each image's hash is the real one when an image with its cache key is already stored, else a
    marked placeholder; the keyring is always a placeholder (exporting it needs the signing key).
    Reads only the database and the settings: it never bakes, fetches or signs, and the same
    choices and stored images always give the same text. Raises ``PipelineError`` if rendering
    refuses the choices (which ``flavour_choices_resolve`` has already checked).
    """
    from builds.adapters.store import get_artifact_store
    from builds.pipeline.butane.render import render_butane
    from builds.pipeline.sysupdate import image_file_name

    public_url = get_artifact_store().public_url
    images: dict[str, PublishedImage] = {}
    baked: list[str] = []
    pending: list[str] = []
    for chosen in sorted(choices.extensions, key=lambda c: c.name):
        if chosen.version.extension.delivery != Delivery.BAKE:
            continue
        cache_key = _image_cache_key(chosen.version, choices.arch, chosen.pins, choices.options)
        stored = (
            ImageArtifact.objects.filter(cache_key=cache_key).exclude(sha512="").first()
            if cache_key is not None
            else None
        )
        if stored is not None:
            file_name, image_hash = stored.file_name, f"sha512-{stored.sha512}"
            baked.append(chosen.name)
        else:
            file_name = image_file_name(chosen.name, chosen.version.version, choices.arch)
            image_hash = _PREVIEW_HASH
            pending.append(chosen.name)
        images[chosen.name] = _published_image(chosen.name, file_name, image_hash, public_url)
    config = butane_config(
        arch=choices.arch,
        options=choices.options,
        versions=[c.version for c in choices.extensions],
        images=images,
        keyring=_PREVIEW_KEYRING,
    )
    text = render_butane(config)
    keyring_source = "data:;base64," + base64.b64encode(_PREVIEW_KEYRING).decode("ascii")
    lines = []
    for line in text.splitlines(keepends=True):
        indent = line[: len(line) - len(line.lstrip(" "))]
        if line.strip() == f"hash: {_PREVIEW_HASH}":
            line = f"{indent}{PREVIEW_HASH_NOTE}\n"
        elif line.strip() == f"source: {keyring_source}":
            line = f"{indent}{PREVIEW_KEYRING_NOTE}\n"
        lines.append(line)
    return ButanePreview(
        text="".join(lines),
        baked=tuple(baked),
        pending=tuple(pending),
        keyring_pending=choices.options.signed,
    )


def _flavour_files(
    flavour: Flavour, config: Any, images: list[_ReadyImage], public_url: Callable[[str], str]
) -> dict[str, bytes]:
    """config.bu, config.ign, the transfer files and the SBOM, as published for the flavour."""
    from builds.pipeline.butane.render import render_butane, render_ignition, transfer_files
    from builds.publication import SBOM_FILE_NAME, SbomComponent, SbomSource, flavour_prefix, render_sbom

    files: dict[str, bytes] = {
        "config.bu": render_butane(config).encode("utf-8"),
        "config.ign": render_ignition(config).encode("utf-8"),
    }
    for transfer in transfer_files(config):
        files[transfer.file_name] = transfer.text.encode("utf-8")
    components = []
    for ready in images:
        digests = ready.build_image.extension_version.digests.filter(arch=flavour.arch).order_by("source_id")
        components.append(
            SbomComponent(
                name=ready.extension.name,
                version=ready.version,
                arch=flavour.arch,
                file_name=ready.image.file_name,
                sha256=ready.image.sha256,
                download_url=next(e.url for e in config.extensions if e.name == ready.extension.name),
                homepage=ready.extension.homepage or "",
                sources=tuple(SbomSource(d.source_id, d.url, d.sha256) for d in digests),
            )
        )
    files[SBOM_FILE_NAME] = render_sbom(
        flavour_id=flavour.pk,
        flavour_name=flavour.name,
        components=components,
        created=flavour.created_at,
        document_namespace=public_url(flavour_prefix(flavour.pk) + SBOM_FILE_NAME),
    )
    return files


_KIND_BY_NAME = {
    "config.bu": ArtifactKind.BUTANE,
    "config.ign": ArtifactKind.IGNITION,
    "sbom.spdx.json": ArtifactKind.SBOM,
    "import-pubring.gpg": ArtifactKind.KEYRING,
    "SHA256SUMS": ArtifactKind.SHA256SUMS,
    "SHA256SUMS.gpg": ArtifactKind.SIGNATURE,
}


def _record_artifact(build: Build, kind: str, name: str, stored: Any) -> None:
    Artifact.objects.update_or_create(
        build=build,
        key=stored.key,
        defaults={
            "flavour": build.flavour,
            "kind": kind,
            "name": name,
            "sha256": stored.sha256,
            "size": stored.size,
            "content_type": stored.content_type,
        },
    )


def build_finalize(*, build_id: Any) -> None:
    """Verify every image with systemd-sysext, then sign and publish images and flavour files."""
    build = _load_build(build_id)
    if build is None or not build.is_active:
        return

    def work() -> None:
        from builds.adapters.signing_key import get_signer
        from builds.adapters.store import get_artifact_store
        from builds.pipeline.verify import verify_with_systemd_sysext
        from builds.publication import ImageFile, publish_extension, publish_flavour

        _check_cancel(build_id)
        store = get_artifact_store()
        build_images = list(
            BuildImage.objects.filter(build_id=build_id)
            .select_related("extension_version__extension", "image")
            .order_by("extension_version__extension__name")
        )
        with _Heartbeat(build_id), tempfile.TemporaryDirectory(prefix="bh-final-") as scratch:
            _advance(
                build_id, BuildState.VERIFYING, step="verify", progress=PROGRESS_AT[BuildState.VERIFYING]
            )
            ready: list[_ReadyImage] = []
            skipped: list[str] = []
            with _step(build_id, "verify"):
                for build_image in build_images:
                    assert build_image.image is not None
                    path = _download_image(build_image.image, Path(scratch))
                    item = _ReadyImage(build_image, build_image.image, path)
                    try:
                        result = verify_with_systemd_sysext(path, item.extension.name, build.flavour.arch)
                    except PipelineError as refused:
                        BuildImage.objects.filter(pk=build_image.pk).update(
                            verification=Verification.FAILED, verification_reason=refused.message
                        )
                        Build.objects.filter(pk=build_id).update(
                            verification=Verification.FAILED, verification_reason=refused.message
                        )
                        raise
                    BuildImage.objects.filter(pk=build_image.pk).update(
                        verification=result.status, verification_reason=result.reason
                    )
                    if result.verified:
                        _log(
                            build_id,
                            f"{path.name}: merged by systemd-sysext ({len(result.merged_bin)} in usr/bin).",
                        )
                    else:
                        skipped.append(f"{path.name}: {result.reason}")
                        _log(build_id, f"{path.name}: verification skipped: {result.reason}")
                    ready.append(item)
                    _check_cancel(build_id)
            if not build_images:
                verification, reason = Verification.SKIPPED, "The flavour has no image to bake."
            elif skipped:
                verification, reason = Verification.SKIPPED, "; ".join(skipped)
            else:
                verification, reason = Verification.VERIFIED, ""
            Build.objects.filter(pk=build_id).update(verification=verification, verification_reason=reason)

            _advance(build_id, BuildState.SIGNING, step="sign", progress=PROGRESS_AT[BuildState.SIGNING])
            with _step(build_id, "sign"), get_signer() as signer:
                keyring = signer.export_public_keyring()
                _log(build_id, f"Signing with key {signer.fingerprint}.")
                with _step(build_id, "render Butane and Ignition"):
                    from builds.access import artifact_url_for

                    # A private flavour's nodes read through its token URL (builds.access).
                    node_url = artifact_url_for(build.flavour)
                    config = flavour_config(build.flavour, ready, keyring=keyring, public_url=node_url)
                    files = _flavour_files(build.flavour, config, ready, node_url)
                _check_cancel(build_id)  # the last point where stopping leaves nothing new behind

                _advance(
                    build_id,
                    BuildState.PUBLISHING,
                    step="publish",
                    progress=PROGRESS_AT[BuildState.PUBLISHING],
                )
                with _step(build_id, "publish"):
                    for item in ready:
                        publication = publish_extension(
                            store,
                            signer,
                            item.extension.name,
                            [ImageFile(item.version, build.flavour.arch, item.path, item.image.sha256)],
                        )
                        for file_name, stored in publication.images.items():
                            _record_artifact(build, ArtifactKind.IMAGE, file_name, stored)
                        _log(
                            build_id,
                            f"Published {item.image.file_name} and re-signed {publication.url}SHA256SUMS.",
                        )
                    flavour_publication = publish_flavour(store, signer, build.flavour.pk, files)
                    for file_name, stored in flavour_publication.files.items():
                        _record_artifact(
                            build, _KIND_BY_NAME.get(file_name, ArtifactKind.TRANSFER), file_name, stored
                        )
                    _log(build_id, f"Published the flavour's files at {flavour_publication.url}.")
        build.refresh_from_db()
        _build_end(build, BuildState.SUCCEEDED)

    _run_guarded(build_id, work)


# --- worker start: finish what killed workers left ---------------------------------------------

# Scratch directories of build and upload tasks (tempfile prefixes), in the system temp dir.
SCRATCH_PREFIXES = ("bh-", "bakehouse-upload-")


def scratch_remove_stale(*, older_than: float | None = None, now: float | None = None) -> list[str]:
    """Remove task scratch directories no running task can still own; return their names.

    A task never outlives the hard time limit, and a directory's mtime is never older than its
    creation, so one untouched for longer than that limit was left by a killed worker (a
    ``finally`` never runs under SIGKILL).
    """
    import shutil

    older_than = settings.CELERY_TASK_TIME_LIMIT if older_than is None else older_than
    now = time.time() if now is None else now
    removed = []
    for entry in Path(tempfile.gettempdir()).iterdir():
        if not entry.name.startswith(SCRATCH_PREFIXES):
            continue
        try:
            if not entry.is_dir() or entry.is_symlink() or now - entry.stat().st_mtime < older_than:
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
    return removed


def worker_start_recover() -> None:
    """Run once when a worker starts: drop stale scratch, finish interrupted SHA256SUMS switches."""
    from builds.adapters.signing_key import get_signer
    from builds.adapters.store import get_artifact_store
    from builds.publication import recover_pending_publications

    removed = scratch_remove_stale()
    if removed:
        logger.warning("removed %d scratch directories left by killed workers", len(removed))
    with get_signer() as signer:
        outcomes = recover_pending_publications(get_artifact_store(), signer.export_public_keyring())
    for prefix, outcome in outcomes.items():
        logger.warning("a killed worker left %sSHA256SUMS being switched: %s", prefix, outcome)
