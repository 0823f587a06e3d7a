"""The portal's side of pre-baked images: the flavour's choices and the installation's settings
handed to ``builds.pipeline.prebake`` (the build director's ``prebake`` step)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from django.conf import settings

from builds.flavour_files import ReadyImage
from builds.flavours import FlavourOptions
from builds.models import Flavour
from builds.steps import BuildSteps


def flavour_prebake(
    steps: BuildSteps,
    flavour: Flavour,
    files: Mapping[str, bytes],
    ready: Sequence[ReadyImage],
    scratch: Path,
) -> dict[str, Path]:
    """Flatcar's production image with the flavour's files in place: ``{file name: path}``.

    Empty when the flavour does not ask for one. The Flatcar image comes through the same fetcher
    as every upstream file (UPSTREAM_MIRRORS honoured, its pinned sha256 checked, its signature
    checked with FLATCAR_IMAGE_SIGNING_KEY); what goes where is read from the flavour's own
    ``config.ign``, as it is published.
    """
    from builds.pipeline.fetch import Fetcher
    from builds.pipeline.prebake import (
        fetch_flatcar_image,
        flatcar_image_url,
        prebake_image,
        prebaked_image_name,
    )

    options = FlavourOptions.from_document(flavour.options)
    if not options.prebake:
        return {}
    url = flatcar_image_url(options.channel, flavour.arch, options.flatcar_version)
    steps.log(f"Fetching Flatcar {options.channel} {options.flatcar_version} for {flavour.arch}: {url}")
    with Fetcher(
        settings.FETCH_CACHE_DIR, mirrors=settings.UPSTREAM_MIRRORS, max_bytes=settings.UPSTREAM_MAX_BYTES
    ) as fetcher:
        image = fetch_flatcar_image(
            fetcher, url, sha256=options.flatcar_image_sha256, signing_key=settings.FLATCAR_IMAGE_SIGNING_KEY
        )
    steps.log(f"{Path(url).name}: sha256 {image.sha256} as pinned, signed with Flatcar's image signing key.")

    def progress(stage: str, message: str, fraction: float) -> None:
        steps.check_cancel()
        if fraction >= 1.0:
            steps.log(f"[prebake] {stage}: {message}")

    result = prebake_image(
        image.path,
        scratch / "prebake" / prebaked_image_name(flavour.name),
        config=json.loads(files["config.ign"]),
        images={item.image.file_name: item.path for item in ready},
        embed_config=options.prebake_ignition,
        work_dir=scratch,
        progress=progress,
    )
    steps.log(f"{result.file_name}: {len(result.placed)} files and links placed, {result.size} bytes.")
    return {result.file_name: result.path}
