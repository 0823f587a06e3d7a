"""The running side of a build's record: its named steps, state, progress, log, heartbeat and end.

``BuildSteps.step`` is how the director (``builds.director``) marks its steps; ``build_end`` is the
one way a build reaches a final state (and queues its webhooks).
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from builds import webhooks
from builds.cache_scopes import build_scope, flavour_scope
from builds.models import ACTIVE_BUILD_STATES, Build, BuildLogLine, BuildState, BuildStep
from portal import read_cache

logger = logging.getLogger(__name__)

# Order in which states advance (the active states are declared in that order); parallel bake
# tasks only ever move a build forward.
STATE_ORDER = list(ACTIVE_BUILD_STATES)
# The steps of every build, in order: the names its page, API and log show. Each moves the build
# to a state (never backwards) and the progress bar to where the step starts; bake fills 5-75%.
STEPS = {
    "plan": (BuildState.FETCHING, 2),
    "bake": (BuildState.FETCHING, 5),  # baking from the first stage past the download
    "compile": (BuildState.BAKING, 5),  # within bake, for recipes built from source
    "verify": (BuildState.VERIFYING, 76),
    "sign": (BuildState.SIGNING, 82),
    "prebake": (BuildState.BAKING, 84),  # only for flavours that ask for a pre-baked image
    "publish": (BuildState.PUBLISHING, 88),
    "notify": (BuildState.PUBLISHING, 98),
}
BAKE_SHARE = 70


class BuildCancelled(Exception):
    """Raised inside a running step when the build's cancel flag is seen."""


def heartbeat_interval() -> float:
    return float(settings.BUILD_HEARTBEAT_INTERVAL)


def log(build_id: Any, text: str, *, step_id: int | None = None) -> None:
    """Append a line to the build's log; ``seq`` is dense per build (tails use ``?after=``).

    ``step_id`` is the ``BuildStep`` that wrote it (the page folds the log per step). The text
    goes through ``scrub_worker_paths``: a user reads what happened, not where on the worker.

    The build's row is locked before the next number is taken, so writers queue on that one
    lock in the same order as every other build update. Taking the number first and locking
    the build afterwards deadlocked a cancel against a worker's progress update on PostgreSQL.
    """
    text = scrub_worker_paths(text)[:10000]
    for _ in range(20):
        try:
            with transaction.atomic():
                if not Build.objects.select_for_update().filter(pk=build_id).exists():
                    return  # the build is gone: nothing to log to
                last = (
                    BuildLogLine.objects.filter(build_id=build_id)
                    .order_by("-seq")
                    .values_list("seq", flat=True)
                    .first()
                )
                BuildLogLine.objects.create(
                    build_id=build_id, step_id=step_id, seq=(last or 0) + 1, text=text
                )
            return
        except IntegrityError:
            continue  # only without row locks (SQLite serialises writers anyway): take the next
    logger.warning("build %s: log line dropped after repeated seq conflicts: %s", build_id, text)


_PATH_END = r"[^\s'\"`:,;()\[\]<>]*"


def _worker_roots() -> list[str]:
    """Directories whose paths mean nothing to a user: the temporary, var, cache and store dirs."""
    roots = {tempfile.gettempdir(), "/tmp", "/var/tmp"}  # noqa: S108 (names to hide, not to use)
    for directory in (settings.VAR_DIR, settings.FETCH_CACHE_DIR, settings.ARTIFACT_DIR):
        roots.add(str(directory))
    return sorted((root.rstrip("/") for root in roots if root and root != "/"), key=len, reverse=True)


