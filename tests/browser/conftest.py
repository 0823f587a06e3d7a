"""The browser harness: Debian's Chromium driven by Playwright against Django's live server.

Every test that takes ``page`` gets a fresh browser context; ``snap(page, name)`` saves a
full-page screenshot under ``test-artifacts/screenshots/`` so a reviewer can look at each page.
Tests that build take ``celery_worker_process``: a real worker process on the test database.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from portal.routing import queue_names
from tests.builds.build_support import shared_signing_key
from tests.factories import PASSWORD

__all__ = ["PASSWORD"]  # every user of the cast signs in with it (tests/factories.py)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's Chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an asyncio loop in this thread; Django then refuses ORM calls
    # from it unless told they are really synchronous (they are: the loop only drives the browser).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(chromium, live_server) -> Iterator[object]:
    """A fresh, signed-out browser tab on the live server (laptop-sized viewport)."""
    context = chromium.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    # Printed by pytest only when the test fails: what the page's JavaScript complained about.
    tab.on("console", lambda message: print(f"[console.{message.type}] {message.text}"))
    tab.on("pageerror", lambda error: print(f"[pageerror] {error}"))
    yield tab
    context.close()


@pytest.fixture
def snap(request) -> Callable[[object, str], Path]:
    """Save a full-page screenshot named after the test and the page shown."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)

    def save(tab, name: str) -> Path:
        path = SCREENSHOTS / f"{test_name}--{name}.png"
        tab.screenshot(path=str(path), full_page=True)
        return path

    return save


def sign_in(tab, username: str, password: str = PASSWORD) -> None:
    """Sign in through the real form, as a person would."""
    tab.goto("/signin/")
    tab.get_by_label("Username").fill(username)
    tab.get_by_label("Password").fill(password)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url(re.compile(r"/$"))


def _database_url_for_worker() -> str:
    """The URL of the database the tests use right now (the test database, not the configured one)."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip(
            "a real Celery worker shares the test database only on PostgreSQL: set DATABASE_URL=postgres://..."
        )
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def _route_tasks_to(queue: str) -> None:
    """Send this process's tasks (the live server's) to ``queue``; Celery caches its routing."""
    from portal.celery import app

    app.conf.task_default_queue = queue
    for cached in ("router", "queues", "default_queue"):
        app.amqp.__dict__.pop(cached, None)


@pytest.fixture
def celery_worker_process(transactional_db, settings, tmp_path) -> Iterator[Callable[..., None]]:
    """Start a real ``celery worker`` process on the test database and the configured Redis.

    Returns ``start(**env)``: extra environment (UPSTREAM_MIRRORS, ARTIFACT_DIR...) must match what
    the test sets in-process, so call it after preparing settings. Tasks go to a queue of this test's
    own, so no other worker on the same Redis takes them. The worker is stopped at teardown.
    """
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("the build flow in the browser needs a real broker: set REDIS_URL=redis://...")
    if shutil.which("mksquashfs") is None:
        pytest.skip("baking needs mksquashfs (apt-get install squashfs-tools)")
    from portal.celery import app

    database_url = _database_url_for_worker()  # skips unless the test database is PostgreSQL
    processes: list[subprocess.Popen] = []
    log_path = tmp_path / "celery-worker.log"
    queue = f"bh-browser-{uuid.uuid4().hex[:10]}"
    previous_queue = app.conf.task_default_queue
    _route_tasks_to(queue)

    def start(**extra_env: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "CELERY_TASK_DEFAULT_QUEUE": queue,  # what the worker queues itself stays on our queue
            "PYTHONUNBUFFERED": "1",
            # A worker on a real broker refuses to start without a configured (shared) key.
            "SIGNING_KEY_FILE": os.environ.get("SIGNING_KEY_FILE") or str(shared_signing_key(tmp_path)),
            **extra_env,
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "portal", "worker", "-n", f"{queue}@%h",
            "-Q", ",".join(queue_names(queue)),
            "--loglevel=INFO", "--concurrency=2",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        processes.append(process)
        deadline = time.monotonic() + 90
        while b" ready." not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)

    yield start
    _route_tasks_to(previous_queue)
    if log_path.exists():
        # Shown by pytest only when the test failed: what the worker did.
        print(f"--- celery worker log ({log_path}) ---\n{log_path.read_text(errors='replace')[-20000:]}")
    for process in processes:
        # The worker and its prefork children are one process group of their own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
