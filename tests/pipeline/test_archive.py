"""Unpack: real archives built in the test, hostile members of every kind refused by code."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builds.pipeline.archive import UnpackLimits, unpack
from builds.pipeline.errors import PipelineError
from tests.upstream import (
    Member,
    compress,
    device,
    directory,
    executable,
    fifo,
    file,
    hardlink,
    make_tar,
    make_zip,
    setuid_file,
    symlink,
)

TAR_KINDS = {"tar.gz": "gz", "tgz": "gz", "tar.xz": "xz", "tar.zst": "zst", "tar": ""}

RELEASE = [
    directory("wasmtime-v31.0.0-x86_64-linux"),
    executable("wasmtime-v31.0.0-x86_64-linux/wasmtime", b"\x7fELF fake wasmtime"),
    file("wasmtime-v31.0.0-x86_64-linux/LICENSE", b"Apache-2.0\n", mode=0o664),
    directory("wasmtime-v31.0.0-x86_64-linux/lib"),
    file("wasmtime-v31.0.0-x86_64-linux/lib/libwasmtime.so.31", b"lib"),
    symlink("wasmtime-v31.0.0-x86_64-linux/lib/libwasmtime.so", "libwasmtime.so.31"),
    symlink("wasmtime-v31.0.0-x86_64-linux/bin-link", "lib"),
]


def _write(tmp_path: Path, data: bytes, name: str = "upstream.archive") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _build(kind: str, members: list[Member]) -> bytes:
    return make_zip(members) if kind == "zip" else make_tar(members, TAR_KINDS[kind])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("kind", [*TAR_KINDS, "zip"])
def test_release_archive_unpacks_with_safe_modes(tmp_path: Path, kind: str) -> None:
    archive = _write(tmp_path, _build(kind, RELEASE))
    dest = tmp_path / "out"
    result = unpack(archive, kind, dest, strip_components=1)
    assert (dest / "wasmtime").read_bytes() == b"\x7fELF fake wasmtime"
    assert _mode(dest / "wasmtime") == 0o755
    assert _mode(dest / "LICENSE") == 0o644  # group-write dropped: fixed modes only
    assert _mode(dest / "lib") == 0o755
    assert os.readlink(dest / "lib/libwasmtime.so") == "libwasmtime.so.31"
    assert (dest / "lib/libwasmtime.so").read_bytes() == b"lib"
    assert os.readlink(dest / "bin-link") == "lib"
    assert result.files == 3
    assert result.symlinks == 2
    assert sorted(p.name for p in dest.iterdir()) == ["LICENSE", "bin-link", "lib", "wasmtime"]


def test_without_strip_the_top_directory_stays(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    unpack(_write(tmp_path, make_tar(RELEASE)), "tar.gz", dest)
    assert (dest / "wasmtime-v31.0.0-x86_64-linux/wasmtime").is_file()


def test_implicit_parent_directories_and_dot_prefix(tmp_path: Path) -> None:
    members = [directory("."), file("./usr/share/doc/readme", b"hi"), executable("./usr/bin/tool")]
    dest = tmp_path / "out"
    unpack(_write(tmp_path, make_tar(members, "xz")), "tar.xz", dest)
    assert (dest / "usr/share/doc/readme").read_bytes() == b"hi"
    assert _mode(dest / "usr/share") == 0o755
    assert _mode(dest / "usr/bin/tool") == 0o755


def test_single_file(tmp_path: Path) -> None:
    source = _write(tmp_path, b"\x7fELF k3s", name="k3s-arm64")
    dest = tmp_path / "out"
    result = unpack(source, "file", dest)
    assert (dest / "k3s-arm64").read_bytes() == b"\x7fELF k3s"
    assert result.total_bytes == 8
    other = tmp_path / "out2"
    unpack(source, "file", other, file_name="k3s")
    assert (other / "k3s").is_file()


def test_setuid_setgid_sticky_are_cleared_not_refused(tmp_path: Path) -> None:
    members = [
        setuid_file("bin/su-like"),
        file("bin/sgid", b"x", mode=0o2644),
        Member("tmp", kind="dir", mode=0o1777),
        file("tmp/plain", b"y"),
    ]
    for kind in ("tar.gz", "zip"):
        dest = tmp_path / f"out-{kind}"
        result = unpack(_write(tmp_path, _build(kind, members), name=kind), kind, dest)
        assert _mode(dest / "bin/su-like") == 0o755
        assert _mode(dest / "bin/sgid") == 0o644
        assert _mode(dest / "tmp") == 0o755
        assert result.cleared_mode_bits == ["bin/su-like", "bin/sgid"]


# -- hostile members, each refused with its own code; nothing left behind ------------------

HOSTILE_TAR = [
    ("absolute path", [file("/etc/cron.d/evil", b"x")], "archive.absolute-path"),
    ("dot-dot", [file("pkg/../../evil", b"x")], "archive.path-traversal"),
    ("hard link", [file("pkg/a", b"x"), hardlink("pkg/b", "/etc/shadow")], "archive.hard-link"),
    ("char device", [device("pkg/mem")], "archive.special-file"),
    ("block device", [device("pkg/sda", kind="blockdev")], "archive.special-file"),
    ("fifo", [fifo("pkg/pipe")], "archive.special-file"),
    ("absolute symlink", [symlink("pkg/passwd", "/etc/passwd")], "archive.unsafe-symlink"),
    ("escaping symlink", [symlink("pkg/up", "../../etc")], "archive.unsafe-symlink"),
    ("symlink climbing late", [symlink("pkg/x", "sub/../../..")], "archive.unsafe-symlink"),
    (
        "write through symlink",
        [directory("pkg/real"), symlink("pkg/link", "real"), file("pkg/link/file", b"x")],
        "archive.unsafe-symlink",
    ),
    ("duplicate file", [file("pkg/a", b"1"), file("pkg/a", b"2")], "archive.duplicate-member"),
    ("file replaced by symlink", [file("pkg/a", b"1"), symlink("pkg/a", "b")], "archive.duplicate-member"),
    ("dir then file", [directory("pkg/a"), file("pkg/a", b"x")], "archive.duplicate-member"),
    ("file then member inside it", [file("pkg/a", b"x"), file("pkg/a/b", b"y")], "archive.duplicate-member"),
]


@pytest.mark.parametrize(("label", "members", "code"), HOSTILE_TAR, ids=[h[0] for h in HOSTILE_TAR])
@pytest.mark.parametrize("kind", ["tar.gz", "tar.zst"])
def test_hostile_tar_members_are_refused(
    tmp_path: Path, label: str, members: list[Member], code: str, kind: str
) -> None:
    archive = _write(tmp_path, make_tar([file("pkg/README", b"ok"), *members], TAR_KINDS[kind]))
    dest = tmp_path / "out"
    with pytest.raises(PipelineError) as caught:
        unpack(archive, kind, dest)
    assert caught.value.code == code, caught.value.message
    assert "upstream.archive" in caught.value.message
    assert not dest.exists()


HOSTILE_ZIP = [
    ("absolute path", [file("/etc/evil", b"x")], "archive.absolute-path"),
    ("dot-dot", [file("../evil", b"x")], "archive.path-traversal"),
    ("fifo", [fifo("pkg/pipe")], "archive.special-file"),
    ("device", [device("pkg/mem")], "archive.special-file"),
    ("absolute symlink", [symlink("pkg/passwd", "/etc/passwd")], "archive.unsafe-symlink"),
    ("escaping symlink", [symlink("pkg/up", "../..")], "archive.unsafe-symlink"),
    ("write through symlink", [symlink("pkg/l", "."), file("pkg/l/x", b"x")], "archive.unsafe-symlink"),
    ("duplicate", [file("pkg/a", b"1"), file("pkg/a", b"2")], "archive.duplicate-member"),
]


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
@pytest.mark.parametrize(("label", "members", "code"), HOSTILE_ZIP, ids=[h[0] for h in HOSTILE_ZIP])
def test_hostile_zip_members_are_refused(
    tmp_path: Path, label: str, members: list[Member], code: str
) -> None:
    archive = _write(tmp_path, make_zip([file("pkg/README", b"ok"), *members]))
    dest = tmp_path / "out"
    with pytest.raises(PipelineError) as caught:
        unpack(archive, "zip", dest)
    assert caught.value.code == code, caught.value.message
    assert not dest.exists()


def test_symlink_order_attack_cannot_escape(tmp_path: Path) -> None:
    # a/l -> "../x/.." looks inside while x is a directory name, but x may later become a
    # symlink to "." and then a/l would resolve above the tree. Climbing after descending is refused.
    members = [directory("a"), symlink("a/l", "../x/.."), symlink("x", ".")]
    with pytest.raises(PipelineError) as caught:
        unpack(_write(tmp_path, make_tar(members)), "tar.gz", tmp_path / "out")
    assert caught.value.code == "archive.unsafe-symlink"


def test_symlinks_to_parent_directories_inside_the_tree_are_fine(tmp_path: Path) -> None:
    members = [executable("opt/tool/bin/tool"), symlink("usr/bin/tool", "../../opt/tool/bin/tool")]
    dest = tmp_path / "out"
    unpack(_write(tmp_path, make_tar(members)), "tar.gz", dest)
    assert (dest / "usr/bin/tool").resolve() == (dest / "opt/tool/bin/tool").resolve()


def test_symlink_escaping_only_after_strip_is_refused(tmp_path: Path) -> None:
    # Inside the archive "pkg/up -> ../x" stays in; with the top directory stripped it would not.
    members = [symlink("pkg/up", "../x")]
    with pytest.raises(PipelineError) as caught:
        unpack(_write(tmp_path, make_tar(members)), "tar.gz", tmp_path / "out", strip_components=1)
    assert caught.value.code == "archive.unsafe-symlink"


def test_too_many_members(tmp_path: Path) -> None:
    members = [file(f"pkg/f{i}", b"x") for i in range(20)]
    for kind in ("tar.gz", "zip"):
        dest = tmp_path / f"out-{kind}"
        with pytest.raises(PipelineError) as caught:
            unpack(
                _write(tmp_path, _build(kind, members), kind), kind, dest, limits=UnpackLimits(max_members=10)
            )
        assert caught.value.code == "archive.too-many-members"
        assert not dest.exists()


@pytest.mark.parametrize("kind", ["tar.gz", "tar.xz", "tar.zst", "zip"])
def test_decompression_bomb_is_stopped_by_bytes_written(tmp_path: Path, kind: str) -> None:
    # 64 MiB of zeros compresses to almost nothing; the cap is on what we write, not on headers.
    bomb = [file("pkg/zeros", bytes(64 * 1024 * 1024))]
    archive = _write(tmp_path, _build(kind, bomb))
    assert archive.stat().st_size < 1024 * 1024
    dest = tmp_path / "out"
    with pytest.raises(PipelineError) as caught:
        unpack(archive, kind, dest, limits=UnpackLimits(max_total_bytes=8 * 1024 * 1024))
    assert caught.value.code == "archive.too-large"
    assert not dest.exists()


def _decoding_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name == "unpack-decode"]


@pytest.mark.parametrize("kind", ["tar.gz", "tar.xz", "tar.zst"])
def test_the_decoding_thread_ends_with_the_unpack_whatever_happens(tmp_path: Path, kind: str) -> None:
    # Decompression runs on a thread of its own (two cores, as tar with its gzip child); a refusal
    # halfway through a large stream must not leave it decoding the archive after unpack returns.
    bomb = _write(tmp_path, _build(kind, [file("pkg/zeros", bytes(64 * 1024 * 1024))]), "bomb")
    with pytest.raises(PipelineError):
        unpack(bomb, kind, tmp_path / "refused", limits=UnpackLimits(max_total_bytes=2 * 1024 * 1024))
    assert _decoding_threads() == []
    traversal = [file("pkg/big", os.urandom(3 * 1024 * 1024)), file("../escape", b"x")]
    with pytest.raises(PipelineError) as caught:
        unpack(_write(tmp_path, _build(kind, traversal), "traversal"), kind, tmp_path / "escape")
    assert caught.value.code == "archive.path-traversal"
    assert _decoding_threads() == []
    unpack(_write(tmp_path, _build(kind, RELEASE), "release"), kind, tmp_path / "fine")
    assert (tmp_path / "fine/wasmtime-v31.0.0-x86_64-linux/wasmtime").read_bytes() == b"\x7fELF fake wasmtime"
    assert _decoding_threads() == []


def test_many_small_files_add_up(tmp_path: Path) -> None:
    members = [file(f"pkg/f{i}", bytes(1000)) for i in range(50)]
    with pytest.raises(PipelineError) as caught:
        unpack(
            _write(tmp_path, make_tar(members)),
            "tar.gz",
            tmp_path / "out",
            limits=UnpackLimits(max_total_bytes=20_000),
        )
    assert caught.value.code == "archive.too-large"


def test_single_file_size_cap(tmp_path: Path) -> None:
    source = _write(tmp_path, bytes(5000), name="bin")
    with pytest.raises(PipelineError) as caught:
        unpack(source, "file", tmp_path / "out", limits=UnpackLimits(max_total_bytes=4000))
    assert caught.value.code == "archive.too-large"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("tar.gz", b"this is not gzip"),
        ("tar.xz", b"not xz either"),
        ("tar.zst", b"\x28\xb5\x2f\xfd garbage"),
        ("zip", b"PK\x03\x04 broken"),
        ("tar", b"x" * 1024),
    ],
)
def test_corrupt_archives(tmp_path: Path, kind: str, data: bytes) -> None:
    dest = tmp_path / "out"
    with pytest.raises(PipelineError) as caught:
        unpack(_write(tmp_path, data), kind, dest)
    assert caught.value.code == "archive.corrupt"
    assert not dest.exists()


def test_truncated_archive_leaves_nothing(tmp_path: Path) -> None:
    members = [file(f"pkg/f{i}", os.urandom(4096)) for i in range(30)]
    data = make_tar(members, "gz")
    dest = tmp_path / "out"
    with pytest.raises(PipelineError) as caught:
        unpack(_write(tmp_path, data[: len(data) // 2]), "tar.gz", dest)
    assert caught.value.code == "archive.corrupt"
    assert not dest.exists()


def test_wrong_kind_is_corrupt(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        unpack(_write(tmp_path, make_zip(RELEASE)), "tar.gz", tmp_path / "out")
    assert caught.value.code == "archive.corrupt"


def test_unknown_kind_and_non_empty_destination(tmp_path: Path) -> None:
    archive = _write(tmp_path, make_tar(RELEASE))
    with pytest.raises(PipelineError) as caught:
        unpack(archive, "rar", tmp_path / "out")
    assert caught.value.code == "archive.unsupported-kind"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("mine")
    with pytest.raises(PipelineError) as caught:
        unpack(archive, "tar.gz", busy)
    assert caught.value.code == "archive.dest-not-empty"
    assert (busy / "keep").read_text() == "mine"


def test_concatenated_compressed_streams(tmp_path: Path) -> None:
    # gzip and xz allow several streams back to back; the tar spans them.
    tar = make_tar(RELEASE, "")
    for kind, comp in (("tar.gz", "gz"), ("tar.xz", "xz"), ("tar.zst", "zst")):
        data = compress(tar[:10240], comp) + compress(tar[10240:], comp)
        dest = tmp_path / f"out-{kind}"
        unpack(_write(tmp_path, data, kind), kind, dest, strip_components=1)
        assert (dest / "wasmtime").is_file()


_segment = st.sampled_from(["a", "b", "..", ".", "", "c d", "lib"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(st.lists(_segment, min_size=1, max_size=4).map("/".join), min_size=1, max_size=4),
    targets=st.lists(st.lists(_segment, min_size=1, max_size=5).map("/".join), max_size=3),
)
def test_nothing_ever_lands_outside_the_destination(
    tmp_path_factory: pytest.TempPathFactory, names: list[str], targets: list[str]
) -> None:
    """Whatever mix of paths and symlinks, either the unpack is refused or every entry, with
    every symlink resolved, stays inside the destination."""
    base = tmp_path_factory.mktemp("prop")
    members: list[Member] = [file(n, b"x") for n in names]
    members += [symlink(f"links/l{i}", t) for i, t in enumerate(targets)]
    dest = base / "jail" / "out"
    outside_before = set((base / "jail").parent.rglob("*"))
    try:
        unpack(_write(base, make_tar(members)), "tar.gz", dest)
    except PipelineError:
        assert not dest.exists()
        return
    root = dest.resolve()
    for entry in dest.rglob("*"):
        resolved = entry.resolve()
        assert resolved == root or root in resolved.parents, f"{entry} -> {resolved}"
    created_outside = set(base.rglob("*")) - outside_before - set(dest.rglob("*")) - {dest, base / "jail"}
    assert all(p == base / "upstream.archive" for p in created_outside)