def scrub_worker_paths(text: str) -> str:
    """The last resort against worker paths in a build's log and error sentence: a path under a
    scratch, var, cache or store directory becomes its file name (``hello.raw``), or "the work
    directory" when only a directory is left. The steps themselves say what, not where; this
    catches what a tool printed (mksquashfs, gpg, an OSError)."""
    if "/" not in text:
        return text
    pattern = "|".join(re.escape(root) for root in _worker_roots())

    def name(match: re.Match[str]) -> str:
        whole = match.group(0)
        trailing = ""
        while whole and whole[-1] in ".":
            whole, trailing = whole[:-1], whole[-1] + trailing
        parts = [part for part in whole[len(match.group(1)) :].split("/") if part]
        while parts and (
            parts[-1].startswith(("bh-", "bakehouse-", "pytest-", "tmp")) or parts[-1] == "root"
        ):
            parts.pop()
        shown = parts[-1] if parts else "the work directory"
        return shown + trailing

    # Not inside a URL or a longer path (https://example.com/tmp/x stays as it is).
    return re.sub(rf"(?<![\w./:~-])({pattern})(?=/|\b|$)(?:/{_PATH_END})?", name, text)


def build_log(*, build_id: Any, text: str) -> None:
    log(build_id, text)


def advance(
    build_id: Any, state: str | None, *, step: str | None = None, progress: int | None = None
) -> None:
    """Move the build forward to ``state`` (never backwards; None: stay) and refresh its heartbeat."""
    now = timezone.now()
    if state is not None:
        earlier = STATE_ORDER[: STATE_ORDER.index(BuildState(state))]
        Build.objects.filter(pk=build_id, state__in=earlier).update(state=state)
    updates: dict[str, Any] = {"heartbeat_at": now}
    if step is not None:
        updates["current_step"] = step[:64]
    if progress is not None:
        updates["progress"] = Greatest(F("progress"), min(progress, 100))
    Build.objects.filter(pk=build_id, state__in=ACTIVE_BUILD_STATES).update(**updates)


class BuildSteps:
    """The named steps of one build: ``with steps.step("sign"):`` records the step (a
    ``BuildStep`` row with its timing and outcome), moves the build's state and progress bar, and
    checks the cancel flag before the step starts. Detail (which image, which file) goes to the
    log, never into the step's name.
    """

    def __init__(self, build_id: Any) -> None:
        self.build_id = build_id
        self._step_id: int | None = None
        self._failed_step_id: int | None = None

    @contextmanager
    def step(self, name: str, *, extension: str = "", cancellable: bool = True) -> Iterator[BuildStep]:
        """Run the block as step ``name`` (of ``extension`` for a per-image step); failed when it
        raises. ``cancellable=False`` for the steps after which stopping would leave a half-told
        story (notify). A name missing from ``STEPS`` is recorded and timed but moves neither the
        state nor the bar. Lines logged inside the block belong to the step."""
        state, progress = STEPS.get(name, (None, None))
        if cancellable:
            check_cancel(self.build_id)
        advance(self.build_id, state, step=name, progress=progress)
        row = BuildStep.objects.create(
            build_id=self.build_id, name=name, extension=extension[:100], started_at=timezone.now()
        )
        outer, self._step_id = self._step_id, row.pk
        try:
            yield row
        except BaseException as stopped:
            outcome = "cancelled" if isinstance(stopped, BuildCancelled) else "failed"
            BuildStep.objects.filter(pk=row.pk).update(finished_at=timezone.now(), outcome=outcome)
            self._failed_step_id = self._failed_step_id or row.pk
            raise
        finally:
            self._step_id = outer
        BuildStep.objects.filter(pk=row.pk).update(finished_at=timezone.now(), outcome=row.outcome or "ok")

    def progress(self, name: str, percent: int, *, state: str | None = None) -> None:
        """Move the progress bar (and the state, if given) within step ``name``; refresh the heartbeat."""
        advance(self.build_id, state or STEPS.get(name, (None, 0))[0], step=name, progress=percent)

    def check_cancel(self) -> None:
        check_cancel(self.build_id)

    def log(self, text: str) -> None:
        log(self.build_id, text, step_id=self._step_id)

    def log_to_failed_step(self, text: str) -> None:
        """A line about a failure (a tool's output), in the log of the step that failed."""
        log(self.build_id, text, step_id=self._step_id or self._failed_step_id)


