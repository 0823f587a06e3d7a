"""A deprecated version is no longer offered for new flavours, yet a flavour that already has it
still builds (through the API, as a user would)."""

from __future__ import annotations

import pytest

from builds.models import Build, BuildState
from catalog.models import ExtensionVersion
from tests.builds.test_api_scoping import World, client, world

__all__ = ["world"]

pytestmark = pytest.mark.django_db


def test_deprecated_version_builds_for_its_flavour_but_not_for_a_new_one(world: World) -> None:
    version = ExtensionVersion.objects.get(extension__name="hello", version="v1.0.0")
    version.deprecated = True
    version.save(update_fields=["deprecated"])
    api = client(world.cast.owner)

    existing = world.failed.flavour
    started = api.post(f"/api/flavours/{existing.pk}/builds/")
    assert started.status_code == 202, started.content
    assert Build.objects.get(pk=started.json()["id"]).state == BuildState.QUEUED

    new = api.post(
        "/api/flavours/",
        {
            "team": "blue",
            "name": "fresh",
            "arch": "x86-64",
            "extensions": [{"name": "hello", "version": "v1.0.0"}],
        },
        format="json",
    )
    assert new.status_code == 400
    assert "deprecated" in " ".join(new.json()["fields"]["extensions[0]"])
