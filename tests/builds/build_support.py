"""Helpers for tests that really build: an extension served by the fixture upstream, approved
with the real sha256 of its archives, and checks of what a build published."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from builds.pipeline.checksums import parse_sums
from builds.pipeline.signing import verify_like_systemd
from catalog.models import Extension, VersionStatus
from tests.builds.catalog_fixtures import UPSTREAM_HOST, make_extension
from tests.upstream import UpstreamServer, executable, make_tar

UPSTREAM_ARCH = {"x86-64": "x86_64", "arm64": "arm64"}


def serve_extension(
    upstream: UpstreamServer,
    name: str,
    versions: tuple[str, ...] = ("v1.0.0", "v0.9.0"),
    *,
    delay: float = 0.0,
    binaries: Mapping[str, bytes] | None = None,
    **extra: Any,
) -> Extension:
    """Serve a tar.gz holding ``bin/NAME`` per version and arch; approve every version with pins.

    ``delay`` makes the upstream answer that many seconds late (a build that stays running).
    ``binaries`` (arch -> bytes) replaces the shell script ``bin/NAME`` of that arch's download.
    """
    digests: dict[tuple[str, str], str] = {}
    for version in versions:
        for arch, upstream_arch in UPSTREAM_ARCH.items():
            content = (binaries or {}).get(arch) or f"#!/bin/sh\necho {name} {version}\n".encode()
            archive = make_tar([executable(f"bin/{name}", content)], "gz")
            path = f"/example/{name}/releases/download/{version}/{name}-{version}-{upstream_arch}.tar.gz"
            if delay:
                upstream.add_slow(path, archive, delay=delay)
            else:
                upstream.add_bytes(path, archive)
            digests[(version, arch)] = hashlib.sha256(archive).hexdigest()
    return make_extension(
        name, versions={v: VersionStatus.APPROVED for v in versions}, digests=digests, **extra
    )


def upstream_mirrors(upstream: UpstreamServer) -> dict[str, str]:
    """The mirror map that sends the catalog's real host to the fixture server."""
    return {UPSTREAM_HOST: upstream.base_url + "/"}


def check_published_extension(get: Any, prefix: str, keyring: bytes) -> dict[str, str]:
    """SHA256SUMS lines match the objects' bytes and the signature verifies as systemd does.

    ``get(key) -> bytes``; returns the SHA256SUMS entries.
    """
    sums = get(prefix + "SHA256SUMS")
    entries = parse_sums(sums)
    assert entries, f"{prefix}SHA256SUMS lists nothing"
    for file_name, digest in entries.items():
        assert hashlib.sha256(get(prefix + file_name)).hexdigest() == digest, file_name
    verify_signature(sums, get(prefix + "SHA256SUMS.gpg"), keyring)
    return entries


def verify_signature(sums: bytes, signature: bytes, keyring: bytes) -> None:
    with tempfile.TemporaryDirectory() as work:
        paths = [Path(work, n) for n in ("SHA256SUMS", "SHA256SUMS.gpg", "import-pubring.gpg")]
        for path, data in zip(paths, (sums, signature, keyring), strict=True):
            path.write_bytes(data)
        verify_like_systemd(*paths)


def ignition_image_hashes(ignition: bytes) -> dict[str, str]:
    """path -> verification.hash of every file of an Ignition config that has one."""
    config = json.loads(ignition)
    return {
        f["path"]: f["contents"]["verification"]["hash"]
        for f in config.get("storage", {}).get("files", [])
        if f.get("contents", {}).get("verification", {}).get("hash")
    }


def gpg_available() -> bool:
    return subprocess.run(["gpg", "--version"], capture_output=True, check=False).returncode == 0


def shared_signing_key(directory: Path) -> Path:
    """A signing key file for workers on a real broker, which refuse to start without one."""
    from builds.pipeline.signing import generate_signing_key

    key_file = directory / "shared-signing-key.asc"
    if not key_file.exists():
        generate_signing_key(key_file, name="Bakehouse test key", email="test@bakehouse.invalid")
    return key_file
