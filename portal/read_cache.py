"""Cached API reads: a repeated GET with the same credentials is answered from the shared cache,
without running the view or asking the database.

CI pipelines and dashboards poll the same few resources (the catalog, a flavour, its Butane
config, a finished build) many times a second; each answer costs Django and DRF tens of
milliseconds of CPU, and the Butane download an S3 round trip. Those answers change only when
somebody changes the data behind them, so they are kept (``ENTRY_SECONDS`` at most) and thrown
away as soon as that data changes.

How a view takes part: it mixes in ``CachedRead`` and names the *scopes* its answer depends on
(``read_cache_scopes``). Every scope has a generation, a random token in the cache. The view
reads the generations of its scopes before it authenticates the request or reads a row, and its
answer is stored with them. A stored answer is served only while every generation is unchanged.
A write changes the generation of every scope it touches (``bump``): at once, and again when its
transaction commits, so an answer computed from the old rows between the two is thrown away too.
Reading the generations before authentication matters: a token or membership removed while a
request is answered leaves that answer under the old generation, never served again. A scope
gets its first generation only once a view has answered 200 (``claim_generations``), so strangers
and made-up IDs in URLs write nothing to the cache.

Scopes: ``DATA`` covers everything but build progress (catalog, teams, members, tokens, users,
flavours, webhooks); any save or delete of those models bumps it (``connect_data_models``).
Builds have scopes of their own (``builds.cache_scopes``), so a running build's heartbeats and steps do
not throw away the catalog. What changes rows with ``QuerySet.update`` (which sends no signal)
bumps explicitly. A view may keep an answer for less than ``ENTRY_SECONDS``: a running build's
status is kept a second (its progress moves by ``update()`` many times a minute; polling clients
see it at most a second late, and the build's end at once, since ``build_end`` bumps).

What is never cached: anything but GET, a request without an ``Authorization`` header or with a
cookie (the browser's session, CSRF), a status other than 200, a streamed or large body, a
response that sets a cookie, or more than ``STORED_BYTES_PER_MINUTE`` of answers per token (the
cache is the broker's Redis). The key is the request's path, query, host, scheme, proxy headers,
credentials and content negotiation, so one user's answer is never another's. If the cache is
unreachable, requests are answered as if nothing were cached.

Hits are answered by ``serve_cached_reads`` around the WSGI application (before Django builds a
request: a cached answer costs a fraction of a millisecond) and by ``ReadCacheMiddleware`` (the
first middleware, for anything else that runs Django: tests, ASGI), which also stores answers.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from django.apps import apps
from django.core.cache import caches
from django.core.handlers.wsgi import get_path_info, get_script_name
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

logger = logging.getLogger(__name__)

DATA = "data"
# Longest an answer is kept, whatever happens: the bound on staleness that no signal can cover
# (published files deleted from the store behind our back are rechecked after this long too).
ENTRY_SECONDS = 60
# A generation outlives every answer stored under it; one that expired is simply new (a miss),
# so builds' scopes do not pile up in the cache.
GENERATION_SECONDS = 10 * ENTRY_SECONDS
MAX_BODY_BYTES = 1024 * 1024
# What one set of credentials may store per minute (see _within_budget); answers live a minute,
# so this is about what each token can hold in the cache at once.
STORED_BYTES_PER_MINUTE = 8 * 1024 * 1024
# What each process keeps of the answers it served lately (see _RecentEntries).
RECENT_BYTES = 16 * 1024 * 1024
# Tells operators (and tests) whether an answer came from the cache.
STATUS_HEADER = "X-Bakehouse-Cache"
# The request headers an answer may depend on (besides path and query): who asks, what they
# accept, and where they came through. Anything else (User-Agent, X-Forwarded-For) does not
# change an API answer here.
_KEYED_META = (
    "QUERY_STRING", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT",
    "wsgi.url_scheme", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT",
    "HTTP_AUTHORIZATION", "HTTP_ACCEPT", "HTTP_ACCEPT_ENCODING", "HTTP_ACCEPT_LANGUAGE",
)  # fmt: skip
# Writes to these apps never bump DATA: nothing a cached answer shows comes from them.
_NOT_DATA = {"sessions", "admin", "contenttypes"}


def _cache() -> Any:
    return caches["default"]


def _digest(text: str) -> str:
    """A fixed-length key part for text a client chose (an ID from the URL, a token)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _generation_key(scope: str) -> str:
    return "read-cache:generation:" + _digest(scope)


