"""A team extension built from source by a real worker: the build shows its own ``compile`` step,
the compiler's output streams into the log, the image is published and runs; a failing compile
fails the build with ``source.compile-failed`` and publishes nothing."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from catalog.models import Extension, ExtensionVersion, UpstreamDigest, VersionStatus
from tests.builds import test_end_to_end as end_to_end
from tests.builds.build_support import check_published_extension
from tests.builds.catalog_fixtures import UPSTREAM_HOST, Cast, fake_digest
from tests.builds.test_end_to_end import Worker, api, compose, finished, wait_for
from tests.pipeline.source_support import built_recipe_data, source_members
from tests.upstream import UpstreamServer, make_tar

pytestmark = end_to_end.pytestmark
# The end-to-end suite's fixtures: a real worker on Redis and PostgreSQL, moto's S3, the upstream.
bucket, cast, portal_side, queue_name, s3 = (
    end_to_end.bucket,
    end_to_end.cast,
    end_to_end.portal_side,
    end_to_end.queue_name,
    end_to_end.s3,
)
upstream_server, worker, worker_env = end_to_end.upstream_server, end_to_end.worker, end_to_end.worker_env


def built_extension(people: Cast, upstream: UpstreamServer, name: str, commands: list[str]) -> Extension:
    """Team blue's extension ``name`` built from a C source tarball, v1.0.0 approved and pinned."""
    archive = make_tar(source_members())
    path = f"/example/{name}/archive/refs/tags/v1.0.0.tar.gz"
    upstream.add_bytes(path, archive)
    data = built_recipe_data(name, commands=commands)
    data["sources"][0]["url"] = f"{UPSTREAM_HOST}example/{name}/archive/refs/tags/{{version}}.tar.gz"
    text = yaml.safe_dump(data)
    extension = Extension.objects.create(
        name=name,
        team=people.team,
        description=data["description"],
        arches=["x86-64"],
        recipe_text=text,
        recipe_digest=fake_digest("recipe", text),
    )
    version = ExtensionVersion.objects.create(
        extension=extension, version="v1.0.0", status=VersionStatus.APPROVED
    )
    UpstreamDigest.objects.create(
        version=version,
        arch="x86-64",
        source_id="source",
        url=f"{UPSTREAM_HOST}example/{name}/archive/refs/tags/v1.0.0.tar.gz",
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
    )
    return extension


def test_a_portal_build_compiles_from_source(
    cast: Cast, worker: Worker, portal_side: Any, bucket: str, upstream_server: UpstreamServer, tmp_path: Path
) -> None:
    built_extension(cast, upstream_server, "hello-src", ["make -f $SRC_DIR/Makefile"])
    builder = api(cast.teammate)
    flavour = compose(builder, "compiled", ["hello-src"])
    response = builder.post(f"/api/flavours/{flavour['id']}/builds/")
    assert response.status_code == 202, response.json()
    build = wait_for(builder, response.json()["id"], worker, finished)
    assert build["state"] == "succeeded", (build, worker.tail())
    # the verify step merged it with systemd-sysext (or says why it could not here)
    assert build["verification"] == "verified" or build["verification_reason"]
    steps = [s["name"] for s in build["steps"]]
    assert "compile" in steps and steps.index("bake") < steps.index("compile") < steps.index("verify")
    texts = [line["text"] for line in builder.get(f"/api/builds/{build['id']}/log").json()["lines"]]
    assert any(t.startswith("[hello-src v1.0.0] $ make -f $SRC_DIR/Makefile") for t in texts)
    assert any("built v1.0.0 for x86_64" in t for t in texts)

    def get(key: str) -> bytes:
        return bytes(portal_side.get_object(Bucket=bucket, Key=key)["Body"].read())

    keyring = get(f"flavours/{flavour['id']}/import-pubring.gpg")
    assert list(check_published_extension(get, "extensions/hello-src/", keyring)) == [
        "hello-src-v1.0.0-x86-64.raw"
    ]
    image = tmp_path / "image.raw"
    image.write_bytes(get("extensions/hello-src/hello-src-v1.0.0-x86-64.raw"))
    binary = tmp_path / "hello"
    binary.write_bytes(
        subprocess.run(["unsquashfs", "-cat", image, "usr/bin/hello"], capture_output=True).stdout
    )
    binary.chmod(0o755)
    assert (
        subprocess.run([binary, "node"], capture_output=True, text=True).stdout == "hello from source, node\n"
    )


def test_a_failing_compile_fails_the_portal_build_with_its_code(
    cast: Cast, worker: Worker, portal_side: Any, bucket: str, upstream_server: UpstreamServer
) -> None:
    built_extension(cast, upstream_server, "broken-src", ["echo 'broken.c:1: error: no' >&2; exit 1"])
    builder = api(cast.teammate)
    flavour = compose(builder, "broken", ["broken-src"])
    build = wait_for(
        builder, builder.post(f"/api/flavours/{flavour['id']}/builds/").json()["id"], worker, finished
    )
    assert build["state"] == "failed", (build, worker.tail())
    assert build["error_code"] == "source.compile-failed"
    assert "broken.c:1: error: no" in build["error_message"]
    assert [s["outcome"] for s in build["steps"] if s["name"] == "compile"] == ["failed"]
    listed = portal_side.list_objects_v2(Bucket=bucket, Prefix="extensions/broken-src/")
    assert listed.get("KeyCount", 0) == 0


@pytest.fixture(autouse=True)
def _x86_only() -> None:
    from builds.pipeline.verify import host_arch

    if host_arch() != "x86-64":
        pytest.skip("the test project is built for x86-64")
