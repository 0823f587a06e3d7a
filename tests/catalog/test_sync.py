"""sync_catalog: built-in recipes into the global catalog, idempotently, all or nothing."""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from catalog.models import ApprovalRecord, Extension, ExtensionVersion, UpstreamDigest, VersionStatus
from catalog.services import BUILTIN_RECIPES_DIR
from tests.catalog.conftest import DEMO_RECIPE, write_recipe

pytestmark = pytest.mark.django_db


def sync(recipes_dir: Path | None = None) -> str:
    out = StringIO()
    args = ["--recipes-dir", str(recipes_dir)] if recipes_dir else []
    call_command("sync_catalog", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def snapshot() -> list[tuple[object, ...]]:
    return sorted(
        (v.extension.name, v.extension.updated_at, v.version, v.status, v.deprecated, len(v.digests.all()))
        for v in ExtensionVersion.objects.select_related("extension").prefetch_related("digests")
    )


def test_builtin_catalog_syncs_twice_without_change() -> None:
    first = sync()
    count = len(list(BUILTIN_RECIPES_DIR.glob("*.yaml")))
    assert f"{count} added, 0 updated, 0 unchanged" in first
    before = snapshot()
    records = ApprovalRecord.objects.count()

    second = sync()

    assert f"0 added, 0 updated, {count} unchanged" in second
    assert snapshot() == before
    assert ApprovalRecord.objects.count() == records
    assert Extension.objects.filter(team__isnull=True).count() == count


def test_builtin_relations_are_loaded_as_users_expect() -> None:
    sync()
    compose = Extension.objects.get(name="docker-compose", team=None)
    assert compose.requires == [["docker"]]
    nerdctl = Extension.objects.get(name="nerdctl", team=None)
    assert "containerd" in nerdctl.requires[0]
    kubernetes = Extension.objects.get(name="kubernetes", team=None)
    assert sorted(kubernetes.requires[0]) == ["containerd", "cri-o", "docker"]
    assert kubernetes.minor_pinning
    docker = Extension.objects.get(name="docker", team=None)
    assert set(docker.replaces_builtin) == {"docker", "containerd"}
    wave = Extension.objects.get(name="wave", team=None)
    assert wave.selectable and wave.recipe().build is not None  # built from source
    podman = Extension.objects.get(name="podman", team=None)
    assert podman.delivery == "flatcar-official"


def test_unpinned_versions_are_proposed_and_pinned_ones_approved(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    pinned = DEMO_RECIPE.replace(
        "  v1.0.1: {}", f"  v1.0.1:\n    sha256: {{x86-64: {digest}, arm64: {digest}}}"
    )
    write_recipe(tmp_path, "demo", pinned)

    sync(tmp_path)

    v100 = ExtensionVersion.objects.get(extension__name="demo", version="v1.0.0")
    v101 = ExtensionVersion.objects.get(extension__name="demo", version="v1.0.1")
    assert v100.status == VersionStatus.PROPOSED
    assert v101.status == VersionStatus.APPROVED
    assert v101.decided_by is None
    assert v101.pins("x86-64") == {"demo-{version}-{arch}.tar.gz": digest}
    url = UpstreamDigest.objects.get(version=v101, arch="arm64").url
    assert url.endswith("/v1.0.1/demo-v1.0.1-aarch64.tar.gz")
    assert [r.actor_label for r in v101.approvals.all()] == ["built-in recipe", "built-in recipe"]


def test_changed_recipe_is_reported_as_updated(tmp_path: Path) -> None:
    write_recipe(tmp_path, "demo", DEMO_RECIPE)
    sync(tmp_path)
    write_recipe(tmp_path, "demo", DEMO_RECIPE.replace("  v1.0.1: {}", "  v1.0.1: {}\n  v1.0.2: {}"))

    out = sync(tmp_path)

    assert "updated: demo" in out
    assert ExtensionVersion.objects.filter(extension__name="demo").count() == 3


def test_broken_recipe_files_are_reported_and_nothing_is_written(tmp_path: Path) -> None:
    write_recipe(tmp_path, "demo", DEMO_RECIPE)
    write_recipe(
        tmp_path, "broken", DEMO_RECIPE.replace("name: demo", "name: broken").replace("tool", "toaster")
    )
    write_recipe(tmp_path, "typo", DEMO_RECIPE.replace("name: demo", "name: typo\nhomepgae: x"))
    err = StringIO()

    with pytest.raises(CommandError, match="2 recipe file"):
        call_command("sync_catalog", "--recipes-dir", str(tmp_path), stdout=StringIO(), stderr=err)

    assert "broken.yaml: category" in err.getvalue()
    assert "typo.yaml" in err.getvalue()
    assert Extension.objects.count() == 0


def test_dangling_relation_fails_the_sync(tmp_path: Path) -> None:
    write_recipe(
        tmp_path, "demo", DEMO_RECIPE.replace("versions:", "requires: [[ghost, spectre]]\nversions:")
    )
    err = StringIO()

    with pytest.raises(CommandError):
        call_command("sync_catalog", "--recipes-dir", str(tmp_path), stdout=StringIO(), stderr=err)

    assert "unknown extension(s) ghost, spectre" in err.getvalue()
    assert Extension.objects.count() == 0
