"""The first hour of a team in a real browser, from a fresh install (every built-in version
proposed) to a composer with something to offer and a team with a new member.

The home checklist shows what is left; a staff curator approves docker-compose on its review page
and watches the real Celery worker pin it live from a local upstream (and watches another
version's pinning fail with the reason); the composer names the extensions still waiting for
approval; the team admin adds a member and changes their role.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from catalog import services as catalog_services
from catalog.models import ExtensionVersion, Membership, VersionStatus
from tests.browser.conftest import sign_in
from tests.browser.test_browser_flow import _serve_docker_upstreams
from tests.upstream import UpstreamServer

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PINNING_TIMEOUT_MS = 90_000


@pytest.fixture
def fresh_install(
    transactional_db, cast, settings, tmp_path: Path, upstream: UpstreamServer, celery_worker_process
):
    mirrors = _serve_docker_upstreams(upstream)  # compose v2.34.0 is served, v2.33.1 is not (404)
    settings.UPSTREAM_MIRRORS = mirrors
    catalog_services.catalog_sync()
    assert not ExtensionVersion.objects.filter(status=VersionStatus.APPROVED).exists()
    celery_worker_process(
        UPSTREAM_MIRRORS=" ".join(f"{src}={dst}" for src, dst in mirrors.items()),
        FETCH_CACHE_DIR=str(tmp_path / "worker-cache"),
        ARTIFACT_DIR=str(tmp_path / "artifacts"),
        BAKEHOUSE_VAR_DIR=str(tmp_path / "worker-var"),
    )
    return cast


def _approve_on_the_review_page(tab, version: str) -> None:
    tab.get_by_role("link", name=f"Review {version}", exact=True).click()
    tab.get_by_label("Approve (then pin every upstream digest)").check()
    tab.get_by_label("Reason").fill("First-hour approval")
    tab.get_by_role("button", name="Record decision").click()


def test_the_first_hour(page, snap, chromium, live_server, fresh_install):
    from playwright.sync_api import expect

    # The team admin's home page: in a team, nothing approved, composed or built yet.
    sign_in(page, "alice")
    checklist = page.locator("#first-run")
    expect(checklist.locator("[data-step=team]")).to_have_attribute("data-done", "true")
    for step in ("approve", "compose", "build"):
        expect(checklist.locator(f"[data-step={step}]")).to_have_attribute("data-done", "false")
    expect(checklist).to_contain_text("Django staff approve the built-in catalog")
    snap(page, "1-home-checklist")

    # The composer says why docker and the rest are not offered, and who can approve them.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Compose").click()
    page.get_by_label("Flavour name").fill("edge")
    page.get_by_label("x86-64").check()
    page.get_by_role("button", name="Next: extensions").click()
    waiting = page.locator("#unapproved")
    expect(waiting).to_contain_text("Django staff (the global catalog's curators) can approve these")
    expect(waiting.locator("li[data-extension=docker]")).to_contain_text("28.0.4 proposed")
    expect(waiting.locator("li[data-extension=docker-compose]")).to_be_visible()
    snap(page, "2-composer-waiting-for-approval")

    # A staff curator (a second browser) approves docker-compose and watches the pinning live.
    other = chromium.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    try:
        staff = other.new_page()
        sign_in(staff, "sam")
        staff.goto("/catalog/")
        staff.get_by_label("Search").fill("compose")  # filtered as typed, no button press
        cards = staff.get_by_role("list", name="Extensions")
        expect(cards.get_by_role("link", name="wasmtime")).to_have_count(0)
        expect(cards.get_by_role("link", name="docker-compose")).to_be_visible()
        expect(staff.locator("#catalog-count")).to_have_text("1 extension")
        assert "search=compose" in staff.url  # the filtered list is a link to share
        snap(staff, "3-catalog-filtered-as-typed")
        cards.get_by_role("link", name="docker-compose").click()
        staff.get_by_role("link", name="Review v2.34.0", exact=True).click()
        sources = staff.locator("#source-urls")
        expect(sources).to_contain_text("docker-compose-linux-x86_64")
        expect(sources).to_contain_text("docker-compose-linux-aarch64")
        snap(staff, "4-review-shows-what-will-be-fetched")
        staff.get_by_label("Approve (then pin every upstream digest)").check()
        staff.get_by_role("button", name="Record decision").click()
        staff.wait_for_url("**/versions/*/review/")
        status = staff.locator("#version-status")
        expect(status).to_contain_text(
            "Approved: every upstream file was fetched", timeout=PINNING_TIMEOUT_MS
        )
        expect(staff.locator("#version-badge .badge")).to_have_text("Approved")
        pinned = staff.locator("#source-urls .pinned-sha256").first
        expect(pinned).to_have_text(re.compile(r"^[0-9a-f]{64}$"))
        snap(staff, "5-pinned-live")

        # A version its upstream does not have: the page says pinning failed, and why.
        staff.goto("/catalog/docker-compose/")
        _approve_on_the_review_page(staff, "v2.33.1")
        expect(status).to_contain_text("Pinning failed: fetch.http-error", timeout=PINNING_TIMEOUT_MS)
        expect(staff.locator("#version-badge .badge")).to_have_text("Pinning failed")
        expect(staff.locator("#decision")).to_be_visible()  # approve again once the upstream is fixed
        snap(staff, "6-pinning-failed-live")
        staff.goto("/catalog/docker-compose/")
        expect(staff.locator("main")).to_contain_text("pinning failed: fetch.http-error")
        expect(staff.locator("main")).not_to_contain_text("v2.33.1 · Proposed")
    finally:
        other.close()
    failed = ExtensionVersion.objects.get(extension__name="docker-compose", version="v2.33.1")
    assert failed.status == VersionStatus.PIN_FAILED

    # Back to the team admin: docker-compose is offered, the checklist ticks approval.
    page.reload()
    expect(page.get_by_label("docker-compose")).to_be_visible()
    expect(page.locator("#unapproved li[data-extension=docker-compose]")).to_have_count(0)
    page.goto("/")
    expect(checklist.locator("[data-step=approve]")).to_have_attribute("data-done", "true")
    snap(page, "7-home-approval-ticked")

    # The team admin adds sam, refused first for a typo, then changes his role.
    checklist.get_by_role("link", name="Team page").click()
    form = page.locator("#member-add-form")
    form.get_by_label("Username").fill("sma")
    form.get_by_role("button", name="Add member").click()
    expect(page.locator("#id_username_error")).to_contain_text("No account is called 'sma'")
    snap(page, "8-team-unknown-username")
    form.get_by_label("Username").fill("sam")
    form.get_by_label("Role").select_option("viewer")
    form.get_by_role("button", name="Add member").click()
    expect(page.get_by_text("sam joined the team as Viewer.")).to_be_visible()
    row = page.locator("#members tr[data-member=sam]")
    row.get_by_label("Role of sam", exact=True).select_option("builder")
    row.get_by_role("button", name="Save the role of sam").click()
    expect(page.get_by_text("sam is now Builder.")).to_be_visible()
    snap(page, "9-team-member-role-changed")
    assert Membership.objects.get(team__slug="blue", user__username="sam").role == "builder"

    # The last admin cannot demote herself.
    page.locator("#members tr[data-member=alice]").get_by_label("Role of alice", exact=True).select_option(
        "viewer"
    )
    page.locator("#members tr[data-member=alice]").get_by_role(
        "button", name="Save the role of alice"
    ).click()
    expect(page.get_by_text("alice is the last admin of team blue")).to_be_visible()
    snap(page, "10-team-last-admin")
