"""Pre-baked Flatcar images: ``python -m builds.pipeline prebake`` on a tiny Flatcar-like disk.

Each result is checked from the image file alone: the GPT (sfdisk), ROOT and OEM (debugfs), the
sysext images (unsquashfs), against the flavour's own Ignition config.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from builds.pipeline.butane.render import ExtensionImage, FlavourConfig, render_ignition
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from builds.pipeline.prebake import (
    DEFAULT_SIGNING_KEY,
    fetch_flatcar_image,
    flatcar_image_url,
    image_files_in,
    plan_from_ignition,
    prebaked_image_name,
    rebuild_btrfs_with,
)
from builds.pipeline.prebake_cli import main
from builds.pipeline.signing import GpgSigner, generate_signing_key
from tests.flatcar_disk import (
    BTRFS_OEM_UUID,
    CHANNEL,
    IMAGE_URL,
    LAYOUT,
    VERSION,
    FlatcarRelease,
    btrfs_files,
    btrfs_superblock,
    debugfs,
    debugfs_cat,
    decompress_zst,
    extract_partition,
    make_flatcar_disk,
    make_flatcar_release,
    partition_bytes,
    read_table,
    serve_release,
)
from tests.upstream import UpstreamServer

PUBLISH = "https://bakehouse.example.org/artifacts/extensions/"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl core@test"


def make_sysext(directory: Path, name: str, version: str) -> Path:
    """A real (tiny) squashfs sysext, named as Bakehouse publishes it."""
    tree = directory / f"{name}.tree"
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d" / f"extension-release.{name}").write_text(
        "ID=flatcar\nSYSEXT_LEVEL=1.0\n"
    )
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin" / name).write_text(f"#!/bin/sh\necho {name} {version}\n")
    image = directory / f"{name}-{version}-x86-64.raw"
    subprocess.run(
        ["mksquashfs", str(tree), str(image), "-all-root", "-noappend", "-quiet"],
        check=True,
        capture_output=True,
    )
    return image


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> FlatcarRelease:
    return make_flatcar_release(tmp_path_factory.mktemp("flatcar"))


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The flavour's own signing keyring (what nodes verify SHA256SUMS with)."""
    key = tmp_path_factory.mktemp("flavour-key") / "key.asc"
    generate_signing_key(key, name="Bakehouse", email="ops@bakehouse.invalid")
    with GpgSigner(str(key)) as signer:
        return signer.export_public_keyring()


def flavour_dir(directory: Path, keyring: bytes, *, ssh: bool = False) -> Path:
    """A flavour's files as published: config.ign and its sysext images."""
    directory.mkdir(parents=True, exist_ok=True)
    images = [make_sysext(directory, "hello", "v1.2.3"), make_sysext(directory, "wasmtime", "31.0.0")]
    extensions = []
    for image in images:
        name, version = image.name.split("-")[0], image.name.split("-")[1]
        digest = hashlib.sha512(image.read_bytes()).hexdigest()
        extensions.append(
            ExtensionImage(
                name,
                version,
                "x86-64",
                f"{PUBLISH}{name}/{image.name}",
                f"sha512-{digest}",
                f"{PUBLISH}{name}/",
            )
        )
    config = FlavourConfig(
        arch="x86-64",
        extensions=tuple(extensions),
        signed=True,
        public_keyring=keyring,
        mask_bundled=("docker",),
        ssh_authorized_keys=(SSH_KEY,) if ssh else (),
    )
    (directory / "config.ign").write_text(render_ignition(config))
    return directory


def run_cli(release: FlatcarRelease, flavour: Path, out: Path, upstream: UpstreamServer, *extra: str) -> int:
    mirror = serve_release(upstream, release)
    ((source, target),) = mirror.items()
    return main(
        [
            IMAGE_URL, "--flavour-dir", str(flavour), "--out", str(out), "--name", "edge nodes",
            "--sha256", release.sha256, "--signing-key", str(release.public_key),
            "--mirror", f"{source}={target}", "--cache-dir", str(out.parent / "cache"), *extra,
        ]
    )  # fmt: skip


