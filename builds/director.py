"""The build director: one build, top to bottom, as the steps users see.

    plan -> bake -> verify -> sign -> [prebake] -> publish -> notify

bake and verify are steps of one extension each (``BuildStep.extension``), the others the
flavour's; the log lines a step writes belong to it (the build page folds the log per step).

Three tasks run it (``builds.tasks``), because images bake in parallel on several workers:

- ``build_start``: **plan** — reuse each image already stored, queue one bake per missing image;
- ``build_image_bake``: **bake** — one image, through the pure pipeline (``bake_image``), stored;
- ``build_finalize``, once every image is ready: **verify** each image with systemd-sysext,
  **sign** (the key's keyring goes into the flavour's Butane and Ignition), **prebake** a Flatcar
  disk image when the flavour asks for one (``builds.prebaked``), **publish** images
  and flavour files through the one publisher, **notify** (the build ends, webhooks go out).

Each step is ``with steps.step(NAME):`` (``builds.steps.BuildSteps``): timing, state, progress
and the cancel check live there. Errors: a ``PipelineError`` that is not retryable is the user's
problem (a wrong pin, a hostile archive): the build fails with its code and sentence, once.
Anything retryable, and any other infrastructure trouble, propagates so the task retries it.
"""

from __future__ import annotations

import functools
import json
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from builds.flavour_files import ReadyImage, flavour_config, flavour_files
from builds.flavours import FlavourOptions
from builds.images import cached_image, download_image, image_cache_key_for, sha512_file
from builds.models import (
    Artifact,
    ArtifactKind,
    Build,
    BuildImage,
    BuildState,
    Flavour,
    ImageArtifact,
    Verification,
)
from builds.pipeline.checksums import SIGNATURE_FILE_NAME, SUMS_FILE_NAME
from builds.pipeline.errors import PipelineError
from builds.steps import BAKE_SHARE, STEPS, BuildCancelled, BuildSteps, Heartbeat, build_end
from portal import queueing


def build_start(*, build_id: Any) -> None:
    """plan: reuse each image already in the store, queue a bake for the others."""
    build = _load_build(build_id)
    if build is None or not build.is_active:
        return
    steps = BuildSteps(build_id)
    with _ending_on_user_errors(build_id, steps):
        steps.check_cancel()
        Build.objects.filter(pk=build_id, started_at__isnull=True).update(started_at=timezone.now())
        with steps.step("plan"):
            pending = BuildImage.objects.filter(
                build_id=build_id, state=BuildImage.State.PENDING
            ).select_related("extension_version__extension")
            for build_image in pending:
                plan = image_plan(build, build_image)
                cached = cached_image(plan.cache_key)
                if cached is not None:
                    steps.log(
                        f"{plan.file_name}: reusing the stored image {cached.sha256[:16]}… (not rebuilt)."
                    )
                    _image_done(build_image.pk, cached, reused=True)
                else:
                    steps.log(f"{plan.file_name}: queued for baking.")
                    queueing.queue_task("builds.tasks.build_bake_image", str(build_id), build_image.pk)
        maybe_finalize(build_id)


