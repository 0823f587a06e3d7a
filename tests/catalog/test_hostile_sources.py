"""A team's hostile recipe sources and version vars, through the API an attacker uses (issue 10,
holes 1-3): local files, internal addresses and URL-rewriting vars are refused with a code, and
nothing internal is ever contacted. The builds side (a bad row already in the database reaching a
build) is in tests/builds/test_hostile_sources.py."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from catalog.models import Extension, ExtensionVersion, Origin, VersionStatus
from catalog.services import version_pin_digests
from tests.catalog.conftest import Cast
from tests.pipeline.test_egress import Listener

pytestmark = [pytest.mark.django_db, pytest.mark.reliability]


def team_recipe(url: str, *, name: str = "evil", vars_line: str = "{}") -> str:
    return textwrap.dedent(
        f"""\
        name: {name}
        description: Looks harmless
        category: tool
        arches: {{x86-64: amd64, arm64: arm64}}
        sources:
          - url: "{url}"
            id: data
            archive: file
            install:
              - {{to: usr/share/{name}/data}}
        versions:
          v1.0.0: {vars_line}
        """
    )


def post_recipe(cast: Cast, text: str) -> Any:
    return cast.client(cast.curator).post("/api/extensions/", {"team": "blue", "recipe": text}, format="json")


@pytest.fixture
def var_dir(settings: Any, tmp_path: Path) -> Path:
    var = tmp_path / "var"
    (var / "signing").mkdir(parents=True)
    (var / "signing" / "signing-key.asc").write_text("-----BEGIN PGP PRIVATE KEY BLOCK-----\nsecret\n")
    settings.FETCH_CACHE_DIR = var / "cache"
    return var


@pytest.mark.parametrize("target", ["signing/signing-key.asc", "/proc/self/environ", "secret_key"])
def test_a_team_recipe_reading_local_files_is_refused(cast: Cast, var_dir: Path, target: str) -> None:
    path = Path(target) if target.startswith("/") else var_dir / target
    response = post_recipe(cast, team_recipe(path.as_uri()))
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "recipe.local-file"
    assert "upload an archive" in response.json()["message"]
    assert not Extension.objects.filter(name="evil").exists()


def test_a_local_file_recipe_already_in_the_database_is_refused_at_approval_and_pinning(
    cast: Cast, var_dir: Path, django_capture_on_commit_callbacks: Any
) -> None:
    key = var_dir / "signing" / "signing-key.asc"
    text = team_recipe(key.as_uri())
    extension = Extension.objects.create(
        name="evil", team=cast.team, origin=Origin.RECIPE, arches=["x86-64", "arm64"], recipe_text=text
    )
    version = ExtensionVersion.objects.create(extension=extension, version="v1.0.0")
    response = cast.client(cast.curator).post(f"/api/versions/{version.pk}/approve", {}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "recipe.local-file"
    # Even a version that got into "pinning" somehow: the worker's fetcher refuses the file.
    ExtensionVersion.objects.filter(pk=version.pk).update(status=VersionStatus.PINNING)
    version_pin_digests(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == VersionStatus.PIN_FAILED
    assert version.pinning_error.startswith("fetch.file-refused: ")
    assert not version.digests.exists()
    assert not list((var_dir / "cache" / "blobs").iterdir())


@pytest.fixture
def secret_service() -> Any:
    listener = Listener("127.0.0.1")
    yield listener
    listener.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/secret",
        "http://[::ffff:127.0.0.1]:{port}/secret",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://10.0.0.1/admin",
        "http://127.0.0.1:5432/",
    ],
)
def test_approving_a_recipe_with_an_internal_source_fetches_nothing(
    cast: Cast,
    var_dir: Path,
    secret_service: Listener,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
    url: str,
) -> None:
    created = post_recipe(cast, team_recipe(url.format(port=secret_service.port)))
    assert created.status_code == 201, created.content
    (version,) = created.json()["versions"]
    with django_capture_on_commit_callbacks(execute=True):
        approved = cast.client(cast.curator).post(f"/api/versions/{version['id']}/approve", {}, format="json")
    assert approved.status_code == 200, approved.content
    row = ExtensionVersion.objects.get(pk=version["id"])
    assert row.status == VersionStatus.PIN_FAILED  # the curator sees why
    assert row.pinning_error.startswith("fetch.refused-address: "), row.pinning_error
    assert "public addresses" in row.pinning_error
    assert not row.digests.exists()
    assert secret_service.connections == 0


# -- vars --------------------------------------------------------------------------------------

TEMPLATED = "https://github.com/example/evil/releases/download/{version}/evil-{version_nov}-{arch}"


@pytest.fixture
def templated(cast: Cast, var_dir: Path) -> Extension:
    response = post_recipe(cast, team_recipe(TEMPLATED))
    assert response.status_code == 201, response.content
    return Extension.objects.get(name="evil")


@pytest.mark.parametrize(
    "vars,code",
    [
        ({"version_nov": "x/../../other/repo/releases/download/v1/secret?"}, "recipe.invalid-vars"),
        ({"version_nov": "1.0.0"}, "recipe.invalid-vars"),  # built-ins cannot be overridden
        ({"arch": "amd64"}, "recipe.invalid-vars"),
        ({"version": "v1.0.0"}, "recipe.invalid-vars"),
        ({"extra": "..%2f..%2fother"}, "recipe.invalid-vars"),
        ({"extra": "a b"}, "recipe.invalid-vars"),
        ({"extra": "a#b"}, "recipe.invalid-vars"),
        ({"extra": ".."}, "recipe.invalid-vars"),
        ({"extra": "a\tb"}, "recipe.invalid-vars"),
    ],
)
def test_proposing_vars_that_rewrite_urls_is_refused(
    cast: Cast, templated: Extension, vars: dict[str, str], code: str
) -> None:
    response = cast.client(cast.teammate).post(
        "/api/extensions/evil/versions/?team=blue", {"version": "v2.0.0", "vars": vars}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["code"] == code
    assert not templated.versions.filter(version="v2.0.0").exists()


def test_a_version_that_climbs_out_of_the_url_prefix_is_refused(cast: Cast, templated: Extension) -> None:
    response = cast.client(cast.teammate).post(
        "/api/extensions/evil/versions/?team=blue", {"version": "..", "vars": {}}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "recipe.url-escapes"


def test_bad_vars_already_in_the_database_are_refused_at_approval(
    cast: Cast, templated: Extension, django_capture_on_commit_callbacks: Any
) -> None:
    bad = ExtensionVersion.objects.create(
        extension=templated, version="v3.0.0", vars={"version_nov": "x/../../../other/repo/x?"}
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.curator).post(f"/api/versions/{bad.pk}/approve", {}, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "recipe.invalid-vars"
    bad.refresh_from_db()
    assert bad.status == VersionStatus.PROPOSED


def test_the_review_page_and_the_api_show_the_urls_approval_pins(cast: Cast, templated: Extension) -> None:
    version = templated.versions.get(version="v1.0.0")
    expected = {
        "x86-64": "https://github.com/example/evil/releases/download/v1.0.0/evil-1.0.0-amd64",
        "arm64": "https://github.com/example/evil/releases/download/v1.0.0/evil-1.0.0-arm64",
    }
    detail = cast.client(cast.curator).get(f"/api/versions/{version.pk}/").json()
    assert {s["arch"]: s["url"] for s in detail["source_urls"]} == expected
    client = cast.client(cast.curator)
    client.force_login(cast.curator)
    page = client.get(f"/versions/{version.pk}/review/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Approving fetches and pins exactly these files" in text
    for url in expected.values():
        assert url in text
