"""A small C project, served as a source tarball, and recipes that build it from source."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from builds.pipeline.recipe import Recipe, parse_recipe
from tests.upstream import Member, directory, file

HELLO_C = b"""#include <stdio.h>
int main(int argc, char **argv) {
    printf("hello from source, %s\\n", argc > 1 ? argv[1] : "nobody");
    return 0;
}
"""
# Builds out of tree: the source tree is read-only in the sandbox.
MAKEFILE = b"""all:
\t$(CC) -O2 -Wall -o $(OUT_DIR)/hello $(SRC_DIR)/hello.c
\t@echo built $(VERSION) for $(ARCH)
"""
TOOLCHAIN_PACKAGES = ("gcc", "make", "libc6-dev")


def source_members(version: str = "v1.0.0") -> list[Member]:
    top = f"hello-src-{version}"
    return [directory(top), file(f"{top}/hello.c", HELLO_C), file(f"{top}/Makefile", MAKEFILE)]


def installed_toolchain() -> dict[str, str]:
    """The versions of the test's toolchain installed on this machine: pins that match."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *TOOLCHAIN_PACKAGES],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def built_recipe_data(name: str = "hello-src", **build: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "toolchain": {"debian": installed_toolchain()},
        "commands": ["make -f $SRC_DIR/Makefile"],
        "install": [{"from": "hello", "to": "usr/bin/hello", "mode": "0755"}],
    }
    spec.update(build)
    return {
        "name": name,
        "description": "Says hello, compiled from source",
        "category": "tool",
        "arches": {"x86-64": "x86_64"},
        "sources": [
            {
                "url": "https://src.example.org/archive/refs/tags/{version}.tar.gz",
                "id": "source",
                "strip_components": 1,
            }
        ],
        "build": spec,
        "versions": {"v1.0.0": {}},
    }


def built_recipe(name: str = "hello-src", **build: Any) -> Recipe:
    return parse_recipe(yaml.safe_dump(built_recipe_data(name, **build)), source=f"{name}.yaml")
