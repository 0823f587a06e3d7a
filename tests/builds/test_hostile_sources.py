"""Defence in depth (issue 10, holes 1-3): a hostile recipe or version row that is already in the
database and approved (pins and all) still never reads the worker's files, never reaches an
internal address and never lets vars rewrite its URLs. The build fails with a code and publishes
nothing. The API-side refusals are in tests/catalog/test_hostile_sources.py."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from builds.adapters.store import get_artifact_store
from catalog.models import Extension, ExtensionVersion, Origin, UpstreamDigest, VersionStatus
from portal.celery import app
from tests.builds.catalog_fixtures import Cast
from tests.pipeline.test_egress import BODY, Listener

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]


@pytest.fixture
def eager(settings: Any, tmp_path: Path) -> Iterator[Path]:
    """Eager tasks, a local store, and a var dir holding a signing key; yields the var dir."""
    var = tmp_path / "var"
    (var / "signing").mkdir(parents=True)
    (var / "signing" / "signing-key.asc").write_bytes(BODY)
    settings.ARTIFACT_DIR = var / "artifacts"
    settings.FETCH_CACHE_DIR = var / "cache"
    settings.UPSTREAM_MIRRORS = {}
    settings.S3 = None
    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    try:
        yield var
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = previous


def approved_team_recipe(cast: Cast, url: str, *, vars: dict[str, str] | None = None) -> ExtensionVersion:
    """A team recipe row as an attacker would want it: approved, pinned to the secret's digest."""
    text = textwrap.dedent(
        f"""\
        name: evil
        description: Looks harmless
        category: tool
        arches: {{x86-64: amd64}}
        sources:
          - url: "{url}"
            id: data
            archive: file
            install:
              - {{to: usr/share/evil/data}}
        versions:
          v1.0.0: {{}}
        """
    )
    extension = Extension.objects.create(
        name="evil", team=cast.blue, origin=Origin.RECIPE, arches=["x86-64"], recipe_text=text
    )
    version = ExtensionVersion.objects.create(
        extension=extension,
        version="v1.0.0" if vars is None else "v1.0.1",
        status=VersionStatus.APPROVED,
        vars=vars or {},
    )
    UpstreamDigest.objects.create(
        version=version, arch="x86-64", source_id="data", url=url, sha256=hashlib.sha256(BODY).hexdigest()
    )
    return version


def build_it(cast: Cast, version: str, capture: Any) -> dict[str, Any]:
    client = APIClient()
    client.force_authenticate(cast.teammate)
    flavour = client.post(
        "/api/flavours/",
        {"name": "n", "arch": "x86-64", "extensions": [{"name": "evil", "version": version}]},
        format="json",
    )
    assert flavour.status_code == 201, flavour.content
    with capture(execute=True):
        response = client.post(f"/api/flavours/{flavour.json()['id']}/builds/")
    assert response.status_code == 202, response.content
    return client.get(f"/api/builds/{response.json()['id']}/").json()


def test_a_build_never_reads_the_signing_key(
    cast: Cast, eager: Path, django_capture_on_commit_callbacks: Any
) -> None:
    approved_team_recipe(cast, (eager / "signing" / "signing-key.asc").as_uri())
    build = build_it(cast, "v1.0.0", django_capture_on_commit_callbacks)
    assert build["state"] == "failed"
    assert build["error_code"] == "fetch.file-refused", build
    assert get_artifact_store().list("extensions/") == []
    assert get_artifact_store().list("images/") == []


def test_a_build_never_fetches_an_internal_address(
    cast: Cast, eager: Path, django_capture_on_commit_callbacks: Any
) -> None:
    internal = Listener("127.0.0.1")
    try:
        approved_team_recipe(cast, f"http://127.0.0.1:{internal.port}/secret")
        build = build_it(cast, "v1.0.0", django_capture_on_commit_callbacks)
        assert build["state"] == "failed"
        assert build["error_code"] == "fetch.refused-address", build
        assert f"127.0.0.1:{internal.port}" in build["error_message"]
        assert internal.connections == 0
        assert get_artifact_store().list("extensions/") == []
    finally:
        internal.close()


def test_a_build_refuses_vars_that_override_built_in_placeholders(
    cast: Cast, eager: Path, django_capture_on_commit_callbacks: Any
) -> None:
    approved_team_recipe(
        cast,
        "https://github.com/example/evil/releases/download/{version}/evil-{version_nov}",
        vars={"version_nov": "x/../../../../other/repo/releases/download/v1/secret?"},
    )
    build = build_it(cast, "v1.0.1", django_capture_on_commit_callbacks)
    assert build["state"] == "failed"
    assert build["error_code"] == "recipe.invalid-vars", build
    assert get_artifact_store().list("extensions/") == []
