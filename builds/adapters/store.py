"""Where published artifacts live: a local directory (the embedded default) or an S3 bucket.

Both stores answer the same small interface, ``ArtifactStore``. Every write is checked: after an
upload the store reads the object back and compares its sha256 with the bytes we meant to store
(S3-compatible servers and moto do not all validate checksums), deleting the object and raising
``store.sha256-mismatch`` when they differ. The sha256 also travels with the object (S3 metadata,
or a sidecar record in the local store), so ``stat`` can answer without reading the bytes.

Keys are relative, ``/``-separated paths (``extensions/wasmtime/SHA256SUMS``). Segments starting
with ``.`` are refused: they are reserved for the local store's bookkeeping and keep ``..`` out.
"""

from __future__ import annotations

import abc
import hashlib
import io
import json
import mimetypes
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

from builds.pipeline.errors import PipelineError
from builds.pipeline.publish import atomic_file

if TYPE_CHECKING:
    import boto3.session

_CHUNK = 1024 * 1024
_MAX_KEY_LENGTH = 1024
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_+,=@~-][A-Za-z0-9._+,=@~-]*$")
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Names of published files whose type mimetypes cannot guess.
_CONTENT_TYPES_BY_NAME = {
    "SHA256SUMS": "text/plain; charset=utf-8",
    "SHA256SUMS.gpg": "application/pgp-signature",
    "import-pubring.gpg": "application/pgp-keys",
}
_CONTENT_TYPES_BY_SUFFIX = {
    ".raw": DEFAULT_CONTENT_TYPE,
    ".bu": "application/yaml",
    ".ign": "application/json",
    ".json": "application/json",
    ".conf": "text/plain; charset=utf-8",
    ".gpg": "application/pgp-signature",
    ".asc": "application/pgp-signature",
}


class ArtifactStoreError(PipelineError):
    """A store operation failed; ``code`` is ``store.*``."""


class ArtifactNotFound(ArtifactStoreError):
    """No object under the requested key."""

    def __init__(self, key: str) -> None:
        super().__init__("store.not-found", f"no artifact is stored under {key!r}")
        self.key = key


@dataclass(frozen=True)
class StoredObject:
    """An object in the store as the store itself reports it."""

    key: str
    size: int
    sha256: str
    content_type: str = DEFAULT_CONTENT_TYPE


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key; raise ``store.invalid-key`` otherwise."""
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LENGTH:
        raise ArtifactStoreError("store.invalid-key", f"artifact key {key!r} is empty or too long")
    segments = key.split("/")
    if key.startswith("/") or not all(_SEGMENT_RE.match(segment) for segment in segments):
        raise ArtifactStoreError(
            "store.invalid-key",
            f"artifact key {key!r} must be a relative path of letters, digits and ._+,=@~- "
            "with no empty, '.' or '..' segments",
        )
    return key


def check_prefix(prefix: str) -> str:
    """A key prefix: empty, or a valid key optionally ending in ``/``."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def guess_content_type(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    if name in _CONTENT_TYPES_BY_NAME:
        return _CONTENT_TYPES_BY_NAME[name]
    suffix = os.path.splitext(name)[1].lower()
    if suffix in _CONTENT_TYPES_BY_SUFFIX:
        return _CONTENT_TYPES_BY_SUFFIX[suffix]
    return mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE


