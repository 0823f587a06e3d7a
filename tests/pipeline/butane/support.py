"""Shared helpers for the Butane tests: semantic comparison of Ignition configs."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from builds.pipeline.butane import cli
from builds.pipeline.butane.dataurl import decode_data_url
from builds.pipeline.butane.ignition import iter_resources

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO.parent / "shared" / "golden" / "butane"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def normalized(text: str) -> Any:
    """An Ignition document with every data: URL replaced by the bytes it carries.

    gzip payloads are compared after decompression (Go's deflate output differs from zlib's,
    and so may the gzip-or-not choice near the threshold), so ``compression`` is reduced to
    whether it was written.
    """
    cfg = json.loads(text)
    for _path, resource in iter_resources(cfg):
        source = resource.get("source")
        if source is None or not source.startswith("data:"):
            continue
        data = decode_data_url(source)
        if resource.get("compression") == "gzip":
            data = gzip.decompress(data)
        resource["source"] = {"data": data.hex()}
        if "compression" in resource:
            resource["compression"] = "<set>"
    return cfg


def auto_gzip_used(text: str) -> bool:
    return '"compression":"gzip"' in text.replace(" ", "") and "H4sI" in text


def _files_dir(case: Path, tmp_path: Path) -> str | None:
    """A private copy of ``CASE.d`` with its symlinks restored.

    The shared checkout stores tree symlinks as regular files holding the target (``env-link``
    holds ``/etc/portal/env``). The golden output says which were links; we recreate them.
    """
    source = case.with_suffix(".d")
    if not source.is_dir():
        return None
    copy = tmp_path / "files"
    shutil.copytree(source, copy, symlinks=True)
    for path in copy.rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)  # the shared copy is read-only
    golden = yaml.safe_load(case.with_suffix(".ign").read_text())
    document = yaml.safe_load(case.read_text()) or {}
    for tree in (document.get("storage") or {}).get("trees") or []:
        dest = (tree.get("path") or "/").rstrip("/")
        for link in (golden.get("storage") or {}).get("links") or []:
            if not link["path"].startswith(dest + "/"):
                continue
            candidate = copy / tree["local"] / link["path"][len(dest) + 1 :]
            if candidate.is_file() and not candidate.is_symlink():
                if candidate.read_bytes() == link["target"].encode():
                    candidate.unlink()
                    candidate.symlink_to(link["target"])
    return str(copy)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _expected_codes(case: Path) -> tuple[int, int]:
    fields = dict(item.split("=") for item in case.with_suffix(".rc").read_text().split())
    return int(fields["rc"]), int(fields.get("strict_rc", fields["rc"]))


def _lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line}


def check_output_case(case: Path, pretty: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``CASE.bu`` transpiles to ``CASE.ign`` / ``CASE.pretty.ign`` with an empty report."""
    expected_file = case.with_suffix(".pretty.ign" if pretty else ".ign")
    expected = expected_file.read_text()
    argv = [str(case)]
    files_dir = _files_dir(case, tmp_path)
    if files_dir:
        argv = ["-d", files_dir, *argv]
    if pretty:
        argv = ["--pretty", *argv]
    rc, out, err = _run(argv, capsys)
    assert (rc, err) == (0, "")
    assert out.endswith("\n")
    assert normalized(out) == normalized(expected)
    if not auto_gzip_used(out) and not auto_gzip_used(expected):
        assert out == expected  # byte for byte when no Go gzip stream is involved


def check_error_case(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``errors/CASE.bu``: same stderr lines, exit codes and stdout, with and without --strict."""
    rc_expected, strict_expected = _expected_codes(case)
    stderr = case.with_suffix(".stderr").read_text()
    strict_file = case.with_suffix(".strict.stderr")
    strict_stderr = strict_file.read_text() if strict_file.exists() else stderr
    out_file = case.with_suffix(".out")

    rc, out, err = _run([str(case)], capsys)
    assert rc == rc_expected
    assert _lines(err) == _lines(stderr)
    if out_file.exists():
        assert normalized(out) == normalized(out_file.read_text())
        assert out == out_file.read_text()
    else:
        assert out == ""

    rc, out, err = _run(["--strict", str(case)], capsys)
    assert rc == strict_expected
    assert _lines(err) == _lines(strict_stderr)
    if strict_expected != 0:
        assert out == ""
