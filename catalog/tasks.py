"""Celery tasks of the catalog: thin, they load ids and call one service."""

from __future__ import annotations

from celery import shared_task

from catalog import services


@shared_task(name="catalog.pin_version_digests", acks_late=True)
def pin_version_digests(version_id: int) -> None:
    """Fetch and pin the upstream digests of a version a curator approved."""
    services.version_pin_digests(version_id=version_id)


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
