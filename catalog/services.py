"""Writes to the catalog: sync of built-in recipes, the approval flow, custom extensions, discovery.

Services are the only catalog code that speaks both languages (models and pipeline objects).
They check roles themselves (``actor``), so pages, the API and tasks share one set of rules;
callers fetch objects through the scoped selectors first, so invisible things are already 404.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from builds.pipeline.errors import BakehouseError, PipelineError
from builds.pipeline.recipe import Recipe, load_recipe, parse_recipe, var_problem
from catalog import discovery, uploads
from catalog.errors import CatalogConflict, CatalogError, CatalogForbidden, CatalogNotFound
from catalog.models import (
    DECIDABLE_STATUSES,
    ApprovalAction,
    ApprovalRecord,
    Extension,
    ExtensionVersion,
    Membership,
    Origin,
    Role,
    Team,
    UploadedArchive,
    UpstreamDigest,
    VersionStatus,
)
from catalog.permissions import require_team_role
from catalog.selectors import version_sort_key
from portal import queueing, read_cache

log = logging.getLogger(__name__)

BUILTIN_RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
BUILTIN_LABEL = "built-in recipe"
DISCOVERY_LABEL = "upstream discovery"
PINNING_LABEL = "digest pinning"


# --------------------------------------------------------------------------------------------
# Extensions from recipes


def _extension_fields(recipe: Recipe, text: str) -> dict[str, Any]:
    """The denormalised columns of an Extension, from its recipe."""
    return {
        "description": recipe.description,
        "homepage": recipe.homepage,
        "category": recipe.category,
        "delivery": recipe.delivery,
        "arches": list(recipe.arches),
        "keywords": list(recipe.keywords),
        "recipe_text": text,
        "recipe_digest": recipe.digest,
        "requires": [list(group) for group in recipe.requires],
        "conflicts": list(recipe.conflicts),
        "replaces_builtin": list(recipe.replaces_builtin),
        "min_flatcar": recipe.min_flatcar or "",
        "minor_pinning": recipe.minor_pinning,
    }


def _record(
    version: ExtensionVersion,
    action: str,
    *,
    actor: Any = None,
    label: str = "",
    reason: str = "",
    proposer: Any = None,
    proposer_label: str = "",
) -> ApprovalRecord:
    return ApprovalRecord.objects.create(
        version=version,
        action=action,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_label=label or (actor.get_username() if actor is not None else "system"),
        proposer=proposer,
        proposer_label=proposer_label,
        reason=reason,
    )


def version_proposer_label(version: ExtensionVersion) -> str:
    """Who proposed ``version``, for the audit trail: a username, or which part of the system.

    Built-in versions (``sync_catalog``) and discovery proposals have no person behind them; they
    are "proposed by the system", so under the two-people rule one curator may approve them.
    """
    if version.proposed_by is not None:
        return str(version.proposed_by.get_username())
    return {"built-in": BUILTIN_LABEL, "discovery": DISCOVERY_LABEL}.get(
        version.proposed_via, "a deleted account"
    )


def two_person_rule(team: Team | None) -> bool:
    """Whether versions of ``team``'s catalog (None: the global one) need two different people."""
    if team is None:
        return bool(settings.GLOBAL_CATALOG_TWO_PERSON_APPROVAL)
    return team.two_person_approval


def _check_not_proposer(version: ExtensionVersion, actor: Any) -> None:
    """The two-people rule: the approver is not the account that proposed the version.

    The proposer is ``proposed_by``, set by every way a person files a version (API, page, a
    team's recipe, an upload; the admin site cannot add versions) and never changed afterwards:
    a version whose pinning failed keeps its proposer (``pin-failed``), and a rejected
    version cannot be proposed again. Versions without a proposer were filed by the system
    (built-in recipes, discovery) or by an account since deleted; either way not by ``actor``.
    """
    team = version.extension.team
    if not two_person_rule(team) or version.proposed_by_id is None:
        return
    if version.proposed_by_id == getattr(actor, "pk", None):
        where = "the global catalog" if team is None else f"team {team.slug}"
        raise CatalogForbidden(
            "approval.same-person",
            f"You proposed {version}, and {where} requires two people: another curator must approve it.",
        )


def _recipe_pins(recipe: Recipe, version: str) -> dict[str, dict[str, str]] | None:
    """arch -> source id -> sha256 when the recipe pins every source of every arch, else None."""
    spec = recipe.versions[version]
    if not recipe.sources:
        return None
    pins: dict[str, dict[str, str]] = {}
    for arch in recipe.arches:
        arch_pins = spec.sha256.get(arch, {})
        if any(source.id not in arch_pins for source in recipe.sources):
            return None
        pins[arch] = dict(arch_pins)
    return pins


