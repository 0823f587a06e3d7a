"""Unpack: our own strict extractor for upstream (and user-uploaded) tarballs and zips.

We do not rely on ``tarfile``'s extraction filters: every member is checked here, and written
by this module with fixed modes. What passes:

- regular files (mode 0755 if the member had any exec bit, else 0644), directories (0755);
- relative symlinks that stay inside the destination. A target may only climb (``..``) at its
  start and never above the destination; the rest descends. Combined with the refusal of member
  paths that pass through a symlink, no chain of symlinks can point outside the tree, whatever
  the order of the members.

What is refused, each with a stable code (the destination is then removed entirely):

- ``archive.absolute-path``: a member path starting with ``/``;
- ``archive.path-traversal``: a ``..`` component;
- ``archive.hard-link``: hard links (they can alias files outside the tree or each other);
- ``archive.special-file``: device nodes, FIFOs, sockets and other non-regular members;
- ``archive.unsafe-symlink``: absolute symlinks, symlinks leaving the tree, and members whose
  path goes through a symlink;
- ``archive.duplicate-member``: a path that appears twice (except a directory repeated);
- ``archive.too-many-members`` / ``archive.too-large``: caps counted while extracting, never
  taken from headers (decompression bombs);
- ``archive.ratio``: with ``max_ratio``, more bytes came out than that many times the compressed
  bytes read so far: a bomb is stopped after a few MiB, not after its whole expanded size;
- ``archive.too-slow``: with ``max_seconds``, unpacking took longer than that (thousands of tiny
  members, say), checked at every member and chunk;
- ``archive.corrupt``: anything the decoders cannot read; ``archive.unsupported-kind``.

setuid, setgid and sticky bits are *cleared*, not refused: upstream release tarballs sometimes
carry them by accident and the fixed modes above leave no room for them. The cleared paths are
reported in :class:`UnpackResult` so a build log can mention them.

Files are written through directory file descriptors with ``O_NOFOLLOW`` and ``O_EXCL``: even a
symlink that appeared on disk behind our back would not be followed.
"""

from __future__ import annotations

import _compression
import gzip
import io
import lzma
import os
import queue
import shutil
import stat
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol

import zstandard

from builds.pipeline.errors import PipelineError

ARCHIVE_KINDS = ("tar.gz", "tgz", "tar.xz", "tar.zst", "tar", "zip", "file")
_COPY_CHUNK = 1024 * 1024
# Decompressed chunks a read-ahead thread may hold before the unpack takes them (_ReadAhead).
_READ_AHEAD_CHUNKS = 8
_MAX_SYMLINK_TARGET = 4096
# xz can ask for a dictionary of gigabytes; release tarballs use at most 64 MiB (xz -9).
_XZ_MEMLIMIT = 512 * 1024 * 1024
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
    zipfile.BadZipFile,
    gzip.BadGzipFile,
    NotImplementedError,  # zipfile: unsupported compression method
    RuntimeError,  # zipfile: encrypted member
    UnicodeDecodeError,
)


@dataclass(frozen=True)
class UnpackLimits:
    """Caps for one archive: members seen and bytes written (file data plus symlink targets)."""

    max_members: int = 200_000
    max_total_bytes: int = 8 * 1024**3
    max_path_length: int = 1024
    # Decompressed bytes per compressed byte read so far; None: no check. The first
    # ``ratio_floor`` compressed bytes may expand as much as ``max_ratio * ratio_floor``.
    max_ratio: float | None = None
    ratio_floor: int = 64 * 1024
    max_seconds: float | None = None  # wall-clock budget for the whole unpack


@dataclass
class UnpackResult:
    """What :func:`unpack` wrote under ``dest``."""

    dest: Path
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    total_bytes: int = 0
    cleared_mode_bits: list[str] = field(default_factory=list)


