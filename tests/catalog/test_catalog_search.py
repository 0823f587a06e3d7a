"""Catalog search and filters over the real built-in catalog: the page and the API answer alike
(one ExtensionFilterSet), search also matches category and recipe keywords, versions newest first."""

from __future__ import annotations

from typing import Any

import pytest

from catalog import services
from catalog.models import Extension, ExtensionVersion, VersionStatus
from tests.factories import Cast

pytestmark = pytest.mark.django_db

WASM = {
    "lunatic",
    "modsurfer",  # a tool, found by its keyword
    "runwasi-shims",
    "slight",
    "spin",
    "wamr",
    "wasm3",
    "wasmcloud",
    "wasmedge",
    "wasmtime",
    "wave",
    "wazero",
}


@pytest.fixture
def builtin(cast: Cast) -> Cast:
    services.catalog_sync()
    return cast


def _page(client: Any, **query: str) -> set[str]:
    response = client.get("/catalog/", query)
    assert response.status_code == 200
    return {ext.name for ext in response.context["extensions"]}


def _api(cast: Cast, **query: str) -> set[str]:
    response = cast.client(cast.viewer).get("/api/extensions/", {**query, "page_size": 100})
    assert response.status_code == 200, response.content
    return {row["name"] for row in response.json()["results"]}


def test_wasm_finds_every_wasm_runtime_on_the_page_and_in_the_api(client: Any, builtin: Cast) -> None:
    client.force_login(builtin.viewer)
    assert _page(client, search="wasm") == WASM
    assert _api(builtin, search="wasm") == WASM
    # The ones whose name and description never say "wasm" are found by category or keyword.
    assert {"lunatic", "slight", "spin", "wave", "wazero"} <= _page(client, search="WASM")


def test_search_matches_category_labels_and_keywords(client: Any, builtin: Cast) -> None:
    client.force_login(builtin.viewer)
    assert _page(client, search="k8s") == {"cilium-cli", "k3s", "kubernetes", "rke2"}
    assert _page(client, search="kubernetes") >= {"k3s", "kubernetes", "rke2", "cri-o", "cilium-cli"}
    assert "docker" in _page(client, search="container runtime")  # the category's label, both words
    # Every word must match somewhere: "wasm" and "go" only meet in wazero's description.
    assert _page(client, search="wasm go") == {"wazero"}
    assert _api(builtin, search="wasm go") == {"wazero"}
    assert _page(client, search="nothing-like-this") == set()


def test_keywords_come_from_the_recipe_and_show_in_the_api(builtin: Cast) -> None:
    assert Extension.objects.get(name="spin").keywords == ["wasm", "webassembly", "wasi"]
    row = builtin.client(builtin.viewer).get("/api/extensions/spin/").json()
    assert row["keywords"] == ["wasm", "webassembly", "wasi"]


def test_status_filter_on_the_page_and_in_the_api(client: Any, builtin: Cast) -> None:
    client.force_login(builtin.viewer)
    # A fresh install: every built-in version is proposed, none approved.
    assert _page(client, status="approved") == set()
    proposed = _page(client, status="proposed")
    assert {"docker", "kubernetes", "wasmtime"} <= proposed
    spin = ExtensionVersion.objects.get(extension__name="spin", version="v3.5.0")
    spin.status = VersionStatus.APPROVED
    spin.save()
    old = ExtensionVersion.objects.get(extension__name="docker", version="28.0.4")
    old.status, old.deprecated = VersionStatus.APPROVED, True
    old.save()
    failed = ExtensionVersion.objects.get(extension__name="wazero", version="v1.12.0")
    failed.status, failed.pinning_error = VersionStatus.PIN_FAILED, "fetch.http-error: 404"
    failed.save()
    for status, expected in (("approved", {"spin"}), ("deprecated", {"docker"}), ("pin-failed", {"wazero"})):
        assert _page(client, status=status) == expected
        assert _api(builtin, status=status) == expected
    assert _page(client, status="approved", search="wasm") == {"spin"}
    assert builtin.client(builtin.viewer).get("/api/extensions/", {"status": "shiny"}).status_code == 400


def test_arch_filter_and_combination(client: Any, builtin: Cast) -> None:
    client.force_login(builtin.viewer)
    arm = _page(client, arch="arm64")
    assert "wasm3" not in arm and "lunatic" not in arm  # x86-64 only upstream builds
    assert "spin" in arm
    assert _page(client, arch="arm64", search="wasm") == _api(builtin, arch="arm64", search="wasm")
    assert "wasm3" not in _page(client, arch="arm64", search="wasm")


def test_versions_are_listed_newest_first(client: Any, builtin: Cast) -> None:
    extension = Extension.objects.get(name="spin")
    ExtensionVersion.objects.create(extension=extension, version="v3.10.0")
    ExtensionVersion.objects.create(extension=extension, version="v3.1.0")
    client.force_login(builtin.viewer)
    card = next(
        e for e in client.get("/catalog/", {"search": "spin"}).context["extensions"] if e.name == "spin"
    )
    assert [v.version for v in card.newest_versions()] == ["v3.10.0", "v3.5.0", "v3.2.0", "v3.1.0"]
    detail = builtin.client(builtin.viewer).get("/api/extensions/spin/").json()
    assert [v["version"] for v in detail["versions"]] == ["v3.10.0", "v3.5.0", "v3.2.0", "v3.1.0"]
    html = client.get("/catalog/spin/").content.decode()
    assert html.index("spin v3.10.0") < html.index("spin v3.5.0") < html.index("spin v3.1.0")


def test_the_filter_form_works_without_javascript_and_loads_the_live_filter(
    client: Any, builtin: Cast
) -> None:
    client.force_login(builtin.viewer)
    html = client.get("/catalog/", {"search": "wasm", "status": "proposed"}).content.decode()
    assert '<form method="get"' in html and 'data-live-filter="catalog-results"' in html
    assert 'value="wasm"' in html and '<option value="proposed" selected>' in html
    assert "js/live-filter.js" in html
    assert 'id="catalog-results"' in html
