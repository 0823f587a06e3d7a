"""Catalog pages through Django's test client: listing, filters, detail, team isolation."""

from __future__ import annotations

import pytest

from catalog.models import (
    ApprovalAction,
    ApprovalRecord,
    Category,
    Extension,
    ExtensionVersion,
    UpstreamDigest,
    VersionStatus,
)
from tests.factories import ExtensionFactory, ExtensionVersionFactory

pytestmark = pytest.mark.django_db


def _extension(name: str, **fields) -> Extension:
    defaults = {"description": f"The {name} extension.", "category": Category.CONTAINER_RUNTIME}
    return ExtensionFactory(name=name, **{**defaults, **fields})


@pytest.fixture
def cast(cast):
    """The cast, and a small catalog: two globals, one private of blue and one of red."""
    docker = _extension(
        "docker", homepage="https://www.docker.com/", replaces_builtin=["docker", "containerd"]
    )
    _extension("docker-compose", requires=[["docker"]])
    _extension(
        "wasmtime", category=Category.WASM_RUNTIME, arches=["x86-64"], description="Fast Wasm runtime."
    )
    _extension("blue-agent", team=cast.blue, category=Category.TOOL)
    _extension("red-secret", team=cast.red, category=Category.TOOL)
    version = ExtensionVersionFactory(
        extension=docker,
        version="28.0.4",
        status=VersionStatus.APPROVED,
        decided_by=cast.curator,
        reason="LGTM",
    )
    UpstreamDigest.objects.create(
        version=version,
        arch="x86-64",
        source_id="main",
        url="https://download.docker.com/x.tgz",
        sha256="ab" * 32,
    )
    ApprovalRecord.objects.create(
        version=version, action=ApprovalAction.APPROVED, actor=cast.curator, reason="LGTM"
    )
    return cast


def _names(response) -> set[str]:
    return {e.name for e in response.context["extensions"]}


def test_catalog_needs_sign_in(client):
    assert client.get("/catalog/").status_code == 302


def test_list_shows_globals_and_own_team_only(client, cast):
    client.force_login(cast.curator)
    response = client.get("/catalog/")
    assert _names(response) == {"docker", "docker-compose", "wasmtime", "blue-agent"}
    assert b"red-secret" not in response.content


def test_list_cards_show_every_version_with_its_status(client, cast):
    """A card must not read "Approved:" and nothing when the only version is still proposed."""
    compose = Extension.objects.get(name="docker-compose")
    ExtensionVersion.objects.create(extension=compose, version="v2.34.0", status=VersionStatus.PROPOSED)
    client.force_login(cast.curator)
    html = client.get("/catalog/").content.decode()
    assert ">v2.34.0 · Proposed</span>" in html
    assert ">28.0.4 · Approved</span>" in html
    assert html.count(">none yet<") == 2  # wasmtime and blue-agent have no version at all


def test_filters_by_text_category_and_arch(client, cast):
    client.force_login(cast.curator)
    assert _names(client.get("/catalog/", {"search": "compose"})) == {"docker-compose"}
    assert _names(client.get("/catalog/", {"search": "fast wasm"})) == {"wasmtime"}
    assert _names(client.get("/catalog/", {"category": "wasm-runtime"})) == {"wasmtime"}
    assert "wasmtime" not in _names(client.get("/catalog/", {"arch": "arm64"}))
    assert _names(client.get("/catalog/", {"category": "container-runtime", "arch": "arm64"})) == {
        "docker",
        "docker-compose",
    }


def test_filter_controls_are_labelled_and_keep_their_values(client, cast):
    client.force_login(cast.curator)
    html = client.get("/catalog/", {"search": "dock"}).content.decode()
    for field in ("search", "category", "arch"):
        assert f'<label for="id_{field}">' in html
    assert 'value="dock"' in html


def test_detail_shows_versions_digests_approver_and_relations(client, cast):
    client.force_login(cast.curator)
    html = client.get("/catalog/docker/").content.decode()
    assert "28.0.4" in html and "Approved" in html
    assert "ab" * 32 in html
    assert "by cora" in html and "LGTM" in html
    assert "docker, containerd" in html  # replaces Flatcar's bundled ones
    compose = client.get("/catalog/docker-compose/").content.decode()
    assert '<dd id="requires">docker</dd>' in compose


def test_another_teams_private_extension_is_not_found(client, cast):
    client.force_login(cast.curator)
    assert client.get("/catalog/red-secret/").status_code == 404
    client.force_login(cast.outsider)
    assert client.get("/catalog/red-secret/").status_code == 200
    assert client.get("/catalog/blue-agent/").status_code == 404


@pytest.fixture
def team_ext(cast):
    """A private recipe extension of team blue with a proposed version."""
    agent = Extension.objects.get(name="blue-agent")
    proposed = ExtensionVersionFactory(
        extension=agent, version="1.0.0", status=VersionStatus.PROPOSED, proposed_by=cast.curator
    )
    return {"owner": cast.curator, "viewer": cast.viewer, "outsider": cast.outsider, "proposed": proposed}


