"""A flavour's Butane config (variant flatcar), deterministic byte for byte.

What a node needs to run a flavour, following Flatcar's documented sysext pattern:

- every image at ``/opt/extensions/NAME/NAME-VER-ARCH.raw`` (``contents.source`` +
  ``verification.hash``) and linked as ``/etc/extensions/NAME.raw``;
- with updates: a transfer file per extension, the no-op transfer, ``systemd-sysupdate.timer``
  enabled and a ``systemd-sysupdate.service`` drop-in per extension (refresh or flag reboot);
- when signed: the binary keyring under both ``/etc/systemd/import-pubring.{gpg,pgp}`` and
  ``Verify=yes`` transfers;
- masks for Flatcar's bundled docker/containerd, official extensions in
  ``/etc/flatcar/enabled-sysext.conf``, SSH keys for ``core``, the hostname, and the user's own
  Butane fragment merged in. A fragment that touches a generated path or unit is an error.

The result is transpiled before it is returned: a config we hand out never fails in ``butane``.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import yaml

from builds.pipeline import sysupdate
from builds.pipeline.butane.ignition_schema import schema_problems
from builds.pipeline.butane.transpile import Message, Result, parse_fragment, transpile
from builds.pipeline.errors import PipelineError
from builds.pipeline.sysupdate import NOOP_TRANSFER, NOOP_TRANSFER_PATH, UpdateAction
from builds.pipeline.vocabulary import (
    ARCHES,
    BUNDLED_SYSEXTS,
    BUTANE_VERSIONS,
    DEFAULT_BUTANE_VERSION,
    bundled_mask_path,
    hostname_problem,
)

KEYRING_PATHS = ("/etc/systemd/import-pubring.gpg", "/etc/systemd/import-pubring.pgp")
ENABLED_SYSEXT_PATH = "/etc/flatcar/enabled-sysext.conf"
HOSTNAME_PATH = "/etc/hostname"
SYSUPDATE_TIMER = "systemd-sysupdate.timer"
SYSUPDATE_SERVICE = "systemd-sysupdate.service"

_HASH = re.compile(r"^(sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128})$")
_OFFICIAL_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
# Query parameters of presigned or otherwise expiring URLs (S3 v2/v4, GCS, Azure SAS, CloudFront).
_EXPIRING_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-expires",
        "x-amz-security-token",
        "x-amz-date",
        "awsaccesskeyid",
        "signature",
        "expires",
        "x-goog-signature",
        "x-goog-credential",
        "x-goog-expires",
        "sig",
        "se",
        "sv",
        "policy",
        "key-pair-id",
        "token",
    }
)


@dataclass(frozen=True)
class ExtensionImage:
    """One baked sysext image as a node fetches it.

    ``url`` is where the image is downloaded from (stable, never presigned); ``hash`` is
    ``sha512-<hex>`` or ``sha256-<hex>`` of the image; ``publish_url`` is the extension's flat
    sysupdate directory (``.../extensions/NAME/``); ``minor_pin`` (e.g. ``v1.32``) keeps updates on
    one minor line, as Kubernetes needs.
    """

    name: str
    version: str
    arch: str
    url: str
    hash: str
    publish_url: str
    minor_pin: str | None = None

    @property
    def file_name(self) -> str:
        return sysupdate.image_file_name(self.name, self.version, self.arch)

    @property
    def image_path(self) -> str:
        return f"/opt/extensions/{self.name}/{self.file_name}"

    @property
    def link_path(self) -> str:
        return f"/etc/extensions/{self.name}.raw"


@dataclass(frozen=True)
class FlavourConfig:
    """Everything ``render_butane`` needs about a flavour, already resolved.

    - ``arch``: systemd architecture name (``x86-64`` or ``arm64``), shared by all images;
    - ``spec_version``: Butane flatcar spec, ``1.0.0`` (Ignition 3.3.0, every Flatcar) or ``1.1.0``;
    - ``updates`` / ``update_action``: keep extensions current with systemd-sysupdate, and what to
      do once a new version is staged (refresh in place, or flag reboot-required);
    - ``signed`` / ``public_keyring``: verify SHA256SUMS.gpg with this binary OpenPGP keyring;
    - ``mask_bundled``: Flatcar's own sysexts to mask (``docker``, ``containerd``);
    - ``official_extensions``: Flatcar's OS-bound extensions to enable (``podman``, ``zfs`` ...);
    - ``ssh_authorized_keys`` (for ``core``), ``hostname``, and ``fragment``: the user's own Butane,
      merged in after validation.
    """

    arch: str
    extensions: tuple[ExtensionImage, ...] = ()
    spec_version: str = DEFAULT_BUTANE_VERSION
    updates: bool = True
    update_action: UpdateAction = UpdateAction.REFRESH
    signed: bool = False
    public_keyring: bytes = b""
    mask_bundled: tuple[str, ...] = ()
    official_extensions: tuple[str, ...] = ()
    ssh_authorized_keys: tuple[str, ...] = ()
    hostname: str | None = None
    fragment: str = ""


class OctalMode(int):
    """A file mode, written the way people read modes (``0644``)."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if any(ch in value for ch in "\x85\u2028\u2029\ufeff"):
        # PyYAML writes these raw in single-quoted or block scalars, where a reader takes them for
        # line breaks; only the double-quoted style escapes them.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_str(value)


