"""A publisher SIGKILLed between any two writes never leaves nodes an unsigned listing for long.

Each case runs the real publisher in a child process that kills itself right after writing one
chosen object, then looks at the store as a node would (SHA256SUMS, its signature, the listed
images), runs what a restarted worker runs, and publishes again as a retried build would.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from builds.adapters.store import ArtifactNotFound, ArtifactStore, LocalArtifactStore, S3ArtifactStore
from builds.pipeline.checksums import parse_sums
from builds.pipeline.errors import PipelineError
from builds.pipeline.signing import GpgSigner, generate_signing_key
from builds.publication import (
    PENDING_ROOT,
    ImageFile,
    flavour_prefix,
    publish_extension,
    publish_flavour,
    recover_pending_publications,
)
from tests.builds.build_support import verify_signature
from tests.builds.s3_server import S3Endpoint, moto_s3_server

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

PUBLIC = "https://sysext.example.com/"
PREFIX = "extensions/hello/"
FLAVOUR_ID = hashlib.sha256(b"a killed flavour").hexdigest()
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("key") / "signing-key.asc"
    generate_signing_key(key, name="Bakehouse test", email="test@example.com")
    return key


@pytest.fixture(scope="module")
def signer(key_file: Path) -> Iterator[GpgSigner]:
    with GpgSigner(key_file) as gpg:
        yield gpg


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def store_and_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ArtifactStore, dict]:
    if request.param == "local":
        root = tmp_path / "artifacts"
        return LocalArtifactStore(root, public_base_url=PUBLIC), {"local": str(root)}
    s3: S3Endpoint = request.getfixturevalue("s3")
    bucket = s3.new_bucket()
    store = S3ArtifactStore(bucket, public_base_url=PUBLIC, endpoint_url=s3.url, session=s3.session())
    return store, {"s3": s3.url, "bucket": bucket}


def image(tmp_path: Path, version: str) -> ImageFile:
    path = tmp_path / f"hello-{version}-x86-64.raw"
    path.write_bytes(f"squashfs of hello {version}".encode())
    return ImageFile(version, "x86-64", path)


def run_killed_publisher(spec: dict) -> None:
    """Run the publisher in a child on this test's database; it must die by SIGKILL."""
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "BAKEHOUSE_VAR_DIR": str(settings.VAR_DIR),
    }
    child = subprocess.run(
        [sys.executable, "-m", "tests.builds.publish_child", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]


def node_view(store: ArtifactStore, prefix: str, keyring: bytes) -> dict[str, str] | None:
    """What sysupdate accepts: None when nothing is published, else the verified listing."""
    try:
        sums = store.get_bytes(prefix + "SHA256SUMS")
    except ArtifactNotFound:
        assert not store.exists(prefix + "SHA256SUMS.gpg")
        return None
    verify_signature(sums, store.get_bytes(prefix + "SHA256SUMS.gpg"), keyring)
    entries = parse_sums(sums)
    for file_name, digest in entries.items():
        assert hashlib.sha256(store.get_bytes(prefix + file_name)).hexdigest() == digest, file_name
    return entries


KILL_POINTS = [
    # (the last object written before the kill, listing right after the kill, after recovery)
    (PREFIX + "hello-v2-x86-64.raw", "old", "old"),
    (PENDING_ROOT + PREFIX + "SHA256SUMS", "old", "old"),
    (PENDING_ROOT + PREFIX + "SHA256SUMS.gpg", "old", "new"),
    (PREFIX + "SHA256SUMS", "mismatch", "new"),
    (PREFIX + "SHA256SUMS.gpg", "new", "new"),
]


@pytest.mark.parametrize(("kill_after", "right_after", "recovered"), KILL_POINTS)
def test_a_publisher_killed_between_writes_leaves_a_signed_listing_or_a_pending_switch(
    store_and_spec: tuple[ArtifactStore, dict],
    key_file: Path,
    signer: GpgSigner,
    tmp_path: Path,
    kill_after: str,
    right_after: str,
    recovered: str,
) -> None:
    store, store_spec = store_and_spec
    keyring = signer.export_public_keyring()
    publish_extension(store, signer, "hello", [image(tmp_path, "v1")])
    old = {"hello-v1-x86-64.raw"}
    new = old | {"hello-v2-x86-64.raw"}
    v2 = image(tmp_path, "v2")

    run_killed_publisher(
        {
            "store": store_spec,
            "key": str(key_file),
            "kind": "extension",
            "name": "hello",
            "version": "v2",
            "arch": "x86-64",
            "image": str(v2.path),
            "kill_after": kill_after,
        }
    )

    # What a node reads right after the kill.
    if right_after == "mismatch":
        # The one span left: between the two live writes. The staged pair is complete, so it
        # is switched in by whoever comes next; until then a node refuses the pair, never
        # accepts an unsigned list.
        with pytest.raises(PipelineError) as refused:
            node_view(store, PREFIX, keyring)
        assert refused.value.code == "sign.verify-failed"
        assert store.exists(PENDING_ROOT + PREFIX + "SHA256SUMS.gpg")
    else:
        assert set(node_view(store, PREFIX, keyring) or {}) == (old if right_after == "old" else new)

    # A worker starting up completes (or undoes) what the killed one left.
    recover_pending_publications(store, keyring)
    assert set(node_view(store, PREFIX, keyring) or {}) == (old if recovered == "old" else new)
    assert store.list(PENDING_ROOT) == []

    # The retried build publishes again and ends with every version listed and signed.
    publish_extension(store, signer, "hello", [v2])
    publish_extension(store, signer, "hello", [image(tmp_path, "v3")])
    assert set(node_view(store, PREFIX, keyring) or {}) == new | {"hello-v3-x86-64.raw"}
    assert store.list(PENDING_ROOT) == []


def test_a_flavour_listing_left_unsigned_by_a_kill_is_repaired_at_worker_start(
    store_and_spec: tuple[ArtifactStore, dict], key_file: Path, signer: GpgSigner, tmp_path: Path
) -> None:
    store, store_spec = store_and_spec
    keyring = signer.export_public_keyring()
    prefix = flavour_prefix(FLAVOUR_ID)
    publish_flavour(store, signer, FLAVOUR_ID, {"config.bu": b"variant: flatcar\n"})
    run_killed_publisher(
        {
            "store": store_spec,
            "key": str(key_file),
            "kind": "flavour",
            "name": FLAVOUR_ID,
            "config": "variant: flatcar\nversion: 1.0.0\n",
            "kill_after": prefix + "SHA256SUMS",
        }
    )
    with pytest.raises(PipelineError) as refused:
        node_view(store, prefix, keyring)
    assert refused.value.code == "sign.verify-failed"

    assert recover_pending_publications(store, keyring) == {prefix: "completed"}
    assert set(node_view(store, prefix, keyring) or {}) == {"config.bu", "import-pubring.gpg"}
    assert store.get_bytes(prefix + "config.bu") == b"variant: flatcar\nversion: 1.0.0\n"
    assert store.list(PENDING_ROOT) == []
