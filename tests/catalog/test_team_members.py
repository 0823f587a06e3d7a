"""Team membership: admins add, re-role and remove members (page and API share the rules); the
last admin stays; an unknown username is a clear 400; everyone else reads the list."""

from __future__ import annotations

from typing import Any

import pytest

from catalog import services
from catalog.errors import CatalogError
from catalog.models import Membership, Role
from tests.factories import Cast

pytestmark = pytest.mark.django_db

MEMBERS = "/api/teams/blue/members/"


def _role(cast: Cast, username: str) -> str | None:
    return (
        Membership.objects.filter(team=cast.blue, user__username=username)
        .values_list("role", flat=True)
        .first()
    )


# --- API ------------------------------------------------------------------------------------------


def test_every_member_reads_the_list_with_roles(cast: Cast) -> None:
    for user in (cast.viewer, cast.builder, cast.curator, cast.admin):
        response = cast.client(user).get(MEMBERS)
        assert response.status_code == 200
        assert {row["username"]: row["role"] for row in response.json()} == {
            "alice": "admin",
            "bob": "builder",
            "cora": "curator",
            "vera": "viewer",
        }
    # Another team's admin and staff outside the team: the team does not exist for them.
    assert cast.client(cast.outsider).get(MEMBERS).status_code == 404
    assert cast.client(cast.staff).get(MEMBERS).status_code == 404


def test_admin_adds_changes_and_removes_a_member(cast: Cast) -> None:
    api = cast.client(cast.admin)
    added = api.post(MEMBERS, {"username": "sam", "role": "builder"}, format="json")
    assert added.status_code == 201, added.content
    assert added.json()["username"] == "sam" and added.json()["role"] == "builder"
    assert _role(cast, "sam") == "builder"

    changed = api.patch(f"{MEMBERS}sam/", {"role": "curator"}, format="json")
    assert changed.status_code == 200 and changed.json()["role"] == "curator"
    assert _role(cast, "sam") == "curator"

    assert api.delete(f"{MEMBERS}sam/").status_code == 204
    assert _role(cast, "sam") is None
    assert api.get(f"{MEMBERS}sam/").status_code == 404


@pytest.mark.parametrize("who", ["viewer", "builder", "curator"])
def test_only_admins_change_membership(cast: Cast, who: str) -> None:
    api = cast.client(getattr(cast, who))
    add = api.post(MEMBERS, {"username": "sam", "role": "viewer"}, format="json")
    assert add.status_code == 403
    assert "admin role in team blue" in add.json()["message"]
    assert api.patch(f"{MEMBERS}vera/", {"role": "admin"}, format="json").status_code == 403
    assert api.delete(f"{MEMBERS}vera/").status_code == 403
    assert _role(cast, "sam") is None and _role(cast, "vera") == "viewer"


def test_another_teams_admin_cannot_touch_blue(cast: Cast) -> None:
    api = cast.client(cast.outsider)
    assert api.post(MEMBERS, {"username": "sam"}, format="json").status_code == 404
    assert api.delete(f"{MEMBERS}vera/").status_code == 404
    assert _role(cast, "vera") == "viewer"


