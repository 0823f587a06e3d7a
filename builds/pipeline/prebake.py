"""Prebake: a flavour's sysexts baked into the official Flatcar disk image, ready to boot offline.

Flatcar's own answer for nodes that must boot with their extensions present (``bake_flatcar_image``
in Flatcar's scripts) loop-mounts the image as root. This does the same on image files alone, so it
runs in an unprivileged worker:

1. **fetch**: ``flatcar_production_image.bin.bz2`` of the channel, arch and version through the one
   fetcher (mirrors honoured, the pinned sha256 checked), and its ``.sig``, verified with Flatcar's
   image signing key (``prebake.digest-mismatch``, ``prebake.signature-mismatch``);
2. **unpack**: ``bzip2 -dc`` streamed into a sparse ``.bin``;
3. **read the GPT** (``sfdisk --json``): the partitions are found by their labels (EFI-SYSTEM,
   BIOS-BOOT, USR-A, USR-B, OEM, ROOT; ``prebake.missing-partition`` otherwise);
4. **place** what the flavour's Ignition config would have written, on ROOT's ext4, with
   ``debugfs -w`` on the partition copied out by offset: the images at
   ``/opt/extensions/NAME/NAME-VER-ARCH.raw``, the ``/etc/extensions/NAME.raw`` links, the transfer
   files, the keyring, units and drop-ins (``enabled`` as Ignition does it: a preset line). The
   config itself is read, not restated here, so the image holds exactly what the Butane says;
5. **embed** (optional) the rest of the config, the part that could not be baked, as the OEM
   partition's ``config.ign``, which Flatcar's Ignition reads on the first boot: with ``debugfs``
   on an ext4 OEM (older releases); a btrfs OEM (current releases) is restored with ``btrfs
   restore`` and made anew with ``mkfs.btrfs --rootdir`` (same size, label, UUID), under fakeroot;
6. **write back** the changed partitions at their offsets (only changed chunks), and compress with
   ``zstd``. The partition table, labels, GUIDs and the other partitions are left byte for byte,
   so the image boots and updates (USR-A/USR-B) like any Flatcar image.

Everything streams through files and subprocesses: an image is ~500 MB compressed, ~8 GB raw.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builds.pipeline.butane.dataurl import DataURLError, decode_data_url
from builds.pipeline.checksums import sha256_file
from builds.pipeline.command import run_command, tool_missing_error
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import FetchedFile, Fetcher
from builds.pipeline.signing import GPG

# The upstream layout of Flatcar releases (a mirror may rewrite the prefix).
FLATCAR_IMAGE_URL = (
    "https://{channel}.release.flatcar-linux.net/{board}/{version}/flatcar_production_image.bin.bz2"
)
BOARDS = {"x86-64": "amd64-usr", "arm64": "arm64-usr"}
# Flatcar's image signing key (Flatcar Buildbot (Official Builds), primary key
# F88CFEDEFF29A5B4D9523864E25D9AED0593B34A), as published at
# https://www.flatcar.org/security/image-signing-key/Flatcar_Image_Signing_Key.asc and embedded in
# flatcar/init's flatcar-install; its signing subkey 52F145DF...1EF52974 expires 2027-03-08 (README).
DEFAULT_SIGNING_KEY = Path(__file__).parent / "keys" / "flatcar-image-signing-key.asc"
PARTITION_LABELS = ("EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM", "ROOT")
OEM_CONFIG_NAME = "config.ign"
IGNITION_PRESET_PATH = "/etc/systemd/system-preset/20-ignition.preset"
STEPS = ("fetch", "unpack", "partitions", "place", "embed", "compress")

_VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")
_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 4 * 1024 * 1024
_EXT4_MAGIC_OFFSET = 1080
_BTRFS_MAGIC_OFFSET = 65536 + 64
# Kept free on ROOT beyond what is placed: the first boot writes machine-id, journal, /var...
_ROOT_HEADROOM = 16 * 1024 * 1024

Progress = Callable[[str, str, float], None]


def _quiet(step: str, message: str, fraction: float) -> None:
    return None


def flatcar_version_problem(version: str) -> str:
    """Why ``version`` is not a Flatcar release number (MAJOR.MINOR.PATCH), or ''."""
    return "" if _VERSION_RE.fullmatch(version) else "A Flatcar release looks like 4593.2.0."


def flatcar_image_url(channel: str, arch: str, version: str) -> str:
    """The official production image of ``channel``/``version`` for ``arch`` (systemd arch name)."""
    problem = flatcar_version_problem(version)
    if problem:
        raise PipelineError("prebake.invalid-version", f"{version!r}: {problem}")
    if arch not in BOARDS:
        raise PipelineError("prebake.invalid-arch", f"Flatcar publishes no image for {arch!r}")
    return FLATCAR_IMAGE_URL.format(channel=channel, board=BOARDS[arch], version=version)


def prebaked_image_name(flavour: str) -> str:
    """``flatcar_production_image-FLAVOUR.bin.zst``, with the flavour's name made file-safe."""
    safe = _NAME_RE.sub("-", flavour).strip("-.") or "flavour"
    return f"flatcar_production_image-{safe}.bin.zst"


