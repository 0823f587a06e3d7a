"""``manage.py runportal``: the web server, a Celery worker and beat, supervised together.

The embedded default (README's ``make run``) needs no service manager: this command starts the
three as child processes with the same environment, so they share the configuration, restarts
one that dies (with a growing delay, and a log line saying so), and stops them all when it is
asked to stop (Ctrl-C, SIGTERM). A child that cannot even start (it exits within seconds, five
times in a row) is a configuration problem: then everything stops with that child's status.
Children run in their own sessions so that a terminal's Ctrl-C reaches them once, through us,
and they are told to exit if this process is killed outright.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.routing import queue_names

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: children just outlive a SIGKILLed parent


# A child that lived this long before dying was running fine: its next restart starts over.
HEALTHY_AFTER = 30.0
# Restarts of a child that keeps dying at once before runportal gives up.
MAX_QUICK_RESTARTS = 5
BACKOFF_MAX = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes]
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)  # the worker's pool processes too
        except ProcessLookupError:
            pass


class Command(BaseCommand):
    help = "Run the portal: web server (gunicorn) plus a Celery worker and beat, as child processes."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="HOST:PORT to serve on (127.0.0.1:8000)")
        parser.add_argument("--no-worker", action="store_true", help="web server only (no worker, no beat)")
        parser.add_argument("--no-beat", action="store_true", help="no periodic tasks (heartbeat reaper...)")
        parser.add_argument(
            "--server", choices=["gunicorn", "django"], default="gunicorn", help="web server (gunicorn)"
        )
        parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (2)")
        parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes (2)")
        parser.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="seconds children get to finish before being killed (30)",
        )
        parser.add_argument(
            "--no-collectstatic", action="store_true", help="do not collect static files first"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        addr: str = options["addr"]
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise CommandError(f"--addr must be HOST:PORT, got {addr!r}")
        if not options["no_worker"]:
            from builds.adapters.signing_key import SharedSigningKeyMissing, require_shared_signing_key

            try:
                require_shared_signing_key()
            except SharedSigningKeyMissing as problem:
                raise CommandError(str(problem)) from None
        if not options["no_collectstatic"]:
            # whitenoise serves STATIC_ROOT; without collectstatic the pages would have no CSS.
            call_command("collectstatic", interactive=False, verbosity=0)

        commands: list[tuple[str, list[str]]] = [("web", self._web_command(addr, options))]
        if not options["no_worker"]:
            celery = [sys.executable, "-m", "celery", "-A", "portal"]
            # Every queue (portal/routing.py): one machine does all the work.
            queues = ",".join(queue_names(settings.CELERY_TASK_DEFAULT_QUEUE))
            worker = [*celery, "worker", "--loglevel", "INFO", "--concurrency", str(options["concurrency"])]
            commands.append(("worker", [*worker, "-Q", queues]))
            if not options["no_beat"]:
                schedule = str(settings.VAR_DIR / "celerybeat-schedule")
                commands.append(("beat", [*celery, "beat", "--loglevel", "INFO", "--schedule", schedule]))

        stop_requested: list[int] = []

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop_requested.append(signum)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, request_stop)

        children: list[Child] = []
        failed: Child | None = None
        try:
            for name, argv in commands:
                children.append(Child(name, argv, self._spawn(name, argv), started_at=time.monotonic()))
            self.stdout.write(f"runportal: serving on http://{addr}/ (Ctrl-C stops everything)")
            self.stdout.flush()
            while not stop_requested and failed is None:
                failed = self._supervise(children)
                time.sleep(0.2)
        finally:
            self._stop(children, options["grace"])
        if failed is not None:
            raise CommandError(
                f"{failed.name} exited with status {failed.process.returncode} "
                f"{failed.quick_failures} times in a row right after starting; stopped the others"
            )
        self.stdout.write("runportal: stopped")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            argv, cwd=settings.BASE_DIR, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.stdout.write(f"runportal: started {name} (pid {process.pid})")
        self.stdout.flush()
        return process

    def _supervise(self, children: list[Child]) -> Child | None:
        """Restart children that died, after a delay; the child that keeps failing at start, if any."""
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    child.started_at = now
                    child.process = self._spawn(child.name, child.argv)
                continue
            status = child.process.poll()
            if status is None:
                continue
            child.signal_group(signal.SIGKILL)  # pool processes the dead leader left behind
            lived = now - child.started_at
            child.quick_failures = child.quick_failures + 1 if lived < HEALTHY_AFTER else 1
            if child.quick_failures >= MAX_QUICK_RESTARTS:
                return child
            delay = min(2.0 ** (child.quick_failures - 1), BACKOFF_MAX)
            self.stderr.write(
                f"runportal: {child.name} (pid {child.pid}) exited with status {status} after "
                f"{lived:.0f}s; restarting it in {delay:g}s"
            )
            self.stderr.flush()
            child.restart_at = now + delay
        return None

    def _web_command(self, addr: str, options: dict[str, Any]) -> list[str]:
        if options["server"] == "django":
            return [sys.executable, str(settings.BASE_DIR / "manage.py"), "runserver", "--noreload", addr]
        return [
            sys.executable, "-m", "gunicorn", "portal.wsgi:application",
            "--bind", addr, "--workers", str(options["web_workers"]), "--access-logfile", "-",
            "--graceful-timeout", str(int(options["grace"])),
        ]  # fmt: skip

    def _stop(self, children: list[Child], grace: float) -> None:
        running = [c for c in children if c.process.poll() is None]
        for child in running:
            self.stdout.write(f"runportal: stopping {child.name} (pid {child.pid})")
            # To the leader only: it stops its own pool (Celery: warm shutdown; gunicorn: graceful).
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"runportal: {child.name} did not stop within {grace:g}s; killing it")
                child.signal_group(signal.SIGKILL)
                child.process.wait()
        for child in children:
            child.signal_group(signal.SIGKILL)  # leftovers of a group whose leader already exited
        self.stdout.flush()
