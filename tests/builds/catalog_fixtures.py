"""Catalog data for tests: extensions with real-looking recipes and pins, and the small catalog
of the ``small_catalog`` fixture (tests/conftest.py). The cast of users is tests/factories.py's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from builds import services
from builds.models import Flavour
from catalog.models import (
    Delivery,
    Extension,
    ExtensionVersion,
    Team,
    UpstreamDigest,
    VersionStatus,
)
from tests.factories import Cast, make_cast

__all__ = ["Cast", "make_cast"]  # the one cast, imported from here by older tests

UPSTREAM_HOST = "https://github.com/"


def fake_digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def recipe_yaml(
    name: str,
    versions: Iterable[str],
    *,
    arches: Sequence[str] = ("x86-64", "arm64"),
    requires: Sequence[Any] = (),
    conflicts: Sequence[str] = (),
    delivery: str = "bake",
) -> str:
    """A recipe whose single source is a tar.gz holding ``bin/NAME``, on the real-looking host."""
    arch_map = ", ".join(f"{a}: {a.replace('-', '_')}" for a in arches)
    lines = [
        f"name: {name}",
        f"description: Test extension {name}",
        "category: tool",
        f"delivery: {delivery}",
        f"arches: {{{arch_map}}}",
    ]
    if delivery == "bake":
        lines += [
            "sources:",
            f"  - url: {UPSTREAM_HOST}example/{name}/releases/download/{{version}}/"
            f"{name}-{{version}}-{{arch}}.tar.gz",
            f"    id: {name}",
            "    install:",
            f'      - {{from: bin/{name}, to: usr/bin/{name}, mode: "0755"}}',
        ]
    if requires:
        lines.append(f"requires: {list(requires)!r}".replace("'", ""))
    if conflicts:
        lines.append(f"conflicts: [{', '.join(conflicts)}]")
    lines.append("versions:")
    lines += [f"  {v}: {{}}" for v in versions]
    return "\n".join(lines) + "\n"


def make_extension(
    name: str,
    *,
    team: Team | None = None,
    versions: dict[str, str] | None = None,
    arches: Sequence[str] = ("x86-64", "arm64"),
    requires: Sequence[Sequence[str]] = (),
    conflicts: Sequence[str] = (),
    delivery: str = Delivery.BAKE,
    deprecated: Iterable[str] = (),
    digests: dict[tuple[str, str], str] | None = None,
) -> Extension:
    """An extension with versions in the given statuses; approved ones get pins for every arch.

    ``digests`` overrides the pinned sha256 per (version, arch).
    """
    versions = versions or {"v1.0.0": VersionStatus.APPROVED}
    text = recipe_yaml(
        name,
        list(versions),
        arches=arches,
        requires=[list(g) for g in requires],
        conflicts=conflicts,
        delivery=delivery,
    )
    extension = Extension.objects.create(
        name=name,
        team=team,
        description=f"Test extension {name}",
        delivery=delivery,
        arches=list(arches),
        recipe_text=text,
        recipe_digest=fake_digest("recipe", text),
        requires=[list(g) for g in requires],
        conflicts=list(conflicts),
    )
    deprecated = set(deprecated)
    for version, status in versions.items():
        ev = ExtensionVersion.objects.create(
            extension=extension, version=version, status=status, deprecated=version in deprecated
        )
        if status == VersionStatus.APPROVED and delivery == Delivery.BAKE:
            for arch in arches:
                sha = (digests or {}).get((version, arch)) or fake_digest(name, version, arch)
                UpstreamDigest.objects.create(
                    version=ev,
                    arch=arch,
                    source_id=name,
                    url=f"{UPSTREAM_HOST}example/{name}/releases/download/{version}/{name}-{version}-{arch}.tar.gz",
                    sha256=sha,
                    size=123,
                )
    return extension


def make_small_catalog(cast: Cast) -> None:
    """hello (v1 approved, v0.9 deprecated, v2 proposed), tool needing hello, a rival of hello,
    an x86-only one, a source-build-only one, and red's private secret."""
    make_extension(
        "hello",
        versions={"v1.0.0": VersionStatus.APPROVED, "v0.9.0": VersionStatus.APPROVED, "v2.0.0": "proposed"},
        deprecated=["v0.9.0"],
    )
    make_extension("hello-tools", requires=[["hello"]])
    make_extension("rival", conflicts=["hello"])
    make_extension("x86only", arches=("x86-64",))
    make_extension(
        "wave", delivery=Delivery.SOURCE_BUILD_REQUIRED, versions={"v1.0.0": VersionStatus.APPROVED}
    )
    make_extension("secret", team=cast.red)
    make_extension("bluetool", team=cast.blue)


def hello_flavour(cast: Cast) -> Flavour:
    """Team blue's flavour of the 'hello' extension, composed through the service."""
    make_extension("hello")
    flavour, _ = services.flavour_create(
        user=cast.teammate,
        team=cast.blue,
        name="n",
        arch="x86-64",
        extensions=[{"name": "hello", "version": "v1.0.0"}],
    )
    return flavour


def flavour_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "name": "web nodes",
        "arch": "x86-64",
        "extensions": [{"name": "hello", "version": "v1.0.0"}],
    }
    payload.update(overrides)
    return payload