# --- fetch --------------------------------------------------------------------------------------


def fetch_flatcar_image(
    fetcher: Fetcher,
    url: str,
    *,
    sha256: str,
    signing_key: str | os.PathLike[str] = DEFAULT_SIGNING_KEY,
) -> FetchedFile:
    """The compressed image at ``url`` (its pinned ``sha256`` checked), verified against its
    detached ``.sig`` with ``signing_key`` (armored or binary OpenPGP public key)."""
    try:
        image = fetcher.fetch(url, sha256=sha256, label="Flatcar image")
    except PipelineError as error:
        if error.code == "fetch.sha256-mismatch":
            raise PipelineError(
                "prebake.digest-mismatch",
                f"the Flatcar image {url} does not have the pinned sha256 {sha256}; "
                "check the version and pin (Flatcar publishes the digests beside each image)",
            ) from None
        raise
    signature = fetcher.fetch(url + ".sig", label="Flatcar image signature")
    verify_image_signature(image.path, signature.path, signing_key, what=url)
    return image


def verify_image_signature(
    data: str | os.PathLike[str],
    signature: str | os.PathLike[str],
    signing_key: str | os.PathLike[str],
    *,
    what: str = "",
) -> None:
    """Check a detached signature over a (large) file: gpg reads the file itself, streaming."""
    key = Path(signing_key)
    if not key.is_file():
        raise PipelineError("prebake.signing-key-missing", f"Flatcar's image signing key {key} is missing")
    with tempfile.TemporaryDirectory(prefix="bh-prebake-gpg-") as home:
        os.chmod(home, 0o700)
        keyring = Path(home) / "trusted.gpg"
        base = [GPG, "--no-options", "--batch", f"--homedir={home}", "--no-default-keyring"]
        run_command(
            [*base, f"--keyring={keyring}", "--import", str(key.absolute())],
            error_code="prebake.signing-key-missing",
            what="gpg --import (Flatcar's image signing key)",
        )
        result = run_command(
            [*base, f"--keyring={keyring}", "--trust-model=always", "--verify",
             str(Path(signature).absolute()), str(Path(data).absolute())],
            error_code="prebake.signature-mismatch",
            what="gpg --verify",
            timeout=1800,
            check=False,
        )  # fmt: skip
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
    if result.returncode != 0:
        raise PipelineError(
            "prebake.signature-mismatch",
            f"the signature of {what or Path(data).name} does not verify with Flatcar's image signing "
            f"key ({key.name}); the download was tampered with, or the key is not the one that signed it",
            output=result.output,
        )


# --- the disk image -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """One GPT partition, as ``sfdisk --json`` reports it (offsets in bytes)."""

    number: int
    label: str
    start: int
    size: int
    uuid: str
    type: str


