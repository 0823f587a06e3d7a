"""Propose -> approve -> digests pinned from a (fake, local) upstream -> a changed upstream fails."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.core.management import call_command

from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from catalog.models import ApprovalRecord, ExtensionVersion, VersionStatus
from catalog.selectors import versions_usable_for_new_flavours
from tests.catalog.conftest import DEMO_RECIPE, Cast, write_recipe
from tests.upstream import UpstreamServer, executable, make_tar

pytestmark = pytest.mark.django_db

ARCHES = {"x86-64": "x86_64", "arm64": "aarch64"}


@pytest.fixture
def demo(
    tmp_path: Path, upstream: UpstreamServer, settings, fetch_cache: Path, eager_celery: None
) -> dict[str, bytes]:
    """The demo recipe in the global catalog, its releases served by the fake upstream."""
    settings.UPSTREAM_MIRRORS = {"https://github.com/": upstream.url("/gh/")}
    write_recipe(tmp_path / "recipes", "demo", DEMO_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path / "recipes"), verbosity=0)
    served = {}
    for arch, upstream_arch in ARCHES.items():
        body = make_tar([executable("demo", f"#!/bin/sh\necho demo {arch}\n".encode())])
        upstream.add_bytes(
            f"/gh/example/demo/releases/download/v1.0.1/demo-v1.0.1-{upstream_arch}.tar.gz", body
        )
        served[arch] = body
    return served


def version(name: str) -> ExtensionVersion:
    return ExtensionVersion.objects.get(extension__name="demo", extension__team=None, version=name)


def test_approval_pins_every_upstream_file_and_a_changed_upstream_then_fails(
    cast: Cast,
    demo: dict[str, bytes],
    upstream: UpstreamServer,
    tmp_path: Path,
    django_capture_on_commit_callbacks,
) -> None:
    v101 = version("v1.0.1")
    assert not versions_usable_for_new_flavours(cast.curator).filter(pk=v101.pk).exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.staff).post(
            f"/api/versions/{v101.pk}/approve", {"reason": "release notes reviewed"}, format="json"
        )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pinning"

    v101.refresh_from_db()
    assert v101.status == VersionStatus.APPROVED
    assert v101.decided_by == cast.staff
    for arch, body in demo.items():
        assert list(v101.pins(arch).values()) == [hashlib.sha256(body).hexdigest()]
    detail = cast.client(cast.curator).get("/api/extensions/demo/").json()
    shown = next(v for v in detail["versions"] if v["version"] == "v1.0.1")
    assert {d["arch"]: d["sha256"] for d in shown["digests"]} == {
        arch: hashlib.sha256(body).hexdigest() for arch, body in demo.items()
    }
    assert [(a["action"], a["actor"]) for a in shown["approvals"]] == [
        ("proposed", "built-in recipe"),
        ("approved", "sam"),
        ("pinned", "digest pinning"),
    ]
    assert shown["approvals"][1]["reason"] == "release notes reviewed"
    assert versions_usable_for_new_flavours(cast.curator).filter(pk=v101.pk).exists()

    # The upstream replaces the release file: a build with the approved pins must refuse it.
    upstream.add_bytes(
        "/gh/example/demo/releases/download/v1.0.1/demo-v1.0.1-x86_64.tar.gz",
        make_tar([executable("demo", b"#!/bin/sh\necho tampered\n")]),
    )
    source = v101.recipe().resolve("v1.0.1", "x86-64", pins=v101.pins("x86-64"))[0]
    with Fetcher(tmp_path / "worker-cache", mirrors={"https://github.com/": upstream.url("/gh/")}) as fetcher:
        with pytest.raises(PipelineError) as caught:
            fetcher.fetch(source.url, sha256=source.sha256, label=source.label)
    assert caught.value.code == "fetch.sha256-mismatch"
    assert "demo v1.0.1 x86-64" in caught.value.message


def test_failed_pinning_is_pin_failed_with_the_error_never_a_new_proposal(
    cast: Cast, demo: dict[str, bytes], django_capture_on_commit_callbacks
) -> None:
    v100 = version("v1.0.0")  # the fake upstream has no files for it: 404

    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.staff).post(f"/api/versions/{v100.pk}/approve", {}, format="json")
    assert response.status_code == 200

    v100.refresh_from_db()
    assert v100.status == VersionStatus.PIN_FAILED
    assert v100.pinning_error.startswith("fetch.http-error")
    assert "404" in v100.pinning_error
    assert not v100.digests.exists()
    assert ApprovalRecord.objects.filter(version=v100, action="pin-failed").exists()


def test_only_curators_decide_and_rejection_needs_a_reason(cast: Cast, demo: dict[str, bytes]) -> None:
    v101 = version("v1.0.1")

    as_builder = cast.client(cast.teammate).post(f"/api/versions/{v101.pk}/approve", {}, format="json")
    assert as_builder.status_code == 403
    assert as_builder.json()["code"] == "forbidden"
    assert "curator" in as_builder.json()["message"]

    no_reason = cast.client(cast.staff).post(f"/api/versions/{v101.pk}/reject", {}, format="json")
    assert no_reason.status_code == 400
    assert no_reason.json()["code"] == "reason.required"

    rejected = cast.client(cast.staff).post(
        f"/api/versions/{v101.pk}/reject", {"reason": "upstream yanked it"}, format="json"
    )
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"
    again = cast.client(cast.staff).post(f"/api/versions/{v101.pk}/approve", {}, format="json")
    assert again.status_code == 409
    version_row = version("v1.0.1")
    assert version_row.reason == "upstream yanked it"
    assert ApprovalRecord.objects.get(version=version_row, action="rejected").actor == cast.staff


def test_builder_proposes_and_team_curator_approves_a_team_recipe(
    cast: Cast,
    upstream: UpstreamServer,
    settings,
    fetch_cache: Path,
    eager_celery: None,
    django_capture_on_commit_callbacks,
) -> None:
    settings.UPSTREAM_MIRRORS = {"https://github.com/": upstream.url("/gh/")}
    recipe = DEMO_RECIPE.replace("name: demo", "name: bluetool").replace("example/demo", "blue/tool")
    created = cast.client(cast.teammate).post(
        "/api/extensions/", {"team": "blue", "recipe": recipe}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["team"] == "blue"

    proposed = cast.client(cast.teammate).post(
        "/api/extensions/bluetool/versions/", {"version": "v2.0.0", "reason": "new major"}, format="json"
    )
    assert proposed.status_code == 201, proposed.content
    assert proposed.json()["status"] == "proposed"
    assert proposed.json()["proposed_by"] == "bob"
    duplicate = cast.client(cast.teammate).post(
        "/api/extensions/bluetool/versions/", {"version": "v2.0.0"}, format="json"
    )
    assert duplicate.status_code == 409

    for arch in ARCHES.values():
        upstream.add_bytes(
            f"/gh/blue/tool/releases/download/v2.0.0/demo-v2.0.0-{arch}.tar.gz",
            make_tar([executable("demo")]),
        )
    vid = proposed.json()["id"]
    assert (
        cast.client(cast.teammate).post(f"/api/versions/{vid}/approve", {}, format="json").status_code == 403
    )
    assert cast.client(cast.staff).post(f"/api/versions/{vid}/approve", {}, format="json").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        approved = cast.client(cast.curator).post(f"/api/versions/{vid}/approve", {}, format="json")
    assert approved.status_code == 200
    assert ExtensionVersion.objects.get(pk=vid).status == VersionStatus.APPROVED
    assert ExtensionVersion.objects.get(pk=vid).digests.count() == 2


def test_deprecated_versions_are_not_offered_for_new_flavours(cast: Cast, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    text = DEMO_RECIPE.replace(
        "  v1.0.0: {}", f"  v1.0.0:\n    sha256: {{x86-64: {digest}, arm64: {digest}}}"
    )
    text = text.replace("  v1.0.1: {}", f"  v1.0.1:\n    sha256: {{x86-64: {digest}, arm64: {digest}}}")
    write_recipe(tmp_path, "demo", text)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path), verbosity=0)
    offered = {v.version for v in versions_usable_for_new_flavours(cast.curator)}
    assert offered == {"v1.0.0", "v1.0.1"}

    write_recipe(tmp_path, "demo", text.replace("  v1.0.0:\n", "  v1.0.0:\n    deprecated: true\n"))
    call_command("sync_catalog", "--recipes-dir", str(tmp_path), verbosity=0)

    assert {v.version for v in versions_usable_for_new_flavours(cast.curator)} == {"v1.0.1"}
    old = version("v1.0.0")
    assert old.status == VersionStatus.APPROVED and old.deprecated  # still buildable
    listed = cast.client(cast.curator).get("/api/extensions/?search=demo").json()["results"]
    assert listed[0]["approved_versions"] == ["v1.0.1"]