def test_unknown_username_is_a_400_that_says_so(cast: Cast) -> None:
    response = cast.client(cast.admin).post(MEMBERS, {"username": "nobody", "role": "viewer"}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "team.unknown-user"
    assert "No account is called 'nobody'" in body["message"]


def test_adding_an_existing_member_or_a_wrong_role_is_refused(cast: Cast) -> None:
    api = cast.client(cast.admin)
    again = api.post(MEMBERS, {"username": "vera", "role": "admin"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "team.already-member"
    assert _role(cast, "vera") == "viewer"
    wrong = api.post(MEMBERS, {"username": "sam", "role": "owner"}, format="json")
    assert wrong.status_code == 400
    assert api.patch(f"{MEMBERS}vera/", {"role": "owner"}, format="json").status_code == 400
    assert api.patch(f"{MEMBERS}nobody/", {"role": "viewer"}, format="json").status_code == 404


def test_the_last_admin_cannot_be_demoted_or_removed(cast: Cast) -> None:
    api = cast.client(cast.admin)
    demote = api.patch(f"{MEMBERS}alice/", {"role": "curator"}, format="json")
    assert demote.status_code == 409
    assert demote.json()["code"] == "team.last-admin"
    assert "last admin of team blue" in demote.json()["message"]
    remove = api.delete(f"{MEMBERS}alice/")
    assert remove.status_code == 409 and remove.json()["code"] == "team.last-admin"
    assert _role(cast, "alice") == "admin"

    # With a second admin, alice may step down, and then she no longer manages members.
    assert api.patch(f"{MEMBERS}cora/", {"role": "admin"}, format="json").status_code == 200
    assert api.patch(f"{MEMBERS}alice/", {"role": "builder"}, format="json").status_code == 200
    assert _role(cast, "alice") == "builder"
    assert api.delete(f"{MEMBERS}vera/").status_code == 403
    # cora, now the last admin, cannot remove herself.
    assert cast.client(cast.curator).delete(f"{MEMBERS}cora/").status_code == 409


def test_the_member_routes_are_in_the_openapi_schema(client: Any) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    members = schema["paths"]["/api/teams/{slug}/members/"]
    assert {"get", "post"} <= set(members)
    member = schema["paths"]["/api/teams/{slug}/members/{username}/"]
    assert {"get", "patch", "delete"} <= set(member)


def test_services_refuse_what_the_api_refuses(cast: Cast) -> None:
    with pytest.raises(CatalogError) as refused:
        services.team_member_remove(team=cast.blue, actor=cast.admin, username="alice")
    assert refused.value.code == "team.last-admin"
    with pytest.raises(CatalogError) as unknown:
        services.team_member_add(team=cast.blue, actor=cast.admin, username="  ", role=Role.VIEWER)
    assert unknown.value.code == "team.unknown-user" and unknown.value.status == 400


# --- the team page --------------------------------------------------------------------------------


def test_admin_manages_members_on_the_team_page(client: Any, cast: Cast) -> None:
    client.force_login(cast.admin)
    page = client.get("/teams/blue/").content.decode()
    assert 'id="member-add-form"' in page and "Remove vera from the team" in page

    added = client.post("/teams/blue/", {"member_action": "add", "username": "sam", "role": "builder"})
    assert added.status_code == 302
    assert "sam joined the team as Builder." in client.get(added["Location"]).content.decode()
    assert _role(cast, "sam") == "builder"

    client.post("/teams/blue/", {"member_action": "role", "username": "sam", "role": "curator"})
    assert _role(cast, "sam") == "curator"
    client.post("/teams/blue/", {"member_action": "remove", "username": "sam"})
    assert _role(cast, "sam") is None


def test_team_page_explains_refusals_in_page_words(client: Any, cast: Cast) -> None:
    client.force_login(cast.admin)
    unknown = client.post("/teams/blue/", {"member_action": "add", "username": "nobdy", "role": "viewer"})
    assert unknown.status_code == 200  # the form again, the reason next to the username
    html = unknown.content.decode()
    assert 'id="id_username_error"' in html and "No account is called &#x27;nobdy&#x27;" in html

    last = client.post(
        "/teams/blue/", {"member_action": "role", "username": "alice", "role": "viewer"}, follow=True
    )
    assert "alice is the last admin of team blue" in last.content.decode()
    assert _role(cast, "alice") == "admin"


@pytest.mark.parametrize("who", ["viewer", "builder", "curator"])
def test_non_admins_see_the_members_read_only(client: Any, cast: Cast, who: str) -> None:
    client.force_login(getattr(cast, who))
    html = client.get("/teams/blue/").content.decode()
    assert "vera" in html and "alice" in html
    assert 'id="member-add-form"' not in html and 'name="member_action"' not in html
    assert "Only the team's admins change its members." in html
    refused = client.post("/teams/blue/", {"member_action": "add", "username": "sam", "role": "admin"})
    assert refused.status_code == 403
    assert _role(cast, "sam") is None
