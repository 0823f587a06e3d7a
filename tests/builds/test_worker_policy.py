"""The worker policy the issue asks for: messages acknowledged late, one prefetched at a time,
time limits on every build task, and a user error failing the build without any retry."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from builds import services, tasks
from builds.models import Build, BuildImage, BuildState
from builds.pipeline.errors import PipelineError
from portal.celery import app
from tests.builds.catalog_fixtures import Cast, hello_flavour

BUILD_TASKS = [tasks.build_start, tasks.build_bake_image, tasks.build_finalize]


def test_a_worker_takes_one_message_at_a_time_and_acknowledges_it_after_the_work() -> None:
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_acks_late is True
    # A worker killed mid-build (OOM, node loss) hands its message back instead of dropping it.
    assert app.conf.task_reject_on_worker_lost is True


@pytest.mark.parametrize("task", BUILD_TASKS, ids=lambda t: t.name.rsplit(".", 1)[-1])
def test_every_build_task_has_a_soft_and_a_hard_time_limit(task: Any) -> None:
    assert task.acks_late is True
    assert task.soft_time_limit and task.soft_time_limit > 0
    hard = task.time_limit or app.conf.task_time_limit
    assert hard and hard > task.soft_time_limit


@pytest.mark.django_db
def test_a_user_error_fails_the_build_at_once_without_a_retry(
    cast: Cast, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.S3 = None
    flavour = hello_flavour(cast)
    build, _ = services.build_request(flavour=flavour, user=cast.teammate)
    calls: list[tuple[Any, ...]] = []

    def mismatching_upstream(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise PipelineError(
            "fetch.sha256-mismatch",
            "hello.tar.gz does not match the sha256 pinned at approval; the upstream file changed.",
        )

    monkeypatch.setattr("builds.pipeline.bake.bake_image", mismatching_upstream)
    image = BuildImage.objects.get(build=build)

    # throw=True: a Retry (or any other exception) would surface here.
    tasks.build_bake_image.apply(args=(str(build.pk), image.pk), retries=0, throw=True)

    assert len(calls) == 1
    build.refresh_from_db()
    assert build.state == BuildState.FAILED
    assert build.error_code == "fetch.sha256-mismatch"
    assert "pinned at approval" in build.error_message
    assert not build.log_lines.filter(text__contains="retrying").exists()
    assert Build.objects.filter(flavour=flavour).count() == 1


def test_a_new_pool_process_loads_the_store_client_and_tool_versions_before_its_first_task(
    settings: Any, tmp_path: Path
) -> None:
    from celery.signals import worker_process_init

    from builds.adapters import store
    from builds.pipeline import image

    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.S3 = None
    store._stores.clear()
    image._tool_versions.cache_clear()
    worker_process_init.send(sender=None)
    for thread in [t for t in threading.enumerate() if t.name == "warm-up"]:
        thread.join(timeout=60)
    # The first build then finds both made: no botocore model parsing, no tool probes on its clock.
    assert list(store._stores.values()) == [store.get_artifact_store()]
    assert image._tool_versions.cache_info().currsize == 1
