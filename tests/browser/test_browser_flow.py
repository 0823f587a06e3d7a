"""The main flow in a real browser, with a real Celery worker baking from a local fake upstream.

Sign in, filter the catalog, compose docker + docker-compose through the wizard (the requires
hint offers docker), build, watch the progress reach 100 %, download the Butane and find the
image's hash in it; a user of another team gets a 404 for that flavour.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from builds.models import Build, BuildState, Flavour, ImageArtifact
from catalog import services as catalog_services
from catalog.models import ExtensionVersion, VersionStatus
from portal.celery import app as celery_app
from tests.browser.conftest import sign_in
from tests.upstream import UpstreamServer, executable, make_tar

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BUILD_TIMEOUT_MS = 240_000
DOCKER_FILES = (
    "docker",
    "dockerd",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "docker-init",
    "docker-proxy",
)


def _serve_docker_upstreams(upstream: UpstreamServer) -> dict[str, str]:
    """Tiny stand-ins for Docker's static tarballs and Compose's binaries, on 127.0.0.1."""
    for upstream_arch in ("x86_64", "aarch64"):
        tarball = make_tar(
            [executable(f"docker/{name}", f"#!/bin/sh\necho {name}\n".encode()) for name in DOCKER_FILES]
        )
        upstream.add_bytes(f"/dl/linux/static/stable/{upstream_arch}/docker-28.0.4.tgz", tarball)
        binary = f"#!/bin/sh\necho docker compose {upstream_arch}\n".encode()
        name = f"docker-compose-linux-{upstream_arch}"
        upstream.add_bytes(f"/gh/docker/compose/releases/download/v2.34.0/{name}", binary)
        upstream.add_bytes(
            f"/gh/docker/compose/releases/download/v2.34.0/{name}.sha256",
            f"{hashlib.sha256(binary).hexdigest()} *{name}\n".encode(),
        )
    return {"https://download.docker.com/": upstream.url("/dl/"), "https://github.com/": upstream.url("/gh/")}


def _approve(curator: User, name: str, version: str) -> None:
    """Approve a built-in version the way a curator does; the pinning task runs in-process here."""
    row = ExtensionVersion.objects.get(extension__team__isnull=True, extension__name=name, version=version)
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        catalog_services.version_approve(
            version=row, actor=curator, reason="Fixture release for the browser test"
        )
    finally:
        celery_app.conf.task_always_eager = before
    row.refresh_from_db()
    assert row.status == VersionStatus.APPROVED, row.pinning_error


@pytest.fixture
def baking_world(
    transactional_db,
    cast,
    settings,
    tmp_path: Path,
    upstream: UpstreamServer,
    celery_worker_process,
    live_server,
):
    mirrors = _serve_docker_upstreams(upstream)
    settings.UPSTREAM_MIRRORS = mirrors
    settings.FETCH_CACHE_DIR = tmp_path / "portal-cache"
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    # The flavour page links the URLs nodes fetch: here, this live server's /artifacts/.
    settings.PUBLIC_BASE_URL = f"{live_server.url}/artifacts/"
    catalog_services.catalog_sync()

    curator = cast.staff  # staff curate the global catalog
    _approve(curator, "docker", "28.0.4")
    _approve(curator, "docker-compose", "v2.34.0")

    celery_worker_process(
        UPSTREAM_MIRRORS=" ".join(f"{src}={dst}" for src, dst in mirrors.items()),
        FETCH_CACHE_DIR=str(tmp_path / "worker-cache"),
        ARTIFACT_DIR=str(settings.ARTIFACT_DIR),
        BAKEHOUSE_VAR_DIR=str(tmp_path / "worker-var"),
        PUBLIC_BASE_URL=settings.PUBLIC_BASE_URL,
    )
    return {"alice": cast.alice, "carol": cast.carol}


def test_compose_docker_with_compose_build_and_download(page, snap, chromium, live_server, baking_world):
    from playwright.sync_api import expect

    sign_in(page, "alice")

    # The catalog, filtered by text and category.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Catalog").click()
    page.get_by_label("Search").fill("docker")
    page.get_by_label("Category").select_option("container-runtime")
    page.get_by_role("button", name="Filter").click()
    extensions = page.get_by_role("list", name="Extensions")
    expect(extensions.get_by_role("link", name="docker", exact=True)).to_be_visible()
    expect(extensions.get_by_role("link", name="wasmtime")).to_have_count(0)
    expect(extensions.get_by_role("link", name="containerd", exact=True)).to_have_count(0)
    snap(page, "catalog-filtered")
    extensions.get_by_role("link", name="docker", exact=True).click()
    expect(page.get_by_text("Fixture release for the browser test").first).to_be_visible()
    snap(page, "extension-docker")

    # Step 1: target.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Compose").click()
    page.get_by_label("Flavour name").fill("edge-docker")
    page.get_by_label("x86-64").check()
    page.get_by_label("Target Flatcar channel").select_option("beta")
    snap(page, "compose-1-target")
    page.get_by_role("button", name="Next: extensions").click()

    # Step 2: picking docker-compose offers docker.
    page.get_by_label("docker-compose").select_option("v2.34.0")
    hints = page.locator("#relation-hints")
    expect(hints).to_contain_text("docker-compose requires docker.")
    snap(page, "compose-2-requires-hint")
    hints.get_by_role("button", name="Add docker 28.0.4").click()
    expect(page.get_by_label("docker", exact=True)).to_have_value("28.0.4")
    expect(hints).not_to_contain_text("requires docker")
    page.get_by_role("button", name="Next: options").click()

    # Step 3: options (defaults), and the URL carries every choice so far.
    assert "x_docker=28.0.4" in page.url and "x_docker-compose=v2.34.0" in page.url
    snap(page, "compose-3-options")
    page.get_by_role("button", name="Next: review").click()

    # Step 4: the flavour ID and the Build button.
    review_url = page.url
    flavour_id = page.locator("#flavour-id").inner_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", flavour_id)
    snap(page, "compose-4-review")
    page.get_by_role("button", name="Build").click()

    # The build page updates live until the progress reaches 100 %.
    page.wait_for_url(re.compile(r"/builds/[0-9a-f-]{36}/$"))
    expect(page.locator("#build-progress")).to_have_attribute("value", "100", timeout=BUILD_TIMEOUT_MS)
    build = Build.objects.get(flavour_id=flavour_id)
    assert build.state == BuildState.SUCCEEDED, f"{build.error_code}: {build.error_message}"
    expect(page.locator("#build-state")).to_have_text("Succeeded")
    expect(page.locator("#build-log pre")).to_contain_text("Build succeeded.")  # the build's own lines
    snap(page, "build-succeeded")

    # A reload shows the same finished build, rendered by the server.
    page.reload()
    expect(page.locator("#progress-text")).to_have_text("100 %")

    # The flavour page: download the Butane and find the docker image's hash in it.
    page.get_by_role("link", name="Downloads").click()
    expect(page.get_by_role("heading", name=re.compile("edge-docker"))).to_be_visible()
    snap(page, "flavour")
    with page.expect_download() as download_info:
        page.locator("#artifacts tr[data-kind=butane] a.file").click()
    butane = Path(download_info.value.path()).read_text()
    with page.expect_download() as download_info:
        page.locator("#artifacts tr[data-kind=image] a.file", has_text="docker-28.0.4-x86-64.raw").click()
    image_bytes = Path(download_info.value.path()).read_bytes()
    # The config pins the very bytes a person downloads (Ignition checks them at boot).
    assert f"hash: sha512-{hashlib.sha512(image_bytes).hexdigest()}" in butane
    image = ImageArtifact.objects.get(extension_version__extension__name="docker", arch="x86-64")
    assert image.sha256 == hashlib.sha256(image_bytes).hexdigest()
    page.locator("#butane-details summary").click()  # the configs start collapsed
    assert page.locator("#butane").inner_text().strip() == butane.strip()
    # The install commands target the channel picked in step 1.
    expect(page.locator("#commands")).to_contain_text("flatcar-install -d /dev/sda -C beta -i config.ign")

    # The shared review link now shows the Butane these exact choices published.
    page.goto(review_url)
    expect(page.locator("#flavour-id")).to_have_text(flavour_id)
    expect(page.locator("#butane")).to_contain_text(f"sha512-{hashlib.sha512(image_bytes).hexdigest()}")

    # Someone of another team cannot open it.
    other = chromium.new_context(base_url=live_server.url)
    try:
        carols = other.new_page()
        sign_in(carols, "carol")
        response = carols.goto(f"/flavours/{flavour_id}/")
        assert response.status == 404
        assert carols.goto(f"/builds/{build.pk}/").status == 404
        assert "edge-docker" not in carols.content()
        snap(carols, "other-team-404")
    finally:
        other.close()
    assert Flavour.objects.filter(pk=flavour_id, team__slug="blue").exists()
