"""Password guessing is throttled per username and per address, across processes (issue 10, hole 9).

The sign-in page and ``POST /api/auth/token/`` spend the same budgets (portal.signin_throttle),
kept in the shared cache: the proof runs two separate gunicorn processes on the test database and
the real Redis, so a per-process count would let twice the guesses through.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

REPO = Path(__file__).resolve().parents[1]
TOKEN_URL = "/api/auth/token/"
SIGNIN_URL = "/signin/"
PASSWORD = "correct horse battery"
LOCKED = "Too many failed sign-in attempts"


@pytest.fixture
def fast_hasher(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, not security


@pytest.fixture
def limits(settings, fast_hasher) -> Callable[..., None]:
    def set_limits(*, per_user: int = 100, per_address: int = 100, seconds: int = 900) -> None:
        settings.SIGNIN_FAILURES_PER_USER = per_user
        settings.SIGNIN_FAILURES_PER_ADDRESS = per_address
        settings.SIGNIN_LOCKOUT_SECONDS = seconds

    return set_limits


def _token(username: str, password: str, address: str = "10.0.0.1", **headers: str):
    return Client(REMOTE_ADDR=address, **headers).post(
        TOKEN_URL, {"username": username, "password": password}, content_type="application/json"
    )


def _sign_in(client: Client, username: str, password: str):
    return client.post(SIGNIN_URL, {"username": username, "password": password})


def test_token_endpoint_refuses_even_the_right_password_once_the_user_budget_is_spent(limits) -> None:
    limits(per_user=3)
    User.objects.create_user("alice", password=PASSWORD)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):  # other addresses do not help
        assert _token("alice", "guess", address).status_code == 400
    locked = _token("alice", PASSWORD, "10.0.0.4")
    assert locked.status_code == 429
    assert locked.json()["code"] == "throttled"
    assert LOCKED in locked.json()["message"]
    assert "token" not in locked.json()
    assert 1 <= int(locked["Retry-After"]) <= 900


def test_signin_page_refuses_even_the_right_password_once_the_user_budget_is_spent(limits) -> None:
    limits(per_user=3)
    User.objects.create_user("alice", password=PASSWORD)
    browser = Client(REMOTE_ADDR="10.0.0.1")
    for _ in range(3):
        wrong = _sign_in(browser, "alice", "guess")
        assert wrong.status_code == 200
        assert b"Please enter a correct username and password" in wrong.content
    locked = _sign_in(browser, "alice", PASSWORD)
    assert locked.status_code == 429
    assert LOCKED.encode() in locked.content
    assert int(locked["Retry-After"]) >= 1
    assert "_auth_user_id" not in browser.session
    assert browser.get("/").status_code == 302  # still signed out


def test_the_admin_sign_in_spends_the_same_budget(limits) -> None:
    limits(per_user=3)
    User.objects.create_superuser("root", password=PASSWORD)
    admin = Client(REMOTE_ADDR="10.0.0.1")
    for _ in range(2):
        assert _token("root", "guess").status_code == 400
    wrong = admin.post("/admin/login/", {"username": "root", "password": "guess"})
    assert b"Please enter the correct username and password" in wrong.content
    locked = admin.post("/admin/login/", {"username": "root", "password": PASSWORD})
    assert LOCKED.encode() in locked.content
    assert "_auth_user_id" not in admin.session
    assert admin.get("/admin/").status_code == 302  # to the login page


def test_unknown_and_real_usernames_are_answered_alike(limits) -> None:
    limits(per_user=2)
    User.objects.create_user("alice", password=PASSWORD)
    answers = {}
    for name in ("alice", "nobody"):
        first = [_token(name, "guess", f"10.0.1.{i}") for i in range(3)]
        answers[name] = [(r.status_code, r.json()["code"]) for r in first]
    assert (
        answers["alice"]
        == answers["nobody"]
        == [
            (400, "invalid-credentials"),
            (400, "invalid-credentials"),
            (429, "throttled"),
        ]
    )


def test_the_address_budget_covers_every_username_tried_from_it(limits) -> None:
    limits(per_user=100, per_address=4)
    User.objects.create_user("carol", password=PASSWORD)
    for name in ("alice", "bob", "dave", "erin"):
        assert _token(name, "guess", "192.0.2.7").status_code == 400
    assert _token("carol", PASSWORD, "192.0.2.7").status_code == 429  # carol never failed herself
    assert _sign_in(Client(REMOTE_ADDR="192.0.2.7"), "carol", PASSWORD).status_code == 429
    assert _token("carol", PASSWORD, "192.0.2.8").status_code == 200  # her own address is fine
    # One IPv6 host owns a /64: its addresses share one budget.
    for host in range(1, 5):
        assert _token("nobody", "guess", f"2001:db8:1:2::{host}").status_code == 400
    assert _token("carol", PASSWORD, "2001:db8:1:2::99").status_code == 429


def test_x_forwarded_for_counts_only_behind_a_trusted_proxy(limits, settings) -> None:
    limits(per_user=100, per_address=2)
    User.objects.create_user("carol", password=PASSWORD)
    # No trusted proxy: a client writing a new X-Forwarded-For each time still spends its own budget.
    for n in range(2):
        assert _token("x", "guess", "198.51.100.1", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code == 400
    assert _token("carol", PASSWORD, "198.51.100.1", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 429

    # Behind one proxy (REMOTE_ADDR is the proxy), the entry it appended is the client; what the
    # client wrote further left is ignored.
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = "10.9.9.9"
    for n in range(2):
        forwarded = f"203.0.113.{n}, 198.51.100.50"
        assert _token("x", "guess", proxy, HTTP_X_FORWARDED_FOR=forwarded).status_code == 400
    assert _token("carol", PASSWORD, proxy, HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.50").status_code == 429
    assert _token("carol", PASSWORD, proxy, HTTP_X_FORWARDED_FOR="198.51.100.51").status_code == 200


def test_a_successful_sign_in_ends_the_guessing_count_of_that_user(limits) -> None:
    limits(per_user=3)
    User.objects.create_user("alice", password=PASSWORD)
    for _ in range(2):
        assert _token("alice", "typo").status_code == 400
    assert _token("alice", PASSWORD).status_code == 200
    for _ in range(2):
        assert _token("alice", "typo").status_code == 400
    assert _token("alice", PASSWORD).status_code == 200  # 4 typos in all, but never 3 in a row


@pytest.fixture
def own_redis(tmp_path) -> Iterator[Callable[[], subprocess.Popen]]:
    """``start()`` runs a redis-server of this test's own (never the shared one) on a fixed port."""
    port = _free_port()
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        argv = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        process = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.1)

    start.url = f"redis://127.0.0.1:{port}/0"  # type: ignore[attr-defined]
    yield start
    for process in started:
        process.kill()
        process.wait()