def generations(scopes: Iterable[str]) -> dict[str, str | None] | None:
    """The current generation of each scope (None: it has none yet); None if the cache fails.

    Nothing is written here: this runs before the request is authenticated, and a stranger must
    not be able to fill the cache with generations of made-up IDs (``claim_generations``)."""
    keys = {_generation_key(scope): scope for scope in scopes}
    try:
        found = _cache().get_many(list(keys))
    except Exception:
        logger.warning("read cache unreachable: answering without it", exc_info=True)
        return None
    return {scope: found.get(key) for key, scope in keys.items()}


def claim_generations(read: dict[str, str | None]) -> dict[str, str] | None:
    """``read`` with a generation for each scope that had none, or None (do not store the answer).

    Called once a view has answered 200. A scope still without a generation gets one; if another
    process gave it one since ``read`` (a write bumped it), the answer may predate that write, so
    it is not stored."""
    claimed: dict[str, str] = {}
    try:
        for scope, generation in read.items():
            if generation is None:
                generation = uuid.uuid4().hex
                if not _cache().add(_generation_key(scope), generation, timeout=GENERATION_SECONDS):
                    return None
            claimed[scope] = generation
    except Exception:
        logger.warning("read cache unreachable: answer not stored", exc_info=True)
        return None
    return claimed


def bump(*scopes: str) -> None:
    """Throw away every stored answer that depends on ``scopes``: now and when the transaction
    commits (see the module docstring)."""
    if not scopes:
        return

    def apply() -> None:
        try:
            generations = {_generation_key(scope): uuid.uuid4().hex for scope in scopes}
            _cache().set_many(generations, timeout=GENERATION_SECONDS)
        except Exception:
            # Answers stored before stay at most ENTRY_SECONDS; the write itself must not fail.
            logger.warning("read cache unreachable: could not invalidate %s", scopes, exc_info=True)

    apply()
    transaction.on_commit(apply)


def connect_data_models(*, scoped: Iterable[type]) -> None:
    """Bump DATA on every save, delete and many-to-many change of every model, but ``scoped``
    ones (they bump scopes of their own) and those of ``_NOT_DATA`` apps."""
    skipped = set(scoped)
    for model in apps.get_models():
        if model in skipped or model._meta.app_label in _NOT_DATA:
            continue
        uid = f"read-cache-data-{model._meta.label}"
        post_save.connect(_bump_data, sender=model, dispatch_uid=uid + "-save")
        post_delete.connect(_bump_data, sender=model, dispatch_uid=uid + "-delete")
    m2m_changed.connect(_bump_data, dispatch_uid="read-cache-data-m2m")


def _bump_data(sender: Any, **kwargs: Any) -> None:
    bump(DATA)


def connect_scoped(model: type, scopes_of: Callable[[Any], Iterable[str]]) -> None:
    """Bump ``scopes_of(instance)`` on every save and delete of ``model``."""

    def handler(sender: Any, instance: Any, **kwargs: Any) -> None:
        bump(*scopes_of(instance))

    uid = f"read-cache-scoped-{model._meta.label}"  # type: ignore[attr-defined]
    post_save.connect(handler, sender=model, dispatch_uid=uid + "-save", weak=False)
    post_delete.connect(handler, sender=model, dispatch_uid=uid + "-delete", weak=False)


# --- the view's side -----------------------------------------------------------------------------


