"""The Butane ``variant: flatcar`` schema (1.0.0 and 1.1.0) and the typed decode of a YAML tree.

Decoding follows go-yaml v3 into Butane's Go structs: unknown keys are skipped (and reported
later as "Unused key" warnings), type mismatches and repeated fields are collected as go-yaml's
``unmarshal errors``. Every decoded value remembers where it came from (``marks``), so messages
carry the YAML path, line and column the way Butane prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from builds.pipeline.butane import yamlscalars as ys
from builds.pipeline.butane.yamlscalars import Mark
from builds.pipeline.vocabulary import BUTANE_IGNITION

Path = tuple[str | int, ...]
ScalarKind = Literal["str", "string", "int", "bool"]  # "string": Go non-pointer string (null -> "")


@dataclass(frozen=True)
class Scalar:
    kind: ScalarKind
    go: str = ""  # the Go type go-yaml names in a type error, when not the kind's own (v0_4.Device)


@dataclass(frozen=True)
class ListOf:
    item: Spec
    go_item: str
    go_type: str = ""  # a named slice type (v0_4.HTTPHeaders) instead of []go_item


@dataclass(frozen=True)
class Struct:
    go_name: str
    fields: dict[str, Spec]


@dataclass(frozen=True)
class Opaque:
    """A section we do not translate (disks, raid, ...): kept as raw nodes, rejected later."""

    go_name: str


Spec = Scalar | ListOf | Struct | Opaque

STR, STRING, INT, BOOL = Scalar("str"), Scalar("string"), Scalar("int"), Scalar("bool")


def _base(pkg: str, v11: bool) -> Struct:
    """Butane's base config struct (``base/v0_4`` for flatcar 1.0.0, ``base/v0_5`` for 1.1.0)."""

    def s(name: str, fields: dict[str, Spec]) -> Struct:
        return Struct(f"{pkg}.{name}", fields)

    def lst(item: Spec, go_type: str = "") -> ListOf:
        if isinstance(item, (Struct, Opaque)):
            go = item.go_name
        elif isinstance(item, Scalar):
            go = item.go or "string"
        else:
            go = item.go_type or f"[]{item.go_item}"
        return ListOf(item, go, go_type)

    def named(go: str) -> Scalar:
        """A Go string type of butane's schema (``type Device string``)."""
        return Scalar("string", f"{pkg}.{go}")

    verification = s("Verification", {"hash": STR})
    header = s("HTTPHeader", {"name": STRING, "value": STR})
    resource = s(
        "Resource",
        {
            "compression": STR,
            "http_headers": lst(header, f"{pkg}.HTTPHeaders"),
            "source": STR,
            "inline": STR,
            "local": STR,
            "verification": verification,
        },
    )
    node_user = s("NodeUser", {"id": INT, "name": STR})
    node_group = s("NodeGroup", {"id": INT, "name": STR})
    node: dict[str, Spec] = {"group": node_group, "user": node_user, "path": STRING, "overwrite": BOOL}
    file = s("File", {**node, "contents": resource, "append": lst(resource), "mode": INT})
    directory = s("Directory", {**node, "mode": INT})
    link = s("Link", {**node, "target": STR, "hard": BOOL})
    tree = s("Tree", {"local": STRING, "path": STR})
    # Disks, RAID, LUKS and filesystems: butane base/v0_4 and v0_5 schema.go.
    partition = s(
        "Partition",
        {
            "guid": STR,
            "label": STR,
            "number": INT,
            "resize": BOOL,
            "should_exist": BOOL,
            "size_mib": INT,
            "start_mib": INT,
            "type_guid": STR,
            "wipe_partition_entry": BOOL,
        },
    )
    disk = s("Disk", {"device": STRING, "partitions": lst(partition), "wipe_table": BOOL})
    filesystem = s(
        "Filesystem",
        {
            "device": STRING,
            "format": STR,
            "label": STR,
            "mount_options": lst(STR),
            "options": lst(STR),
            "path": STR,
            "uuid": STR,
            "wipe_filesystem": BOOL,
            "with_mount_unit": BOOL,
        },
    )
    raid = s(
        "Raid",
        {
            "devices": lst(named("Device")),
            "level": STR,
            "name": STRING,
            "options": lst(named("RaidOption")),
            "spares": INT,
        },
    )
    tang_fields: dict[str, Spec] = {"thumbprint": STR, "url": STRING}
    if v11:
        tang_fields["advertisement"] = STR
    clevis = s(
        "Clevis",
        {
            "custom": s("ClevisCustom", {"config": STR, "needs_network": BOOL, "pin": STR}),
            "tang": lst(s("Tang", tang_fields)),
            "threshold": INT,
            "tpm2": BOOL,
        },
    )
    luks_fields: dict[str, Spec] = {
        "clevis": clevis,
        "device": STR,
        "key_file": resource,
        "label": STR,
        "name": STRING,
        "options": lst(named("LuksOption")),
        "uuid": STR,
        "wipe_volume": BOOL,
    }
    if v11:
        luks_fields["discard"] = BOOL
        luks_fields["open_options"] = lst(named("OpenOption"))
    luks = s("Luks", luks_fields)
    storage = s(
        "Storage",
        {
            "directories": lst(directory),
            "disks": lst(disk),
            "files": lst(file),
            "filesystems": lst(filesystem),
            "links": lst(link),
            "luks": lst(luks),
            "raid": lst(raid),
            "trees": lst(tree),
        },
    )
    dropin_fields: dict[str, Spec] = {"contents": STR, "name": STRING}
    unit_fields: dict[str, Spec] = {"contents": STR, "enabled": BOOL, "mask": BOOL, "name": STRING}
    if v11:
        dropin_fields["contents_local"] = STR
        unit_fields["contents_local"] = STR
    dropin = s("Dropin", dropin_fields)
    unit = s("Unit", {**unit_fields, "dropins": lst(dropin)})
    systemd = s("Systemd", {"units": lst(unit)})
    user_fields: dict[str, Spec] = {
        "gecos": STR,
        "groups": lst(named("Group")),
        "home_dir": STR,
        "name": STRING,
        "no_create_home": BOOL,
        "no_log_init": BOOL,
        "no_user_group": BOOL,
        "password_hash": STR,
        "primary_group": STR,
        "should_exist": BOOL,
        "ssh_authorized_keys": lst(named("SSHAuthorizedKey")),
        "shell": STR,
        "system": BOOL,
        "uid": INT,
    }
    if v11:
        user_fields["ssh_authorized_keys_local"] = lst(STR)
    user = s("PasswdUser", user_fields)
    group = s(
        "PasswdGroup",
        {"gid": INT, "name": STRING, "password_hash": STR, "should_exist": BOOL, "system": BOOL},
    )
    passwd = s("Passwd", {"users": lst(user), "groups": lst(group)})
    kargs = s(
        "KernelArguments",
        {"should_exist": lst(named("KernelArgument")), "should_not_exist": lst(named("KernelArgument"))},
    )
    ignition = s(
        "Ignition",
        {
            "config": s("IgnitionConfig", {"merge": lst(resource), "replace": resource}),
            "proxy": s("Proxy", {"http_proxy": STR, "https_proxy": STR, "no_proxy": lst(STR)}),
            "security": s("Security", {"tls": s("TLS", {"certificate_authorities": lst(resource)})}),
            "timeouts": s("Timeouts", {"http_response_headers": INT, "http_total": INT}),
        },
    )
    return Struct(
        "Config",
        {
            "variant": STRING,
            "version": STRING,
            "ignition": ignition,
            "kernel_arguments": kargs,
            "passwd": passwd,
            "storage": storage,
            "systemd": systemd,
        },
    )


