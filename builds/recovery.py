"""The safety nets: builds whose worker died or whose task was lost, scratch and half-done
publications that killed workers left behind.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from builds import director, steps
from builds.models import ACTIVE_BUILD_STATES, Build, BuildImage, BuildState
from portal import queueing

logger = logging.getLogger(__name__)


def heartbeat_timeout() -> float:
    return float(settings.BUILD_HEARTBEAT_TIMEOUT)


def queue_timeout() -> float:
    return float(settings.BUILD_QUEUE_TIMEOUT)


def requeue_after() -> float:
    return float(settings.BUILD_REQUEUE_AFTER)


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
        if steps.build_end(
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
        if steps.build_end(
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
            queueing.queue_task("builds.tasks.build_finalize", str(build.pk))
        elif build.started_at is None:
            queueing.queue_task("builds.tasks.build_start", str(build.pk))
        elif pending:
            for build_image_id in pending:
                queueing.queue_task("builds.tasks.build_bake_image", str(build.pk), build_image_id)
        else:
            director.maybe_finalize(build.pk)
        steps.log(
            build.pk, "Nothing worked on this build for a while (its queued task was lost); queued it again."
        )
        logger.warning("re-queued build %s", build.pk)
        requeued.append(str(build.pk))
    return requeued


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