def build_image_bake(*, build_id: Any, build_image_id: int) -> None:
    """bake: one image of a build (or take it from the cache if another build just made it)."""
    from builds.adapters.store import get_artifact_store
    from builds.pipeline.bake import bake_image
    from catalog.services import uploaded_archive_materialize, upstream_fetcher

    build = _load_build(build_id)
    build_image = (
        BuildImage.objects.select_related("extension_version__extension").filter(pk=build_image_id).first()
    )
    if build is None or build_image is None or not build.is_active:
        return
    if build_image.state == BuildImage.State.DONE:  # a redelivered message: the work is done
        maybe_finalize(build_id)
        return
    steps = BuildSteps(build_id)
    with _ending_on_user_errors(build_id, steps):
        steps.check_cancel()
        Build.objects.filter(pk=build_id, started_at__isnull=True).update(started_at=timezone.now())
        plan = image_plan(build, build_image)
        cached = cached_image(plan.cache_key)
        if cached is not None:
            steps.log(f"{plan.file_name}: another build stored this image meanwhile; reusing it.")
            _image_done(build_image.pk, cached, reused=True)
            maybe_finalize(build_id)
            return
        version = build_image.extension_version
        if hasattr(version, "upload"):
            uploaded_archive_materialize(version=version)
        done = BuildImage.objects.filter(build_id=build_id, state=BuildImage.State.DONE).count()
        count = BuildImage.objects.filter(build_id=build_id).count()
        options = FlavourOptions.from_document(build.flavour.options)
        progress = _BakeProgress(steps, f"{plan.name} {plan.version}", done, count)
        # The heartbeat first: while the bake step shows as running, a task counts as running.
        with (
            Heartbeat(build_id),
            steps.step("bake", extension=plan.name),
            tempfile.TemporaryDirectory(prefix="bh-build-") as scratch,
        ):
            with upstream_fetcher(version.extension) as fetcher:
                baked = bake_image(
                    plan.recipe,
                    plan.version,
                    plan.arch,
                    Path(scratch) / "out",
                    fetcher=fetcher,
                    work_dir=scratch,
                    image_format=options.image_format,
                    compression=options.compression,
                    pins=plan.pins,
                    progress=progress,
                    build_log=progress.output,  # a recipe built from source: the compiler's output
                    # ... and its own "compile" step, in the extension's group beside bake and verify
                    stage=functools.partial(steps.step, extension=plan.name),
                )
            cache_key = plan.cache_key or baked.cache_key
            stored = get_artifact_store().put_file(f"images/{cache_key}/{baked.image_name}", baked.image_path)
            if stored.sha256 != baked.image_sha256:
                raise PipelineError(
                    "store.sha256-mismatch",
                    f"{baked.image_name} was stored as {stored.sha256}, baked as {baked.image_sha256}",
                    retryable=True,
                )
            sha512 = sha512_file(baked.image_path)
            steps.log(f"{baked.image_name}: baked, sha256 {baked.image_sha256}, {baked.image_size} bytes.")
        image = _image_record(build_id, version, plan, baked, cache_key, stored.key, sha512)
        _image_done(build_image.pk, image, reused=False)
        maybe_finalize(build_id)


def build_finalize(*, build_id: Any) -> None:
    """verify, sign, publish, notify: once every image of the build is ready."""
    from builds.access import artifact_url_for
    from builds.adapters.signing_key import get_signer
    from builds.adapters.store import get_artifact_store
    from builds.prebaked import flavour_prebake
    from builds.publication import ImageFile, publish_extensions, publish_flavour
    from builds.services import published_files_seen

    build = _load_build(build_id)
    if build is None or not build.is_active:
        return
    steps = BuildSteps(build_id)
    flavour = build.flavour
    with (
        _ending_on_user_errors(build_id, steps),
        Heartbeat(build_id),
        tempfile.TemporaryDirectory(prefix="bh-final-") as scratch,
    ):
        ready = _verify_images(steps, build, Path(scratch))

        with ExitStack() as signing:
            with steps.step("sign"):
                signer = signing.enter_context(get_signer())
                steps.log(f"Signing with key {signer.fingerprint}.")
                # A private flavour's nodes read through its token URL (builds.access).
                node_url = artifact_url_for(flavour)
                keyring = signer.export_public_keyring()
                config = flavour_config(flavour, ready, keyring=keyring, public_url=node_url)
                files = flavour_files(flavour, config, ready, node_url)

            prebaked: dict[str, Path] = {}
            if FlavourOptions.from_document(flavour.options).prebake:
                with steps.step("prebake"):
                    prebaked = flavour_prebake(steps, flavour, files, ready, Path(scratch))

            # Entering publish is the last point where stopping leaves nothing new behind.
            with steps.step("publish"):
                store = get_artifact_store()
                publications = publish_extensions(
                    store,
                    signer,
                    [
                        (
                            item.extension.name,
                            [
                                ImageFile(
                                    item.version,
                                    flavour.arch,
                                    item.path,
                                    item.image.sha256,
                                    stored_key=item.image.key,
                                )
                            ],
                        )
                        for item in ready
                    ],
                )
                for item, publication in zip(ready, publications, strict=True):
                    for file_name, stored in publication.images.items():
                        _record_artifact(build, ArtifactKind.IMAGE, file_name, stored)
                    # The signed listing that covers the image, so the page and the API link it:
                    # the flavour's own SHA256SUMS does not list extension images.
                    _record_artifact(build, ArtifactKind.SHA256SUMS, SUMS_FILE_NAME, publication.sums)
                    if publication.signature is not None:
                        _record_artifact(
                            build, ArtifactKind.SIGNATURE, SIGNATURE_FILE_NAME, publication.signature
                        )
                    steps.log(f"Published {item.image.file_name} and re-signed {publication.url}SHA256SUMS.")
                flavour_publication = publish_flavour(store, signer, flavour.pk, files, file_paths=prebaked)
                for file_name, stored in flavour_publication.files.items():
                    kind = ArtifactKind.DISK_IMAGE if file_name in prebaked else _KIND_BY_NAME.get(file_name)
                    kind = kind or ArtifactKind.TRANSFER
                    _record_artifact(build, kind, file_name, stored)
                steps.log(f"Published the flavour's files at {flavour_publication.url}.")
                published_files_seen(build.pk)

        with steps.step("notify", cancellable=False):
            build.refresh_from_db()
            build_end(build, BuildState.SUCCEEDED)  # queues the team's webhooks


