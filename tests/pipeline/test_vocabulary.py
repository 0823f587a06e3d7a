"""The one vocabulary: the hostname rule Flatcar takes, and the Butane layers agree with it."""

from __future__ import annotations

import pytest

from builds.pipeline.butane import ignition, schema
from builds.pipeline.vocabulary import (
    BUTANE_IGNITION,
    BUTANE_VERSIONS,
    CHANNEL_NEWEST_BUTANE,
    HOSTNAME_MAX,
    channel_butane_problem,
    hostname_problem,
)

ACCEPTED = ["node-1", "a", "edge-7.example.com", "x" * 63, ".".join(["a" * 31, "b" * 32])]
REFUSED = [
    "Node-1",  # one spelling per name: hostnames are case-insensitive
    "x" * 64,  # a label has at most 63 characters
    ".".join(["a" * 32, "b" * 32]),  # 65 characters: more than Linux's HOST_NAME_MAX
    "-node",
    "node-",
    "a..b",
    ".node",
    "node.",
    "node_1",
    "bad host",
    "node\n",
    "",
]


@pytest.mark.parametrize("hostname", ACCEPTED)
def test_hostnames_flatcar_takes_are_accepted(hostname: str) -> None:
    assert len(hostname) <= HOSTNAME_MAX
    assert hostname_problem(hostname) == ""


@pytest.mark.parametrize("hostname", REFUSED)
def test_hostnames_flatcar_would_not_take_are_refused_with_the_rule(hostname: str) -> None:
    assert "dot-separated labels of at most 63" in hostname_problem(hostname)


def test_butane_schema_and_ignition_validator_know_exactly_the_vocabulary_specs() -> None:
    assert tuple(schema.SPEC_VERSIONS) == BUTANE_VERSIONS
    assert {v: s.ignition for v, s in schema.SPEC_VERSIONS.items()} == dict(BUTANE_IGNITION)
    assert ignition.IGNITION_VERSIONS == ("3.3.0", "3.4.0")


def test_only_lts_is_held_back_to_the_oldest_spec() -> None:
    assert CHANNEL_NEWEST_BUTANE["lts"] == "1.0.0"
    assert "Flatcar lts reads Butane 1.0.0 at most" in channel_butane_problem("lts", "1.1.0")
    assert all(channel_butane_problem(channel, "1.1.0") == "" for channel in ("stable", "beta", "alpha"))
