"""Publish baked images and flavour files into a served directory, the way nodes read it.

This is the only code that merges SHA256SUMS, signs it, checks the signature as systemd will and
uploads. The CLI runs it against a directory (``DirectoryStore``), the portal against its S3 or
local artifact store; both pass in a ``lock`` that serialises writers of one prefix.

Layout (issue 5, shared/reference/sysupdate.md)::

    extensions/NAME/NAME-VER-ARCH.raw    every published version and arch of NAME
    extensions/NAME/SHA256SUMS           one line per image above, strict sysupdate format
    extensions/NAME/SHA256SUMS.gpg       detached signature of exactly those bytes
    flavours/ID/config.bu, config.ign, transfer files, sbom.spdx.json, import-pubring.gpg
    flavours/ID/SHA256SUMS, SHA256SUMS.gpg

(the CLI publishes one extension into the flat directory it is given: prefix ``""``).

From a node's point of view a publication is all or nothing: images go up first, each read back
and checked by the store, and only then are SHA256SUMS and its signature rewritten. An image that
is uploaded but not (yet) listed is invisible to sysupdate.

SHA256SUMS and SHA256SUMS.gpg are two objects, and no store (S3 least of all) replaces two objects
at once. So the new pair is first staged, complete and verified, under ``pending-publication/``
(the signature written last: a staged signature means "this pair is ready to switch"), then both
live objects are written back to back, then the staged pair is deleted (signature first). A writer
killed anywhere leaves either the old signed pair live, or a staged pair that the next writer of the
prefix, or a worker at start (``recover_pending_publications``), switches in before doing anything
else (``complete_pending_publication``). What remains: between the two live writes (one small PUT,
nothing else in between) a node may read a mismatched pair; it refuses it as unsigned and retries
later. A writer killed exactly there leaves that mismatch until the next worker start or the next
publication to the prefix (a retried build), which complete the switch.

Several writers may add versions of one extension at the same time: the read-merge-sign-write of
its SHA256SUMS runs under ``lock(prefix)``.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from builds.pipeline.checksums import (
    SIGNATURE_FILE_NAME,
    SUMS_FILE_NAME,
    check_file_name,
    format_sums,
    parse_sums,
    sha256_file,
    update_sums,
)
from builds.pipeline.errors import PipelineError
from builds.pipeline.signing import GpgSigner, verify_like_systemd
from builds.pipeline.sysupdate import check_name, image_file_name

KEYRING_FILE_NAME = "import-pubring.gpg"
RESERVED_FLAVOUR_FILES = frozenset({SUMS_FILE_NAME, SIGNATURE_FILE_NAME, KEYRING_FILE_NAME})
PENDING_ROOT = "pending-publication/"
NOT_FOUND = "store.not-found"  # the code a store's get_bytes raises for a missing key
SHA256_MISMATCH = "store.sha256-mismatch"  # what a store read back is not what was meant
_FLAVOUR_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024
SMALL_UPLOADS_AT_ONCE = 4


class Stored(Protocol):
    """An object as the store reports it after a write or a stat."""

    @property
    def key(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def content_type(self) -> str: ...


class Store(Protocol):
    """Where published files go: keys are relative ``/``-separated paths; every put is read back
    and checked; ``get_bytes`` of a missing key raises a ``PipelineError`` coded ``store.not-found``,
    and so does ``copy`` of a missing source. ``copy`` checks what it wrote against ``sha256``
    (``store.sha256-mismatch``, the copy removed)."""

    def put_file(
        self, key: str, path: str | os.PathLike[str], *, content_type: str | None = None
    ) -> Stored: ...
    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> Stored: ...
    def put_many(self, items: Sequence[tuple[str, bytes]]) -> Sequence[Stored]: ...
    def copy(self, source_key: str, key: str, *, sha256: str) -> Stored: ...
    def get_bytes(self, key: str) -> bytes: ...
    def stat(self, key: str) -> Stored | None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def public_url(self, key: str) -> str: ...


# ``lock(prefix)``: held while the listing of ``prefix`` is read, merged, signed and switched.
Lock = Callable[[str], AbstractContextManager[object]]


def extension_prefix(name: str) -> str:
    """``extensions/NAME/``: the flat directory sysupdate's ``Path=`` points at."""
    return f"extensions/{check_name(name)}/"


