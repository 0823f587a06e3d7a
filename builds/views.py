"""Pages and downloads of the builds app."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from builds import build_report, selectors, services
from builds.access import (
    artifact_url_for,
    flavour_is_private,
    flavour_token_rotate,
    public_read_allowed,
    token_read_allowed,
)
from builds.adapters.store import ArtifactNotFound, ArtifactStoreError, get_artifact_store
from builds.compare import flavour_compare
from builds.flavours import MAX_FRAGMENT_BYTES, FlavourInvalid, flavour_choices_resolve, fragment_problems
from builds.forms import (
    CHANNELS,
    EXTENSION_PREFIX,
    STEP1_FIELDS,
    STEP3_FIELDS,
    ComposerState,
    OptionsForm,
    TargetForm,
    TeamSettingsForm,
    WebhookForm,
    error_place,
    extension_rows,
    flavour_state,
    options_initial,
    relation_hints,
)
from builds.models import Arch, ArtifactKind, Build, BuildImage, BuildState, Flavour
from builds.pipeline.errors import PipelineError
from builds.pipeline.vocabulary import DEFAULT_ARCH, DEFAULT_CHANNEL
from builds.preview import PREVIEW_HASH_NOTE, PREVIEW_KEYRING_NOTE, ButanePreview, flavour_preview_butane
from builds.published import VERIFY_COMMAND, flavour_published_text, published_directories
from catalog import services as catalog_services
from catalog.errors import CatalogError
from catalog.forms import TeamMemberAddForm, TeamMemberRoleForm
from catalog.models import Delivery, Extension, ExtensionVersion, Role, Team
from catalog.permissions import has_team_role
from catalog.selectors import extensions_visible_to, versions_usable_for_new_flavours


@require_safe
def artifact_download(request: HttpRequest, key: str) -> HttpResponseBase:
    """``/artifacts/KEY``: published objects by plain GET, for nodes and systemd-sysupdate.

    No authentication: this is the public prefix that ``PUBLIC_BASE_URL`` points at by default,
    and sysupdate appends file names to it. Keys are checked by the store (no ``..``, no hidden
    segments), so nothing outside the published tree can be reached. Private artifacts
    (``builds.access``) are served here only to signed-in members of their team; anyone else gets
    the 404 of a missing key, so their names do not leak.
    """
    if not public_read_allowed(request.user, key):
        raise Http404("No such artifact.")
    return _serve_artifact(key)


@require_safe
def artifact_download_private(request: HttpRequest, token: str, key: str) -> HttpResponseBase:
    """``/artifacts/private/TOKEN/KEY``: a private flavour's artifacts, for nodes holding its token.

    A wrong, rotated or other flavour's token is a 404 like a missing key.
    """
    if not token_read_allowed(token, key):
        raise Http404("No such artifact.")
    response = _serve_artifact(key)
    response["Cache-Control"] = "private, " + response["Cache-Control"]
    response["Referrer-Policy"] = "no-referrer"
    return response


def _serve_artifact(key: str) -> HttpResponseBase:
    store = get_artifact_store()
    try:
        stored = store.stat(key)
        if stored is None:
            raise Http404("No such artifact.")
        stream = store.open(key)
    except (ArtifactNotFound, ArtifactStoreError) as exc:
        if isinstance(exc, ArtifactNotFound) or exc.code == "store.invalid-key":
            raise Http404("No such artifact.") from None
        # The store is down (S3 unreachable): a node should retry later, not see a server bug.
        return HttpResponse(exc.message, status=503, content_type="text/plain; charset=utf-8")
    response = FileResponse(stream, content_type=stored.content_type)
    response["Content-Length"] = str(stored.size)
    response["X-Content-Type-Options"] = "nosniff"
    # Published names are immutable except the listings, which change when a version is added.
    response["Cache-Control"] = (
        "no-cache" if key.rsplit("/", 1)[-1].startswith("SHA256SUMS") else "max-age=300"
    )
    return response


# --- pages ----------------------------------------------------------------------------------------
# Reads go through builds.selectors / catalog.selectors, writes through builds.services; the
# flavour rules live in builds.flavours. Another team's flavour or build is a 404, as in the API.

STEPS = (
    (1, "builds:compose-target", "Target"),
    (2, "builds:compose-extensions", "Extensions"),
    (3, "builds:compose-options", "Options"),
    (4, "builds:compose-review", "Review"),
)


def _step_links(state: ComposerState, current: int) -> list[dict[str, Any]]:
    query = state.urlencode()
    return [
        {"number": n, "label": label, "url": f"{reverse(name)}?{query}", "current": n == current}
        for n, name, label in STEPS
    ]


def _builder_teams(user: Any) -> list[Team]:
    return list(selectors.teams_where_user_is(user=user, at_least=Role.BUILDER).order_by("name"))


def _state_team(request: HttpRequest, state: ComposerState) -> Team | None:
    return next((t for t in _builder_teams(request.user) if t.slug == state.team), None)


def _redirect_to_step(number: int, state: ComposerState) -> HttpResponse:
    name = next(n for step, n, _ in STEPS if step == number)
    return redirect(f"{reverse(name)}?{state.urlencode()}")


def _no_team_page(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "error.html",
        {
            "title": "No team to build in",
            "message": "Composing a flavour needs the builder role in a team; ask a team admin to add you.",
        },
        status=403,
    )


def _flavour_problems(state: ComposerState, team: Team) -> dict[str, list[str]]:
    """Every problem ``builds.flavours`` finds with the state (empty when it would be accepted)."""
    try:
        flavour_choices_resolve(
            team=team, previous=_previous_versions(state, team), **state.flavour_arguments()
        )
    except FlavourInvalid as invalid:
        return invalid.errors
    return {}


def _previous_versions(state: ComposerState, team: Team) -> list[ExtensionVersion]:
    flavour = _revision_of(state, team)
    return list(flavour.extension_versions.all()) if flavour else []


def _revision_of(state: ComposerState, team: Team) -> Flavour | None:
    flavour_id = state.get("revision_of")
    if not flavour_id:
        return None
    return Flavour.objects.filter(pk=flavour_id, team=team).first()


def _errors_for_step(problems: dict[str, list[str]], step: int) -> dict[str, list[str]]:
    """The problems that belong to ``step``, keyed by the form field ('' for the step itself)."""
    found: dict[str, list[str]] = {}
    for key, reasons in problems.items():
        where, field = error_place(key)
        if where == step:
            found.setdefault(field, []).extend(reasons)
    return found


def _attach(form: forms.Form, errors: dict[str, list[str]]) -> None:
    for field, reasons in errors.items():
        for reason in reasons:
            form.add_error(field if field in form.fields else None, reason)


@login_required
@require_safe
def compose_target(request: HttpRequest) -> HttpResponse:
    """Step 1: team, name, arch and Flatcar channel."""
    teams = _builder_teams(request.user)
    if not teams:
        return _no_team_page(request)
    state = ComposerState.from_request_data(request.GET)
    if "go" in request.GET:
        form = TargetForm(request.GET, teams=teams)
        if form.is_valid():
            return _redirect_to_step(2, state)
    else:
        initial = {
            "team": state.team or teams[0].slug,
            "arch": state.arch or DEFAULT_ARCH,
            "channel": state.channel,
            "butane": state.get("butane"),
        }
        initial.update({f: state.get(f) for f in ("name", "description") if state.get(f)})
        form = TargetForm(initial=initial, teams=teams)
    context = {
        "form": form,
        "steps": _step_links(state, 1),
        "hidden": state.hidden_pairs(STEP1_FIELDS),
        "revision_of": state.get("revision_of"),
    }
    return render(request, "builds/compose_target.html", context)


@login_required
@require_safe
def compose_extensions(request: HttpRequest) -> HttpResponse:
    """Step 2: one version per extension, with requires/conflicts hints as you pick."""
    state = ComposerState.from_request_data(request.GET)
    team = _state_team(request, state)
    if team is None or state.arch not in Arch.values:
        messages.info(request, "Choose a team and an architecture first.")
        return _redirect_to_step(1, state)
    usable = versions_usable_for_new_flavours(request.user, team=team, arch=state.arch)
    # A flavour being revised may keep the deprecated versions it already had.
    kept = [v for v in _previous_versions(state, team) if v.deprecated and state.arch in v.extension.arches]
    rows = extension_rows([*usable, *kept], state.picks)
    step_errors: dict[str, list[str]] = {}
    if "go" in request.GET:
        step_errors = _errors_for_step(_flavour_problems(state, team), 2)
        if not step_errors:
            return _redirect_to_step(3, state)
    others = (
        extensions_visible_to(request.user, team=team)
        .exclude(pk__in=[row.extension.pk for row in rows])
        .prefetch_related("versions")
    )
    unavailable = [
        e for e in others if e.delivery == Delivery.SOURCE_BUILD_REQUIRED or state.arch not in e.arches
    ]
    context = {
        "state": state,
        "team": team,
        "rows": rows,
        "hints": relation_hints(rows, state, step_url=reverse("builds:compose-extensions")),
        "unavailable": unavailable,
        "unapproved": _unapproved_extensions(request.user, [e for e in others if e not in unavailable]),
        "errors": [reason for reasons in step_errors.values() for reason in reasons],
        "steps": _step_links(state, 2),
        # Picks the list cannot show stay in the form, so that Next reports them instead of dropping them.
        "hidden": state.hidden_pairs((), own_extensions=True)
        + [
            (EXTENSION_PREFIX + n, v)
            for n, v in state.picks.items()
            if n not in {r.extension.name for r in rows}
        ],
        "relations_json": {
            row.extension.name: {
                "requires": row.extension.requires,
                "conflicts": row.extension.conflicts,
                "latest": row.versions[0].version,
                "replaces": row.extension.replaces_builtin,
                "min_flatcar": row.extension.min_flatcar if state.channel == "lts" else "",
            }
            for row in rows
        },
    }
    return render(request, "builds/compose_extensions.html", context)


def _unapproved_extensions(user: Any, extensions: list[Extension]) -> list[dict[str, Any]]:
    """Extensions the composer cannot offer only because no version is approved yet, grouped by
    who approves them (Django staff for the global catalog, a team's curators for its own), with
    a link to the review of the newest undecided version for those who can."""
    from catalog.views import extension_url

    groups: dict[Team | None, dict[str, Any]] = {}
    for extension in extensions:
        team = extension.team
        group = groups.get(team)
        if group is None:
            group = groups[team] = {
                "approvers": "Django staff (the global catalog's curators)"
                if team is None
                else f"The curators of team {team.name}",
                "can_approve": has_team_role(user, team, Role.CURATOR),
                "rows": [],
            }
        versions = extension.newest_versions()
        decidable = next((v for v in versions if v.decidable), None)
        current = decidable or (versions[0] if versions else None)
        link = extension_url(extension)
        if group["can_approve"] and decidable is not None:
            link = reverse("catalog:version-review", args=[decidable.pk])
        group["rows"].append(
            {
                "extension": extension,
                "status": f"{current.version} {current.status_text}"
                if current
                else "no version proposed yet",
                "version": decidable,
                "link": link,
            }
        )
    return sorted(groups.values(), key=lambda g: (not g["can_approve"], g["approvers"]))


@login_required
@require_safe
def compose_options(request: HttpRequest) -> HttpResponse:
    """Step 3: updates, signing, SSH keys, hostname and a Butane fragment checked inline."""
    state = ComposerState.from_request_data(request.GET)
    team = _state_team(request, state)
    if team is None or state.arch not in Arch.values:
        return _redirect_to_step(1, state)
    if "go" in request.GET:
        form = OptionsForm(request.GET)
        if form.is_valid():
            problems = _flavour_problems(state, team)
            _attach(form, _errors_for_step(problems, 3))
            if form.is_valid():
                return _redirect_to_step(4, state)
    else:
        form = OptionsForm(initial=options_initial(state))
    context = {
        "form": form,
        "state": state,
        "butane_version": state.butane_version,
        "steps": _step_links(state, 3),
        "hidden": state.hidden_pairs(STEP3_FIELDS),
        "replaced": sorted(
            {
                name
                for version in versions_usable_for_new_flavours(request.user, team=team)
                if version.extension.name in state.picks
                for name in version.extension.replaces_builtin
            }
        ),
    }
    return render(request, "builds/compose_options.html", context)


@login_required
@require_safe
def compose_review(request: HttpRequest) -> HttpResponse:
    """Step 4: the flavour ID, the Butane it will publish, and the Build button."""
    state = ComposerState.from_request_data(request.GET)
    team = _state_team(request, state)
    if team is None:
        return _redirect_to_step(1, state)
    problems: dict[int, list[str]] = {}
    choices = None
    try:
        choices = flavour_choices_resolve(
            team=team, previous=_previous_versions(state, team), **state.flavour_arguments()
        )
    except FlavourInvalid as invalid:
        for key, reasons in invalid.errors.items():
            problems.setdefault(error_place(key)[0], []).extend(reasons)
    existing = Flavour.objects.filter(pk=choices.flavour_id()).first() if choices else None
    butane, preview, butane_problem = flavour_butane_preview(choices, existing) if choices else ("", None, "")
    context = {
        "state": state,
        "team": team,
        "choices": choices,
        "flavour_id": choices.flavour_id() if choices else "",
        "document": json.dumps(choices.document(), indent=2, sort_keys=True) if choices else "",
        "butane": butane,
        "preview": preview,
        "butane_problem": butane_problem,
        "preview_hash_note": PREVIEW_HASH_NOTE,
        "preview_keyring_note": PREVIEW_KEYRING_NOTE,
        "existing": existing,
        "problems": [
            (n, label, f"{reverse(name)}?{state.urlencode()}", problems[n])
            for n, name, label in STEPS
            if n in problems
        ],
        "steps": _step_links(state, 4),
        "hidden": state.hidden_pairs(()),
    }
    return render(request, "builds/compose_review.html", context)


@login_required
@require_POST
def compose_build(request: HttpRequest) -> HttpResponse:
    """Store the flavour (same choices, same ID) and start its build, then show the build."""
    state = ComposerState.from_request_data(request.POST)
    team = _state_team(request, state)
    if team is None:
        return _no_team_page(request)
    try:
        flavour, _created = services.flavour_create(
            user=request.user, team=team, revision_of=_revision_of(state, team), **state.flavour_arguments()
        )
        build, created = services.build_request(flavour=flavour, user=request.user)
    except FlavourInvalid:
        messages.error(request, "The flavour has problems; fix them before building.")
        return _redirect_to_step(4, state)
    if not created and build.state == BuildState.SUCCEEDED:
        messages.info(request, "This flavour is already built: the same choices give the same artifacts.")
        return redirect("builds:flavour-detail", flavour.pk)
    return redirect("builds:build-detail", build.pk)


@login_required
@require_POST
def compose_check_fragment(request: HttpRequest) -> JsonResponse:
    """Inline validation of the Butane fragment as the user types (JSON for the options step)."""
    fragment = request.POST.get("fragment", "")
    version = CHANNELS.get(request.POST.get("channel", ""), CHANNELS[DEFAULT_CHANNEL])[1]
    if len(fragment.encode("utf-8")) > MAX_FRAGMENT_BYTES:
        return JsonResponse({"problems": [f"The fragment is larger than {MAX_FRAGMENT_BYTES} bytes."]})
    problems = [str(problem) for problem in fragment_problems(fragment, version)] if fragment.strip() else []
    return JsonResponse({"problems": problems, "butane_version": version})


def _latest_artifact_text(flavour: Flavour, kind: str) -> str:
    """The text of the flavour's latest successfully published ``kind`` artifact ('' if none)."""
    return flavour_published_text(flavour, kind)


def flavour_butane_preview(
    choices: Any, existing: Flavour | None = None
) -> tuple[str, ButanePreview | None, str]:
    """The Butane a review shows, as (text, preview, problem).

    The published file when these choices were already built (preview None); otherwise a preview
    rendered from the choices, with placeholders for what only a build fills in.
    """
    published = _latest_artifact_text(existing, ArtifactKind.BUTANE) if existing else ""
    if published:
        return published, None, ""
    try:
        preview = flavour_preview_butane(choices=choices)
    except PipelineError as refused:
        return "", None, refused.message
    return preview.text, preview, ""


# --- builds -------------------------------------------------------------------------------------


def _visible_build(request: HttpRequest, build_id: Any) -> Build:
    images = BuildImage.objects.select_related("extension_version__extension", "image").order_by(
        "extension_version__extension__name"
    )
    queryset = selectors.builds_visible_to(user=request.user).prefetch_related(
        "steps", "artifacts", Prefetch("images", queryset=images)
    )
    return get_object_or_404(queryset, pk=build_id)


@login_required
@require_safe
def build_detail(request: HttpRequest, build_id: Any) -> HttpResponse:
    """State, queue estimate, success or failure banner, steps per extension and for the flavour
    with their logs (builds.build_report); live with JS (static/js/build.js), complete without."""
    build = _visible_build(request, build_id)
    log_lines = list(selectors.build_log_lines(build=build, limit=5000))
    can_build = has_team_role(request.user, build.flavour.team, Role.BUILDER)
    report = build_report.report_context(build, can_build=can_build)
    lines_by_step: dict[int | None, list[Any]] = {}
    for line in log_lines:
        lines_by_step.setdefault(line.step_id, []).append(line)
    shown_steps = {step.pk for group in report["groups"] for step in group.steps}
    context = {
        "build": build,
        "flavour": build.flavour,
        # Each group's steps with how long each took and the log lines it wrote.
        "groups": [
            (
                group,
                build_report.duration_text(group.duration_seconds),
                [
                    (
                        step,
                        build_report.duration_text(build_report.step_duration_seconds(step)),
                        lines_by_step.get(step.pk, []),
                    )
                    for step in group.steps
                ],
            )
            for group in report["groups"]
        ],
        # Lines of no step (queued, cancel requested, the end), and of any step not shown.
        "build_lines": [line for line in log_lines if line.step_id not in shown_steps],
        "total": build_report.duration_text(report["duration_seconds"]),
        "queued_for": build_report.duration_text(report["queued_seconds"]),
        "queue": report["queue"],
        "failure": report["failure"],
        "install_command": report["install_command"],
        "images": build.images.all(),
        "artifacts": build.artifacts.all(),
        "log_after": log_lines[-1].seq if log_lines else 0,
        "can_build": can_build,
        "retries": build.retries.order_by("-created_at"),
    }
    return render(request, "builds/build_detail.html", context)


@login_required
@require_POST
def build_cancel(request: HttpRequest, build_id: Any) -> HttpResponse:
    build = _visible_build(request, build_id)
    if not has_team_role(request.user, build.flavour.team, Role.BUILDER):
        return _forbidden(request, "cancel builds", build.flavour.team)
    try:
        services.build_cancel(build=build, user=request.user)
    except services.BuildRefused as refused:
        messages.error(request, refused.message)
    else:
        messages.success(request, "Cancel requested: the build stops at its next checkpoint.")
    return redirect("builds:build-detail", build.pk)


@login_required
@require_POST
def build_retry(request: HttpRequest, build_id: Any) -> HttpResponse:
    build = _visible_build(request, build_id)
    if not has_team_role(request.user, build.flavour.team, Role.BUILDER):
        return _forbidden(request, "retry builds", build.flavour.team)
    try:
        retried, _created = services.build_retry(build=build, user=request.user)
    except services.BuildRefused as refused:
        messages.error(request, refused.message)
        return redirect("builds:build-detail", build.pk)
    return redirect("builds:build-detail", retried.pk)


def _forbidden(request: HttpRequest, action: str, team: Team) -> HttpResponse:
    message = f"To {action} you need the builder role in team {team.name}."
    return render(request, "error.html", {"title": "Not allowed", "message": message}, status=403)


# --- flavours -----------------------------------------------------------------------------------


@login_required
@require_safe
def flavour_list(request: HttpRequest) -> HttpResponse:
    flavours = selectors.flavours_visible_to(user=request.user).prefetch_related(
        "extension_versions__extension"
    )
    return render(request, "builds/flavour_list.html", {"flavours": flavours.order_by("-created_at")})


@login_required
@require_safe
def flavour_detail(request: HttpRequest, flavour_id: str) -> HttpResponse:
    """Downloads with what verifies each, the install command, the Butane and Ignition, revisions."""
    flavour = get_object_or_404(selectors.flavours_visible_to(user=request.user), pk=flavour_id)
    latest = selectors.flavour_latest_build(flavour=flavour, state=BuildState.SUCCEEDED)
    artifacts = list(latest.artifacts.all()) if latest else []
    node_url = artifact_url_for(flavour)  # token URLs for a private flavour
    directories = published_directories(artifacts, node_url)
    ignition = _latest_artifact_text(flavour, ArtifactKind.IGNITION)
    context = {
        "flavour": flavour,
        "private": flavour_is_private(flavour),
        "options": services.flavour_options(flavour),
        "versions": flavour.extension_versions.select_related("extension").order_by("extension__name"),
        "latest": latest,
        "directories": directories,
        "verify_command": VERIFY_COMMAND,
        "butane": _latest_artifact_text(flavour, ArtifactKind.BUTANE),
        "ignition": _pretty_json(ignition),
        "ignition_url": next((node_url(a.key) for a in artifacts if a.kind == ArtifactKind.IGNITION), ""),
        "builds": flavour.builds.order_by("-created_at")[:20],
        "revisions": _revisions(flavour),
        "can_build": has_team_role(request.user, flavour.team, Role.BUILDER),
        "edit_query": flavour_state(flavour).urlencode(),
        "document": json.dumps(json.loads(flavour.canonical), indent=2, sort_keys=True),
    }
    return render(request, "builds/flavour_detail.html", context)


def _revisions(flavour: Flavour) -> Any:
    return (
        Flavour.objects.filter(lineage=flavour.lineage, team=flavour.team)
        .prefetch_related("builds")
        .order_by("-revision", "-created_at")
    )


def _pretty_json(text: str) -> str:
    """Published Ignition is compact JSON; people read it indented (the file stays as published)."""
    try:
        return json.dumps(json.loads(text), indent=2)
    except ValueError:
        return text


@login_required
@require_safe
def flavour_compare_page(request: HttpRequest, flavour_id: str) -> HttpResponse:
    """What changed from ``?base=`` (by default the revision this one was made from) to this flavour."""
    visible = selectors.flavours_visible_to(user=request.user)
    flavour = get_object_or_404(visible, pk=flavour_id)
    base_id = request.GET.get("base") or flavour.revision_of_id or ""
    base = visible.filter(pk=base_id).first() if base_id else None
    context = {
        "flavour": flavour,
        "revisions": [r for r in _revisions(flavour) if r.pk != flavour.pk],
        "base_id": base_id,
        "unknown_base": bool(request.GET.get("base")) and base is None,
        "comparison": flavour_compare(old=base, new=flavour) if base is not None else None,
    }
    return render(request, "builds/flavour_compare.html", context)


@login_required
@require_POST
def flavour_build(request: HttpRequest, flavour_id: str) -> HttpResponse:
    flavour = get_object_or_404(selectors.flavours_visible_to(user=request.user), pk=flavour_id)
    if not has_team_role(request.user, flavour.team, Role.BUILDER):
        return _forbidden(request, "start builds", flavour.team)
    build, _created = services.build_request(flavour=flavour, user=request.user)
    return redirect("builds:build-detail", build.pk)


@login_required
@require_POST
def flavour_rotate_token(request: HttpRequest, flavour_id: str) -> HttpResponse:
    """Replace a private flavour's token; its files are published again with the new one."""
    flavour = get_object_or_404(selectors.flavours_visible_to(user=request.user), pk=flavour_id)
    try:
        _token, build = flavour_token_rotate(flavour=flavour, user=request.user)
    except services.BuildRefused as refused:
        if refused.status == 403:
            return _forbidden(request, "rotate the token", flavour.team)
        messages.error(request, refused.message)
        return redirect("builds:flavour-detail", flavour.pk)
    messages.success(
        request,
        "Token rotated: the old URLs no longer work. The flavour's files are being published again "
        "with the new one; provision nodes (or update their transfer files) from them.",
    )
    return redirect("builds:build-detail", build.pk)


# --- teams --------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def team_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """Members and their roles, settings and webhooks: every member reads them, admins change them."""
    team = get_object_or_404(selectors.teams_where_user_is(user=request.user), slug=slug)
    is_admin = has_team_role(request.user, team, Role.ADMIN)
    member_action = request.POST.get("member_action") if request.method == "POST" else None
    member_form = TeamMemberAddForm(request.POST if member_action == "add" else None)
    form = WebhookForm(request.POST if request.method == "POST" and not member_action else None)
    new_secret = ""
    if request.method == "POST":
        if not is_admin:
            return _forbidden_admin(request, team)
        if member_action:
            done = _team_member_change(request, team, member_action, member_form)
            if done:
                return redirect(f"{reverse('builds:team-detail', args=[team.slug])}#members")
        if "team_settings" in request.POST:
            settings_form = TeamSettingsForm(request.POST)
            settings_form.is_valid()  # two check boxes: always valid
            catalog_services.team_settings_update(team=team, actor=request.user, **settings_form.cleaned_data)
            messages.success(request, "Team settings saved.")
            return redirect("builds:team-detail", team.slug)
        if "delete" in request.POST:
            hooks = selectors.webhooks_visible_to(user=request.user).filter(team=team)
            hook_id = request.POST["delete"]
            hook = get_object_or_404(hooks, pk=int(hook_id) if hook_id.isdigit() else -1)
            hook.delete()  # as the API's DELETE /api/webhooks/{id}/ does: nothing else to undo
            messages.success(request, f"Webhook {hook.url} removed.")
            return redirect("builds:team-detail", team.slug)
        elif form.is_valid():
            try:
                hook = services.webhook_create(team=team, user=request.user, url=form.cleaned_data["url"])
            except services.BuildRefused as refused:
                form.add_error("url", refused.message)
            else:
                new_secret = hook.secret
                messages.success(request, "Webhook added. Copy its secret now: it will not be shown again.")
                form = WebhookForm()
    context = {
        "team": team,
        "memberships": team.memberships.select_related("user").order_by("user__username"),
        "webhooks": selectors.webhooks_visible_to(user=request.user).filter(team=team),
        "is_admin": is_admin,
        "member_form": member_form,
        "roles": Role.choices,
        "form": form,
        "settings_form": TeamSettingsForm(
            initial={name: getattr(team, name) for name in catalog_services.TEAM_SETTINGS}
        ),
        "new_secret": new_secret,
    }
    return render(request, "builds/team_detail.html", context)


def _team_member_change(request: HttpRequest, team: Team, action: str, add_form: TeamMemberAddForm) -> bool:
    """Add a member, change a role or remove a member; True when done (or refused with a message).

    A refusal of the add form stays on the page next to its field; the others become a message.
    """
    try:
        if action == "add":
            if not add_form.is_valid():
                return False
            data = add_form.cleaned_data
            added = catalog_services.team_member_add(
                team=team, actor=request.user, username=data["username"], role=data["role"]
            )
            who, role = added.user.get_username(), added.get_role_display()
            messages.success(request, f"{who} joined the team as {role}.")
            return True
        username = request.POST.get("username", "")
        if action == "role":
            role_form = TeamMemberRoleForm(request.POST)
            if not role_form.is_valid():
                messages.error(request, "Choose one of the roles.")
                return True
            changed = catalog_services.team_member_change_role(
                team=team, actor=request.user, username=username, role=role_form.cleaned_data["role"]
            )
            messages.success(request, f"{username} is now {changed.get_role_display()}.")
            return True
        if action == "remove":
            catalog_services.team_member_remove(team=team, actor=request.user, username=username)
            messages.success(request, f"{username} was removed from the team.")
            return True
    except CatalogError as exc:
        if action == "add":
            add_form.add_error("username" if exc.code != "team.invalid-role" else "role", exc.message)
            return False
        messages.error(request, exc.message)
        return True
    messages.error(request, "Unknown action.")
    return True


def _forbidden_admin(request: HttpRequest, team: Team) -> HttpResponse:
    message = f"Managing members, webhooks and team settings needs the admin role in team {team.name}."
    return render(request, "error.html", {"title": "Not allowed", "message": message}, status=403)
