"""The private option of one flavour (its team public): the flavour's directory is closed at
/artifacts/ (404, like a missing file) while public flavours and extension images stay public;
flavours without the option keep the IDs they had before it existed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from builds import services
from builds.access import flavour_token, token_read_allowed
from builds.adapters.store import get_artifact_store
from builds.models import Flavour
from tests.builds.catalog_fixtures import Cast, make_extension

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]


@pytest.fixture
def store_dir(settings: Any, tmp_path: Path) -> Path:
    settings.S3 = None
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.PUBLIC_BASE_URL = "http://testserver/artifacts/"
    return Path(settings.ARTIFACT_DIR)


def flavour(cast: Cast, **options: Any) -> Flavour:
    made, _ = services.flavour_create(
        user=cast.teammate,
        team=cast.blue,
        name="n",
        arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}],
        options=options or None,
    )
    return made


def test_a_private_flavour_of_a_public_team_closes_only_its_own_files(cast: Cast, store_dir: Path) -> None:
    make_extension("hello")
    public, private = flavour(cast), flavour(cast, private=True)
    assert public.pk != private.pk
    assert "private" not in public.options and '"private"' not in public.canonical  # IDs as before
    store = get_artifact_store()
    for made in (public, private):
        store.put_bytes(f"flavours/{made.pk}/config.ign", b"{}")
    store.put_bytes("extensions/hello/SHA256SUMS", b"")

    anonymous, outsider, member = Client(), Client(), Client()
    outsider.force_login(cast.outsider)
    member.force_login(cast.watcher)
    assert anonymous.get(f"/artifacts/flavours/{public.pk}/config.ign").status_code == 200
    assert anonymous.get("/artifacts/extensions/hello/SHA256SUMS").status_code == 200
    assert anonymous.get(f"/artifacts/flavours/{private.pk}/config.ign").status_code == 404
    assert outsider.get(f"/artifacts/flavours/{private.pk}/config.ign").status_code == 404
    assert member.get(f"/artifacts/flavours/{private.pk}/config.ign").status_code == 200

    token = flavour_token(private)
    assert anonymous.get(f"/artifacts/private/{token}/flavours/{private.pk}/config.ign").status_code == 200
    # A token opens its own flavour's files only, and nothing through odd keys.
    assert anonymous.get(f"/artifacts/private/{token}/flavours/{public.pk}/config.ign").status_code == 404
    for key in ("flavours", f"flavours/{private.pk}", "../etc/passwd", f"flavours/{private.pk}/.meta/x"):
        assert anonymous.get(f"/artifacts/private/{token}/{key}").status_code == 404
    assert anonymous.get(f"/artifacts/private//flavours/{private.pk}/config.ign").status_code == 404
    assert not token_read_allowed("", f"flavours/{private.pk}/config.ign")


def test_a_public_flavour_has_no_token_to_rotate(cast: Cast, store_dir: Path) -> None:
    from rest_framework.test import APIClient

    make_extension("hello")
    public = flavour(cast)
    api = APIClient()
    api.force_authenticate(cast.teammate)
    response = api.post(f"/api/flavours/{public.pk}/rotate-token")
    assert response.status_code == 409 and response.json()["code"] == "flavour.not-private"
    assert api.get(f"/api/flavours/{public.pk}/").json()["artifacts_url"] == (
        f"http://testserver/artifacts/flavours/{public.pk}/"
    )


def test_only_the_published_trees_are_served(cast: Cast, store_dir: Path) -> None:
    """Baked images before publication and staged SHA256SUMS pairs are the worker's, not nodes'."""
    store = get_artifact_store()
    unpublished = "images/" + "ab" * 32 + "/hello-v1.0.0-x86-64.raw"
    staged = "pending-publication/extensions/hello/SHA256SUMS"
    for key in (unpublished, staged, "extensions/hello/SHA256SUMS"):
        store.put_bytes(key, b"x")
    member = Client()
    member.force_login(cast.teammate)
    for client in (Client(), member):
        assert client.get(f"/artifacts/{unpublished}").status_code == 404
        assert client.get(f"/artifacts/{staged}").status_code == 404
        assert client.get("/artifacts/extensions/hello/SHA256SUMS").status_code == 200
