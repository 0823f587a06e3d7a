"""Transpiler rules beyond the golden pairs: types, validation, trees, 1.0.0 vs 1.1.0."""

from __future__ import annotations

from pathlib import Path

import pytest

from builds.pipeline.butane.ignition import parse_unit, to_json, validate_ignition
from builds.pipeline.butane.transpile import decimal_mode_warning, transpile

HEAD = "variant: flatcar\nversion: 1.1.0\n"


def files_of(text: str, files_dir: str | None = None) -> list[dict[str, object]]:
    result = transpile(HEAD + text, files_dir)
    assert result.ok, (result.error, [str(m) for m in result.messages])
    assert result.config is not None
    files: list[dict[str, object]] = result.config["storage"]["files"]
    return files


def messages(text: str, head: str = HEAD) -> list[str]:
    return [str(m) for m in transpile(head + text).messages]


@pytest.mark.parametrize(
    ("written", "mode"),
    [
        ("0644", 420),
        ("0o644", 420),
        ("0x1a4", 420),
        ("0b110100100", 420),
        ("420", 420),
        ("0999", 999),
        ("1_0", 10),
    ],
)
def test_mode_syntaxes(written: str, mode: int) -> None:
    assert files_of(f"storage:\n  files:\n    - path: /f\n      mode: {written}\n")[0]["mode"] == mode


def test_null_fields_are_absent() -> None:
    files = files_of(
        "storage:\n  files:\n    - path: /f\n      mode: ~\n"
        "      overwrite:\n      contents:\n        inline: null\n"
    )
    assert files == [{"path": "/f"}]


def test_explicit_false_empty_and_zero_are_kept() -> None:
    files = files_of(
        "storage:\n  files:\n    - path: /f\n      overwrite: false\n"
        "      mode: 0\n      contents:\n        inline: ''\n"
    )
    assert files == [
        {"overwrite": False, "path": "/f", "contents": {"compression": "", "source": "data:,"}, "mode": 0}
    ]


def test_compressible_inline_is_gzipped() -> None:
    contents = files_of(
        "storage:\n  files:\n    - path: /f\n      contents:\n        inline: " + "a" * 500 + "\n"
    )[0]["contents"]
    assert isinstance(contents, dict)
    assert contents["compression"] == "gzip"
    assert contents["source"].startswith("data:;base64,H4sI")


def test_user_compression_is_kept_and_not_reapplied() -> None:
    contents = files_of(
        "storage:\n  files:\n    - path: /f\n      contents:\n"
        "        compression: gzip\n        inline: abc\n"
    )[0]["contents"]
    assert contents == {"compression": "gzip", "source": "data:,abc"}


def test_decimal_mode_heuristic_matches_butane() -> None:
    assert decimal_mode_warning(644, directory=False)
    assert decimal_mode_warning(755, directory=True)
    assert not decimal_mode_warning(420, directory=False)  # 0644 written in decimal on purpose
    assert not decimal_mode_warning(0o644, directory=False)
    assert not decimal_mode_warning(999, directory=False)


def test_special_mode_bits_warn_on_3_3_only() -> None:
    body = "storage:\n  files:\n    - path: /f\n      mode: 04755\n      contents:\n        inline: x\n"
    assert messages(body) == []
    old = messages(body, "variant: flatcar\nversion: 1.0.0\n")
    assert old == [
        "warning at $.storage.files.0.mode, line 6 col 13: setuid/setgid/sticky bits are not supported in "
        "spec versions older than 3.4.0"
    ]


def test_only_one_of_contents_and_contents_local() -> None:
    body = "systemd:\n  units:\n    - name: a.service\n      contents: x\n      contents_local: a\n"
    assert messages(body) == [
        "error at $.systemd.units.0.contents_local, line 7 col 23: only one of the following can be set: "
        "contents, contents_local"
    ]


def test_duplicate_units_and_illegal_mode_and_hash() -> None:
    body = (
        "systemd:\n  units:\n    - name: a.service\n    - name: a.service\n"
        "storage:\n  files:\n    - path: /f\n      mode: 077777\n"
        "    - path: /g\n      contents:\n        source: https://h/x\n"
        "        verification:\n          hash: md5-00\n"
    )
    found = set(messages(body))
    assert "error at $.systemd.units.1, line 6 col 7: duplicate entry defined" in found
    assert "error at $.storage.files.0.mode, line 10 col 13: illegal file mode" in found
    assert (
        "error at $.storage.files.1.contents.verification.hash, line 15 col 17: unrecognized hash function"
        in found
    )


