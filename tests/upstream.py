"""A stand-in for upstream release hosts, and builders for the archives they serve.

Tests never touch the network: :class:`UpstreamServer` is a real HTTP server on 127.0.0.1 (random
port) where a test registers routes (content, redirect chains, slow and flaky endpoints, error
statuses, large streamed bodies) and reads how often each was hit. ``make_tar``/``make_zip`` build
real archives in memory, including hostile members (absolute paths, ``..``, hard links, device
nodes, FIFOs, setuid files, escaping symlinks) for unpacker and pipeline tests. ``static_hello``
compiles a real static executable per architecture (Debian's cross compilers) for the archives.
"""

from __future__ import annotations

import functools
import io
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

Handler = Callable[[BaseHTTPRequestHandler, int], None]  # (request, hit number starting at 1)


class UpstreamServer:
    """Serves registered routes on ``http://127.0.0.1:<port>``; query strings are ignored."""

    def __init__(self) -> None:
        self._routes: dict[str, Handler] = {}
        self._hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> UpstreamServer:
        server = self

        class RequestHandler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server._hits[path] += 1
                    hit = server._hits[path]
                    route = server._routes.get(path)
                if route is None:
                    self.send_error(404, "no such route")
                    return
                try:
                    route(self, hit)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to do

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="upstream", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def hits(self, path: str) -> int:
        """How many GET requests ``path`` received (registered or not)."""
        with self._lock:
            return self._hits[path]

    def route(self, path: str, handler: Handler) -> str:
        """Register a raw handler; returns the route's full URL."""
        if not path.startswith("/"):
            raise ValueError("route paths start with /")
        with self._lock:
            self._routes[path] = handler
        return self.url(path)

    # -- ready-made routes -----------------------------------------------------------------

    def add_bytes(
        self, path: str, content: bytes, *, headers: dict[str, str] | None = None, send_length: bool = True
    ) -> str:
        """200 with ``content``. ``send_length=False`` omits Content-Length (body until close)."""

        def handler(request: BaseHTTPRequestHandler, hit: int) -> None:
            _send_body(request, 200, content, headers, send_length)

        return self.route(path, handler)

    def add_status(self, path: str, status: int, body: bytes = b"error\n") -> str:
        """Always answers ``status`` (404, 500, 403 ...)."""

        def handler(request: BaseHTTPRequestHandler, hit: int) -> None:
            _send_body(request, status, body, None, True)

        return self.route(path, handler)

    def add_redirect(self, path: str, location: str, status: int = 302) -> str:
        """Redirect to ``location`` (absolute URL or path on this server)."""

        def handler(request: BaseHTTPRequestHandler, hit: int) -> None:
            request.send_response(status)
            request.send_header("Location", location)
            request.send_header("Content-Length", "0")
            request.end_headers()

        return self.route(path, handler)

    def add_redirect_chain(self, path: str, target: str, hops: int) -> str:
        """``path`` -> ``path/1`` -> ... -> ``target`` with exactly ``hops`` redirects in total."""
        steps = [path] + [f"{path}/{i}" for i in range(1, hops)]
        for current, following in zip(steps, [*steps[1:], target], strict=True):
            self.add_redirect(current, following)
        return self.url(path)

    def add_flaky(
        self,
        path: str,
        content: bytes,
        *,
        failures: int,
        status: int = 503,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Answers ``status`` for the first ``failures`` hits, then 200 with ``content``."""

        def handler(request: BaseHTTPRequestHandler, hit: int) -> None:
            if hit <= failures:
                _send_body(request, status, b"try again\n", headers, True)
            else:
                _send_body(request, 200, content, None, True)

        return self.route(path, handler)

    def add_slow(self, path: str, content: bytes, *, delay: float, before_headers: bool = True) -> str:
        """Waits ``delay`` seconds before the headers (or, with ``before_headers=False``, after the
        headers and before the body), then serves ``content``. Used to trigger read timeouts."""

        def handler(request: BaseHTTPRequestHandler, hit: int) -> None:
            if before_headers:
                self._stopping.wait(delay)
                _send_body(request, 200, content, None, True)
                return
            request.send_response(200)
            request.send_header("Content-Length", str(len(content)))
            request.end_headers()
            request.wfile.flush()
            self._stopping.wait(delay)
            request.wfile.write(content)

        return self.route(path, handler)

    def add_stream(
        self,
        path: str,
        size: int,
        *,
        chunk: int = 64 * 1024,
        send_length: bool = True,
        pattern: bytes = b"\0",
    ) -> str:
        """A ``size``-byte body generated in chunks (never held in memory), optionally without
        Content-Length. Returns the URL; the body is ``pattern`` repeated and cut to ``size``."""
        block = (pattern * (chunk // len(pattern) + 1))[:chunk]

        def handler(request: BaseHTTPRequestHandler, hit: int) -> None:
            request.send_response(200)
            if send_length:
                request.send_header("Content-Length", str(size))
            request.end_headers()
            remaining = size
            while remaining > 0 and not self._stopping.is_set():
                piece = block[: min(chunk, remaining)]
                request.wfile.write(piece)
                remaining -= len(piece)

        return self.route(path, handler)

    def add_lying_length(self, path: str, content: bytes, declared: int) -> str:
        """Declares Content-Length ``declared`` but sends ``content`` (then closes)."""

        def handler(request: BaseHTTPRequestHandler, hit: int) -> None:
            request.send_response(200)
            request.send_header("Content-Length", str(declared))
            request.end_headers()
            request.wfile.write(content)
            request.close_connection = True

        return self.route(path, handler)


def _send_body(
    request: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    headers: dict[str, str] | None,
    send_length: bool,
) -> None:
    request.send_response(status)
    for key, value in (headers or {}).items():
        request.send_header(key, value)
    if send_length:
        request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)
    if not send_length:
        request.close_connection = True


# ------------------------------------------------------------------------------------------
# Archive builders


@dataclass(frozen=True)
class Member:
    """One archive entry. ``kind``: file, dir, symlink, hardlink, chardev, blockdev, fifo."""

    name: str
    data: bytes = b""
    kind: str = "file"
    mode: int = 0o644
    target: str = ""  # symlink / hard link target


def file(name: str, data: bytes = b"", mode: int = 0o644) -> Member:
    return Member(name, data, "file", mode)


def executable(name: str, data: bytes = b"#!/bin/sh\necho ok\n") -> Member:
    return Member(name, data, "file", 0o755)


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(name, kind="dir", mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, kind="symlink", mode=0o777, target=target)


def hardlink(name: str, target: str) -> Member:
    return Member(name, kind="hardlink", target=target)


def device(name: str, kind: str = "chardev") -> Member:
    return Member(name, kind=kind, mode=0o666)


def fifo(name: str) -> Member:
    return Member(name, kind="fifo", mode=0o644)


def setuid_file(name: str, data: bytes = b"#!/bin/sh\nid\n") -> Member:
    return Member(name, data, "file", 0o4755)


_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tar(members: Iterable[Member], compression: str = "gz") -> bytes:
    """A tar archive of ``members``; compression: "" (none), "gz", "xz" or "zst"."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = _TAR_TYPES[member.kind]
            info.mode = member.mode
            info.mtime = 1_700_000_000
            info.uname = info.gname = "root"
            if member.kind in ("symlink", "hardlink"):
                info.linkname = member.target
            if member.kind in ("chardev", "blockdev"):
                info.devmajor, info.devminor = 1, 3
            if member.kind == "file":
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return compress(raw.getvalue(), compression)


def compress(data: bytes, compression: str) -> bytes:
    """``data`` compressed as gz (reproducibly, mtime 0), xz or zst; "" returns it unchanged."""
    if compression == "":
        return data
    if compression in ("gz", "tgz"):
        import gzip

        return gzip.compress(data, mtime=0)
    if compression == "xz":
        import lzma

        return lzma.compress(data)
    if compression == "zst":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(f"unknown compression {compression!r}")


def make_zip(members: Iterable[Member]) -> bytes:
    """A zip archive of ``members`` (files, dirs, symlinks, and file-type bits for the rest)."""
    raw = io.BytesIO()
    file_types = {
        "file": stat.S_IFREG,
        "dir": stat.S_IFDIR,
        "symlink": stat.S_IFLNK,
        "chardev": stat.S_IFCHR,
        "blockdev": stat.S_IFBLK,
        "fifo": stat.S_IFIFO,
    }
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            if member.kind == "hardlink":
                raise ValueError("zip has no hard links")
            name = (
                member.name + "/" if member.kind == "dir" and not member.name.endswith("/") else member.name
            )
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3  # unix: external_attr carries the mode
            info.external_attr = (file_types[member.kind] | member.mode) << 16
            if member.kind == "dir":
                info.external_attr |= 0x10  # MS-DOS directory flag
            data = member.target.encode() if member.kind == "symlink" else member.data
            archive.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return raw.getvalue()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (for server-side effects)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# systemd arch -> the Debian cross compiler that builds for it (.ci/run installs both).
C_COMPILERS = {"x86-64": "x86_64-linux-gnu-gcc", "arm64": "aarch64-linux-gnu-gcc"}
HELLO_C = b"""\
#include <stdio.h>
int main(void) { puts("hello from a static " ARCH " binary"); return 0; }
"""


@functools.cache
def static_hello(arch: str) -> bytes:
    """A real, stripped, statically linked executable for ``arch`` (systemd's name), from C.

    Skips the test when the cross compiler is missing (``apt-get install gcc
    gcc-aarch64-linux-gnu``).
    """
    compiler = C_COMPILERS[arch]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed (apt-get install gcc gcc-aarch64-linux-gnu)")
    with tempfile.TemporaryDirectory(prefix="bh-elf-") as work:
        source, binary = Path(work, "hello.c"), Path(work, "hello")
        source.write_bytes(HELLO_C)
        subprocess.run(
            [compiler, "-static", "-Os", "-s", f'-DARCH="{arch}"', "-o", str(binary), str(source)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return binary.read_bytes()


def readelf_machine(data: bytes) -> str:
    """The ``Machine:`` line of binutils' ``readelf -h`` for ELF ``data`` (an independent reading)."""
    with tempfile.NamedTemporaryFile(prefix="bh-elf-") as handle:
        handle.write(data)
        handle.flush()
        argv = ["readelf", "-h", handle.name]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Machine:" in line)
