"""Reading Bakehouse's configuration from the environment.

Every setting has an embedded default so that a fresh checkout runs with no external service.
A value that is set but wrong stops start-up with a message naming the variable, rather than
failing later inside a build.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.utils.functional import lazy


class ConfigError(ImproperlyConfigured):
    """A configuration variable is set to a value Bakehouse cannot use."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(name, f"must be at least {minimum}, got {value}")
    return value


def env_url(name: str, default: str = "", *, schemes: tuple[str, ...]) -> str:
    raw = env_str(name, default)
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in schemes:
        raise ConfigError(
            name, f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, got {raw!r}"
        )
    if parts.scheme not in {"sqlite", "file", "filesystem"} and not parts.hostname:
        raise ConfigError(name, f"URL has no host: {raw!r}")
    return raw


def env_path(name: str, default: Path) -> Path:
    raw = env_str(name)
    return Path(raw).expanduser().resolve() if raw else default


def env_secret_file(name: str) -> Path | None:
    """A path to a file holding a secret; it must exist and be readable when set."""
    raw = env_str(name)
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigError(name, f"no such file: {raw}")
    if not os.access(path, os.R_OK):
        raise ConfigError(name, f"file is not readable: {raw}")
    return path.resolve()


@functools.cache
def _read_or_make_secret_key(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside and linked into place: two processes starting at once (web and worker)
        # both end up with the key of whichever linked first, never a half-written file.
        draft = path.with_name(f".{path.name}.{os.getpid()}")
        draft.write_text(secrets.token_urlsafe(50))
        draft.chmod(0o600)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def secret_key_in_file(path: Path) -> str:
    """A random secret key kept in ``path``, read (or made) only when first used.

    Lazy, so that importing the settings writes no files: Django reads ``SECRET_KEY`` when it
    first signs something (a session, a CSRF token, a password reset link).
    """
    return lazy(_read_or_make_secret_key, str)(path)


def env_proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """A request header (``X-Forwarded-Proto``) by which the reverse proxy says it got HTTPS.

    Returned in Django's ``SECURE_PROXY_SSL_HEADER`` form: ``("HTTP_X_FORWARDED_PROTO", "https")``.
    """
    raw = env_str(name)
    if not raw:
        return None
    if not re.fullmatch(r"[A-Za-z0-9]+(-[A-Za-z0-9]+)*", raw):
        raise ConfigError(name, f"expected a header name such as X-Forwarded-Proto, got {raw!r}")
    return "HTTP_" + raw.upper().replace("-", "_"), "https"


def env_mirrors(name: str) -> dict[str, str]:
    """`FROM=TO` pairs separated by white space: URL prefixes rewritten before fetching."""
    mirrors: dict[str, str] = {}
    for pair in env_str(name).split():
        source, sep, target = pair.partition("=")
        if not sep or not source or not target:
            raise ConfigError(name, f"expected FROM=TO pairs separated by spaces, got {pair!r}")
        for url in (source, target):
            if urlsplit(url).scheme not in {"http", "https", "file"}:
                raise ConfigError(name, f"{url!r} is not an http, https or file URL")
        mirrors[source] = target
    return mirrors


@dataclass(frozen=True)
class S3Config:
    """Where artifacts are published when S3 is switched on (S3_BUCKET set)."""

    bucket: str
    endpoint_url: str
    region: str
    checksum_mode: str  # botocore's request_checksum_calculation / response_checksum_validation


def s3_config() -> S3Config | None:
    bucket = env_str("S3_BUCKET")
    endpoint = env_url("S3_ENDPOINT_URL", schemes=("http", "https"))
    if not bucket:
        if endpoint:
            raise ConfigError("S3_BUCKET", "must be set when S3_ENDPOINT_URL is set")
        return None
    if (
        not (3 <= len(bucket) <= 63)
        or not all(c.isalnum() or c in ".-" for c in bucket)
        or bucket != bucket.lower()
    ):
        raise ConfigError("S3_BUCKET", f"not a valid bucket name: {bucket!r}")
    checksum_mode = env_str("S3_CHECKSUMS", "when_required")
    if checksum_mode not in {"when_required", "when_supported"}:
        raise ConfigError("S3_CHECKSUMS", f"expected when_required or when_supported, got {checksum_mode!r}")
    return S3Config(
        bucket=bucket,
        endpoint_url=endpoint,
        region=env_str("S3_REGION", "us-east-1"),
        checksum_mode=checksum_mode,
    )
