"""What a build publishes for a flavour beside its images: the pipeline's ``FlavourConfig``, and
from it config.bu, config.ign, the transfer files and the SBOM."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builds.flavours import FlavourOptions, PublishedImage, butane_config
from builds.models import BuildImage, Flavour, ImageArtifact


@dataclass(frozen=True)
class ReadyImage:
    """An image of the build, downloaded for verification and publication."""

    build_image: BuildImage
    image: ImageArtifact
    path: Path

    @property
    def extension(self) -> Any:
        return self.build_image.extension_version.extension

    @property
    def version(self) -> str:
        return str(self.build_image.extension_version.version)


def flavour_config(
    flavour: Flavour, images: list[ReadyImage], *, keyring: bytes, public_url: Callable[[str], str]
) -> Any:
    """The pipeline's ``FlavourConfig`` for a flavour whose images are about to be published."""
    published = {
        ready.extension.name: published_image(
            ready.extension.name, ready.image.file_name, f"sha512-{ready.image.sha512}", public_url
        )
        for ready in images
    }
    return butane_config(
        arch=flavour.arch,
        options=FlavourOptions.from_document(flavour.options),
        versions=list(flavour.extension_versions.select_related("extension")),
        images=published,
        keyring=keyring,
    )


def published_image(
    name: str, file_name: str, image_hash: str, public_url: Callable[[str], str]
) -> PublishedImage:
    """Where publication puts image ``file_name`` of extension ``name``, as nodes see it."""
    from builds.publication import extension_prefix

    prefix = extension_prefix(name)
    return PublishedImage(url=public_url(prefix + file_name), hash=image_hash, publish_url=public_url(prefix))


# Stand-ins of a preview, chosen so they cannot be a real value: the hash of nothing a bake writes,
# a keyring that is not OpenPGP. Their lines are replaced by these comments in the text shown.


def flavour_files(
    flavour: Flavour, config: Any, images: list[ReadyImage], public_url: Callable[[str], str]
) -> dict[str, bytes]:
    """config.bu, config.ign, the transfer files and the SBOM, as published for the flavour."""
    from builds.pipeline.butane.render import render_butane, render_ignition, transfer_files
    from builds.publication import SBOM_FILE_NAME, SbomComponent, SbomSource, flavour_prefix, render_sbom

    files: dict[str, bytes] = {
        "config.bu": render_butane(config).encode("utf-8"),
        "config.ign": render_ignition(config).encode("utf-8"),
    }
    for transfer in transfer_files(config):
        files[transfer.file_name] = transfer.text.encode("utf-8")
    components = []
    for ready in images:
        digests = ready.build_image.extension_version.digests.filter(arch=flavour.arch).order_by("source_id")
        components.append(
            SbomComponent(
                name=ready.extension.name,
                version=ready.version,
                arch=flavour.arch,
                file_name=ready.image.file_name,
                sha256=ready.image.sha256,
                download_url=next(e.url for e in config.extensions if e.name == ready.extension.name),
                homepage=ready.extension.homepage or "",
                sources=tuple(SbomSource(d.source_id, d.url, d.sha256) for d in digests),
            )
        )
    files[SBOM_FILE_NAME] = render_sbom(
        flavour_id=flavour.pk,
        flavour_name=flavour.name,
        components=components,
        created=flavour.created_at,
        document_namespace=public_url(flavour_prefix(flavour.pk) + SBOM_FILE_NAME),
    )
    return files
