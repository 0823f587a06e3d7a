"""A small Flatcar-like disk image made with the real tools, signed by a test "Flatcar" key, and
the means to inspect an image file alone (sfdisk, debugfs): for the pre-bake tests.

The layout is Flatcar's (GPT labels EFI-SYSTEM, BIOS-BOOT, USR-A, USR-B, OEM, ROOT; ext4 OEM and
ROOT) at a tiny scale: ~50 MB, sparse, a few MB of bzip2.
"""

from __future__ import annotations

import bz2
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline.signing import GpgSigner, generate_signing_key
from tests.upstream import UpstreamServer

MIB = 1024 * 1024
CHANNEL = "stable"
VERSION = "4593.2.0"
UPSTREAM_ROOT = f"https://{CHANNEL}.release.flatcar-linux.net/"
IMAGE_URL = f"{UPSTREAM_ROOT}amd64-usr/{VERSION}/flatcar_production_image.bin.bz2"

# (label, type GUID, size in MiB): Flatcar's partition types, tiny sizes.
LAYOUT = (
    ("EFI-SYSTEM", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 2),
    ("BIOS-BOOT", "21686148-6449-6E6F-744E-656564454649", 1),
    ("USR-A", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", 6),
    ("USR-B", "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6", 6),
    ("OEM", "C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0", 4),
    ("ROOT", "3884DD41-8582-4404-B9A8-E9B84F2DF50E", 28),
)


BTRFS_OEM_MIB = 128  # Flatcar's OEM size; btrfs (non-mixed) needs more than the tiny ext4 one
BTRFS_OEM_UUID = "6f3a1d2c-0b7e-4e58-9c41-2d5b8a7f0e13"
# The OEM tree of the btrfs variant: (path, owner, mode, contents or "-> target" for a link).
BTRFS_OEM_TREE = (
    ("grub.cfg", "0:0", 0o644, "set oem_id=qemu\n"),
    ("bin/oem-helper", "0:0", 0o755, "#!/bin/sh\n"),
    ("private/token", "500:600", 0o640, "secret\n"),
    ("grub-link.cfg", "0:0", 0o777, "-> grub.cfg"),
)


def make_flatcar_disk(
    path: Path,
    *,
    layout: tuple[tuple[str, str, int], ...] = LAYOUT,
    root_mib: int = 0,
    oem_fs: str = "ext4",
) -> Path:
    """Write a sparse GPT disk image at ``path``: random bytes at the start of each raw partition
    (so a changed byte shows), ext4 file systems on OEM and ROOT (ROOT holds /etc/os-release-like
    content, as Flatcar's first boot expects an almost empty root). ``oem_fs="btrfs"`` formats OEM
    as current Flatcar releases do (``BTRFS_OEM_TREE``, label OEM, ``BTRFS_OEM_UUID``)."""
    work = path.parent / (path.name + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    entries = [
        (label, kind, root_mib if (label == "ROOT" and root_mib) else size) for label, kind, size in layout
    ]
    if oem_fs == "btrfs":
        entries = [(label, kind, BTRFS_OEM_MIB if label == "OEM" else size) for label, kind, size in entries]
    total = 1 + sum(size for _label, _kind, size in entries) + 1
    with open(path, "wb") as disk:
        disk.truncate(total * MIB)
    script = "label: gpt\nfirst-lba: 2048\n" + "".join(
        f'size={size}MiB, type={kind}, name="{label}"\n' for label, kind, size in entries
    )
    subprocess.run(["sfdisk", "-q", str(path)], input=script.encode(), check=True, capture_output=True)
    table = read_table(path)
    for partition in table["partitions"]:
        label = partition["name"]
        start, size = partition["start"] * 512, partition["size"] * 512
        part = work / label
        if label == "OEM" and oem_fs == "btrfs":
            make_btrfs(part, size, work / "OEM.btrfs-tree")
        elif label in ("OEM", "ROOT"):
            tree = work / f"{label}.tree"
            (tree / "etc").mkdir(parents=True, exist_ok=True)
            if label == "OEM":
                (tree / "grub.cfg").write_text("set oem_id=qemu\n")
                tree_arg = tree
            else:
                (tree / "etc" / "machine-info").write_text("CHASSIS=vm\n")
                tree_arg = tree
            with open(part, "wb") as handle:
                handle.truncate(size)
            subprocess.run(
                [
                    "mke2fs",
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    label,
                    "-E",
                    "root_owner=0:0",
                    "-d",
                    str(tree_arg),
                    str(part),
                ],
                check=True,
                capture_output=True,
            )
        else:
            with open(part, "wb") as handle:
                handle.write(label.encode() + os.urandom(64 * 1024))
                handle.truncate(size)
        write_at(path, start, part)
    return path


def make_btrfs(target: Path, size: int, tree: Path) -> None:
    """``BTRFS_OEM_TREE`` as a btrfs image of ``size`` bytes (fakeroot: owners without root)."""
    tree.mkdir(parents=True, exist_ok=True)
    script = ["set -e", f"chown -R 0:0 {tree}"]
    for name, owner, mode, contents in BTRFS_OEM_TREE:
        node = tree / name
        node.parent.mkdir(parents=True, exist_ok=True)
        if contents.startswith("-> "):
            node.symlink_to(contents[3:])
            continue
        node.write_text(contents)
        script += [f"chown {owner} {node}", f"chmod {mode:o} {node}"]
    with open(target, "wb") as handle:
        handle.truncate(size)
    script.append(f"mkfs.btrfs -q -K --rootdir {tree} --label OEM --uuid {BTRFS_OEM_UUID} {target}")
    subprocess.run(["fakeroot", "--", "sh", "-c", "\n".join(script)], check=True, capture_output=True)


def btrfs_files(filesystem: Path, target: Path) -> dict[str, tuple[str, str, bytes | str]]:
    """Every node of a btrfs image, read with ``btrfs restore`` (no mount): path -> (owner,
    octal mode, contents, or the target of a link)."""
    target.mkdir(parents=True, exist_ok=True)
    script = 'btrfs restore -m -S "$1" "$2" >/dev/null && cd "$2" && find . -mindepth 1 -printf "$3"'
    listing = subprocess.run(
        ["fakeroot", "--", "sh", "-c", script, "sh", str(filesystem), str(target), "%P|%U:%G|%m|%y\\n"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    found: dict[str, tuple[str, str, bytes | str]] = {}
    for line in listing.splitlines():
        name, owner, mode, kind = line.split("|")
        node = target / name
        if kind == "l":
            found[name] = (owner, mode, "-> " + os.readlink(node))
        elif kind == "f":
            found[name] = (owner, mode, node.read_bytes())
        else:
            found[name] = (owner, mode, "dir")
    return found


def btrfs_superblock(filesystem: Path) -> dict[str, str]:
    argv = ["btrfs", "inspect-internal", "dump-super", str(filesystem)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, _sep, value = line.partition("\t")
        fields.setdefault(key.strip(), value.strip())
    return fields


def write_at(disk: Path, offset: int, source: Path) -> None:
    with open(source, "rb") as src, open(disk, "r+b") as out:
        out.seek(offset)
        while chunk := src.read(MIB):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)


def read_table(disk: Path) -> dict:
    out = subprocess.run(["sfdisk", "--json", str(disk)], check=True, capture_output=True).stdout
    return json.loads(out)["partitiontable"]


def partition_bytes(disk: Path, label: str) -> bytes:
    for partition in read_table(disk)["partitions"]:
        if partition["name"] == label:
            with open(disk, "rb") as handle:
                handle.seek(partition["start"] * 512)
                return handle.read(partition["size"] * 512)
    raise KeyError(label)


def extract_partition(disk: Path, label: str, target: Path) -> Path:
    target.write_bytes(partition_bytes(disk, label))
    return target


def debugfs(filesystem: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(filesystem)], check=True, capture_output=True, text=True
    ).stdout


def debugfs_cat(filesystem: Path, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(filesystem)], check=True, capture_output=True
    ).stdout


def compress_bz2(source: Path, target: Path) -> Path:
    with open(source, "rb") as src, bz2.open(target, "wb", compresslevel=1) as out:
        while chunk := src.read(MIB):
            out.write(chunk)
    return target


def decompress_zst(source: Path, target: Path) -> Path:
    subprocess.run(
        ["zstd", "-q", "-d", "-f", str(source), "-o", str(target)], check=True, capture_output=True
    )
    return target


@dataclass(frozen=True)
class FlatcarRelease:
    """A signed test "Flatcar" release: the raw disk, its .bz2 and .sig, and the key that signed it."""

    disk: Path
    compressed: Path
    signature: Path
    public_key: Path
    sha256: str


def make_flatcar_release(
    directory: Path, *, disk: Path | None = None, signer_name: str = "Flatcar Test"
) -> FlatcarRelease:
    """Sign a tiny Flatcar disk (made here unless given) with a fresh key acting as Flatcar's."""
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    raw = disk or make_flatcar_disk(directory / "flatcar_production_image.bin")
    compressed = compress_bz2(raw, directory / "flatcar_production_image.bin.bz2")
    key = directory / f"{signer_name.replace(' ', '-')}.key"
    generate_signing_key(key, name=signer_name, email="buildbot@flatcar.invalid", passphrase=None)
    with GpgSigner(str(key)) as signer:
        signature = signer.sign_detached(compressed, directory / "flatcar_production_image.bin.bz2.sig")
        public = directory / f"{signer_name.replace(' ', '-')}.pub.gpg"
        public.write_bytes(signer.export_public_keyring())
    digest = hashlib.sha256(compressed.read_bytes()).hexdigest()
    return FlatcarRelease(raw, compressed, Path(signature), public, digest)


def serve_release(
    upstream: UpstreamServer, release: FlatcarRelease, *, signature: bytes | None = None
) -> dict[str, str]:
    """Serve the release where the mirror of Flatcar's release host points; returns the mirror map."""
    base = f"/flatcar/amd64-usr/{VERSION}/"
    upstream.add_bytes(base + "flatcar_production_image.bin.bz2", release.compressed.read_bytes())
    upstream.add_bytes(
        base + "flatcar_production_image.bin.bz2.sig",
        signature if signature is not None else release.signature.read_bytes(),
    )
    return {UPSTREAM_ROOT: upstream.url("/flatcar/")}