def _store_recipe_pins(version: ExtensionVersion, recipe: Recipe, pins: dict[str, dict[str, str]]) -> bool:
    """Write the recipe's pins as UpstreamDigest rows; True when anything changed."""
    wanted = {}
    for arch, per_source in pins.items():
        for source in recipe.resolve(version.version, arch, pins=per_source):
            wanted[(arch, source.id)] = (source.url, per_source[source.id])
    current = {(d.arch, d.source_id): (d.url, d.sha256) for d in version.digests.all()}
    if current == wanted:
        return False
    version.digests.all().delete()
    UpstreamDigest.objects.bulk_create(
        UpstreamDigest(
            version=version, arch=arch, source_id=source_id, url=url, sha256=digest, origin="recipe"
        )
        for (arch, source_id), (url, digest) in sorted(wanted.items())
    )
    read_cache.bump(read_cache.DATA)  # bulk_create sends no signal
    return True


@dataclass
class SyncReport:
    """What ``catalog_sync`` did, per extension name."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated)


class CatalogSyncError(CatalogError):
    """Some recipe files did not load; nothing was written."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        lines = "; ".join(f"{path}: {reason}" for path, reason in errors)
        super().__init__("catalog.invalid-recipes", f"{len(errors)} recipe file(s) did not load: {lines}")


def team_member_set(*, team_slug: str, team_name: str = "", username: str, role: str) -> Membership:
    """Create the team if needed and give ``username`` exactly ``role`` in it (idempotent)."""
    if role not in Role.values:
        raise CatalogError("team.invalid-role", f"role {role!r} is not one of {', '.join(Role.values)}")
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CatalogNotFound("user.not-found", f"No user called {username!r}; create it first.")
    with transaction.atomic():
        team, _ = Team.objects.get_or_create(slug=team_slug, defaults={"name": team_name or team_slug})
        membership, _ = Membership.objects.update_or_create(team=team, user=user, defaults={"role": role})
    return membership


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise CatalogError("team.invalid-role", f"Role {role!r} is not one of {', '.join(Role.values)}.")


def _locked_membership(team: Team, username: str) -> Membership:
    membership = (
        Membership.objects.select_for_update()
        .select_related("user", "team")
        .filter(team=team, user__username=username)
        .first()
    )
    if membership is None:
        raise CatalogNotFound("team.not-member", f"{username!r} is not a member of team {team.slug}.")
    return membership