def flavour_prefix(flavour_id: str) -> str:
    if not _FLAVOUR_ID_RE.match(flavour_id):
        raise PipelineError(
            "publish.invalid-flavour", f"flavour ID {flavour_id!r} is not a sha256 hex digest"
        )
    return f"flavours/{flavour_id}/"


def signed_listing_keys(key: str) -> tuple[str, str] | None:
    """(SHA256SUMS, SHA256SUMS.gpg) of the directory that lists ``key``; None for those two.

    Every file the portal publishes is listed in the signed SHA256SUMS of its own directory
    (an extension's images in ``extensions/NAME/``, everything else in ``flavours/ID/``), so a
    user who saves that pair beside a file can check it with ``gpg --verify`` and ``sha256sum -c``.
    """
    directory, _, name = key.rpartition("/")
    if name in (SUMS_FILE_NAME, SIGNATURE_FILE_NAME):
        return None
    prefix = f"{directory}/" if directory else ""
    return prefix + SUMS_FILE_NAME, prefix + SIGNATURE_FILE_NAME


@dataclass(frozen=True)
class ImageFile:
    """A baked image to publish; ``sha256`` is the bake's digest, which the store must confirm.

    ``stored_key``: where the same store already holds these bytes (the portal's image cache);
    the image is then copied inside the store, and uploaded from ``path`` only if that copy is
    gone or holds other bytes."""

    version: str
    arch: str
    path: Path
    sha256: str | None = None
    stored_key: str | None = None


@dataclass(frozen=True)
class ExtensionPublication:
    """What one ``publish_extension`` call left in the store."""

    name: str
    url: str  # the prefix's public URL, for a transfer file's Path=
    images: dict[str, Stored]  # file name -> object, the images of this call
    sums: Stored
    signature: Stored | None  # None only for an unsigned (CLI) publication
    listed: dict[str, str]  # every entry of SHA256SUMS after this call
    extra: dict[str, Stored]  # unlisted files written next to the images (the CLI's transfer files)

    @property
    def objects(self) -> list[Stored]:
        signature = [self.signature] if self.signature is not None else []
        return [*self.images.values(), self.sums, *signature, *self.extra.values()]


@dataclass(frozen=True)
class FlavourPublication:
    """What one ``publish_flavour`` call left in the store, by file name."""

    flavour_id: str
    url: str
    files: dict[str, Stored]  # including import-pubring.gpg, SHA256SUMS and its signature

    @property
    def objects(self) -> list[Stored]:
        return list(self.files.values())


def _missing(exc: PipelineError) -> bool:
    return exc.code == NOT_FOUND


def read_published_sums(store: Store, prefix: str) -> dict[str, str]:
    """The entries of ``PREFIX/SHA256SUMS``, or none when nothing is published there yet."""
    try:
        data = store.get_bytes(prefix + SUMS_FILE_NAME)
    except PipelineError as exc:
        if _missing(exc):
            return {}
        raise
    try:
        return parse_sums(data, source=prefix + SUMS_FILE_NAME)
    except PipelineError as exc:
        raise PipelineError(
            "publish.sums-invalid",
            f"the published {prefix}{SUMS_FILE_NAME} is damaged ({exc.message}); repair or delete it",
        ) from exc


def _conflict(key: str, published: str, new: str) -> PipelineError:
    return PipelineError(
        "publish.image-conflict",
        f"{key} is already published with sha256 {published}, but this build made {new}; published "
        "images never change (nodes may hold them): bump the version or delete the old image first",
    )


def pending_keys(prefix: str) -> tuple[str, str]:
    """Where the next SHA256SUMS of ``prefix`` and its signature are staged before the switch."""
    return PENDING_ROOT + prefix + SUMS_FILE_NAME, PENDING_ROOT + prefix + SIGNATURE_FILE_NAME


