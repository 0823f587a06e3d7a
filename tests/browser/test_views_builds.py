"""Build, flavour and team pages through Django's test client (no worker: tasks are not sent)."""

from __future__ import annotations

from unittest import mock
from urllib.parse import urlsplit

import pytest

from builds import services
from builds.models import Build, BuildState, Webhook
from tests.builds.catalog_fixtures import make_extension

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_broker():
    """Builds are requested for real, but their tasks are not sent (the e2e test runs a worker)."""
    with mock.patch("portal.queueing.queue_task"):
        yield


@pytest.fixture
def world(cast):
    users = {"admin": cast.admin, "viewer": cast.viewer, "outsider": cast.outsider}
    make_extension("docker", versions={"28.0.4": "approved"})
    make_extension("docker-compose", versions={"v2.34.0": "approved"}, requires=[["docker"]])
    picks = [{"name": "docker", "version": "28.0.4"}, {"name": "docker-compose", "version": "v2.34.0"}]
    flavour, _ = services.flavour_create(
        user=users["admin"],
        team=cast.blue,
        name="edge",
        arch="x86-64",
        extensions=picks,
        options={"hostname": "node-1"},
    )
    build, _ = services.build_request(flavour=flavour, user=users["admin"])
    return {**users, "blue": cast.blue, "flavour": flavour, "build": build}


def test_build_page_renders_without_javascript(client, world):
    client.force_login(world["viewer"])
    html = client.get(f"/builds/{world['build'].pk}/").content.decode()
    assert '<progress id="build-progress" class="progress" max="100" value="0">' in html
    assert "Queued" in html
    assert 'data-extension="docker-compose"' in html
    assert "queued." in html  # the log so far
    assert "Cancel build" not in html  # viewers watch, builders act


def test_other_team_gets_404_for_flavour_build_and_actions(client, world):
    client.force_login(world["outsider"])
    assert client.get(f"/flavours/{world['flavour'].pk}/").status_code == 404
    assert client.get(f"/builds/{world['build'].pk}/").status_code == 404
    assert client.post(f"/builds/{world['build'].pk}/cancel/").status_code == 404
    assert client.post(f"/flavours/{world['flavour'].pk}/build/").status_code == 404
    assert client.get("/teams/blue/").status_code == 404
    world["build"].refresh_from_db()
    assert world["build"].state == BuildState.QUEUED


def test_viewer_cannot_cancel(client, world):
    client.force_login(world["viewer"])
    assert client.post(f"/builds/{world['build'].pk}/cancel/").status_code == 403
    world["build"].refresh_from_db()
    assert not world["build"].cancel_requested


def test_cancel_then_retry(client, world):
    client.force_login(world["admin"])
    page = client.post(f"/builds/{world['build'].pk}/cancel/", follow=True).content.decode()
    world["build"].refresh_from_db()
    assert world["build"].state == BuildState.CANCELLED
    assert "Cancelled" in page
    response = client.post(f"/builds/{world['build'].pk}/retry/")
    retry = Build.objects.get(retry_of=world["build"])
    assert response["Location"] == f"/builds/{retry.pk}/"
    assert retry.attempt == 2 and retry.state == BuildState.QUEUED
    # Retrying a build that is not failed or cancelled says why, on the page.
    again = client.post(f"/builds/{retry.pk}/retry/", follow=True).content.decode()
    assert "Only failed or cancelled builds can be retried" in again


def test_flavour_page_before_any_successful_build(client, world):
    client.force_login(world["viewer"])
    html = client.get(f"/flavours/{world['flavour'].pk}/").content.decode()
    assert world["flavour"].pk in html
    assert "Nothing published yet" in html
    assert "docker-compose v2.34.0" in html


def test_edit_link_reopens_the_same_choices(client, world):
    """The composer link on a flavour page reproduces its choices: same document, same ID."""
    client.force_login(world["admin"])
    html = client.get(f"/flavours/{world['flavour'].pk}/").content.decode()
    start = html.index('href="/compose/?') + len('href="')
    link = html[start : html.index('"', start)].replace("&amp;", "&")
    review = client.get("/compose/review/?" + urlsplit(link).query)
    assert review.context["flavour_id"] == world["flavour"].pk


def test_flavour_list_shows_only_own_teams(client, world):
    client.force_login(world["outsider"])
    assert b"edge" not in client.get("/flavours/").content
    client.force_login(world["viewer"])
    assert b"edge" in client.get("/flavours/").content