def _lock_admins(team: Team) -> list[int]:
    """Lock the team's admin rows, always in one order, before any member row is touched: two
    admins demoting each other at once then queue up instead of both succeeding (or deadlocking)."""
    return list(
        Membership.objects.select_for_update()
        .filter(team=team, role=Role.ADMIN)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _check_not_last_admin(membership: Membership, admins: list[int], *, leaving: bool) -> None:
    """Refuse to leave a team without an admin (no one could manage its members any more)."""
    if admins == [membership.pk]:
        what = "remove" if leaving else "change the role of"
        raise CatalogConflict(
            "team.last-admin",
            f"{membership.user.get_username()} is the last admin of team {membership.team.slug}: "
            f"make another member admin before you {what} them.",
        )


def team_member_add(*, team: Team, actor: Any, username: str, role: str = Role.VIEWER) -> Membership:
    """A team admin adds an existing account to the team with ``role``."""
    require_team_role(actor, team, Role.ADMIN, action="add team members")
    _check_role(role)
    username = username.strip()
    user = get_user_model().objects.filter(username=username).first() if username else None
    if user is None:
        raise CatalogError(
            "team.unknown-user",
            f"No account is called {username!r}. Check the spelling, or ask an administrator to "
            "create the account first.",
        )
    try:
        with transaction.atomic():
            membership = Membership.objects.create(team=team, user=user, role=role)
    except IntegrityError:
        raise CatalogConflict(
            "team.already-member", f"{username} is already a member of team {team.slug}."
        ) from None
    log.info("team %s: %s added as %s by %s", team.slug, username, role, actor.get_username())
    return membership


def team_member_change_role(*, team: Team, actor: Any, username: str, role: str) -> Membership:
    """A team admin gives a member another role; the last admin keeps theirs."""
    require_team_role(actor, team, Role.ADMIN, action="change team members' roles")
    _check_role(role)
    with transaction.atomic():
        admins = _lock_admins(team)
        # Again under the lock: another admin may have demoted the actor meanwhile.
        require_team_role(actor, team, Role.ADMIN, action="change team members' roles")
        membership = _locked_membership(team, username)
        if membership.role == role:
            return membership
        _check_not_last_admin(membership, admins, leaving=False)
        membership.role = role
        membership.save(update_fields=["role"])
    log.info("team %s: %s is now %s (by %s)", team.slug, username, role, actor.get_username())
    return membership


def team_member_remove(*, team: Team, actor: Any, username: str) -> None:
    """A team admin removes a member (themselves included, unless they are the last admin)."""
    require_team_role(actor, team, Role.ADMIN, action="remove team members")
    with transaction.atomic():
        admins = _lock_admins(team)
        require_team_role(actor, team, Role.ADMIN, action="remove team members")
        membership = _locked_membership(team, username)
        _check_not_last_admin(membership, admins, leaving=True)
        membership.delete()
    log.info("team %s: %s removed by %s", team.slug, username, actor.get_username())


TEAM_SETTINGS = ("two_person_approval", "private_artifacts")


def team_settings_update(*, team: Team, actor: Any, **changes: bool) -> Team:
    """A team admin switches the team's rules (``TEAM_SETTINGS``); each change is logged."""
    require_team_role(actor, team, Role.ADMIN, action="change the team's settings")
    unknown = set(changes) - set(TEAM_SETTINGS)
    if unknown:
        raise CatalogError("team.invalid-setting", f"Unknown team setting(s): {', '.join(sorted(unknown))}.")
    changed = [name for name, value in changes.items() if getattr(team, name) != bool(value)]
    for name in changed:
        setattr(team, name, bool(changes[name]))
        log.info("team %s: %s set to %s by %s", team.slug, name, changes[name], actor.get_username())
    if changed:
        team.save(update_fields=changed)
    return team


def recipe_relation_problems(recipes: list[tuple[Recipe, str]]) -> list[tuple[str, str]]:
    """(file, reason) for relations naming an extension the catalog does not have.

    The built-in catalog must be closed: ``requires`` and ``conflicts`` name built-in
    extensions, and an extension cannot require something it conflicts with.
    """
    names = {recipe.name for recipe, _ in recipes}
    problems: list[tuple[str, str]] = []
    for recipe, path in recipes:
        for i, group in enumerate(recipe.requires):
            unknown = [name for name in group if name not in names]
            if unknown:
                problems.append((path, f"requires[{i}]: unknown extension(s) {', '.join(unknown)}"))
            if all(name in recipe.conflicts for name in group):
                problems.append((path, f"requires[{i}]: every choice is also listed in conflicts"))
        for name in recipe.conflicts:
            if name not in names:
                problems.append((path, f"conflicts: unknown extension {name}"))
    return problems


def catalog_sync(*, recipes_dir: Path | str = BUILTIN_RECIPES_DIR) -> SyncReport:
    """Load the built-in recipe files into the global catalog, idempotently.

    Every file is loaded first; if any fails, ``CatalogSyncError`` lists them all and nothing is
    written. New versions become ``proposed`` unless the recipe pins every source of every arch,
    in which case they are approved with those pins by the built-in recipe (no user). Versions
    that vanish from a file are kept: flavours may still use them.
    """
    recipes: list[tuple[Recipe, str]] = []
    errors: list[tuple[str, str]] = []
    for path in sorted(Path(recipes_dir).glob("*.yaml")):
        try:
            recipe = load_recipe(path)
        except PipelineError as exc:
            prefix = f"{path}: "
            message = exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message
            errors.append((str(path), message))
            continue
        recipes.append((recipe, path.read_text(encoding="utf-8")))
    if not errors:
        errors = recipe_relation_problems(
            [(recipe, str(Path(recipes_dir) / f"{recipe.name}.yaml")) for recipe, _ in recipes]
        )
    if errors:
        raise CatalogSyncError(errors)

    report = SyncReport()
    with transaction.atomic():
        for recipe, text in recipes:
            outcome = _sync_one(recipe, text)
            getattr(report, outcome).append(recipe.name)
    return report


def _sync_one(recipe: Recipe, text: str) -> str:
    fields = _extension_fields(recipe, text)
    extension = Extension.objects.filter(team__isnull=True, name=recipe.name).first()
    outcome = "unchanged"
    if extension is None:
        extension = Extension.objects.create(name=recipe.name, team=None, origin=Origin.BUILTIN, **fields)
        outcome = "added"
    elif any(getattr(extension, key) != value for key, value in fields.items()):
        for key, value in fields.items():
            setattr(extension, key, value)
        extension.save()
        outcome = "updated"

    existing = {v.version: v for v in extension.versions.prefetch_related("digests")}
    for name, spec in recipe.versions.items():
        version = existing.get(name)
        pins = _recipe_pins(recipe, name)
        if version is None:
            version = ExtensionVersion.objects.create(
                extension=extension,
                version=name,
                proposed_via="built-in",
                vars=dict(spec.vars),
                deprecated=spec.deprecated,
            )
            _record(
                version, ApprovalAction.PROPOSED, label=BUILTIN_LABEL, reason="Listed in the recipe file."
            )
            if pins is not None:
                _approve_with_recipe_pins(version, recipe, pins)
            outcome = "updated" if outcome == "unchanged" else outcome
            continue
        changed = False
        if version.vars != dict(spec.vars):
            version.vars = dict(spec.vars)
            changed = True
        if version.deprecated != spec.deprecated:
            version.deprecated = spec.deprecated
            _record(
                version,
                ApprovalAction.DEPRECATED,
                label=BUILTIN_LABEL,
                reason="Deprecated in the recipe file." if spec.deprecated else "No longer deprecated.",
            )
            changed = True
        if changed:
            version.save(update_fields=["vars", "deprecated"])
        if pins is not None and version.status in (*DECIDABLE_STATUSES, VersionStatus.APPROVED):
            if version.status in DECIDABLE_STATUSES:
                _approve_with_recipe_pins(version, recipe, pins)
                changed = True
            elif _store_recipe_pins(version, recipe, pins):
                _record(
                    version, ApprovalAction.PINNED, label=BUILTIN_LABEL, reason="Pins changed in the recipe."
                )
                changed = True
        if changed and outcome == "unchanged":
            outcome = "updated"
    return outcome


def _approve_with_recipe_pins(
    version: ExtensionVersion, recipe: Recipe, pins: dict[str, dict[str, str]]
) -> None:
    _store_recipe_pins(version, recipe, pins)
    version.status = VersionStatus.APPROVED
    version.decided_by = None
    version.decided_at = timezone.now()
    version.reason = "sha256 pinned in the built-in recipe."
    version.pinning_error = ""
    version.save(update_fields=["status", "decided_by", "decided_at", "reason", "pinning_error"])
    _record(
        version,
        ApprovalAction.APPROVED,
        label=BUILTIN_LABEL,
        reason=version.reason,
        proposer_label=version_proposer_label(version),
    )


# --------------------------------------------------------------------------------------------
# The approval flow


def version_propose(
    *,
    extension: Extension,
    version: str,
    actor: Any = None,
    vars: dict[str, str] | None = None,
    reason: str = "",
    via: str = "user",
) -> ExtensionVersion:
    """File a new version of ``extension`` for a curator to decide on (builder or above).

    The version must fit the recipe: its URLs must fill in for every arch (unknown template
    variables are refused here, not at build time).
    """
    if actor is not None:
        require_team_role(actor, extension.team, Role.BUILDER, action="propose a version")
    if extension.origin == Origin.UPLOAD:
        raise CatalogError(
            "version.upload-only",
            f"{extension.name} is an uploaded extension: upload the new version instead.",
        )
    candidate = ExtensionVersion(extension=extension, version=version, vars=dict(vars or {}))
    _check_version_fits_recipe(candidate)
    try:
        with transaction.atomic():
            candidate.proposed_by = actor if actor is not None and actor.is_authenticated else None
            candidate.proposed_via = via
            candidate.save()
    except IntegrityError:
        raise CatalogConflict(
            "version.exists", f"{extension.name} {version} has already been proposed."
        ) from None
    label = DISCOVERY_LABEL if via == "discovery" else ""
    _record(candidate, ApprovalAction.PROPOSED, actor=actor, label=label, reason=reason)
    return candidate


def _check_version_fits_recipe(version: ExtensionVersion) -> None:
    """Raise CatalogError unless the recipe resolves for this version on every arch."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9.,_+-]{1,128}", version.version):
        raise CatalogError(
            "version.invalid",
            f"{version.version!r} is not a valid version: use letters, digits and . , _ + - only.",
        )
    for key, value in version.vars.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise CatalogError("version.invalid", "vars must map names to strings.")
        problem = var_problem(key, value)
        if problem is not None:
            # Vars land inside the recipe's URLs: a "/" or ".." would point them elsewhere.
            raise CatalogError("recipe.invalid-vars", f"vars.{key}: {problem}")
    try:
        recipe = version.recipe()
        if version.extension.origin != Origin.UPLOAD:
            _refuse_local_files(recipe)
        if recipe.bakeable:
            for arch in recipe.arches:
                recipe.resolve(version.version, arch)
    except PipelineError as exc:
        code = exc.code if exc.code in ("recipe.invalid-vars", "recipe.url-escapes") else "version.invalid"
        raise CatalogError(code, exc.message) from exc
    except KeyError as exc:
        raise CatalogError(
            "version.invalid",
            f"The recipe's URLs need the variable {exc.args[0]!r}; give it as a template variable "
            "('vars' in the API).",
        ) from exc


def version_approve(*, version: ExtensionVersion, actor: Any, reason: str = "") -> ExtensionVersion:
    """A curator approves: the version goes to ``pinning`` and a task fetches and pins digests.

    The task is queued once the transaction commits, so it never sees an uncommitted version.
    Under the team's two-people rule (``two_person_rule``) the proposer cannot approve; the
    audit record names both.
    """
    require_team_role(actor, version.extension.team, Role.CURATOR, action="approve a version")
    # Again at approval: a version row may predate today's rules (vars, local files).
    _check_version_fits_recipe(version)
    with transaction.atomic():
        locked = (
            ExtensionVersion.objects.select_for_update(of=("self",))
            .select_related("extension__team", "proposed_by")
            .get(pk=version.pk)
        )
        if locked.status not in DECIDABLE_STATUSES:
            raise CatalogConflict(
                "version.not-proposed",
                f"{version} is {locked.status}; only proposed versions (or ones whose pinning failed) "
                "can be approved.",
            )
        _check_not_proposer(locked, actor)
        locked.status = VersionStatus.PINNING
        locked.decided_by = actor
        locked.decided_at = timezone.now()
        locked.reason = reason
        locked.pinning_error = ""
        locked.save(update_fields=["status", "decided_by", "decided_at", "reason", "pinning_error"])
        _record(
            locked,
            ApprovalAction.APPROVED,
            actor=actor,
            reason=reason,
            proposer=locked.proposed_by,
            proposer_label=version_proposer_label(locked),
        )

        queueing.queue_task("catalog.pin_version_digests", locked.pk)
    return locked


def version_reject(*, version: ExtensionVersion, actor: Any, reason: str) -> ExtensionVersion:
    """A curator rejects a proposed version, saying why."""
    require_team_role(actor, version.extension.team, Role.CURATOR, action="reject a version")
    if not reason or not reason.strip():
        raise CatalogError("reason.required", "Give a reason to reject the version.")
    with transaction.atomic():
        locked = ExtensionVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status not in DECIDABLE_STATUSES:
            raise CatalogConflict(
                "version.not-proposed",
                f"{version} is {locked.status}; only proposed versions (or ones whose pinning failed) "
                "can be rejected.",
            )
        locked.status = VersionStatus.REJECTED
        locked.decided_by = actor
        locked.decided_at = timezone.now()
        locked.reason = reason.strip()
        locked.save(update_fields=["status", "decided_by", "decided_at", "reason"])
        _record(locked, ApprovalAction.REJECTED, actor=actor, reason=locked.reason)
    return locked


def version_deprecate(
    *, version: ExtensionVersion, actor: Any, reason: str = "", deprecated: bool = True
) -> ExtensionVersion:
    """Stop (or resume) offering a version for new flavours; existing flavours keep building."""
    require_team_role(actor, version.extension.team, Role.CURATOR, action="deprecate a version")
    if version.status != VersionStatus.APPROVED:
        raise CatalogConflict(
            "version.not-approved",
            f"{version} is {version.status}; only approved versions are deprecated or undeprecated.",
        )
    if version.deprecated != deprecated:
        version.deprecated = deprecated
        version.save(update_fields=["deprecated"])
        _record(
            version,
            ApprovalAction.DEPRECATED,
            actor=actor,
            reason=reason or ("Deprecated." if deprecated else "No longer deprecated."),
        )
    return version


def upstream_fetcher(extension: Extension) -> Any:
    """The Fetcher for ``extension``'s sources, on a worker (pinning and builds alike).

    Egress is public addresses only, configured mirrors excepted (builds.pipeline.egress).
    ``file://`` is readable only for an uploaded extension, and only in its own upload directory:
    team and built-in recipes never read local files, even if such a recipe sits in the database.
    """
    from builds.pipeline.fetch import Fetcher

    file_roots = [uploads.archive_dir(extension)] if extension.origin == Origin.UPLOAD else []
    return Fetcher(
        settings.FETCH_CACHE_DIR,
        mirrors=settings.UPSTREAM_MIRRORS,
        max_bytes=settings.UPSTREAM_MAX_BYTES,
        file_roots=file_roots,
    )


def version_pin_digests(*, version_id: int, last_attempt: bool = True) -> ExtensionVersion | None:
    """Fetch every upstream file of an approved version for every arch and pin its sha256.

    On success the version becomes ``approved`` with one UpstreamDigest per (arch, source).
    Transient trouble (an upstream 503 or timeout, a full disk: a retryable ``BakehouseError``)
    is raised while ``last_attempt`` is False, the version staying in ``pinning`` with the error
    noted, so the task retries it: a passing upstream hiccup never undoes a curator's approval.
    A permanent error (a 404, a changed file, a bad recipe), or transient trouble on the last
    attempt, leaves the version ``pin-failed`` with the error recorded, so a curator sees why
    and can approve again. Pins already known (from the recipe or an upload) are enforced, not replaced.
    """
    version = ExtensionVersion.objects.select_related("extension").filter(pk=version_id).first()
    if version is None or version.status != VersionStatus.PINNING:
        return version  # deleted, or a duplicate delivery of the task: nothing to do
    results: list[tuple[str, str, str, str, int]] = []
    try:
        try:
            recipe = version.recipe()
            if recipe.bakeable:
                if version.extension.origin == Origin.UPLOAD:
                    uploaded_archive_materialize(version=version)
                with upstream_fetcher(version.extension) as fetcher:
                    for arch in recipe.arches:
                        for source in recipe.resolve(version.version, arch, pins=version.pins(arch)):
                            fetched = fetcher.fetch(source.url, sha256=source.sha256, label=source.label)
                            results.append((arch, source.id, source.url, fetched.sha256, fetched.size))
        except OSError as exc:
            raise PipelineError("fetch.io-error", f"the worker could not store a download: {exc}") from exc
    except BakehouseError as exc:
        if exc.retryable and not last_attempt:
            _pinning_retrying(version, exc)
            raise
        gave_up = (
            " (gave up after several attempts; approve the version again to retry)" if exc.retryable else ""
        )
        _pinning_failed(version, f"{exc.code}: {exc.message}{gave_up}")
        return version
    except Exception as exc:
        # Never leave a version stuck in "pinning": record the bug for the curator, then raise.
        _pinning_failed(version, f"pinning.internal-error: {type(exc).__name__}: {exc}")
        raise

    with transaction.atomic():
        locked = ExtensionVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != VersionStatus.PINNING:
            return locked
        now = timezone.now()
        known = {(d.arch, d.source_id): d for d in locked.digests.all()}
        for arch, source_id, url, digest, size in results:
            row = known.pop((arch, source_id), None)
            if row is None:
                row = UpstreamDigest(version=locked, arch=arch, source_id=source_id, origin="fetched")
            row.url, row.sha256, row.size, row.fetched_at = url, digest, size, now
            row.save()
        for stale in known.values():
            stale.delete()
        locked.status = VersionStatus.APPROVED
        locked.pinning_error = ""
        locked.save(update_fields=["status", "pinning_error"])
        summary = ", ".join(f"{arch} {source_id} {digest[:12]}" for arch, source_id, _, digest, _ in results)
        _record(locked, ApprovalAction.PINNED, label=PINNING_LABEL, reason=summary or "Nothing to fetch.")
    return locked


def versions_reap_stuck_pinning(*, now: Any = None, timeout: float | None = None) -> list[int]:
    """Mark versions stuck in ``pinning`` (their task lost: broker flushed, worker killed)
    ``pin-failed`` with the error recorded, so a curator sees why and can approve again."""
    timeout = timeout if timeout is not None else settings.CATALOG_PINNING_TIMEOUT
    cutoff = (now or timezone.now()) - timedelta(seconds=timeout)
    stuck = ExtensionVersion.objects.filter(status=VersionStatus.PINNING, decided_at__lt=cutoff)
    reaped = []
    for version in stuck.select_related("extension"):
        _pinning_failed(
            version,
            f"pinning.lost: digest pinning did not finish within {int(timeout // 60)} minutes "
            "(its task was lost); approve the version again to retry.",
        )
        reaped.append(version.pk)
    return reaped


def uploads_requeue_unchecked(*, now: Any = None, after: float | None = None) -> list[int]:
    """Queue the check again of uploads still ``checking`` long after they arrived.

    Their task was lost (broker flushed, never sent while the broker was down); the check is
    idempotent, so a duplicate message of an upload that was merely waiting costs nothing.
    """
    after = after if after is not None else settings.CUSTOM_UPLOAD_REQUEUE_AFTER
    cutoff = (now or timezone.now()) - timedelta(seconds=after)
    stuck = list(
        UploadedArchive.objects.filter(
            state=UploadedArchive.State.CHECKING, uploaded_at__lt=cutoff
        ).values_list("pk", flat=True)
    )
    for upload_id in stuck:
        log.warning("upload %s is still unchecked; queueing its check again", upload_id)
        queueing.queue_task("catalog.check_upload", upload_id)
    return stuck


def _pinning_retrying(version: ExtensionVersion, error: BakehouseError) -> None:
    """Note transient trouble on a version still ``pinning`` (the curator sees why it takes long)."""
    log.warning("pinning %s hit transient trouble, retrying: %s", version, error)
    ExtensionVersion.objects.filter(pk=version.pk, status=VersionStatus.PINNING).update(
        pinning_error=f"{error.code}: {error.message} (retrying)"
    )
    read_cache.bump(read_cache.DATA)  # update() sends no signal


def _pinning_failed(version: ExtensionVersion, error: str) -> None:
    log.warning("pinning %s failed: %s", version, error)
    with transaction.atomic():
        locked = ExtensionVersion.objects.select_for_update().get(pk=version.pk)
        if locked.status != VersionStatus.PINNING:
            return
        locked.status = VersionStatus.PIN_FAILED
        locked.pinning_error = error
        locked.save(update_fields=["status", "pinning_error"])
        _record(locked, ApprovalAction.PIN_FAILED, label=PINNING_LABEL, reason=error)
    version.refresh_from_db()


# --------------------------------------------------------------------------------------------
# Custom extensions


def _check_name_free(team: Team, name: str) -> None:
    # Names are unique across teams: each names a published directory (extensions/NAME/).
    if Extension.objects.filter(name=name).exists():
        raise CatalogConflict(
            "extension.name-taken",
            f"The extension name {name!r} is already taken (names are unique across Bakehouse because "
            "they name the published sysupdate directory); choose another name.",
        )


def _extension_insert(extension: Extension) -> Extension:
    """Save a new extension; a concurrent request that took the name first is a 409, not a 500.

    ``_check_name_free`` cannot see a row another transaction has not committed yet; the unique
    constraint can. The savepoint keeps the caller's transaction usable to answer.
    """
    try:
        with transaction.atomic():
            extension.save(force_insert=True)
    except IntegrityError:
        raise CatalogConflict(
            "extension.name-taken",
            f"The extension name {extension.name!r} was just taken by another request; choose another name.",
        ) from None
    return extension


def extension_create_custom(
    *,
    team: Team,
    actor: Any,
    recipe_text: str | None = None,
    archive: uploads.CustomArchive | None = None,
) -> Extension:
    """Add a team's private extension: a recipe (YAML) or an uploaded archive of files.

    Recipes are validated by the pipeline's loader; their versions are proposed (pins in the
    recipe are enforced when a curator approves). Archives are unpacked by the pipeline's strict
    unpacker into a scratch directory and refused if hostile; see ``catalog.uploads``.
    """
    require_team_role(actor, team, Role.BUILDER, action="add a custom extension")
    if (recipe_text is None) == (archive is None):
        raise CatalogError("extension.invalid", "Send either a recipe or an archive, not both or neither.")
    if recipe_text is not None:
        return _extension_create_from_recipe(team=team, actor=actor, text=recipe_text)
    assert archive is not None
    return _extension_add_upload(team=team, actor=actor, archive=archive)


def _extension_create_from_recipe(*, team: Team, actor: Any, text: str) -> Extension:
    try:
        recipe = parse_recipe(text, source="recipe")
    except PipelineError as exc:
        raise CatalogError(exc.code, exc.message) from exc
    _refuse_local_files(recipe)
    with transaction.atomic():
        _check_name_free(team, recipe.name)
        extension = _extension_insert(
            Extension(
                name=recipe.name,
                team=team,
                origin=Origin.RECIPE,
                created_by=actor,
                **_extension_fields(recipe, text),
            )
        )
        for name, spec in recipe.versions.items():
            version = ExtensionVersion.objects.create(
                extension=extension,
                version=name,
                proposed_by=actor,
                proposed_via="user",
                vars=dict(spec.vars),
                deprecated=spec.deprecated,
            )
            _record(version, ApprovalAction.PROPOSED, actor=actor, reason="Listed in the team's recipe.")
    return extension


def _refuse_local_files(recipe: Recipe) -> None:
    """Team recipes download over http(s) only; ``file://`` would read the worker's own disk."""
    if recipe.local_file_urls:
        raise CatalogError(
            "recipe.local-file",
            f"{recipe.local_file_urls[0]!r}: recipes must download over http:// or https://; "
            "file:// URLs would read the build worker's own files. To ship your own files, "
            "upload an archive instead.",
        )


