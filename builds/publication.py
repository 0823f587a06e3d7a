"""Publishing baked images and flavour files into the artifact store, the way nodes read them.

Layout (issue 5, shared/reference/sysupdate.md)::

    extensions/NAME/NAME-VER-ARCH.raw    every published version and arch of NAME
    extensions/NAME/SHA256SUMS           one line per image above, strict sysupdate format
    extensions/NAME/SHA256SUMS.gpg       detached signature of exactly those bytes
    flavours/ID/config.bu, config.ign, transfer files, sbom.spdx.json, import-pubring.gpg
    flavours/ID/SHA256SUMS, SHA256SUMS.gpg

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

Several workers may add versions of one extension at the same time. The read-merge-sign-write of
its SHA256SUMS runs under ``publication_lock``: a PostgreSQL advisory lock keyed by the prefix
(held until the surrounding transaction ends), or on SQLite the database write lock that
``BEGIN IMMEDIATE`` takes (settings set ``transaction_mode``). Both work across processes and, for
PostgreSQL, across hosts; no extra table or Redis key can be left behind by a crashed worker.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from builds.adapters.store import ArtifactNotFound, ArtifactStore, StoredObject
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
SBOM_FILE_NAME = "sbom.spdx.json"
RESERVED_FLAVOUR_FILES = frozenset({SUMS_FILE_NAME, SIGNATURE_FILE_NAME, KEYRING_FILE_NAME})
_FLAVOUR_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def extension_prefix(name: str) -> str:
    """``extensions/NAME/``: the flat directory sysupdate's ``Path=`` points at."""
    return f"extensions/{check_name(name)}/"


def flavour_prefix(flavour_id: str) -> str:
    if not _FLAVOUR_ID_RE.match(flavour_id):
        raise PipelineError(
            "publish.invalid-flavour", f"flavour ID {flavour_id!r} is not a sha256 hex digest"
        )
    return f"flavours/{flavour_id}/"


@contextmanager
def publication_lock(prefix: str) -> Iterator[None]:
    """Serialise writers of one served directory (see the module docstring)."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            lock_id = int.from_bytes(hashlib.sha256(prefix.encode()).digest()[:8], "big", signed=True)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])
        elif connection.vendor != "sqlite":  # SQLite: BEGIN IMMEDIATE already holds the write lock
            raise ImproperlyConfigured(f"publication needs PostgreSQL or SQLite, not {connection.vendor}")
        yield


@dataclass(frozen=True)
class ImageFile:
    """A baked image to publish; ``sha256`` is the bake's digest, which the store must confirm."""

    version: str
    arch: str
    path: Path
    sha256: str | None = None


@dataclass(frozen=True)
class ExtensionPublication:
    """What one ``publish_extension`` call left in the store."""

    name: str
    url: str  # the prefix's public URL, for a transfer file's Path=
    images: dict[str, StoredObject]  # file name -> object, the images of this call
    sums: StoredObject
    signature: StoredObject
    listed: dict[str, str]  # every entry of SHA256SUMS after this call

    @property
    def objects(self) -> list[StoredObject]:
        return [*self.images.values(), self.sums, self.signature]


@dataclass(frozen=True)
class FlavourPublication:
    """What one ``publish_flavour`` call left in the store, by file name."""

    flavour_id: str
    url: str
    files: dict[str, StoredObject]  # including import-pubring.gpg, SHA256SUMS and its signature

    @property
    def objects(self) -> list[StoredObject]:
        return list(self.files.values())


def read_published_sums(store: ArtifactStore, prefix: str) -> dict[str, str]:
    """The entries of ``PREFIX/SHA256SUMS``, or none when nothing is published there yet."""
    try:
        data = store.get_bytes(prefix + SUMS_FILE_NAME)
    except ArtifactNotFound:
        return {}
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


PENDING_ROOT = "pending-publication/"


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


def _switch_pending(
    store: ArtifactStore, prefix: str, sums: bytes, signature: bytes
) -> tuple[StoredObject, StoredObject]:
    """Make the staged pair live, then drop the staging record (its signature first)."""
    live_sums, live_signature = store.put_many(
        [(prefix + SUMS_FILE_NAME, sums), (prefix + SIGNATURE_FILE_NAME, signature)]
    )
    staged_sums, staged_signature = pending_keys(prefix)
    store.delete(staged_signature)
    store.delete(staged_sums)
    return live_sums, live_signature


