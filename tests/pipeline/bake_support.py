"""Helpers shared by the bake engine tests: recipe text, image inspection, a test signing key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from builds.pipeline.recipe import Recipe, parse_recipe
from builds.pipeline.signing import generate_signing_key

HELLO_SCRIPT = b'#!/bin/sh\necho "hello from the sysext $*"\n'
PASSPHRASE = b"correct horse battery staple"


def recipe_data(name: str = "hello", **overrides: object) -> dict[str, object]:
    """A valid bake recipe (as data) for a tar.gz that holds ``hello-<version>/bin/hello``."""
    data: dict[str, object] = {
        "name": name,
        "description": "Says hello",
        "homepage": "https://example.org/hello",
        "category": "tool",
        "arches": {"x86-64": "x86_64", "arm64": "aarch64"},
        "sources": [
            {
                "url": "https://downloads.example.org/{version}/hello-{version}-{arch}.tar.gz",
                "strip_components": 1,
                "install": [{"from": "bin/hello", "to": "usr/bin/hello", "mode": "0755"}],
            }
        ],
        "files": {
            "usr/lib/systemd/system/hello.service": "[Service]\nExecStart=/usr/bin/hello\n",
        },
        "start": ["hello.service"],
        "reload_manager": True,
        "versions": {"v1.2.3": {}, "v1.2.2": {}},
    }
    data.update(overrides)
    return data


def make_recipe(name: str = "hello", **overrides: object) -> Recipe:
    return parse_recipe(yaml.safe_dump(recipe_data(name, **overrides)), source=f"{name}.yaml")


def write_recipe(directory: Path, name: str = "hello", **overrides: object) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe_data(name, **overrides)), encoding="utf-8")
    return path


def image_listing(image: Path) -> dict[str, str]:
    """``{path: mode string}`` of a squashfs image, from the real unsquashfs."""
    out = subprocess.run(
        ["unsquashfs", "-lls", str(image)], capture_output=True, text=True, check=True
    ).stdout
    listing = {}
    for line in out.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].startswith("squashfs-root"):
            path = fields[5].removeprefix("squashfs-root").lstrip("/").split(" -> ")[0]
            listing[path] = fields[0]
    return listing


def image_file(image: Path, path: str) -> bytes:
    """The content of ``path`` inside a squashfs image."""
    return subprocess.run(["unsquashfs", "-cat", str(image), path], capture_output=True, check=True).stdout


def make_signing_key(directory: Path, passphrase: bytes | None = PASSPHRASE) -> tuple[Path, Path | None]:
    """A fresh secret key file (and passphrase file when protected)."""
    key = directory / "signing-key.asc"
    generate_signing_key(key, name="Bakehouse Test", email="test@bakehouse.invalid", passphrase=passphrase)
    if passphrase is None:
        return key, None
    phrase = directory / "passphrase"
    phrase.write_bytes(passphrase + b"\n")
    return key, phrase
