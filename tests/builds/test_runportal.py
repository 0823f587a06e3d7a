"""`manage.py runportal` runs the web server with a real Celery worker and beat, restarts one that
dies, and stops them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 90.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(
        alive(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(int(p.name)) == pgid
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """The embedded defaults in a private VAR_DIR: SQLite, filesystem broker, local store."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("S3_", "DATABASE_URL", "REDIS_URL", "CELERY_", "ARTIFACT_DIR"))
    }
    env["BAKEHOUSE_VAR_DIR"] = str(tmp_path / "var")
    env["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    return env


def test_runportal_serves_runs_tasks_on_a_real_worker_and_stops_everything(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "runportal.log").open("w+")
    portal = subprocess.Popen(
        [sys.executable, "manage.py", "runportal", "--addr", f"127.0.0.1:{port}", "--concurrency", "1",
         "--web-workers", "1", "--grace", "20"],
        cwd=ROOT, env=embedded_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, "the web server")
        started = dict(re.findall(r"runportal: started (\w+) \(pid (\d+)\)", Path(log.name).read_text()))
        assert set(started) == {"web", "worker", "beat"}
        pids = {name: int(pid) for name, pid in started.items()}

        # A task sent by another process reaches the worker through the filesystem broker.
        token = uuid.uuid4().hex
        send = f"from portal.tasks import ping; ping.delay('{token}')"
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", send],
            cwd=ROOT, env=embedded_env, check=True, timeout=120, capture_output=True,
        )  # fmt: skip
        ping_file = Path(embedded_env["BAKEHOUSE_VAR_DIR"]) / "pings" / token
        wait_for(ping_file.exists, "the worker to run the ping task")
        assert ping_file.read_text().strip() == socket.gethostname()

        # Static files are collected, so the pages have their assets without DEBUG.
        assert Path(embedded_env["BAKEHOUSE_VAR_DIR"], "staticfiles").is_dir()

        portal.send_signal(signal.SIGTERM)
        assert portal.wait(timeout=90) == 0
        for name, pid in pids.items():
            assert not group_alive(pid), f"{name} (pid {pid}) or one of its processes is still running"
        output = Path(log.name).read_text()
        assert "runportal: stopped" in output
    finally:
        if portal.poll() is None:
            os.killpg(portal.pid, signal.SIGKILL)
            portal.wait()
        log.close()


def test_runportal_restarts_a_child_that_dies_and_keeps_the_others(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "runportal.log").open("w+")
    portal = subprocess.Popen(
        [sys.executable, "manage.py", "runportal", "--addr", f"127.0.0.1:{port}", "--concurrency", "1",
         "--web-workers", "1", "--no-beat", "--no-collectstatic", "--grace", "20"],
        cwd=ROOT, env=embedded_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip

    def started() -> list[tuple[str, int]]:
        found = re.findall(r"runportal: started (\w+) \(pid (\d+)\)", Path(log.name).read_text())
        return [(name, int(pid)) for name, pid in found]

    try:
        wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200, "the web server")
        web_pid = dict(started())["web"]
        first_worker = dict(started())["worker"]
        os.killpg(first_worker, signal.SIGKILL)  # the worker dies (OOM killer, a crash)

        wait_for(lambda: len([n for n, _ in started() if n == "worker"]) == 2, "the worker's restart")
        assert f"worker (pid {first_worker}) exited" in Path(log.name).read_text()
        assert "restarting it in" in Path(log.name).read_text()
        assert portal.poll() is None, Path(log.name).read_text()
        assert alive(web_pid), "the web server was stopped with the worker"
        assert _get(f"http://127.0.0.1:{port}/healthz") == 200

        # The new worker consumes the queue.
        token = uuid.uuid4().hex
        send = f"from portal.tasks import ping; ping.delay('{token}')"
        subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", send],
            cwd=ROOT, env=embedded_env, check=True, timeout=120, capture_output=True,
        )  # fmt: skip
        wait_for((Path(embedded_env["BAKEHOUSE_VAR_DIR"]) / "pings" / token).exists, "the restarted worker")

        portal.send_signal(signal.SIGTERM)  # still stops everything
        assert portal.wait(timeout=90) == 0
        for name, pid in started():
            assert not group_alive(pid), f"{name} (pid {pid}) is still running"
    finally:
        if portal.poll() is None:
            os.killpg(portal.pid, signal.SIGKILL)
            portal.wait()
        log.close()


def test_runportal_stops_everything_when_a_child_cannot_start(
    embedded_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with socket.socket() as blocker:  # the port is taken: the web server cannot start
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = subprocess.run(
            [sys.executable, "manage.py", "runportal", "--addr", f"127.0.0.1:{port}", "--no-beat",
             "--concurrency", "1", "--no-collectstatic", "--grace", "20"],
            cwd=ROOT, env=embedded_env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert result.returncode != 0
    # Restarted with a growing delay first, then given up on as a configuration problem.
    assert result.stderr.count("runportal: web (pid") == 4, result.stderr
    assert "restarting it in 8s" in result.stderr
    assert "web exited with status" in result.stderr and "times in a row" in result.stderr
    worker_pid = int(re.search(r"started worker \(pid (\d+)\)", result.stdout).group(1))  # type: ignore[union-attr]
    assert not group_alive(worker_pid)


def test_runportal_rejects_a_bad_address(embedded_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "runportal", "--addr", "8000", "--no-collectstatic"],
        cwd=ROOT, env=embedded_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--addr must be HOST:PORT" in result.stderr


def _get(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None
