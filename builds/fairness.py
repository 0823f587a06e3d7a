"""Fair turns between teams: the queue priority of a build's next task.

One team submitting twenty builds must not make another team's single build wait behind all of
them. Each task of a build is sent with a Celery priority equal to the number of the same team's
active builds created before it (capped at the lowest priority): a team's first build in line
has priority 0, its tenth priority 9, and a worker on Redis takes priority 0 first
(``portal/routing.py``). Within one priority the queue stays first in, first out.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import Error as DatabaseError

from builds.models import ACTIVE_BUILD_STATES, Build

logger = logging.getLogger(__name__)


def build_queue_priority(*, build_id: str, lowest: int) -> int:
    """0 (first) to ``lowest``: how many of this build's team's active builds are ahead of it."""
    try:
        build = Build.objects.filter(pk=build_id).values("flavour__team_id", "created_at").first()
        if build is None:
            return 0
        ahead = Build.objects.filter(
            flavour__team_id=build["flavour__team_id"],
            state__in=ACTIVE_BUILD_STATES,
            created_at__lt=build["created_at"],
        ).count()
    except (DatabaseError, ValidationError):
        # Sending must not fail for want of a priority (a database blip, a malformed id).
        logger.warning("no queue priority for build %s; it goes first", build_id, exc_info=True)
        return 0
    return min(ahead, lowest)
