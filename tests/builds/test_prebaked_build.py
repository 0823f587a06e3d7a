"""A flavour that asks for a pre-baked image, built by a real worker: Flatcar's (test) image comes
from the fixture upstream behind the mirror map, signed by the key the installation trusts, and
the pre-baked image is published and listed in the flavour's signed SHA256SUMS.

Checked from the published file alone, as a user would: the GPT is unchanged, the partitions but
ROOT are byte for byte Flatcar's, and ROOT holds the published sysext image and its link.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.builds.build_support import check_published_extension, serve_extension
from tests.builds.catalog_fixtures import Cast
from tests.builds.test_end_to_end import (  # noqa: F401  (fixtures)
    Worker,
    api,
    bucket,
    cast,
    compose,
    finished,
    portal_side,
    pytestmark,
    queue_name,
    s3,
    start_worker,
    upstream_server,
    wait_for,
    worker_env,
)
from tests.flatcar_disk import (
    UPSTREAM_ROOT,
    VERSION,
    FlatcarRelease,
    debugfs,
    debugfs_cat,
    extract_partition,
    make_flatcar_release,
    partition_bytes,
    read_table,
    serve_release,
)
from tests.upstream import UpstreamServer


@pytest.fixture(scope="module")
def release(
    tmp_path_factory: pytest.TempPathFactory,
    upstream_server: UpstreamServer,  # noqa: F811
) -> FlatcarRelease:
    made = make_flatcar_release(tmp_path_factory.mktemp("flatcar"))
    serve_release(upstream_server, made)
    return made


@pytest.fixture(scope="module")
def prebake_worker(
    worker_env: dict[str, str],  # noqa: F811
    release: FlatcarRelease,
    upstream_server: UpstreamServer,  # noqa: F811
    queue_name: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    flatcar_mirror = f"{UPSTREAM_ROOT}={upstream_server.url('/flatcar/')}"
    env = {
        **worker_env,
        "UPSTREAM_MIRRORS": f"{worker_env['UPSTREAM_MIRRORS']} {flatcar_mirror}",
        # The test release is signed by a key of ours standing in for Flatcar's.
        "FLATCAR_IMAGE_SIGNING_KEY": str(release.public_key),
    }
    process = start_worker(env, queue_name, tmp_path_factory.mktemp("worker") / "worker.log")
    yield process
    process.stop()


def prebake_options(release: FlatcarRelease, **extra: Any) -> dict[str, Any]:
    return {
        "channel": "stable",
        "prebake": True,
        "flatcar_version": VERSION,
        "flatcar_image_sha256": release.sha256,
        **extra,
    }


def test_prebaked_image_is_published_signed_and_holds_the_extensions(
    cast: Cast,  # noqa: F811
    prebake_worker: Worker,
    portal_side: Any,  # noqa: F811
    bucket: str,  # noqa: F811
    upstream_server: UpstreamServer,  # noqa: F811
    release: FlatcarRelease,
    tmp_path: Path,
) -> None:
    serve_extension(upstream_server, "hello")
    builder = api(cast.teammate)
    flavour = compose(builder, "edge nodes", ["hello"], options=prebake_options(release))
    response = builder.post(f"/api/flavours/{flavour['id']}/builds/")
    assert response.status_code == 202, response.json()
    build = wait_for(builder, response.json()["id"], prebake_worker, finished)
    assert build["state"] == "succeeded", (build, prebake_worker.tail())
    assert [s["name"] for s in build["steps"]][-4:] == ["sign", "prebake", "publish", "notify"]

    def get(key: str) -> bytes:
        return bytes(portal_side.get_object(Bucket=bucket, Key=key)["Body"].read())

    prefix = f"flavours/{flavour['id']}/"
    keyring = get(prefix + "import-pubring.gpg")
    name = "flatcar_production_image-edge-nodes.bin.zst"
    entries = check_published_extension(get, prefix, keyring)  # every line matches, signature verifies
    assert name in entries
    artifacts = {a["name"]: a for a in build["artifacts"]}
    assert artifacts[name]["kind"] == "disk-image"

    compressed = tmp_path / name
    compressed.write_bytes(get(prefix + name))
    assert hashlib.sha256(compressed.read_bytes()).hexdigest() == entries[name]
    disk = tmp_path / "prebaked.bin"
    subprocess.run(["zstd", "-q", "-d", str(compressed), "-o", str(disk)], check=True)
    assert [(p["name"], p["uuid"], p["start"], p["size"]) for p in read_table(disk)["partitions"]] == [
        (p["name"], p["uuid"], p["start"], p["size"]) for p in read_table(release.disk)["partitions"]
    ]
    for label in ("EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM"):
        assert partition_bytes(disk, label) == partition_bytes(release.disk, label), label

    root = extract_partition(disk, "ROOT", tmp_path / "root.ext4")
    image_name = "hello-v1.0.0-x86-64.raw"
    published_image = get(f"extensions/hello/{image_name}")
    assert debugfs_cat(root, f"/opt/extensions/hello/{image_name}") == published_image
    assert f'"/opt/extensions/hello/{image_name}"' in debugfs(root, "stat /etc/extensions/hello.raw")
    assert debugfs_cat(root, "/etc/systemd/import-pubring.gpg") == keyring
    assert debugfs_cat(root, "/etc/sysupdate.hello.d/hello.conf") == get(prefix + "hello.conf")


def test_an_image_that_is_not_the_pinned_one_fails_the_build_with_its_code(
    cast: Cast,  # noqa: F811
    prebake_worker: Worker,
    portal_side: Any,  # noqa: F811
    upstream_server: UpstreamServer,  # noqa: F811
    release: FlatcarRelease,
) -> None:
    serve_extension(upstream_server, "hello")
    builder = api(cast.teammate)
    options = prebake_options(release, flatcar_image_sha256="0" * 64)
    flavour = compose(builder, "wrong pin", ["hello"], options=options)
    build_id = builder.post(f"/api/flavours/{flavour['id']}/builds/").json()["id"]
    build = wait_for(builder, build_id, prebake_worker, finished)
    assert build["state"] == "failed"
    assert build["error_code"] == "prebake.digest-mismatch", build
    assert not any(a["name"].endswith(".bin.zst") for a in build["artifacts"])