def read_partitions(image: str | os.PathLike[str]) -> dict[str, Partition]:
    """The GPT partitions of ``image`` by label; ``prebake.missing-partition`` if one of
    ``PARTITION_LABELS`` is absent (not a Flatcar disk image)."""
    result = run_command(
        ["sfdisk", "--json", str(image)], error_code="prebake.missing-partition", what="sfdisk --json",
        check=False,
    )  # fmt: skip
    table: dict[str, Any] = {}
    if result.returncode == 0:
        try:
            table = json.loads(result.stdout)["partitiontable"]
        except (ValueError, KeyError, TypeError):
            table = {}
    if table.get("label") != "gpt":
        raise PipelineError(
            "prebake.missing-partition",
            f"{Path(image).name} has no GPT partition table: it is not a Flatcar disk image",
            output=result.output,
        )
    sector = int(table.get("sectorsize", 512))
    found: dict[str, Partition] = {}
    for number, entry in enumerate(table.get("partitions", []), start=1):
        label = str(entry.get("name", ""))
        node = str(entry.get("node", ""))
        digits = re.search(r"(\d+)$", node)
        found.setdefault(
            label,
            Partition(
                number=int(digits.group(1)) if digits else number,
                label=label,
                start=int(entry["start"]) * sector,
                size=int(entry["size"]) * sector,
                uuid=str(entry.get("uuid", "")),
                type=str(entry.get("type", "")),
            ),
        )
    missing = [label for label in PARTITION_LABELS if label not in found]
    if missing:
        raise PipelineError(
            "prebake.missing-partition",
            f"{Path(image).name} lacks the partition(s) {', '.join(missing)} of a Flatcar disk image "
            f"(found: {', '.join(sorted(found)) or 'none'})",
        )
    return found


def decompress_bz2(source: Path, target: Path) -> None:
    """``bzip2 -dc SOURCE`` into ``target``, chunk by chunk, leaving runs of zeros as holes."""
    if shutil.which("bzip2") is None:
        raise tool_missing_error("bzip2")
    with (
        open(target, "wb") as out,
        subprocess.Popen(
            ["bzip2", "-dc", str(source)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as proc,
    ):
        assert proc.stdout is not None
        size = 0
        while chunk := proc.stdout.read(_CHUNK):
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            size += len(chunk)
        out.truncate(size)
        stderr = proc.stderr.read() if proc.stderr is not None else b""
        if proc.wait() != 0:
            raise PipelineError(
                "prebake.unpack-failed",
                f"{source.name} is not a bzip2-compressed disk image: "
                f"{stderr.decode('utf-8', 'replace').strip()[-300:]}",
            )


def copy_out(image: Path, partition: Partition, target: Path) -> None:
    """The bytes of ``partition`` into their own (sparse) file."""
    with open(image, "rb") as source, open(target, "wb") as out:
        source.seek(partition.start)
        remaining = partition.size
        while remaining:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                break
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), os.SEEK_CUR)
            else:
                out.write(chunk)
            remaining -= len(chunk)
        out.truncate(partition.size)


def copy_in(image: Path, partition: Partition, source_path: Path) -> None:
    """Write a partition file back at its offset; only the chunks that differ are written."""
    if source_path.stat().st_size != partition.size:
        raise PipelineError(
            "prebake.partition-size",
            f"the {partition.label} file changed size; the partition table would no longer match",
        )
    with open(source_path, "rb") as source, open(image, "r+b") as out:
        offset = 0
        while chunk := source.read(_CHUNK):
            out.seek(partition.start + offset)
            if out.read(len(chunk)) != chunk:
                out.seek(partition.start + offset)
                out.write(chunk)
            offset += len(chunk)


def filesystem_of(path: Path) -> str:
    """``ext4`` or ``btrfs`` (by superblock magic), else ''."""
    with open(path, "rb") as handle:
        handle.seek(_EXT4_MAGIC_OFFSET)
        if handle.read(2) == b"\x53\xef":
            return "ext4"
        handle.seek(_BTRFS_MAGIC_OFFSET)
        if handle.read(8) == b"_BHRfS_M":
            return "btrfs"
    return ""


def ext4_free_bytes(path: Path) -> int:
    """Free bytes of an ext4 file system image, from its superblock (``dumpe2fs -h``)."""
    result = run_command(["dumpe2fs", "-h", str(path)], error_code="prebake.not-ext4", what="dumpe2fs -h")
    fields: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        return int(fields["Free blocks"]) * int(fields["Block size"])
    except (KeyError, ValueError):
        raise PipelineError(
            "prebake.not-ext4", f"{path.name}: dumpe2fs reported no free block count"
        ) from None


# --- what the config puts where -----------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """One node the first boot would have written: a file (from ``source`` or ``data``), a
    directory, or a symbolic link to ``target``."""

    path: str
    kind: str  # "file", "dir" or "link"
    mode: int = 0o644
    source: Path | None = None
    data: bytes | None = None
    target: str = ""


@dataclass
class PrebakePlan:
    """The placements taken from a flavour's Ignition config, and what is left to Ignition."""

    placements: list[Placement] = field(default_factory=list)
    remainder: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        total = 0
        for item in self.placements:
            if item.source is not None:
                total += item.source.stat().st_size
            elif item.data is not None:
                total += len(item.data)
        return total


