"""Build the sysext image file from the assembled tree, and audit the finished image.

squashfs through the real ``mksquashfs`` (gzip by default, as Flatcar's bakery does; zstd and
xz selectable) or EROFS through ``mkfs.erofs``. Builds are reproducible: fixed timestamps,
root-owned files, a fixed root mode and no xattrs from the build host, so the same tree gives
byte-identical images and an image's sha256 can serve as a cache key.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline.command import run_command
from builds.pipeline.errors import PipelineError
from builds.pipeline.tree import Entry, check_entries, scan_tree

MKSQUASHFS = "mksquashfs"
UNSQUASHFS = "unsquashfs"
MKFS_EROFS = "mkfs.erofs"
FSCK_EROFS = "fsck.erofs"

IMAGE_FORMATS = ("squashfs", "erofs")
COMPRESSIONS: dict[str, tuple[str, ...]] = {
    "squashfs": ("gzip", "zstd", "xz"),
    "erofs": ("lz4hc", "lz4"),  # Debian 12's erofs-utils 1.5 has no other compressor
}
DEFAULT_COMPRESSION = {"squashfs": "gzip", "erofs": "lz4hc"}
# Image timestamps: fixed, so they do not depend on when or where the build ran.
DEFAULT_TIMESTAMP = 0
IMAGE_TIMEOUT = 3600.0
MKSQUASHFS_MEMORY = "256M"
AUDIT_TIMEOUT = 600.0
_ZERO_UUID = "00000000-0000-0000-0000-000000000000"
_SQUASHFS_MAGIC = b"hsqs"
_EROFS_MAGIC = (0xE0F5E1E2).to_bytes(4, "little")


@dataclass(frozen=True)
class ImageSpec:
    """How to build an image: format and compressor (validated)."""

    format: str
    compression: str

    @classmethod
    def create(cls, image_format: str = "squashfs", compression: str | None = None) -> ImageSpec:
        if image_format not in IMAGE_FORMATS:
            raise PipelineError(
                "image.unsupported-format",
                f"image format {image_format!r} is not supported; use {' or '.join(IMAGE_FORMATS)}",
            )
        chosen = compression or DEFAULT_COMPRESSION[image_format]
        if chosen not in COMPRESSIONS[image_format]:
            raise PipelineError(
                "image.unsupported-compression",
                f"{image_format} images cannot use {chosen!r}; choose one of "
                f"{', '.join(COMPRESSIONS[image_format])}",
            )
        return cls(image_format, chosen)


def _clean_env() -> dict[str, str]:
    # SOURCE_DATE_EPOCH from the caller's environment would fight -mkfs-time/-all-time.
    return {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}


@functools.lru_cache(maxsize=1)
def _mksquashfs_options() -> frozenset[str]:
    result = run_command([MKSQUASHFS, "-help"], error_code="image.mksquashfs-failed", check=False, timeout=30)
    return frozenset(re.findall(r"^(-[A-Za-z][\w-]*)", result.output, flags=re.MULTILINE))


def mksquashfs_argv(
    root: Path, output: Path, compression: str, *, timestamp: int = DEFAULT_TIMESTAMP
) -> list[str]:
    """The mksquashfs command for a reproducible image of ``root`` (absolute paths only)."""
    options = _mksquashfs_options()
    argv = [
        MKSQUASHFS, str(root.absolute()), str(output.absolute()),
        "-all-root", "-noappend", "-no-xattrs", "-quiet", "-no-progress",
        "-mkfs-time", str(timestamp), "-all-time", str(timestamp),
        "-comp", compression,
    ]  # fmt: skip
    if "-root-mode" in options:
        argv += ["-root-mode", "0755"]
    if "-reproducible" in options:
        argv.append("-reproducible")
    if "-mem" in options:
        # Default is a quarter of RAM, used in proportion to the input: a fixed cap keeps a
        # worker's memory independent of image size, at no measurable cost in speed.
        argv += ["-mem", MKSQUASHFS_MEMORY]
    return argv


def build_squashfs(
    root: Path,
    output: Path,
    compression: str = "gzip",
    *,
    timestamp: int = DEFAULT_TIMESTAMP,
    timeout: float = IMAGE_TIMEOUT,
) -> Path:
    """``mksquashfs ROOT OUT -all-root -noappend`` plus the reproducibility options."""
    ImageSpec.create("squashfs", compression)
    run_command(
        mksquashfs_argv(root, output, compression, timestamp=timestamp),
        error_code="image.mksquashfs-failed",
        what="mksquashfs",
        timeout=timeout,
        env=_clean_env(),
        replace_env=True,
    )
    return output


def build_erofs(
    root: Path,
    output: Path,
    compression: str = "lz4hc",
    *,
    timestamp: int = DEFAULT_TIMESTAMP,
    timeout: float = IMAGE_TIMEOUT,
) -> Path:
    """``mkfs.erofs`` as in sysext.md, with a fixed UUID and timestamp."""
    ImageSpec.create("erofs", compression)
    level = ",12" if compression == "lz4hc" else ""
    argv = [
        MKFS_EROFS, f"-z{compression}{level}", "-C65536", "-Efragments,ztailpacking",
        f"-U{_ZERO_UUID}", "--all-root", f"-T{timestamp}", "-x-1", "--quiet",
        str(output.absolute()), str(root.absolute()),
    ]  # fmt: skip
    run_command(
        argv,
        error_code="image.mkfs-erofs-failed",
        what="mkfs.erofs",
        timeout=timeout,
        env=_clean_env(),
        replace_env=True,
    )
    return output


def build_image(
    root: Path,
    output: Path,
    spec: ImageSpec,
    *,
    timestamp: int = DEFAULT_TIMESTAMP,
    timeout: float = IMAGE_TIMEOUT,
) -> Path:
    """Write the image of ``root`` to ``output`` in ``spec``'s format."""
    if spec.format == "erofs":
        return build_erofs(root, output, spec.compression, timestamp=timestamp, timeout=timeout)
    return build_squashfs(root, output, spec.compression, timestamp=timestamp, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Audit

_LISTING_RE = re.compile(
    r"^(?P<mode>[-dlcbps][-rwxsStT]{9}) (?P<owner>\S+)\s+(?P<size>\d+|\d+,\s*\d+) "
    r"(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d) (?P<path>.*)$"
)
_ROOT_PREFIX = "squashfs-root"
_KINDS = {
    "d": "dir",
    "-": "file",
    "l": "symlink",
    "c": "char device",
    "b": "block device",
    "p": "fifo",
    "s": "socket",
}


def _mode_bits(text: str) -> int:
    """Permission bits from ``rwsr-xr-x``: s/t mean execute plus the special bit, S/T only the latter."""
    bits = 0
    for index, char in enumerate(text[:9]):
        if char not in "-ST":
            bits |= 1 << (8 - index)
    for index, bit in ((2, stat.S_ISUID), (5, stat.S_ISGID), (8, stat.S_ISVTX)):
        if text[index] in "sStT":
            bits |= bit
    return bits


def parse_squashfs_listing(listing: str, *, image: str = "image") -> list[Entry]:
    """Entries from ``unsquashfs -lls`` output (the root directory itself is left out).

    A line we cannot read fails the audit: an image we cannot inspect is not published.
    """
    entries: list[Entry] = []
    for line in listing.splitlines():
        if not line.strip():
            continue
        match = _LISTING_RE.match(line)
        if not match:
            raise PipelineError("image.audit-unreadable", f"{image}: cannot read listing line {line[:200]!r}")
        mode_text, size_text, path = match["mode"], match["size"], match["path"]
        kind = _KINDS[mode_text[0]]
        target = None
        if kind == "symlink":
            # "name -> target": the size field is the target's length, which splits names with " -> ".
            length = int(size_text)
            encoded = path.encode("utf-8", "surrogateescape")
            target_bytes = encoded[len(encoded) - length :] if length else b""
            name_bytes = encoded[: len(encoded) - length - 4]
            if encoded[len(name_bytes) : len(encoded) - length] != b" -> ":
                raise PipelineError(
                    "image.audit-unreadable", f"{image}: cannot read symlink line {line[:200]!r}"
                )
            path = name_bytes.decode("utf-8", "surrogateescape")
            target = target_bytes.decode("utf-8", "surrogateescape")
        if path == _ROOT_PREFIX:
            continue
        if not path.startswith(_ROOT_PREFIX + "/"):
            raise PipelineError("image.audit-unreadable", f"{image}: unexpected path {path[:200]!r}")
        entries.append(Entry(path[len(_ROOT_PREFIX) + 1 :], kind, _mode_bits(mode_text[1:]), target))
    return entries


def detect_format(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(1028)
    if head[:4] == _SQUASHFS_MAGIC:
        return "squashfs"
    if head[1024:1028] == _EROFS_MAGIC:
        return "erofs"
    raise PipelineError("image.unknown-format", f"{path.name} is neither a squashfs nor an EROFS image")


def audit_image(path: Path, name: str, *, timeout: float = AUDIT_TIMEOUT) -> int:
    """Check the finished image's own file list against the sysext rules (``image.*`` codes).

    squashfs is listed with ``unsquashfs -lls``; EROFS is extracted with ``fsck.erofs`` and
    scanned. Returns the number of entries checked.
    """
    image_format = detect_format(path)
    if image_format == "squashfs":
        result = run_command(
            [UNSQUASHFS, "-lls", str(path.absolute())],
            error_code="image.audit-failed",
            what="unsquashfs -lls",
            timeout=timeout,
        )
        entries = parse_squashfs_listing(result.stdout.decode("utf-8", "surrogateescape"), image=path.name)
        # unsquashfs prints a few header lines on some versions; they never match a mode column.
    else:
        scratch = Path(tempfile.mkdtemp(prefix="bh-erofs-audit-"))
        try:
            target = scratch / "root"
            run_command(
                [FSCK_EROFS, f"--extract={target}", "--preserve", str(path.absolute())],
                error_code="image.audit-failed",
                what="fsck.erofs --extract",
                timeout=timeout,
            )
            entries = scan_tree(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return check_entries(entries, name, area="image", where=path.name)


# --------------------------------------------------------------------------------------------
# Tool versions (part of image cache keys: a different mksquashfs may write different bytes)


def _first_version(text: str) -> str:
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else "unknown"


@functools.lru_cache(maxsize=1)
def _tool_versions() -> tuple[tuple[str, str], ...]:
    probes = {
        MKSQUASHFS: [MKSQUASHFS, "-version"],
        MKFS_EROFS: [FSCK_EROFS, "-V"],  # same erofs-utils release; mkfs.erofs has no version flag
        "gpg": ["gpg", "--version"],
        "systemd-sysext": ["systemd-sysext", "--version"],
    }
    versions = []
    for tool, argv in probes.items():
        if shutil.which(argv[0]) is None:
            versions.append((tool, "missing"))
            continue
        result = run_command(argv, error_code="image.tool-version", check=False, timeout=30)
        versions.append((tool, _first_version(result.output.splitlines()[0] if result.output else "")))
    return tuple(versions)


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape an artifact: ``{"mksquashfs": "4.5.1", ...}``."""
    return dict(_tool_versions())