def unpack(
    archive_path: str | Path,
    kind: str,
    dest: str | Path,
    *,
    strip_components: int = 0,
    limits: UnpackLimits | None = None,
    file_name: str | None = None,
) -> UnpackResult:
    """Unpack ``archive_path`` of ``kind`` into ``dest`` (which must not exist or be empty).

    ``strip_components`` drops leading path components like ``tar --strip-components`` (members
    left with no path are skipped, but still checked). For ``kind="file"`` the file is copied to
    ``dest/<file_name>`` (default: the archive's own name). On any error ``dest`` is removed.
    """
    if kind not in ARCHIVE_KINDS:
        raise PipelineError(
            "archive.unsupported-kind", f"unknown archive kind {kind!r} ({', '.join(ARCHIVE_KINDS)})"
        )
    if strip_components < 0:
        raise ValueError("strip_components must be >= 0")
    archive_path = Path(archive_path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise PipelineError(
            "archive.dest-not-empty", f"cannot unpack into {dest}: the directory is not empty"
        )
    writer = _TreeWriter(dest, limits or UnpackLimits(), strip_components, archive_path.name)
    try:
        with open(archive_path, "rb") as raw:
            if kind == "zip":
                _unpack_zip(raw, writer)
            elif kind == "file":
                writer.add_file(
                    file_name or archive_path.name,
                    0o644,
                    _chunks(raw),
                    strip=False,
                    display=archive_path.name,
                )
            else:
                with _decompressed(raw, kind, writer) as stream:
                    _unpack_tar(stream, writer)
    except PipelineError:
        writer.close()
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except _DECODE_ERRORS as exc:
        writer.close()
        shutil.rmtree(dest, ignore_errors=True)
        raise PipelineError(
            "archive.corrupt",
            f"{archive_path.name} is not a readable {kind} archive: {exc or type(exc).__name__}",
        ) from exc
    except OSError as exc:
        writer.close()
        shutil.rmtree(dest, ignore_errors=True)
        if exc.errno is None:  # decoders signal bad data with errno-less OSErrors
            raise PipelineError(
                "archive.corrupt", f"{archive_path.name} is not a readable {kind} archive: {exc}"
            ) from exc
        raise PipelineError(
            "archive.io-error", f"unpacking {archive_path.name} failed: {exc.strerror}", retryable=True
        ) from exc
    except BaseException:
        writer.close()
        shutil.rmtree(dest, ignore_errors=True)
        raise
    writer.close()
    return writer.result


# --------------------------------------------------------------------------------------------
# Readers


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _BudgetReader(io.RawIOBase):
    """Counts decompressed bytes and refuses to read past a budget, before allocating anything:
    tar headers (pax records, GNU long names) are read into memory at whatever size they claim."""

    def __init__(self, inner: _ReadAhead | BinaryIO, budget: int, writer: _TreeWriter, raw: BinaryIO) -> None:
        self._inner = inner
        self._left = budget
        self._produced = 0
        self._writer = writer
        self._raw = raw  # the compressed file: its position is what the decoder consumed

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._inner.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise self._writer.too_large()
        self._produced += len(data)
        consumed = self._inner.consumed if isinstance(self._inner, _ReadAhead) else self._raw.tell()
        self._writer.check_ratio(self._produced, consumed)
        self._writer.check_time()
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if isinstance(self._inner, _ReadAhead):
            self._inner.close()
        super().close()


class _ReadAhead:
    """Decompresses on a thread of its own while the unpack checks and writes members.

    zlib, lzma and zstd let go of the GIL while they decode, so an unpack uses two cores, as
    ``tar -xzf`` does with its gzip child. At most ``_READ_AHEAD_CHUNKS`` chunks wait in memory.
    ``consumed`` is how much of the compressed file had been read when the chunk being read now
    came out: the ratio check sees exactly what it saw without the thread. A decoding error is
    raised to the reader, where it came in the stream; ``close`` stops the thread.
    """

    def __init__(self, decoder: _Readable, raw: BinaryIO, on_wait: Callable[[], None]) -> None:
        self._decoder = decoder
        self._raw = raw
        self._on_wait = on_wait  # called while the reader waits (the unpack's time budget)
        self._queue: queue.Queue[tuple[bytes, int] | BaseException | None] = queue.Queue(_READ_AHEAD_CHUNKS)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._ended: BaseException | None = None
        self._finished = False
        self.consumed = 0
        self._thread = threading.Thread(target=self._decode, name="unpack-decode", daemon=True)
        self._thread.start()

    def _decode(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._decoder.read(_COPY_CHUNK)
                if not data:
                    break
                self._put((data, self._raw.tell()))
            self._put(None)
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def _put(self, item: tuple[bytes, int] | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, size: int) -> bytes:
        while not self._chunk:
            if self._ended is not None:
                raise self._ended
            if self._finished:
                return b""
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._on_wait()
                continue
            if item is None:
                self._finished = True
            elif isinstance(item, BaseException):
                self._ended = item
            else:
                self._chunk, self.consumed = memoryview(item[0]), item[1]
        data = bytes(self._chunk[:size])
        self._chunk = self._chunk[size:]
        return data

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _decompressed(raw: BinaryIO, kind: str, writer: _TreeWriter) -> _BudgetReader:
    decoder: _Readable | None = None
    if kind in ("tar.gz", "tgz"):
        decoder = gzip.GzipFile(fileobj=raw, mode="rb")
    elif kind == "tar.xz":
        # lzma.LZMAFile has no memory limit; this is the same reader with one.
        reader = _compression.DecompressReader(raw, lzma.LZMADecompressor, memlimit=_XZ_MEMLIMIT)
        decoder = io.BufferedReader(reader)
    elif kind == "tar.zst":
        decoder = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    # Headers take room beyond file data: 512 bytes per member, plus padding and long names.
    budget = writer.limits.max_total_bytes + writer.limits.max_members * 2048 + 1024 * 1024
    inner = raw if decoder is None else _ReadAhead(decoder, raw, writer.check_time)
    return _BudgetReader(inner, budget, writer, raw)


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while block := handle.read(_COPY_CHUNK):
        yield block


def _unpack_tar(stream: _BudgetReader, writer: _TreeWriter) -> None:
    # "r|": a forward-only stream; members are read, checked and written one at a time.
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            writer.count_member()
            name = member.name
            if member.isreg() and not member.issparse():
                data = tar.extractfile(member)
                assert data is not None
                writer.add_file(name, member.mode, _chunks(data))
            elif member.isdir():
                writer.add_directory(name)
            elif member.issym():
                writer.add_symlink(name, member.linkname)
            elif member.islnk():
                writer.check_path(name)
                raise PipelineError(
                    "archive.hard-link",
                    f"{writer.archive_name}: {name!r} is a hard link to {member.linkname!r}; "
                    "hard links are refused",
                )
            else:
                writer.check_path(name)
                raise PipelineError(
                    "archive.special-file",
                    f"{writer.archive_name}: {name!r} is a {_tar_kind(member)}; only files, directories "
                    "and symlinks may be unpacked",
                )


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "device node"
    if member.isfifo():
        return "FIFO"
    if member.issparse():
        return "sparse file"
    return f"special member (type {member.type!r})"


def _ratio_checked(
    chunks: Iterator[bytes], writer: _TreeWriter, compressed: int, archive_size: int
) -> Iterator[bytes]:
    """A zip member's bytes, checked against its own compressed size and against the whole
    archive's (members may share compressed bytes: the overlapping-entries bomb)."""
    produced = 0
    for chunk in chunks:
        produced += len(chunk)
        writer.check_ratio(produced, min(compressed, archive_size))
        writer.check_ratio(writer.result.total_bytes + len(chunk), archive_size)
        writer.check_time()
        yield chunk


def _unpack_zip(raw: BinaryIO, writer: _TreeWriter) -> None:
    archive_size = os.fstat(raw.fileno()).st_size
    with zipfile.ZipFile(raw) as archive:
        infos = archive.infolist()
        if len(infos) > writer.limits.max_members:
            raise writer.too_many()
        for info in infos:
            writer.count_member()
            name = info.filename
            unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
            file_type = stat.S_IFMT(unix_mode)
            if info.flag_bits & 0x1:
                raise PipelineError("archive.corrupt", f"{writer.archive_name}: {name!r} is encrypted")
            if info.is_dir() or file_type == stat.S_IFDIR:
                writer.add_directory(name)
            elif file_type == stat.S_IFLNK:
                with archive.open(info) as handle:
                    target = handle.read(_MAX_SYMLINK_TARGET + 1)
                if len(target) > _MAX_SYMLINK_TARGET:
                    raise PipelineError(
                        "archive.unsafe-symlink", f"{writer.archive_name}: {name!r} target is too long"
                    )
                writer.add_symlink(name, target.decode("utf-8"))
            elif file_type in (0, stat.S_IFREG):
                with archive.open(info) as handle:
                    chunks = _ratio_checked(_chunks(handle), writer, info.compress_size, archive_size)
                    writer.add_file(name, unix_mode & 0o7777 or 0o644, chunks)
            else:
                writer.check_path(name)
                raise PipelineError(
                    "archive.special-file",
                    f"{writer.archive_name}: {name!r} is a device node, FIFO or socket; "
                    "only files, directories and symlinks may be unpacked",
                )


# --------------------------------------------------------------------------------------------
# Writer


class _TreeWriter:
    """Checks member paths against what has been written so far and writes them safely."""

    def __init__(self, dest: Path, limits: UnpackLimits, strip_components: int, archive_name: str) -> None:
        self.dest = dest
        self.limits = limits
        self.strip = strip_components
        self.archive_name = archive_name
        self.result = UnpackResult(dest=dest)
        self._members = 0
        self._kinds: dict[str, str] = {}  # relative path -> "dir" | "file" | "symlink"
        self._root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._dir_cache: tuple[str, int] | None = None
        self._deadline = time.monotonic() + limits.max_seconds if limits.max_seconds is not None else None

    def close(self) -> None:
        self._forget_cached_dir()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- limits ----------------------------------------------------------------------------

    def count_member(self) -> None:
        self._members += 1
        if self._members > self.limits.max_members:
            raise self.too_many()
        self.check_time()

    def check_time(self) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise PipelineError(
                "archive.too-slow",
                f"{self.archive_name} took more than {self.limits.max_seconds:g} s to unpack; "
                "refusing it (too many members, or too much data)",
            )

    def check_ratio(self, produced: int, consumed: int) -> None:
        ratio = self.limits.max_ratio
        if ratio is not None and produced > ratio * max(consumed, self.limits.ratio_floor):
            raise PipelineError(
                "archive.ratio",
                f"{self.archive_name} expands more than {ratio:g} times its compressed size; "
                "refusing it as a decompression bomb",
            )

    def too_many(self) -> PipelineError:
        return PipelineError(
            "archive.too-many-members",
            f"{self.archive_name} has more than {self.limits.max_members} members; refusing to unpack it",
        )

    def too_large(self) -> PipelineError:
        return PipelineError(
            "archive.too-large",
            f"{self.archive_name} unpacks to more than {self.limits.max_total_bytes} bytes; "
            "refusing to unpack it",
        )

    def _spend(self, size: int) -> None:
        self.result.total_bytes += size
        if self.result.total_bytes > self.limits.max_total_bytes:
            raise self.too_large()
        self.check_time()

    # -- paths -----------------------------------------------------------------------------

    def check_path(self, name: str) -> list[str]:
        """Member path as components (``.`` and empty ones dropped), refusing unsafe forms."""
        if len(name) > self.limits.max_path_length:
            raise PipelineError("archive.corrupt", f"{self.archive_name}: a member path is absurdly long")
        if "\x00" in name:
            raise PipelineError("archive.corrupt", f"{self.archive_name}: a member path contains NUL")
        if name.startswith("/"):
            raise PipelineError(
                "archive.absolute-path",
                f"{self.archive_name}: {name!r} is an absolute path; refusing to unpack",
            )
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PipelineError(
                "archive.path-traversal", f"{self.archive_name}: {name!r} contains '..'; refusing to unpack"
            )
        return parts

    def _place(self, name: str, kind: str, *, strip: bool = True) -> list[str] | None:
        """Checked, stripped components of a new member, or None when stripping leaves nothing."""
        parts = self.check_path(name)
        if strip:
            parts = parts[self.strip :]
        if not parts:
            return None
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            existing = self._kinds.get(prefix)
            if existing == "symlink":
                raise PipelineError(
                    "archive.unsafe-symlink",
                    f"{self.archive_name}: {name!r} goes through the symlink {prefix!r}; refusing to unpack",
                )
            if existing == "file":
                raise PipelineError(
                    "archive.duplicate-member", f"{self.archive_name}: {name!r} is inside the file {prefix!r}"
                )
        path = "/".join(parts)
        existing = self._kinds.get(path)
        if existing is not None and not (existing == kind == "dir"):
            raise PipelineError(
                "archive.duplicate-member",
                f"{self.archive_name}: {name!r} appears more than once; refusing to unpack",
            )
        return parts

    def _parent_fd(self, parts: list[str]) -> int:
        """An fd of the member's parent directory, creating directories without following links."""
        parent = "/".join(parts[:-1])
        if self._dir_cache is not None and self._dir_cache[0] == parent:
            return self._dir_cache[1]
        self._forget_cached_dir()
        fd = os.dup(self._root_fd)
        try:
            for depth, component in enumerate(parts[:-1], start=1):
                prefix = "/".join(parts[:depth])
                if prefix not in self._kinds:
                    _make_directory(component, fd)
                    self._kinds[prefix] = "dir"
                    self.result.directories += 1
                child = os.open(
                    component, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._dir_cache = (parent, fd)
        return fd

    def _forget_cached_dir(self) -> None:
        if self._dir_cache is not None:
            os.close(self._dir_cache[1])
            self._dir_cache = None

    # -- members ---------------------------------------------------------------------------

    def add_directory(self, name: str) -> None:
        parts = self._place(name, "dir")
        if parts is None:
            return
        path = "/".join(parts)
        if path in self._kinds:
            return  # a directory listed again, or after its contents
        parent = self._parent_fd(parts)
        _make_directory(parts[-1], parent)
        self._kinds[path] = "dir"
        self.result.directories += 1

    def add_file(
        self, name: str, mode: int, chunks: Iterator[bytes], *, strip: bool = True, display: str | None = None
    ) -> None:
        parts = self._place(name, "file", strip=strip)
        if parts is None:
            for chunk in chunks:  # still count what a stripped-away member would cost
                self._spend(len(chunk))
            return
        path = "/".join(parts)
        if mode & 0o7000:
            self.result.cleared_mode_bits.append(path)
        final_mode = 0o755 if mode & 0o111 else 0o644
        parent = self._parent_fd(parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, 0o600, dir_fd=parent)
        self._kinds[path] = "file"
        with os.fdopen(fd, "wb", buffering=0) as out:
            for chunk in chunks:
                self._spend(len(chunk))
                out.write(chunk)
            os.fchmod(out.fileno(), final_mode)  # exact mode, whatever the umask
        self.result.files += 1

    def add_symlink(self, name: str, target: str) -> None:
        parts = self._place(name, "symlink")
        if parts is None:
            self.check_symlink_target(name, target, depth=0)
            return
        self.check_symlink_target(name, target, depth=len(parts) - 1)
        self._spend(len(target.encode("utf-8", "surrogateescape")))
        parent = self._parent_fd(parts)
        os.symlink(target, parts[-1], dir_fd=parent)
        self._kinds["/".join(parts)] = "symlink"
        self.result.symlinks += 1

    def check_symlink_target(self, name: str, target: str, depth: int) -> None:
        """Relative; ``..`` only as a leading run and no deeper than the link's own directory."""

        def refuse(reason: str) -> PipelineError:
            return PipelineError(
                "archive.unsafe-symlink", f"{self.archive_name}: symlink {name!r} -> {target!r} {reason}"
            )

        if not target or "\x00" in target or len(target) > _MAX_SYMLINK_TARGET:
            raise refuse("has an empty or invalid target")
        if target.startswith("/"):
            raise refuse("is absolute; only relative symlinks inside the tree are allowed")
        parts = [p for p in target.split("/") if p not in ("", ".")]
        ups = 0
        while ups < len(parts) and parts[ups] == "..":
            ups += 1
        if ".." in parts[ups:]:
            raise refuse("climbs ('..') after descending; write the target without it")
        if ups > depth:
            raise refuse("points outside the unpacked tree")


def _make_directory(name: str, parent_fd: int) -> None:
    """mkdir with exactly 0755 (whatever the umask), set on the new directory itself."""
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
