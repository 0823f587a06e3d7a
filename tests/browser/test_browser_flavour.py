"""The flavour page of a built flavour in a real browser: the downloads with the listing that
verifies each, the Butane and Ignition opened from their collapsed sections, a download, and the
compare page of two revisions. The builds run in-process (Celery eager, local store)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from builds import services
from builds.models import BuildState, Flavour
from portal.celery import app
from tests.browser.conftest import sign_in
from tests.builds.build_support import serve_extension, upstream_mirrors
from tests.upstream import UpstreamServer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def built_revisions(
    transactional_db: Any,
    cast: Any,
    settings: Any,
    tmp_path: Path,
    upstream: UpstreamServer,
    live_server: Any,
) -> tuple[Flavour, Flavour]:
    """Team blue's flavour: revision 1 with hello v0.9.0, revision 2 with hello v1.0.0 and world."""
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.FETCH_CACHE_DIR = tmp_path / "cache"
    settings.UPSTREAM_MIRRORS = upstream_mirrors(upstream)
    settings.S3 = None
    settings.PUBLIC_BASE_URL = f"{live_server.url}/artifacts/"  # the page links what nodes fetch
    serve_extension(upstream, "hello")
    serve_extension(upstream, "world")
    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    try:
        made: list[Flavour] = []
        for extensions, options in (
            ([{"name": "hello", "version": "v0.9.0"}], {"hostname": "edge-1"}),
            (
                [{"name": "hello", "version": "v1.0.0"}, {"name": "world", "version": "v1.0.0"}],
                {"hostname": "edge-2"},
            ),
        ):
            flavour, _ = services.flavour_create(
                user=cast.alice, team=cast.blue, name="edge", arch="x86-64", extensions=extensions,
                options=options, revision_of=made[-1] if made else None,
            )  # fmt: skip
            build, _ = services.build_request(flavour=flavour, user=cast.alice)
            build.refresh_from_db()
            assert build.state == BuildState.SUCCEEDED, f"{build.error_code}: {build.error_message}"
            made.append(flavour)
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = previous
    return made[0], made[1]


def test_flavour_page_downloads_configs_and_compare(page: Any, snap: Any, built_revisions: Any) -> None:
    from playwright.sync_api import expect

    first, second = built_revisions
    sign_in(page, "alice")
    page.goto(f"/flavours/{second.pk}/")
    expect(page.get_by_role("heading", name=re.compile("edge"))).to_be_visible()
    table = page.locator("#artifacts")
    # Each image sits in its extension's directory with the signed listing that covers it.
    world = table.locator("tbody[data-directory='extensions/world/']")
    expect(world.locator("tr[data-kind=image] a.file")).to_have_text("world-v1.0.0-x86-64.raw")
    expect(world.get_by_role("link", name="SHA256SUMS").first).to_be_visible()
    expect(page.locator("#verify-how")).to_contain_text("SHA256SUMS.gpg")
    expect(page.locator("#verify-command")).to_contain_text("sha256sum -c --ignore-missing SHA256SUMS")
    expect(page.locator("#commands")).to_contain_text("flatcar-install -d /dev/sda")
    # The configs start collapsed: the page stays short.
    expect(page.locator("#butane")).to_be_hidden()
    snap(page, "1-flavour")

    with page.expect_download() as download_info:
        world.locator("tr[data-kind=image] a.file").click()
    image = Path(download_info.value.path()).read_bytes()
    digest = world.locator("tr[data-kind=image] td.digest").first.inner_text().strip()
    assert hashlib.sha256(image).hexdigest() == digest

    page.locator("#butane-details summary").click()
    expect(page.locator("#butane")).to_be_visible()
    expect(page.locator("#butane")).to_contain_text("variant: flatcar")
    expect(page.locator("#butane")).to_contain_text("edge-2")
    snap(page, "2-butane-open")

    page.locator("#ignition-details summary").click()
    expect(page.locator("#ignition")).to_be_visible()
    assert '\n  "ignition": {' in page.locator("#ignition").inner_text()  # pretty-printed
    snap(page, "3-ignition-open")

    page.get_by_role("link", name="Compare revisions").click()
    page.wait_for_url(re.compile(rf"/flavours/{second.pk}/compare/"))
    expect(page.locator("#base")).to_have_value(first.pk)
    expect(page.locator("tr[data-extension=hello]")).to_contain_text("v0.9.0")
    expect(page.locator("tr[data-extension=hello]")).to_contain_text("v1.0.0")
    expect(page.locator("tr[data-extension=world]")).to_have_attribute("data-change", "added")
    expect(page.locator("tr[data-option=hostname]")).to_contain_text("edge-2")
    expect(page.locator("#butane-diff .diff-add").first).to_be_visible()
    expect(page.locator("#butane-diff")).to_contain_text("+")
    snap(page, "4-compare")

    # From revision 1 the same comparison reads the other way round.
    page.goto(f"/flavours/{first.pk}/compare/")
    page.locator("#base").select_option(second.pk)
    page.get_by_role("button", name="Compare").click()
    expect(page.locator("tr[data-extension=world]")).to_have_attribute("data-change", "removed")
    snap(page, "5-compare-reversed")