def test_an_unreachable_cache_refuses_sign_in_with_a_clear_answer(limits, settings, own_redis) -> None:
    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server (apt-get install redis-server)")
    limits(per_user=3)
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": own_redis.url,
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
    User.objects.create_user("alice", password=PASSWORD)
    redis = own_redis()
    assert _token("alice", PASSWORD).status_code == 200
    redis.kill()
    redis.wait()
    down = _token("alice", PASSWORD)
    assert down.status_code == 503  # fails closed: not a 500, and not an unthrottled check either
    assert down.json()["code"] == "signin.unavailable"
    assert down["Retry-After"]
    page = _sign_in(Client(REMOTE_ADDR="10.0.0.1"), "alice", PASSWORD)
    assert page.status_code == 503
    assert b"Sign-in is unavailable for a moment" in page.content
    own_redis()  # back (empty): sign-in works again without a restart of the portal
    assert _token("alice", PASSWORD).status_code == 200


# --- two processes, one budget ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _test_database_url() -> str:
    if connection.vendor != "postgresql" or not os.environ.get("DATABASE_URL"):
        pytest.skip("two web processes share the test database only on PostgreSQL: set DATABASE_URL")
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.fixture
def two_web_processes(transactional_db, settings, tmp_path) -> Iterator[Callable[..., list[str]]]:
    """``start(**env)`` runs two separate gunicorn servers on the test database; returns their URLs."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("the shared throttle is proven on the real Redis: set REDIS_URL")
    database_url = _test_database_url()
    processes: list[tuple[subprocess.Popen, Path]] = []

    def start(**extra_env: str) -> list[str]:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],  # this test's own keys
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        # Port 0: the kernel picks a free port, read back from gunicorn's log (no race with others).
        argv = [
            sys.executable, "-m", "gunicorn", "portal.wsgi:application",
            "--bind", "127.0.0.1:0", "--workers", "1", "--timeout", "60",
        ]  # fmt: skip
        for n in range(2):
            log = tmp_path / f"gunicorn-{n}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            processes.append((process, log))
        urls = []
        for process, log in processes:
            deadline = time.monotonic() + 60
            while not (listening := re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text())):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start:\n{log.read_text()[-4000:]}")
                time.sleep(0.2)
            url = listening.group(1)
            while True:
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn does not answer:\n{log.read_text()[-4000:]}")
                time.sleep(0.2)
            urls.append(url)
        return urls

    yield start
    for process, log in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-5000:]}")  # shown on failure


class _Web:
    """Sign-in through the page (with its CSRF token) or the token endpoint of one server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def token(self, username: str, password: str) -> requests.Response:
        return requests.post(
            f"{self.url}{TOKEN_URL}", json={"username": username, "password": password}, timeout=60
        )

    def sign_in(self, username: str, password: str) -> requests.Response:
        session = requests.Session()
        page = session.get(f"{self.url}{SIGNIN_URL}", timeout=60)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert csrf, page.text[:500]
        return session.post(
            f"{self.url}{SIGNIN_URL}",
            data={"username": username, "password": password, "csrfmiddlewaretoken": csrf.group(1)},
            allow_redirects=False,
            timeout=60,
        )