# --- plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePlan:
    """What the pipeline needs to bake one image of a build, read from the flavour and catalog."""

    name: str
    version: str
    arch: str
    recipe: Any
    pins: dict[str, str]
    cache_key: str | None  # None when some source has no pin: such an image is never reused
    file_name: str


def image_plan(build: Build, build_image: BuildImage) -> ImagePlan:
    """The pins the flavour's ID promises for this image, refused if the recipe changed since."""
    from builds.pipeline.sysupdate import image_file_name

    version = build_image.extension_version
    extension = version.extension
    entry = _flavour_entries(build.flavour).get(extension.name)
    if entry is None or entry["version"] != version.version:
        raise PipelineError(
            "flavour.inconsistent",
            f"{extension.name} {version.version} is not part of this flavour's document",
        )
    recipe = version.recipe()
    if entry["recipe_digest"] != recipe.image_digest(version.version):
        raise PipelineError(
            "flavour.stale",
            f"the recipe of {extension.name} {version.version} changed since this flavour was composed; "
            "compose a new revision of the flavour to build with the new recipe",
        )
    pins = dict(entry["pins"])
    options = FlavourOptions.from_document(build.flavour.options)
    return ImagePlan(
        name=extension.name,
        version=version.version,
        arch=build.flavour.arch,
        recipe=recipe,
        pins=pins,
        cache_key=image_cache_key_for(version, build.flavour.arch, pins, options),
        file_name=image_file_name(extension.name, version.version, build.flavour.arch),
    )


def _flavour_entries(flavour: Flavour) -> dict[str, dict[str, Any]]:
    """The flavour's canonical extension entries by name: the pins the ID promises."""
    return {entry["name"]: entry for entry in json.loads(flavour.canonical)["extensions"]}


def maybe_finalize(build_id: Any) -> None:
    """Queue finalize exactly once, when the last image of the build is ready."""
    with transaction.atomic():
        build = Build.objects.select_for_update().filter(pk=build_id).first()
        if build is None or not build.is_active or build.finalize_queued:
            return
        if BuildImage.objects.filter(build_id=build_id).exclude(state=BuildImage.State.DONE).exists():
            return
        Build.objects.filter(pk=build_id).update(finalize_queued=True)
        queueing.queue_task("builds.tasks.build_finalize", str(build_id))


# --- bake ---------------------------------------------------------------------------------------


