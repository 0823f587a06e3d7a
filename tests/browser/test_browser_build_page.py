"""The build page in a real browser, following real builds of a real Celery worker.

A build waits in the queue (the page says where and for how long about), the worker starts, the
page follows it to success without a reload: steps per extension, a log section per step that
unfolds, the success banner with the install command. A failing build shows its code and what to
do; a cancel and a retry made through the API show up on the open page, and an open flavour page
shows a build started through the API.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from builds import services
from builds.models import Build, BuildState
from catalog.models import UpstreamDigest
from tests.browser.conftest import sign_in
from tests.builds.build_support import serve_extension
from tests.upstream import UpstreamServer

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BUILD_TIMEOUT_MS = 240_000
NOT_GZIP = b"this is not a gzip archive"


@pytest.fixture
def build_world(
    transactional_db: Any,
    cast: Any,
    settings: Any,
    tmp_path: Path,
    upstream: UpstreamServer,
    celery_worker_process: Any,
) -> dict[str, Any]:
    serve_extension(upstream, "hello")
    serve_extension(upstream, "slow", delay=4.0)  # a build that stays running a while
    serve_extension(upstream, "broken")
    upstream.add_bytes("/example/broken/releases/download/v1.0.0/broken-v1.0.0-x86_64.tar.gz", NOT_GZIP)
    UpstreamDigest.objects.filter(version__extension__name="broken", arch="x86-64").update(
        sha256=hashlib.sha256(NOT_GZIP).hexdigest()
    )
    mirrors = {"https://github.com/": upstream.url("/")}
    settings.UPSTREAM_MIRRORS = mirrors
    settings.FETCH_CACHE_DIR = tmp_path / "portal-cache"
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.S3 = None

    def start_worker() -> None:
        celery_worker_process(
            UPSTREAM_MIRRORS=" ".join(f"{src}={dst}" for src, dst in mirrors.items()),
            FETCH_CACHE_DIR=str(tmp_path / "worker-cache"),
            ARTIFACT_DIR=str(settings.ARTIFACT_DIR),
            BAKEHOUSE_VAR_DIR=str(tmp_path / "worker-var"),
        )

    def flavour(name: str, extensions: list[str]) -> Any:
        picks = [{"name": extension, "version": "v1.0.0"} for extension in extensions]
        made, _ = services.flavour_create(
            user=cast.bob, team=cast.blue, name=name, arch="x86-64", extensions=picks
        )
        return made

    return {"cast": cast, "start_worker": start_worker, "flavour": flavour}


def test_watch_a_build_from_the_queue_to_success_then_a_failure_with_its_advice(
    page: Any, snap: Any, live_server: Any, build_world: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    cast = build_world["cast"]
    sign_in(page, "bob")
    flavour = build_world["flavour"]("web nodes", ["hello"])
    build, _ = services.build_request(flavour=flavour, user=cast.bob)

    # No worker yet: queued, first in line, no history to estimate from.
    page.goto(f"/builds/{build.pk}/")
    expect(page.locator("#build-state")).to_have_text("Queued")
    expect(page.locator("#queue-estimate")).to_contain_text("Position 1 in the queue; no estimate yet")
    expect(page.locator("#build-total")).to_contain_text("Waiting for a worker")
    snap(page, "queued")

    # The worker starts: the open page follows the build to its end without a reload.
    build_world["start_worker"]()
    expect(page.locator("#build-state")).to_have_text("Succeeded", timeout=BUILD_TIMEOUT_MS)
    expect(page.locator("#queue-estimate")).to_be_hidden()
    success = page.locator("#build-success")
    expect(success).to_be_visible()
    expect(success.get_by_role("link", name="Download and install")).to_have_attribute(
        "href", f"/flavours/{flavour.pk}/"
    )
    expect(page.locator("#install-command")).to_contain_text("sudo flatcar-install -d /dev/sda -C stable")
    expect(page.locator("#install-command")).to_contain_text(f"flavours/{flavour.pk}/config.ign")
    hello = page.locator('section[data-group="extension:hello"]')
    expect(hello.locator(".step-name")).to_have_text(["bake", "verify"])
    expect(page.locator('section[data-group="flavour"] .step-name')).to_have_text(
        ["plan", "sign", "publish", "notify"]
    )
    expect(page.locator("#build-total")).to_contain_text("Total ")
    snap(page, "succeeded")

    # Reloaded, finished steps are folded; one unfolds to its own log.
    page.reload()
    bake = hello.locator("details.step").first
    expect(bake).not_to_have_attribute("open", "")
    expect(bake.locator("pre")).to_be_hidden()
    bake.locator("summary").click()
    expect(bake.locator("pre")).to_be_visible()
    expect(bake.locator("pre")).to_contain_text("[hello v1.0.0] fetch: https://github.com/example/hello/")
    expect(bake.locator("pre")).not_to_contain_text("/tmp/")
    expect(bake.locator(".step-icon")).to_have_class(re.compile("outcome-ok"))
    snap(page, "log-expanded")
    page.get_by_role("link", name="Download and install").click()
    page.wait_for_url(f"**/flavours/{flavour.pk}/")
    snap(page, "flavour-page")

    # A failing build: the code, the sentence and what to do, with the failed step open.
    broken = build_world["flavour"]("broken nodes", ["broken"])
    failing, _ = services.build_request(flavour=broken, user=cast.bob)
    page.goto(f"/builds/{failing.pk}/")
    expect(page.locator("#build-state")).to_have_text("Failed", timeout=BUILD_TIMEOUT_MS)
    failure = page.locator("#build-failure")
    expect(failure).to_be_visible()
    expect(page.locator("#build-error")).to_contain_text("archive.corrupt: broken v1.0.0 x86-64:")
    expect(page.locator("#build-advice")).to_contain_text("edit the flavour to make a new revision")
    expect(page.locator("#build-advice")).to_contain_text("ask a curator of team Blue")
    expect(page.locator("#build-success")).to_be_hidden()
    expect(page.locator("#retry-form")).to_be_hidden()  # the same flavour would fail the same way
    failed_bake = page.locator('section[data-group="extension:broken"] details.step').first
    expect(failed_bake.locator(".step-icon")).to_have_class(re.compile("outcome-failed"))
    expect(failed_bake.locator("pre")).to_be_visible()  # open: the failure's lines are there
    expect(failed_bake.locator("pre")).to_contain_text(
        "[broken v1.0.0] fetch: https://github.com/example/broken/"
    )
    expect(page.locator("#build-log pre")).not_to_contain_text("[broken v1.0.0]")
    snap(page, "failed")

    # A retry through the API shows up on the open page of the failed build.
    response = cast.client(cast.bob).post(f"/api/builds/{failing.pk}/retry")
    assert response.status_code == 202, response.json()
    expect(page.get_by_role("link", name=re.compile(r"Retry: attempt 2"))).to_be_visible()
    snap(page, "retried-through-the-api")


def test_api_changes_show_on_open_pages(
    page: Any, snap: Any, live_server: Any, build_world: dict[str, Any]
) -> None:
    from playwright.sync_api import expect

    cast = build_world["cast"]
    build_world["start_worker"]()
    sign_in(page, "vera")  # a viewer watches; the builder acts through the API
    flavour = build_world["flavour"]("slow nodes", ["slow"])
    page.goto(f"/flavours/{flavour.pk}/")
    expect(page.get_by_text("No builds yet.")).to_be_visible()

    # A build started through the API appears on the open flavour page.
    started = cast.client(cast.bob).post(f"/api/flavours/{flavour.pk}/builds/")
    assert started.status_code == 202, started.json()
    build_id = started.json()["id"]
    expect(page.locator(f'a[href="/builds/{build_id}/"]').first).to_be_visible(timeout=20_000)
    snap(page, "flavour-page-shows-the-new-build")

    # Its page, open while it runs, shows a cancel made through the API.
    page.goto(f"/builds/{build_id}/")
    expect(page.locator('section[data-group="extension:slow"] .step-outcome').first).to_have_text(
        "running", timeout=60_000
    )
    snap(page, "running")
    cancelled = cast.client(cast.bob).post(f"/api/builds/{build_id}/cancel")
    assert cancelled.status_code == 202, cancelled.json()
    expect(page.locator("#build-state")).to_have_text("Cancelled", timeout=60_000)
    expect(page.locator("#build-advice")).to_contain_text("Ask a builder of team Blue to build it again.")
    expect(page.locator("#retry-form")).to_have_count(0)  # a viewer may not retry
    stopped = page.locator('section[data-group="extension:slow"] details.step').first
    expect(stopped.locator(".step-outcome")).to_have_text("cancelled")
    snap(page, "cancelled-through-the-api")
    assert Build.objects.get(pk=build_id).state == BuildState.CANCELLED
