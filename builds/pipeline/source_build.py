"""Compile a recipe's sources in a sandbox: the ``build:`` section of a recipe (``recipe.BuildSpec``).

The commands are the recipe's, and team recipes are hostile, so they never run on the worker
itself. They run under bubblewrap (``bwrap``, Debian's ``bubblewrap``), an existing, audited
sandbox tool, with:

- new user, mount, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): the build
  runs as an unprivileged user of its own, sees its own processes only, and has no network at all
  (a loopback of its own, nothing listening): sources and toolchain are on disk beforehand;
- a file system made of the worker's ``/usr`` (read-only: the pinned Debian toolchain, checked
  with ``dpkg-query`` before anything is downloaded), the unpacked sources read-only at
  ``/build/src`` (further sources at ``/build/deps/<id>``), a scratch ``/build/work`` and the
  output ``/build/out``; nothing else of the worker (no ``/etc``, ``/var``, ``/home``, keys);
- limits: wall-clock seconds (the sandbox is killed), CPU seconds (``RLIMIT_CPU``), address
  space per process (``RLIMIT_AS``) and file size (``RLIMIT_FSIZE``), set by ``prlimit`` inside
  the sandbox, no core dumps;
- fixed paths, ``SOURCE_DATE_EPOCH``, ``TZ=UTC`` and ``LC_ALL=C``, so that the same sources and
  toolchain compile to the same bytes (the image step then fixes every mtime and owner).

The output streams, a few lines at a time, to a callback (the build log). Failures have their
own codes: ``source.compile-failed`` (with the last lines), ``source.timeout``,
``source.out-of-memory``; the worker's own trouble is ``source.sandbox-unavailable`` or
``source.toolchain-mismatch``.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline.command import run_command, tool_missing_error
from builds.pipeline.errors import PipelineError
from builds.pipeline.recipe import BuildSpec

BWRAP = "bwrap"
PRLIMIT = "/usr/bin/prlimit"
SANDBOX_SHELL = "/bin/sh"
# Fixed paths inside the sandbox: compilers embed them (debug info, __FILE__), so they must not
# depend on the worker's scratch directory.
SRC_DIR = "/build/src"
DEPS_DIR = "/build/deps"
WORK_DIR = "/build/work"
OUT_DIR = "/build/out"
SANDBOX_TMP = "/tmp"  # noqa: S108 - a tmpfs of the sandbox's own, not the worker's /tmp
SANDBOX_UID = 1000
PATH = "/usr/local/bin:/usr/bin:/bin"
# The worker's top-level directories a toolchain needs (merged-/usr links or real directories).
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Files of /etc that compilers and the dynamic linker read; nothing else of /etc is visible.
_ETC_ENTRIES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d")

MAX_FILE_BYTES = 8 * 1024**3  # RLIMIT_FSIZE: no single file of a build may grow past this
TAIL_LINES = 20  # lines of output a failure's message quotes
MAX_LINE_CHARS = 2000
MAX_LOGGED_BYTES = 2 * 1024 * 1024  # beyond this, output still counts for the tail but is not logged
FLUSH_SECONDS = 0.5
FLUSH_LINES = 40
FLUSH_BYTES = 8000  # one build log line holds at most 10000 characters
_XCPU_EXITS = frozenset({-signal.SIGXCPU, 128 + signal.SIGXCPU})
_KILLED_EXITS = frozenset({-signal.SIGKILL, 128 + signal.SIGKILL})
# What toolchains print when an allocation fails under RLIMIT_AS.
_OUT_OF_MEMORY = re.compile(
    r"(MemoryError|memory exhausted|Cannot allocate memory|out of memory|std::bad_alloc"
    r"|memory allocation of \d+ bytes failed|failed to allocate memory)",
    re.IGNORECASE,
)

# Control characters (NUL above all: PostgreSQL text refuses it) never reach the log or a message.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

Output = Callable[[str], None]


@dataclass(frozen=True)
class CompileResult:
    """The output directory of a finished build and what it took."""

    output_dir: Path
    seconds: float
    lines: int


# --- toolchain ----------------------------------------------------------------------------------


def installed_versions(packages: list[str]) -> dict[str, str]:
    """Installed Debian package -> version, for those of ``packages`` that are installed."""
    if not packages:
        return {}
    result = run_command(
        ["dpkg-query", "-W", "-f", "${Package}\\t${Version}\\t${db:Status-Abbrev}\\n", "--", *packages],
        error_code="source.toolchain-mismatch",
        what="dpkg-query",
        timeout=60,
        check=False,  # exit 1 when some package is unknown: the others are still listed
    )
    found = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2].strip().startswith("ii"):
            found[fields[0].split(":", 1)[0]] = fields[1]
    return found


def check_toolchain(
    toolchain: Mapping[str, str],
    *,
    label: str,
    query: Callable[[list[str]], dict[str, str]] = installed_versions,
) -> None:
    """Refuse to build unless every pinned package is installed at exactly its pinned version.

    The sandbox uses the worker's own ``/usr``: a different compiler would build different bytes
    than the ones a curator approved, so a missing or other version stops the build first.
    """
    installed = query(sorted(toolchain))
    problems = []
    for package, wanted in sorted(toolchain.items()):
        have = installed.get(package)
        if have is None:
            problems.append(f"{package} {wanted} is not installed")
        elif have != wanted:
            problems.append(f"{package} is {have}, the recipe pins {wanted}")
    if problems:
        raise PipelineError(
            "source.toolchain-mismatch",
            f"{label}: the worker's toolchain does not match the recipe: {'; '.join(problems)}. "
            f"Install the pinned versions on the worker (apt-get install "
            f"{' '.join(f'{p}={v}' for p, v in sorted(toolchain.items()))}) or update the recipe's pins",
        )


# --- the sandbox --------------------------------------------------------------------------------


def sandbox_argv(
    *,
    source_dir: Path,
    deps: Mapping[str, Path],
    work_dir: Path,
    out_dir: Path,
    env: Mapping[str, str],
) -> list[str]:
    """bwrap's options for the build sandbox (see the module docstring), up to the command."""
    argv = [
        BWRAP,
        "--unshare-all",  # user, mount, pid, net, ipc, uts, cgroup
        "--die-with-parent",
        "--new-session",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", "build",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for name in _SYSTEM_DIRS:
        host = Path("/", name)
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    for name in _ETC_ENTRIES:
        host = Path("/etc", name)
        if host.exists():
            argv += ["--ro-bind", str(host), str(host)]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", SANDBOX_TMP]
    argv += ["--ro-bind", str(source_dir), SRC_DIR]
    for dep_id, path in sorted(deps.items()):
        argv += ["--ro-bind", str(path), f"{DEPS_DIR}/{dep_id}"]
    argv += ["--bind", str(work_dir), WORK_DIR, "--bind", str(out_dir), OUT_DIR]
    argv += ["--remount-ro", "/", "--chdir", WORK_DIR, "--clearenv"]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    return argv


def sandbox_probe() -> None:
    """Raise ``source.sandbox-unavailable`` unless bwrap can make its namespaces here.

    A container without user namespaces (or a seccomp profile refusing them) cannot sandbox a
    build; that is the installation's problem, said before any compiler runs.
    """
    try:
        result = run_command(
            [BWRAP, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--", "true"],
            error_code="source.sandbox-unavailable",
            what="bwrap",
            timeout=30,
            check=False,
        )
    except PipelineError as exc:
        if exc.code == "tool.missing":
            raise tool_missing_error(BWRAP) from exc
        raise
    if result.returncode != 0:
        raise PipelineError(
            "source.sandbox-unavailable",
            "this worker cannot run builds in a sandbox (bwrap could not create its user, mount "
            f"and network namespaces: {result.output.strip()[-300:]}); allow unprivileged user "
            "namespaces, or run the worker where they are allowed (see README, Source builds)",
        )


def build_script(commands: tuple[str, ...]) -> str:
    """The shell script the sandbox runs: stop at the first failing command, echo each one."""
    lines = ["set -eu", f"cd {WORK_DIR}"]
    for command in commands:
        first = command.splitlines()[0] if command else ""
        shown = first + (" ..." if "\n" in command else "")
        lines.append("printf '%s\\n' " + _sh_quote(f"$ {shown}"))
        lines.append(command)
    return "\n".join(lines) + "\n"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def compile_source(
    spec: BuildSpec,
    *,
    source_dir: Path,
    deps: Mapping[str, Path],
    scratch: Path,
    label: str,
    timestamp: int,
    variables: Mapping[str, str] | None = None,
    output: Output | None = None,
) -> CompileResult:
    """Run ``spec.commands`` in the sandbox over ``source_dir``; return the output directory.

    ``scratch`` (empty, the worker's) receives ``work/`` and ``out/``. ``output`` receives the
    build's output (stdout and stderr together) as it comes, a few lines per call. Any failure
    raises ``PipelineError``; the caller removes ``scratch``.
    """
    sandbox_probe()
    work_dir = scratch / "work"
    out_dir = scratch / "out"
    work_dir.mkdir(parents=True)
    out_dir.mkdir(parents=True)
    env = {
        **(variables or {}),
        "PATH": PATH,
        "HOME": WORK_DIR,
        "TMPDIR": SANDBOX_TMP,
        "SRC_DIR": SRC_DIR,
        "DEPS_DIR": DEPS_DIR,
        "WORK_DIR": WORK_DIR,
        "OUT_DIR": OUT_DIR,
        "SOURCE_DATE_EPOCH": str(timestamp),
        "TZ": "UTC",
        "LC_ALL": "C",
        "LANG": "C",
    }
    limits = spec.limits
    argv = sandbox_argv(source_dir=source_dir, deps=deps, work_dir=work_dir, out_dir=out_dir, env=env)
    argv += [
        "--", PRLIMIT,
        f"--as={limits.memory_mb * 1024 * 1024}",
        # SIGXCPU at the soft limit; SIGKILL 5 s later for a build that ignores it.
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 5}",
        f"--fsize={MAX_FILE_BYTES}",
        "--core=0",
        "--", SANDBOX_SHELL, "-c", build_script(spec.commands),
    ]  # fmt: skip
    stream = _OutputStream(output)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"PATH": PATH, "LC_ALL": "C"},
        )
    except FileNotFoundError as exc:
        raise tool_missing_error(BWRAP) from exc
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        _kill(proc)

    watchdog = threading.Timer(limits.seconds, stop)
    watchdog.daemon = True
    watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            stream.add(raw)
        returncode = proc.wait()
    except BaseException:
        # A cancelled build (the callback raised) or a worker shutdown: never leave it running.
        _kill(proc)
        proc.wait()
        raise
    finally:
        watchdog.cancel()
        stream.flush()
    seconds = time.monotonic() - started
    tail = "\n".join(stream.tail)
    if timed_out.is_set() or returncode in _XCPU_EXITS:
        which = f"{limits.seconds} seconds" if timed_out.is_set() else f"{limits.cpu_seconds} CPU seconds"
        raise PipelineError(
            "source.timeout",
            f"{label}: the build did not finish within its limit of {which} and was stopped; "
            f"last output:\n{tail}",
        )
    if returncode != 0 and (returncode in _KILLED_EXITS or _OUT_OF_MEMORY.search(tail)):
        raise PipelineError(
            "source.out-of-memory",
            f"{label}: the build ran out of memory (limit {limits.memory_mb} MiB per process); "
            f"last output:\n{tail}",
        )
    if returncode != 0:
        raise PipelineError(
            "source.compile-failed",
            f"{label}: the build failed (exit code {returncode}); last output:\n{tail}",
        )
    return CompileResult(out_dir, seconds, stream.count)


