"""How tasks treat failures: infrastructure trouble is retried with backoff and then fails the
build with its code; a time limit and an unexpected error fail it at once with their own codes."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry, SoftTimeLimitExceeded

from builds import director, services, tasks
from builds.models import Build, BuildState
from builds.pipeline.errors import PipelineError
from tests.builds.catalog_fixtures import Cast, hello_flavour

pytestmark = pytest.mark.django_db


@pytest.fixture
def build(cast: Cast) -> Build:
    flavour = hello_flavour(cast)
    created, _ = services.build_request(flavour=flavour, user=cast.teammate)
    return created


def _failing_bake(error: BaseException) -> Any:
    def bake(**kwargs: Any) -> None:
        raise error

    return bake


def _run(build: Build, retries: int) -> Any:
    return tasks.build_bake_image.apply(args=(str(build.pk), 1), retries=retries, throw=True)


def test_infrastructure_trouble_is_retried_while_attempts_remain(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    trouble = PipelineError("store.unavailable", "S3 answered 503.", retryable=True)
    monkeypatch.setattr(director, "build_image_bake", _failing_bake(trouble))
    with pytest.raises(Retry):
        _run(build, retries=0)
    build.refresh_from_db()
    assert build.state == BuildState.QUEUED
    # Celery's exponential backoff with full jitter: the first wait is at most retry_backoff (5 s).
    (line,) = build.log_lines.filter(text__contains="retrying in").values_list("text", flat=True)
    assert "store.unavailable: S3 answered 503." in line
    assert int(line.rsplit("retrying in ", 1)[1].split(" ")[0]) <= 5


def test_the_last_attempt_fails_the_build_with_the_error_code(
    build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    trouble = PipelineError("store.unavailable", "S3 answered 503.", retryable=True)
    monkeypatch.setattr(director, "build_image_bake", _failing_bake(trouble))
    _run(build, retries=tasks.MAX_RETRIES)
    build.refresh_from_db()
    assert build.state == BuildState.FAILED
    assert build.error_code == "store.unavailable"
    assert "gave up after" in build.error_message


@pytest.mark.parametrize(
    ("error", "code"),
    [(SoftTimeLimitExceeded(), "build.time-limit"), (KeyError("surprise"), "build.internal-error")],
)
def test_time_limits_and_bugs_fail_the_build_at_once(
    build: Build, monkeypatch: pytest.MonkeyPatch, error: BaseException, code: str
) -> None:
    monkeypatch.setattr(director, "build_image_bake", _failing_bake(error))
    _run(build, retries=0)
    build.refresh_from_db()
    assert build.state == BuildState.FAILED
    assert build.error_code == code
