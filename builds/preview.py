"""The Butane preview of a flavour's choices, shown in the composer before anything is built."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from builds.flavour_files import published_image
from builds.flavours import FlavourChoices, PublishedImage, butane_config
from builds.images import image_cache_key_for
from builds.models import ImageArtifact
from catalog.models import Delivery

PREVIEW_HASH_NOTE = "# sha512 filled in when the image is baked"
PREVIEW_KEYRING_NOTE = "# public keyring (import-pubring.gpg) filled in when the build signs"
_PREVIEW_HASH = "sha512-" + "0" * 128
_PREVIEW_KEYRING = b"\x00 bakehouse preview: the signing key's public keyring goes here"


@dataclass(frozen=True)
class ButanePreview:
    """The Butane config a flavour's choices will publish, shown before they are built.

    ``baked`` lists the extensions whose image is already stored, so their real hash is in
    ``text``; ``pending`` those whose hash line is a ``PREVIEW_HASH_NOTE`` comment until a build
    bakes them. ``keyring_pending`` says the keyring line is a ``PREVIEW_KEYRING_NOTE`` comment.
    """

    text: str
    baked: tuple[str, ...]
    pending: tuple[str, ...]
    keyring_pending: bool


def flavour_preview_butane(*, choices: FlavourChoices) -> ButanePreview:
    """Render the Butane for validated ``choices`` with the URLs a build would publish them at.

    Each image's hash is the real one when an image with its cache key is already stored, else a
    marked placeholder; the keyring is always a placeholder (exporting it needs the signing key).
    Reads only the database and the settings: it never bakes, fetches or signs, and the same
    choices and stored images always give the same text. Raises ``PipelineError`` if rendering
    refuses the choices (which ``flavour_choices_resolve`` has already checked).
    """
    from builds.adapters.store import get_artifact_store
    from builds.pipeline.butane.render import render_butane
    from builds.pipeline.sysupdate import image_file_name

    public_url = get_artifact_store().public_url
    images: dict[str, PublishedImage] = {}
    baked: list[str] = []
    pending: list[str] = []
    for chosen in sorted(choices.extensions, key=lambda c: c.name):
        if chosen.version.extension.delivery != Delivery.BAKE:
            continue
        cache_key = image_cache_key_for(chosen.version, choices.arch, chosen.pins, choices.options)
        stored = (
            ImageArtifact.objects.filter(cache_key=cache_key).exclude(sha512="").first()
            if cache_key is not None
            else None
        )
        if stored is not None:
            file_name, image_hash = stored.file_name, f"sha512-{stored.sha512}"
            baked.append(chosen.name)
        else:
            file_name = image_file_name(chosen.name, chosen.version.version, choices.arch)
            image_hash = _PREVIEW_HASH
            pending.append(chosen.name)
        images[chosen.name] = published_image(chosen.name, file_name, image_hash, public_url)
    config = butane_config(
        arch=choices.arch,
        options=choices.options,
        versions=[c.version for c in choices.extensions],
        images=images,
        keyring=_PREVIEW_KEYRING,
    )
    text = render_butane(config)
    keyring_source = "data:;base64," + base64.b64encode(_PREVIEW_KEYRING).decode("ascii")
    lines = []
    for line in text.splitlines(keepends=True):
        indent = line[: len(line) - len(line.lstrip(" "))]
        if line.strip() == f"hash: {_PREVIEW_HASH}":
            line = f"{indent}{PREVIEW_HASH_NOTE}\n"
        elif line.strip() == f"source: {keyring_source}":
            line = f"{indent}{PREVIEW_KEYRING_NOTE}\n"
        lines.append(line)
    return ButanePreview(
        text="".join(lines),
        baked=tuple(baked),
        pending=tuple(pending),
        keyring_pending=choices.options.signed,
    )