def _checked_path(path: Any) -> str:
    if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path:
        raise PipelineError("prebake.invalid-config", f"the Ignition config names an unsafe path {path!r}")
    if any(ch.isspace() or ch in "\"'\\" or ord(ch) < 0x20 for ch in path):
        # debugfs reads its commands as words: such a path cannot be expressed there.
        raise PipelineError("prebake.invalid-config", f"the Ignition config names an unsafe path {path!r}")
    return path


def _mode(entry: Mapping[str, Any], default: int) -> int:
    mode = entry.get("mode", default)
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise PipelineError(
            "prebake.invalid-config", f"{entry.get('path')}: mode {mode!r} is not a file mode"
        )
    return mode


def _owned_by_root(entry: Mapping[str, Any]) -> bool:
    for key in ("user", "group"):
        owner = entry.get(key) or {}
        if owner.get("name") not in (None, "root") or owner.get("id") not in (None, 0):
            return False
    return True


def _contents(contents: Mapping[str, Any], images: Mapping[str, Path]) -> tuple[Path | None, bytes | None]:
    """(file, data) for a file's ``contents``, or (None, None) when only Ignition can fetch it."""
    source = contents.get("source")
    if source is None:
        return None, b""
    if not isinstance(source, str):
        raise PipelineError("prebake.invalid-config", "a file's contents.source is not text")
    if source.startswith("data:"):
        try:
            data = decode_data_url(source)
        except DataURLError as exc:
            raise PipelineError("prebake.invalid-config", f"a data URL cannot be read: {exc}") from None
        if contents.get("compression") == "gzip":
            data = gzip.decompress(data)
        elif contents.get("compression"):
            return None, None
        return None, data
    name = posixpath.basename(source.split("?", 1)[0])
    if name in images and not contents.get("compression"):
        _check_verification(contents, images[name])
        return images[name], None
    return None, None


def _check_verification(contents: Mapping[str, Any], image: Path) -> None:
    """Refuse an image whose bytes are not the ones the config's ``verification.hash`` names:
    Ignition would have refused them too."""
    expected = (contents.get("verification") or {}).get("hash")
    if not expected:
        return
    algorithm, _sep, digest = str(expected).partition("-")
    if algorithm not in ("sha256", "sha512"):
        raise PipelineError("prebake.invalid-config", f"unsupported verification hash {expected!r}")
    with open(image, "rb") as handle:
        actual = hashlib.file_digest(handle, algorithm).hexdigest()
    if actual != digest.lower():
        raise PipelineError(
            "prebake.image-mismatch",
            f"{image.name} is not the image the config names ({algorithm} {digest[:16]}..., "
            f"got {actual[:16]}...); use the images published with this config",
        )