def _hash_stream(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore(abc.ABC):
    """Stores published artifacts under keys and tells nodes where to download them.

    ``public_url`` is stable and never expires: transfer files and Ignition configs embed it.
    """

    def __init__(self, *, public_base_url: str) -> None:
        if not public_base_url.endswith("/"):
            public_base_url += "/"
        self.public_base_url = public_base_url

    # --- writes: each one re-reads what it wrote and checks the sha256 --------------------------
    def put_file(
        self, key: str, path: str | os.PathLike[str], *, content_type: str | None = None
    ) -> StoredObject:
        """Upload the file at ``path`` under ``key``; return it as stored, sha256 verified."""
        check_key(key)
        content_type = content_type or guess_content_type(key)
        try:
            with open(path, "rb") as handle:
                expected, size = _hash_stream(handle)
        except OSError as exc:
            raise ArtifactStoreError("store.read-failed", f"cannot read {path}: {exc.strerror}") from exc
        self._write_file(key, Path(path), sha256=expected, size=size, content_type=content_type)
        return self._verify_written(key, expected, content_type)

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> StoredObject:
        """Store ``data`` under ``key``; return it as stored, sha256 verified."""
        check_key(key)
        content_type = content_type or guess_content_type(key)
        expected = hashlib.sha256(data).hexdigest()
        self._write_bytes(key, data, sha256=expected, content_type=content_type)
        return self._verify_written(key, expected, content_type)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredObject]:
        """Store several small objects back to back, then read each back and check it.

        Readers may see some of the new objects with some of the old ones until the last write
        lands; writing them all before any read-back keeps that span to the writes alone (the
        publisher uses it to switch SHA256SUMS and its signature).
        """
        planned = []
        for key, data in items:
            check_key(key)
            planned.append((key, data, hashlib.sha256(data).hexdigest(), guess_content_type(key)))
        for key, data, expected, content_type in planned:
            self._write_bytes(key, data, sha256=expected, content_type=content_type)
        return [
            self._verify_written(key, expected, content_type) for key, _, expected, content_type in planned
        ]

    def copy(self, source_key: str, key: str, *, sha256: str) -> StoredObject:
        """Store under ``key`` the object at ``source_key``, inside the store (on S3 no byte of it
        passes through this process); read back and checked against ``sha256``, the digest the
        caller expects, like every write. A missing source raises ``ArtifactNotFound``."""
        check_key(source_key)
        check_key(key)
        content_type = guess_content_type(key)
        self._copy_object(source_key, key, sha256=sha256, content_type=content_type)
        return self._verify_written(key, sha256, content_type)

    def _verify_written(self, key: str, expected: str, content_type: str) -> StoredObject:
        self._before_verify(key)
        try:
            with self.open(key) as stream:
                actual, size = _hash_stream(stream)
        except ArtifactNotFound:
            raise ArtifactStoreError(
                "store.write-lost", f"{key} vanished right after it was written", retryable=True
            ) from None
        if actual != expected:
            self.delete(key)
            raise ArtifactStoreError(
                "store.sha256-mismatch",
                f"{key} read back with sha256 {actual}, expected {expected}; the object was deleted",
                retryable=True,
            )
        return StoredObject(key=key, size=size, sha256=actual, content_type=content_type)

    def _before_verify(self, key: str) -> None:  # noqa: B027 - a hook, empty on purpose
        """Called between a write and its read-back; tests override it to corrupt the object."""

    @abc.abstractmethod
    def _write_file(self, key: str, path: Path, *, sha256: str, size: int, content_type: str) -> None: ...

    @abc.abstractmethod
    def _write_bytes(self, key: str, data: bytes, *, sha256: str, content_type: str) -> None: ...

    @abc.abstractmethod
    def _copy_object(self, source_key: str, key: str, *, sha256: str, content_type: str) -> None: ...

    # --- reads --------------------------------------------------------------------------------
    @abc.abstractmethod
    def stat(self, key: str) -> StoredObject | None:
        """The object under ``key`` (size, sha256 recorded at upload, content type), or None."""

    @abc.abstractmethod
    def open(self, key: str) -> IO[bytes]:
        """A binary stream of the object's bytes (close it); raises ``ArtifactNotFound``."""

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object under ``key``; nothing happens if there is none."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys of every object whose key starts with ``prefix``."""

    # --- URLs ---------------------------------------------------------------------------------
    def public_url(self, key: str) -> str:
        """The stable URL nodes download ``key`` from (a prefix ending in ``/`` is allowed)."""
        return self.public_base_url + quote(check_prefix(key), safe="/")

    def presigned_url(self, key: str, expires: int = 300) -> str | None:
        """A short-lived URL for people's downloads, or None when the store has none."""
        check_key(key)
        return None


