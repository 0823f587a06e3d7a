"""One policy against password guessing, for the sign-in page and ``POST /api/auth/token/``.

Every password check spends one attempt from two budgets: the username's (whoever tries it, so
spreading guesses over many addresses does not help) and the client address's (so trying many
usernames from one place does not help either). ``SIGNIN_FAILURES_PER_USER`` and
``SIGNIN_FAILURES_PER_ADDRESS`` failures within ``SIGNIN_LOCKOUT_SECONDS`` lock that username or
address for ``SIGNIN_LOCKOUT_SECONDS``: while locked, sign-in is refused *without checking the
password*, so a guess that happens to be right is refused too.

The budgets live in Django's default cache, which settings.py makes shared by every process (Redis
when ``REDIS_URL`` is set), so two gunicorn workers do not get two budgets. An attempt is reserved
(an atomic increment) before the password is checked, so concurrent guesses cannot overshoot the
limit on Redis; a successful sign-in gives its attempt back.

Unknown usernames are counted and refused exactly like real ones: the answers never tell whether
an account exists.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LOCKED_MESSAGE = (
    "Too many failed sign-in attempts for this account or from your address. "
    "Sign-in is paused; try again in {wait}."
)


class SignInLocked(Exception):
    """Sign-in is paused for this username or address; the password was not checked."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(LOCKED_MESSAGE.format(wait=_describe(retry_after)))

    @property
    def message(self) -> str:
        return str(self)


class SignInUnavailable(Exception):
    """The shared cache cannot be reached: sign-in is refused (fails closed) rather than unthrottled."""

    retry_after = 30
    message = "Sign-in is unavailable for a moment (the portal cannot reach its cache); try again shortly."


def _describe(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


def client_address(request: HttpRequest) -> str:
    """The address the request came from, as far as this deployment can know it.

    ``X-Forwarded-For`` is only believed when ``TRUSTED_PROXY_COUNT`` says that many reverse
    proxies of ours sit in front: each appends the address it received the request from, so the
    client is the entry that many places from the right. Entries further left were written by the
    client and are ignored. With no trusted proxy the TCP peer (``REMOTE_ADDR``) is the client.
    """
    address = request.META.get("REMOTE_ADDR", "")
    proxies = settings.TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",")]
        address = hops[-min(proxies, len(hops))]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64] or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        # One IPv6 host usually holds a whole /64: budget the /64, not each of its addresses.
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass(frozen=True)
class _Budget:
    key: str  # the cache key of the attempt counter; "<key>:locked" holds the lock's end
    limit: int


def _budgets(username: str, address: str) -> tuple[_Budget, _Budget]:
    # Hashed: usernames are arbitrary text, and the cache need not hold them in clear.
    user = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
    addr = hashlib.sha256(address.encode()).hexdigest()
    return (
        _Budget(f"signin:user:{user}", settings.SIGNIN_FAILURES_PER_USER),
        _Budget(f"signin:addr:{addr}", settings.SIGNIN_FAILURES_PER_ADDRESS),
    )


def _locked_until(budgets: tuple[_Budget, ...]) -> float | None:
    ends = cache.get_many([f"{b.key}:locked" for b in budgets]).values()
    return max(ends) if ends else None


def _lock(budget: _Budget, window: int) -> float:
    until = time.time() + window
    cache.add(f"{budget.key}:locked", until, timeout=window)  # an existing lock keeps its end
    return until


def _retry_after(until: float) -> int:
    return max(1, math.ceil(until - time.time()))


@contextmanager
def signin_attempt(request: HttpRequest, username: str) -> Iterator[Attempt]:
    """Reserve one password check for ``username`` from the request's address.

    Raises SignInLocked (before any password is checked) when either budget is spent, and
    SignInUnavailable when the cache cannot be reached. Inside the block check the password and
    call ``attempt.succeeded()`` if it was right; leaving the block otherwise records a failure.
    """
    window = settings.SIGNIN_LOCKOUT_SECONDS
    budgets = _budgets(username, client_address(request))
    try:
        until = _locked_until(budgets)
        if until is not None:
            raise SignInLocked(_retry_after(until))
        spent = [(budget, _spend(budget, window)) for budget in budgets]
        over = [budget for budget, count in spent if count > budget.limit]
        if over:  # concurrent attempts spent the last checks: lock now and refuse this one
            raise SignInLocked(_retry_after(max(_lock(budget, window) for budget in over)))
    except (RedisError, OSError) as exc:  # the file cache raises OSError
        log.warning("sign-in refused: the cache is unreachable (%s)", exc)
        raise SignInUnavailable from None
    attempt = Attempt()
    try:
        yield attempt
    finally:
        try:
            if attempt.ok:
                _give_back(*budgets, window=window)
            else:
                for budget, count in spent:
                    if count >= budget.limit:  # that was the last allowed failure
                        _lock(budget, window)
        except (RedisError, OSError) as exc:  # the password was checked: answer it, keep going
            log.warning("sign-in attempt not recorded: the cache is unreachable (%s)", exc)


def _spend(budget: _Budget, window: int) -> int:
    """Count one attempt; an atomic increment on Redis, so every process sees every attempt."""
    cache.add(budget.key, 0, timeout=window)
    try:
        count = cache.incr(budget.key)
    except ValueError:  # the counter expired between add and incr: a fresh window
        cache.add(budget.key, 1, timeout=window)
        return 1
    # Attempts are forgotten a window after the last one (incr keeps Redis's expiry, but the file
    # cache's incr rewrites the entry with the default timeout, so set it explicitly either way).
    cache.touch(budget.key, timeout=window)
    return count


def _give_back(user_budget: _Budget, address_budget: _Budget, *, window: int) -> None:
    # Knowing the password ends the guessing on this account; the address gets its attempt back.
    cache.delete(user_budget.key)
    try:
        cache.decr(address_budget.key)
        cache.touch(address_budget.key, timeout=window)
    except ValueError:
        pass  # the window ended meanwhile


class Attempt:
    ok = False

    def succeeded(self) -> None:
        self.ok = True