def _extension_add_upload(*, team: Team, actor: Any, archive: uploads.CustomArchive) -> Extension:
    """Keep the archive and queue its check; the new version is ``checking`` until a worker has
    unpacked it (``uploaded_archive_check``). Nothing is unpacked in the web request."""
    checked = uploads.validate_archive(archive)
    with transaction.atomic():
        extension = Extension.objects.filter(team=team, name=archive.name).first()
        is_new = extension is None
        if extension is None:
            _check_name_free(team, archive.name)
            extension = Extension(name=archive.name, team=team, origin=Origin.UPLOAD, created_by=actor)
        elif extension.origin != Origin.UPLOAD:
            raise CatalogConflict(
                "extension.name-taken",
                f"{archive.name!r} is a recipe extension of team {team.slug}; "
                "choose another name for the upload.",
            )
        else:
            previous = (
                UploadedArchive.objects.filter(version__extension=extension)
                .exclude(state=UploadedArchive.State.REFUSED)
                .first()
            )
            if previous is not None and previous.kind != checked.kind:
                raise CatalogError(
                    "upload.kind-changed",
                    f"Earlier versions of {archive.name} were uploaded as {previous.kind}; upload a "
                    f"{previous.kind} archive.",
                )
            # A refused upload of this version may be replaced by a new one.
            extension.versions.filter(
                version=archive.version, upload__state=UploadedArchive.State.REFUSED
            ).delete()
            if extension.versions.filter(version=archive.version).exists():
                raise CatalogConflict(
                    "version.exists", f"{archive.name} {archive.version} was already uploaded."
                )
        extension.description = archive.description or extension.description
        extension.category = archive.category
        extension.arches = list(archive.arches)
        extension.delivery = "bake"
        extension.recipe_text = "# generated on upload; replaced below\n"
        extension.recipe_digest = ""
        if is_new:
            _extension_insert(extension)
        else:
            extension.save()
        version = ExtensionVersion.objects.create(
            extension=extension,
            version=archive.version,
            proposed_by=actor,
            proposed_via="upload",
            status=VersionStatus.CHECKING,
        )
        upload = UploadedArchive.objects.create(
            version=version,
            file_name=archive.file_name,
            kind=checked.kind,
            sha256=checked.sha256,
            size=checked.size,
            data=archive.data,
            uploaded_by=actor,
        )
        _upload_recipe_render(extension)
        recipe = extension.recipe()
        for arch in recipe.arches:
            for source in recipe.resolve(version.version, arch):
                UpstreamDigest.objects.create(
                    version=version,
                    arch=arch,
                    source_id=source.id,
                    url=source.url,
                    sha256=checked.sha256,
                    size=checked.size,
                    origin="upload",
                    fetched_at=timezone.now(),
                )
        upload_id = upload.pk
        queueing.queue_task("catalog.check_upload", upload_id)
    return extension


