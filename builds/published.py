"""What a build published, as people download and verify it: every file with the URL nodes use
and the signed SHA256SUMS that lists it, grouped by the directory it was published in.

The flavour page and ``/api/builds/{id}/`` both read this, so what they offer is exactly what was
published (``Artifact`` rows): a new kind of file appears on both without template changes. The
listing rule itself is the publisher's (``builds.pipeline.publish.signed_listing_keys``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from builds.models import Artifact, ArtifactKind, BuildState, Flavour
from builds.pipeline.checksums import SIGNATURE_FILE_NAME, SUMS_FILE_NAME
from builds.pipeline.publish import KEYRING_FILE_NAME, signed_listing_keys

# The order files are shown in; kinds not named here (new ones) come after, before transfer files.
KIND_ORDER = (
    ArtifactKind.IGNITION,
    ArtifactKind.BUTANE,
    ArtifactKind.IMAGE,
    ArtifactKind.SBOM,
    ArtifactKind.KEYRING,
)

# Run in a directory holding a SHA256SUMS, its signature, the keyring and the files it lists.
VERIFY_COMMAND = (
    f"gpg --no-default-keyring --keyring ./{KEYRING_FILE_NAME} "
    f"--verify {SIGNATURE_FILE_NAME} {SUMS_FILE_NAME} && sha256sum -c --ignore-missing {SUMS_FILE_NAME}"
)


@dataclass(frozen=True)
class PublishedFile:
    """One published object: its record, the URL nodes fetch, and what vouches for it."""

    artifact: Artifact
    url: str
    # The SHA256SUMS that lists this file and that listing's signature (None for the two itself).
    sums_url: str | None
    signature_url: str | None

    @property
    def directory(self) -> str:
        return self.artifact.key.rpartition("/")[0] + "/"


@dataclass
class PublishedDirectory:
    """One served directory (``flavours/ID/`` or ``extensions/NAME/``) and its signed listing."""

    prefix: str
    files: list[PublishedFile] = field(default_factory=list)  # the listed files, shown first
    transfers: list[PublishedFile] = field(default_factory=list)  # sysupdate transfer files (*.conf)
    sums: PublishedFile | None = None
    signature: PublishedFile | None = None

    @property
    def is_flavour(self) -> bool:
        return self.prefix.startswith("flavours/")

    @property
    def title(self) -> str:
        return "This flavour" if self.is_flavour else f"Extension {self.prefix.split('/')[1]}"


def published_file(artifact: Artifact, node_url: Callable[[str], str]) -> PublishedFile:
    """``artifact`` with its URL and its listing's URLs, ``node_url`` mapping a key to a URL
    (``builds.access.artifact_url_for``: the token URL of a private flavour)."""
    listing = signed_listing_keys(artifact.key)
    if listing is None:
        sums_url = None
        # A SHA256SUMS is vouched for by its signature; the signature by the keyring.
        signature_url = (
            node_url(artifact.key + ".gpg") if artifact.key.endswith("/" + SUMS_FILE_NAME) else None
        )
    else:
        sums_url, signature_url = node_url(listing[0]), node_url(listing[1])
    return PublishedFile(artifact, node_url(artifact.key), sums_url, signature_url)


def _order(item: PublishedFile) -> tuple[int, str]:
    kind = item.artifact.kind
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), item.artifact.name)


def published_directories(
    artifacts: Iterable[Artifact], node_url: Callable[[str], str]
) -> list[PublishedDirectory]:
    """The build's files by directory: the flavour's own first, then each extension's."""
    directories: dict[str, PublishedDirectory] = {}
    for artifact in artifacts:
        item = published_file(artifact, node_url)
        directory = directories.setdefault(item.directory, PublishedDirectory(item.directory))
        name = artifact.key.rpartition("/")[2]
        if name == SUMS_FILE_NAME:
            directory.sums = item
        elif name == SIGNATURE_FILE_NAME:
            directory.signature = item
        elif artifact.kind == ArtifactKind.TRANSFER and name.endswith(".conf"):
            directory.transfers.append(item)  # many and for nodes only: the page folds them
        else:
            directory.files.append(item)
    for directory in directories.values():
        directory.files.sort(key=_order)
        directory.transfers.sort(key=_order)
    return sorted(directories.values(), key=lambda d: (not d.is_flavour, d.prefix))


def flavour_published_text(flavour: Flavour, kind: str) -> str:
    """The text of the flavour's latest successfully published ``kind`` file ('' if none)."""
    from builds.adapters.store import ArtifactNotFound, ArtifactStoreError, get_artifact_store

    artifact = (
        Artifact.objects.filter(flavour=flavour, kind=kind, build__state=BuildState.SUCCEEDED)
        .order_by("-build__finished_at")
        .first()
    )
    if artifact is None:
        return ""
    try:
        return get_artifact_store().get_bytes(artifact.key).decode("utf-8")
    except (ArtifactNotFound, ArtifactStoreError):
        return ""
