"""Request-side writes of the builds app: what views and the API ask for.

``flavour_create``, ``build_request``, ``build_retry``, ``build_cancel``, ``webhook_create``. A
build, once requested, is run by the director (``builds.director``) in Celery tasks; services queue
those by name (``portal.queueing``) after the request's transaction commits, so a worker never sees
an id whose row is not committed yet.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, transaction

from builds import steps, webhooks
from builds.flavours import FlavourChoices, FlavourOptions, flavour_choices_resolve
from builds.models import (
    ACTIVE_BUILD_STATES,
    Build,
    BuildImage,
    BuildState,
    Flavour,
    FlavourExtension,
    Webhook,
)
from builds.pipeline.errors import BakehouseError
from catalog.models import Delivery, ExtensionVersion, Team
from portal import queueing

logger = logging.getLogger(__name__)

# Order in which states advance; parallel bake tasks only ever move a build forward.


class BuildRefused(BakehouseError):
    """A request the builds app refuses: a stable code, a sentence and the HTTP status."""


# --- flavours -----------------------------------------------------------------------------------


@transaction.atomic
def flavour_create(
    *,
    user: Any,
    team: Team,
    name: Any,
    description: Any = "",
    arch: Any,
    extensions: Any,
    options: Any = None,
    revision_of: Flavour | None = None,
) -> tuple[Flavour, bool]:
    """Validate the choices and store the flavour; returns (flavour, created).

    The same choices give the same ID, so submitting them again returns the existing flavour.
    With ``revision_of`` the new flavour is the next revision of that one (same lineage).
    Raises ``FlavourInvalid`` with the problems per field.
    """
    if revision_of is not None and revision_of.team_id != team.pk:
        raise BuildRefused(
            "flavour.wrong-team", "A revision must belong to the team of the flavour it edits."
        )
    previous = list(revision_of.extension_versions.all()) if revision_of is not None else []
    choices = flavour_choices_resolve(
        team=team,
        name=name,
        description=description,
        arch=arch,
        extensions=extensions,
        options=options,
        previous=previous,
    )
    return _flavour_store(choices, user=user, revision_of=revision_of)


def _flavour_store(
    choices: FlavourChoices, *, user: Any, revision_of: Flavour | None
) -> tuple[Flavour, bool]:
    canonical = choices.canonical_json()
    flavour_id = choices.flavour_id()
    existing = Flavour.objects.filter(pk=flavour_id).first()
    if existing is not None:
        return existing, False
    fields: dict[str, Any] = {
        "id": flavour_id,
        "team": choices.team,
        "name": choices.name,
        "description": choices.description,
        "arch": choices.arch,
        "options": choices.options.as_document(),
        "canonical": canonical,
        "created_by": user if getattr(user, "is_authenticated", False) else None,
    }
    if revision_of is not None:
        latest = Flavour.objects.filter(lineage=revision_of.lineage).order_by("-revision").first()
        fields.update(
            lineage=revision_of.lineage,
            revision=(latest.revision if latest else revision_of.revision) + 1,
            revision_of=revision_of,
        )
    try:
        with transaction.atomic():
            flavour = Flavour.objects.create(**fields)
            FlavourExtension.objects.bulk_create(
                FlavourExtension(flavour=flavour, extension_version=e.version) for e in choices.extensions
            )
    except IntegrityError:
        # Someone stored the very same choices a moment ago: theirs is ours.
        return Flavour.objects.get(pk=flavour_id), False
    return flavour, True


def flavour_options(flavour: Flavour) -> FlavourOptions:
    return FlavourOptions.from_document(flavour.options)


# --- build requests -----------------------------------------------------------------------------


def build_request(
    *, flavour: Flavour, user: Any, retry_of: Build | None = None, republish: bool = False
) -> tuple[Build, bool]:
    """Start a build of ``flavour``, or return the build that already covers it.

    Returns (build, created). An active build of the flavour is shared (the database allows at
    most one, so concurrent requests cannot both create one); a succeeded build is returned as is,
    since the same flavour always means the same artifacts, unless ``republish`` (a private
    flavour's token was rotated, so its files must be published again with the new one).
    """
    if retry_of is None and not republish:
        done = (
            Build.objects.filter(flavour=flavour, state=BuildState.SUCCEEDED).order_by("-created_at").first()
        )
        if done is not None and _published_files_present(done):
            return done, False
    active = Build.objects.filter(flavour=flavour, state__in=ACTIVE_BUILD_STATES).first()
    if active is not None:
        return active, False
    try:
        with transaction.atomic():
            build = Build.objects.create(
                flavour=flavour,
                created_by=user if getattr(user, "is_authenticated", False) else None,
                attempt=retry_of.attempt + 1 if retry_of else 1,
                retry_of=retry_of,
            )
            versions = (
                ExtensionVersion.objects.filter(flavour_extensions__flavour=flavour)
                .select_related("extension")
                .order_by("extension__name")
            )
            BuildImage.objects.bulk_create(
                BuildImage(build=build, extension_version=v)
                for v in versions
                if v.extension.delivery == Delivery.BAKE
            )
            steps.log(build.pk, f"Build of flavour {flavour.name} ({flavour.pk}) queued.")
            queueing.queue_task("builds.tasks.build_start", str(build.pk))
    except IntegrityError:
        # Lost the race to a concurrent request: the one-active-build constraint chose theirs.
        active = Build.objects.filter(flavour=flavour, state__in=ACTIVE_BUILD_STATES).first()
        if active is None:
            raise
        return active, False
    return build, True


# A succeeded build's files seen in the store this recently are not listed again: repeated
# requests for a cached flavour (a CI pipeline's every run) cost no S3 round trip. A bucket
# wiped within this window hands out links that 404 until it passes.
PRESENCE_RECHECK_SECONDS = 60


def _presence_key(build_id: Any) -> str:
    return f"builds:files-present:{build_id}"


def published_files_seen(build_id: Any) -> None:
    """Note that a build's files are in the store now: the publisher has just read each one back,
    so the first request for the flavour after its build needs no listing either."""
    with contextlib.suppress(Exception):
        cache.set(_presence_key(build_id), True, PRESENCE_RECHECK_SECONDS)


def _published_files_present(build: Build) -> bool:
    """Whether the store still holds every file ``build`` published.

    A succeeded build stands for its artifacts; once some are gone (a wiped bucket, a lifecycle
    rule) a new request must publish them again rather than hand back download links that 404.
    A store that cannot be reached right now proves nothing, so the build is kept.
    """
    from builds.adapters.store import ArtifactStoreError, get_artifact_store

    seen_key = _presence_key(build.pk)
    with contextlib.suppress(Exception):  # the cache only saves a listing; never fail on it
        if cache.get(seen_key):
            return True
    store = get_artifact_store()
    keys = set(build.artifacts.values_list("key", flat=True))
    # One listing per directory, not one request per file, and the listings side by side (each
    # is a round trip to S3).
    directories = sorted({key.rsplit("/", 1)[0] + "/" for key in keys})
    try:
        with ThreadPoolExecutor(max_workers=min(8, len(directories) or 1)) as pool:
            present = {key for listing in pool.map(store.list, directories) for key in listing}
    except ArtifactStoreError:
        return True
    if not keys <= present:
        return False
    with contextlib.suppress(Exception):
        cache.set(seen_key, True, PRESENCE_RECHECK_SECONDS)
    return True


def build_retry(*, build: Build, user: Any) -> tuple[Build, bool]:
    """A new attempt of a failed or cancelled build (its log and steps stay with the old one)."""
    if build.state not in (BuildState.FAILED, BuildState.CANCELLED):
        raise BuildRefused(
            "build.not-retryable",
            f"Only failed or cancelled builds can be retried; this one is {build.state}.",
            status=409,
        )
    return build_request(flavour=build.flavour, user=user, retry_of=build)


def build_cancel(*, build: Build, user: Any) -> Build:
    """Ask a build to stop. A queued build stops at once; a running one at its next checkpoint."""
    with transaction.atomic():
        build = Build.objects.select_for_update().get(pk=build.pk)
        if not build.is_active:
            raise BuildRefused(
                "build.not-cancellable", f"The build has already ended ({build.state}).", status=409
            )
        build.cancel_requested = True
        build.save(update_fields=["cancel_requested"])
        who = getattr(user, "username", "") or "someone"
        steps.log(build.pk, f"Cancel requested by {who}.")
        if build.state == BuildState.QUEUED:
            steps.build_end(
                build, BuildState.CANCELLED, code="build.cancelled", message=f"Cancelled by {who}."
            )
    build.refresh_from_db()
    return build


# --- webhooks -----------------------------------------------------------------------------------


def webhook_create(*, team: Team, user: Any, url: str, secret: str | None = None) -> Webhook:
    """Register ``url`` to receive build events; the secret signs them (generated when omitted)."""
    problem = webhooks.webhook_url_problem(url)
    if problem is not None:
        raise BuildRefused("webhook.refused-url", problem)
    return Webhook.objects.create(
        team=team,
        url=url,
        secret=secret or secrets.token_urlsafe(32),
        created_by=user if getattr(user, "is_authenticated", False) else None,
    )