def check_cancel(build_id: Any) -> None:
    row = Build.objects.filter(pk=build_id).values("cancel_requested", "state").first()
    if row is None or row["cancel_requested"] or row["state"] not in ACTIVE_BUILD_STATES:
        raise BuildCancelled()


def database_reconnect_if_broken() -> None:
    """Drop this thread's database connection if it failed, so the next query opens a new one.

    Not inside a transaction: there the connection must stay (an eager task in a test's atomic
    block; a real task is never in one when it reaches its error handling).
    """
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


class Heartbeat:
    """Touches ``heartbeat_at`` from a side thread while a task works.

    A step that runs for minutes without reporting (mksquashfs on a big tree) must not look
    like a dead worker; a worker that really died stops the thread with it.
    """

    def __init__(self, build_id: Any) -> None:
        self.build_id = build_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{build_id}", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(heartbeat_interval()):
                # A connection that failed (the server restarted or dropped it) is replaced here,
                # else every later beat would fail on it and the reaper would take a live build
                # for a dead worker's.
                close_old_connections()
                try:
                    Build.objects.filter(pk=self.build_id, state__in=ACTIVE_BUILD_STATES).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception:  # the next beat will try again; never kill the build over it
                    logger.exception("heartbeat of build %s failed", self.build_id)
        finally:
            connection.close()

    def __enter__(self) -> Heartbeat:
        Build.objects.filter(pk=self.build_id).update(
            heartbeat_at=timezone.now(), tasks_running=F("tasks_running") + 1
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # A worker that dies skips this, which is exactly what the reaper looks for. The block
        # may be leaving because the database connection dropped: reconnect and try once more,
        # so a retried task does not count itself twice.
        for attempt in (1, 2):
            try:
                Build.objects.filter(pk=self.build_id, tasks_running__gt=0).update(
                    tasks_running=F("tasks_running") - 1
                )
                return
            except (OperationalError, InterfaceError):
                if attempt == 2:
                    raise
                database_reconnect_if_broken()


def build_end(build: Build, state: str, *, code: str = "", message: str = "") -> bool:
    """Move an active build to a final state; False when it had already ended."""
    now = timezone.now()
    updates: dict[str, Any] = {"state": state, "finished_at": now, "current_step": ""}
    if state == BuildState.SUCCEEDED:
        updates["progress"] = 100
    if code:
        message = scrub_worker_paths(message)
        updates.update(error_code=code[:100], error_message=message)
    with transaction.atomic():
        changed = Build.objects.filter(pk=build.pk, state__in=ACTIVE_BUILD_STATES).update(**updates)
        if not changed:
            return False
        # update() sends no signal: the build's status and its flavour's latest files changed.
        read_cache.bump(build_scope(build.pk), flavour_scope(build.flavour_id))
        outcome = {BuildState.SUCCEEDED: "ok", BuildState.CANCELLED: "cancelled"}.get(
            BuildState(state), "failed"
        )
        BuildStep.objects.filter(build_id=build.pk, finished_at__isnull=True).update(
            finished_at=now, outcome=outcome
        )
        text = {
            BuildState.SUCCEEDED: "Build succeeded.",
            BuildState.CANCELLED: f"Build cancelled. {message}".strip(),
            BuildState.FAILED: f"Build failed: {code}: {message}",
        }[BuildState(state)]
        log(build.pk, text)
        build.refresh_from_db()
        webhooks.webhooks_queue(build)
    return True


def build_fail(*, build_id: Any, code: str, message: str) -> bool:
    """Fail a build that is still active (used by tasks that gave up retrying)."""
    build = Build.objects.select_related("flavour", "flavour__team").filter(pk=build_id).first()
    if build is None:
        return False
    return build_end(build, BuildState.FAILED, code=code, message=message)
