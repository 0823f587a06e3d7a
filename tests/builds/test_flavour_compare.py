"""Comparing two revisions of a flavour: extensions added, removed and at another version, option
changes and the Butane diff, through the page and the API."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from builds import services
from builds.adapters.store import get_artifact_store
from builds.models import Artifact, ArtifactKind, Build, BuildState, Flavour
from catalog.models import VersionStatus
from tests.builds.catalog_fixtures import Cast, make_extension

pytestmark = pytest.mark.django_db

TWO = {"v1.0.0": VersionStatus.APPROVED, "v2.0.0": VersionStatus.APPROVED}


@pytest.fixture
def revisions(cast: Cast, settings: Any, tmp_path: Any) -> tuple[Flavour, Flavour]:
    """Revision 1 (alpha v1, beta; hostname one) and revision 2 (alpha v2, gamma; hostname two,
    updates off). Revision 1 is built: its published Butane is the one compared."""
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.S3 = None
    for name in ("alpha", "beta", "gamma"):
        make_extension(name, versions=TWO)
    first, _ = services.flavour_create(
        user=cast.teammate,
        team=cast.blue,
        name="web",
        arch="x86-64",
        extensions=[{"name": "alpha", "version": "v1.0.0"}, {"name": "beta", "version": "v1.0.0"}],
        options={"hostname": "one"},
    )
    second, _ = services.flavour_create(
        user=cast.teammate,
        team=cast.blue,
        name="web",
        arch="x86-64",
        extensions=[{"name": "alpha", "version": "v2.0.0"}, {"name": "gamma", "version": "v1.0.0"}],
        options={"hostname": "two", "updates": False},
        revision_of=first,
    )
    build = Build.objects.create(flavour=first, state=BuildState.SUCCEEDED, progress=100)
    stored = get_artifact_store().put_bytes(
        f"flavours/{first.pk}/config.bu", b"variant: flatcar\n# published-marker\nhostname: one\n"
    )
    Artifact.objects.create(
        build=build, flavour=first, kind=ArtifactKind.BUTANE, name="config.bu", key=stored.key,
        sha256=stored.sha256, size=stored.size,
    )  # fmt: skip
    return first, second


def test_api_compare_lists_extension_and_option_changes_and_the_butane_diff(
    cast: Cast, revisions: tuple[Flavour, Flavour]
) -> None:
    first, second = revisions
    response = cast.client(cast.viewer).get(f"/api/flavours/{second.pk}/compare/{first.pk}")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["base"]["id"] == first.pk and body["flavour"]["revision"] == 2
    assert body["extensions"] == [
        {"name": "alpha", "change": "changed", "old_version": "v1.0.0", "new_version": "v2.0.0"},
        {"name": "beta", "change": "removed", "old_version": "v1.0.0", "new_version": None},
        {"name": "gamma", "change": "added", "old_version": None, "new_version": "v1.0.0"},
    ]
    options = {o["name"]: (o["old"], o["new"]) for o in body["options"]}
    assert options == {"hostname": ("one", "two"), "updates": (True, False)}
    butane = body["butane"]
    # The built revision is compared as published; the other one as the composer previews it.
    assert (butane["base_source"], butane["flavour_source"]) == ("published", "preview")
    diff = butane["diff"].splitlines()
    assert diff[0].startswith("--- revision 1") and diff[1].startswith("+++ revision 2")
    assert "-# published-marker" in diff
    assert any(line.startswith("+") and "alpha-v2.0.0-x86-64.raw" in line for line in diff)
    assert any(line.startswith("+") and "gamma" in line for line in diff)

    # Reversed, the same changes read the other way.
    back = cast.client(cast.viewer).get(f"/api/flavours/{first.pk}/compare/{second.pk}").json()
    assert [(e["name"], e["change"]) for e in back["extensions"]] == [
        ("alpha", "changed"), ("beta", "added"), ("gamma", "removed"),
    ]  # fmt: skip
    assert "+# published-marker" in back["butane"]["diff"].splitlines()


def test_api_compare_with_itself_has_no_changes_and_other_teams_flavours_do_not_exist(
    cast: Cast, revisions: tuple[Flavour, Flavour]
) -> None:
    first, second = revisions
    same = cast.client(cast.viewer).get(f"/api/flavours/{second.pk}/compare/{second.pk}").json()
    assert same["extensions"] == [] and same["options"] == [] and same["butane"]["diff"] == ""
    assert same["unchanged_extensions"] == ["alpha", "gamma"]
    outsider = cast.client(cast.outsider)
    assert outsider.get(f"/api/flavours/{second.pk}/compare/{first.pk}").status_code == 404
    missing = cast.client(cast.viewer).get(f"/api/flavours/{second.pk}/compare/{'0' * 64}")
    assert missing.status_code == 404 and missing.json()["code"]


def test_compare_page_defaults_to_the_previous_revision_and_shows_the_diff(
    cast: Cast, revisions: tuple[Flavour, Flavour]
) -> None:
    first, second = revisions
    client = Client()
    client.force_login(cast.viewer)
    detail = client.get(f"/flavours/{second.pk}/").content.decode()
    assert f'href="/flavours/{second.pk}/compare/"' in detail

    page = client.get(f"/flavours/{second.pk}/compare/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'<option value="{first.pk}" selected>' in html
    assert 'data-change="changed" data-extension="alpha"' in html
    assert 'data-change="removed" data-extension="beta"' in html
    assert 'data-change="added" data-extension="gamma"' in html
    assert 'data-option="hostname"' in html and 'data-option="updates"' in html
    assert '<span class="diff-remove">-# published-marker</span>' in html
    assert "A revision not built yet is compared with its preview" in html

    # Picking a base explicitly; an unknown one says so instead of failing.
    picked = client.get(f"/flavours/{first.pk}/compare/", {"base": second.pk}).content.decode()
    assert 'data-change="added" data-extension="beta"' in picked
    unknown = client.get(f"/flavours/{second.pk}/compare/", {"base": "f" * 64})
    assert unknown.status_code == 200
    assert "No such flavour among your teams" in unknown.content.decode()
    assert "data-change" not in unknown.content.decode()

    outsider = Client()
    outsider.force_login(cast.outsider)
    assert outsider.get(f"/flavours/{second.pk}/compare/").status_code == 404
