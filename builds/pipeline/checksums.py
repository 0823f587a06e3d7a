"""SHA256SUMS in the strict format systemd-sysupdate parses (shared/reference/sysupdate.md).

Each line: 64 lowercase hex digits, one space, ``*`` or a space, the file name, ``\\n``.
No blank lines, no comments, no escaped names, UTF-8 only. We write sorted lines in
``sha256sum`` text style (two spaces) and parse exactly what sysupdate accepts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from builds.pipeline.errors import PipelineError

SUMS_FILE_NAME = "SHA256SUMS"
SIGNATURE_FILE_NAME = "SHA256SUMS.gpg"

_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_LINE_RE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file; memory stays flat for any size."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def check_file_name(name: str) -> str:
    """A name sysupdate can match: one path component, no whitespace or control characters.

    sha256sum escapes names with a backslash or newline; sysupdate does not unescape, so such
    names (and any whitespace, which ``MatchPattern`` cannot express) are refused.
    """
    if (
        not name
        or name in {".", ".."}
        or "/" in name
        or "\\" in name
        or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)
    ):
        raise PipelineError("sums.invalid-name", f"file name {name!r} cannot be listed in SHA256SUMS")
    return name


def format_sums(entries: Mapping[str, str]) -> str:
    """SHA256SUMS text for ``{file name: hex digest}``, sorted by name."""
    lines = []
    for name in sorted(entries):
        digest = entries[name]
        if not _HEX_RE.match(digest):
            raise PipelineError("sums.invalid-digest", f"digest for {name!r} is not 64 lowercase hex digits")
        lines.append(f"{digest}  {check_file_name(name)}\n")
    return "".join(lines)


def parse_sums(data: bytes | str, *, source: str = SUMS_FILE_NAME) -> dict[str, str]:
    """Parse SHA256SUMS strictly, as sysupdate does; raise ``sums.invalid`` naming the line."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PipelineError("sums.invalid", f"{source} is not valid UTF-8") from exc
    else:
        text = data
    if text and not text.endswith("\n"):
        raise PipelineError("sums.invalid", f"{source}: the last line does not end in a newline")
    entries: dict[str, str] = {}
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        match = _LINE_RE.match(line)
        if not match:
            raise PipelineError(
                "sums.invalid",
                f"{source} line {number}: expected 64 lowercase hex digits, a space, '*' or a space, "
                "and a file name",
            )
        digest, name = match.groups()
        try:
            check_file_name(name)
        except PipelineError as exc:
            raise PipelineError("sums.invalid", f"{source} line {number}: {exc.message}") from exc
        if name in entries:
            raise PipelineError("sums.invalid", f"{source} line {number}: {name!r} is listed twice")
        entries[name] = digest
    return entries


def read_sums(path: str | os.PathLike[str]) -> dict[str, str]:
    return parse_sums(Path(path).read_bytes(), source=str(path))


def write_sums(path: str | os.PathLike[str], entries: Mapping[str, str]) -> Path:
    """Write SHA256SUMS for ``entries`` to ``path`` and return it."""
    target = Path(path)
    target.write_text(format_sums(entries), encoding="utf-8")
    return target


def update_sums(existing: Mapping[str, str], added: Mapping[str, str]) -> dict[str, str]:
    """The entries of a served directory after publishing ``added`` (same names are replaced)."""
    merged = dict(existing)
    merged.update(added)
    return merged