def _represent_mode(dumper: yaml.SafeDumper, value: OctalMode) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:int", f"0{int(value):o}" if value else "0")


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(OctalMode, _represent_mode)


def dump_butane(document: dict[str, Any]) -> str:
    return yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1 << 16,
        indent=2,
    )


def refuse_expiring_url(url: str, what: str) -> str:
    """Reject URLs a node cannot fetch forever: non-HTTP(S), presigned or expiring ones."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise PipelineError("butane.invalid-url", f"{what} {url!r} must be an http(s) URL")
    params = {key.lower() for key, _ in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)}
    expiring = sorted(params & _EXPIRING_PARAMS)
    if expiring:
        raise PipelineError(
            "butane.expiring-url",
            f"{what} {url!r} is presigned or expiring ({', '.join(expiring)}); a config replayed later "
            "must still boot, so publish the file at a stable URL (the hash keeps it safe)",
        )
    if parsed.fragment:
        raise PipelineError("butane.invalid-url", f"{what} {url!r} must not carry a #fragment")
    return url


def _check(flavour: FlavourConfig) -> None:
    if flavour.spec_version not in BUTANE_VERSIONS:
        raise PipelineError(
            "butane.invalid-spec-version",
            f"Butane spec version {flavour.spec_version!r} is not supported; "
            f"use {' or '.join(BUTANE_VERSIONS)}",
        )
    if flavour.arch not in ARCHES:
        raise PipelineError(
            "butane.invalid-arch", f"architecture {flavour.arch!r} must be {' or '.join(ARCHES)}"
        )
    names = [ext.name for ext in flavour.extensions]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PipelineError("butane.duplicate-extension", f"extension {duplicates[0]!r} is listed twice")
    for ext in flavour.extensions:
        sysupdate.check_name(ext.name)
        sysupdate.check_version(ext.version)
        if ext.minor_pin is not None:
            sysupdate.check_version(ext.minor_pin)
        if ext.arch != flavour.arch:
            raise PipelineError(
                "butane.arch-mismatch",
                f"image {ext.name} {ext.version} is built for {ext.arch}, the flavour for {flavour.arch}",
            )
        if not _HASH.match(ext.hash):
            raise PipelineError(
                "butane.invalid-hash",
                f"hash of {ext.name} must be sha256-<64 hex> or sha512-<128 hex>, got {ext.hash!r}",
            )
        refuse_expiring_url(ext.url, f"download URL of {ext.name}")
        refuse_expiring_url(ext.publish_url, f"publication URL of {ext.name}")
    if flavour.signed and not flavour.public_keyring:
        raise PipelineError("butane.missing-keyring", "a signed flavour needs the public keyring")
    if flavour.public_keyring.lstrip().startswith(b"-----BEGIN PGP"):
        raise PipelineError(
            "butane.armored-keyring",
            "the public keyring must be binary (gpg --export), not ASCII-armored: systemd cannot read armor",
        )
    for name in flavour.mask_bundled:
        if name not in BUNDLED_SYSEXTS:
            raise PipelineError(
                "butane.invalid-mask",
                f"only Flatcar's bundled {' and '.join(BUNDLED_SYSEXTS)} can be masked, not {name!r}",
            )
    for name in flavour.official_extensions:
        if not _OFFICIAL_NAME.match(name):
            raise PipelineError("butane.invalid-official-extension", f"{name!r} is not an extension name")
    for key in flavour.ssh_authorized_keys:
        if not key.strip() or "\n" in key or "\r" in key:
            raise PipelineError(
                "butane.invalid-ssh-key", "each SSH authorized key must be one non-empty line"
            )
    if flavour.hostname is not None and hostname_problem(flavour.hostname):
        raise PipelineError(
            "butane.invalid-hostname", f"hostname {flavour.hostname!r}: {hostname_problem(flavour.hostname)}"
        )


def _file(path: str, mode: int, contents: dict[str, Any], *, overwrite: bool | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "mode": OctalMode(mode)}
    if overwrite is not None:
        entry["overwrite"] = overwrite
    entry["contents"] = contents
    return entry


def transfer_files(flavour: FlavourConfig) -> list[sysupdate.TransferFile]:
    """The flavour's transfer files (none without updates): inlined in its Butane, and published
    with its files for nodes provisioned otherwise."""
    if not flavour.updates:
        return []
    return [
        sysupdate.transfer_file(ext.name, ext.publish_url, verify=flavour.signed, minor_pin=ext.minor_pin)
        for ext in flavour.extensions
    ]


def _generated(flavour: FlavourConfig) -> dict[str, Any]:
    files: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    units: list[dict[str, Any]] = []
    users: list[dict[str, Any]] = []
    for ext in flavour.extensions:
        files.append(_file(ext.image_path, 0o644, {"source": ext.url, "verification": {"hash": ext.hash}}))
        links.append({"path": ext.link_path, "target": ext.image_path, "hard": False})
    for name in sorted(set(flavour.mask_bundled)):
        links.append({"path": bundled_mask_path(name), "target": "/dev/null", "overwrite": True})
    if flavour.updates and flavour.extensions:
        for transfer in transfer_files(flavour):
            files.append(_file(transfer.node_path, 0o644, {"inline": transfer.text}))
        files.append(_file(NOOP_TRANSFER_PATH, 0o644, {"inline": NOOP_TRANSFER}))
        units.append({"name": SYSUPDATE_TIMER, "enabled": True})
        units.append(
            {
                "name": SYSUPDATE_SERVICE,
                "dropins": [
                    {
                        "name": sysupdate.service_dropin_name(ext.name),
                        "contents": sysupdate.render_service_dropin(ext.name, flavour.update_action),
                    }
                    for ext in flavour.extensions
                ],
            }
        )
    if flavour.signed:
        keyring = "data:;base64," + base64.b64encode(flavour.public_keyring).decode("ascii")
        for path in KEYRING_PATHS:
            files.append(_file(path, 0o644, {"source": keyring}))
    if flavour.official_extensions:
        listing = "".join(f"{name}\n" for name in dict.fromkeys(flavour.official_extensions))
        files.append(_file(ENABLED_SYSEXT_PATH, 0o644, {"inline": listing}, overwrite=True))
    if flavour.hostname is not None:
        files.append(_file(HOSTNAME_PATH, 0o644, {"inline": flavour.hostname + "\n"}, overwrite=True))
    if flavour.ssh_authorized_keys:
        users.append(
            {"name": "core", "ssh_authorized_keys": [key.strip() for key in flavour.ssh_authorized_keys]}
        )
    document: dict[str, Any] = {}
    if users:
        document["passwd"] = {"users": users}
    storage: dict[str, Any] = {}
    if files:
        storage["files"] = files
    if links:
        storage["links"] = links
    if storage:
        document["storage"] = storage
    if units:
        document["systemd"] = {"units": units}
    return document


def _conflict(message: str) -> PipelineError:
    return PipelineError("butane.fragment-conflict", message)


def _with_modes(value: Any, key: str = "") -> Any:
    """The fragment's typed value, modes marked so they are written in octal again."""
    if isinstance(value, dict):
        return {k: _with_modes(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_modes(v) for v in value]
    if key == "mode" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return OctalMode(value)
    return value


def _merge_fragment(document: dict[str, Any], fragment: dict[str, Any]) -> None:
    """Add the fragment's entries after the generated ones; refuse to change a generated one."""
    fragment = _with_modes(fragment)
    generated_paths = {
        item["path"]
        for section in ("files", "directories", "links")
        for item in document.get("storage", {}).get(section, [])
    }
    storage = fragment.get("storage", {})
    for section in ("files", "directories", "links"):
        for item in storage.get(section, []):
            if item.get("path") in generated_paths:
                raise _conflict(
                    f"the Butane fragment sets {item['path']}, which the flavour already generates "
                    f"(storage.{section}); remove it from the fragment or change the flavour's options"
                )
    if "replace" in fragment.get("ignition", {}).get("config", {}):
        raise _conflict(
            "the Butane fragment sets ignition.config.replace, which would discard everything the flavour "
            "generates; use ignition.config.merge instead"
        )
    if storage.get("trees"):
        raise _conflict("storage.trees needs local files, which a fragment cannot bring")
    generated_units = {unit["name"]: unit for unit in document.get("systemd", {}).get("units", [])}
    merged_units: list[dict[str, Any]] = []
    for unit in fragment.get("systemd", {}).get("units", []):
        existing = generated_units.get(unit.get("name", ""))
        if existing is None:
            merged_units.append(unit)
            continue
        if set(unit) - {"name", "dropins"}:
            raise _conflict(
                f"the Butane fragment redefines unit {unit['name']}, which the flavour generates; "
                "only new drop-ins may be added to it"
            )
        taken = {dropin["name"] for dropin in existing.get("dropins", [])}
        for dropin in unit.get("dropins", []):
            if dropin.get("name") in taken:
                raise _conflict(
                    f"the Butane fragment sets drop-in {dropin['name']} of {unit['name']}, "
                    "which the flavour generates"
                )
        existing.setdefault("dropins", []).extend(unit.get("dropins", []))
    generated_users = {user["name"] for user in document.get("passwd", {}).get("users", [])}
    for user in fragment.get("passwd", {}).get("users", []):
        if user.get("name") in generated_users:
            raise _conflict(
                f"the Butane fragment sets user {user['name']}, whose SSH keys the flavour already sets; "
                "put the keys in the flavour's SSH key list instead"
            )

    def extend(container: dict[str, Any], key: str, items: list[Any]) -> None:
        if items:
            container.setdefault(key, []).extend(items)

    # The flavour generates no disks, filesystems, LUKS or RAID: the fragment's are taken whole.
    for section in ("directories", "disks", "files", "filesystems", "links", "luks", "raid"):
        extend(document.setdefault("storage", {}), section, storage.get(section, []))
    if merged_units:
        extend(document.setdefault("systemd", {}), "units", merged_units)
    passwd = fragment.get("passwd", {})
    for section in ("users", "groups"):
        extend(document.setdefault("passwd", {}), section, passwd.get(section, []))
    for section in ("ignition", "kernel_arguments"):
        if fragment.get(section):
            document[section] = fragment[section]
    for key in ("passwd", "storage", "systemd"):
        if key in document and not document[key]:
            del document[key]


def _fragment_error(messages: list[Message]) -> PipelineError:
    lines = "; ".join(str(message) for message in messages[:5])
    more = f" (and {len(messages) - 5} more)" if len(messages) > 5 else ""
    return PipelineError("butane.invalid-fragment", f"the Butane fragment is not valid: {lines}{more}")


def render_butane(flavour: FlavourConfig) -> str:
    """The flavour's Butane config text. Raises PipelineError on any invalid input or conflict."""
    _check(flavour)
    document = _generated(flavour)
    if flavour.fragment.strip():
        messages, fragment = parse_fragment(flavour.fragment, flavour.spec_version)
        if messages:
            raise _fragment_error(messages)
        _merge_fragment(document, fragment)
    order = ("ignition", "kernel_arguments", "passwd", "storage", "systemd")
    full = {"variant": "flatcar", "version": flavour.spec_version}
    full.update({key: document[key] for key in order if key in document})
    text = dump_butane(full)
    result = transpile(text)
    if not result.ok or result.messages:
        # Conflicts the merge rules above cannot see (a file where a unit lives, ...).
        problems = "; ".join(str(message) for message in result.messages) or str(result.error)
        raise _conflict(f"the merged Butane config does not transpile cleanly: {problems}")
    return text


def render_ignition(flavour: FlavourConfig, *, pretty: bool = False) -> str:
    """The flavour's Ignition JSON, as ``butane`` prints it for ``render_butane``, with a newline.

    The config must also validate against the JSON schema of its Ignition version: one that does
    not is a bug of ours and is never handed out (``butane.schema-invalid``).
    """
    result: Result = transpile(render_butane(flavour))
    assert result.config is not None and result.ignition_version is not None  # render_butane checked
    problems = schema_problems(result.config, result.ignition_version)
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise PipelineError(
            "butane.schema-invalid",
            f"the generated Ignition {result.ignition_version} config fails its JSON schema: {shown}",
        )
    return result.json(pretty=pretty) + "\n"