def _pair_verifies(sums: bytes, signature: bytes, keyring: bytes) -> bool:
    with tempfile.TemporaryDirectory(prefix="bh-publish-") as work:
        paths = [Path(work) / name for name in (SUMS_FILE_NAME, SIGNATURE_FILE_NAME, KEYRING_FILE_NAME)]
        for path, data in zip(paths, (sums, signature, keyring), strict=True):
            path.write_bytes(data)
        try:
            verify_like_systemd(*paths)
        except PipelineError:
            return False
    return True


def _switch_pending(store: Store, prefix: str, sums: bytes, signature: bytes) -> tuple[Stored, Stored]:
    """Make the staged pair live, then drop the staging record (its signature first)."""
    live_sums, live_signature = store.put_many(
        [(prefix + SUMS_FILE_NAME, sums), (prefix + SIGNATURE_FILE_NAME, signature)]
    )
    staged_sums, staged_signature = pending_keys(prefix)
    store.delete(staged_signature)
    store.delete(staged_sums)
    return live_sums, live_signature


def complete_pending_publication(store: Store, prefix: str, keyring: bytes) -> str | None:
    """Finish or undo a switch of ``prefix``'s SHA256SUMS that a killed writer left half done.

    Call it holding the lock of ``prefix``. A staged pair whose signature verifies is switched in
    ("completed"); a partial or unverifiable one is deleted ("discarded"): the live pair was not
    touched yet. Returns None when nothing was pending.
    """
    staged_sums_key, staged_signature_key = pending_keys(prefix)
    try:
        signature = store.get_bytes(staged_signature_key)
    except PipelineError as exc:
        if not _missing(exc):
            raise
        if store.stat(staged_sums_key) is not None:  # killed while staging: the live pair is the old one
            store.delete(staged_sums_key)
            return "discarded"
        return None
    try:
        sums = store.get_bytes(staged_sums_key)
    except PipelineError as exc:
        if not _missing(exc):
            raise
        sums = b""
    if sums and _pair_verifies(sums, signature, keyring):
        _switch_pending(store, prefix, sums, signature)
        return "completed"
    store.delete(staged_signature_key)
    store.delete(staged_sums_key)
    return "discarded"


def recover_pending_publications(store: Store, keyring: bytes, lock: Lock) -> dict[str, str]:
    """Complete every switch left pending in the store (a worker runs this at start)."""
    prefixes = sorted({key[len(PENDING_ROOT) :].rsplit("/", 1)[0] + "/" for key in store.list(PENDING_ROOT)})
    outcomes: dict[str, str] = {}
    for prefix in prefixes:
        if prefix == "/":  # a flat directory's own pair (the CLI's prefix "")
            prefix = ""
        with lock(prefix):
            outcome = complete_pending_publication(store, prefix, keyring)
        if outcome:
            outcomes[prefix] = outcome
    return outcomes


def _sign_and_switch_sums(
    store: Store, signer: GpgSigner, prefix: str, entries: Mapping[str, str]
) -> tuple[Stored, Stored]:
    """Write SHA256SUMS for ``entries``, sign it, check the signature as systemd will, stage the
    pair, then switch it in (see the module docstring). Call it holding the prefix's lock."""
    with tempfile.TemporaryDirectory(prefix="bh-publish-") as work:
        sums_path = Path(work) / SUMS_FILE_NAME
        sums_path.write_text(format_sums(entries), encoding="utf-8")
        signature_path = signer.sign_detached(sums_path, Path(work) / SIGNATURE_FILE_NAME)
        keyring = Path(work) / KEYRING_FILE_NAME
        keyring.write_bytes(signer.export_public_keyring())
        verify_like_systemd(sums_path, signature_path, keyring)
        staged_sums, staged_signature = pending_keys(prefix)
        store.put_file(staged_sums, sums_path)
        store.put_file(staged_signature, signature_path)  # from here on, the switch will happen
        return _switch_pending(store, prefix, sums_path.read_bytes(), signature_path.read_bytes())


