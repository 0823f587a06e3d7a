"""The build page and its API: steps per extension and for the flavour with timing and their log,
the queue estimate, the success and failure banners with the next move, and logs without worker
paths. No worker: steps and states are recorded the way the director records them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.utils import timezone

from builds import services, steps
from builds.models import Artifact, ArtifactKind, Build, BuildLogLine, BuildState, BuildStep
from tests.builds.catalog_fixtures import make_extension

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_broker() -> Any:
    """Builds are requested for real, but their tasks are not sent."""
    with mock.patch("portal.queueing.queue_task"):
        yield


@pytest.fixture
def world(cast: Any) -> dict[str, Any]:
    make_extension("docker", versions={"28.0.4": "approved"})
    make_extension("docker-compose", versions={"v2.34.0": "approved"}, requires=[["docker"]])
    picks = [{"name": "docker", "version": "28.0.4"}, {"name": "docker-compose", "version": "v2.34.0"}]
    flavour, _ = services.flavour_create(
        user=cast.admin, team=cast.blue, name="edge", arch="x86-64", extensions=picks, options={}
    )
    build, _ = services.build_request(flavour=flavour, user=cast.admin)
    return {"cast": cast, "flavour": flavour, "build": build}


def _step(
    build: Build, name: str, start: float, took: float | None, *, extension: str = "", outcome: str = "ok"
):
    t0 = build.created_at + timedelta(seconds=start)
    return BuildStep.objects.create(
        build=build,
        name=name,
        extension=extension,
        started_at=t0,
        finished_at=None if took is None else t0 + timedelta(seconds=took),
        outcome=outcome if took is not None else "",
    )


def _page(client: Any, user: Any, build: Build) -> str:
    client.force_login(user)
    response = client.get(f"/builds/{build.pk}/")
    assert response.status_code == 200
    return str(response.content.decode())


def _section(html: str, marker: str) -> str:
    start = html.index(marker)
    return html[start : html.index("</section>", start)]


def _details(html: str, step: BuildStep) -> str:
    start = html.index(f'data-step-id="{step.pk}"')
    return html[start : html.index("</details>", start)]


def _element(html: str, element_id: str) -> tuple[str, str]:
    """The opening tag and the text up to the next closing tag of the element."""
    start = html.index(f'id="{element_id}"')
    tag_end = html.index(">", start)
    return html[start:tag_end], html[tag_end + 1 : html.index("</", tag_end)]


# --- steps, grouping and durations --------------------------------------------------------------


def test_steps_are_grouped_per_extension_and_for_the_flavour_with_timings(client: Any, world: dict) -> None:
    build = world["build"]
    created = timezone.now() - timedelta(minutes=5)
    Build.objects.filter(pk=build.pk).update(
        state=BuildState.PUBLISHING, created_at=created, started_at=created + timedelta(seconds=3)
    )
    build.refresh_from_db()
    plan = _step(build, "plan", 3, 0.2)
    bake_compose = _step(build, "bake", 4, 65, extension="docker-compose")
    bake_docker = _step(build, "bake", 4, 12, extension="docker")
    compile_docker = _step(build, "compile", 16, 3, extension="docker")  # a step name added later
    verify_docker = _step(build, "verify", 70, 1.5, extension="docker")
    sign = _step(build, "sign", 72, 0.5)
    publish = _step(build, "publish", 73, None)  # running

    api = world["cast"].client(world["cast"].viewer).get(f"/api/builds/{build.pk}/").json()
    groups = [(g["key"], [(s["name"], s["extension"]) for s in g["steps"]]) for g in api["step_groups"]]
    assert groups == [
        ("extension:docker", [("bake", "docker"), ("compile", "docker"), ("verify", "docker")]),
        ("extension:docker-compose", [("bake", "docker-compose")]),
        ("flavour", [("plan", ""), ("sign", ""), ("publish", "")]),
    ]
    docker = api["step_groups"][0]
    assert docker["duration_seconds"] == 67.5  # from its first start (4 s) to its last end (71.5 s)
    assert docker["steps"][0]["duration_seconds"] == 12.0 and docker["steps"][0]["outcome"] == "ok"
    flavour = api["step_groups"][2]
    assert flavour["outcome"] == "" and flavour["finished_at"] is None  # publish still runs
    assert api["steps"][-1]["duration_seconds"] is None
    assert api["duration_seconds"] > 0 and api["queued_seconds"] == 3.0

    html = _page(client, world["cast"].viewer, build)
    docker_html = _section(html, 'data-group="extension:docker"')
    assert (
        docker_html.index(f'data-step-id="{bake_docker.pk}"')
        < docker_html.index(f'data-step-id="{compile_docker.pk}"')
        < docker_html.index(f'data-step-id="{verify_docker.pk}"')
    )
    assert "Extension docker" in docker_html and "1 min 8 s" in docker_html  # the group's 67.5 s
    assert "12 s" in _details(html, bake_docker)
    assert "1 min 5 s" in _details(html, bake_compose)
    assert "0.2 s" in _details(html, plan) and "outcome-ok" in _details(html, plan)
    assert "outcome-running" in _details(html, publish) and "…" in _details(html, publish)
    assert _details(html, sign).startswith(f'data-step-id="{sign.pk}">')  # finished: folded
    assert _details(html, publish).startswith(f'data-step-id="{publish.pk}" open>')  # running: open
    flavour_html = _section(html, 'data-group="flavour"')
    assert flavour_html.index("plan") < flavour_html.index("sign") < flavour_html.index("publish")
    assert "Total " in _element(html, "build-total")[1] and "after 3.0 s in the queue" in html


def test_each_step_folds_the_log_it_wrote(client: Any, world: dict) -> None:
    build = world["build"]
    recorder = steps.BuildSteps(build.pk)
    with recorder.step("bake", extension="docker") as bake:
        recorder.log("[docker 28.0.4] fetch: https://example.test/docker.tgz")
    with pytest.raises(RuntimeError), recorder.step("verify", extension="docker") as verify:
        recorder.log("docker-28.0.4-x86-64.raw: merging")
        raise RuntimeError("boom")
    recorder.log_to_failed_step("systemd-sysext said no")
    # A name the presentation does not know: recorded and shown where it ran, the state stays.
    with recorder.step("prebake", extension="docker-compose") as prebake:
        recorder.log("prebaked image found")
    build.refresh_from_db()
    assert build.state == BuildState.VERIFYING and build.current_step == "prebake"

    html = _page(client, world["cast"].viewer, build)
    assert "fetch: https://example.test/docker.tgz" in _details(html, bake)
    assert "merging" in _details(html, verify) and "systemd-sysext said no" in _details(html, verify)
    assert "outcome-failed" in _details(html, verify) and " open>" in _details(html, verify)[:80]
    assert "prebaked image found" in _details(html, prebake)
    build_log = html[html.index('id="build-log"') :]
    assert "queued." in build_log  # lines of no step: the build's own section
    assert "docker.tgz" not in build_log

    lines = world["cast"].client(world["cast"].viewer).get(f"/api/builds/{build.pk}/log").json()["lines"]
    by_text = {line["text"]: line["step"] for line in lines}
    assert by_text["prebaked image found"] == prebake.pk
    assert by_text["systemd-sysext said no"] == verify.pk
    assert next(step for text, step in by_text.items() if text.endswith("queued.")) is None


def test_a_build_not_started_says_so(client: Any, world: dict) -> None:
    html = _page(client, world["cast"].viewer, world["build"])
    assert "Not started yet." in html and "Waiting for a worker" in html


# --- queue --------------------------------------------------------------------------------------


def _succeeded(flavour: Any, seconds: float) -> None:
    end = timezone.now() - timedelta(hours=1)
    Build.objects.create(
        flavour=flavour,
        state=BuildState.SUCCEEDED,
        started_at=end - timedelta(seconds=seconds),
        finished_at=end,
    )


def test_queued_builds_show_position_and_an_estimate_from_recent_builds(client: Any, world: dict) -> None:
    cast = world["cast"]
    first = world["build"]
    api = cast.client(cast.viewer).get(f"/api/builds/{first.pk}/").json()
    assert api["queue"]["position"] == 1 and api["queue"]["wait_seconds"] is None
    assert "no estimate yet" in api["queue"]["text"]
    assert "no estimate yet" in _element(_page(client, cast.viewer, first), "queue-estimate")[1]

    make_extension("hello")
    other, _ = services.flavour_create(
        user=cast.admin,
        team=cast.blue,
        name="o",
        arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}],
    )
    for seconds in (60, 120, 600):  # median 120 s
        _succeeded(world["flavour"], seconds)
    second, _ = services.build_request(flavour=other, user=cast.admin)

    api = cast.client(cast.viewer).get(f"/api/builds/{second.pk}/").json()
    assert api["queue_position"] == 2
    assert api["queue"] == {
        "position": 2,
        "running": 0,
        "typical_seconds": 120.0,
        "wait_seconds": 240.0,
        "text": "Position 2 in the queue; it should start in about 4 min 0 s.",
    }
    tag, text = _element(_page(client, cast.viewer, second), "queue-estimate")
    assert " hidden" not in tag and text == "Position 2 in the queue; it should start in about 4 min 0 s."

    # Two builds running side by side halve the wait.
    Build.objects.filter(pk=first.pk).update(state=BuildState.BAKING, started_at=timezone.now())
    Build.objects.create(flavour=world["flavour"], state=BuildState.SUCCEEDED)  # not active: not counted
    api = cast.client(cast.viewer).get(f"/api/builds/{second.pk}/").json()
    assert api["queue"]["position"] == 1 and api["queue"]["running"] == 1
    assert api["queue"]["wait_seconds"] == 120.0

    Build.objects.filter(pk=second.pk).update(state=BuildState.FETCHING, started_at=timezone.now())
    assert cast.client(cast.viewer).get(f"/api/builds/{second.pk}/").json()["queue"] is None
    assert " hidden" in _element(_page(client, cast.viewer, second), "queue-estimate")[0]


# --- banners ------------------------------------------------------------------------------------


def test_a_succeeded_build_leads_to_download_and_install(client: Any, world: dict) -> None:
    build, flavour = world["build"], world["flavour"]
    before = _page(client, world["cast"].viewer, build)
    assert " hidden" in _element(before, "build-success")[0]

    Build.objects.filter(pk=build.pk).update(
        state=BuildState.SUCCEEDED, progress=100, finished_at=timezone.now()
    )
    Artifact.objects.create(
        build=build,
        flavour=flavour,
        kind=ArtifactKind.IGNITION,
        name="config.ign",
        key=f"flavours/{flavour.pk}/config.ign",
        sha256="0" * 64,
        size=2,
    )
    api = world["cast"].client(world["cast"].viewer).get(f"/api/builds/{build.pk}/").json()
    url = f"{settings.PUBLIC_BASE_URL}flavours/{flavour.pk}/config.ign"
    assert api["install_command"] == (
        f"curl -fsSLo config.ign {url}\nsudo flatcar-install -d /dev/sda -C stable -i config.ign"
    )
    assert api["flavour_page_url"].endswith(f"/flavours/{flavour.pk}/") and api["failure"] is None

    html = _page(client, world["cast"].viewer, build)
    tag, _ = _element(html, "build-success")
    assert " hidden" not in tag and "Build succeeded." in html
    banner = html[html.index('id="build-success"') : html.index("</div>", html.index('id="build-success"'))]
    assert f'id="install-link" class="button" href="/flavours/{flavour.pk}/"' in banner  # the primary action
    assert url in banner
    assert " hidden" in _element(html, "build-failure")[0]


@pytest.mark.parametrize(
    ("state", "code", "kind", "builder_reads", "viewer_reads"),
    [
        (
            "failed", "tool.missing", "infrastructure",
            "fault of this Bakehouse installation, not of your flavour: ask an operator of this Bakehouse "
            "installation to fix it, then retry the build.",
            "then ask a builder of team Blue to retry the build.",
        ),
        (
            "failed", "fetch.timeout", "upstream",
            "misbehaved: retry later; if it keeps failing, ask a curator of team Blue",
            "Only a builder of team Blue can retry.",
        ),
        (
            "failed", "fetch.sha256-mismatch", "upstream",
            "retry later, or ask a curator of team Blue to check the upstream",
            "Only a builder of team Blue can retry.",
        ),
        (
            "failed", "flavour.stale", "user",
            "edit the flavour to make a new revision, or ask a curator of team Blue",
            "edit the flavour to make a new revision, or ask a curator of team Blue",
        ),
        (
            "cancelled", "build.cancelled", "user",
            "Build it again when you are ready.",
            "Ask a builder of team Blue to build it again.",
        ),
    ],
)  # fmt: skip
def test_a_failed_build_shows_its_code_sentence_and_next_move(
    client: Any, world: dict, state: str, code: str, kind: str, builder_reads: str, viewer_reads: str
) -> None:
    build = world["build"]
    Build.objects.filter(pk=build.pk).update(
        state=state, error_code=code, error_message="what went wrong", finished_at=timezone.now()
    )
    cast = world["cast"]
    # A user error fails the same way again: no Retry button even for a builder.
    helps = kind != "user" or state == "cancelled"
    for user, reads, may_retry in ((cast.builder, builder_reads, helps), (cast.viewer, viewer_reads, False)):
        failure = cast.client(user).get(f"/api/builds/{build.pk}/").json()["failure"]
        assert (
            failure["code"] == code and failure["sentence"] == "what went wrong" and failure["kind"] == kind
        )
        assert reads in failure["advice"]
        assert failure["can_retry"] is may_retry
        html = _page(client, user, build)
        tag, _ = _element(html, "build-failure")
        assert " hidden" not in tag
        assert _element(html, "build-error")[1] == f"{code}: what went wrong"
        assert failure["advice"] in html.replace("&#x27;", "'")
        if may_retry:
            assert 'id="retry-form">' in html  # shown
        elif user == cast.builder:
            assert 'id="retry-form" hidden>' in html
        else:
            assert 'id="retry-form"' not in html  # a viewer is told whom to ask instead
    if kind == "infrastructure":
        assert "operator" in failure["ask"]


# --- logs speak to users ------------------------------------------------------------------------


def test_the_log_writer_scrubs_worker_paths(world: dict) -> None:
    build = world["build"]
    scratch = "/tmp/bh-build-k2j3h4/out/docker-28.0.4-x86-64.raw"
    var_path = f"{settings.VAR_DIR}/cache/ab/cdef"
    steps.log(build.pk, f"mksquashfs: cannot open {scratch}: No space left; cache {var_path}.")
    steps.log(build.pk, "work in /tmp/bh-final-x8/ failed and /tmp is full")
    text = "\n".join(BuildLogLine.objects.filter(build=build).values_list("text", flat=True))
    assert "/tmp" not in text and str(settings.VAR_DIR) not in text
    assert "cannot open docker-28.0.4-x86-64.raw: No space left; cache cdef." in text
    assert "work in the work directory failed and the work directory is full" in text
    # URLs and ordinary paths inside an image are kept.
    kept = (
        "Published at http://127.0.0.1:8000/artifacts/extensions/docker/ (usr/bin/docker), "
        "fetched from https://example.com/tmp/docker.tgz"
    )
    steps.log(build.pk, kept)
    assert BuildLogLine.objects.filter(build=build).order_by("-seq").values_list("text", flat=True)[0] == kept

    steps.build_fail(
        build_id=build.pk, code="bake.file-error", message=f"a file operation failed on {scratch}"
    )
    build.refresh_from_db()
    assert build.error_message == "a file operation failed on docker-28.0.4-x86-64.raw"
    assert (
        re.search(
            r"(?<!example.com)/tmp|bh-build", "\n".join(BuildLogLine.objects.values_list("text", flat=True))
        )
        is None
    )
