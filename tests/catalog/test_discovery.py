"""Upstream discovery against a fake GitHub releases API: pagination, skips, proposals only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from catalog.models import ApprovalRecord, ExtensionVersion, VersionStatus
from catalog.tasks import discover_upstream_releases
from tests.catalog.conftest import DEMO_RECIPE, write_recipe
from tests.upstream import UpstreamServer

pytestmark = pytest.mark.django_db

# Tags carry no "v"; the recipe uses v{version_nov}, like spin or wazero.
NOV_RECIPE = (
    DEMO_RECIPE.replace("name: demo", "name: novtool")
    .replace("example/demo/releases/download/{version}", "example/novtool/releases/download/v{version_nov}")
    .replace("v1.0.0: {}", "1.0.0: {}")
    .replace("v1.0.1: {}", "1.0.1: {}")
)


def release(tag: str, *, prerelease: bool = False, draft: bool = False) -> dict[str, object]:
    return {"tag_name": tag, "prerelease": prerelease, "draft": draft, "name": tag}


def serve_releases(upstream: UpstreamServer, repo: str, pages: list[list[dict[str, object]]]) -> None:
    """GitHub-style pages linked by ``Link: <...>; rel="next"`` (paths differ: the fake ignores queries)."""
    for i, page in enumerate(pages):
        path = f"/repos/example/{repo}/releases" if i == 0 else f"/repos/example/{repo}/releases/page{i + 1}"
        headers = {"Content-Type": "application/json"}
        if i + 1 < len(pages):
            headers["Link"] = (
                f'<{upstream.url(f"/repos/example/{repo}/releases/page{i + 2}")}>; rel="next", '
                f'<{upstream.url(f"/repos/example/{repo}/releases/page{len(pages)}")}>; rel="last"'
            )
        upstream.add_bytes(path, json.dumps(page).encode(), headers=headers)


@pytest.fixture
def recipes(tmp_path: Path, upstream: UpstreamServer, settings) -> Path:
    settings.GITHUB_API_URL = upstream.base_url
    write_recipe(tmp_path, "demo", DEMO_RECIPE)
    write_recipe(tmp_path, "novtool", NOV_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path), verbosity=0)
    return tmp_path


def versions(name: str) -> dict[str, str]:
    return dict(ExtensionVersion.objects.filter(extension__name=name).values_list("version", "status"))


def test_new_releases_across_pages_are_proposed_never_approved(
    recipes: Path, upstream: UpstreamServer
) -> None:
    serve_releases(
        upstream,
        "demo",
        [
            [release("v1.3.0", draft=True), release("v1.2.0-rc1", prerelease=True), release("v1.2.0")],
            [release("v1.1.0"), release("v1.0.1"), release("nightly")],
            [release("v1.0.0"), release("v0.9.0")],
        ],
    )
    serve_releases(upstream, "novtool", [[release("v1.10.0"), release("v1.9.0", prerelease=True)]])

    proposed = discover_upstream_releases()  # the periodic task, run in-process

    assert sorted(proposed) == ["demo v1.1.0", "demo v1.2.0", "novtool 1.10.0"]
    assert upstream.hits("/repos/example/demo/releases/page3") == 1
    assert versions("demo") == {
        "v1.0.0": VersionStatus.PROPOSED,
        "v1.0.1": VersionStatus.PROPOSED,
        "v1.1.0": VersionStatus.PROPOSED,
        "v1.2.0": VersionStatus.PROPOSED,
    }
    assert versions("novtool")["1.10.0"] == VersionStatus.PROPOSED
    record = ApprovalRecord.objects.get(version__version="v1.2.0")
    assert record.actor is None and record.actor_label == "upstream discovery"
    assert "v1.2.0" in record.reason
    new = ExtensionVersion.objects.get(version="v1.2.0")
    url = new.recipe().resolve("v1.2.0", "x86-64")[0].url
    assert url == "https://github.com/example/demo/releases/download/v1.2.0/demo-v1.2.0-x86_64.tar.gz"

    # Running again files nothing new, even after a curator rejected one of them.
    new.status = VersionStatus.REJECTED
    new.save()
    assert discover_upstream_releases() == []
    assert len(versions("demo")) == 4


def test_a_next_link_leaving_the_api_host_is_refused(recipes: Path, upstream: UpstreamServer) -> None:
    upstream.add_bytes(
        "/repos/example/demo/releases",
        json.dumps([release("v2.0.0")]).encode(),
        headers={"Link": '<https://evil.example/releases?page=2>; rel="next"'},
    )
    upstream.add_status("/repos/example/novtool/releases", 403, b'{"message": "rate limited"}')

    from catalog.services import upstream_discover

    report = upstream_discover()

    assert report.proposed == []
    assert any("leaves the API host" in e for e in report.errors)
    assert any("HTTP 403" in e for e in report.errors)
    assert "v2.0.0" not in versions("demo")