def _refused(response: requests.Response) -> bool:
    return response.status_code == 429 and LOCKED in response.text


def test_two_web_processes_share_one_budget_per_user_and_per_address(two_web_processes) -> None:
    per_user, per_address, seconds = 3, 5, 10  # 10 s: slow password hashes stay inside
    User.objects.create_user("alice", password=PASSWORD)  # the real (slow) hasher, as the servers use
    User.objects.create_user("bob", password=PASSWORD)
    a, b = (
        _Web(url)
        for url in two_web_processes(
            SIGNIN_FAILURES_PER_USER=str(per_user),
            SIGNIN_FAILURES_PER_ADDRESS=str(per_address),
            SIGNIN_LOCKOUT_SECONDS=str(seconds),
        )
    )
    # Guesses alternate between the two processes and between the page and the API.
    guesses = [a.sign_in, b.token, a.token, b.sign_in] * 3
    answered, seen = 0, []
    for guess in guesses:
        response = guess("alice", f"guess-{answered}")
        seen.append((guess.__name__, response.status_code, time.monotonic()))
        if _refused(response):
            break
        assert response.status_code in {200, 400}, response.text[:300]
        answered += 1
    assert answered == per_user, seen  # not per_user for each process

    # Locked: the right password is refused on both processes, through both doors.
    token = b.token("alice", PASSWORD)
    assert _refused(token)
    assert token.json()["code"] == "throttled"
    retry_after = int(token.headers["Retry-After"])
    assert 1 <= retry_after <= seconds
    page = a.sign_in("alice", PASSWORD)
    assert _refused(page)
    assert "sessionid" not in page.cookies

    # The address spent 3 of its 5 on alice: bob, never locked himself, gets 2 more tries.
    assert b.token("bob", "guess").status_code == 400
    assert a.sign_in("bob", "guess").status_code == 200
    assert _refused(b.token("bob", PASSWORD))
    assert _refused(a.sign_in("nobody-at-all", "guess"))  # the same answer for a name that does not exist

    # The locks end: the right password works again on both.
    time.sleep(seconds + 0.5)
    assert b.token("alice", PASSWORD).status_code == 200
    signed_in = a.sign_in("bob", PASSWORD)
    assert signed_in.status_code == 302, signed_in.text[:300]
    assert "sessionid" in signed_in.cookies
