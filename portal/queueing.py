"""Queue a Celery task by name once the current transaction commits.

Services and the director queue through here, by the task's registered name, so they never
import ``builds.tasks`` (which imports them): no import cycle between services and tasks.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)


def queue_task(task_name: str, *args: Any) -> None:
    """Send task ``task_name`` (``app.task`` name) after commit (at once outside a transaction).

    A broker that stays unreachable through the publish retries (settings) does not fail the
    request or the task that queues: the work is committed, and the reapers queue it again later
    (``builds.recovery.builds_reap_stale``, ``catalog`` periodic tasks).
    """
    from kombu.exceptions import OperationalError as BrokerUnreachable

    def send() -> None:
        try:
            if task_name not in current_app.tasks:
                # A web process has not imported the task modules: discover them (as a worker
                # does at start), so the task's own options apply (and eager mode in tests).
                current_app.loader.import_default_modules()
            current_app.signature(task_name, args=args).delay()
        except (BrokerUnreachable, OSError) as exc:
            logger.warning("could not queue %s%r (%s); it is queued again later", task_name, args, exc)

    transaction.on_commit(send)
