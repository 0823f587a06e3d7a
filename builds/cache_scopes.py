"""Which writes throw away which cached API answers (portal.read_cache), and the scopes' names."""

from __future__ import annotations

from portal import read_cache


def connect_read_cache() -> None:
    """Connect the signals (once, when the app is ready).

    Build progress has scopes of its own, so the steps and heartbeats of running builds leave
    the catalog's and the flavours' answers cached: ``build:ID`` (the build's status),
    ``flavour:ID`` (its latest published Butane and Ignition) and ``images`` (the image cache
    a finished build's status lists). A running build's status is kept a second only (its
    progress moves by update(), builds.api.views); a finished build changes only by a retry, its
    end (builds.steps.build_end bumps), deletion or its artifacts. Log lines and webhook
    deliveries are in no cached answer.
    """
    from builds.models import (
        Artifact,
        Build,
        BuildImage,
        BuildLogLine,
        BuildStep,
        ImageArtifact,
        WebhookDelivery,
    )

    def of_build(build: Build) -> list[str]:
        scopes = [build_scope(build.pk), flavour_scope(build.flavour_id)]
        if build.retry_of_id:
            scopes.append(build_scope(build.retry_of_id))
        return scopes

    read_cache.connect_scoped(Build, of_build)
    read_cache.connect_scoped(BuildStep, lambda step: [build_scope(step.build_id)])
    read_cache.connect_scoped(BuildImage, lambda image: [build_scope(image.build_id)])
    read_cache.connect_scoped(
        Artifact, lambda artifact: [build_scope(artifact.build_id), flavour_scope(artifact.flavour_id)]
    )
    read_cache.connect_scoped(ImageArtifact, lambda image: [IMAGES_SCOPE])
    read_cache.connect_data_models(
        scoped=[Build, BuildStep, BuildImage, Artifact, ImageArtifact, BuildLogLine, WebhookDelivery]
    )


IMAGES_SCOPE = "images"


def build_scope(build_id: object) -> str:
    return f"build:{build_id}"


def flavour_scope(flavour_id: object) -> str:
    return f"flavour:{flavour_id}"
