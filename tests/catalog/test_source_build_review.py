"""A team recipe that builds from source, through the API a team uses: curators see that a version
builds from source (toolchain, commands, outputs) on the review page and in the version API; a
hostile build section is refused with ``recipe.invalid`` before anything is stored."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from catalog.models import Extension
from tests.catalog.conftest import Cast
from tests.pipeline.source_support import built_recipe_data

pytestmark = pytest.mark.django_db


def review_page(cast: Cast, version_id: int) -> str:
    client = cast.client(cast.curator)
    client.force_login(cast.curator)
    response = client.get(f"/versions/{version_id}/review/")
    assert response.status_code == 200
    return str(response.content.decode())


def post_recipe(cast: Cast, data: dict[str, Any]) -> Any:
    text = yaml.safe_dump(data)
    return cast.client(cast.curator).post("/api/extensions/", {"team": "blue", "recipe": text}, format="json")


def test_curators_see_how_a_version_is_built(cast: Cast) -> None:
    data = built_recipe_data("compiled", commands=["make -f $SRC_DIR/Makefile", "strip $OUT_DIR/hello"])
    data["build"]["toolchain"]["debian"] = {"gcc": "4:12.2.0-3", "make": "4.3-4.1"}
    response = post_recipe(cast, data)
    assert response.status_code == 201, response.json()
    version = Extension.objects.get(name="compiled").versions.get()

    shown = cast.client(cast.curator).get(f"/api/versions/{version.pk}/").json()
    assert shown["source_build"] == {
        "toolchain": {"gcc": "4:12.2.0-3", "make": "4.3-4.1"},
        "commands": ["make -f $SRC_DIR/Makefile", "strip $OUT_DIR/hello"],
        "install": [{"from": "hello", "to": "usr/bin/hello", "mode": "0755"}],
        "limits": {"seconds": 1800, "cpu_seconds": 3600, "memory_mb": 4096},
    }

    page = review_page(cast, version.pk)
    assert "Built from source" in page
    assert "gcc=4:12.2.0-3" in page and "$ make -f $SRC_DIR/Makefile" in page
    assert "<code>hello</code> → <code>usr/bin/hello</code> (0755)" in page


def test_release_asset_versions_have_no_source_build(cast: Cast, small_catalog: None) -> None:
    version = Extension.objects.get(name="hello", team=None).versions.first()
    assert version is not None
    assert cast.client(cast.curator).get(f"/api/versions/{version.pk}/").json()["source_build"] is None
    assert "Built from source" not in review_page(cast, version.pk)


@pytest.mark.reliability
@pytest.mark.parametrize(
    "build",
    [
        {"install": [{"from": "../../../etc/shadow", "to": "usr/share/x"}]},
        {"install": [{"from": "/etc/shadow", "to": "usr/share/x"}]},
        {"toolchain": {"debian": {"gcc$(curl evil)": "1"}}},
        {"commands": [{"run": "make", "network": True}]},
        {"sandbox": False},
    ],
)
def test_a_hostile_build_section_is_refused_through_the_api(cast: Cast, build: dict[str, Any]) -> None:
    data = built_recipe_data("evil-build")
    data["build"].update(build)
    response = post_recipe(cast, data)
    assert response.status_code == 400
    assert response.json()["code"] == "recipe.invalid"
    assert not Extension.objects.filter(name="evil-build").exists()