def make_removable(path: Path) -> None:
    """Give the owner write access to every directory under ``path`` so it can be removed
    (a build may leave read-only directories, e.g. a Cargo registry)."""
    for dirpath, dirnames, _filenames in os.walk(path):
        for name in dirnames:  # before os.walk lists them
            child = os.path.join(dirpath, name)
            try:
                mode = os.lstat(child).st_mode
                if stat.S_ISDIR(mode) and mode & 0o700 != 0o700:
                    os.chmod(child, stat.S_IMODE(mode) | 0o700)
            except OSError:
                pass


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # bwrap runs with --die-with-parent and its own PID namespace: killing its group ends every
    # process of the build (the namespace's init takes the rest with it).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _OutputStream:
    """Batches output lines for the callback and keeps the last lines for error messages."""

    def __init__(self, output: Output | None) -> None:
        self.output = output
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.count = 0
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._logged = 0
        self._last_flush = time.monotonic()
        self._truncated = False

    def add(self, raw: bytes) -> None:
        line = _CONTROL.sub("\ufffd", raw.decode("utf-8", "replace").rstrip("\r\n"))[:MAX_LINE_CHARS]
        self.tail.append(line)
        self.count += 1
        if self._logged < MAX_LOGGED_BYTES:
            self._pending.append(line)
            self._logged += len(line) + 1
        elif not self._truncated:
            self._truncated = True
            self._pending.append(f"[more output than {MAX_LOGGED_BYTES} bytes: the rest is not logged]")
        self._pending_bytes += len(line) + 1
        if (
            len(self._pending) >= FLUSH_LINES
            or self._pending_bytes >= FLUSH_BYTES
            or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        self._pending_bytes = 0
        if self._pending and self.output is not None:
            text, self._pending = "\n".join(self._pending), []
            self.output(text)
        self._pending = []
