"""Every flavour the composer allows renders an Ignition config valid against the JSON schema of
its spec version (3.3.0 or 3.4.0).

Property-based: the options are drawn from ``OPTIONS`` (the ``OptionSpec`` of every
``FlavourOptions`` field), so an option added later is covered without touching this file; only
an option of a new *kind* needs a strategy here, and ``test_every_option_kind_has_a_strategy``
says so. Values go through ``flavour_options_resolve``, the validator the API and the composer
use, and the flavour is rendered by ``butane_config`` + ``render_ignition``, as publication does.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from builds.flavours import (
    OPTIONS,
    FlavourInvalid,
    OptionSpec,
    PublishedImage,
    butane_config,
    flavour_options_resolve,
)
from builds.pipeline.butane.ignition_schema import schema_problems
from builds.pipeline.butane.render import render_ignition
from builds.pipeline.butane.transpile import transpile
from builds.pipeline.vocabulary import ARCHES, BUTANE_IGNITION
from catalog.models import Delivery

KEYRING = bytes.fromhex("99010d04") + b"binary OpenPGP public key packets \x00\xff"

# Realistic values for the free-text options we know; any other text option gets generic text.
SSH_KEYS = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGz9Ff2Wf7k0vL3xQ0m8xv8Hq2n4XhE2m8mM0x2b3c4d user@host",
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY= ops",
)
HOSTNAMES = ("node-1", "worker.example.com", "a")
FRAGMENTS = (
    "",
    "storage:\n  files:\n    - path: /etc/motd\n      mode: 0644\n      contents:\n        inline: hello\n"
    "systemd:\n  units:\n    - name: hello.service\n      enabled: true\n      contents: |\n"
    "        [Service]\n        ExecStart=/usr/bin/true\n"
    "        [Install]\n        WantedBy=multi-user.target\n",
    "storage:\n  disks:\n    - device: /dev/vdb\n      wipe_table: true\n      partitions:\n"
    "        - label: swap\n          number: 1\n          size_mib: 512\n        - label: data\n"
    "  filesystems:\n    - device: /dev/disk/by-partlabel/swap\n      format: swap\n"
    "      with_mount_unit: true\n"
    "    - device: /dev/disk/by-partlabel/data\n      format: xfs\n      path: /var/lib/data\n"
    "      mount_options: [noatime]\n      with_mount_unit: true\n",
    "storage:\n  raid:\n    - name: md0\n      level: raid1\n      devices: [/dev/vdc, /dev/vdd]\n"
    "  luks:\n    - name: secret\n      device: /dev/md/md0\n      key_file:\n        inline: hunter2\n",
    "kernel_arguments:\n  should_exist: [console=ttyS0]\n  should_not_exist: [quiet]\n"
    "passwd:\n  groups:\n    - name: ops\n  users:\n    - name: ops\n      groups: [ops]\n",
    "ignition:\n  timeouts:\n    http_total: 30\n  proxy:\n    https_proxy: https://proxy.example.com\n"
    "storage:\n  directories:\n    - path: /srv/data\n      mode: 0750\n"
    "  links:\n    - path: /srv/current\n      target: /srv/data\n",
)
EXAMPLES: dict[str, tuple[str, ...]] = {
    "ssh_keys": SSH_KEYS,
    "hostname": HOSTNAMES,
    "butane_fragment": FRAGMENTS,
}


def _text(option: OptionSpec) -> st.SearchStrategy[str]:
    generic = st.text(alphabet="abcdefghij-.", max_size=12)
    examples = EXAMPLES.get(option.name, ())
    candidates = (
        st.one_of(st.sampled_from(("", *examples)), generic) if examples else st.one_of(st.just(""), generic)
    )
    # A value the option's own check refuses is not a flavour the composer allows.
    return candidates.filter(lambda text: not (option.check and text.strip() and option.check(text.strip())))


def option_values(option: OptionSpec) -> st.SearchStrategy[Any]:
    """Every value the composer can submit for ``option``, from its spec alone."""
    if option.kind == "choice":
        return st.sampled_from(option.values)
    if option.kind == "flag":
        return st.booleans()
    if option.kind == "subset":
        return st.lists(st.sampled_from(option.values), unique=True) if option.values else st.just([])
    if option.kind == "lines":
        return st.lists(_text(option).filter(bool), max_size=2)
    if option.kind == "text":
        return _text(option)
    raise AssertionError(f"no strategy for option kind {option.kind!r}: add one to option_values()")


@st.composite
def option_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A submitted options document: any subset of the options, each with an allowed value."""
    document = {}
    for option in OPTIONS:
        if draw(st.booleans()):
            document[option.name] = draw(option_values(option))
    return document


