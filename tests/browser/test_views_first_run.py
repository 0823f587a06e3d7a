"""The first hour: the home page checklist ticks from the database, the composer names what waits
for approval and who approves it, and its errors use page words."""

from __future__ import annotations

from typing import Any

import pytest

from builds.models import Build, BuildState
from builds.services import flavour_create
from catalog import services
from catalog.models import ExtensionVersion, Membership, VersionStatus
from tests.builds.catalog_fixtures import make_extension
from tests.factories import Cast, UserFactory

pytestmark = pytest.mark.django_db


def _steps(client: Any) -> dict[str, bool]:
    response = client.get("/")
    assert response.status_code == 200
    return {step.key: step.done for step in response.context["checklist"]}


def test_checklist_on_a_fresh_install_ticks_step_by_step(client: Any, cast: Cast) -> None:
    services.catalog_sync()  # every built-in version proposed
    newcomer = UserFactory(username="nina")
    client.force_login(newcomer)
    assert _steps(client) == {"team": False, "approve": False, "compose": False, "build": False}
    html = client.get("/").content.decode()
    assert "Getting started" in html and "Join a team" in html
    assert "manage.py team_member SLUG nina" in html
    assert "/catalog/?status=proposed" in html

    Membership.objects.create(team=cast.blue, user=newcomer, role="builder")
    assert _steps(client) == {"team": True, "approve": False, "compose": False, "build": False}
    assert "/teams/blue/" in client.get("/").content.decode()

    version = ExtensionVersion.objects.get(extension__name="wasmtime", version="v31.0.0")
    version.status = VersionStatus.APPROVED
    version.save()
    assert _steps(client)["approve"] is True

    make_extension("hello")
    flavour, _ = flavour_create(
        user=newcomer,
        team=cast.blue,
        name="edge",
        arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}],
    )
    assert _steps(client)["compose"] is True
    build = Build.objects.create(flavour=flavour, state=BuildState.FAILED)
    assert _steps(client)["build"] is False  # only a successful build counts
    build.state = BuildState.SUCCEEDED
    build.save()
    assert all(_steps(client).values())
    assert "Getting started: every step done" in client.get("/").content.decode()


def test_checklist_tells_staff_where_to_create_a_team_and_curators_to_approve(
    client: Any, cast: Cast
) -> None:
    client.force_login(cast.staff)
    html = client.get("/").content.decode()
    assert "Create a team" in html and "/admin/catalog/team/add/" in html
    assert "Approve a version on its catalog page" in html
    client.force_login(cast.viewer)
    html = client.get("/").content.decode()
    assert "Django staff approve the built-in catalog and team curators" in html
    client.force_login(cast.curator)
    assert "You approve your team&#x27;s own extensions" in client.get("/").content.decode()


@pytest.fixture
def composer(cast: Cast) -> Cast:
    make_extension("hello", versions={"v1.0.0": VersionStatus.APPROVED})
    make_extension("docker", versions={"28.0.4": VersionStatus.PROPOSED, "27.5.1": VersionStatus.PROPOSED})
    make_extension("kubernetes", versions={"v1.33.1": VersionStatus.PIN_FAILED})
    make_extension("bluetool", team=cast.blue, versions={"v1.0.0": VersionStatus.PROPOSED})
    return cast


STEP2 = {"team": "blue", "name": "edge", "arch": "x86-64", "channel": "stable"}


def _groups(client: Any) -> dict[str, dict[str, Any]]:
    groups = client.get("/compose/extensions/", STEP2).context["unapproved"]
    return {g["approvers"]: {**g, "names": {r["extension"].name: r for r in g["rows"]}} for g in groups}


STAFF = "Django staff (the global catalog's curators)"
BLUE = "The curators of team Blue"


def test_composer_lists_unapproved_extensions_with_who_approves(client: Any, composer: Cast) -> None:
    client.force_login(composer.builder)
    groups = _groups(client)
    assert set(groups[STAFF]["names"]) == {"docker", "kubernetes"}
    assert set(groups[BLUE]["names"]) == {"bluetool"}
    assert not groups[STAFF]["can_approve"] and not groups[BLUE]["can_approve"]
    html = client.get("/compose/extensions/", STEP2).content.decode()
    assert "Waiting for approval" in html
    assert "Django staff (the global catalog&#x27;s curators) can approve these; ask them:" in html
    assert "The curators of team Blue can approve these; ask them:" in html
    assert "v1.33.1 pinning failed" in html  # never "proposed"
    assert "28.0.4 proposed" in html  # the newest undecided version


def test_composer_links_curators_to_the_review_page(client: Any, composer: Cast) -> None:
    client.force_login(composer.curator)  # curator of blue: approves bluetool, not the globals
    groups = _groups(client)
    bluetool = ExtensionVersion.objects.get(extension__name="bluetool")
    assert groups[BLUE]["can_approve"]
    assert groups[BLUE]["names"]["bluetool"]["link"] == f"/versions/{bluetool.pk}/review/"
    assert not groups[STAFF]["can_approve"]
    assert groups[STAFF]["names"]["docker"]["link"] == "/catalog/docker/"
    composer.curator.is_staff = True
    composer.curator.save()
    newest = ExtensionVersion.objects.get(extension__name="docker", version="28.0.4")
    assert _groups(client)[STAFF]["names"]["docker"]["link"] == f"/versions/{newest.pk}/review/"
    html = client.get("/compose/extensions/", STEP2).content.decode()
    assert "You can approve these" in html and "Review docker 28.0.4" in html


def test_composer_errors_use_page_words(client: Any, composer: Cast) -> None:
    client.force_login(composer.builder)
    html = client.get("/compose/extensions/", {**STEP2, "go": "next"}).content.decode()
    assert "Choose at least one extension." in html
    assert "{name, version}" not in html


def test_the_api_keeps_its_shape_hint_for_scripts(composer: Cast) -> None:
    api = composer.client(composer.builder)
    wrong = api.post(
        "/api/flavours/",
        {"team": "blue", "name": "x", "arch": "x86-64", "extensions": "hello"},
        format="json",
    )
    assert wrong.status_code == 400
    assert "list of {name, version}" in str(wrong.json())
    empty = api.post(
        "/api/flavours/", {"team": "blue", "name": "x", "arch": "x86-64", "extensions": []}, format="json"
    )
    assert "Choose at least one extension." in str(empty.json())