class CachedRead:
    """Mixin for a DRF view whose GET answer may be served again to the same credentials.

    ``read_cache_scopes`` names what the answer depends on (from the URL alone: it runs before
    the request is authenticated); ``read_cache_seconds`` says how long a particular answer may
    be kept (a running build's status changes with every step: a second), 0 for not at all.
    """

    def read_cache_scopes(self) -> list[str]:
        return [DATA]

    def read_cache_seconds(self, response: Any) -> int:
        return ENTRY_SECONDS

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        # Before super().initial(), which authenticates: see the module docstring.
        meta = request.META
        cacheable = _entry_key(meta, script_name=meta.get("SCRIPT_NAME", ""), path_info=request.path_info)
        self._read_generations = generations(self.read_cache_scopes()) if cacheable else None
        super().initial(request, *args, **kwargs)  # type: ignore[misc]

    def finalize_response(self, request: Any, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        read = getattr(self, "_read_generations", None)
        if read and response.status_code == 200:
            seconds = min(self.read_cache_seconds(response), ENTRY_SECONDS)
            if seconds > 0:
                response.read_cache_generations = claim_generations(read)
                response.read_cache_seconds = seconds
        return response


# --- the middleware's side -----------------------------------------------------------------------


def _entry_key(meta: Mapping[str, Any], *, script_name: str, path_info: str) -> str | None:
    """The cache key of a request, or None: not cacheable. ``meta`` is its WSGI environ or
    ``request.META``; the paths are as Django decodes them (``request.META`` holds them decoded,
    the environ raw), so both sides find the same key."""
    if (
        meta.get("REQUEST_METHOD") != "GET"
        or not meta.get("HTTP_AUTHORIZATION")
        or meta.get("HTTP_COOKIE")  # a session would authenticate before the token
        or "HTTP_RANGE" in meta
        or not path_info.startswith("/api/")
    ):
        return None
    material = "\0".join([script_name, path_info, *(str(meta.get(name, "")) for name in _KEYED_META)])
    return "read-cache:answer:" + hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()


class _RecentEntries:
    """The answers this process served or stored lately, so a hit asks the shared cache only for
    the generations (one round trip instead of two). Never trusted alone: the generations are
    always checked, so it is no staler than the shared cache."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[Any, ...] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < time.time():  # past its expiry
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: tuple[Any, ...]) -> None:
        with self._lock:
            self._drop(key)
            self._entries[key] = entry
            self._bytes += len(entry[-1])
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def discard(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[-1])


_recent = _RecentEntries(RECENT_BYTES)


def _stored_answer(key: str) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """Status, headers and body stored under ``key``, if every generation they depend on holds."""
    try:
        entry = _recent.get(key)
        if entry is None:
            entry = _cache().get(key)
            if entry is None:
                return None
            _recent.put(key, entry)
        _expires_at, stored_generations, status, headers, body = entry
        current = _cache().get_many([_generation_key(scope) for scope in stored_generations])
    except Exception:
        logger.warning("read cache unreachable: answering without it", exc_info=True)
        return None
    for scope, generation in stored_generations.items():
        if current.get(_generation_key(scope)) != generation:
            _recent.discard(key)
            return None
    return status, headers, body


def _budget_window() -> int:
    return int(time.time() // 60)


def _within_budget(credentials: str, size: int) -> bool:
    """Whether these credentials may store ``size`` more bytes of answers this minute.

    Every distinct URL is an answer of its own (``?search=`` anything, ``?offset=`` any number),
    and the cache is the broker's Redis: without a bound, one member could fill it with answers
    nobody reads again and stall every build. Hits cost nothing from the budget."""
    budget_key = f"read-cache:budget:{_digest(credentials)}:{_budget_window()}"
    _cache().add(budget_key, 0, timeout=120)
    return int(_cache().incr(budget_key, size)) <= STORED_BYTES_PER_MINUTE


def _store(key: str, request: HttpRequest, response: HttpResponseBase) -> None:
    found = getattr(response, "read_cache_generations", None)
    if (
        not found
        or response.status_code != 200
        or response.streaming
        or response.cookies
        or not isinstance(response, HttpResponse)
        or len(response.content) > MAX_BODY_BYTES
    ):
        return
    headers = [(name, value) for name, value in response.headers.items() if name != STATUS_HEADER]
    seconds = getattr(response, "read_cache_seconds", ENTRY_SECONDS)
    entry = (time.time() + seconds, found, response.status_code, headers, response.content)
    try:
        if not _within_budget(request.META["HTTP_AUTHORIZATION"], len(response.content)):
            return
        _cache().set(key, entry, timeout=seconds)
    except Exception:
        logger.warning("read cache unreachable: answer not stored", exc_info=True)
        return
    _recent.put(key, entry)
    response.headers[STATUS_HEADER] = "stored"


class ReadCacheMiddleware:
    """First in MIDDLEWARE: a hit skips every other middleware and the view (their headers were
    stored with the answer); a miss goes through and may be stored on its way out."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        key = _entry_key(request.META, script_name=request.META["SCRIPT_NAME"], path_info=request.path_info)
        if key is not None:
            stored = _stored_answer(key)
            if stored is not None:
                status, headers, body = stored
                hit = HttpResponse(body, status=status)
                for name, value in headers:
                    hit.headers[name] = value
                hit.headers[STATUS_HEADER] = "hit"
                return hit
        response = self.get_response(request)
        if key is not None:
            _store(key, request, response)
        return response


def serve_cached_reads(application: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the WSGI application so a hit is answered before Django builds a request: the same
    lookup as ``ReadCacheMiddleware``, at a fraction of its cost per request (portal.wsgi). Misses,
    and storing, go through Django and the middleware."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        key = _entry_key(environ, script_name=get_script_name(environ), path_info=get_path_info(environ))
        stored = _stored_answer(key) if key is not None else None
        if stored is None:
            return application(environ, start_response)
        status, headers, body = stored
        start_response(f"{status} {HTTPStatus(status).phrase}", [*headers, (STATUS_HEADER, "hit")])
        return [body]

    return serve
