"""Baked images as the portal keeps them: their cache key, reuse, and reading them back."""

from __future__ import annotations

import hashlib
from pathlib import Path

from builds.flavours import FlavourOptions
from builds.models import ImageArtifact
from builds.pipeline.errors import PipelineError
from catalog.models import ExtensionVersion


def image_cache_key_for(
    version: ExtensionVersion, arch: str, pins: dict[str, str], options: FlavourOptions
) -> str | None:
    """The image cache key of ``version`` baked for ``arch`` with these pins and options.

    None when some source has no pinned sha256: such an image is never reused.
    """
    from builds.pipeline.bake import image_cache_key
    from builds.pipeline.image import tool_versions

    recipe = version.recipe()
    resolved = recipe.resolve(version.version, arch, pins)
    if not all(source.sha256 for source in resolved):
        return None
    return image_cache_key(
        recipe_digest=recipe.image_digest(version.version),
        version=version.version,
        arch=arch,
        source_digests={source.id: str(source.sha256) for source in resolved},
        image_format=options.image_format,
        compression=options.compression,
        tools=tool_versions(),
    )


def cached_image(cache_key: str | None) -> ImageArtifact | None:
    """A stored image with this key whose bytes are still in the store, unchanged."""
    if cache_key is None:
        return None
    from builds.adapters.store import get_artifact_store

    image = ImageArtifact.objects.filter(cache_key=cache_key).first()
    if image is None:
        return None
    stored = get_artifact_store().stat(image.key)
    if stored is None or stored.sha256 != image.sha256:
        return None
    return image


def sha512_file(path: Path) -> str:
    """The digest Ignition's ``verification.hash`` checks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha512").hexdigest()


def download_image(image: ImageArtifact, directory: Path) -> Path:
    """Copy an image from the store, refusing bytes that are not the ones we baked."""
    from builds.adapters.store import get_artifact_store

    target = directory / image.file_name
    digest = hashlib.sha256()
    with get_artifact_store().open(image.key) as stream, open(target, "wb") as out:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != image.sha256:
        raise PipelineError(
            "store.sha256-mismatch",
            f"the stored {image.file_name} reads back as {digest.hexdigest()}, not {image.sha256}",
            retryable=True,
        )
    return target