class LocalArtifactStore(ArtifactStore):
    """Artifacts in a directory, served by the portal under ``/artifacts/``.

    Writes go to a temporary file in ``ROOT/.tmp`` and are renamed into place, so a reader sees
    the old object or the new one, never a partial file. The sha256 and content type of each
    object are kept in ``ROOT/.meta/KEY.json`` together with the size and mtime they describe; a
    record that no longer matches the file is recomputed.
    """

    def __init__(self, root: str | os.PathLike[str], *, public_base_url: str) -> None:
        super().__init__(public_base_url=public_base_url)
        self.root = Path(root).resolve()
        self._tmp = self.root / ".tmp"
        self._meta = self.root / ".meta"

    def path(self, key: str) -> Path:
        """The file holding ``key`` (which may not exist yet), always inside ``root``."""
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ArtifactStoreError("store.invalid-key", f"artifact key {key!r} leaves the store")
        return path

    def _meta_path(self, key: str) -> Path:
        return self._meta / (check_key(key) + ".json")

    @contextmanager
    def _atomic_target(self, target: Path) -> Iterator[IO[bytes]]:
        with atomic_file(target, self._tmp) as handle:
            yield handle

    def _write_record(self, key: str, sha256: str, content_type: str) -> None:
        stat = self.path(key).stat()
        record = {
            "sha256": sha256,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "content_type": content_type,
        }
        meta = self._meta_path(key)
        with self._atomic_target(meta) as handle:
            handle.write(json.dumps(record).encode())

    def _write_file(self, key: str, path: Path, *, sha256: str, size: int, content_type: str) -> None:
        try:
            with open(path, "rb") as source, self._atomic_target(self.path(key)) as target:
                while chunk := source.read(_CHUNK):
                    target.write(chunk)
        except OSError as exc:
            raise ArtifactStoreError("store.write-failed", f"cannot write {key}: {exc.strerror}") from exc
        self._write_record(key, sha256, content_type)

    def _write_bytes(self, key: str, data: bytes, *, sha256: str, content_type: str) -> None:
        try:
            with self._atomic_target(self.path(key)) as target:
                target.write(data)
        except OSError as exc:
            raise ArtifactStoreError("store.write-failed", f"cannot write {key}: {exc.strerror}") from exc
        self._write_record(key, sha256, content_type)

    def _copy_object(self, source_key: str, key: str, *, sha256: str, content_type: str) -> None:
        source = self.path(source_key)
        if not source.is_file():
            raise ArtifactNotFound(source_key)
        self._write_file(key, source, sha256=sha256, size=source.stat().st_size, content_type=content_type)

    def stat(self, key: str) -> StoredObject | None:
        path = self.path(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None
        try:
            record = json.loads(self._meta_path(key).read_text())
            if record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns:
                return StoredObject(key, stat.st_size, record["sha256"], record["content_type"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        # No record, or one about other bytes (the file was replaced behind our back).
        with open(path, "rb") as handle:
            sha256, size = _hash_stream(handle)
        return StoredObject(key, size, sha256, guess_content_type(key))

    def open(self, key: str) -> IO[bytes]:
        path = self.path(key)
        try:
            if not path.is_file():
                raise ArtifactNotFound(key)
            return open(path, "rb")  # the caller closes it
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys = []
        # Walk only the directory the prefix names (the whole store for "" or a bare name).
        start = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        for directory, dirnames, filenames in os.walk(start):
            # Bookkeeping (.tmp, .meta) and anything hidden is not an artifact.
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            relative = Path(directory).relative_to(self.root)
            for name in filenames:
                if name.startswith("."):
                    continue
                key = (relative / name).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)


class S3ArtifactStore(ArtifactStore):
    """Artifacts in an S3 bucket (AWS, SeaweedFS, Garage, moto...) through boto3.

    Credentials come from boto3's own chain (``AWS_ACCESS_KEY_ID``... or a role) unless a
    session is given. ``checksum_mode`` feeds botocore's ``request_checksum_calculation`` and
    ``response_checksum_validation``: ``when_required`` suits S3-compatible servers that reject
    the newer default checksums. Large files go up in parts (``multipart_threshold``).
    """

    SHA256_METADATA = "sha256"

    def __init__(
        self,
        bucket: str,
        *,
        public_base_url: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        checksum_mode: str = "when_required",
        session: boto3.session.Session | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunksize: int = 8 * 1024 * 1024,
        max_concurrency: int = 4,
        max_attempts: int = 5,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        super().__init__(public_base_url=public_base_url)
        self.bucket = bucket
        config = Config(
            region_name=region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            request_checksum_calculation=checksum_mode,
            response_checksum_validation=checksum_mode,
            # Self-hosted servers rarely have wildcard DNS for virtual-hosted buckets.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self._client: Any = (session or boto3.session.Session()).client(
            "s3", endpoint_url=endpoint_url or None, config=config
        )
        # Each thread of a multipart upload holds its part in memory: four 8 MiB parts at a time
        # keep a worker's memory flat whatever the image size, and still fill a 1 Gbit/s link.
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
            use_threads=True,
        )

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            reason = f"{error.get('Code', '?')} {error.get('Message', '')}".strip()
            raise ArtifactStoreError(
                "store.unavailable",
                f"S3 refused to {what} in bucket {self.bucket}: {reason}",
                retryable=True,
            ) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise ArtifactStoreError(
                "store.unavailable", f"cannot {what} in S3 bucket {self.bucket}: {exc}", retryable=True
            ) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (compose's one-shot setup, tests)."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
                raise ArtifactStoreError(
                    "store.unavailable", f"cannot reach S3 bucket {self.bucket}: {exc}", retryable=True
                ) from exc
        with self._errors("create the bucket"):
            self._client.create_bucket(Bucket=self.bucket)

    def _extra_args(self, sha256: str, content_type: str) -> dict[str, Any]:
        return {"ContentType": content_type, "Metadata": {self.SHA256_METADATA: sha256}}

    def _write_file(self, key: str, path: Path, *, sha256: str, size: int, content_type: str) -> None:
        with self._errors(f"upload {key}"):
            self._client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs=self._extra_args(sha256, content_type),
                Config=self._transfer,
            )

    def _write_bytes(self, key: str, data: bytes, *, sha256: str, content_type: str) -> None:
        with self._errors(f"upload {key}"):
            self._client.upload_fileobj(
                io.BytesIO(data),
                self.bucket,
                key,
                ExtraArgs=self._extra_args(sha256, content_type),
                Config=self._transfer,
            )

    def _copy_object(self, source_key: str, key: str, *, sha256: str, content_type: str) -> None:
        try:
            # The managed copy: one CopyObject, or part copies above multipart_threshold (a
            # single CopyObject stops at 5 GB). The metadata is ours, not the source's.
            self._client.copy(
                {"Bucket": self.bucket, "Key": source_key},
                self.bucket,
                key,
                ExtraArgs={"MetadataDirective": "REPLACE", **self._extra_args(sha256, content_type)},
                Config=self._transfer,
            )
        except Exception as exc:
            if self._is_missing(exc):
                raise ArtifactNotFound(source_key) from None
            with self._errors(f"copy {source_key} to {key}"):
                raise

    def _is_missing(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in {
            "404",
            "NoSuchKey",
            "NotFound",
        }

    def stat(self, key: str) -> StoredObject | None:
        check_key(key)
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is_missing(exc):
                return None
            with self._errors(f"read {key}"):
                raise
        sha256 = head.get("Metadata", {}).get(self.SHA256_METADATA, "")
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            # Put there by someone else: compute it rather than trust a missing or odd value.
            with self.open(key) as stream:
                sha256, _ = _hash_stream(stream)
        return StoredObject(
            key=key,
            size=int(head["ContentLength"]),
            sha256=sha256,
            content_type=head.get("ContentType") or guess_content_type(key),
        )

    def open(self, key: str) -> IO[bytes]:
        check_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is_missing(exc):
                raise ArtifactNotFound(key) from None
            with self._errors(f"read {key}"):
                raise
        body: IO[bytes] = response["Body"]
        return body

    def delete(self, key: str) -> None:
        check_key(key)
        with self._errors(f"delete {key}"):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys: list[str] = []
        with self._errors(f"list {prefix or 'the bucket'}"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def presigned_url(self, key: str, expires: int = 300) -> str | None:
        check_key(key)
        with self._errors(f"presign {key}"):
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
            )
        return url


_stores: dict[tuple[object, ...], ArtifactStore] = {}
_stores_lock = threading.Lock()


def get_artifact_store() -> ArtifactStore:
    """The store the settings name: S3 when ``S3_BUCKET`` is set, else the local directory.

    One instance per configuration and process (boto3 clients are costly to create and safe to
    share between threads).
    """
    from django.conf import settings

    s3 = settings.S3
    identity = (s3, str(settings.ARTIFACT_DIR), settings.PUBLIC_BASE_URL)
    with _stores_lock:
        store = _stores.get(identity)
        if store is None:
            if s3 is not None:
                store = S3ArtifactStore(
                    s3.bucket,
                    public_base_url=settings.PUBLIC_BASE_URL,
                    endpoint_url=s3.endpoint_url or None,
                    region=s3.region,
                    checksum_mode=s3.checksum_mode,
                )
            else:
                store = LocalArtifactStore(settings.ARTIFACT_DIR, public_base_url=settings.PUBLIC_BASE_URL)
            _stores[identity] = store
        return store
