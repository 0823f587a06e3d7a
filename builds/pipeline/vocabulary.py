"""The words Bakehouse shares with Flatcar, each declared once (pure Python, like NetBox's choices.py).

Recipes, the Butane renderer, the flavour validator, Django model choices, forms and the API
all derive from these declarations, so a new architecture, channel or Butane spec is one edit
here and cannot reach one layer but not another. Facts come from ``reference/sysext.md`` and
``reference/butane.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

# --- architectures ------------------------------------------------------------------------------

# systemd's spelling, as in ARCHITECTURE= and image file names (NAME-VER-ARCH.raw).
ARCHES: tuple[str, ...] = ("x86-64", "arm64")
DEFAULT_ARCH = ARCHES[0]
# The ELF e_machine of each arch's executables and libraries (the ELF psABI numbers), and the
# name `readelf -h` and `file` print for it. Every ELF file of an image must carry its arch's.
ELF_MACHINES: Mapping[str, tuple[int, str]] = MappingProxyType(
    {"x86-64": (62, "x86-64"), "arm64": (183, "aarch64")}
)

# --- catalog ------------------------------------------------------------------------------------

# value -> what people read.
CATEGORIES: Mapping[str, str] = MappingProxyType(
    {
        "wasm-runtime": "Wasm runtime",
        "container-runtime": "Container runtime",
        "kubernetes": "Kubernetes",
        "networking": "Networking",
        "tool": "Tool",
    }
)
DEFAULT_CATEGORY = "tool"

# How an extension reaches a node: value -> what people read.
DELIVERIES: Mapping[str, str] = MappingProxyType(
    {
        "bake": "Baked by Bakehouse",
        "flatcar-official": "Official Flatcar extension",
        "source-build-required": "Source build required (not selectable)",
    }
)

# --- Flatcar's own sysexts ----------------------------------------------------------------------

# The sysexts Flatcar ships in the OS image. A flavour (or a recipe's replaces_builtin) may mask
# them by linking /etc/extensions/NAME-flatcar.raw to /dev/null when it brings its own.
BUNDLED_SYSEXTS: tuple[str, ...] = ("docker", "containerd")


def bundled_mask_path(name: str) -> str:
    """The link that masks Flatcar's bundled ``name`` sysext."""
    return f"/etc/extensions/{name}-flatcar.raw"


# --- Butane specs and Flatcar channels ----------------------------------------------------------

# Butane ``variant: flatcar`` spec -> the Ignition spec it emits, oldest first.
BUTANE_IGNITION: Mapping[str, str] = MappingProxyType({"1.0.0": "3.3.0", "1.1.0": "3.4.0"})
BUTANE_VERSIONS: tuple[str, ...] = tuple(BUTANE_IGNITION)
# Boots on every Flatcar, LTS-2023 (Ignition 2.14, spec <= 3.3.0) included.
DEFAULT_BUTANE_VERSION = BUTANE_VERSIONS[0]

# Flatcar's channels and the newest Butane spec each one's Ignition reads: LTS-2023 ships
# Ignition 2.14 (spec 3.3.0); the others have Ignition >= 2.15 (spec 3.4.0).
CHANNEL_NEWEST_BUTANE: Mapping[str, str] = MappingProxyType(
    {"stable": "1.1.0", "beta": "1.1.0", "alpha": "1.1.0", "lts": "1.0.0"}
)
CHANNELS: tuple[str, ...] = tuple(CHANNEL_NEWEST_BUTANE)
CHANNEL_LABELS: Mapping[str, str] = MappingProxyType(
    {channel: "LTS" if channel == "lts" else channel.capitalize() for channel in CHANNELS}
)
DEFAULT_CHANNEL = "stable"


def butane_label(version: str) -> str:
    """``1.0.0 (Ignition 3.3.0, boots on every Flatcar)``: a spec as people choose it."""
    every = ", boots on every Flatcar" if version == DEFAULT_BUTANE_VERSION else ""
    return f"{version} (Ignition {BUTANE_IGNITION[version]}{every})"


def channel_butane_problem(channel: str, butane_version: str) -> str:
    """Why nodes of ``channel`` cannot read a ``butane_version`` config ('' when they can)."""
    newest = CHANNEL_NEWEST_BUTANE[channel]
    if BUTANE_VERSIONS.index(butane_version) <= BUTANE_VERSIONS.index(newest):
        return ""
    return (
        f"Flatcar {channel} reads Butane {newest} at most (its Ignition is older); "
        f"choose {newest} or another channel."
    )


# --- hostnames ----------------------------------------------------------------------------------

# Linux's HOST_NAME_MAX: systemd ignores a longer /etc/hostname (hostname_is_valid), so a node
# would boot under a fallback name.
HOSTNAME_MAX = 64
# RFC 1123 labels. Lowercase only: hostnames are case-insensitive, and one spelling per name keeps
# "Node-1" and "node-1" from being two flavours (two IDs) for the same machine.
_HOSTNAME_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
HOSTNAME_RULE = (
    f"A hostname is lowercase letters, digits and '-', in dot-separated labels of at most 63, "
    f"{HOSTNAME_MAX} characters in all."
)


def hostname_problem(hostname: str) -> str:
    """Why Flatcar would not take ``hostname`` as its /etc/hostname ('' when it would)."""
    if 0 < len(hostname) <= HOSTNAME_MAX and all(_HOSTNAME_LABEL.fullmatch(p) for p in hostname.split(".")):
        return ""
    return HOSTNAME_RULE
