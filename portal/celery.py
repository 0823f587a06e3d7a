"""The Celery application. Tasks live in each app's tasks.py and only call services."""

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("bakehouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.celeryd_init.connect
def refuse_a_worker_without_the_shared_signing_key(**kwargs: Any) -> None:
    """A worker on a remote broker needs SIGNING_KEY_FILE (builds/adapters/signing_key.py)."""
    from builds.adapters.signing_key import SharedSigningKeyMissing, require_shared_signing_key

    try:
        require_shared_signing_key()
    except SharedSigningKeyMissing as problem:
        raise SystemExit(f"Bakehouse worker refused to start: {problem}") from None
