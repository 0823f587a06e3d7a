"""Every Ignition config we render is checked against the JSON schema of its spec version.

The schemas (``schemas/ignition-3.3.0.json`` and ``-3.4.0.json``) are our own, written from the
facts of the Ignition spec: fields, types, required keys and enums (see their ``$comment``). They
are stricter than upstream's (no unknown keys, the version is pinned), so a config a node could
misread never leaves the pipeline: ``render_ignition`` refuses to return one that fails.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

from builds.pipeline.vocabulary import BUTANE_IGNITION

SCHEMA_DIR = Path(__file__).with_name("schemas")
SCHEMA_VERSIONS = tuple(BUTANE_IGNITION.values())


@functools.cache
def ignition_schema(version: str) -> dict[str, Any]:
    """The JSON schema of Ignition spec ``version`` (3.3.0 or 3.4.0)."""
    if version not in SCHEMA_VERSIONS:
        raise ValueError(f"no Ignition schema for version {version!r}")
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"ignition-{version}.json").read_text())
    return schema


@functools.cache
def _validator(version: str) -> jsonschema.Draft7Validator:
    schema = ignition_schema(version)
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_problems(config: Any, version: str) -> list[str]:
    """Why ``config`` is not a valid Ignition ``version`` config, one line per problem ([] if valid)."""
    problems = []
    errors = _validator(version).iter_errors(config)
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        where = "$" + "".join(f".{part}" for part in error.absolute_path)
        problems.append(f"{where}: {error.message}")
    return problems
