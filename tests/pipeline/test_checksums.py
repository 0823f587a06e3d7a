"""SHA256SUMS in the strict format systemd-sysupdate parses."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from builds.pipeline.checksums import format_sums, parse_sums, sha256_file, write_sums
from builds.pipeline.errors import PipelineError

A = "a" * 64
B = "0123456789abcdef" * 4


def test_written_sums_are_sorted_and_checkable_by_sha256sum(tmp_path: Path) -> None:
    (tmp_path / "b-1-x86-64.raw").write_bytes(b"bee")
    (tmp_path / "a-1-x86-64.raw").write_bytes(b"ay")
    entries = {p.name: sha256_file(p) for p in tmp_path.iterdir()}
    write_sums(tmp_path / "SHA256SUMS", entries)
    text = (tmp_path / "SHA256SUMS").read_text()
    assert text.splitlines()[0].endswith("  a-1-x86-64.raw") and text.endswith("b-1-x86-64.raw\n")
    check = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0, check.stderr
    assert parse_sums(text) == entries


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as handle:
        for _ in range(5):
            handle.write(b"x" * (1024 * 1024 + 7))
    assert sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()


def test_binary_marker_is_accepted() -> None:
    assert parse_sums(f"{A} *x.raw\n{B}  y.raw\n") == {"x.raw": A, "y.raw": B}


@pytest.mark.parametrize(
    "text",
    [
        f"{A}  x.raw",  # no final newline
        f"{A}  x.raw\n\n",  # blank line
        f"# comment\n{A}  x.raw\n",
        f"{A.upper()}  x.raw\n",
        f"{A[:-1]}  x.raw\n",
        f"{A} x.raw\n",  # one space: no "*" or second space before the name
        f"{A}  dir/x.raw\n",
        f"\\{A}  x\\nraw\n",  # sha256sum's escaped form
        f"{A}  x.raw\n{B}  x.raw\n",  # listed twice
        f"{A}  x.raw\r\n",
    ],
)
def test_parser_is_strict(text: str) -> None:
    with pytest.raises(PipelineError) as error:
        parse_sums(text)
    assert error.value.code == "sums.invalid"


def test_invalid_utf8_is_refused() -> None:
    with pytest.raises(PipelineError) as error:
        parse_sums(A.encode() + b"  \xff.raw\n")
    assert error.value.code == "sums.invalid"


def test_names_that_sysupdate_cannot_match_are_not_written() -> None:
    with pytest.raises(PipelineError) as error:
        format_sums({"bad name.raw": A})
    assert error.value.code == "sums.invalid-name"
    with pytest.raises(PipelineError):
        format_sums({"x.raw": "XYZ"})