# Stand-ins for catalog versions: what ``butane_config`` reads of them.
CATALOG = (
    ("kubernetes", Delivery.BAKE, "1.32.3", True, []),
    ("docker-ce", Delivery.BAKE, "27.3.1", False, ["docker"]),
    ("wasmtime", Delivery.BAKE, "25.0.0", False, []),
    ("podman", Delivery.FLATCAR_OFFICIAL, "4.9.0", False, []),
)


def _version(name: str, delivery: str, version: str, minor_pinning: bool, replaces: list[str]) -> Any:
    extension = SimpleNamespace(
        name=name, delivery=delivery, minor_pinning=minor_pinning, replaces_builtin=replaces
    )
    return SimpleNamespace(extension=extension, version=version)


def test_every_option_kind_has_a_strategy() -> None:
    for option in OPTIONS:
        option_values(option)  # raises for a kind this file does not know yet


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(
    raw=option_documents(),
    chosen=st.lists(st.sampled_from(CATALOG), unique_by=lambda entry: entry[0], max_size=3),
    arch=st.sampled_from(ARCHES),
)
def test_every_allowed_flavour_renders_schema_valid_ignition(
    raw: dict[str, Any], chosen: list[tuple[Any, ...]], arch: str
) -> None:
    try:
        options = flavour_options_resolve(raw)
    except FlavourInvalid:
        assume(False)  # not a flavour the composer would accept (say LTS with Butane 1.1.0)
        raise
    versions = [_version(*entry) for entry in chosen]
    images = {
        v.extension.name: PublishedImage(
            url=f"https://bake.example.com/ext/{v.extension.name}/{v.extension.name}-{v.version}-{arch}.raw",
            hash="sha512-" + "ab" * 64,
            publish_url=f"https://bake.example.com/ext/{v.extension.name}/",
        )
        for v in versions
        if v.extension.delivery != Delivery.FLATCAR_OFFICIAL
    }
    config = butane_config(arch=arch, options=options, versions=versions, images=images, keyring=KEYRING)
    ignition = json.loads(render_ignition(config))
    version = BUTANE_IGNITION[options.butane_version]
    assert ignition["ignition"]["version"] == version
    assert schema_problems(ignition, version) == []


@pytest.mark.parametrize("fragment", FRAGMENTS[1:])
@pytest.mark.parametrize("butane_version", tuple(BUTANE_IGNITION))
def test_each_example_fragment_is_a_flavour_the_composer_allows(fragment: str, butane_version: str) -> None:
    # Keeps the pool above meaningful: a fragment the validator refused would never be drawn.
    channel = "lts" if butane_version == "1.0.0" else "stable"
    options = flavour_options_resolve(
        {"butane_version": butane_version, "channel": channel, "butane_fragment": fragment}
    )
    config = butane_config(arch="x86-64", options=options, versions=[], images={}, keyring=KEYRING)
    ignition = json.loads(render_ignition(config))
    assert schema_problems(ignition, BUTANE_IGNITION[butane_version]) == []
    # ... and nothing of the fragment was lost on the way: each of its entries is in the flavour's.
    alone = transpile(f"variant: flatcar\nversion: {butane_version}\n{fragment}").config
    assert alone is not None
    for section in ("storage", "passwd", "systemd"):
        for key, items in alone.get(section, {}).items():
            for item in items:
                assert item in ignition[section][key], (section, key, item)
    assert alone.get("kernelArguments") == ignition.get("kernelArguments")
    for key, value in alone["ignition"].items():
        assert ignition["ignition"][key] == value