def test_prebake_places_what_the_config_says_and_leaves_the_rest_of_the_disk(
    release: FlatcarRelease,
    keyring: bytes,
    upstream: UpstreamServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flavour = flavour_dir(tmp_path / "flavour", keyring)
    assert run_cli(release, flavour, tmp_path / "out", upstream) == 0
    produced = tmp_path / "out" / "flatcar_production_image-edge-nodes.bin.zst"
    assert f"sha256 {hashlib.sha256(produced.read_bytes()).hexdigest()}" in capsys.readouterr().out
    disk = decompress_zst(produced, tmp_path / "prebaked.bin")

    # The partition table, labels and GUIDs are Flatcar's; the partitions other than ROOT are
    # byte for byte the same.
    before, after = read_table(release.disk), read_table(disk)
    assert [(p["name"], p["uuid"], p["type"], p["start"], p["size"]) for p in after["partitions"]] == [
        (p["name"], p["uuid"], p["type"], p["start"], p["size"]) for p in before["partitions"]
    ]
    assert after["id"] == before["id"]
    for label, _kind, _size in LAYOUT:
        if label != "ROOT":
            assert partition_bytes(disk, label) == partition_bytes(release.disk, label), label
    assert partition_bytes(disk, "ROOT") != partition_bytes(release.disk, "ROOT")
    assert disk.stat().st_size == release.disk.stat().st_size

    # On ROOT: what the flavour's Ignition config would have written, as it would have.
    root = extract_partition(disk, "ROOT", tmp_path / "root.ext4")
    subprocess.run(["e2fsck", "-fn", str(root)], check=True, capture_output=True)
    assert debugfs_cat(root, "/etc/machine-info") == b"CHASSIS=vm\n"  # what was there stays
    config = json.loads((flavour / "config.ign").read_text())
    for entry in config["storage"]["files"]:
        if entry["path"].startswith("/opt/extensions/"):
            local = flavour / Path(entry["path"]).name
            assert debugfs_cat(root, entry["path"]) == local.read_bytes()
            placed = tmp_path / Path(entry["path"]).name
            placed.write_bytes(debugfs_cat(root, entry["path"]))
            listing = subprocess.run(
                ["unsquashfs", "-l", str(placed)], check=True, capture_output=True, text=True
            ).stdout
            assert "usr/lib/extension-release.d" in listing
        stat = debugfs(root, f"stat {entry['path']}")
        assert f"Mode:  0{entry['mode']:o}" in stat and "User:     0   Group:     0" in stat, entry["path"]
    assert debugfs_cat(root, "/etc/systemd/import-pubring.gpg") == keyring
    assert b"[Transfer]" in debugfs_cat(root, "/etc/sysupdate.hello.d/hello.conf")
    for link in config["storage"]["links"]:
        assert f'Fast link dest: "{link["target"]}"' in debugfs(root, f"stat {link['path']}"), link
    assert "/opt/extensions/hello/hello-v1.2.3-x86-64.raw" in debugfs(root, "stat /etc/extensions/hello.raw")
    assert (
        debugfs_cat(root, "/etc/systemd/system-preset/20-ignition.preset")
        == b"enable systemd-sysupdate.timer\n"
    )
    dropins = config["systemd"]["units"][1]["dropins"]
    for dropin in dropins:
        placed_dropin = f"/etc/systemd/system/systemd-sysupdate.service.d/{dropin['name']}"
        assert debugfs_cat(root, placed_dropin) == dropin["contents"].encode()


def test_embedded_config_is_what_ignition_still_has_to_do(
    release: FlatcarRelease, keyring: bytes, upstream: UpstreamServer, tmp_path: Path
) -> None:
    flavour = flavour_dir(tmp_path / "flavour", keyring, ssh=True)
    assert run_cli(release, flavour, tmp_path / "out", upstream, "--embed-config") == 0
    disk = decompress_zst(next((tmp_path / "out").glob("*.zst")), tmp_path / "prebaked.bin")
    oem = extract_partition(disk, "OEM", tmp_path / "oem.ext4")
    embedded = json.loads(debugfs_cat(oem, "/config.ign"))
    assert debugfs_cat(oem, "/grub.cfg") == b"set oem_id=qemu\n"
    # Nothing left to download on the first boot: the images are on ROOT already.
    assert "storage" not in embedded
    assert embedded["passwd"]["users"] == [{"name": "core", "sshAuthorizedKeys": [SSH_KEY]}]
    assert embedded["ignition"]["version"]
    for label in ("EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B"):
        assert partition_bytes(disk, label) == partition_bytes(release.disk, label)


@pytest.mark.reliability
def test_refused_when_the_signature_is_not_flatcars(
    release: FlatcarRelease,
    keyring: bytes,
    upstream: UpstreamServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    impostor = make_flatcar_release(tmp_path / "impostor", disk=release.disk, signer_name="Impostor")
    mirror = serve_release(upstream, release, signature=impostor.signature.read_bytes())
    with Fetcher(tmp_path / "cache", mirrors=mirror) as fetcher:
        with pytest.raises(Exception) as refused:
            fetch_flatcar_image(fetcher, IMAGE_URL, sha256=release.sha256, signing_key=release.public_key)
    assert getattr(refused.value, "code", None) == "prebake.signature-mismatch"
    # The shipped default key (Flatcar's own) does not accept a test signature either.
    flavour = flavour_dir(tmp_path / "flavour", keyring)
    ((source, target),) = mirror.items()
    code = main(
        [IMAGE_URL, "--flavour-dir", str(flavour), "--out", str(tmp_path / "out"), "--sha256", release.sha256,
         "--mirror", f"{source}={target}", "--cache-dir", str(tmp_path / "cache2")]
    )  # fmt: skip
    assert code == 1
    assert "prebake.signature-mismatch" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.reliability
def test_refused_when_the_digest_is_not_the_pinned_one(
    release: FlatcarRelease,
    keyring: bytes,
    upstream: UpstreamServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flavour = flavour_dir(tmp_path / "flavour", keyring)
    mirror = serve_release(upstream, release)
    ((source, target),) = mirror.items()
    code = main(
        [IMAGE_URL, "--flavour-dir", str(flavour), "--out", str(tmp_path / "out"), "--sha256", "0" * 64,
         "--signing-key", str(release.public_key), "--mirror", f"{source}={target}",
         "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    assert code == 1
    assert "error: prebake.digest-mismatch" in capsys.readouterr().err


@pytest.mark.reliability
def test_refused_when_a_flatcar_partition_is_missing(
    keyring: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_oem = tuple(entry for entry in LAYOUT if entry[0] != "OEM")
    disk = make_flatcar_disk(tmp_path / "odd" / "flatcar_production_image.bin", layout=no_oem)
    odd = make_flatcar_release(tmp_path / "odd", disk=disk)
    flavour = flavour_dir(tmp_path / "flavour", keyring)
    code = main(
        [str(odd.compressed), "--flavour-dir", str(flavour), "--out", str(tmp_path / "out"),
         "--signing-key", str(odd.public_key), "--sha256", odd.sha256]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "error: prebake.missing-partition" in err and "OEM" in err


def test_refused_when_the_extensions_do_not_fit_on_root(
    keyring: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = make_flatcar_disk(tmp_path / "small" / "flatcar_production_image.bin", root_mib=8)
    small = make_flatcar_release(tmp_path / "small", disk=disk)
    flavour = flavour_dir(tmp_path / "flavour", keyring)
    code = main(
        [str(small.compressed), "--flavour-dir", str(flavour), "--out", str(tmp_path / "out"),
         "--signing-key", str(small.public_key)]
    )  # fmt: skip
    assert code == 1
    assert "error: prebake.no-space" in capsys.readouterr().err


def test_a_remote_file_of_the_users_fragment_stays_with_ignition(tmp_path: Path) -> None:
    config = {
        "ignition": {"version": "3.3.0"},
        "storage": {
            "files": [
                {
                    "path": "/opt/extensions/a/a-1-x86-64.raw",
                    "contents": {"source": "https://h/a/a-1-x86-64.raw"},
                },
                {"path": "/etc/remote.conf", "contents": {"source": "https://elsewhere.example/remote.conf"}},
                {"path": "/etc/owned", "contents": {"source": "data:,x"}, "user": {"name": "core"}},
            ]
        },
    }
    image = tmp_path / "a-1-x86-64.raw"
    image.write_bytes(b"img")
    plan = plan_from_ignition(config, {image.name: image})
    assert [p.path for p in plan.placements] == ["/opt/extensions/a/a-1-x86-64.raw"]
    assert [f["path"] for f in plan.remainder["storage"]["files"]] == ["/etc/remote.conf", "/etc/owned"]


@pytest.mark.reliability
def test_unsafe_paths_and_modes_are_refused(tmp_path: Path) -> None:
    for path, mode in (
        ("/etc/../x", 420),
        ("etc/x", 420),
        ("/etc/a b", 420),
        ("/etc/x", "420"),
        ("/etc/x", -1),
    ):
        config = {"storage": {"files": [{"path": path, "mode": mode, "contents": {"source": "data:,x"}}]}}
        with pytest.raises(Exception) as refused:
            plan_from_ignition(config, {})
        assert getattr(refused.value, "code", None) == "prebake.invalid-config", path


def test_an_image_other_than_the_one_the_config_names_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "a-1-x86-64.raw"
    image.write_bytes(b"the published bytes")
    wanted = hashlib.sha512(b"the published bytes").hexdigest()
    entry = {"path": "/opt/extensions/a/a-1-x86-64.raw", "mode": 420}
    good = {
        **entry,
        "contents": {"source": "https://h/a-1-x86-64.raw", "verification": {"hash": f"sha512-{wanted}"}},
    }
    assert (
        plan_from_ignition({"storage": {"files": [good]}}, {image.name: image}).placements[0].source == image
    )
    image.write_bytes(b"other bytes")
    with pytest.raises(Exception) as refused:
        plan_from_ignition({"storage": {"files": [good]}}, {image.name: image})
    assert getattr(refused.value, "code", None) == "prebake.image-mismatch"


def test_upstream_url_and_file_name() -> None:
    assert flatcar_image_url(CHANNEL, "x86-64", VERSION) == IMAGE_URL
    assert flatcar_image_url("beta", "arm64", "4790.1.0") == (
        "https://beta.release.flatcar-linux.net/arm64-usr/4790.1.0/flatcar_production_image.bin.bz2"
    )
    assert prebaked_image_name("edge nodes/eu") == "flatcar_production_image-edge-nodes-eu.bin.zst"


@pytest.fixture(scope="module")
def btrfs_release(tmp_path_factory: pytest.TempPathFactory) -> FlatcarRelease:
    """A release as current Flatcar ships them: the OEM partition is btrfs."""
    directory = tmp_path_factory.mktemp("flatcar-btrfs")
    disk = make_flatcar_disk(directory / "flatcar_production_image.bin", oem_fs="btrfs")
    return make_flatcar_release(directory, disk=disk)


def test_config_is_embedded_into_a_btrfs_oem(
    btrfs_release: FlatcarRelease, keyring: bytes, upstream: UpstreamServer, tmp_path: Path
) -> None:
    flavour = flavour_dir(tmp_path / "flavour", keyring, ssh=True)
    assert run_cli(btrfs_release, flavour, tmp_path / "out", upstream, "--embed-config") == 0
    disk = decompress_zst(next((tmp_path / "out").glob("*.zst")), tmp_path / "prebaked.bin")
    oem = extract_partition(disk, "OEM", tmp_path / "oem.btrfs")

    config = json.loads((flavour / "config.ign").read_text())
    remainder = plan_from_ignition(config, image_files_in(flavour)).remainder
    expected = json.dumps(remainder, sort_keys=True, separators=(",", ":")).encode()
    files = btrfs_files(oem, tmp_path / "oem-files")
    assert files["config.ign"] == ("0:0", "644", expected)
    assert json.loads(expected)["passwd"]["users"] == [{"name": "core", "sshAuthorizedKeys": [SSH_KEY]}]
    # What the OEM held stays, with its owners, modes and links.
    before = btrfs_files(extract_partition(btrfs_release.disk, "OEM", tmp_path / "before.btrfs"),
                         tmp_path / "before-files")  # fmt: skip
    assert "config.ign" not in before
    assert {name: entry for name, entry in files.items() if name != "config.ign"} == before
    assert before["private/token"] == ("500:600", "640", b"secret\n")
    assert before["grub-link.cfg"][2] == "-> grub.cfg"
    # The same file system to the boot loader and Ignition: label and UUID kept.
    superblock = btrfs_superblock(oem)
    assert (superblock["label"], superblock["fsid"]) == ("OEM", BTRFS_OEM_UUID)
    assert int(superblock["dev_item.total_bytes"]) == len(partition_bytes(disk, "OEM"))
    # The partition table and every other partition byte for byte.
    # The GPT (primary and backup, GUIDs, labels, sizes) byte for byte: all outside the partitions.
    table = read_table(btrfs_release.disk)
    first = min(p["start"] for p in table["partitions"]) * 512
    last = max(p["start"] + p["size"] for p in table["partitions"]) * 512
    original, prebaked = btrfs_release.disk.read_bytes(), disk.read_bytes()
    assert len(prebaked) == len(original)
    assert prebaked[:first] == original[:first] and prebaked[last:] == original[last:]
    for label in ("EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B"):
        assert partition_bytes(disk, label) == partition_bytes(btrfs_release.disk, label)
    root = extract_partition(disk, "ROOT", tmp_path / "root.ext4")
    assert debugfs_cat(root, "/etc/machine-info") == b"CHASSIS=vm\n"


def test_a_mixed_btrfs_keeps_its_format_and_a_config_too_big_for_it_is_refused(tmp_path: Path) -> None:
    small = tmp_path / "oem.btrfs"
    with open(small, "wb") as handle:
        handle.truncate(32 * 1024 * 1024)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "grub.cfg").write_text("set oem_id=qemu\n")
    subprocess.run(
        ["fakeroot", "--", "mkfs.btrfs", "-q", "--mixed", "--rootdir", str(tree), "--label", "OEM",
         "--uuid", BTRFS_OEM_UUID, str(small)],
        check=True, capture_output=True,
    )  # fmt: skip
    rebuilt = rebuild_btrfs_with(small, "config.ign", b'{"ignition":{}}', tmp_path / "work")
    superblock = btrfs_superblock(rebuilt)
    assert (superblock["label"], superblock["fsid"]) == ("OEM", BTRFS_OEM_UUID)
    assert int(superblock["incompat_flags"], 16) & 0x4  # still mixed block groups
    assert rebuilt.stat().st_size == 32 * 1024 * 1024
    files = btrfs_files(rebuilt, tmp_path / "files")
    assert files["config.ign"] == ("0:0", "644", b'{"ignition":{}}')
    assert files["grub.cfg"] == ("0:0", "644", b"set oem_id=qemu\n")

    too_big = json.dumps({"ignition": {}, "padding": os.urandom(24 * 1024 * 1024).hex()}).encode()
    with pytest.raises(PipelineError) as refused:
        rebuild_btrfs_with(rebuilt, "config.ign", too_big, tmp_path / "work-big")
    assert refused.value.code == "prebake.no-space"


def test_embedding_into_an_oem_that_is_neither_ext4_nor_btrfs_is_refused(
    keyring: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = make_flatcar_disk(tmp_path / "odd" / "flatcar_production_image.bin")
    oem = next(p for p in read_table(disk)["partitions"] if p["name"] == "OEM")
    with open(disk, "r+b") as handle:  # no ext4 magic, no btrfs one: a file system we cannot write
        handle.seek(oem["start"] * 512 + 1080)
        handle.write(b"\0\0")
    odd = make_flatcar_release(tmp_path / "odd", disk=disk)
    flavour = flavour_dir(tmp_path / "flavour", keyring)
    args = [str(odd.compressed), "--flavour-dir", str(flavour), "--out", str(tmp_path / "out"),
            "--signing-key", str(odd.public_key)]  # fmt: skip
    assert main([*args, "--embed-config"]) == 1
    err = capsys.readouterr().err
    assert "error: prebake.oem-unsupported" in err and "ext4 or btrfs" in err
    assert main(args) == 0  # without embedding, the same image pre-bakes


def test_the_shipped_key_is_flatcars_with_a_signing_subkey_in_force(tmp_path: Path) -> None:
    """Real images fail ``prebake.signature-mismatch`` unless the shipped key carries the subkey
    Flatcar signs current releases with; this fails once that subkey expires (refresh the key:
    README, Pre-baked Flatcar disk images)."""
    listing = subprocess.run(
        ["gpg", "--batch", f"--homedir={tmp_path}", "--show-keys", "--with-colons", str(DEFAULT_SIGNING_KEY)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    records = [line.split(":") for line in listing.splitlines()]
    fingerprints = [fields[9] for fields in records if fields[0] == "fpr"]
    assert fingerprints[0] == "F88CFEDEFF29A5B4D9523864E25D9AED0593B34A"  # Flatcar Buildbot's primary
    now = time.time()
    in_force = [
        fields[4]
        for fields in records
        if fields[0] == "sub" and "s" in fields[11] and fields[1] not in ("r", "e")
        and int(fields[5]) <= now < int(fields[6] or "9999999999")
    ]  # fmt: skip
    assert in_force, "no signing subkey of Flatcar's image signing key is in force: refresh the key"
    assert "32DA80F91EF52974" in [fields[4] for fields in records if fields[0] == "sub"]  # 2025-03-07
