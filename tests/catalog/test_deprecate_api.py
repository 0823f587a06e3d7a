"""POST /api/versions/{id}/deprecate and /undeprecate: curators of the owning team only."""

from __future__ import annotations

import pytest

from catalog.models import ApprovalRecord, Extension, ExtensionVersion, VersionStatus
from tests.catalog.conftest import DEMO_RECIPE, Cast

pytestmark = pytest.mark.django_db


def _version(team: object, status: str = VersionStatus.APPROVED) -> ExtensionVersion:
    extension = Extension.objects.create(name="demo", team=team, origin="recipe", recipe_text=DEMO_RECIPE)
    return ExtensionVersion.objects.create(extension=extension, version="v1.0.0", status=status)


def test_curator_deprecates_then_undeprecates(cast: Cast) -> None:
    version = _version(cast.team)
    client = cast.client(cast.curator)
    response = client.post(f"/api/versions/{version.pk}/deprecate", {"reason": "CVE-2026-1"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["deprecated"] is True
    assert response.json()["usable_for_new_flavours"] is False
    assert ApprovalRecord.objects.filter(version=version, action="deprecated", reason="CVE-2026-1").exists()
    response = client.post(f"/api/versions/{version.pk}/undeprecate", {}, format="json")
    assert response.status_code == 200
    assert response.json()["usable_for_new_flavours"] is True
    version.refresh_from_db()
    assert version.deprecated is False


@pytest.mark.parametrize("who", ["teammate", "viewer"])
def test_builders_and_viewers_are_forbidden(cast: Cast, who: str) -> None:
    version = _version(cast.team)
    response = cast.client(getattr(cast, who)).post(
        f"/api/versions/{version.pk}/deprecate", {}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    version.refresh_from_db()
    assert version.deprecated is False


def test_another_teams_curator_sees_nothing(cast: Cast) -> None:
    version = _version(cast.team)
    response = cast.client(cast.outsider).post(f"/api/versions/{version.pk}/deprecate", {}, format="json")
    assert response.status_code == 404
    assert response.json()["code"] == "version.not-found"
    version.refresh_from_db()
    assert version.deprecated is False


def test_only_approved_versions(cast: Cast) -> None:
    version = _version(cast.team, status=VersionStatus.PROPOSED)
    response = cast.client(cast.curator).post(f"/api/versions/{version.pk}/deprecate", {}, format="json")
    assert response.status_code == 409
    assert response.json()["code"] == "version.not-approved"
