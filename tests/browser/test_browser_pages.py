"""Pages in a real browser without a worker: reading without JavaScript, keyboard-only composing,
curator decisions, team page, phone width. Every page visited is saved as a screenshot."""

from __future__ import annotations

import re
from unittest import mock

import pytest

from builds import services
from builds import steps as build_steps
from catalog.models import ExtensionVersion, VersionStatus
from tests.browser.conftest import sign_in
from tests.builds.catalog_fixtures import make_extension

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def world(transactional_db, cast):
    make_extension("docker", versions={"28.0.4": "approved", "27.5.1": "approved"}, conflicts=["containerd"])
    make_extension("docker-compose", versions={"v2.34.0": "approved"}, requires=[["docker"]])
    make_extension("containerd", versions={"2.1.9": "approved"}, conflicts=["docker"])
    make_extension("blue-agent", team=cast.blue, versions={"1.0.0": "approved", "1.1.0": "proposed"})
    return {"alice": cast.alice, "blue": cast.blue}


def queued_docker_build(world, name):
    """A build of Alice's docker flavour, left queued: no worker runs in these page tests."""
    with mock.patch("portal.queueing.queue_task"):
        flavour, _ = services.flavour_create(
            user=world["alice"], team=world["blue"], name=name, arch="x86-64",
            extensions=[{"name": "docker", "version": "28.0.4"}],
        )  # fmt: skip
        build, _ = services.build_request(flavour=flavour, user=world["alice"])
    return build


@pytest.fixture
def no_js_page(chromium, live_server):
    context = chromium.new_context(base_url=live_server.url, java_script_enabled=False)
    tab = context.new_page()
    yield tab
    context.close()


def test_read_pages_and_curating_work_without_javascript(no_js_page, snap, world):
    from playwright.sync_api import expect

    page = no_js_page
    sign_in(page, "alice")
    page.goto("/catalog/")
    page.get_by_label("Search").fill("agent")
    page.get_by_role("button", name="Filter").click()
    extensions = page.get_by_role("list", name="Extensions")
    expect(extensions.get_by_role("link")).to_have_count(1)
    snap(page, "catalog-no-js")

    extensions.get_by_role("link", name="blue-agent").click()
    snap(page, "extension-with-proposal")
    page.get_by_role("link", name="Review 1.1.0").click()
    page.get_by_label("Reject").check()
    page.get_by_role("button", name="Record decision").click()
    expect(page.locator("#id_reason_error")).to_contain_text("Give a reason to reject the version")
    snap(page, "review-error-next-to-field")
    page.get_by_label("Reject").check()
    page.get_by_label("Reason").fill("Superseded by 1.2.0")
    page.get_by_role("button", name="Record decision").click()
    expect(page.get_by_text("Superseded by 1.2.0").first).to_be_visible()
    assert ExtensionVersion.objects.get(version="1.1.0").status == VersionStatus.REJECTED

    # The composer without JavaScript: the server shows the requires hint and its fix is a link.
    page.goto("/compose/?team=blue&name=edge&arch=x86-64&channel=stable&x_docker-compose=v2.34.0")
    page.goto(page.url.replace("/compose/?", "/compose/extensions/?"))
    page.get_by_role("button", name="Check my picks").click()
    expect(page.locator("#relation-hints")).to_contain_text("docker-compose requires docker.")
    page.get_by_role("link", name="Add docker 28.0.4").click()
    expect(page.get_by_label("docker", exact=True)).to_have_value("28.0.4")
    snap(page, "compose-no-js")

    # The remaining pages, for the reviewer's screenshots.
    for path, name in (
        ("/catalog/blue-agent/propose/?team=blue", "propose-version"),
        ("/custom-extensions/new/", "custom-extension"),
        ("/flavours/", "flavour-list"),
        ("/account/tokens/", "api-tokens"),
    ):
        assert page.goto(path).status == 200, path
        snap(page, name)
    page.goto("/catalog/blue-agent/propose/?team=blue")
    page.get_by_label("Version:", exact=True).fill("1.0.0")
    page.get_by_role("button", name="Propose").click()
    expect(page.locator("#id_version_error")).to_contain_text("already been proposed")

    page.goto("/teams/blue/")
    page.get_by_label("Webhook URL").fill("https://hooks.example.org/bakehouse")
    page.get_by_role("button", name="Add webhook").click()
    expect(page.locator("#webhook-secret")).to_be_visible()
    snap(page, "team")


def test_compose_with_the_keyboard_only(page, snap, world):
    from playwright.sync_api import expect

    sign_in(page, "alice")
    page.goto("/compose/")
    page.get_by_label("Flavour name").focus()
    page.keyboard.type("edge-keys")
    page.keyboard.press("Enter")  # submits the step like the Next button
    page.wait_for_url(re.compile(r"/compose/extensions/"))

    def tab_to(selector: str) -> None:
        for _ in range(60):
            if page.evaluate(f"document.activeElement.matches({selector!r})"):
                return
            page.keyboard.press("Tab")
        raise AssertionError(f"{selector} is not reachable with Tab")

    tab_to("#id_x_docker")
    page.keyboard.press("ArrowDown")  # Not included -> 28.0.4
    expect(page.get_by_label("docker", exact=True)).to_have_value("28.0.4")
    tab_to("#id_x_containerd")
    page.keyboard.press("ArrowDown")
    hints = page.locator("#relation-hints")
    expect(hints).to_contain_text("containerd and docker conflict")
    expect(hints).to_contain_text("install the same files")
    snap(page, "compose-conflict")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"

    # Next refuses the conflict and says why, above the choices.
    tab_to("button[value=next]")
    page.keyboard.press("Enter")
    expect(page.locator("#extension-errors")).to_contain_text("containerd and docker conflict; choose one.")