def test_team_page_members_and_webhooks(client, world):
    client.force_login(world["admin"])
    page = client.get("/teams/blue/").content.decode()
    assert "vera" in page and "Viewer" in page and "Admin" in page
    bad = client.post("/teams/blue/", {"url": "ftp://example.org/hook"}).content.decode()
    assert 'id="id_url_error"' in bad
    added = client.post("/teams/blue/", {"url": "https://hooks.example.org/bakehouse"}).content.decode()
    hook = Webhook.objects.get(team=world["blue"])
    assert hook.secret in added  # shown once
    assert hook.secret not in client.get("/teams/blue/").content.decode()
    client.post("/teams/blue/", {"delete": hook.pk})
    assert not Webhook.objects.filter(pk=hook.pk).exists()


def test_webhook_to_a_private_address_is_a_field_error_not_a_crash(client, world):
    client.force_login(world["admin"])
    response = client.post("/teams/blue/", {"url": "http://127.0.0.1:8080/hook"})
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="id_url_error"' in page
    assert not Webhook.objects.exists()


def test_only_admins_manage_webhooks(client, world):
    client.force_login(world["viewer"])
    assert b"Add webhook" not in client.get("/teams/blue/").content
    assert client.post("/teams/blue/", {"url": "https://hooks.example.org/x"}).status_code == 403
    assert not Webhook.objects.exists()


def test_home_lists_recent_work_of_own_teams_only(client, world):
    client.force_login(world["viewer"])
    assert f"/builds/{world['build'].pk}/" in client.get("/").content.decode()
    client.force_login(world["outsider"])
    html = client.get("/").content.decode()
    assert f"/builds/{world['build'].pk}/" not in html and "/teams/red/" in html


def test_forged_inputs_are_refused_not_crashes(client, world):
    client.force_login(world["admin"])
    assert client.post("/teams/blue/", {"delete": "1 OR 1=1"}).status_code == 404
    assert client.get("/builds/not-a-uuid/").status_code == 404
    assert client.get("/flavours/" + "0" * 64 + "/").status_code == 404
    review = client.get(
        "/compose/review/",
        {"team": "blue", "name": "x", "arch": "x86-64", "x_nope": "1", "revision_of": "zz"},
    )
    assert review.status_code == 200 and "Unknown extension" in review.content.decode()
    assert client.post("/compose/build/", {"team": "blue", "arch": "mips"}).status_code == 302
    assert (
        client.get(
            "/compose/options/", {"team": "blue", "arch": "x86-64", "masks": "podman", "go": "next"}
        ).status_code
        == 200
    )


def test_editing_through_the_wizard_makes_the_next_revision(client, world):
    from builds.forms import flavour_state
    from builds.models import Flavour

    client.force_login(world["admin"])
    state = flavour_state(world["flavour"]).with_changes(hostname="node-2")
    step1 = client.get("/compose/?" + state.urlencode() + "&go=next")
    assert "revision_of=" in step1["Location"]  # carried through every step
    response = client.post("/compose/build/", dict(state.query.lists()) | {"hostname": "node-2"})
    revised = Flavour.objects.exclude(pk=world["flavour"].pk).get()
    assert revised.revision == 2 and revised.lineage == world["flavour"].lineage
    assert response["Location"].startswith("/builds/")
    page = client.get(f"/flavours/{revised.pk}/").content.decode()
    assert f"/flavours/{world['flavour'].pk}/" in page  # the older revision stays one click away


@pytest.mark.parametrize(
    ("code", "kind", "says"),
    [
        ("tool.missing", "infrastructure", "fault of this Bakehouse installation, not of your flavour"),
        ("fetch.http-error", "upstream", "A server Bakehouse downloads from misbehaved"),
        ("flavour.stale", "user", "edit the flavour to make a new revision"),
    ],
)
def test_a_failed_build_says_whose_move_it_is(client, world, code, kind, says):
    Build.objects.filter(pk=world["build"].pk).update(
        state=BuildState.FAILED, error_code=code, error_message="what went wrong"
    )
    client.force_login(world["viewer"])
    assert client.get(f"/api/builds/{world['build'].pk}/").json()["error_kind"] == kind
    html = client.get(f"/builds/{world['build'].pk}/").content.decode()
    assert f"{code}: what went wrong" in html
    start = html.index('id="build-advice"')
    tag, text = html[start : html.index("</p>", start)].split(">", 1)
    assert says in text and f'data-kind="{kind}"' in tag
