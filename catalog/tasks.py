"""Celery tasks of the catalog: thin, they load ids and call one service."""

from __future__ import annotations

from celery import Task, shared_task

from builds.pipeline.errors import BakehouseError
from catalog import services

# Transient upstream or worker trouble while pinning is retried with backoff (30 s, 1, 2, 4 min ...),
# well within CATALOG_PINNING_TIMEOUT, after which the reaper would call the task lost.
PIN_MAX_RETRIES = 5


@shared_task(
    bind=True,
    name="catalog.pin_version_digests",
    acks_late=True,
    autoretry_for=(BakehouseError,),
    max_retries=PIN_MAX_RETRIES,
    retry_backoff=30,
    retry_backoff_max=600,
    retry_jitter=True,
)
def pin_version_digests(self: Task, version_id: int) -> None:
    """Fetch and pin the upstream digests of a version a curator approved.

    The service raises only retryable errors, and only before the last attempt; permanent ones
    have already sent the version back to proposed.
    """
    services.version_pin_digests(version_id=version_id, last_attempt=self.request.retries >= PIN_MAX_RETRIES)


@shared_task(name="catalog.discover_upstream_releases")
def discover_upstream_releases() -> list[str]:
    """Periodic: file proposals for new upstream releases (never approves anything)."""
    report = services.upstream_discover()
    return report.proposed


@shared_task(name="catalog.reap_stuck_pinning")
def reap_stuck_pinning() -> list[int]:
    """Periodic: versions whose pinning task was lost go back to proposed, with the error recorded."""
    return services.versions_reap_stuck_pinning()


@shared_task(name="catalog.requeue_unchecked_uploads")
def requeue_unchecked_uploads() -> list[int]:
    """Periodic: uploads whose check task was lost are queued for checking again."""
    return services.uploads_requeue_unchecked()


@shared_task(name="catalog.check_upload", acks_late=True, soft_time_limit=300)
def check_upload(upload_id: int) -> None:
    """Unpack an uploaded archive within its budgets; the version becomes proposed or rejected."""
    services.uploaded_archive_check(upload_id=upload_id)