def plan_from_ignition(config: Mapping[str, Any], images: Mapping[str, Path]) -> PrebakePlan:
    """What of ``config`` can be placed on ROOT now: files whose contents are inline or one of
    ``images`` (by file name: the flavour's sysexts), directories, symbolic links, units and
    drop-ins. Everything else (users, remote files...) stays in ``remainder`` for Ignition."""
    plan = PrebakePlan()
    remainder = json.loads(json.dumps(config))
    storage = remainder.get("storage") or {}
    kept_files: list[Any] = []
    for entry in storage.get("files") or []:
        path = _checked_path(entry.get("path"))
        source, data = _contents(entry.get("contents") or {}, images)
        if (source is None and data is None) or entry.get("append") or not _owned_by_root(entry):
            kept_files.append(entry)
            continue
        plan.placements.append(Placement(path, "file", _mode(entry, 0o644), source=source, data=data))
    kept_dirs: list[Any] = []
    for entry in storage.get("directories") or []:
        path = _checked_path(entry.get("path"))
        if not _owned_by_root(entry):
            kept_dirs.append(entry)
            continue
        plan.placements.append(Placement(path, "dir", _mode(entry, 0o755)))
    kept_links: list[Any] = []
    for entry in storage.get("links") or []:
        path = _checked_path(entry.get("path"))
        target = entry.get("target")
        if entry.get("hard") or not isinstance(target, str) or not _owned_by_root(entry):
            kept_links.append(entry)
            continue
        _checked_path(posixpath.normpath(posixpath.join(posixpath.dirname(path), target)))
        plan.placements.append(Placement(path, "link", 0o777, target=target))
    presets: list[str] = []
    for unit in (remainder.get("systemd") or {}).get("units") or []:
        name = unit.get("name")
        if not isinstance(name, str) or "/" in name:
            raise PipelineError("prebake.invalid-config", f"a unit has an unsafe name {name!r}")
        unit_path = _checked_path(f"/etc/systemd/system/{name}")
        if unit.get("mask"):
            plan.placements.append(Placement(unit_path, "link", 0o777, target="/dev/null"))
        elif isinstance(unit.get("contents"), str):
            plan.placements.append(Placement(unit_path, "file", 0o644, data=unit["contents"].encode()))
        for dropin in unit.get("dropins") or []:
            dropin_path = _checked_path(f"{unit_path}.d/{dropin.get('name')}")
            contents = dropin.get("contents")
            if isinstance(contents, str):
                plan.placements.append(Placement(dropin_path, "file", 0o644, data=contents.encode()))
        if unit.get("enabled") is True:
            presets.append(f"enable {name}\n")
        elif unit.get("enabled") is False:
            presets.append(f"disable {name}\n")
    if presets:
        # What Ignition writes for enabled units: systemd applies presets on the first boot.
        plan.placements.append(Placement(IGNITION_PRESET_PATH, "file", 0o644, data="".join(presets).encode()))
    # The remainder: what Ignition still has to do on the first boot.
    for key, kept in (("files", kept_files), ("directories", kept_dirs), ("links", kept_links)):
        if kept:
            storage[key] = kept
        else:
            storage.pop(key, None)
    if not storage:
        remainder.pop("storage", None)
    remainder.pop("systemd", None)
    plan.remainder = remainder
    return plan


# --- writing ext4 with debugfs ------------------------------------------------------------------

_TOLERATED = (
    "directory already exists",  # mkdir of a directory the image already has
    "file not found by ext2_lookup",  # rm of a path the image does not have
)
_BANNER_RE = re.compile(r"^debugfs \S+ \(.*\)$")


def place_on_ext4(filesystem: Path, placements: Iterable[Placement], work: Path) -> None:
    """Write ``placements`` into the ext4 image ``filesystem`` with ``debugfs -w`` (no mount):
    parent directories created, existing nodes replaced, everything owned by root."""
    lines: list[str] = []
    made: set[str] = {"/"}
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    def parents(path: str) -> None:
        parent = posixpath.dirname(path)
        if parent in made:
            return
        parents(parent)
        made.add(parent)
        lines.append(f"mkdir {parent}")

    for index, item in enumerate(placements):
        parents(item.path)
        if item.kind == "dir":
            if item.path not in made:
                made.add(item.path)
                lines.append(f"mkdir {item.path}")
            lines.append(f"sif {item.path} mode 0{0o40000 | item.mode:o}")
            lines += [f"sif {item.path} uid 0", f"sif {item.path} gid 0"]
            continue
        lines.append(f"rm {item.path}")
        if item.kind == "link":
            lines.append(f"symlink {item.path} {item.target}")
            continue
        source = item.source
        if source is None:
            source = data_dir / str(index)
            source.write_bytes(item.data or b"")
        lines.append(f"write {source.absolute()} {item.path}")
        lines.append(f"sif {item.path} mode 0{0o100000 | item.mode:o}")
        lines += [f"sif {item.path} uid 0", f"sif {item.path} gid 0"]
    script = work / "debugfs.cmds"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_command(
        ["debugfs", "-w", "-f", str(script), str(filesystem)],
        error_code="prebake.write-failed",
        what="debugfs -w",
        timeout=3600,
    )
    problems = [
        line
        for line in result.stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and not _BANNER_RE.match(line) and not any(ok in line.lower() for ok in _TOLERATED)
    ]
    if problems:
        text = "; ".join(problems[:5])
        if "no free space" in text.lower() or "could not allocate" in text.lower():
            raise PipelineError("prebake.no-space", f"the ROOT partition ran out of space: {text}")
        raise PipelineError("prebake.write-failed", f"debugfs could not place the files: {text}")


# --- rewriting a btrfs file system (no mount) ---------------------------------------------------

