"""``python -m builds.pipeline butane``: streams, flags and exit codes like the butane tool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builds.pipeline.butane import cli
from tests.pipeline.butane.support import REPO

WARNS = "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: /etc/foo\n      mode: 644\n"
LOCAL = (
    "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n"
    "    - path: /etc/motd\n      contents:\n        local: motd\n"
)


def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builds.pipeline", "butane", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def test_stdin_to_compact_json_with_trailing_newline() -> None:
    result = run([], "variant: flatcar\nversion: 1.0.0\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == '{"ignition":{"version":"3.3.0"}}\n'


def test_file_argument_and_pretty(tmp_path: Path) -> None:
    source = tmp_path / "c.bu"
    source.write_text("variant: flatcar\nversion: 1.1.0\n")
    result = run(["--pretty", str(source)])
    assert result.returncode == 0
    assert result.stdout == '{\n  "ignition": {\n    "version": "3.4.0"\n  }\n}\n'
    assert run(["-p", str(source)]).stdout == result.stdout


def test_warnings_go_to_stderr_and_strict_fails() -> None:
    result = run([], WARNS)
    assert result.returncode == 0
    assert result.stderr.startswith("warning at $.storage.files.0.mode, line 6 col 13: unreasonable mode")
    assert json.loads(result.stdout)["storage"]["files"][0]["mode"] == 644
    strict = run(["--strict"], WARNS)
    assert strict.returncode == 1
    assert strict.stdout == ""
    assert strict.stderr.endswith("Config produced warnings and --strict was specified\n")
    assert run(["-s"], WARNS).returncode == 1


def test_errors_exit_1_without_output() -> None:
    result = run([], "variant: flatcar\nversion: 9.9.9\n")
    assert (result.returncode, result.stdout) == (1, "")
    assert (
        result.stderr
        == "Error translating config: No translator exists for variant flatcar with version 9.9.9\n"
    )
    assert (
        run([], "version: 1.1.0\n").stderr
        == "Error translating config: Error parsing variant; must be specified\n"
    )
    assert "must be a valid semver" in run([], "variant: flatcar\nversion: 1.1\n").stderr
    syntax = run([], "variant: flatcar\nversion: [1\n")
    assert syntax.returncode == 1 and "Error unmarshaling yaml: yaml: line" in syntax.stderr


def test_files_dir(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hello\n")
    without = run([], LOCAL)
    assert without.returncode == 1
    assert "must be specified with -d/--files-dir" in without.stderr
    for flag in ("-d", "--files-dir"):
        result = run([flag, str(tmp_path)], LOCAL)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["storage"]["files"][0]["contents"]["source"] == "data:,hello%0A"


def test_files_dir_cannot_be_escaped(tmp_path: Path) -> None:
    inside = tmp_path / "dir"
    inside.mkdir()
    (tmp_path / "secret").write_text("s3cret")
    (inside / "sneaky").symlink_to(tmp_path / "secret")
    for local in ("../secret", "sneaky"):
        result = run(["-d", str(inside)], LOCAL.replace("local: motd", f"local: {local}"))
        assert result.returncode == 1
        assert "outside the files directory" in result.stderr
        assert "s3cret" not in result.stdout


def test_missing_input_file_and_bad_flag(tmp_path: Path) -> None:
    missing = run([str(tmp_path / "nope.bu")])
    assert missing.returncode == 1
    assert missing.stderr.startswith(f"failed to open {tmp_path / 'nope.bu'}")
    assert run(["--no-such-flag"]).returncode == 2


def test_output_file_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "c.bu"
    source.write_text("variant: flatcar\nversion: 1.0.0\n")
    target = tmp_path / "out.ign"
    assert cli.main(["-o", str(target), str(source)]) == 0
    assert target.read_text() == '{"ignition":{"version":"3.3.0"}}\n'
    assert cli.main(["--check", str(source)]) == 0
    assert capsys.readouterr().out == ""


def test_surrogate_escapes_are_refused_like_go_yaml() -> None:
    # go-yaml v3 scannerc.go: a \\uD800..\\uDFFF escape is "found invalid Unicode character
    # escape code", reported on the first such scalar in the text (here the key on line 3).
    doc = 'variant: flatcar\nversion: 1.1.0\n"\\ud800x": 1\n'
    doc += "storage:\n  files:\n    - path: /f\n      contents:\n"
    result = run([], doc + '        inline: "a\\ud800b"\n')
    assert result.returncode == 1
    assert result.stderr == (
        "Error translating config: Error unmarshaling yaml: yaml: line 3: "
        "found invalid Unicode character escape code\n"
    )


def test_help_lists_the_tool_flags() -> None:
    result = run(["--help"])
    assert result.returncode == 0
    for flag in ("--pretty", "--strict", "--files-dir", "--output"):
        assert flag in result.stdout
