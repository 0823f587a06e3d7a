"""Approving a version with several upstream files pins each of them for each arch (a pair like
wasmcloud + nats-server, with its own arch names), and the approval shows every digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.core.management import call_command

from catalog.models import ExtensionVersion, VersionStatus
from tests.catalog.conftest import Cast, write_recipe
from tests.upstream import UpstreamServer, executable, make_tar

pytestmark = pytest.mark.django_db

PAIR_RECIPE = """\
name: pair
description: A host and the server it needs, from two fake GitHub projects
homepage: https://example.org/pair
category: tool
arches: {x86-64: x86_64, arm64: aarch64}
sources:
  - url: https://github.com/example/host/releases/download/{version}/host-{version}-{arch}.tar.gz
    id: host
    install:
      - {from: host, to: usr/bin/host-daemon, mode: "0755"}
  - url: https://github.com/example/server/releases/download/v2.0.0/server-linux-{arch}.tar.gz
    id: server
    arches: {x86-64: amd64, arm64: arm64}
    install:
      - {from: server, to: usr/bin/pair-server, mode: "0755"}
versions:
  v1.0.0: {}
"""

UPSTREAM_FILES = {
    ("x86-64", "host"): "/gh/example/host/releases/download/v1.0.0/host-v1.0.0-x86_64.tar.gz",
    ("arm64", "host"): "/gh/example/host/releases/download/v1.0.0/host-v1.0.0-aarch64.tar.gz",
    ("x86-64", "server"): "/gh/example/server/releases/download/v2.0.0/server-linux-amd64.tar.gz",
    ("arm64", "server"): "/gh/example/server/releases/download/v2.0.0/server-linux-arm64.tar.gz",
}


def test_every_source_of_every_arch_is_pinned_and_shown(
    cast: Cast,
    upstream: UpstreamServer,
    tmp_path: Path,
    settings,
    fetch_cache: Path,
    eager_celery: None,
    django_capture_on_commit_callbacks,
) -> None:
    settings.UPSTREAM_MIRRORS = {"https://github.com/": upstream.url("/gh/")}
    write_recipe(tmp_path / "recipes", "pair", PAIR_RECIPE)
    call_command("sync_catalog", "--recipes-dir", str(tmp_path / "recipes"), verbosity=0)
    expected = {}
    for (arch, source), path in UPSTREAM_FILES.items():
        binary = "host" if source == "host" else "server"
        body = make_tar([executable(binary, f"#!/bin/sh\necho {source} {arch}\n".encode())])
        upstream.add_bytes(path, body)
        expected[(arch, source)] = hashlib.sha256(body).hexdigest()
    version = ExtensionVersion.objects.get(extension__name="pair", version="v1.0.0")
    assert version.status == VersionStatus.PROPOSED

    with django_capture_on_commit_callbacks(execute=True):
        response = cast.client(cast.staff).post(
            f"/api/versions/{version.pk}/approve", {"reason": "both projects reviewed"}, format="json"
        )
    assert response.status_code == 200, response.content

    version.refresh_from_db()
    assert version.status == VersionStatus.APPROVED, version.pinning_error
    for arch in ("x86-64", "arm64"):
        assert version.pins(arch) == {source: expected[(arch, source)] for source in ("host", "server")}
    shown = next(
        v for v in cast.client(cast.curator).get("/api/extensions/pair/").json()["versions"]
        if v["version"] == "v1.0.0"
    )  # fmt: skip
    assert {(d["arch"], d["source_id"]): d["sha256"] for d in shown["digests"]} == expected
    assert {d["url"] for d in shown["digests"]} == {
        "https://github.com" + path.removeprefix("/gh") for path in UPSTREAM_FILES.values()
    }
    for path in UPSTREAM_FILES.values():
        assert upstream.hits(path) == 1