_BTRFS_MIXED_GROUPS = 0x4
_NO_SPACE_RE = re.compile(r"no space|enospc|: -28\b", re.IGNORECASE)
# Run under fakeroot: ``btrfs restore -m`` records the owners it cannot set as an unprivileged
# user, and ``mkfs.btrfs --rootdir`` reads them back, so the rebuilt file system keeps them.
_BTRFS_REBUILD = """set -e
btrfs restore -m -S -x "$1" "$2"
cp "$3" "$2/$4"
chown 0:0 "$2/$4"
chmod 0644 "$2/$4"
shift 4
mkfs.btrfs -q "$@"
"""


@dataclass(frozen=True)
class BtrfsSuper:
    """What a rebuilt btrfs must keep of the original (``btrfs inspect-internal dump-super``)."""

    label: str
    uuid: str
    nodesize: int
    sectorsize: int
    csum: str
    mixed: bool
    total_bytes: int


def btrfs_super(path: Path) -> BtrfsSuper:
    """Label, UUID and format of the btrfs file system image ``path``, read from its superblock."""
    result = run_command(
        ["btrfs", "inspect-internal", "dump-super", str(path)],
        error_code="prebake.oem-unsupported",
        what="btrfs inspect-internal dump-super",
    )
    fields: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        key, _sep, value = line.partition("\t")
        fields.setdefault(key.strip(), value.strip())
    try:
        csum = re.search(r"\((\w+)\)", fields["csum_type"])
        return BtrfsSuper(
            label=fields.get("label", ""),
            uuid=fields["fsid"],
            nodesize=int(fields["nodesize"]),
            sectorsize=int(fields["sectorsize"]),
            csum=csum.group(1) if csum else "crc32c",
            mixed=bool(int(fields["incompat_flags"], 16) & _BTRFS_MIXED_GROUPS),
            total_bytes=int(fields["total_bytes"]),
        )
    except (KeyError, ValueError):
        raise PipelineError(
            "prebake.oem-unsupported", f"{path.name}: the btrfs superblock could not be read"
        ) from None


