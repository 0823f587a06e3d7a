"""The one subprocess wrapper: errors with codes and output, group-wide timeouts, missing tools."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from builds.pipeline.command import run_command
from builds.pipeline.errors import PipelineError


def test_failure_carries_the_callers_code_and_the_output() -> None:
    with pytest.raises(PipelineError) as error:
        run_command(
            ["sh", "-c", "echo progress; echo 'disk full' >&2; exit 3"], error_code="image.mksquashfs-failed"
        )
    assert error.value.code == "image.mksquashfs-failed"
    assert "exit code 3" in error.value.message and "disk full" in error.value.message
    assert "progress" in error.value.output and "disk full" in error.value.output


def test_missing_tool_says_what_to_install() -> None:
    with pytest.raises(PipelineError) as error:
        run_command(
            ["mksquashfs", "-version"], error_code="image.mksquashfs-failed", env={"PATH": "/nonexistent"}
        )
    assert error.value.code == "tool.missing"
    assert error.value.message == "mksquashfs is not installed (apt-get install squashfs-tools)"


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    with pytest.raises(PipelineError) as error:
        run_command(["sh", "-c", script], error_code="verify.merge-failed", timeout=1)
    assert error.value.code == "verify.timeout"
    assert error.value.retryable
    child = int(pidfile.read_text())
    for _ in range(100):  # the kernel reaps the killed grandchild asynchronously
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"background child {child} survived the timeout")


def test_stdin_and_passed_descriptors() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"from a pipe\n")
    os.close(write_fd)
    try:
        result = run_command(
            ["sh", "-c", f"cat; cat /dev/fd/{read_fd}"],
            error_code="x.failed",
            stdin_data=b"from stdin\n",
            pass_fds=[read_fd],
        )
    finally:
        os.close(read_fd)
    assert result.stdout == b"from stdin\nfrom a pipe\n"


def test_check_false_returns_the_exit_code() -> None:
    assert run_command(["sh", "-c", "exit 4"], error_code="x.failed", check=False).returncode == 4