def _upload_recipe_render(extension: Extension) -> None:
    extension.recipe_text = uploads.render_upload_recipe(extension)
    extension.recipe_digest = hashlib.sha256(extension.recipe_text.encode()).hexdigest()
    extension.save(update_fields=["recipe_text", "recipe_digest"])


def uploaded_archive_check(*, upload_id: int) -> UploadedArchive | None:
    """Unpack a ``checking`` upload within its budgets (a worker runs this, never the web).

    The version becomes proposed, or rejected with the refusal's code and sentence, which the
    API and the extension page show. Infrastructure trouble (a full disk) propagates: the task
    is retried and the upload stays ``checking``.
    """
    upload = (
        UploadedArchive.objects.select_related("version__extension", "uploaded_by")
        .filter(pk=upload_id, state=UploadedArchive.State.CHECKING)
        .first()
    )
    if upload is None:
        return None
    refusal: CatalogError | None = None
    try:
        uploads.check_archive_contents(
            bytes(upload.data), upload.kind, upload.file_name, upload.version.extension.arches
        )
    except CatalogError as exc:
        if not exc.is_users_fault:
            raise  # infrastructure trouble never rejects a team's upload: the check runs again
        refusal = exc
    now = timezone.now()
    with transaction.atomic():
        if not UploadedArchive.objects.filter(pk=upload.pk, state=UploadedArchive.State.CHECKING).exists():
            return upload  # checked by another delivery of the task meanwhile
        version = ExtensionVersion.objects.select_for_update().get(pk=upload.version_id)
        upload.checked_at = now
        if refusal is None:
            upload.state = UploadedArchive.State.READY
            version.status = VersionStatus.PROPOSED
            version.save(update_fields=["status"])
            _record(
                version,
                ApprovalAction.PROPOSED,
                actor=upload.uploaded_by,
                reason=f"Uploaded {upload.file_name} ({upload.size} bytes, sha256 {upload.sha256}).",
            )
        else:
            upload.state = UploadedArchive.State.REFUSED
            upload.error_code = refusal.code[:100]
            upload.error_message = refusal.message
            version.status = VersionStatus.REJECTED
            version.decided_at = now
            version.reason = f"The uploaded archive was refused ({refusal.code}): {refusal.message}"
            version.save(update_fields=["status", "decided_at", "reason"])
            _record(version, ApprovalAction.REJECTED, reason=version.reason)
        upload.save(update_fields=["state", "error_code", "error_message", "checked_at"])
        _upload_recipe_render(version.extension)
    return upload