def test_link_without_target_and_file_under_link() -> None:
    body = "storage:\n  links:\n    - path: /a\n  files:\n    - path: /a/b\n"
    found = messages(body)
    assert "error at $.storage.links.0.target, line 5 col 7: link target is required" in found
    assert "error at $.storage.files.0, line 7 col 7: file path includes link in config" in found


def test_http_headers_need_http_source() -> None:
    body = (
        "storage:\n  files:\n    - path: /f\n      contents:\n        inline: x\n"
        "        http_headers:\n          - name: A\n            value: b\n"
    )
    assert messages(body) == [
        "error at $.storage.files.0.contents.http_headers, line 9 col 11: "
        "cannot use HTTP headers with this source scheme"
    ]


def test_trees_walk_in_go_order(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "b").mkdir(parents=True)
    (tree / "a").write_text("A")
    (tree / "b" / "c").write_text("C")
    (tree / "b" / "x").write_text("X")
    (tree / "b" / "x").chmod(0o700)
    (tree / "z").symlink_to("b/c")
    result = transpile(HEAD + "storage:\n  trees:\n    - local: t\n      path: /opt/t\n", str(tmp_path))
    assert result.config is not None
    storage = result.config["storage"]
    assert [(f["path"], f["mode"]) for f in storage["files"]] == [
        ("/opt/t/a", 0o644),
        ("/opt/t/b/c", 0o644),
        ("/opt/t/b/x", 0o755),
    ]
    assert storage["links"] == [{"path": "/opt/t/z", "target": "b/c"}]


def test_tree_conflicting_with_existing_contents(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("x")
    body = (
        "storage:\n  files:\n    - path: /f\n      contents:\n        inline: y\n  trees:\n    - local: t\n"
    )
    result = transpile(HEAD + body, str(tmp_path))
    assert result.error == "source config is invalid"
    assert [str(m) for m in result.messages] == [
        "error at $.storage.trees.0, line 9 col 7: "
        "matching filesystem node has existing contents or different type"
    ]


def test_tree_root_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = transpile(HEAD + "storage:\n  trees:\n    - local: file\n", str(tmp_path))
    assert [m.text for m in result.messages] == ["root of tree must be a directory"]


def test_unit_parser_follows_go_systemd() -> None:
    options = parse_unit("junk before\n[Unit]\nDescription=a \\\n  b\n# c\n[Install]\nWantedBy=x\n")
    assert options == [("Unit", "Description", "a b"), ("Install", "WantedBy", "x")]
    with pytest.raises(ValueError, match="garbage after section name Unit"):
        parse_unit("[Unit] x\n")
    with pytest.raises(ValueError, match="parsing option name"):
        parse_unit("[Unit]\nNoEquals\n")


def test_validate_ignition_on_hand_written_config() -> None:
    cfg = {
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{"path": "/x/", "contents": {"source": "ftp://h/x", "compression": "xz"}}]},
    }
    issues = {(i.kind, i.path, i.message) for i in validate_ignition(cfg, "3.3.0")}
    assert issues == {
        ("error", ("storage", "files", 0, "path"), "path is not fully simplified"),
        ("error", ("storage", "files", 0, "contents", "source"), "invalid url scheme"),
        ("error", ("storage", "files", 0, "contents", "compression"), "invalid compression method"),
    }
    assert validate_ignition(cfg, "3.4.0")[0] == validate_ignition(cfg, "3.4.0")[0]
    assert any(i.message == "unsupported config version" for i in validate_ignition(cfg, "3.4.0"))


def test_json_output_escapes_like_go() -> None:
    assert to_json({"a": "<x> & \u2028 é"}) == '{"a":"\\u003cx\\u003e \\u0026 \\u2028 é"}'


def test_alias_bombs_and_deep_nesting_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 6) + "]\n"
    result = transpile(HEAD + bomb)
    assert result.error == "Error unmarshaling yaml: yaml: document contains excessive aliasing"
    deep = transpile(HEAD + "storage: " + "[" * 20000 + "]" * 20000 + "\n")
    assert deep.error is not None and "max depth" in deep.error


def test_cyclic_alias_is_refused() -> None:
    result = transpile(HEAD + "storage: &s\n  files: [*s]\n")
    assert result.error is not None
    assert result.config is None