def rebuild_btrfs_with(filesystem: Path, name: str, data: bytes, work: Path) -> Path:
    """A new btrfs image of the same size, label, UUID and format as ``filesystem`` (the file
    holding the partition's bytes), holding its files (owners, modes, links kept) plus ``/NAME``
    (``data``, 0644, root): btrfs cannot be written in place without a mount, so its files are
    restored and the file system made anew. ``prebake.no-space`` when they no longer fit."""
    for tool in ("btrfs", "mkfs.btrfs", "fakeroot"):
        if shutil.which(tool) is None:
            raise tool_missing_error(tool)
    original = btrfs_super(filesystem)
    work.mkdir(parents=True, exist_ok=True)
    tree = work / "tree"
    tree.mkdir()
    payload = work / name
    payload.write_bytes(data)
    rebuilt = work / "rebuilt.img"
    size = filesystem.stat().st_size  # the partition's
    with open(rebuilt, "wb") as handle:
        handle.truncate(size)
    mkfs = [
        "--rootdir", str(tree), "--label", original.label, "--uuid", original.uuid,
        "--byte-count", str(min(original.total_bytes, size) or size), "--nodesize", str(original.nodesize),
        "--sectorsize", str(original.sectorsize), "--csum", original.csum, "--nodiscard",
    ]  # fmt: skip
    if original.mixed:
        mkfs.append("--mixed")
    result = run_command(
        ["fakeroot", "--", "sh", "-c", _BTRFS_REBUILD, "sh", str(filesystem), str(tree), str(payload), name,
         *mkfs, str(rebuilt)],
        error_code="prebake.write-failed",
        what="btrfs restore / mkfs.btrfs",
        timeout=3600,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        text = result.output.strip()[-500:]
        if _NO_SPACE_RE.search(text):  # mkfs.btrfs reports ENOSPC as "...: -28"
            raise PipelineError(
                "prebake.no-space", f"the OEM partition's btrfs has no room for {name}: {text}"
            )
        raise PipelineError(
            "prebake.write-failed",
            f"the OEM partition's btrfs could not be rewritten: {text}",
            output=result.output,
        )
    if rebuilt.stat().st_size != size:
        # mkfs.btrfs --rootdir grows an image file rather than fail when the files do not fit.
        raise PipelineError(
            "prebake.no-space",
            f"the OEM partition's btrfs ({size} bytes) has no room for {name} ({len(data)} bytes) "
            "beside its files",
        )
    shutil.rmtree(tree, ignore_errors=True)
    filesystem.unlink()
    return rebuilt


# --- the whole step -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrebakeResult:
    path: Path
    file_name: str
    sha256: str
    size: int
    placed: tuple[str, ...]
    embedded_config: bool


def prebake_image(
    compressed_image: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    images: Mapping[str, Path],
    embed_config: bool = False,
    work_dir: str | os.PathLike[str] | None = None,
    progress: Progress = _quiet,
) -> PrebakeResult:
    """Bake the flavour described by the Ignition ``config`` (its sysext ``images`` by file name)
    into the bzip2-compressed Flatcar disk image, writing ``out_path`` (zstd-compressed)."""
    out = Path(out_path)
    for tool in ("sfdisk", "debugfs", "dumpe2fs", "zstd"):
        if shutil.which(tool) is None:
            raise tool_missing_error(tool)
    plan = plan_from_ignition(config, images)
    with tempfile.TemporaryDirectory(prefix="bh-prebake-", dir=work_dir) as scratch:
        work = Path(scratch)
        raw = work / "flatcar_production_image.bin"
        progress("unpack", "decompressing the Flatcar image", 0.0)
        decompress_bz2(Path(compressed_image), raw)
        progress("unpack", f"decompressed ({raw.stat().st_size} bytes)", 1.0)
        partitions = read_partitions(raw)
        progress("partitions", "found " + ", ".join(PARTITION_LABELS), 1.0)

        root = partitions["ROOT"]
        root_file = work / "root.ext4"
        copy_out(raw, root, root_file)
        if filesystem_of(root_file) != "ext4":
            raise PipelineError("prebake.not-ext4", "the ROOT partition does not hold an ext4 file system")
        free = ext4_free_bytes(root_file)
        needed = plan.size + _ROOT_HEADROOM
        if needed > free:
            raise PipelineError(
                "prebake.no-space",
                f"the ROOT partition has {free} bytes free; the extensions need {needed} "
                "(with room for the first boot)",
            )
        progress("place", f"placing {len(plan.placements)} files and links on ROOT", 0.0)
        place_on_ext4(root_file, plan.placements, work / "root")
        copy_in(raw, root, root_file)
        root_file.unlink()
        progress("place", f"placed {len(plan.placements)} files and links on ROOT", 1.0)

        if embed_config:
            oem = partitions["OEM"]
            oem_file = work / "oem.img"
            copy_out(raw, oem, oem_file)
            kind = filesystem_of(oem_file)
            document = json.dumps(plan.remainder, sort_keys=True, separators=(",", ":")).encode()
            if kind == "ext4":
                place_on_ext4(
                    oem_file, [Placement("/" + OEM_CONFIG_NAME, "file", 0o644, data=document)], work / "oem"
                )
            elif kind == "btrfs":
                oem_file = rebuild_btrfs_with(oem_file, OEM_CONFIG_NAME, document, work / "oem")
            else:
                raise PipelineError(
                    "prebake.oem-unsupported",
                    "the OEM partition holds an unknown file system; the Ignition config can only be "
                    "embedded into an ext4 or btrfs OEM partition (provision the config otherwise)",
                )
            copy_in(raw, oem, oem_file)
            oem_file.unlink()
            progress("embed", "embedded config.ign on the OEM partition", 1.0)

        progress("compress", "compressing with zstd", 0.0)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        try:
            run_command(
                ["zstd", "-q", "-f", "-T0", "-3", str(raw), "-o", str(partial)],
                error_code="prebake.compress-failed",
                what="zstd",
                timeout=3600,
            )
            os.replace(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    digest = sha256_file(out)
    progress("compress", f"{out.name} sha256 {digest}", 1.0)
    return PrebakeResult(
        path=out,
        file_name=out.name,
        sha256=digest,
        size=out.stat().st_size,
        placed=tuple(item.path for item in plan.placements),
        embedded_config=embed_config,
    )


def image_files_in(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Every ``*.raw`` under ``directory`` by file name (a served flavour or extensions tree)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(directory).rglob("*.raw")):
        if path.is_file():
            found.setdefault(path.name, path)
    return found
