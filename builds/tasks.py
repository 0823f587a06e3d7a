"""Celery tasks of the builds app: each loads ids and calls one director, recovery or webhook function.

Retry policy: the director lets retryable trouble propagate (a ``PipelineError`` with
``retryable=True``, a lost database or store connection); Celery retries it (``autoretry_for``,
exponential backoff with jitter) and, on the last attempt, the task fails the build with the
error's code so no build is ever left hanging. User errors never reach here: the director has
already failed the build. ``acks_late`` means a worker that dies mid-task gets its message
redelivered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready
from django.db import DatabaseError

from builds import director, recovery, steps, webhooks
from builds.pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

MAX_RETRIES = 4
# Soft limits per task; the hard limit (settings) kills a task that ignores its soft limit.
BAKE_SOFT_TIME_LIMIT = 45 * 60
FINALIZE_SOFT_TIME_LIMIT = 30 * 60
INFRASTRUCTURE = (PipelineError, DatabaseError, OSError, ConnectionError, TimeoutError)


def _is_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, PipelineError):
        return exc.retryable
    return isinstance(exc, INFRASTRUCTURE)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, PipelineError):
        return exc.code, exc.message
    return "build.infrastructure", str(exc) or type(exc).__name__


class BuildTask(Task):
    """A build task: infrastructure trouble is retried by Celery with backoff and jitter."""

    acks_late = True
    autoretry_for = INFRASTRUCTURE
    max_retries = MAX_RETRIES
    retry_backoff = 5
    retry_backoff_max = 300
    retry_jitter = True

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Any = None,
        throw: bool = True,
        eta: Any = None,
        countdown: Any = None,
        max_retries: Any = None,
        **options: Any,
    ) -> Any:
        if exc is not None and self.request.args:
            code, message = _describe(exc)
            wait = f"in {int(countdown)} s" if countdown is not None else "later"
            steps.build_log(
                build_id=self.request.args[0],
                text=f"Infrastructure trouble ({code}: {message}); retrying {wait}.",
            )
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)


def _run(task: Task, build_id: str, work: Callable[[], None]) -> None:
    """Run ``work``; end the build on a time limit, a bug or the last failed attempt, else let
    Celery's ``autoretry_for`` retry the infrastructure trouble."""
    try:
        work()
    except Exception as exc:
        # The failure may be a dropped database connection: replace it before recording anything,
        # else the log line below fails too and the task dies without its retry.
        steps.database_reconnect_if_broken()
        if isinstance(exc, SoftTimeLimitExceeded):
            steps.build_fail(
                build_id=build_id,
                code="build.time-limit",
                message=f"A build step ran past its time limit ({task.soft_time_limit} s) and was stopped; "
                "a hanging upstream or a very large image is the usual cause.",
            )
            return
        if not _is_infrastructure(exc):
            logger.exception("build %s: unexpected error", build_id)
            steps.build_fail(
                build_id=build_id,
                code="build.internal-error",
                message=f"An unexpected error stopped the build ({type(exc).__name__}); see the worker log.",
            )
            return
        if task.request.retries >= MAX_RETRIES:
            code, message = _describe(exc)
            steps.build_fail(
                build_id=build_id,
                code=code,
                message=f"{message} (gave up after {MAX_RETRIES + 1} attempts; retry the build later)",
            )
            return
        raise


@worker_ready.connect
def _recover_at_worker_start(**_: Any) -> None:
    """Before taking work: finish publications and remove scratch that killed workers left."""
    try:
        recovery.worker_start_recover()
    except Exception:  # the store or database may be down; the next publication recovers too
        logger.exception("recovery at worker start failed")


@worker_process_init.connect
def _warm_up_in_the_background(**_: Any) -> None:
    """Load what every build needs while the new pool process waits for work, not during its
    first build: the pipeline and Butane modules, the tools' versions (one subprocess each) and
    the S3 client (botocore parses its service model). About a second of a fresh process.

    A thread, because Celery gives a pool process a few seconds to start; a task that comes
    sooner shares the same import locks and store lock, so it waits for nothing twice."""
    threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()


def _warm_up() -> None:
    try:
        from builds.adapters.store import get_artifact_store
        from builds.pipeline import bake, publish, verify  # noqa: F401 - imported to be loaded
        from builds.pipeline.butane import render, transpile  # noqa: F401
        from builds.pipeline.image import tool_versions

        tool_versions()
        get_artifact_store()
    except Exception:  # the store may be down or misconfigured: the first build says so
        logger.warning("warming up the worker failed", exc_info=True)


@shared_task(bind=True, base=BuildTask, soft_time_limit=300)
def build_start(self: Task, build_id: str) -> None:
    """plan: reuse cached images, queue one bake task per missing image."""
    _run(self, build_id, lambda: director.build_start(build_id=build_id))


@shared_task(bind=True, base=BuildTask, soft_time_limit=BAKE_SOFT_TIME_LIMIT)
def build_bake_image(self: Task, build_id: str, build_image_id: int) -> None:
    """bake: one extension image of a build (these run in parallel across workers)."""
    _run(self, build_id, lambda: director.build_image_bake(build_id=build_id, build_image_id=build_image_id))


@shared_task(bind=True, base=BuildTask, soft_time_limit=FINALIZE_SOFT_TIME_LIMIT)
def build_finalize(self: Task, build_id: str) -> None:
    """verify, sign, publish, notify: once every image is ready."""
    _run(self, build_id, lambda: director.build_finalize(build_id=build_id))


@shared_task(acks_late=True, soft_time_limit=120)
def builds_reap_stale() -> list[str]:
    """Periodic: fail builds whose heartbeat stopped (see CELERY_BEAT_SCHEDULE)."""
    return recovery.builds_reap_stale()


class WebhookNotDelivered(Exception):
    """The receiver did not take the event yet (a 5xx, a timeout): worth asking again later."""


WEBHOOK_MAX_RETRIES = 6


@shared_task(
    bind=True,
    acks_late=True,
    soft_time_limit=60,
    autoretry_for=(WebhookNotDelivered,),
    max_retries=WEBHOOK_MAX_RETRIES,
    retry_backoff=10,
    retry_backoff_max=3600,
    retry_jitter=True,
)
def webhook_deliver(self: Task, delivery_id: int) -> None:
    """Send one build event; retried with backoff, never holding up a build."""
    if webhooks.webhook_deliver(delivery_id=delivery_id):
        return
    if self.request.retries >= WEBHOOK_MAX_RETRIES:
        logger.warning("webhook delivery %s abandoned after retries", delivery_id)
        return
    raise WebhookNotDelivered(delivery_id)