class _BakeProgress:
    """The pipeline's ``progress(step, message, fraction)`` as the bake step's progress and log.

    The pipeline's own stages (fetch, unpack, image...) are detail of the one ``bake`` step: they
    go to the log, prefixed with the image, and move the bar within the bake's share.
    """

    def __init__(self, steps: BuildSteps, image_label: str, image_index: float, image_count: int) -> None:
        self.steps = steps
        self.label = image_label
        self.index = image_index
        self.count = max(image_count, 1)
        self._last_message = ""
        self._last_write = 0.0
        self._last_cancel_check = 0.0

    def __call__(self, stage: str, message: str, fraction: float) -> None:
        from builds.pipeline.bake import STEPS as STAGES

        now = time.monotonic()
        self._check_cancel(now)
        position = STAGES.index(stage) if stage in STAGES else len(STAGES) - 1
        within = (position + fraction) / len(STAGES)
        if message != self._last_message and (
            fraction >= 1.0 or fraction == 0.0 or now - self._last_write > 2.0
        ):
            self._last_message = message
            self._last_write = now
            self.steps.log(f"[{self.label}] {stage}: {message}")
            state = BuildState.FETCHING if stage == "fetch" else BuildState.BAKING
            percent = STEPS["bake"][1] + int(BAKE_SHARE * (self.index + within) / self.count)
            self.steps.progress("compile" if stage == "compile" else "bake", percent, state=state)

    def output(self, text: str) -> None:
        """A source build's output, a few lines at a time: into the log; a cancel stops the build."""
        self.steps.log(f"[{self.label}] {text}")
        self._check_cancel(time.monotonic())

    def _check_cancel(self, now: float) -> None:
        if now - self._last_cancel_check > 1.0:
            self._last_cancel_check = now
            self.steps.check_cancel()


def _image_record(
    build_id: Any, version: Any, plan: ImagePlan, baked: Any, cache_key: str, key: str, sha512: str
) -> ImageArtifact:
    try:
        with transaction.atomic():
            image, _created = ImageArtifact.objects.update_or_create(
                cache_key=cache_key,
                defaults={
                    "extension_version": version,
                    "arch": plan.arch,
                    "file_name": baked.image_name,
                    "sha256": baked.image_sha256,
                    "sha512": sha512,
                    "size": baked.image_size,
                    "key": key,
                    "image_format": baked.image_format,
                    "compression": baked.compression,
                    "built_by_id": build_id,
                },
            )
    except IntegrityError:  # a parallel bake of the same key won: same bytes, same key
        image = ImageArtifact.objects.get(cache_key=cache_key)
    return image


def _image_done(build_image_id: int, image: ImageArtifact, *, reused: bool) -> None:
    BuildImage.objects.filter(pk=build_image_id).update(
        state=BuildImage.State.DONE, image=image, reused=reused
    )


# --- verify -------------------------------------------------------------------------------------


# Images checked side by side: each is a download and a systemd-sysext merge in a mount
# namespace of its own, mostly waiting on the store and the kernel, and independent of the others.
VERIFY_AT_ONCE = 4


def _verify_images(steps: BuildSteps, build: Build, scratch: Path) -> list[ReadyImage]:
    """Download each image (checking its bytes) and merge it with systemd-sysext: one verify
    step per extension. The checks run side by side; their steps are recorded in order, each
    ending when its check has, so the steps' times add up to the wall time."""
    build_images = list(
        BuildImage.objects.filter(build_id=build.pk)
        .select_related("extension_version__extension", "image")
        .order_by("extension_version__extension__name")
    )
    ready: list[ReadyImage] = []
    skipped: list[str] = []
    with ThreadPoolExecutor(max_workers=VERIFY_AT_ONCE, thread_name_prefix="verify") as pool:
        checks = [
            pool.submit(_check_image, build_image, scratch, build.flavour.arch)
            for build_image in build_images
        ]
        try:
            for build_image, check in zip(build_images, checks, strict=True):
                with steps.step("verify", extension=build_image.extension_version.extension.name):
                    path, outcome = check.result()
                    assert build_image.image is not None  # every image is done before finalize
                    item = ReadyImage(build_image, build_image.image, path)
                    skip = _record_verification(steps, build, build_image, item, outcome)
                if skip:
                    skipped.append(skip)
                ready.append(item)
        finally:
            for check in checks:  # a failure or a cancel: the checks not started are dropped
                check.cancel()
    if not build_images:
        verification, reason = Verification.SKIPPED, "The flavour has no image to bake."
    elif skipped:
        verification, reason = Verification.SKIPPED, "; ".join(skipped)
    else:
        verification, reason = Verification.VERIFIED, ""
    Build.objects.filter(pk=build.pk).update(verification=verification, verification_reason=reason)
    return ready