def _place_image(store: Store, key: str, image: ImageFile, expected: str) -> Stored:
    """Write the image under ``key``, not yet listed: copied inside the store from ``stored_key``
    when it can be (no byte passes through this process), else uploaded from disk."""
    if image.stored_key is not None:
        try:
            return store.copy(image.stored_key, key, sha256=expected)
        except PipelineError as exc:
            if exc.code not in (NOT_FOUND, SHA256_MISMATCH):
                raise
            # The stored copy is gone (a lifecycle rule, an operator) or holds other bytes: the
            # file on disk is the one that was checked and verified.
    stored = store.put_file(key, image.path)
    if stored.sha256 != expected:
        store.delete(key)  # not listed, so no node can have fetched it
        raise PipelineError(
            "publish.image-changed",
            f"{image.path.name} has sha256 {stored.sha256} but was baked as {expected}; "
            "it changed on disk after the bake",
        )
    return stored


def refuse_unsigned_over_signed(store: Store, prefix: str) -> None:
    """Refuse an unsigned publication where a signed one is live."""
    # A new SHA256SUMS without a new signature would leave the old one stale: nodes that verify
    # would refuse every image in the directory.
    if store.stat(prefix + SIGNATURE_FILE_NAME) is not None:
        raise PipelineError(
            "bake.signature-required",
            f"{store.public_url(prefix)} holds a signed publication ({SIGNATURE_FILE_NAME}); sign this "
            "bake too (--sign-key) or bake into another directory",
        )