@dataclass(frozen=True)
class SpecVersion:
    """One supported Butane flatcar spec version and what it targets."""

    butane: str
    ignition: str
    schema: Struct


def _config(pkg: str, flatcar_pkg: str, v11: bool) -> Struct:
    base = _base(pkg, v11)
    return Struct(f"{flatcar_pkg}.Config", base.fields)


# The Ignition version each spec emits is the vocabulary's; the Go packages are the schema's own.
SPEC_VERSIONS: dict[str, SpecVersion] = {
    "1.0.0": SpecVersion("1.0.0", BUTANE_IGNITION["1.0.0"], _config("v0_4", "v1_0", v11=False)),
    "1.1.0": SpecVersion("1.1.0", BUTANE_IGNITION["1.1.0"], _config("v0_5", "v1_1", v11=True)),
}


@dataclass
class Decoded:
    """The typed value of a document plus where every part of it came from."""

    value: dict[str, Any]
    marks: dict[Path, Mark] = field(default_factory=dict)  # value nodes by YAML path
    key_marks: dict[Path, Mark] = field(default_factory=dict)  # key nodes by YAML path
    nodes: dict[Path, yaml.Node] = field(default_factory=dict)  # raw nodes of opaque sections
    unused: list[tuple[Path, Mark]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # go-yaml "line N: ..." type errors


def decode(root: yaml.Node | None, schema: Struct) -> Decoded:
    out = Decoded({})
    if root is None or ys.is_null(root):
        return out
    value = _decode(root, schema, (), out)
    out.value = value if isinstance(value, dict) else {}
    return out


def _decode(node: yaml.Node, spec: Spec, path: Path, out: Decoded) -> Any:
    out.marks[path] = ys.mark_of(node)
    if isinstance(spec, Opaque):
        out.nodes[path] = node
        _record_marks(node, path, out)
        return node
    if isinstance(spec, Scalar):
        try:
            if spec.kind == "int":
                return ys.to_int(node)
            if spec.kind == "bool":
                return ys.to_bool(node)
            if spec.go and not isinstance(node, yaml.ScalarNode):
                raise ys.ScalarError(ys.cannot_unmarshal(node, spec.go))
            text = ys.to_str(node)
            return "" if text is None and spec.kind == "string" else text
        except ys.ScalarError as exc:
            out.errors.append(str(exc))
            return None
    if ys.is_null(node):
        return None
    if isinstance(spec, ListOf):
        if not isinstance(node, yaml.SequenceNode):
            out.errors.append(ys.cannot_unmarshal(node, spec.go_type or f"[]{spec.go_item}"))
            return None
        items: list[Any] = []
        for child in node.value:
            if isinstance(child, yaml.ScalarNode) and ys.is_null(child):
                # go-yaml v3 drops a null element of a slice of non-pointers (strings, structs):
                # decode.go ``sequence`` keeps an element only when ``unmarshal`` says ok, and
                # ``null`` is not ok for a string or struct.
                continue
            item = _decode(child, spec.item, (*path, len(items)), out)
            if item is None and isinstance(spec.item, Struct):
                item = {}
            elif item is None and isinstance(spec.item, Scalar) and spec.item.kind in ("str", "string"):
                item = ""
            items.append(item)
        return items
    if not isinstance(node, yaml.MappingNode):
        out.errors.append(ys.cannot_unmarshal(node, spec.go_name))
        return None
    result: dict[str, Any] = {}
    seen: dict[str, int] = {}
    merge_node: yaml.Node | None = None
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue  # a complex key can never name a field
        key = key_node.value
        key_mark = ys.mark_of(key_node)
        if _is_merge_key(key_node) and key not in seen:
            # go-yaml applies it (below); butane's unused-key check, which walks the YAML tree,
            # still sees a "<<" key that names no field.
            merge_node = value_node
            seen[key] = key_mark.line
            out.key_marks[(*path, key)] = key_mark
            out.unused.append(((*path, key), key_mark))
            continue
        if key in seen:
            if key in spec.fields:
                out.errors.append(f"line {key_mark.line}: field {key} already set in type {spec.go_name}")
            else:
                out.errors.append(
                    f'line {key_mark.line}: mapping key "{key}" already defined at line {seen[key]}'
                )
            continue
        seen[key] = key_mark.line
        child_path = (*path, key)
        out.key_marks[child_path] = key_mark
        child_spec = spec.fields.get(key)
        if child_spec is None:
            out.unused.append((child_path, key_mark))
            out.marks[child_path] = ys.mark_of(value_node)
            continue
        value = _decode(value_node, child_spec, child_path, out)
        if value is not None:
            result[key] = value
    if merge_node is not None:
        _merge(merge_node, spec, path, out, result, set(seen))
    return result


def _is_merge_key(node: yaml.ScalarNode) -> bool:
    return node.value == "<<" and ys.is_plain(node) and ys.explicit_tag(node) in (None, "!!merge")


def _merge(
    node: yaml.Node, spec: Struct, path: Path, out: Decoded, result: dict[str, Any], taken: set[str]
) -> None:
    """go-yaml v3 ``decoder.merge``: the keys of a merged mapping (or of each mapping of a merged
    sequence, the first one winning) fill the fields the mapping itself did not set."""
    if isinstance(node, yaml.MappingNode):
        sources = [node]
    elif isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.MappingNode) for n in node.value):
        sources = list(node.value)
    else:
        raise ys.YAMLSyntaxError("yaml: map merge requires map or sequence of maps as the value")
    for source in sources:
        assert isinstance(source, yaml.MappingNode)
        nested: yaml.Node | None = None
        for key_node, value_node in source.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            if _is_merge_key(key_node):
                nested = value_node
                continue
            if key in taken:
                continue
            taken.add(key)
            child_spec = spec.fields.get(key)
            if child_spec is None:
                continue  # reported where the merged mapping is written, if anywhere
            value = _decode(value_node, child_spec, (*path, key), out)
            if value is not None:
                result[key] = value
        if nested is not None:
            _merge(nested, spec, path, out, result, taken)


def _record_marks(node: yaml.Node, path: Path, out: Decoded) -> None:
    """Marks of an untyped subtree, so errors inside it still carry a line and column."""
    out.marks[path] = ys.mark_of(node)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                out.key_marks[(*path, key_node.value)] = ys.mark_of(key_node)
                _record_marks(value_node, (*path, key_node.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _record_marks(child, (*path, index), out)
