"""Fetch: download upstream files into a content-addressed cache, verifying pins.

Layout of the cache directory::

    blobs/<sha256>        finished downloads, named by their content (read-only)
    local/<sha256>        copies of local files (uploads): never served by a cache lookup
    urls/<sha256(url)>    JSON index {url, sha256, size, final_url}: a URL downloads once
    tmp/                  partial downloads; renamed into blobs/ only when complete and verified

Upstream servers and mirrors are hostile input: sizes are capped while streaming (never trusting
Content-Length alone), redirects are counted, and only transient trouble (connection errors,
timeouts, 5xx, 429) is retried, with exponential backoff. Bytes are stored exactly as served
(no Content-Encoding decoding), so the digest is that of the upstream file.

Where a fetch may go is decided by :mod:`builds.pipeline.egress`: every http(s) hop is resolved
once, refused when the address is not public (``fetch.refused-address``, never retried) unless the
URL was rewritten by a configured mirror, and connected to at exactly the checked address.
``file://`` URLs are read only under the ``file_roots`` the caller allows (symlinks resolved);
with none, ``fetch.file-refused``.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests
import urllib3

from builds.pipeline.egress import EgressRule, pinned_session, send_pinned
from builds.pipeline.errors import PipelineError

CHUNK_SIZE = 1024 * 1024
DEFAULT_MAX_BYTES = 4 * 1024**3
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class FetchedFile:
    """A verified file in the cache. ``path`` is read-only and shared: copy, never modify."""

    path: Path
    sha256: str
    size: int
    url: str  # the URL as asked for (before mirror rewriting)
    final_url: str  # where the bytes came from (after rewriting and redirects)


class _Transient(Exception):
    """Internal: an attempt failed in a way worth retrying; carries the final PipelineError."""

    def __init__(self, error: PipelineError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class Fetcher:
    """Downloads http(s) and file URLs into ``cache_dir`` (see the module docstring).

    ``mirrors`` maps URL prefixes to replacements (``{"https://github.com/": "http://mirror/gh/"}``);
    the longest matching prefix wins and it applies to redirect targets too, so an air-gapped
    site never leaks a request to the original host. Mirrors are operator configuration, so a
    URL on a mirror's origin (scheme, host, port) may reach a private address.

    ``egress`` is the address rule for everything else (default: public addresses only);
    ``file_roots`` are the only directories ``file://`` URLs may read (default: none).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        mirrors: Mapping[str, str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        total_timeout: float = 3600.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_redirects: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = "bakehouse-fetch/1",
        egress: EgressRule | None = None,
        file_roots: Iterable[str | Path] = (),
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.mirrors = dict(mirrors or {})
        self.egress = egress if egress is not None else EgressRule(area="fetch")
        self.file_roots = tuple(Path(root).resolve() for root in file_roots)
        self._mirror_origins = frozenset(_origin(target) for target in self.mirrors.values())
        self.max_bytes = max_bytes
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_redirects = max_redirects
        self._sleep = sleep
        self._session = pinned_session(user_agent)
        # Ask for the bytes as stored; we never decode Content-Encoding anyway.
        self._session.headers["Accept-Encoding"] = "identity"
        try:
            for sub in ("blobs", "local", "urls", "tmp"):
                (self.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PipelineError(
                "fetch.cache-unwritable",
                f"cannot use {self.cache_dir} as the download cache: {exc.strerror}; "
                "choose a directory you can write to (FETCH_CACHE_DIR or --cache-dir)",
            ) from exc

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------

    def rewrite_url(self, url: str) -> str:
        """Apply the mirror map: the longest matching prefix is replaced."""
        for prefix in sorted(self.mirrors, key=len, reverse=True):
            if url.startswith(prefix):
                return self.mirrors[prefix] + url[len(prefix) :]
        return url

    def fetch(self, url: str, *, sha256: str | None = None, label: str | None = None) -> FetchedFile:
        """The file at ``url``, from the cache when possible, else downloaded and cached.

        With a ``sha256`` pin a cached blob of that digest is used without any request, and a
        download whose digest differs is refused (``fetch.sha256-mismatch``) and not cached.
        """
        pin = sha256.lower() if sha256 else None
        if pin is not None and not _is_hex_digest(pin):
            raise PipelineError("fetch.invalid-pin", f"{_who(label)}pin {sha256!r} is not a sha256 digest")
        effective = self.rewrite_url(url)
        scheme = urllib.parse.urlsplit(effective).scheme
        if scheme not in ("http", "https", "file"):
            raise PipelineError(
                "fetch.unsupported-url", f"{_who(label)}only http, https and file URLs can be fetched"
            )
        if scheme == "file":
            # Before the cache: a pinned blob must not stand in for a file this fetch may not read.
            self._allowed_local_path(_file_path(effective, label), url, label, strict=False)
        # Local files (uploaded archives) are re-read every time and kept apart from downloads:
        # a pinned-digest cache hit must never hand one team's private upload to a recipe of
        # another team that merely knows its sha256.
        cached = None if scheme == "file" else self._from_cache(url, effective, pin)
        if cached is not None:
            return cached
        if scheme == "file":
            fetched = self._copy_file(url, effective, label)
        else:
            fetched = self._download_with_retries(url, effective, label)
        if pin is not None and fetched.sha256 != pin:
            fetched.path.unlink(missing_ok=True)
            raise PipelineError(
                "fetch.sha256-mismatch",
                f"{_who(label)}{url} expected {pin}, got {fetched.sha256}; "
                "the upstream file changed or the pin is wrong",
            )
        return self._store(fetched, local=scheme == "file")

    def hash_url(self, url: str) -> tuple[str, int]:
        """(sha256, size) of the file at ``url``: what a curator pins when approving a version."""
        fetched = self.fetch(url)
        return fetched.sha256, fetched.size

    # -- cache -----------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        return self.cache_dir / "blobs" / digest

    def _index_path(self, effective_url: str) -> Path:
        return self.cache_dir / "urls" / hashlib.sha256(effective_url.encode()).hexdigest()

    def _from_cache(self, url: str, effective: str, pin: str | None) -> FetchedFile | None:
        entry = self._read_index(effective)
        if pin is not None:
            blob = self._blob_path(pin)
            if blob.is_file():
                final = entry["final_url"] if entry and entry.get("sha256") == pin else effective
                return FetchedFile(blob, pin, blob.stat().st_size, url, str(final))
            return None
        if entry is None:
            return None
        digest, size = entry.get("sha256"), entry.get("size")
        if not isinstance(digest, str) or not _is_hex_digest(digest) or not isinstance(size, int):
            return None
        blob = self._blob_path(digest)
        if not blob.is_file() or blob.stat().st_size != size:
            return None
        return FetchedFile(blob, digest, size, url, str(entry.get("final_url", effective)))

    def _read_index(self, effective: str) -> dict[str, object] | None:
        try:
            entry = json.loads(self._index_path(effective).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("url") != effective:
            return None
        return entry

    def _store(self, fetched: FetchedFile, *, local: bool) -> FetchedFile:
        """Move a verified temp file into blobs/ (atomically) and record the URL index.

        A local file goes to local/ instead, which no cache lookup reads (see ``fetch``).
        """
        blob = self.cache_dir / "local" / fetched.sha256 if local else self._blob_path(fetched.sha256)
        if blob.is_file():
            fetched.path.unlink(missing_ok=True)  # another worker got there first: same bytes
        else:
            os.chmod(fetched.path, 0o444)
            os.replace(fetched.path, blob)
        if not local:
            effective = self.rewrite_url(fetched.url)
            entry = {
                "url": effective,
                "sha256": fetched.sha256,
                "size": fetched.size,
                "final_url": fetched.final_url,
            }
            self._write_atomically(self._index_path(effective), json.dumps(entry).encode())
        return FetchedFile(blob, fetched.sha256, fetched.size, fetched.url, fetched.final_url)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir / "tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _stream_to_temp(
        self, chunks: Iterator[bytes], url: str, final_url: str, label: str | None
    ) -> FetchedFile:
        """Write ``chunks`` to a temp file while hashing and counting; never leaves a partial file."""
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir / "tmp", prefix="part-")
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_large(url, label)
                    digest.update(chunk)
                    handle.write(chunk)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return FetchedFile(Path(tmp), digest.hexdigest(), size, url, final_url)

    # -- file:// ---------------------------------------------------------------------------

    def _copy_file(self, url: str, effective: str, label: str | None) -> FetchedFile:
        local = self._allowed_local_path(_file_path(effective, label), url, label, strict=True)
        try:
            # O_NOFOLLOW: the checked path is already resolved; a symlink swapped in since is refused.
            fd = os.open(local, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise PipelineError(
                "fetch.file-error", f"{_who(label)}cannot read {local}: {exc.strerror}"
            ) from exc
        handle: IO[bytes] = os.fdopen(fd, "rb")  # closed by the generator below

        def chunks() -> Iterator[bytes]:
            with handle:
                while block := handle.read(CHUNK_SIZE):
                    yield block

        return self._stream_to_temp(chunks(), url, effective, label)

    def _allowed_local_path(self, local: Path, url: str, label: str | None, *, strict: bool) -> Path:
        """``local`` with symlinks resolved, when it lies under one of ``file_roots``."""
        who = _who(label)
        if not self.file_roots:
            raise PipelineError(
                "fetch.file-refused",
                f"{who}{url} was refused: this fetch may not read local files "
                "(only uploaded archives are read from disk; use an http(s) URL)",
            )
        try:
            resolved = local.resolve(strict=strict)
        except (OSError, RuntimeError) as exc:
            raise PipelineError(
                "fetch.file-error", f"{who}cannot read {local}: {getattr(exc, 'strerror', None) or exc}"
            ) from exc
        if not any(resolved.is_relative_to(root) for root in self.file_roots):
            raise PipelineError(
                "fetch.file-refused",
                f"{who}{url} was refused: {resolved} is outside the directories local files may be read from",
            )
        return resolved

    # -- http(s) ---------------------------------------------------------------------------

    def _download_with_retries(self, url: str, effective: str, label: str | None) -> FetchedFile:
        attempt = 0
        while True:
            try:
                return self._download(url, effective, label)
            except _Transient as transient:
                if attempt >= self.retries:
                    raise transient.error from None
                delay = self.backoff * (2**attempt)
                if transient.retry_after is not None:
                    delay = max(delay, transient.retry_after)
                self._sleep(min(delay, _MAX_BACKOFF_SECONDS))
                attempt += 1

    def _download(self, url: str, effective: str, label: str | None) -> FetchedFile:
        who = _who(label)
        current = effective
        for _ in range(self.max_redirects + 1):
            try:
                destination = self.egress.check(current, trusted=self._is_mirrored(current), who=who)
            except PipelineError as exc:
                if exc.code == "fetch.invalid-url":
                    raise PipelineError(
                        "fetch.invalid-url",
                        f"{exc.message}; check the recipe's url and the mirror map",
                    ) from exc
                if exc.retryable:
                    raise _Transient(exc) from exc
                raise
            try:
                response = send_pinned(
                    self._session,
                    "GET",
                    destination,
                    stream=True,
                    timeout=(self.connect_timeout, self.read_timeout),
                )
            except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
                # A malformed URL (bad host, port out of range) fails the same way every time.
                raise PipelineError(
                    "fetch.invalid-url",
                    f"{who}{current} is not a valid URL ({exc}); check the recipe's url and the mirror map",
                ) from exc
            except requests.exceptions.SSLError as exc:
                if not _certificate_rejected(exc):
                    raise _Transient(
                        PipelineError(
                            "fetch.connection-error", f"{who}TLS with {current} failed: {exc}", retryable=True
                        )
                    ) from exc
                # The same certificate will be refused on every attempt: say so at once.
                raise PipelineError(
                    "fetch.tls-error",
                    f"{who}{current} presented a TLS certificate that does not verify ({_root_cause(exc)}); "
                    "fix the server's certificate or point the mirror map at a trusted host",
                ) from exc
            except requests.Timeout as exc:
                raise _Transient(
                    PipelineError("fetch.timeout", f"{who}{current} did not answer in time", retryable=True)
                ) from exc
            except requests.RequestException as exc:
                raise _Transient(
                    PipelineError(
                        "fetch.connection-error", f"{who}cannot connect to {current}: {exc}", retryable=True
                    )
                ) from exc
            with response:
                if response.is_redirect:
                    location = response.headers.get("Location", "")
                    target = self.rewrite_url(urllib.parse.urljoin(current, location))
                    if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                        raise PipelineError(
                            "fetch.bad-redirect", f"{who}{current} redirects to a non-http URL {target!r}"
                        )
                    current = target
                    continue
                return self._receive(response, url, current, label)
        raise PipelineError(
            "fetch.too-many-redirects",
            f"{who}{effective} redirected more than {self.max_redirects} times; check the URL or the mirror",
        )

    def _receive(self, response: requests.Response, url: str, current: str, label: str | None) -> FetchedFile:
        who = _who(label)
        status = response.status_code
        if status in _RETRY_STATUSES:
            raise _Transient(
                PipelineError(
                    "fetch.http-error",
                    f"{who}{current} answered HTTP {status}; the server is having trouble, try again later",
                    retryable=True,
                ),
                retry_after=_retry_after(response),
            )
        if status != 200:
            hint = " (no such file: check the version and arch names)" if status == 404 else ""
            raise PipelineError("fetch.http-error", f"{who}{current} answered HTTP {status}{hint}")
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise self._too_large(url, label)
        deadline = time.monotonic() + self.total_timeout

        def chunks() -> Iterator[bytes]:
            for chunk in response.raw.stream(CHUNK_SIZE, decode_content=False):
                if time.monotonic() > deadline:
                    raise PipelineError(
                        "fetch.timeout",
                        f"{who}{current} took longer than {self.total_timeout:.0f}s to download",
                        retryable=True,
                    )
                yield chunk

        try:
            return self._stream_to_temp(chunks(), url, current, label)
        except PipelineError as exc:
            if exc.retryable:
                raise _Transient(exc) from exc
            raise
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            ConnectionError,
            TimeoutError,
        ) as exc:
            # Reading the raw stream raises urllib3's own errors (ReadTimeoutError, ProtocolError).
            raise _Transient(
                PipelineError(
                    "fetch.connection-error", f"{who}{current} broke off mid-download: {exc}", retryable=True
                )
            ) from exc

    def _is_mirrored(self, url: str) -> bool:
        """True when ``url`` is on a configured mirror's origin (operator-trusted, may be private)."""
        return _origin(url) in self._mirror_origins

    # -- messages --------------------------------------------------------------------------

    def _too_large(self, url: str, label: str | None) -> PipelineError:
        return PipelineError(
            "fetch.too-large",
            f"{_who(label)}{url} is larger than the {self.max_bytes} byte limit for downloads",
        )


def _file_path(url: str, label: str | None) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise PipelineError("fetch.unsupported-url", f"{_who(label)}file URLs must be local (file:///path)")
    return Path(urllib.parse.unquote(parts.path))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), port or (443 if scheme == "https" else 80)


def _is_hex_digest(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _who(label: str | None) -> str:
    return f"{label}: " if label else ""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests nests urllib3's errors in ``args`` and ``reason``."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        if current.__cause__ is not None:
            pending.append(current.__cause__)


def _certificate_rejected(exc: BaseException) -> bool:
    return any(isinstance(cause, ssl.SSLCertVerificationError) for cause in _causes(exc))


def _root_cause(exc: BaseException) -> str:
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause.verify_message or str(cause)
    return str(exc)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None