def complete_pending_publication(store: ArtifactStore, prefix: str, keyring: bytes) -> str | None:
    """Finish or undo a switch of ``prefix``'s SHA256SUMS that a killed writer left half done.

    Call it holding ``publication_lock(prefix)``. A staged pair whose signature verifies is
    switched in ("completed"); a partial or unverifiable one is deleted ("discarded"): the live
    pair was not touched yet. Returns None when nothing was pending.
    """
    staged_sums_key, staged_signature_key = pending_keys(prefix)
    try:
        signature = store.get_bytes(staged_signature_key)
    except ArtifactNotFound:
        if store.exists(staged_sums_key):  # killed while staging: the live pair is the old one
            store.delete(staged_sums_key)
            return "discarded"
        return None
    try:
        sums = store.get_bytes(staged_sums_key)
    except ArtifactNotFound:
        sums = b""
    if sums and _pair_verifies(sums, signature, keyring):
        _switch_pending(store, prefix, sums, signature)
        return "completed"
    store.delete(staged_signature_key)
    store.delete(staged_sums_key)
    return "discarded"


def recover_pending_publications(store: ArtifactStore, keyring: bytes) -> dict[str, str]:
    """Complete every switch left pending in the store (a worker runs this at start)."""
    prefixes = sorted({key[len(PENDING_ROOT) :].rsplit("/", 1)[0] + "/" for key in store.list(PENDING_ROOT)})
    outcomes: dict[str, str] = {}
    for prefix in prefixes:
        with publication_lock(prefix):
            outcome = complete_pending_publication(store, prefix, keyring)
        if outcome:
            outcomes[prefix] = outcome
    return outcomes


def _sign_and_upload_sums(
    store: ArtifactStore, signer: GpgSigner, prefix: str, entries: Mapping[str, str]
) -> tuple[StoredObject, StoredObject]:
    """Write SHA256SUMS for ``entries``, sign it, check the signature as systemd will, stage the
    pair, then switch it in (see the module docstring). Call it holding ``publication_lock``."""
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


def publish_extension(
    store: ArtifactStore, signer: GpgSigner, name: str, images: Sequence[ImageFile]
) -> ExtensionPublication:
    """Publish ``images`` of extension ``name`` and re-sign its SHA256SUMS listing every version.

    Re-publishing an image already listed with the same sha256 uploads nothing. An image listed
    with another sha256 is refused (``publish.image-conflict``).
    """
    prefix = extension_prefix(name)
    if not images:
        raise PipelineError("publish.nothing", f"no image of {name} to publish")
    wanted = {image_file_name(name, image.version, image.arch): image for image in images}

    # 1. Images, outside the lock (they are large); each is re-read and checked by the store.
    listed_before = read_published_sums(store, prefix)
    uploaded: dict[str, StoredObject] = {}
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
        stored = store.put_file(key, image.path)
        if stored.sha256 != expected:
            store.delete(key)  # not listed, so no node can have fetched it
            raise PipelineError(
                "publish.image-changed",
                f"{image.path.name} has sha256 {stored.sha256} but was baked as {expected}; "
                "it changed on disk after the bake",
            )
        uploaded[file_name] = stored

    # 2. The listing, under the lock: merge with what others published meanwhile, sign, upload.
    with publication_lock(prefix):
        complete_pending_publication(store, prefix, signer.export_public_keyring())
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
        sums, signature = _sign_and_upload_sums(store, signer, prefix, entries)

    return ExtensionPublication(
        name=name,
        url=store.public_url(prefix),
        images=uploaded,
        sums=sums,
        signature=signature,
        listed=entries,
    )


