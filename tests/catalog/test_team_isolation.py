"""Another team's private extensions do not exist for you: not in lists, details or actions."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command

from catalog.models import Extension, ExtensionVersion, Membership, Role
from tests.catalog.conftest import DEMO_RECIPE, Cast, write_recipe

pytestmark = pytest.mark.django_db

SECRET = DEMO_RECIPE.replace("name: demo", "name: secret").replace("example/demo", "blue/secret")


@pytest.fixture
def catalog(cast: Cast, tmp_path: Path) -> ExtensionVersion:
    """A global 'demo' and team blue's private 'secret'; returns secret's v1.0.1."""
    write_recipe(tmp_path, "demo", DEMO_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path), verbosity=0)
    response = cast.client(cast.curator).post(
        "/api/extensions/", {"team": "blue", "recipe": SECRET}, format="json"
    )
    assert response.status_code == 201, response.content
    return ExtensionVersion.objects.get(extension__name="secret", version="v1.0.1")


def names(client, query: str = "") -> set[str]:
    response = client.get(f"/api/extensions/{query}")
    assert response.status_code == 200, response.content
    return {e["name"] for e in response.json()["results"]}


def test_lists_show_global_plus_own_team_only(cast: Cast, catalog: ExtensionVersion) -> None:
    assert names(cast.client(cast.curator)) == {"demo", "secret"}
    assert names(cast.client(cast.teammate)) == {"demo", "secret"}
    assert names(cast.client(cast.outsider)) == {"demo"}
    assert names(cast.client(cast.outsider), "?search=secret") == set()
    assert names(cast.client(cast.curator), "?search=secret") == {"secret"}
    assert names(cast.client(cast.curator), "?category=tool&arch=arm64") == {"demo", "secret"}
    assert names(cast.client(cast.curator), "?category=kubernetes") == set()


def test_anonymous_users_see_nothing(catalog: ExtensionVersion) -> None:
    from rest_framework.test import APIClient

    response = APIClient().get("/api/extensions/")
    assert response.status_code in (401, 403)
    assert "code" in response.json()


def test_details_of_another_team_are_not_found(cast: Cast, catalog: ExtensionVersion) -> None:
    mine = cast.client(cast.teammate).get("/api/extensions/secret/")
    assert mine.status_code == 200
    assert mine.json()["team"] == "blue"
    assert {v["version"] for v in mine.json()["versions"]} == {"v1.0.0", "v1.0.1"}

    theirs = cast.client(cast.outsider).get("/api/extensions/secret/")
    assert theirs.status_code == 404
    assert theirs.json()["code"] == "extension.not-found"
    assert cast.client(cast.outsider).get(f"/api/versions/{catalog.pk}/").status_code == 404
    assert cast.client(cast.outsider).get("/api/extensions/?team=blue").status_code == 404


def test_actions_on_another_team_are_not_found_and_change_nothing(
    cast: Cast, catalog: ExtensionVersion
) -> None:
    outsider = cast.client(cast.outsider)
    assert (
        outsider.post("/api/extensions/secret/versions/", {"version": "v9"}, format="json").status_code == 404
    )
    assert outsider.post(f"/api/versions/{catalog.pk}/approve", {}, format="json").status_code == 404
    rejected = outsider.post(f"/api/versions/{catalog.pk}/reject", {"reason": "mine now"}, format="json")
    assert rejected.status_code == 404
    sneaky = outsider.post("/api/extensions/", {"team": "blue", "recipe": SECRET}, format="json")
    assert sneaky.status_code == 404
    catalog.refresh_from_db()
    assert catalog.status == "proposed"
    assert catalog.approvals.count() == 1
    assert not ExtensionVersion.objects.filter(version="v9").exists()


def test_roles_inside_the_team(cast: Cast, catalog: ExtensionVersion) -> None:
    viewer = cast.client(cast.viewer)
    assert viewer.get("/api/extensions/secret/").status_code == 200
    refused = viewer.post("/api/extensions/secret/versions/", {"version": "v1.1.0"}, format="json")
    assert refused.status_code == 403
    assert "builder" in refused.json()["message"]
    builder = cast.client(cast.teammate)
    assert (
        builder.post("/api/extensions/secret/versions/", {"version": "v1.1.0"}, format="json").status_code
        == 201
    )
    assert (
        builder.post(f"/api/versions/{catalog.pk}/reject", {"reason": "no"}, format="json").status_code == 403
    )
    curator = cast.client(cast.curator)
    assert (
        curator.post(f"/api/versions/{catalog.pk}/reject", {"reason": "broken"}, format="json").status_code
        == 200
    )


def test_team_names_cannot_shadow_the_global_catalog(cast: Cast, catalog: ExtensionVersion) -> None:
    clash = cast.client(cast.curator).post(
        "/api/extensions/", {"team": "blue", "recipe": DEMO_RECIPE}, format="json"
    )
    assert clash.status_code == 409
    assert clash.json()["code"] == "extension.name-taken"


def test_private_names_are_unique_across_teams(cast: Cast, catalog: ExtensionVersion) -> None:
    # Blue already has a private "secret"; red may not take the name, because both would publish
    # to extensions/secret/ and mix their signed SHA256SUMS.
    red = cast.client(cast.outsider).post(
        "/api/extensions/", {"team": "red", "recipe": SECRET}, format="json"
    )
    assert red.status_code == 409
    assert red.json()["code"] == "extension.name-taken"
    assert Extension.objects.filter(name="secret").count() == 1
    # Red still cannot see blue's extension itself.
    assert cast.client(cast.outsider).get("/api/extensions/secret/").status_code == 404


def test_a_member_of_two_teams_says_which_team_a_new_extension_is_for(
    cast: Cast, catalog: ExtensionVersion
) -> None:
    Membership.objects.create(team=cast.other_team, user=cast.curator, role=Role.CURATOR)
    client = cast.client(cast.curator)
    assert client.get("/api/extensions/secret/?team=blue").json()["team"] == "blue"
    assert client.get("/api/extensions/secret/?team=red").status_code == 404
    no_team = client.post("/api/extensions/", {"recipe": SECRET.replace("secret", "other")}, format="json")
    assert no_team.status_code == 400
    assert no_team.json()["code"] == "team.required"
    assert Extension.objects.filter(name="other").count() == 0


def test_list_filter_refuses_unknown_values_with_a_400_naming_the_field(
    cast: Cast, catalog: ExtensionVersion
) -> None:
    client = cast.client(cast.owner)
    for query, field in (("?category=nope", "category"), ("?arch=sparc", "arch")):
        response = client.get(f"/api/extensions/{query}")
        assert response.status_code == 400, response.content
        body = response.json()
        assert body["code"] == "invalid" and list(body["fields"]) == [field]
    assert names(client, "?search=" + "secret" + "x" * 200) == set()  # cut to 100, not refused
