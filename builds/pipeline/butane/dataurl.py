"""``data:`` URLs exactly as Butane builds them for ``inline`` and ``local`` contents.

Three candidates, shortest wins (ties keep the earlier one): URL-escaped text, base64, and (when
the user did not set ``compression``) base64 of gzip level 9, which must beat the current winner
by more than the four characters ``"gzip"`` costs in the ``compression`` field.
"""

from __future__ import annotations

import base64
import gzip
import urllib.parse
from dataclasses import dataclass

# vincent-petithory/dataurl's Escape keeps these bytes and %-escapes every other one.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()")


@dataclass(frozen=True)
class DataURL:
    """An encoded resource: the URL and the ``compression`` value Butane emits beside it.

    ``compression`` is None when the user set compression themselves (their value stays),
    otherwise ``""`` or ``"gzip"``.
    """

    url: str
    compression: str | None


def escape(data: bytes) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in data)


def gzip_bytes(data: bytes) -> bytes:
    """gzip at best compression with a zero mtime, like Go's ``gzip.NewWriterLevel(9)``."""
    return gzip.compress(data, compresslevel=9, mtime=0)


def make_data_url(
    data: bytes, current_compression: str | None = None, allow_compression: bool = True
) -> DataURL:
    """Butane's ``MakeDataURL``: pick the shortest encoding of ``data``."""
    user_compressed = bool(current_compression)
    opaque = "," + escape(data)
    b64 = ";base64," + base64.b64encode(data).decode("ascii")
    if len(b64) < len(opaque):
        opaque = b64
    compression: str | None = None if user_compressed else ""
    if not user_compressed and allow_compression:
        gz = ";base64," + base64.b64encode(gzip_bytes(data)).decode("ascii")
        if len(gz) + len("gzip") < len(opaque):
            opaque = gz
            compression = "gzip"
    return DataURL("data:" + opaque, compression)


class DataURLError(ValueError):
    """Not a data URL this decoder understands."""


def decode_data_url(url: str) -> bytes:
    """The bytes a ``data:`` URL carries (RFC 2397: optional media type, ``;base64`` or escaped)."""
    if not url.startswith("data:"):
        raise DataURLError("not a data URL")
    header, sep, payload = url[len("data:") :].partition(",")
    if not sep:
        raise DataURLError("data URL has no comma")
    params = header.split(";")
    if params[-1].lower() == "base64":
        text = urllib.parse.unquote(payload)
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError) as exc:
            raise DataURLError(f"bad base64 payload: {exc}") from exc
    return urllib.parse.unquote_to_bytes(payload)
