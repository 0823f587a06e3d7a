"""The one way the pipeline runs external tools (mksquashfs, gpg, systemd-sysext, ...).

argv lists only (never a shell string), a timeout that kills the tool's whole process group
(a tool's helpers must not outlive it), output captured and attached to the error, and a plain
sentence with the package to install when the tool is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline.errors import PipelineError

# Debian package that provides each tool, for the "not installed" sentence.
INSTALL_HINTS: dict[str, str] = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils",
    "gpg": "gnupg",
    "gpgconf": "gnupg",
    "systemd-sysext": "systemd",
    "unshare": "util-linux",
    "bwrap": "bubblewrap",
    "dpkg-query": "dpkg",
    "tar": "tar",
    "sha256sum": "coreutils",
}

# Errors keep the tail of the output: the interesting part of a failing tool's report is at the end.
MAX_ERROR_OUTPUT = 16 * 1024


@dataclass(frozen=True)
class CommandResult:
    """What a finished tool run left behind."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float

    @property
    def output(self) -> str:
        """stdout and stderr as text, for error reports."""
        return _as_text(self.stdout, self.stderr)


def _as_text(stdout: bytes, stderr: bytes) -> str:
    text = (stdout + (b"\n" if stdout and stderr else b"") + stderr).decode("utf-8", "replace")
    if len(text) > MAX_ERROR_OUTPUT:
        text = "[...]\n" + text[-MAX_ERROR_OUTPUT:]
    return text


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        if line.strip():
            return line.strip()[:300]
    return ""


def tool_missing_error(tool: str) -> PipelineError:
    package = INSTALL_HINTS.get(tool)
    hint = f" (apt-get install {package})" if package else ""
    return PipelineError("tool.missing", f"{tool} is not installed{hint}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    error_code: str,
    what: str | None = None,
    timeout: float = 600.0,
    timeout_code: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    replace_env: bool = False,
    stdin_data: bytes | None = None,
    pass_fds: Collection[int] = (),
    check: bool = True,
    retryable: bool = False,
) -> CommandResult:
    """Run ``argv`` and return its result; raise ``PipelineError(error_code)`` when it fails.

    ``env`` is layered over the current environment (or replaces it with ``replace_env``);
    ``LC_ALL=C`` is always set so that tool output can be parsed. On timeout the whole process
    group is killed and ``timeout_code`` (default ``<area>.timeout``) is raised as retryable.
    With ``check=False`` a non-zero exit is returned instead of raised.
    """
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("run_command needs a non-empty argv")
    tool = Path(args[0]).name
    label = what or tool
    full_env = dict(env or {}) if replace_env else {**os.environ, **(env or {})}
    full_env["LC_ALL"] = "C"
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=full_env,
            pass_fds=tuple(pass_fds),
            start_new_session=True,  # own process group, so a timeout can kill helpers too
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise PipelineError(error_code, f"{label}: working directory {cwd} does not exist") from exc
        raise tool_missing_error(tool) from exc
    except PermissionError as exc:
        raise PipelineError(error_code, f"{label}: {args[0]} is not executable") from exc
    try:
        stdout, stderr = proc.communicate(stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # A helper left the group and still holds the pipes: give up on its output.
            proc.wait()
            stdout, stderr = b"", b""
        area = error_code.split(".", 1)[0]
        raise PipelineError(
            timeout_code or f"{area}.timeout",
            f"{label} did not finish within {timeout:g} seconds and was stopped",
            retryable=True,
            output=_as_text(stdout, stderr),
        ) from None
    except BaseException:
        # KeyboardInterrupt, a worker shutdown: never leave the tool running.
        _kill_group(proc)
        proc.wait()
        raise
    result = CommandResult(tuple(args), proc.returncode, stdout, stderr, time.monotonic() - started)
    if check and proc.returncode != 0:
        if proc.returncode < 0:
            how = f"was killed by signal {-proc.returncode}"
        else:
            how = f"failed with exit code {proc.returncode}"
        detail = _last_line(stderr) or _last_line(stdout)
        raise PipelineError(
            error_code,
            f"{label} {how}" + (f": {detail}" if detail else ""),
            retryable=retryable,
            output=result.output,
        )
    return result