def publish_flavour(
    store: ArtifactStore,
    signer: GpgSigner,
    flavour_id: str,
    files: Mapping[str, bytes],
    *,
    content_types: Mapping[str, str] | None = None,
) -> FlavourPublication:
    """Publish a flavour's files (``config.bu``, ``config.ign``, transfer files, the SBOM...).

    Adds the public keyring nodes need (``import-pubring.gpg``), then a signed SHA256SUMS over
    every file. Names are flat (no ``/``): the directory is served as is.
    """
    prefix = flavour_prefix(flavour_id)
    for file_name in files:
        check_file_name(file_name)
        if file_name in RESERVED_FLAVOUR_FILES:
            raise PipelineError("publish.reserved-name", f"{file_name} is written by the publisher itself")
    content_types = content_types or {}
    everything = {**files, KEYRING_FILE_NAME: signer.export_public_keyring()}
    stored: dict[str, StoredObject] = {}
    for file_name, data in sorted(everything.items()):
        stored[file_name] = store.put_bytes(
            prefix + file_name, data, content_type=content_types.get(file_name)
        )
    with publication_lock(prefix):
        complete_pending_publication(store, prefix, signer.export_public_keyring())
        sums, signature = _sign_and_upload_sums(
            store, signer, prefix, {file_name: obj.sha256 for file_name, obj in stored.items()}
        )
    stored[SUMS_FILE_NAME] = sums
    stored[SIGNATURE_FILE_NAME] = signature
    return FlavourPublication(flavour_id=flavour_id, url=store.public_url(prefix), files=stored)


# --- SBOM ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SbomSource:
    """An upstream file an image was made from, as pinned at approval."""

    source_id: str
    url: str
    sha256: str


@dataclass(frozen=True)
class SbomComponent:
    """One published sysext image of a flavour."""

    name: str
    version: str
    arch: str
    file_name: str
    sha256: str
    download_url: str = ""
    homepage: str = ""
    sources: Sequence[SbomSource] = field(default_factory=tuple)


def _spdx_id(*parts: str) -> str:
    # SPDX IDs allow letters, digits, '.' and '-' only.
    return "SPDXRef-" + "-".join(re.sub(r"[^A-Za-z0-9.]+", ".", part) for part in parts)


def render_sbom(
    *,
    flavour_id: str,
    flavour_name: str,
    components: Sequence[SbomComponent],
    created: datetime,
    document_namespace: str,
    tool: str = "bakehouse",
) -> bytes:
    """An SPDX 2.3 JSON document of a flavour: each image, its version, digest and upstreams.

    ``created`` is passed in (the flavour's creation time, say) rather than read from the clock,
    so the same flavour always gives the same bytes.
    """
    flavour_prefix(flavour_id)
    packages: list[dict[str, object]] = []
    relationships: list[dict[str, str]] = []
    for component in sorted(components, key=lambda c: (c.name, c.arch, c.version)):
        image_id = _spdx_id("image", component.name, component.version, component.arch)
        package: dict[str, object] = {
            "SPDXID": image_id,
            "name": component.name,
            "versionInfo": component.version,
            "packageFileName": component.file_name,
            "downloadLocation": component.download_url or "NOASSERTION",
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": component.sha256}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "INSTALL",
            "comment": f"systemd system extension image for {component.arch}",
        }
        if component.homepage:
            package["homepage"] = component.homepage
        packages.append(package)
        relationships.append(
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": image_id,
            }
        )
        for source in sorted(component.sources, key=lambda s: s.source_id):
            source_id = _spdx_id(
                "upstream", component.name, component.version, component.arch, source.source_id
            )
            packages.append(
                {
                    "SPDXID": source_id,
                    "name": f"{component.name}/{source.source_id}",
                    "versionInfo": component.version,
                    "downloadLocation": source.url,
                    "filesAnalyzed": False,
                    "checksums": [{"algorithm": "SHA256", "checksumValue": source.sha256}],
                    "licenseConcluded": "NOASSERTION",
                    "licenseDeclared": "NOASSERTION",
                    "copyrightText": "NOASSERTION",
                    "primaryPackagePurpose": "ARCHIVE",
                }
            )
            relationships.append(
                {
                    "spdxElementId": image_id,
                    "relationshipType": "GENERATED_FROM",
                    "relatedSpdxElement": source_id,
                }
            )
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{flavour_name} ({flavour_id[:12]})",
        "documentNamespace": document_namespace,
        "creationInfo": {
            "created": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: {tool}"],
        },
        "packages": packages,
        "relationships": relationships,
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
