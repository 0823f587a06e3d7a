"""Publishing into the layout nodes read: signed SHA256SUMS listing every version, all or nothing."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection

from builds.adapters.store import ArtifactStore, ArtifactStoreError, LocalArtifactStore, S3ArtifactStore
from builds.pipeline.checksums import parse_sums
from builds.pipeline.errors import PipelineError
from builds.pipeline.signing import GpgSigner, generate_signing_key, verify_like_systemd
from builds.publication import (
    ImageFile,
    SbomComponent,
    SbomSource,
    publish_extension,
    publish_extensions,
    publish_flavour,
    render_sbom,
)
from tests.builds.s3_server import S3Endpoint, moto_s3_server

PUBLIC = "https://sysext.example.com/"
FLAVOUR_ID = hashlib.sha256(b"a flavour").hexdigest()


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgSigner]:
    key = tmp_path_factory.mktemp("key") / "signing-key.asc"
    generate_signing_key(key, name="Bakehouse test", email="test@example.com")
    with GpgSigner(key) as gpg:
        yield gpg


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    s3: S3Endpoint = request.getfixturevalue("s3")
    return S3ArtifactStore(s3.new_bucket(), public_base_url=PUBLIC, endpoint_url=s3.url, session=s3.session())


def image(tmp_path: Path, name: str, version: str, arch: str, payload: bytes | None = None) -> ImageFile:
    path = tmp_path / f"{name}-{version}-{arch}.raw"
    path.write_bytes(payload if payload is not None else f"squashfs of {name} {version} {arch}".encode())
    return ImageFile(
        version=version, arch=arch, path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )


def assert_served_directory_is_valid(
    store: ArtifactStore, prefix: str, signer: GpgSigner, tmp_path: Path
) -> dict:
    """What a node checks: the signature over SHA256SUMS, then each listed file's bytes."""
    sums = store.get_bytes(prefix + "SHA256SUMS")
    (tmp_path / "SHA256SUMS").write_bytes(sums)
    (tmp_path / "SHA256SUMS.gpg").write_bytes(store.get_bytes(prefix + "SHA256SUMS.gpg"))
    (tmp_path / "pubring.gpg").write_bytes(signer.export_public_keyring())
    verify_like_systemd(tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg", tmp_path / "pubring.gpg")
    entries = parse_sums(sums)
    for file_name, digest in entries.items():
        assert hashlib.sha256(store.get_bytes(prefix + file_name)).hexdigest() == digest, file_name
    return entries


@pytest.mark.django_db
def test_each_version_is_added_to_one_signed_listing(
    store: ArtifactStore, signer: GpgSigner, tmp_path: Path
) -> None:
    first = publish_extension(store, signer, "wasmtime", [image(tmp_path, "wasmtime", "30.0.2", "x86-64")])
    assert first.url == PUBLIC + "extensions/wasmtime/"
    assert list(first.listed) == ["wasmtime-30.0.2-x86-64.raw"]
    publish_extension(
        store,
        signer,
        "wasmtime",
        [image(tmp_path, "wasmtime", "31.0.0", "x86-64"), image(tmp_path, "wasmtime", "31.0.0", "arm64")],
    )
    last = publish_extension(store, signer, "wasmtime", [image(tmp_path, "wasmtime", "31.0.1", "x86-64")])

    entries = assert_served_directory_is_valid(store, "extensions/wasmtime/", signer, tmp_path)
    assert sorted(entries) == [
        "wasmtime-30.0.2-x86-64.raw",
        "wasmtime-31.0.0-arm64.raw",
        "wasmtime-31.0.0-x86-64.raw",
        "wasmtime-31.0.1-x86-64.raw",
    ]
    assert entries == last.listed
    assert last.sums.sha256 == hashlib.sha256(store.get_bytes("extensions/wasmtime/SHA256SUMS")).hexdigest()
    # Strict sysupdate format: lowercase hex, one space, '*' or space, name, newline at the end.
    text = store.get_bytes("extensions/wasmtime/SHA256SUMS").decode()
    assert text.endswith("\n") and "\n\n" not in text
    assert all(len(line.split("  ")[0]) == 64 for line in text.splitlines())
    assert {o.key for o in last.objects} == {
        "extensions/wasmtime/wasmtime-31.0.1-x86-64.raw",
        "extensions/wasmtime/SHA256SUMS",
        "extensions/wasmtime/SHA256SUMS.gpg",
    }


@pytest.mark.django_db
def test_republishing_the_same_image_is_a_no_op_and_other_bytes_are_refused(
    signer: GpgSigner, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    publish_extension(store, signer, "k3s", [image(tmp_path, "k3s", "v1.32.1+k3s1", "x86-64")])
    key = "extensions/k3s/k3s-v1.32.1+k3s1-x86-64.raw"
    inode = store.path(key).stat().st_ino
    again = publish_extension(store, signer, "k3s", [image(tmp_path, "k3s", "v1.32.1+k3s1", "x86-64")])
    assert store.path(key).stat().st_ino == inode  # not uploaded again
    assert list(again.listed) == ["k3s-v1.32.1+k3s1-x86-64.raw"]

    sums_before = store.get_bytes("extensions/k3s/SHA256SUMS")
    with pytest.raises(PipelineError) as excinfo:
        publish_extension(store, signer, "k3s", [image(tmp_path, "k3s", "v1.32.1+k3s1", "x86-64", b"other")])
    assert excinfo.value.code == "publish.image-conflict"
    assert store.get_bytes("extensions/k3s/SHA256SUMS") == sums_before
    assert store.get_bytes(key) != b"other"


@pytest.mark.django_db
def test_an_image_the_store_holds_is_copied_there_not_uploaded(
    store: ArtifactStore, signer: GpgSigner, tmp_path: Path
) -> None:
    baked = image(tmp_path, "wasmtime", "31.0.0", "x86-64", payload=b"squashfs bytes " * 1000)
    cached = store.put_file("images/c0ffee/wasmtime-31.0.0-x86-64.raw", baked.path)
    baked.path.unlink()  # nothing on disk to upload: the bytes can only come from the copy
    publish_extension(store, signer, "wasmtime", [replace(baked, stored_key=cached.key)])
    listed = assert_served_directory_is_valid(store, "extensions/wasmtime/", signer, tmp_path)
    assert listed == {"wasmtime-31.0.0-x86-64.raw": cached.sha256}


@pytest.mark.django_db
def test_a_stored_copy_that_is_gone_or_changed_is_replaced_by_the_file_on_disk(
    store: ArtifactStore, signer: GpgSigner, tmp_path: Path
) -> None:
    gone = image(tmp_path, "spin", "3.1.0", "x86-64")
    changed = image(tmp_path, "spin", "3.2.0", "x86-64")
    store.put_bytes("images/beef/spin-3.2.0-x86-64.raw", b"bit rot in the image cache")
    publish_extension(
        store,
        signer,
        "spin",
        [
            replace(gone, stored_key="images/dead/spin-3.1.0-x86-64.raw"),
            replace(changed, stored_key="images/beef/spin-3.2.0-x86-64.raw"),
        ],
    )
    listed = assert_served_directory_is_valid(store, "extensions/spin/", signer, tmp_path)
    assert listed == {"spin-3.1.0-x86-64.raw": gone.sha256, "spin-3.2.0-x86-64.raw": changed.sha256}


@pytest.mark.django_db
def test_a_builds_extensions_are_each_listed_and_signed(
    store: ArtifactStore, signer: GpgSigner, tmp_path: Path
) -> None:
    images = {name: image(tmp_path, name, "1.0.0", "x86-64") for name in ("docker", "k3s", "spin")}
    publications = publish_extensions(store, signer, [(name, [baked]) for name, baked in images.items()])
    assert [publication.name for publication in publications] == ["docker", "k3s", "spin"]
    for name, baked in images.items():
        listed = assert_served_directory_is_valid(store, f"extensions/{name}/", signer, tmp_path)
        assert listed == {f"{name}-1.0.0-x86-64.raw": baked.sha256}


@pytest.mark.django_db
def test_one_refused_image_leaves_every_listing_of_the_build_as_it_was(
    store: ArtifactStore, signer: GpgSigner, tmp_path: Path
) -> None:
    publish_extension(store, signer, "k3s", [image(tmp_path, "k3s", "1.0.0", "x86-64")])
    k3s_before = store.get_bytes("extensions/k3s/SHA256SUMS")
    (tmp_path / "other").mkdir()
    clash = image(tmp_path / "other", "k3s", "1.0.0", "x86-64", payload=b"other bytes, same name")
    with pytest.raises(PipelineError) as caught:
        publish_extensions(
            store, signer, [("docker", [image(tmp_path, "docker", "1.0.0", "x86-64")]), ("k3s", [clash])]
        )
    assert caught.value.code == "publish.image-conflict"
    assert store.get_bytes("extensions/k3s/SHA256SUMS") == k3s_before
    assert not store.exists("extensions/docker/SHA256SUMS")  # placed, never listed: invisible


class CorruptingImageStore(LocalArtifactStore):
    """A disk that returns other bytes for images than those written."""

    def _before_verify(self, key: str) -> None:
        if key.endswith(".raw"):
            self.path(key).write_bytes(b"bit rot")


@pytest.mark.django_db
def test_an_image_that_does_not_read_back_is_never_listed(signer: GpgSigner, tmp_path: Path) -> None:
    good = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    publish_extension(good, signer, "spin", [image(tmp_path, "spin", "3.1.0", "x86-64")])
    sums_before = good.get_bytes("extensions/spin/SHA256SUMS")
    bad = CorruptingImageStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    with pytest.raises(ArtifactStoreError) as excinfo:
        publish_extension(bad, signer, "spin", [image(tmp_path, "spin", "3.2.0", "x86-64")])
    assert excinfo.value.code == "store.sha256-mismatch"
    assert good.get_bytes("extensions/spin/SHA256SUMS") == sums_before
    assert not good.exists("extensions/spin/spin-3.2.0-x86-64.raw")


@pytest.mark.django_db
def test_a_signing_failure_leaves_the_published_listing_untouched(signer: GpgSigner, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    publish_extension(store, signer, "docker", [image(tmp_path, "docker", "27.4.1", "x86-64")])
    sums_before = store.get_bytes("extensions/docker/SHA256SUMS")
    signature_before = store.get_bytes("extensions/docker/SHA256SUMS.gpg")
    protected = tmp_path / "protected.asc"
    generate_signing_key(protected, name="Protected", email="p@example.com", passphrase=b"right")
    with GpgSigner(protected, passphrase=b"wrong") as wrong, pytest.raises(PipelineError) as excinfo:
        publish_extension(store, wrong, "docker", [image(tmp_path, "docker", "28.0.0", "x86-64")])
    assert excinfo.value.code == "sign.bad-passphrase"
    assert store.get_bytes("extensions/docker/SHA256SUMS") == sums_before
    assert store.get_bytes("extensions/docker/SHA256SUMS.gpg") == signature_before


@pytest.mark.django_db
def test_a_deleted_image_drops_out_of_the_listing(signer: GpgSigner, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    publish_extension(store, signer, "cri-o", [image(tmp_path, "cri-o", "1.31.0", "x86-64")])
    store.delete("extensions/cri-o/cri-o-1.31.0-x86-64.raw")  # an operator removed a bad release
    result = publish_extension(store, signer, "cri-o", [image(tmp_path, "cri-o", "1.32.0", "x86-64")])
    assert list(result.listed) == ["cri-o-1.32.0-x86-64.raw"]
    assert_served_directory_is_valid(store, "extensions/cri-o/", signer, tmp_path)


@pytest.mark.django_db
def test_a_damaged_published_listing_stops_publication(signer: GpgSigner, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    store.put_bytes("extensions/wasmedge/SHA256SUMS", b"not a sums line\n")
    with pytest.raises(PipelineError) as excinfo:
        publish_extension(store, signer, "wasmedge", [image(tmp_path, "wasmedge", "0.14.1", "x86-64")])
    assert excinfo.value.code == "publish.sums-invalid"
    assert "extensions/wasmedge/SHA256SUMS" in excinfo.value.message


@pytest.mark.django_db(transaction=True)
def test_concurrent_publications_of_one_extension_lose_no_version(signer: GpgSigner, tmp_path: Path) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL): the SQLite test database is one in-memory connection")
    store = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    versions = [f"1.{n}.0" for n in range(6)]
    images = {v: image(tmp_path, "containerd", v, "x86-64") for v in versions}
    errors: list[BaseException] = []

    def publish(version: str) -> None:
        try:
            publish_extension(store, signer, "containerd", [images[version]])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=publish, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = assert_served_directory_is_valid(store, "extensions/containerd/", signer, tmp_path)
    assert sorted(entries) == sorted(f"containerd-{v}-x86-64.raw" for v in versions)


@pytest.mark.django_db
def test_flavour_files_keyring_and_signed_listing(
    store: ArtifactStore, signer: GpgSigner, tmp_path: Path
) -> None:
    files = {
        "config.bu": b"variant: flatcar\nversion: 1.1.0\n",
        "config.ign": b'{"ignition": {"version": "3.4.0"}}',
        "wasmtime.conf": b"[Transfer]\nVerify=yes\n",
    }
    result = publish_flavour(store, signer, FLAVOUR_ID, files)
    prefix = f"flavours/{FLAVOUR_ID}/"
    assert result.url == PUBLIC + prefix
    assert set(result.files) == {*files, "import-pubring.gpg", "SHA256SUMS", "SHA256SUMS.gpg"}
    # A node (or a person) checks with the keyring the flavour itself ships.
    (tmp_path / "SHA256SUMS").write_bytes(store.get_bytes(prefix + "SHA256SUMS"))
    (tmp_path / "SHA256SUMS.gpg").write_bytes(store.get_bytes(prefix + "SHA256SUMS.gpg"))
    (tmp_path / "import-pubring.gpg").write_bytes(store.get_bytes(prefix + "import-pubring.gpg"))
    verify_like_systemd(tmp_path / "SHA256SUMS", tmp_path / "SHA256SUMS.gpg", tmp_path / "import-pubring.gpg")
    entries = parse_sums(store.get_bytes(prefix + "SHA256SUMS"))
    assert set(entries) == {*files, "import-pubring.gpg"}
    for file_name, digest in entries.items():
        assert hashlib.sha256(store.get_bytes(prefix + file_name)).hexdigest() == digest
    assert store.stat(prefix + "config.ign").content_type == "application/json"  # type: ignore[union-attr]


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["SHA256SUMS", "import-pubring.gpg", "sub/config.bu", "../config.bu", "a b"])
def test_flavour_file_names_are_checked(signer: GpgSigner, tmp_path: Path, name: str) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    with pytest.raises(PipelineError):
        publish_flavour(store, signer, FLAVOUR_ID, {name: b"x"})
    assert store.list() == []
    with pytest.raises(PipelineError):
        publish_flavour(store, signer, "../../etc", {"config.bu": b"x"})


def test_sbom_is_spdx_23_with_versions_urls_and_digests() -> None:
    component = SbomComponent(
        name="wasmtime",
        version="31.0.0",
        arch="x86-64",
        file_name="wasmtime-31.0.0-x86-64.raw",
        sha256="a" * 64,
        download_url=PUBLIC + "extensions/wasmtime/wasmtime-31.0.0-x86-64.raw",
        homepage="https://wasmtime.dev",
        sources=(
            SbomSource(
                "release",
                "https://github.com/bytecodealliance/wasmtime/releases/download/v31.0.0/wasmtime-v31.0.0-x86_64-linux.tar.xz",
                "b" * 64,
            ),
        ),
    )
    created = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    data = render_sbom(
        flavour_id=FLAVOUR_ID,
        flavour_name="edge wasm",
        components=[component],
        created=created,
        document_namespace=PUBLIC + f"flavours/{FLAVOUR_ID}/sbom.spdx.json",
    )
    document = json.loads(data)
    assert document["spdxVersion"] == "SPDX-2.3"
    assert document["dataLicense"] == "CC0-1.0"
    assert document["creationInfo"]["created"] == "2025-03-01T12:00:00Z"
    by_id = {p["SPDXID"]: p for p in document["packages"]}
    image_package = next(p for p in by_id.values() if p["name"] == "wasmtime")
    assert image_package["versionInfo"] == "31.0.0"
    assert image_package["checksums"] == [{"algorithm": "SHA256", "checksumValue": "a" * 64}]
    upstream = next(p for p in by_id.values() if p["name"] == "wasmtime/release")
    assert upstream["downloadLocation"].endswith("wasmtime-v31.0.0-x86_64-linux.tar.xz")
    assert upstream["checksums"][0]["checksumValue"] == "b" * 64
    relations = {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"])
        for r in document["relationships"]
    }
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", image_package["SPDXID"]) in relations
    assert (image_package["SPDXID"], "GENERATED_FROM", upstream["SPDXID"]) in relations
    for spdx_id in by_id:
        assert all(c.isalnum() or c in ".-" for c in spdx_id.removeprefix("SPDXRef-"))
    # Same flavour, same bytes.
    assert data == render_sbom(
        flavour_id=FLAVOUR_ID,
        flavour_name="edge wasm",
        components=[component],
        created=created,
        document_namespace=PUBLIC + f"flavours/{FLAVOUR_ID}/sbom.spdx.json",
    )


@pytest.mark.django_db
def test_published_tree_is_served_under_artifacts_for_nodes(
    client, settings, signer: GpgSigner, tmp_path: Path
) -> None:
    settings.S3 = None
    settings.ARTIFACT_DIR = tmp_path / "served"
    settings.PUBLIC_BASE_URL = "http://testserver/artifacts/"
    from builds.adapters.store import get_artifact_store

    store = get_artifact_store()
    result = publish_extension(store, signer, "wasmtime", [image(tmp_path, "wasmtime", "31.0.0", "x86-64")])
    base = result.url.removeprefix("http://testserver")
    assert base == "/artifacts/extensions/wasmtime/"

    sums = client.get(base + "SHA256SUMS")
    assert sums.status_code == 200
    assert sums["Content-Type"].startswith("text/plain")
    sums_bytes = b"".join(sums.streaming_content)
    signature = client.get(base + "SHA256SUMS.gpg")
    assert signature["Content-Type"] == "application/pgp-signature"
    (tmp_path / "S").write_bytes(sums_bytes)
    (tmp_path / "S.gpg").write_bytes(b"".join(signature.streaming_content))
    (tmp_path / "k.gpg").write_bytes(signer.export_public_keyring())
    verify_like_systemd(tmp_path / "S", tmp_path / "S.gpg", tmp_path / "k.gpg")
    for file_name, digest in parse_sums(sums_bytes).items():
        response = client.get(base + file_name)
        assert response["Content-Type"] == "application/octet-stream"
        assert int(response["Content-Length"]) == len(body := b"".join(response.streaming_content))
        assert hashlib.sha256(body).hexdigest() == digest
    assert client.head(base + "SHA256SUMS").status_code == 200
    assert client.post(base + "SHA256SUMS").status_code == 405

    (tmp_path / "secret.txt").write_text("not for nodes")
    for hostile in (
        "/artifacts/../secret.txt",
        "/artifacts/%2e%2e/secret.txt",
        "/artifacts/extensions/..%2f..%2fsecret.txt",
        "/artifacts/.meta/extensions/wasmtime/SHA256SUMS.json",
        "/artifacts/extensions/wasmtime/",
        "/artifacts/extensions/wasmtime/nope.raw",
    ):
        response = client.get(hostile)
        assert response.status_code == 404, hostile
        assert b"not for nodes" not in response.content


def test_embedded_signing_key_is_made_once_private_and_reused(settings, tmp_path: Path) -> None:
    from builds.adapters.signing_key import embedded_key_file, get_signer

    settings.VAR_DIR = tmp_path / "var"
    settings.SIGNING_KEY_FILE = None
    settings.SIGNING_PASSPHRASE_FILE = None
    with get_signer() as first:
        fingerprint = first.fingerprint
        keyring = first.export_public_keyring()
    key_file = embedded_key_file()
    assert key_file.is_relative_to(tmp_path / "var")
    assert key_file.stat().st_mode & 0o777 == 0o600
    with get_signer() as second:
        assert second.fingerprint == fingerprint  # nodes keep trusting the same key
        assert second.export_public_keyring() == keyring


def test_configured_signing_key_is_used(settings, tmp_path: Path) -> None:
    from builds.adapters.signing_key import embedded_key_file, get_signer

    key = tmp_path / "operator.asc"
    fingerprint = generate_signing_key(key, name="Operator", email="ops@example.com")
    settings.VAR_DIR = tmp_path / "var"
    settings.SIGNING_KEY_FILE = key
    with get_signer() as signer:
        assert signer.fingerprint == fingerprint
    assert not embedded_key_file().exists()