def test_reject_without_a_reason_shows_the_error_next_to_the_field(client, team_ext):
    client.force_login(team_ext["owner"])
    url = f"/versions/{team_ext['proposed'].pk}/review/"
    response = client.post(url, {"decision": "reject", "reason": ""})
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="id_reason_error"' in html and "Give a reason to reject the version" in html
    assert 'aria-invalid="true"' in html
    team_ext["proposed"].refresh_from_db()
    assert team_ext["proposed"].status == VersionStatus.PROPOSED


def test_curator_rejects_with_a_reason_and_the_audit_trail_shows_it(client, team_ext):
    client.force_login(team_ext["owner"])
    response = client.post(
        f"/versions/{team_ext['proposed'].pk}/review/",
        {"decision": "reject", "reason": "Known CVE"},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == "/catalog/blue-agent/?team=blue"
    html = response.content.decode()
    assert "Rejected" in html and "Known CVE" in html
    team_ext["proposed"].refresh_from_db()
    assert team_ext["proposed"].status == VersionStatus.REJECTED
    assert team_ext["proposed"].decided_by == team_ext["owner"]


def test_viewer_cannot_decide_and_outsider_cannot_see(client, team_ext):
    url = f"/versions/{team_ext['proposed'].pk}/review/"
    client.force_login(team_ext["viewer"])
    assert b"Record decision" not in client.get(url).content
    assert client.post(url, {"decision": "reject", "reason": "no"}).status_code == 403
    client.force_login(team_ext["outsider"])
    assert client.get(url).status_code == 404
    team_ext["proposed"].refresh_from_db()
    assert team_ext["proposed"].status == VersionStatus.PROPOSED


def test_propose_a_version_of_a_builtin(client, cast, settings):
    from catalog.services import catalog_sync

    catalog_sync()
    client.force_login(cast.curator)
    response = client.post("/catalog/docker/propose/", {"version": "28.1.0", "reason": "new release"})
    assert response.status_code == 302
    assert ExtensionVersion.objects.filter(
        extension__name="docker", version="28.1.0", status="proposed"
    ).exists()
    again = client.post("/catalog/docker/propose/", {"version": "28.1.0"})
    assert "already been proposed" in again.content.decode()
    bad = client.post("/catalog/docker/propose/", {"version": "../etc"})
    assert 'id="id_version_error"' in bad.content.decode()


def test_a_forged_filter_value_is_an_error_on_the_field_not_a_crash(client, cast):
    client.force_login(cast.curator)
    response = client.get("/catalog/", {"category": "<script>", "arch": "sparc"})
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="id_category_error"' in html and 'id="id_arch_error"' in html
    assert "<script>" not in html


def test_upload_a_custom_extension_and_refuse_a_hostile_one(client, cast):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.upstream import executable, file, make_tar

    client.force_login(cast.curator)
    good = make_tar([executable("usr/bin/hello")])
    response = client.post(
        "/custom-extensions/new/",
        {
            "kind": "upload",
            "upload-team": "blue",
            "upload-name": "hello",
            "upload-version": "1.0",
            "upload-category": "tool",
            "upload-arches": ["x86-64"],
            "upload-file": SimpleUploadedFile("hello-1.0.tar.gz", good),
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert response["Location"] == "/catalog/hello/?team=blue"
    assert Extension.objects.get(name="hello").team.slug == "blue"

    hostile = make_tar([file("../../etc/passwd", b"root::0:0::/:/bin/sh\n")])
    refused = client.post(
        "/custom-extensions/new/",
        {
            "kind": "upload",
            "upload-team": "blue",
            "upload-name": "evil",
            "upload-version": "1.0",
            "upload-category": "tool",
            "upload-arches": ["x86-64"],
            "upload-file": SimpleUploadedFile("evil.tar.gz", hostile),
        },
    )
    # The web only keeps the archive: the version is being checked until a worker unpacks it.
    assert refused.status_code == 302, refused.content.decode()[:3000]
    page = client.get(refused["Location"]).content.decode()
    assert "Checking upload" in page
    from catalog.models import UploadedArchive
    from catalog.services import uploaded_archive_check

    uploaded_archive_check(upload_id=UploadedArchive.objects.get(version__extension__name="evil").pk)
    html = client.get(refused["Location"]).content.decode()
    assert "Rejected" in html
    assert "archive.path-traversal" in html and "contains &#x27;..&#x27;" in html


def test_curator_deprecates_an_approved_version(client, cast):
    version = ExtensionVersion.objects.create(
        extension=Extension.objects.get(name="blue-agent"), version="2.0.0", status=VersionStatus.APPROVED
    )
    client.force_login(cast.curator)
    page = client.post(f"/versions/{version.pk}/review/", {"deprecated": "yes", "reason": "EOL"}, follow=True)
    version.refresh_from_db()
    assert version.deprecated
    assert "Deprecated" in page.content.decode()
    client.post(f"/versions/{version.pk}/review/", {"deprecated": "no"})
    version.refresh_from_db()
    assert not version.deprecated


def test_unknown_filter_value_is_a_form_error_and_lists_nothing(client, cast):
    client.force_login(cast.curator)
    response = client.get("/catalog/", {"category": "nope"})
    assert response.status_code == 200
    assert _names(response) == set()
    assert "Select a valid choice" in response.content.decode()
