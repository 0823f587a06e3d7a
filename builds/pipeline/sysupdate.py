"""systemd-sysupdate files: transfer files, the no-op transfer and the service drop-in.

The rules are those of ``shared/reference/sysupdate.md``: one flat served directory per
extension, ``NAME-@v-%a.raw`` patterns, ``.conf`` suffix (read by every systemd Flatcar ships).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from builds.pipeline.errors import PipelineError

# sysupdate's @v alphabet: letters, digits and .,_+-
_VERSION_RE = re.compile(r"^[A-Za-z0-9.,_+-]+$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

NOOP_TRANSFER_PATH = "/etc/sysupdate.d/noop.conf"
NOOP_TRANSFER = """\
[Source]
Type=regular-file
Path=/
MatchPattern=invalid@v.raw

[Target]
Type=regular-file
Path=/
"""
SYSUPDATE_BINARY = "/usr/lib/systemd/systemd-sysupdate"


class UpdateAction(StrEnum):
    """What a node does once sysupdate has staged a new version of an extension."""

    REFRESH = "refresh"  # merge the new image right away
    REBOOT = "reboot"  # flag reboot-required for a reboot manager (kured, FLUO)

    @property
    def command(self) -> str:
        if self is UpdateAction.REFRESH:
            return "systemctl restart systemd-sysext"
        return "touch /run/reboot-required"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise PipelineError(
            "sysupdate.invalid-name",
            f"extension name {name!r} must be lowercase letters, digits, '-' or '_' (at most 63)",
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise PipelineError(
            "sysupdate.invalid-version",
            f"version {version!r} may only contain letters, digits and . , _ + - (sysupdate's @v)",
        )
    return version


def image_file_name(name: str, version: str, arch: str) -> str:
    """``<name>-<version>-<arch>.raw``, arch in systemd's names (``x86-64``, ``arm64``)."""
    return f"{check_name(name)}-{check_version(version)}-{arch}.raw"


def match_pattern(name: str, minor_pin: str | None = None) -> str:
    if minor_pin:
        return f"{check_name(name)}-{check_version(minor_pin)}.@v-%a.raw"
    return f"{check_name(name)}-@v-%a.raw"


def transfer_file_name(name: str, minor_pin: str | None = None) -> str:
    """``NAME.conf``, or ``NAME-vX.Y.conf`` for a transfer pinned to a minor line.

    The file name always carries the ``v`` (``1.32`` and ``v1.32`` both give ``NAME-v1.32.conf``),
    as sysupdate.md publishes it; the ``MatchPattern`` inside keeps the version's own spelling.
    """
    if minor_pin:
        line = minor_pin if minor_pin.startswith("v") else f"v{minor_pin}"
        return f"{check_name(name)}-{check_version(line)}.conf"
    return f"{check_name(name)}.conf"


def transfer_file_path(name: str, minor_pin: str | None = None) -> str:
    """Where the transfer file lives on a node."""
    return f"/etc/sysupdate.{check_name(name)}.d/{transfer_file_name(name, minor_pin)}"


def render_transfer(
    name: str,
    publish_url: str,
    *,
    verify: bool = True,
    minor_pin: str | None = None,
    instances_max: int = 3,
) -> str:
    """The transfer file that keeps extension ``name`` current from ``publish_url``.

    ``publish_url`` is the extension's flat served directory; sysupdate appends file names to it,
    so it must end in ``/`` and must never be a presigned (expiring) URL.
    """
    if not publish_url.startswith(("https://", "http://")):
        raise PipelineError("sysupdate.invalid-url", f"publication URL {publish_url!r} must be http(s)")
    if "?" in publish_url or "#" in publish_url:
        raise PipelineError(
            "sysupdate.invalid-url",
            f"publication URL {publish_url!r} carries a query or fragment; sysupdate appends file names",
        )
    if instances_max < 2:
        raise PipelineError("sysupdate.invalid-instances", "InstancesMax must be at least 2")
    if not publish_url.endswith("/"):
        publish_url += "/"
    return (
        "[Transfer]\n"
        f"Verify={'yes' if verify else 'no'}\n"
        "\n"
        "[Source]\n"
        "Type=url-file\n"
        f"Path={publish_url}\n"
        f"MatchPattern={match_pattern(name, minor_pin)}\n"
        "\n"
        "[Target]\n"
        "Type=regular-file\n"
        f"Path=/opt/extensions/{name}\n"
        f"CurrentSymlink=/etc/extensions/{name}.raw\n"
        f"InstancesMax={instances_max}\n"
    )


@dataclass(frozen=True)
class TransferFile:
    """One transfer file: its name when published, where it lives on a node, and its text."""

    file_name: str
    node_path: str
    text: str


def transfer_file(name: str, publish_url: str, *, verify: bool, minor_pin: str | None = None) -> TransferFile:
    """The transfer file of ``name`` following ``publish_url`` (pinned to ``minor_pin``'s line).

    The one place a transfer file is made: the CLI publishes it next to the images, the portal
    with a flavour's files, and the Butane config inlines it.
    """
    return TransferFile(
        file_name=transfer_file_name(name, minor_pin),
        node_path=transfer_file_path(name, minor_pin),
        text=render_transfer(name, publish_url, verify=verify, minor_pin=minor_pin),
    )


def service_dropin_name(name: str) -> str:
    return f"{check_name(name)}.conf"


def render_service_dropin(name: str, action: UpdateAction) -> str:
    """The ``systemd-sysupdate.service`` drop-in that updates ``name`` and then acts on a change."""
    check_name(name)
    # Paths on the node, as Flatcar's documented drop-in writes them; nothing here touches /tmp.
    before, after = f"/tmp/{name}", f"/tmp/{name}-new"  # noqa: S108
    return (
        "[Service]\n"
        f'ExecStartPre=/usr/bin/sh -c "readlink --canonicalize /etc/extensions/{name}.raw > {before}"\n'
        f"ExecStartPre={SYSUPDATE_BINARY} -C {name} update\n"
        f'ExecStartPost=/usr/bin/sh -c "readlink --canonicalize /etc/extensions/{name}.raw > {after}"\n'
        f'ExecStartPost=/usr/bin/sh -c "if ! cmp --silent {before} {after}; then {action.command}; fi"\n'
    )
