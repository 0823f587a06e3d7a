"""Our Ignition 3.3.0/3.4.0 JSON schemas: what butane itself prints validates, broken configs do
not, and a rendered config that fails its schema is never handed out."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from builds.pipeline.butane.ignition_schema import SCHEMA_VERSIONS, ignition_schema, schema_problems
from builds.pipeline.butane.render import FlavourConfig, render_butane, render_ignition
from builds.pipeline.errors import PipelineError
from tests.pipeline.butane.support import FIXTURES, GOLDEN


def _outputs() -> list[Path]:
    found = []
    for root in (GOLDEN, FIXTURES):
        if root.is_dir():
            found += sorted(root.glob("*.ign")) + sorted(root.glob("errors/*.out"))
    return found


def _version(config: dict[str, Any]) -> str:
    version: str = config["ignition"]["version"]
    return version


@pytest.mark.parametrize("schema_version", SCHEMA_VERSIONS)
def test_schemas_are_valid_draft_7(schema_version: str) -> None:
    jsonschema.Draft7Validator.check_schema(ignition_schema(schema_version))


def test_both_spec_versions_are_covered_by_the_known_good_outputs() -> None:
    versions = {_version(json.loads(path.read_text())) for path in _outputs()}
    assert versions == set(SCHEMA_VERSIONS)


@pytest.mark.parametrize("path", _outputs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_known_good_outputs_validate(path: Path) -> None:
    # butane's own output (shared goldens) and our hand-checked fixtures
    config = json.loads(path.read_text())
    assert schema_problems(config, _version(config)) == []


def test_a_config_validates_only_against_its_own_version() -> None:
    config = {"ignition": {"version": "3.4.0"}}
    assert schema_problems(config, "3.4.0") == []
    assert schema_problems(config, "3.3.0") == ["$.ignition.version: '3.3.0' was expected"]


GOOD: dict[str, Any] = {
    "ignition": {"version": "3.4.0"},
    "storage": {
        "files": [
            {"path": "/etc/a", "contents": {"compression": "", "source": "data:,a"}, "mode": 420},
        ],
        "filesystems": [{"device": "/dev/vdb", "format": "ext4", "path": "/var"}],
        "luks": [{"name": "x", "device": "/dev/vdc", "discard": True}],
    },
    "systemd": {"units": [{"name": "a.service", "enabled": True, "contents": "[Service]\n"}]},
}


def broken(change: str) -> dict[str, Any]:
    config = copy.deepcopy(GOOD)
    storage, units = config["storage"], config["systemd"]["units"]
    if change == "no version":
        del config["ignition"]["version"]
    elif change == "mode as text":
        storage["files"][0]["mode"] = "0644"
    elif change == "mode beyond 07777":
        storage["files"][0]["mode"] = 0o10000
    elif change == "relative path":
        storage["files"][0]["path"] = "etc/a"
    elif change == "xz compression":
        storage["files"][0]["contents"]["compression"] = "xz"
    elif change == "md5 hash":
        storage["files"][0]["contents"]["verification"] = {"hash": "md5-" + "0" * 32}
    elif change == "unknown key":
        storage["files"][0]["contents"]["inline"] = "a"  # a Butane key leaking into Ignition
    elif change == "unit without name":
        del units[0]["name"]
    elif change == "enabled as text":
        units[0]["enabled"] = "yes"
    elif change == "ntfs":
        storage["filesystems"][0]["format"] = "ntfs"
    elif change == "filesystem without device":
        del storage["filesystems"][0]["device"]
    elif change == "luks without name":
        del storage["luks"][0]["name"]
    elif change == "unknown section":
        config["networkd"] = {}
    return config


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ("no version", "$.ignition"),
        ("mode as text", "$.storage.files.0.mode"),
        ("mode beyond 07777", "$.storage.files.0.mode"),
        ("relative path", "$.storage.files.0.path"),
        ("xz compression", "$.storage.files.0.contents.compression"),
        ("md5 hash", "$.storage.files.0.contents.verification.hash"),
        ("unknown key", "$.storage.files.0.contents"),
        ("unit without name", "$.systemd.units.0"),
        ("enabled as text", "$.systemd.units.0.enabled"),
        ("ntfs", "$.storage.filesystems.0.format"),
        ("filesystem without device", "$.storage.filesystems.0"),
        ("luks without name", "$.storage.luks.0"),
        ("unknown section", "$"),
    ],
)
def test_hand_made_invalid_configs_fail(change: str, where: str) -> None:
    assert schema_problems(GOOD, "3.4.0") == []
    problems = schema_problems(broken(change), "3.4.0")
    assert len(problems) == 1, problems
    assert problems[0].startswith(where + ": ")


def test_luks_discard_is_not_in_the_3_3_schema() -> None:
    config = copy.deepcopy(GOOD)
    config["ignition"]["version"] = "3.3.0"
    assert schema_problems(config, "3.3.0") == [
        "$.storage.luks.0: Additional properties are not allowed ('discard' was unexpected)"
    ]


def test_render_refuses_a_config_that_fails_its_schema() -> None:
    # Ignition's validation (and so our transpiler) checks only a hash's length; the schema wants
    # hex digits. Such a config would fail on the node, so it is not published.
    fragment = (
        "storage:\n  files:\n    - path: /etc/blob\n      contents:\n"
        "        source: https://example.com/blob\n        verification:\n"
        f"          hash: sha256-{'z' * 64}\n"
    )
    flavour = FlavourConfig(arch="x86-64", spec_version="1.0.0", updates=False, fragment=fragment)
    render_butane(flavour)  # the Butane itself is clean
    with pytest.raises(PipelineError) as raised:
        render_ignition(flavour)
    assert raised.value.code == "butane.schema-invalid"
    assert "$.storage.files.0.contents.verification.hash" in raised.value.message