def _check_image(build_image: BuildImage, scratch: Path, arch: str) -> tuple[Path, Any]:
    """On a pool thread, no database: the image downloaded (a store error raises) and what
    systemd-sysext made of it, a ``VerifyResult`` or the ``PipelineError`` that refused it."""
    from builds.pipeline.verify import verify_with_systemd_sysext

    assert build_image.image is not None
    path = download_image(build_image.image, scratch)
    try:
        return path, verify_with_systemd_sysext(path, build_image.extension_version.extension.name, arch)
    except PipelineError as refused:
        return path, refused


def _record_verification(
    steps: BuildSteps, build: Build, build_image: BuildImage, item: ReadyImage, outcome: Any
) -> str:
    """Record one image's merge; the reason it was skipped, or ''. A refusal fails the build."""
    if isinstance(outcome, PipelineError):
        BuildImage.objects.filter(pk=build_image.pk).update(
            verification=Verification.FAILED, verification_reason=outcome.message
        )
        Build.objects.filter(pk=build.pk).update(
            verification=Verification.FAILED, verification_reason=outcome.message
        )
        raise outcome
    BuildImage.objects.filter(pk=build_image.pk).update(
        verification=outcome.status, verification_reason=outcome.reason
    )
    if outcome.verified:
        steps.log(f"{item.path.name}: merged by systemd-sysext ({len(outcome.merged_bin)} in usr/bin).")
        return ""
    steps.log(f"{item.path.name}: verification skipped: {outcome.reason}")
    return f"{item.path.name}: {outcome.reason}"


# --- publish ------------------------------------------------------------------------------------

_KIND_BY_NAME = {
    "config.bu": ArtifactKind.BUTANE,
    "config.ign": ArtifactKind.IGNITION,
    "sbom.spdx.json": ArtifactKind.SBOM,
    "import-pubring.gpg": ArtifactKind.KEYRING,
    "SHA256SUMS": ArtifactKind.SHA256SUMS,
    "SHA256SUMS.gpg": ArtifactKind.SIGNATURE,
}


def _record_artifact(build: Build, kind: str, name: str, stored: Any) -> None:
    Artifact.objects.update_or_create(
        build=build,
        key=stored.key,
        defaults={
            "flavour": build.flavour,
            "kind": kind,
            "name": name,
            "sha256": stored.sha256,
            "size": stored.size,
            "content_type": stored.content_type,
        },
    )


# --- every step ---------------------------------------------------------------------------------


def _load_build(build_id: Any) -> Build | None:
    return Build.objects.select_related("flavour", "flavour__team").filter(pk=build_id).first()


@contextmanager
def _ending_on_user_errors(build_id: Any, steps: BuildSteps) -> Iterator[None]:
    """A user error or a cancel ends the build here; infrastructure errors propagate (the task
    retries them). A tool's output goes to the log of the step that failed."""
    try:
        yield
    except BuildCancelled:
        build = _load_build(build_id)
        if build is not None:
            build_end(build, BuildState.CANCELLED, code="build.cancelled", message="Stopped on request.")
    except PipelineError as error:
        if error.retryable:
            raise
        if error.output:
            steps.log_to_failed_step(error.output[-4000:])
        build = _load_build(build_id)
        if build is not None:
            build_end(build, BuildState.FAILED, code=error.code, message=error.message)
