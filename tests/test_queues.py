"""Workers scale out by queue: image bakes, catalog tasks and the rest (portal/routing.py).

The routing every process applies, the queues a worker without ``-Q`` takes, and the
docker-compose.yml that splits image workers (scaled) from the light one. No Docker engine runs
here, so the compose file is checked as data: together its workers take every queue.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings

from portal.celery import app
from portal.routing import queue_for, queue_names

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        ("builds.tasks.build_bake_image", "team-a.bake"),
        ("builds.tasks.build_start", "team-a"),
        ("builds.tasks.build_finalize", "team-a"),
        ("builds.tasks.webhook_deliver", "team-a"),
        ("builds.tasks.builds_reap_stale", "team-a"),
        ("catalog.pin_version_digests", "team-a.catalog"),
        ("catalog.check_upload", "team-a.catalog"),
        ("catalog.discover_upstream_releases", "team-a.catalog"),
    ],
)
def test_each_task_goes_to_its_queue_under_the_configured_prefix(task: str, queue: str) -> None:
    assert queue_for(task, "team-a") == queue
    assert queue in queue_names("team-a")


def test_the_celery_app_routes_by_the_default_queue_it_runs_with() -> None:
    app.loader.import_default_modules()
    route = app.amqp.router.route({}, "builds.tasks.webhook_deliver", args=(1,))
    assert route["queue"].name == app.conf.task_default_queue
    route = app.amqp.router.route({}, "catalog.check_upload", args=(1,))
    assert route["queue"].name == f"{app.conf.task_default_queue}.catalog"
    # A worker started without -Q listens on every queue of its prefix.
    assert sorted(app.amqp.queues) == sorted(queue_names(settings.CELERY_TASK_DEFAULT_QUEUE))


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _queues(command: list[str], prefix: str) -> set[str]:
    listed = command[command.index("-Q") + 1]
    return set(re.sub(r"\$\{CELERY_TASK_DEFAULT_QUEUE:-celery\}", prefix, listed).split(","))


def test_compose_runs_image_workers_to_scale_and_a_light_worker_that_together_take_every_queue() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    workers = {name: s for name, s in services.items() if "worker" in _command(s)}
    assert set(workers) == {"worker", "worker-light"}
    assert _queues(_command(workers["worker"]), "celery") == {"celery.bake"}
    assert _queues(_command(workers["worker-light"]), "celery") == {"celery", "celery.catalog"}
    assert set().union(*(_queues(_command(w), "celery") for w in workers.values())) == set(
        queue_names("celery")
    )
    for name, worker in workers.items():
        # `--scale worker=3` needs no fixed name or host port; each replica answers its own ping.
        assert "container_name" not in worker and "ports" not in worker, name
        assert "celery@$$HOSTNAME" in " ".join(worker["healthcheck"]["test"]), name
        assert worker["environment"]["CELERY_TASK_DEFAULT_QUEUE"] == "${CELERY_TASK_DEFAULT_QUEUE:-celery}"
        assert worker["environment"]["SIGNING_KEY_FILE"], name  # every worker signs with one key
