"""The portal's side of publication: its lock, bound to the one publisher.

Merging SHA256SUMS, signing, verifying and uploading (with the staged switch and its recovery)
is ``builds.pipeline.publish``; this module only gives it the portal's lock and renders the
flavour's SBOM.

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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from builds.pipeline import publish
from builds.pipeline.publish import (
    KEYRING_FILE_NAME,
    PENDING_ROOT,
    ExtensionPublication,
    FlavourPublication,
    ImageFile,
    Store,
    extension_prefix,
    flavour_prefix,
)
from builds.pipeline.signing import GpgSigner

__all__ = [
    "KEYRING_FILE_NAME",
    "PENDING_ROOT",
    "SBOM_FILE_NAME",
    "ImageFile",
    "extension_prefix",
    "flavour_prefix",
    "publication_lock",
    "publish_extension",
    "publish_extensions",
    "publish_flavour",
    "recover_pending_publications",
    "render_sbom",
]

SBOM_FILE_NAME = "sbom.spdx.json"


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


def publish_extension(
    store: Store, signer: GpgSigner, name: str, images: Sequence[ImageFile]
) -> ExtensionPublication:
    """``builds.pipeline.publish.publish_extension`` under the portal's lock."""
    return publish.publish_extension(store, signer, publication_lock, name, images)


def publish_extensions(
    store: Store, signer: GpgSigner, extensions: Sequence[tuple[str, Sequence[ImageFile]]]
) -> list[ExtensionPublication]:
    """``builds.pipeline.publish.publish_extensions`` under the portal's lock: all of a build's
    extensions, or none."""
    return publish.publish_extensions(store, signer, publication_lock, extensions)


def publish_flavour(
    store: Store,
    signer: GpgSigner,
    flavour_id: str,
    files: Mapping[str, bytes],
    *,
    file_paths: Mapping[str, Path] | None = None,
) -> FlavourPublication:
    """``builds.pipeline.publish.publish_flavour`` under the portal's lock."""
    return publish.publish_flavour(store, signer, publication_lock, flavour_id, files, file_paths=file_paths)


def recover_pending_publications(store: Store, keyring: bytes) -> dict[str, str]:
    """Complete every SHA256SUMS switch a killed worker left pending (at worker start)."""
    return publish.recover_pending_publications(store, keyring, publication_lock)


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
