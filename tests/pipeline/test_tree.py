"""Assembling the sysext tree from unpacked sources, and the sysext rules it must obey."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from builds.pipeline.errors import PipelineError
from builds.pipeline.tree import UnpackedSource, assemble_tree, validate_tree
from tests.pipeline.bake_support import make_recipe


def unpacked_tree(base: Path) -> Path:
    """What an unpacked upstream tarball (after strip_components) looks like."""
    src = base / "src"
    (src / "bin").mkdir(parents=True)
    (src / "lib/plugins").mkdir(parents=True)
    (src / "share/doc").mkdir(parents=True)
    (src / "bin/hello").write_text("#!/bin/sh\necho hello\n")
    (src / "bin/hello").chmod(0o755)
    (src / "bin/helper").write_text("helper\n")
    (src / "bin/helper").chmod(0o700)
    (src / "lib/libhello.so.1.0").write_text("elf")
    os.symlink("libhello.so.1.0", src / "lib/libhello.so.1")
    (src / "lib/plugins/a.so").write_text("a")
    (src / "lib/plugins/b.so").write_text("b")
    (src / "share/doc/README").write_text("read me")
    os.symlink("../bin/hello", src / "share/hello-link")
    return src


def assemble(tmp_path: Path, rules: list[dict[str, str]], **recipe: object) -> Path:
    src = unpacked_tree(tmp_path)
    sources = [{"url": "https://example.org/{version}/hello.tar.gz", "install": rules}]
    built = make_recipe(sources=sources, **recipe)
    resolved = built.resolve("v1.2.3", "x86-64")
    root = tmp_path / "root"
    assemble_tree(built, "x86-64", [UnpackedSource(resolved[0], src, movable=True)], root)
    return root


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


def test_install_rules_place_files_globs_directories_and_modes(tmp_path: Path) -> None:
    root = assemble(
        tmp_path,
        [
            {"from": "bin/hello", "to": "usr/bin/hello"},
            {"from": "bin/helper", "to": "usr/libexec/hello/helper", "mode": "0755"},
            {"from": "lib/*.so*", "to": "usr/lib/hello/"},
            {"from": "lib/plugins", "to": "usr/lib/hello/plugins"},
            {"from": "share", "to": "usr/share/"},
        ],
    )
    assert (root / "usr/bin/hello").read_text() == "#!/bin/sh\necho hello\n"
    assert mode(root / "usr/bin/hello") == 0o755
    assert mode(root / "usr/libexec/hello/helper") == 0o755  # mode from the rule, not the archive
    assert (root / "usr/lib/hello/libhello.so.1.0").read_text() == "elf"
    # globs keep symlinks (library sonames) as symlinks
    assert os.readlink(root / "usr/lib/hello/libhello.so.1") == "libhello.so.1.0"
    assert sorted(os.listdir(root / "usr/lib/hello/plugins")) == ["a.so", "b.so"]
    # a directory copied into a directory (`to` ends in /) keeps its name
    assert (root / "usr/share/share/doc/README").read_text() == "read me"
    assert all(mode(Path(d)) == 0o755 for d, _, _ in os.walk(root))


def test_generated_files_units_upholds_and_extension_release(tmp_path: Path) -> None:
    root = assemble(
        tmp_path,
        [{"from": "bin/hello", "to": "usr/bin/hello"}],
        files={
            "usr/lib/systemd/system/hello.service": "[Service]\nExecStart=/usr/bin/hello\n",
            "usr/lib/systemd/system/hello.socket": "[Socket]\nListenStream=/run/hello.sock\n",
            "usr/lib/tmpfiles.d/hello.conf": "C /etc/hello - - - - /usr/share/hello\n",
            "usr/bin/hello-wrapper": "#!/bin/sh\nexec hello\n",
        },
        start=["hello.service", "hello.socket"],
        reload_manager=True,
    )
    units = root / "usr/lib/systemd/system"
    assert (units / "multi-user.target.d/10-hello.conf").read_text() == "[Unit]\nUpholds=hello.service\n"
    assert (units / "sockets.target.d/10-hello.conf").read_text() == "[Unit]\nUpholds=hello.socket\n"
    assert (root / "usr/lib/tmpfiles.d/hello.conf").read_text().startswith("C /etc/hello")
    assert mode(root / "usr/bin/hello-wrapper") == 0o755  # a script shipped as a file runs
    assert mode(units / "hello.service") == 0o644
    release = root / "usr/lib/extension-release.d/extension-release.hello"
    assert release.read_text() == "ID=_any\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n"


def test_flatcar_release_id_writes_sysext_level(tmp_path: Path) -> None:
    root = assemble(
        tmp_path, [{"from": "bin/hello", "to": "usr/bin/hello"}], release_id="flatcar", reload_manager=False
    )
    release = root / "usr/lib/extension-release.d/extension-release.hello"
    assert release.read_text() == "ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\n"


def test_a_glob_that_matches_nothing_names_the_source_and_pattern(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        assemble(tmp_path, [{"from": "bin/*.exe", "to": "usr/bin/"}])
    assert error.value.code == "tree.install-no-match"
    assert "'bin/*.exe'" in error.value.message
    assert "hello v1.2.3 x86-64" in error.value.message
    assert "bin, lib, share" in error.value.message  # shows what the archive holds


def test_a_missing_plain_path_is_also_no_match(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        assemble(tmp_path, [{"from": "hello", "to": "usr/bin/hello"}])
    assert error.value.code == "tree.install-no-match"


def test_a_glob_of_many_files_needs_a_directory_destination(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        assemble(tmp_path, [{"from": "lib/plugins/*.so", "to": "usr/lib/plugin.so"}])
    assert error.value.code == "tree.install-ambiguous"


def test_two_rules_writing_one_path_conflict(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        assemble(
            tmp_path,
            [{"from": "bin/hello", "to": "usr/bin/tool"}, {"from": "bin/helper", "to": "usr/bin/tool"}],
        )
    assert error.value.code == "tree.install-conflict"


def test_one_archive_file_installed_twice_is_copied(tmp_path: Path) -> None:
    root = assemble(
        tmp_path,
        [{"from": "bin/hello", "to": "usr/bin/hello"}, {"from": "bin/hello", "to": "opt/hello/bin/hello"}],
    )
    assert (root / "usr/bin/hello").read_bytes() == (root / "opt/hello/bin/hello").read_bytes()


def test_a_directory_copy_cannot_smuggle_usr_sbin(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        assemble(tmp_path, [{"from": "bin", "to": "usr/lib/x"}, {"from": "lib", "to": "usr/sbin"}])
    assert error.value.code in {"tree.forbidden-path", "recipe.invalid"}


def test_a_started_unit_must_be_shipped(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        assemble(tmp_path, [{"from": "bin/hello", "to": "usr/bin/hello"}], files={}, start=["hello.service"])
    assert error.value.code == "tree.missing-unit"


# --------------------------------------------------------------------------------------------
# validate_tree on hand-made trees: each forbidden entry has its own code


def valid_tree(root: Path, name: str = "hello") -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/hello").write_text("hi")
    (root / "usr/lib/extension-release.d").mkdir(parents=True)
    (root / f"usr/lib/extension-release.d/extension-release.{name}").write_text("ID=_any\n")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    return root


def _fifo(root: Path) -> None:
    os.mkfifo(root / "usr/bin/pipe")


def _setuid(root: Path) -> None:
    (root / "usr/bin/hello").chmod(0o4755)


def _sticky_dir(root: Path) -> None:
    (root / "usr/share").mkdir()
    (root / "usr/share").chmod(0o1777)


def _hard_link(root: Path) -> None:
    os.link(root / "usr/bin/hello", root / "usr/bin/hello2")


def _absolute_symlink(root: Path) -> None:
    os.symlink("/etc/shadow", root / "usr/bin/shadow")


def _escaping_symlink(root: Path) -> None:
    os.symlink("../../../etc", root / "usr/bin/etc")


def _escaping_through_another_symlink(root: Path) -> None:
    os.symlink("..", root / "usr/lib/up")  # -> usr (fine on its own)
    os.symlink("../lib/up/../../..", root / "usr/bin/sneaky")  # resolves through "up" and out


def _etc_at_top(root: Path) -> None:
    (root / "etc").mkdir()


def _usr_sbin(root: Path) -> None:
    (root / "usr/sbin").mkdir()


def _os_release(root: Path) -> None:
    (root / "usr/lib/os-release").write_text("ID=evil\n")


def _dropin_without_conf(root: Path) -> None:
    (root / "usr/lib/systemd/system/hello.service.d").mkdir()
    (root / "usr/lib/systemd/system/hello.service.d/override").write_text("[Service]\n")


def _tmpfiles_without_conf(root: Path) -> None:
    (root / "usr/lib/tmpfiles.d").mkdir()
    (root / "usr/lib/tmpfiles.d/hello.rules").write_text("d /run/x\n")


def _bad_unit_name(root: Path) -> None:
    (root / "usr/lib/systemd/system/hello service.service").write_text("[Service]\n")


def _unit_without_type(root: Path) -> None:
    (root / "usr/lib/systemd/system/hello").write_text("[Service]\n")


def _foreign_release(root: Path) -> None:
    (root / "usr/lib/extension-release.d/extension-release.other").write_text("ID=_any\n")


def _no_release(root: Path) -> None:
    (root / "usr/lib/extension-release.d/extension-release.hello").unlink()


def _control_character_name(root: Path) -> None:
    (root / "usr/bin/bad\nname").write_text("x")


CASES: list[tuple[Callable[[Path], None], str]] = [
    (_fifo, "tree.special-file"),
    (_setuid, "tree.setuid"),
    (_sticky_dir, "tree.setuid"),
    (_hard_link, "tree.hard-link"),
    (_absolute_symlink, "tree.absolute-symlink"),
    (_escaping_symlink, "tree.escaping-symlink"),
    (_escaping_through_another_symlink, "tree.escaping-symlink"),
    (_etc_at_top, "tree.forbidden-path"),
    (_usr_sbin, "tree.forbidden-path"),
    (_os_release, "tree.forbidden-path"),
    (_dropin_without_conf, "tree.invalid-dropin"),
    (_tmpfiles_without_conf, "tree.invalid-dropin"),
    (_bad_unit_name, "tree.invalid-unit"),
    (_unit_without_type, "tree.invalid-unit"),
    (_foreign_release, "tree.forbidden-path"),
    (_no_release, "tree.missing-release"),
    (_control_character_name, "tree.invalid-name"),
]


def test_a_valid_tree_passes(tmp_path: Path) -> None:
    root = valid_tree(tmp_path / "root")
    os.symlink("hello", root / "usr/bin/hi")  # relative symlinks inside are fine
    os.symlink("../bin/hello", root / "usr/lib/hello")
    (root / "usr/lib/systemd/system/hello@.service").write_text("[Service]\n")
    (root / "usr/lib/systemd/system/hello.service.d").mkdir()
    (root / "usr/lib/systemd/system/hello.service.d/10-x.conf").write_text("[Service]\n")
    summary = validate_tree(root, "hello")
    assert summary.files == 4 and summary.symlinks == 2


@pytest.mark.parametrize(("spoil", "code"), CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_forbidden_entries_are_refused(tmp_path: Path, spoil: Callable[[Path], None], code: str) -> None:
    root = valid_tree(tmp_path / "root")
    spoil(root)
    with pytest.raises(PipelineError) as error:
        validate_tree(root, "hello")
    assert error.value.code == code


def test_a_single_file_download_without_mode_gets_0644(tmp_path: Path) -> None:
    blob = tmp_path / "cache-blob"
    blob.write_text("#!/bin/sh\n")
    blob.chmod(0o444)  # as the download cache keeps it
    sources = [
        {"url": "https://example.org/{version}/tool", "install": [{"to": "usr/share/tool/"}]},
        {"url": "https://example.org/{version}/run", "install": [{"to": "usr/bin/run", "mode": "0755"}]},
    ]
    built = make_recipe(sources=sources, files={}, start=[])
    tool, run = built.resolve("v1.2.3", "x86-64")
    root = tmp_path / "root"
    assemble_tree(built, "x86-64", [UnpackedSource(tool, blob), UnpackedSource(run, blob)], root)
    assert mode(root / "usr/share/tool/tool") == 0o644
    assert mode(root / "usr/bin/run") == 0o755
    assert blob.exists() and mode(blob) == 0o444  # the cache is copied from, never moved or changed
