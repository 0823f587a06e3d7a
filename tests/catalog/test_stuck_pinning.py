"""A version whose pinning task was lost does not stay in 'pinning' forever."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from catalog import services
from catalog.models import ApprovalRecord, Extension, ExtensionVersion, VersionStatus
from tests.catalog.conftest import DEMO_RECIPE, Cast

pytestmark = pytest.mark.django_db


def _pinning(cast: Cast, version: str, *, decided_ago: timedelta) -> ExtensionVersion:
    extension, _ = Extension.objects.get_or_create(
        name="demo", team=cast.team, defaults={"origin": "recipe", "recipe_text": DEMO_RECIPE}
    )
    return ExtensionVersion.objects.create(
        extension=extension,
        version=version,
        status=VersionStatus.PINNING,
        decided_by=cast.curator,
        decided_at=timezone.now() - decided_ago,
    )


def test_lost_pinning_is_pin_failed_with_the_error_recorded(cast: Cast) -> None:
    lost = _pinning(cast, "v1.0.0", decided_ago=timedelta(hours=2))
    fresh = _pinning(cast, "v1.0.1", decided_ago=timedelta(minutes=1))
    assert services.versions_reap_stuck_pinning(timeout=3600) == [lost.pk]
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert lost.status == VersionStatus.PIN_FAILED
    assert lost.pinning_error.startswith("pinning.lost:")
    assert ApprovalRecord.objects.filter(version=lost, action="pin-failed").exists()
    assert fresh.status == VersionStatus.PINNING  # its task may still be running


def test_the_reaper_is_scheduled() -> None:
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "catalog.reap_stuck_pinning" in tasks
