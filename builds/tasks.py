"""Celery tasks of the builds app: each loads ids and calls one service.

Retry policy: a service lets retryable trouble propagate (a ``PipelineError`` with
``retryable=True``, a lost database or store connection); the task retries it with exponential
backoff and, once out of attempts, fails the build with ``build.infrastructure`` so no build is
ever left hanging. User errors never reach here: the service has already failed the build.
``acks_late`` (set globally) means a worker that dies mid-task gets its message redelivered.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from django.db import DatabaseError

from builds import services
from builds.pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

MAX_RETRIES = 4
# Soft limits per task; the hard limit (settings) kills a task that ignores its soft limit.
BAKE_SOFT_TIME_LIMIT = 45 * 60
FINALIZE_SOFT_TIME_LIMIT = 30 * 60


def _is_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, PipelineError):
        return exc.retryable
    return isinstance(exc, DatabaseError | OSError | ConnectionError | TimeoutError)


def _retry_or_fail(task: Task, build_id: str, exc: BaseException) -> None:
    """Retry an infrastructure failure with backoff; after the last attempt, fail the build."""
    # The failure may be a dropped database connection: replace it before recording anything,
    # else the log line below fails too and the task dies without its retry.
    services.database_reconnect_if_broken()
    if isinstance(exc, SoftTimeLimitExceeded):
        services.build_fail(
            build_id=build_id,
            code="build.time-limit",
            message=f"A build step ran past its time limit ({task.soft_time_limit} s) and was stopped; "
            "a hanging upstream or a very large image is the usual cause.",
        )
        return
    if not _is_infrastructure(exc):
        logger.exception("build %s: unexpected error", build_id)
        services.build_fail(
            build_id=build_id,
            code="build.internal-error",
            message=f"An unexpected error stopped the build ({type(exc).__name__}); see the worker log.",
        )
        return
    code = exc.code if isinstance(exc, PipelineError) else "build.infrastructure"
    message = exc.message if isinstance(exc, PipelineError) else str(exc) or type(exc).__name__
    if task.request.retries >= MAX_RETRIES:
        services.build_fail(
            build_id=build_id,
            code=code,
            message=f"{message} (gave up after {MAX_RETRIES + 1} attempts; retry the build later)",
        )
        return
    countdown = min(5 * 2**task.request.retries, 300)
    services.build_log(
        build_id=build_id, text=f"Infrastructure trouble ({code}: {message}); retrying in {countdown} s."
    )
    raise task.retry(exc=exc, countdown=countdown, max_retries=MAX_RETRIES)


@worker_ready.connect
def _recover_at_worker_start(**_: Any) -> None:
    """Before taking work: finish publications and remove scratch that killed workers left."""
    try:
        services.worker_start_recover()
    except Exception:  # the store or database may be down; the next publication recovers too
        logger.exception("recovery at worker start failed")


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES, soft_time_limit=300)
def build_start(self: Task, build_id: str) -> None:
    """Plan a build: reuse cached images, queue one bake task per missing image."""
    try:
        services.build_start(build_id=build_id)
    except Exception as exc:
        _retry_or_fail(self, build_id, exc)


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES, soft_time_limit=BAKE_SOFT_TIME_LIMIT)
def build_bake_image(self: Task, build_id: str, build_image_id: int) -> None:
    """Bake one extension image of a build (these run in parallel across workers)."""
    try:
        services.build_image_bake(build_id=build_id, build_image_id=build_image_id)
    except Exception as exc:
        _retry_or_fail(self, build_id, exc)


@shared_task(bind=True, acks_late=True, max_retries=MAX_RETRIES, soft_time_limit=FINALIZE_SOFT_TIME_LIMIT)
def build_finalize(self: Task, build_id: str) -> None:
    """Verify, sign, render Butane/Ignition and publish, once every image is ready."""
    try:
        services.build_finalize(build_id=build_id)
    except Exception as exc:
        _retry_or_fail(self, build_id, exc)


@shared_task(acks_late=True, soft_time_limit=120)
def builds_reap_stale() -> list[str]:
    """Periodic: fail builds whose heartbeat stopped (see CELERY_BEAT_SCHEDULE)."""
    return services.builds_reap_stale()


@shared_task(bind=True, acks_late=True, max_retries=6, soft_time_limit=60)
def webhook_deliver(self: Task, delivery_id: int) -> Any:
    """Send one build event; retried with backoff, never holding up a build."""
    if not services.webhook_deliver(delivery_id=delivery_id):
        if self.request.retries < 6:
            raise self.retry(countdown=min(10 * 2**self.request.retries, 3600))
        logger.warning("webhook delivery %s abandoned after retries", delivery_id)
    return None
