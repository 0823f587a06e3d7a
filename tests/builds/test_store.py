"""ArtifactStore contract: the local directory and S3 (moto over HTTP) behave the same."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from builds.adapters.store import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreError,
    LocalArtifactStore,
    S3ArtifactStore,
    check_key,
)
from tests.builds.s3_server import S3Endpoint, moto_s3_server

PUBLIC = "https://sysext.example.com/pub/"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server() as endpoint:
        yield endpoint


def make_s3_store(
    s3: S3Endpoint, cls: type[S3ArtifactStore] = S3ArtifactStore, **kwargs: object
) -> S3ArtifactStore:
    return cls(
        s3.new_bucket(),
        public_base_url=PUBLIC,
        endpoint_url=s3.url,
        region=s3.region,
        session=s3.session(),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    return make_s3_store(request.getfixturevalue("s3"))


def test_put_file_reports_size_and_sha256_and_reads_back(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    source = tmp_path / "wasmtime-31.0.0-x86-64.raw"
    source.write_bytes(data)
    stored = store.put_file("extensions/wasmtime/wasmtime-31.0.0-x86-64.raw", source)
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(stored.key) == data
    assert store.stat(stored.key) == stored
    with store.open(stored.key) as stream:
        assert stream.read(10) == data[:10]


def test_put_bytes_overwrites_and_keeps_content_type(store: ArtifactStore) -> None:
    store.put_bytes("flavours/abc/config.ign", b"{}", content_type="application/json")
    stored = store.put_bytes("flavours/abc/config.ign", b'{"ignition": {}}', content_type="application/json")
    assert store.get_bytes("flavours/abc/config.ign") == b'{"ignition": {}}'
    stat = store.stat("flavours/abc/config.ign")
    assert stat is not None
    assert stat.sha256 == hashlib.sha256(b'{"ignition": {}}').hexdigest() == stored.sha256
    assert stat.content_type == "application/json"


def test_content_type_is_guessed_from_published_names(store: ArtifactStore) -> None:
    store.put_bytes("extensions/x/SHA256SUMS", b"")
    store.put_bytes("extensions/x/SHA256SUMS.gpg", b"sig")
    assert store.stat("extensions/x/SHA256SUMS").content_type.startswith("text/plain")  # type: ignore[union-attr]
    assert store.stat("extensions/x/SHA256SUMS.gpg").content_type == "application/pgp-signature"  # type: ignore[union-attr]


def test_copy_inside_the_store_is_read_back_and_checked(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    source = tmp_path / "image.raw"
    source.write_bytes(data)
    cached = store.put_file("images/0123abcd/spin-3.1.0-x86-64.raw", source)
    published = store.copy(cached.key, "extensions/spin/spin-3.1.0-x86-64.raw", sha256=cached.sha256)
    assert (published.size, published.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.get_bytes(published.key) == data
    assert store.stat(published.key) == published

    # A copy that is not what the caller expects is removed, never left to be listed.
    with pytest.raises(ArtifactStoreError) as caught:
        store.copy(cached.key, "extensions/spin/spin-3.2.0-x86-64.raw", sha256="0" * 64)
    assert caught.value.code == "store.sha256-mismatch"
    assert not store.exists("extensions/spin/spin-3.2.0-x86-64.raw")
    with pytest.raises(ArtifactNotFound):
        store.copy("images/gone/spin.raw", "extensions/spin/spin-3.3.0-x86-64.raw", sha256=cached.sha256)
    assert not store.exists("extensions/spin/spin-3.3.0-x86-64.raw")


def test_missing_objects(store: ArtifactStore) -> None:
    assert store.stat("extensions/none/SHA256SUMS") is None
    assert not store.exists("extensions/none/SHA256SUMS")
    with pytest.raises(ArtifactNotFound):
        store.open("extensions/none/SHA256SUMS")
    with pytest.raises(ArtifactNotFound):
        store.get_bytes("extensions/none/SHA256SUMS")
    store.delete("extensions/none/SHA256SUMS")  # deleting nothing is not an error


def test_delete_and_list(store: ArtifactStore) -> None:
    for key in (
        "extensions/a/a-1-x86-64.raw",
        "extensions/a/SHA256SUMS",
        "extensions/ab/x.raw",
        "flavours/f/config.bu",
    ):
        store.put_bytes(key, key.encode())
    assert store.list("extensions/a/") == ["extensions/a/SHA256SUMS", "extensions/a/a-1-x86-64.raw"]
    assert store.list("extensions/a") == [
        "extensions/a/SHA256SUMS",
        "extensions/a/a-1-x86-64.raw",
        "extensions/ab/x.raw",
    ]
    assert len(store.list()) == 4
    store.delete("extensions/a/SHA256SUMS")
    assert store.list("extensions/a/") == ["extensions/a/a-1-x86-64.raw"]
    assert not store.exists("extensions/a/SHA256SUMS")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "a/../../b",
        "a//b",
        "a/./b",
        "a/",
        ".meta/x.json",
        "a/.tmp/x",
        "a b",
        "a\\b",
        "a/\x00",
    ],
)
def test_hostile_keys_are_refused(store: ArtifactStore, key: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactStoreError) as excinfo:
        store.put_bytes(key, b"x")
    assert excinfo.value.code == "store.invalid-key"
    with pytest.raises(ArtifactStoreError):
        store.stat(key)
    if key not in ("", "a/"):  # the root and a directory are valid URL prefixes
        with pytest.raises(ArtifactStoreError):
            store.public_url(key)
    assert not (tmp_path / "outside").exists()


def test_public_url_is_stable_and_plain(store: ArtifactStore) -> None:
    assert store.public_url("extensions/wasmtime/SHA256SUMS") == PUBLIC + "extensions/wasmtime/SHA256SUMS"
    assert store.public_url("extensions/wasmtime/") == PUBLIC + "extensions/wasmtime/"
    assert store.public_url("extensions/k/k-v1.32.1+k3s1-x86-64.raw").endswith("k-v1.32.1%2Bk3s1-x86-64.raw")


class CorruptingLocalStore(LocalArtifactStore):
    """Stands for a disk that does not return what was written."""

    def _before_verify(self, key: str) -> None:
        self.path(key).write_bytes(b"not what was written")


class CorruptingS3Store(S3ArtifactStore):
    """Stands for a server that stores other bytes than those sent: a second client overwrites."""

    def __init__(self, *args: object, corrupt_with: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.corrupt_with = corrupt_with

    def _before_verify(self, key: str) -> None:
        self.corrupt_with.put_object(Bucket=self.bucket, Key=key, Body=b"not what was written")  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_sha256_mismatch_after_upload_deletes_and_raises(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    corrupting: ArtifactStore
    if backend == "local":
        corrupting = CorruptingLocalStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    else:
        s3: S3Endpoint = request.getfixturevalue("s3")
        corrupting = make_s3_store(s3, CorruptingS3Store, corrupt_with=s3.client())
    source = tmp_path / "image.raw"
    source.write_bytes(b"the real image")
    with pytest.raises(ArtifactStoreError) as excinfo:
        corrupting.put_file("extensions/x/x-1-x86-64.raw", source)
    assert excinfo.value.code == "store.sha256-mismatch"
    assert excinfo.value.retryable
    assert not corrupting.exists("extensions/x/x-1-x86-64.raw")
    with pytest.raises(ArtifactStoreError):
        corrupting.put_bytes("extensions/x/SHA256SUMS", b"sums\n")
    assert corrupting.list() == []


def test_s3_multipart_upload_of_a_large_file(s3: S3Endpoint, tmp_path: Path) -> None:
    store = make_s3_store(s3, multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024 + 17)
    source = tmp_path / "big.raw"
    source.write_bytes(data)
    stored = store.put_file("extensions/big/big-1-x86-64.raw", source)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    head = s3.client().head_object(Bucket=store.bucket, Key=stored.key)
    assert head["ETag"].strip('"').endswith("-3"), "expected a three-part multipart upload"
    assert head["Metadata"]["sha256"] == stored.sha256
    assert store.get_bytes(stored.key) == data


def test_s3_copy_of_a_large_object_goes_in_parts(s3: S3Endpoint, tmp_path: Path) -> None:
    store = make_s3_store(s3, multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024 + 17)
    source = tmp_path / "big.raw"
    source.write_bytes(data)
    cached = store.put_file("images/big/big-1-x86-64.raw", source)
    copied = store.copy(cached.key, "extensions/big/big-1-x86-64.raw", sha256=cached.sha256)
    head = s3.client().head_object(Bucket=store.bucket, Key=copied.key)
    assert head["ETag"].strip('"').endswith("-3"), "expected a three-part copy"
    assert head["Metadata"]["sha256"] == cached.sha256
    assert store.get_bytes(copied.key) == data


def test_s3_presigned_url_downloads_over_http(s3: S3Endpoint) -> None:
    store = make_s3_store(s3)
    store.put_bytes("flavours/f/config.bu", b"variant: flatcar\n")
    url = store.presigned_url("flavours/f/config.bu", expires=60)
    assert url is not None and "Signature" in url
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == b"variant: flatcar\n"


@pytest.mark.parametrize("mode", ["when_required", "when_supported"])
def test_s3_checksum_modes_both_work(s3: S3Endpoint, mode: str) -> None:
    store = make_s3_store(s3, checksum_mode=mode)
    assert store.put_bytes("a/b.raw", b"payload").sha256 == hashlib.sha256(b"payload").hexdigest()
    assert store.get_bytes("a/b.raw") == b"payload"


def test_s3_object_put_by_someone_else_gets_its_sha256_computed(s3: S3Endpoint) -> None:
    store = make_s3_store(s3)
    s3.client().put_object(Bucket=store.bucket, Key="extensions/x/x-1-arm64.raw", Body=b"foreign")
    stat = store.stat("extensions/x/x-1-arm64.raw")
    assert stat is not None and stat.sha256 == hashlib.sha256(b"foreign").hexdigest()


def test_s3_unreachable_server_is_a_retryable_store_error() -> None:
    import boto3

    session = boto3.session.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1")
    store = S3ArtifactStore(
        "nowhere", public_base_url=PUBLIC, endpoint_url="http://127.0.0.1:9", session=session, max_attempts=1
    )
    with pytest.raises(ArtifactStoreError) as excinfo:
        store.put_bytes("a/b", b"x")
    assert excinfo.value.code == "store.unavailable"
    assert excinfo.value.retryable


def test_s3_ensure_bucket_is_idempotent(s3: S3Endpoint) -> None:
    store = S3ArtifactStore("fresh-bucket", public_base_url=PUBLIC, endpoint_url=s3.url, session=s3.session())
    store.ensure_bucket()
    store.ensure_bucket()
    assert store.put_bytes("k", b"v").size == 1


def test_local_store_writes_atomically_and_hides_bookkeeping(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts", public_base_url=PUBLIC)
    store.put_bytes("extensions/a/SHA256SUMS", b"one\n")
    store.put_bytes("extensions/a/SHA256SUMS", b"two\n")
    assert list((tmp_path / "artifacts" / ".tmp").iterdir()) == []  # no temp file left behind
    assert store.list() == ["extensions/a/SHA256SUMS"]
    assert store.presigned_url("extensions/a/SHA256SUMS") is None
    # A file replaced behind the store's back: stat recomputes instead of trusting the record.
    store.path("extensions/a/SHA256SUMS").write_bytes(b"replaced by hand\n")
    stat = store.stat("extensions/a/SHA256SUMS")
    assert stat is not None and stat.sha256 == hashlib.sha256(b"replaced by hand\n").hexdigest()


def test_local_store_refuses_symlinks_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    (root / "extensions").mkdir(parents=True)
    (tmp_path / "secret").write_text("secret")
    (root / "extensions" / "link").symlink_to(tmp_path)
    store = LocalArtifactStore(root, public_base_url=PUBLIC)
    with pytest.raises(ArtifactStoreError):
        store.get_bytes("extensions/link/secret")


def test_check_key_accepts_published_names() -> None:
    for key in ("extensions/k3s/k3s-v1.32.1+k3s1-x86-64.raw", "flavours/" + "a" * 64 + "/sbom.spdx.json"):
        assert check_key(key) == key


def test_factory_follows_settings(
    settings, tmp_path: Path, s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    from builds.adapters.store import get_artifact_store
    from portal.config import S3Config

    settings.S3 = None
    settings.ARTIFACT_DIR = tmp_path / "a"
    local = get_artifact_store()
    assert isinstance(local, LocalArtifactStore) and local.root == (tmp_path / "a").resolve()
    assert get_artifact_store() is local

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    bucket = s3.new_bucket()
    settings.S3 = S3Config(
        bucket=bucket, endpoint_url=s3.url, region="us-east-1", checksum_mode="when_required"
    )
    remote = get_artifact_store()
    assert isinstance(remote, S3ArtifactStore) and remote.bucket == bucket
    remote.put_bytes("x/y", b"z")
    assert s3.client().get_object(Bucket=bucket, Key="x/y")["Body"].read() == b"z"
    assert remote.public_url("x/y") == settings.PUBLIC_BASE_URL + "x/y"