def test_picks_made_in_the_page_reach_the_share_link_and_the_step_links(page, snap, world):
    """Picking with JavaScript must not leave the shareable link (or the step links) behind."""
    from playwright.sync_api import expect

    sign_in(page, "alice")
    page.goto("/compose/extensions/?team=blue&name=edge&arch=x86-64&channel=stable")
    page.get_by_label("docker-compose").select_option("v2.34.0")
    page.get_by_role("button", name="Add docker 28.0.4").click()
    expect(page.locator("#share-url")).to_contain_text("x_docker=28.0.4")
    expect(page.locator("#share-url")).to_contain_text("x_docker-compose=v2.34.0")
    assert "x_docker=28.0.4" in page.url  # reloading or bookmarking keeps the picks too

    # A colleague opening the copied link sees the same picks.
    shared = page.locator("#share-url").inner_text()
    page.goto(shared)
    expect(page.get_by_label("docker", exact=True)).to_have_value("28.0.4")
    expect(page.get_by_label("docker-compose")).to_have_value("v2.34.0")

    page.get_by_label("docker", exact=True).select_option("27.5.1")
    page.get_by_role("navigation", name="Composer steps").get_by_role("link", name="Review").click()
    page.wait_for_url(re.compile(r"/compose/review/"))
    expect(page.locator("main")).to_contain_text("docker 27.5.1")
    expect(page.locator("main")).to_contain_text("docker-compose v2.34.0")
    snap(page, "compose-review-from-step-link")


def test_the_butane_preview_scrolls_and_copies_from_the_keyboard(page, world):
    """Long Butane lines scroll inside their box: a keyboard user must be able to reach it."""
    from playwright.sync_api import expect

    sign_in(page, "alice")
    page.goto("/compose/review/?team=blue&name=edge&arch=x86-64&channel=stable&x_docker=28.0.4")
    butane = page.get_by_label("Butane config", exact=True)
    expect(butane).to_contain_text("variant: flatcar")
    for _ in range(60):
        if page.evaluate("document.activeElement.id") == "butane":
            break
        page.keyboard.press("Tab")
    else:
        raise AssertionError("the Butane preview is not reachable with Tab")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    # Each copy button says what it copies (a screen reader lists them by name).
    expect(page.get_by_role("button", name="Copy the Butane config")).to_be_visible()


def test_build_page_live_and_at_phone_width(page, snap, world):
    from playwright.sync_api import expect

    build = queued_docker_build(world, "edge")
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, "alice")
    page.goto(f"/builds/{build.pk}/")
    expect(page.locator("#build-state")).to_have_text("Queued")
    snap(page, "build-queued-phone")
    assert page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0

    # What a worker reports shows up without a reload: progress, step and log.
    build_steps.advance(build.pk, "baking", step="docker 28.0.4: image", progress=40)
    build_steps.build_log(build_id=build.pk, text="docker 28.0.4: baking the image")
    expect(page.locator("#progress-text")).to_have_text("40 %")
    expect(page.locator("#current-step")).to_contain_text("docker 28.0.4: image")
    expect(page.locator("#build-log pre")).to_contain_text("baking the image")  # a line of no step
    snap(page, "build-running-phone")

    page.get_by_role("button", name="Cancel build").click()
    # A running build stops at its next checkpoint: the button says so and cannot be pressed twice.
    expect(page.get_by_role("button", name="Cancel requested")).to_be_disabled()
    expect(page.get_by_role("status")).to_contain_text("Cancel requested")


def test_butane_fragment_is_checked_as_you_type(page, snap, world):
    from playwright.sync_api import expect

    sign_in(page, "alice")
    page.goto("/compose/options/?team=blue&name=edge&arch=x86-64&channel=stable&x_docker=28.0.4")
    fragment = page.get_by_label("Butane fragment")
    fragment.fill("variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: etc/motd\n")
    report = page.locator("#fragment-check")
    expect(report).to_contain_text("error at $.storage.files.0.path")
    expect(fragment).to_have_attribute("aria-invalid", "true")
    snap(page, "compose-fragment-invalid")
    fragment.fill("variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: /etc/motd\n")
    expect(report).to_have_text("Valid Butane 1.1.0 fragment.")
    page.get_by_role("button", name="Next: review").click()
    page.wait_for_url(re.compile(r"/compose/review/"))
    assert "fragment=" in page.url


def test_every_page_fits_a_phone_without_sideways_scrolling(page, snap, world):
    """A 375 px wide phone: long digests, links and tables wrap or scroll inside their own box."""
    build = queued_docker_build(world, "edge-phone")
    flavour = build.flavour
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, "alice")
    state = "team=blue&name=edge-phone&arch=x86-64&channel=stable&x_docker=28.0.4&x_docker-compose=v2.34.0"
    too_wide = []
    for path, name in (
        ("/catalog/", "catalog"),
        ("/catalog/docker/", "extension"),
        ("/catalog/blue-agent/propose/?team=blue", "propose"),
        ("/custom-extensions/new/", "custom-extension"),
        (f"/compose/?{state}", "compose-1"),
        (f"/compose/extensions/?{state}", "compose-2"),
        (f"/compose/options/?{state}", "compose-3"),
        (f"/compose/review/?{state}", "compose-4"),
        ("/flavours/", "flavours"),
        (f"/flavours/{flavour.pk}/", "flavour"),
        (f"/builds/{build.pk}/", "build"),
        ("/teams/blue/", "team"),
        ("/account/tokens/", "tokens"),
    ):
        page.goto(path)
        overflow = page.evaluate("(d => d.scrollWidth - d.clientWidth)(document.documentElement)")
        if overflow > 0:
            too_wide.append(f"{path}: {overflow}px")
        snap(page, f"{name}-phone")
    assert not too_wide, too_wide
