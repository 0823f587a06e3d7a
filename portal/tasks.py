"""Portal-wide Celery tasks."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from celery import shared_task
from django.conf import settings

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def ping_file(token: str) -> Path:
    if not _TOKEN_RE.match(token):
        raise ValueError(f"ping token {token!r} must be 1-64 letters, digits, '-' or '_'")
    return Path(settings.VAR_DIR) / "pings" / token


@shared_task(name="portal.ping")
def ping(token: str) -> None:
    """Prove that a worker consumes the queue: write ``VAR_DIR/pings/TOKEN`` with its host name.

    Used by smoke tests of ``runportal`` and deployments (the file appears only where the worker
    shares ``VAR_DIR`` with the sender).
    """
    path = ping_file(token)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(socket.gethostname() + "\n")
