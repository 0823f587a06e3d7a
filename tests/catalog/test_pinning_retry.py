"""A passing upstream hiccup while pinning digests never undoes a curator's approval.

The fixture upstream answers 503 (the fetcher's own retries give up on it: a retryable
``fetch.http-error``); the pinning task retries with Celery, and the version ends ``approved``.
Only a permanent error, or trouble that outlasts every attempt, sends it back to ``proposed``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.core.management import call_command

from builds.pipeline.errors import PipelineError
from catalog import services
from catalog.models import ApprovalRecord, ExtensionVersion, VersionStatus
from portal.celery import app as celery_app
from tests.catalog.conftest import DEMO_RECIPE, Cast, write_recipe
from tests.upstream import UpstreamServer, executable, make_tar

# Fault injection (a flaky upstream); each failed fetch waits out the fetcher's backoff (7 s).
pytestmark = [pytest.mark.django_db, pytest.mark.reliability]

FILES = {
    "x86-64": "/gh/example/demo/releases/download/v1.0.1/demo-v1.0.1-x86_64.tar.gz",
    "arm64": "/gh/example/demo/releases/download/v1.0.1/demo-v1.0.1-aarch64.tar.gz",
}
FETCHER_ATTEMPTS = 4  # Fetcher(retries=3): one task attempt asks the upstream four times


@pytest.fixture
def demo(tmp_path: Path, upstream: UpstreamServer, settings, fetch_cache: Path, eager_celery: None) -> None:
    settings.UPSTREAM_MIRRORS = {"https://github.com/": upstream.url("/gh/")}
    write_recipe(tmp_path / "recipes", "demo", DEMO_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path / "recipes"), verbosity=0)


def _v101() -> ExtensionVersion:
    return ExtensionVersion.objects.get(extension__name="demo", extension__team=None, version="v1.0.1")


def _body(arch: str) -> bytes:
    return make_tar([executable("demo", f"#!/bin/sh\necho demo {arch}\n".encode())])


def test_an_upstream_503_while_pinning_is_retried_and_the_version_ends_approved(
    cast: Cast, demo: None, upstream: UpstreamServer, django_capture_on_commit_callbacks
) -> None:
    # Down for one whole task attempt, then back.
    upstream.add_flaky(FILES["x86-64"], _body("x86-64"), failures=FETCHER_ATTEMPTS)
    upstream.add_bytes(FILES["arm64"], _body("arm64"))
    version = _v101()
    # Eager tasks run their retries in place, unless the Retry is propagated to the caller.
    celery_app.conf.task_eager_propagates = False  # eager_celery restores it

    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.staff).post(f"/api/versions/{version.pk}/approve", {}, format="json")
    assert response.status_code == 200, response.content

    version.refresh_from_db()
    assert version.status == VersionStatus.APPROVED, version.pinning_error
    assert version.pinning_error == ""
    assert upstream.hits(FILES["x86-64"]) == FETCHER_ATTEMPTS + 1  # the Celery retry fetched it
    assert list(version.pins("x86-64").values()) == [hashlib.sha256(_body("x86-64")).hexdigest()]
    assert not ApprovalRecord.objects.filter(version=version, action="pin-failed").exists()


def test_transient_trouble_keeps_the_version_pinning_until_the_last_attempt(
    cast: Cast, demo: None, upstream: UpstreamServer
) -> None:
    upstream.add_status(FILES["x86-64"], 503)
    upstream.add_bytes(FILES["arm64"], _body("arm64"))
    version = _v101()
    ExtensionVersion.objects.filter(pk=version.pk).update(status=VersionStatus.PINNING)

    with pytest.raises(PipelineError) as caught:
        services.version_pin_digests(version_id=version.pk, last_attempt=False)
    assert caught.value.code == "fetch.http-error" and caught.value.retryable
    version.refresh_from_db()
    assert version.status == VersionStatus.PINNING  # the task retries; the approval stands
    assert version.pinning_error.startswith("fetch.http-error") and "(retrying)" in version.pinning_error

    services.version_pin_digests(version_id=version.pk, last_attempt=True)
    version.refresh_from_db()
    assert version.status == VersionStatus.PIN_FAILED
    assert version.pinning_error.startswith("fetch.http-error")
    assert "gave up after several attempts" in version.pinning_error
    assert ApprovalRecord.objects.filter(version=version, action="pin-failed").exists()


def test_a_permanent_upstream_error_returns_the_version_to_proposed_at_once(
    cast: Cast, demo: None, upstream: UpstreamServer
) -> None:
    upstream.add_status(FILES["x86-64"], 404)
    upstream.add_bytes(FILES["arm64"], _body("arm64"))
    version = _v101()
    ExtensionVersion.objects.filter(pk=version.pk).update(status=VersionStatus.PINNING)

    services.version_pin_digests(version_id=version.pk, last_attempt=False)  # no retry for a 404
    version.refresh_from_db()
    assert version.status == VersionStatus.PIN_FAILED
    assert version.pinning_error.startswith("fetch.http-error") and "404" in version.pinning_error
    assert upstream.hits(FILES["x86-64"]) == 1
