"""Which Celery queue a task goes to, and in what order a build's tasks are taken.

Three queues, all named after ``CELERY_TASK_DEFAULT_QUEUE`` (so deployments and test runs
sharing one Redis stay apart), so that operators can run image workers on big machines and the
rest on small ones:

- ``DEFAULT.bake``: ``builds.tasks.build_bake_image``, the CPU- and disk-heavy image bakes;
- ``DEFAULT.catalog``: every ``catalog.*`` task (pinning digests, upload checks, discovery);
- ``DEFAULT``: everything else (build start and finalize, webhooks, the periodic reapers).

A worker started without ``-Q`` (``runportal``'s, the tests') listens on all three.

Fairness between teams: a build's tasks carry a Celery priority that grows with the number of
the same team's builds queued or running ahead of it (``builds.fairness``). On Redis a
worker takes priority 0 first, so a team's first build overtakes another team's tenth.
This module imports neither Django nor Celery at load time: the settings read it.
"""

from __future__ import annotations

from typing import Any

BAKE_TASKS = frozenset({"builds.tasks.build_bake_image"})
CATALOG_TASK_PREFIX = "catalog."
# The tasks of a build (first argument: the build id) that take their team's turn.
FAIR_BUILD_TASKS = frozenset(
    {"builds.tasks.build_start", "builds.tasks.build_bake_image", "builds.tasks.build_finalize"}
)
# Redis priorities: 0 is taken first; one step per build ahead of this one, up to the last.
PRIORITY_STEPS = tuple(range(10))


def queue_names(default_queue: str) -> list[str]:
    """Every queue of a deployment whose default queue is ``default_queue``."""
    return [default_queue, f"{default_queue}.bake", f"{default_queue}.catalog"]


def queue_for(task_name: str, default_queue: str) -> str:
    """The queue ``task_name`` is sent to."""
    if task_name in BAKE_TASKS:
        return f"{default_queue}.bake"
    if task_name.startswith(CATALOG_TASK_PREFIX):
        return f"{default_queue}.catalog"
    return default_queue


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, Any]:
    """Celery router (``CELERY_TASK_ROUTES``): the queue, and a build task's fair priority."""
    from celery import current_app

    route: dict[str, Any] = {"queue": queue_for(name, current_app.conf.task_default_queue)}
    if name in FAIR_BUILD_TASKS and args:
        from builds.fairness import build_queue_priority

        route["priority"] = build_queue_priority(build_id=str(args[0]), lowest=PRIORITY_STEPS[-1])
    return route