def publish_extension(
    store: Store,
    signer: GpgSigner | None,
    lock: Lock,
    name: str,
    images: Sequence[ImageFile],
    *,
    prefix: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> ExtensionPublication:
    """Publish ``images`` of extension ``name`` and re-sign its SHA256SUMS listing every version.

    ``prefix`` defaults to ``extensions/NAME/``. Re-publishing an image already listed with the
    same sha256 uploads nothing; an image listed with another sha256 is refused
    (``publish.image-conflict``). ``extra_files`` (transfer files) are written next to the images
    once the listing is live; they are not listed. Without a ``signer`` (the CLI's unsigned bakes)
    SHA256SUMS is written unsigned, which is refused where a signature is already published.
    """
    prefix = extension_prefix(name) if prefix is None else prefix
    for file_name in extra_files or {}:
        check_file_name(file_name)
    _check_signing(store, signer, prefix)
    uploaded = _place_images(store, prefix, name, images)
    return _list_images(store, signer, lock, prefix, name, uploaded, extra_files=extra_files)


def publish_extensions(
    store: Store,
    signer: GpgSigner,
    lock: Lock,
    extensions: Sequence[tuple[str, Sequence[ImageFile]]],
) -> list[ExtensionPublication]:
    """``publish_extension`` for several extensions (a build's), in the order given.

    Every image is placed first (unlisted, so invisible to nodes), then each listing is merged,
    signed and switched under its lock. An image refused or lost while placing leaves every
    listing as it was: a build publishes all its extensions or none of them.
    """
    prefixes = [extension_prefix(name) for name, _ in extensions]
    for prefix in prefixes:
        _check_signing(store, signer, prefix)
    placed = [
        _place_images(store, prefix, name, images)
        for prefix, (name, images) in zip(prefixes, extensions, strict=True)
    ]
    return [
        _list_images(store, signer, lock, prefix, name, uploaded)
        for prefix, (name, _), uploaded in zip(prefixes, extensions, placed, strict=True)
    ]


def _check_signing(store: Store, signer: GpgSigner | None, prefix: str) -> None:
    if signer is not None:
        signer.export_public_keyring()  # a bad key fails before anything is written
    else:
        refuse_unsigned_over_signed(store, prefix)


def _place_images(store: Store, prefix: str, name: str, images: Sequence[ImageFile]) -> dict[str, Stored]:
    """Write each image under ``prefix``, unlisted (so invisible to sysupdate), outside the lock:
    they are large. Each is read back and checked by the store."""
    if not images:
        raise PipelineError("publish.nothing", f"no image of {name} to publish")
    wanted = {image_file_name(name, image.version, image.arch): image for image in images}
    listed_before = read_published_sums(store, prefix)
    uploaded: dict[str, Stored] = {}
    for file_name, image in wanted.items():
        key = prefix + file_name
        expected = image.sha256 or sha256_file(image.path)
        published = listed_before.get(file_name)
        if published is not None:
            if published != expected:
                raise _conflict(key, published, expected)
            current = store.stat(key)
            if current is not None and current.sha256 == published:
                uploaded[file_name] = current  # listed and unchanged: nodes already have these bytes
                continue
        uploaded[file_name] = _place_image(store, key, image, expected)
    return uploaded


def _list_images(
    store: Store,
    signer: GpgSigner | None,
    lock: Lock,
    prefix: str,
    name: str,
    uploaded: Mapping[str, Stored],
    *,
    extra_files: Mapping[str, bytes] | None = None,
) -> ExtensionPublication:
    """Under the lock: merge the placed images with what others published meanwhile, sign and
    switch the listing; then write ``extra_files`` beside it."""
    keyring = signer.export_public_keyring() if signer is not None else None
    with lock(prefix):
        if keyring is not None:
            complete_pending_publication(store, prefix, keyring)
        listed = read_published_sums(store, prefix)
        for file_name, stored in uploaded.items():
            if file_name in listed and listed[file_name] != stored.sha256:
                raise _conflict(prefix + file_name, listed[file_name], stored.sha256)
            current = store.stat(stored.key)
            if current is None or current.sha256 != stored.sha256:
                # Another writer replaced the object between our upload and now.
                raise _conflict(stored.key, current.sha256 if current else "(nothing)", stored.sha256)
        # Never list a file that is not there (deleted by an operator, say).
        present = set(store.list(prefix))
        kept = {file_name: digest for file_name, digest in listed.items() if prefix + file_name in present}
        entries = update_sums(kept, {file_name: stored.sha256 for file_name, stored in uploaded.items()})
        signature: Stored | None = None
        if signer is not None:
            sums, signature = _sign_and_switch_sums(store, signer, prefix, entries)
        else:
            refuse_unsigned_over_signed(store, prefix)
            sums = store.put_bytes(prefix + SUMS_FILE_NAME, format_sums(entries).encode("utf-8"))

    extra = {
        file_name: store.put_bytes(prefix + file_name, data)
        for file_name, data in sorted((extra_files or {}).items())
    }
    return ExtensionPublication(
        name=name,
        url=store.public_url(prefix),
        images=dict(uploaded),
        sums=sums,
        signature=signature,
        listed=entries,
        extra=extra,
    )


def publish_flavour(
    store: Store,
    signer: GpgSigner,
    lock: Lock,
    flavour_id: str,
    files: Mapping[str, bytes],
    *,
    content_types: Mapping[str, str] | None = None,
    file_paths: Mapping[str, Path] | None = None,
) -> FlavourPublication:
    """Publish a flavour's files (``config.bu``, ``config.ign``, transfer files, the SBOM...).

    Adds the public keyring nodes need (``import-pubring.gpg``), then a signed SHA256SUMS over
    every file. Names are flat (no ``/``): the directory is served as is. ``file_paths`` are large
    files (a pre-baked disk image) streamed from disk, never read into memory; listed alike.
    """
    prefix = flavour_prefix(flavour_id)
    file_paths = file_paths or {}
    for file_name in [*files, *file_paths]:
        check_file_name(file_name)
        if file_name in RESERVED_FLAVOUR_FILES:
            raise PipelineError("publish.reserved-name", f"{file_name} is written by the publisher itself")
    content_types = content_types or {}
    keyring = signer.export_public_keyring()
    everything = {**files, KEYRING_FILE_NAME: keyring}
    stored: dict[str, Stored] = {}
    for file_name, path in sorted(file_paths.items()):
        stored[file_name] = store.put_file(
            prefix + file_name, path, content_type=content_types.get(file_name)
        )
    # Small files, a round trip or two each (write, read back): side by side, as no file
    # depends on another and none is listed until the signed SHA256SUMS below.
    with ThreadPoolExecutor(max_workers=SMALL_UPLOADS_AT_ONCE) as uploads:
        futures = {
            file_name: uploads.submit(
                store.put_bytes, prefix + file_name, data, content_type=content_types.get(file_name)
            )
            for file_name, data in sorted(everything.items())
        }
        for file_name, future in futures.items():
            stored[file_name] = future.result()
    with lock(prefix):
        complete_pending_publication(store, prefix, keyring)
        sums, signature = _sign_and_switch_sums(
            store, signer, prefix, {file_name: obj.sha256 for file_name, obj in stored.items()}
        )
    stored[SUMS_FILE_NAME] = sums
    stored[SIGNATURE_FILE_NAME] = signature
    return FlavourPublication(flavour_id=flavour_id, url=store.public_url(prefix), files=stored)


# --- a served directory on this machine (the CLI) ----------------------------------------------


@contextmanager
def atomic_file(target: Path, tmp_dir: Path, *, prefix: str = "tmp") -> Iterator[IO[bytes]]:
    """Write ``target`` through a temporary file in ``tmp_dir`` (same file system), synced and
    renamed into place: a reader sees the old file or the new one, never a partial one."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=tmp_dir, prefix=prefix, delete=False)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int
    sha256: str
    content_type: str = "application/octet-stream"


class DirectoryStore:
    """A ``Store`` over a local directory, as the CLI publishes into it.

    Writes go to a hidden temporary file in the directory and are renamed into place, so a reader
    (a web server serving the directory) sees the old file or the new one, never a partial one.
    Hidden names are never listed. ``lock`` takes an exclusive ``flock`` on the directory itself,
    so two CLI runs publishing into one directory queue instead of losing each other's lines.
    """

    def __init__(self, root: str | os.PathLike[str], *, public_base_url: str = "") -> None:
        self.root = Path(root).absolute()
        self.public_base_url = public_base_url

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        for part in parts:
            check_file_name(part)
        return self.root.joinpath(*parts)

    def _write(self, key: str, fill: Callable[[IO[bytes]], object]) -> StoredFile:
        target = self._path(key)
        with atomic_file(target, self.root, prefix=".bakehouse-") as handle:
            fill(handle)
        stored = self.stat(key)
        if stored is None:
            raise PipelineError(
                "store.write-lost", f"{target} vanished right after it was written", retryable=True
            )
        return stored

    def put_file(
        self, key: str, path: str | os.PathLike[str], *, content_type: str | None = None
    ) -> StoredFile:
        def copy(target: IO[bytes]) -> None:
            with open(path, "rb") as source:
                while chunk := source.read(_CHUNK):
                    target.write(chunk)

        return self._write(key, copy)

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> StoredFile:
        return self._write(key, lambda target: target.write(data))

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> list[StoredFile]:
        return [self.put_bytes(key, data) for key, data in items]

    def copy(self, source_key: str, key: str, *, sha256: str) -> StoredFile:
        source = self._path(source_key)
        if not source.is_file():
            raise PipelineError(NOT_FOUND, f"{source} does not exist")
        stored = self.put_file(key, source)
        if stored.sha256 != sha256:
            self.delete(key)
            raise PipelineError(SHA256_MISMATCH, f"{source} has sha256 {stored.sha256}, not {sha256}")
        return stored

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise PipelineError(NOT_FOUND, f"{self.root / key} does not exist") from None

    def stat(self, key: str) -> StoredFile | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return StoredFile(key, path.stat().st_size, sha256_file(path))

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys: list[str] = []
        for directory, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            relative = Path(directory).relative_to(self.root)
            keys.extend(
                key
                for name in filenames
                if not name.startswith(".") and (key := (relative / name).as_posix()).startswith(prefix)
            )
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Drop directories the key needed (pending-publication/), so the served tree stays flat.
        for parent in path.parents:
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def public_url(self, key: str) -> str:
        return (self.public_base_url or self.root.as_uri() + "/") + key

    @contextmanager
    def lock(self, prefix: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)