def uploaded_archive_materialize(*, version: ExtensionVersion) -> Path:
    """Write an uploaded version's archive where its recipe's ``file://`` URL points.

    Builds call this before fetching an uploaded extension's sources, so any worker host with
    database access can bake it; the fetcher then verifies the pinned sha256 as for any upstream.
    """
    upload = UploadedArchive.objects.get(version=version)
    return uploads.write_archive(
        uploads.archive_path(version.extension, version.version, upload.kind), upload
    )


# --------------------------------------------------------------------------------------------
# Upstream discovery


@dataclass
class DiscoveryReport:
    proposed: list[str] = field(default_factory=list)  # "name version"
    errors: list[str] = field(default_factory=list)


def upstream_discover(
    *, api_url: str | None = None, extensions: Iterable[Extension] | None = None, max_pages: int = 10
) -> DiscoveryReport:
    """List new GitHub releases of recipe extensions and file proposals (never approvals).

    Only releases newer than the newest known version are proposed, so a first run does not
    flood curators with history; drafts and prereleases are skipped. A new version copies the
    template ``vars`` of the newest known one (e.g. wasmcloud's nats version); the curator checks
    them before approving.
    """
    base = (api_url or settings.GITHUB_API_URL).rstrip("/")
    report = DiscoveryReport()
    candidates = extensions if extensions is not None else Extension.objects.exclude(origin=Origin.UPLOAD)
    for extension in candidates:
        try:
            recipe = extension.recipe()
        except PipelineError as exc:
            report.errors.append(f"{extension.name}: {exc.message}")
            continue
        source = discovery.github_source(recipe)
        if source is None:
            continue
        known = list(extension.versions.values_list("version", "vars"))
        if not known:
            continue
        newest_version, newest_vars = max(known, key=lambda item: version_sort_key(item[0]))
        seen = {v for v, _ in known}
        prefixed = all(v.startswith("v") for v, _ in known)
        try:
            tags = discovery.list_release_tags(base, source.owner, source.repo, max_pages=max_pages)
        except discovery.DiscoveryError as exc:
            report.errors.append(f"{extension.name}: {exc}")
            continue
        for tag in tags:
            version = source.version_from_tag(tag, v_prefixed=prefixed)
            if version is None or version in seen:
                continue
            if version_sort_key(version) <= version_sort_key(newest_version):
                continue
            seen.add(version)
            try:
                version_propose(
                    extension=extension,
                    version=version,
                    actor=None,
                    vars=dict(newest_vars or {}),
                    via="discovery",
                    reason=f"GitHub release {tag} of {source.owner}/{source.repo}; vars copied from "
                    f"{newest_version}.",
                )
            except CatalogError as exc:
                report.errors.append(f"{extension.name} {version}: {exc.message}")
                continue
            report.proposed.append(f"{extension.name} {version}")
    return report


__all__ = [
    "CatalogSyncError",
    "DiscoveryReport",
    "SyncReport",
    "catalog_sync",
    "extension_create_custom",
    "team_settings_update",
    "two_person_rule",
    "uploaded_archive_check",
    "uploaded_archive_materialize",
    "uploads_requeue_unchecked",
    "upstream_discover",
    "upstream_fetcher",
    "version_approve",
    "version_deprecate",
    "version_pin_digests",
    "version_propose",
    "version_reject",
]
