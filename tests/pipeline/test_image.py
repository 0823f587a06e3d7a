"""Images from the real mksquashfs / mkfs.erofs: reproducible, and audited after the build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builds.pipeline.checksums import sha256_file
from builds.pipeline.errors import PipelineError
from builds.pipeline.image import (
    ImageSpec,
    audit_image,
    build_erofs,
    build_image,
    build_squashfs,
    detect_format,
    parse_squashfs_listing,
    tool_versions,
)
from tests.pipeline.bake_support import image_file, image_listing


def make_tree(root: Path, name: str = "hello") -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/hello").write_bytes(b"#!/bin/sh\necho hello\n" + os.urandom(4096).hex().encode())
    (root / "usr/bin/hello").chmod(0o755)
    (root / "usr/lib/extension-release.d").mkdir(parents=True)
    (root / f"usr/lib/extension-release.d/extension-release.{name}").write_text(
        "ID=_any\nARCHITECTURE=x86-64\n"
    )
    (root / "opt/hello").mkdir(parents=True)
    (root / "opt/hello/data").write_bytes(b"data" * 10000)
    os.symlink("../../usr/bin/hello", root / "opt/hello/hello")
    return root


def superblock(image: Path) -> str:
    return subprocess.run(["unsquashfs", "-s", str(image)], capture_output=True, text=True, check=True).stdout


def test_squashfs_is_gzip_root_owned_and_readable(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root")
    image = build_squashfs(root, tmp_path / "hello.raw")
    assert detect_format(image) == "squashfs"
    assert "Compression gzip" in superblock(image)
    assert image_file(image, "usr/bin/hello") == (root / "usr/bin/hello").read_bytes()
    listing = image_listing(image)
    assert listing["usr/bin/hello"] == "-rwxr-xr-x"
    owners = subprocess.run(["unsquashfs", "-lls", str(image)], capture_output=True, text=True).stdout
    assert all(" root/root " in line for line in owners.splitlines() if line.startswith(("-", "d", "l")))


def test_two_builds_are_byte_identical_whatever_the_timestamps(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root")
    first = build_squashfs(root, tmp_path / "first.raw")
    # Same content, different times and a different root mode: the image must not change.
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            os.utime(os.path.join(dirpath, entry), (1_000_000, 1_000_000), follow_symlinks=False)
    root.chmod(0o700)
    second = build_squashfs(root, tmp_path / "second.raw")
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("compression", ["zstd", "xz"])
def test_other_compressors(tmp_path: Path, compression: str) -> None:
    root = make_tree(tmp_path / "root")
    image = build_image(root, tmp_path / "hello.raw", ImageSpec.create("squashfs", compression))
    assert f"Compression {compression}" in superblock(image)
    assert image_file(image, "opt/hello/data") == b"data" * 10000
    assert audit_image(image, "hello") > 0


def test_unknown_format_and_compression_are_refused() -> None:
    with pytest.raises(PipelineError) as error:
        ImageSpec.create("ext4")
    assert error.value.code == "image.unsupported-format"
    with pytest.raises(PipelineError) as error:
        ImageSpec.create("erofs", "gzip")
    assert error.value.code == "image.unsupported-compression"
    assert ImageSpec.create("erofs").compression == "lz4hc"


def test_erofs_image_is_reproducible_and_audited(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root")
    first = build_erofs(root, tmp_path / "a.raw")
    second = build_erofs(root, tmp_path / "b.raw")
    assert detect_format(first) == "erofs"
    assert sha256_file(first) == sha256_file(second)
    assert audit_image(first, "hello") >= 7


def test_paths_starting_with_a_dash_are_not_options(tmp_path: Path) -> None:
    work = tmp_path / "-work"
    root = make_tree(work / "-root")
    image = build_squashfs(root, work / "-hello.raw")
    assert audit_image(image, "hello") > 0


# --------------------------------------------------------------------------------------------
# The audit reads the finished image, so it catches what slipped past (or bypassed) the tree check.


@pytest.mark.parametrize(
    ("spoil", "code"),
    [
        (lambda r: os.mkfifo(r / "usr/bin/fifo"), "image.special-file"),
        (lambda r: os.mknod(r / "usr/bin/null", 0o600 | 0o020000, os.makedev(1, 3)), "image.special-file"),
        (lambda r: (r / "usr/bin/hello").chmod(0o4755), "image.setuid"),
        (lambda r: (r / "usr/bin/hello").chmod(0o2755), "image.setuid"),
        (lambda r: os.symlink("/etc/passwd", r / "usr/bin/passwd"), "image.absolute-symlink"),
        (lambda r: os.symlink("../../../etc/passwd", r / "usr/bin/passwd"), "image.escaping-symlink"),
        (lambda r: (r / "usr/sbin").mkdir(), "image.forbidden-path"),
        (lambda r: (r / "etc").mkdir(), "image.forbidden-path"),
        (lambda r: (r / "usr/lib/os-release").write_text("ID=x\n"), "image.forbidden-path"),
        (
            lambda r: (r / "usr/lib/extension-release.d/extension-release.hello").unlink(),
            "image.missing-release",
        ),
    ],
    ids=[
        "fifo",
        "device",
        "setuid",
        "setgid",
        "absolute",
        "escaping",
        "sbin",
        "etc",
        "os-release",
        "no-release",
    ],
)
def test_audit_rejects_forbidden_entries(tmp_path: Path, spoil: object, code: str) -> None:
    root = make_tree(tmp_path / "root")
    spoil(root)  # type: ignore[operator]
    image = build_squashfs(root, tmp_path / "bad.raw")  # mksquashfs stores all of these as-is
    with pytest.raises(PipelineError) as error:
        audit_image(image, "hello")
    assert error.value.code == code
    assert "bad.raw" in error.value.message


def test_audit_checks_the_name_the_image_is_loaded_under(tmp_path: Path) -> None:
    image = build_squashfs(make_tree(tmp_path / "root"), tmp_path / "hello.raw")
    with pytest.raises(PipelineError) as error:
        audit_image(image, "other")
    assert error.value.code == "image.forbidden-path"  # extension-release.hello in an image named other


def test_listing_parser_handles_arrows_in_names() -> None:
    listing = (
        "drwxr-xr-x root/root                37 1970-01-01 00:00 squashfs-root\n"
        "lrwxrwxrwx root/root                 1 1970-01-01 00:00 squashfs-root/usr/a -> b -> x\n"
        "-rwsr-xr-x root/root                 3 1970-01-01 00:00 squashfs-root/usr/x\n"
    )
    entries = parse_squashfs_listing(listing)
    assert [(e.path, e.kind, e.target) for e in entries] == [
        ("usr/a -> b", "symlink", "x"),
        ("usr/x", "file", None),
    ]
    assert entries[1].mode == 0o4755


def test_unreadable_listing_fails_closed() -> None:
    with pytest.raises(PipelineError) as error:
        parse_squashfs_listing("something unexpected\n")
    assert error.value.code == "image.audit-unreadable"


def test_not_an_image(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.raw"
    bogus.write_bytes(b"\0" * 4096)
    with pytest.raises(PipelineError) as error:
        audit_image(bogus, "hello")
    assert error.value.code == "image.unknown-format"


def test_tool_versions_name_the_installed_tools() -> None:
    versions = tool_versions()
    mksquashfs = subprocess.run(["mksquashfs", "-version"], capture_output=True, text=True).stdout
    assert versions["mksquashfs"] in mksquashfs.splitlines()[0]
    assert set(versions) >= {"mksquashfs", "mkfs.erofs", "gpg", "systemd-sysext"}
