"""Butane ``variant: flatcar`` 1.0.0/1.1.0 -> Ignition 3.3.0/3.4.0, as the butane tool does it.

The stages and their failure texts are the tool's: parse, read variant/version, decode with
go-yaml rules, validate the source (unused keys, one source per resource, decimal-looking modes),
translate (data URLs, files dir, trees), validate the generated Ignition and map its findings back
to the YAML path, line and column the user wrote. Disks, partitions, filesystems (with the mount
and swap units ``with_mount_unit`` asks for), RAID and LUKS are translated too; clevis, which
Flatcar does not ship, is refused. What may still differ from butane: docs/butane-differences.md.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path as FSPath
from typing import Any, Literal

import yaml

from builds.pipeline.butane import schema
from builds.pipeline.butane import yamlscalars as ys
from builds.pipeline.butane.dataurl import make_data_url
from builds.pipeline.butane.ignition import JSONPath, to_json, validate_ignition
from builds.pipeline.butane.schema import Path, SpecVersion

ERR_SOURCE_INVALID = "source config is invalid"
ERR_GENERATED_INVALID = "config generated was invalid"
ERR_NO_FILES_DIR = (
    "local file paths are relative to a files directory that must be specified with -d/--files-dir"
)
ERR_FILES_DIR_ESCAPE = "local file path traverses outside the files directory"
ERR_TOO_MANY_SOURCES = "only one of the following can be set: inline, local, source"
ERR_TOO_MANY_SYSTEMD_SOURCES = "only one of the following can be set: contents, contents_local"
ERR_DECIMAL_MODE = (
    "unreasonable mode would be reasonable if specified in octal; remember to add a leading zero"
)
ERR_NODE_EXISTS = "matching filesystem node has existing contents or different type"
ERR_TREE_NOT_DIRECTORY = "root of tree must be a directory"
ERR_TREE_FILE_TYPE = "trees may only contain files, directories, and symlinks"
ERR_TREE_NO_LOCAL = "local is required"
ERR_CLEVIS = "clevis is not supported in this spec version"
ERR_MOUNT_UNIT_NO_PATH = "path is required if with_mount_unit is true and format is not swap"
ERR_MOUNT_UNIT_NO_FORMAT = "format is required if with_mount_unit is true"

# (JSON key, Butane key, nested fields) in Ignition's struct order: ignition config/v3_x/types/schema.go.
_Fields = tuple[tuple[str, str, "Any"], ...]
_PARTITION_FIELDS: _Fields = (
    ("guid", "guid", None),
    ("label", "label", None),
    ("number", "number", None),
    ("resize", "resize", None),
    ("shouldExist", "should_exist", None),
    ("sizeMiB", "size_mib", None),
    ("startMiB", "start_mib", None),
    ("typeGuid", "type_guid", None),
    ("wipePartitionEntry", "wipe_partition_entry", None),
)
# ALWAYS: a Go string field without omitempty (Disk.Device, Filesystem.Device, Luks.Name, Raid.Name).
ALWAYS = "always"
_DISK_FIELDS: _Fields = (
    ("device", "device", ALWAYS),
    ("partitions", "partitions", _PARTITION_FIELDS),
    ("wipeTable", "wipe_table", None),
)
_FILESYSTEM_FIELDS: _Fields = (
    ("device", "device", ALWAYS),
    ("format", "format", None),
    ("label", "label", None),
    ("mountOptions", "mount_options", None),
    ("options", "options", None),
    ("path", "path", None),
    ("uuid", "uuid", None),
    ("wipeFilesystem", "wipe_filesystem", None),
)
_RAID_FIELDS: _Fields = (
    ("devices", "devices", None),
    ("level", "level", None),
    ("name", "name", ALWAYS),
    ("options", "options", None),
    ("spares", "spares", None),
)
_LUKS_FIELDS: _Fields = (
    ("device", "device", None),
    ("keyFile", "key_file", None),
    ("label", "label", None),
    ("name", "name", ALWAYS),
    ("options", "options", None),
    ("uuid", "uuid", None),
    ("wipeVolume", "wipe_volume", None),
)
_LUKS_FIELDS_V11: _Fields = (
    ("device", "device", None),
    ("discard", "discard", None),
    ("keyFile", "key_file", None),
    ("label", "label", None),
    ("name", "name", ALWAYS),
    ("openOptions", "open_options", None),
    ("options", "options", None),
    ("uuid", "uuid", None),
    ("wipeVolume", "wipe_volume", None),
)

_SEMVER = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
)


@dataclass(frozen=True)
class Message:
    """One error or warning, printed like butane: ``error at $.a.0.b, line L col C: text``."""

    kind: Literal["error", "warning"]
    path: Path
    text: str
    line: int | None = None
    column: int | None = None

    @property
    def json_path(self) -> str:
        return "$" + "".join(f".{part}" for part in self.path)

    def __str__(self) -> str:
        where = f", line {self.line} col {self.column}" if self.line is not None else ""
        return f"{self.kind} at {self.json_path}{where}: {self.text}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.json_path,
            "line": self.line,
            "column": self.column,
            "message": self.text,
        }


@dataclass
class Result:
    """What a transpile run produced: the config (None on failure), messages, fatal error text."""

    config: dict[str, Any] | None
    messages: list[Message] = field(default_factory=list)
    error: str | None = None
    ignition_version: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def has_warnings(self) -> bool:
        return any(m.kind == "warning" for m in self.messages)

    def json(self, *, pretty: bool = False) -> str:
        if self.config is None:
            raise ValueError("no config was produced")
        return to_json(self.config, pretty=pretty)


class _Report:
    def __init__(self, decoded: schema.Decoded | None = None) -> None:
        self.decoded = decoded
        self.messages: list[Message] = []

    def add(
        self,
        kind: Literal["error", "warning"],
        path: Path,
        text: str,
        *,
        key: bool = False,
    ) -> None:
        """Add a message, positioned like vcontext's ``Report.Correlate``: at the deepest YAML node
        that exists on the path (a missing key points at its parent mapping)."""
        mark = None
        if self.decoded is not None:
            marks = self.decoded.key_marks if key else self.decoded.marks
            mark = marks.get(path)
            if mark is None and not key:
                mark = next(
                    (marks[path[:end]] for end in range(len(path), -1, -1) if path[:end] in marks), None
                )
        self.messages.append(
            Message(kind, path, text, mark.line if mark else None, mark.column if mark else None)
        )

    def error(self, path: Path, text: str) -> None:
        self.add("error", path, text)

    def warn(self, path: Path, text: str) -> None:
        self.add("warning", path, text)

    @property
    def fatal(self) -> bool:
        return any(m.kind == "error" for m in self.messages)


def _is_typical_mode(mode: int, directory: bool) -> bool:
    if mode == 0:
        return True
    had_r = had_w = had_x = False
    for perm in (mode & 0o7, (mode & 0o70) >> 3, (mode & 0o700) >> 6):
        r, w, x = bool(perm & 4), bool(perm & 2), bool(perm & 1)
        if (not r and had_r) or (not w and had_w) or (not x and had_x):
            return False
        if x and had_r and not had_x:
            return False
        if (w or x) and not r:
            return False
        had_r, had_w, had_x = had_r or r, had_w or w, had_x or x
    if not had_r:
        return False
    if directory:
        if not had_x or mode & 0o4000:
            return False
        if mode & 0o3000 and not had_w:
            return False
    else:
        if mode & 0o6000 and (not had_x or mode & 2):
            return False
        if mode & 0o1000:
            return False
    return True


def decimal_mode_warning(mode: int, directory: bool) -> bool:
    """True when ``mode`` looks like an octal mode typed in decimal (``644``)."""
    if mode < 0 or mode > 7777:
        return False
    corrected = 0
    for divisor in (1000, 100, 10, 1):
        digit = (mode // divisor) % 10
        if digit > 7:
            return False
        corrected = (corrected << 3) | digit
    return not _is_typical_mode(mode, directory) and _is_typical_mode(corrected, directory)


class _Translator:
    def __init__(self, spec: SpecVersion, decoded: schema.Decoded, files_dir: str | None, report: _Report):
        self.spec = spec
        self.decoded = decoded
        self.files_dir = files_dir
        self.report = report
        self.translations: dict[JSONPath, Path] = {}

    def note(self, json_path: JSONPath, yaml_path: Path) -> None:
        self.translations[json_path] = yaml_path

    # -- local files ------------------------------------------------------------------------
    def read_local(self, local: str, yaml_path: Path) -> bytes | None:
        if not self.files_dir:
            self.report.error(yaml_path, ERR_NO_FILES_DIR)
            return None
        resolved = self.local_path(local)
        if resolved is None:
            self.report.error(yaml_path, ERR_FILES_DIR_ESCAPE)
            return None
        try:
            return FSPath(resolved).read_bytes()
        except FileNotFoundError:
            self.report.error(yaml_path, f"open {resolved}: no such file or directory")
        except IsADirectoryError:
            self.report.error(yaml_path, f"read {resolved}: is a directory")
        except OSError as exc:
            self.report.error(yaml_path, f"open {resolved}: {exc.strerror or exc}")
        return None

    def local_path(self, local: str) -> str | None:
        """The file ``local`` names under the files dir, or None if it would leave the dir.

        Symlinks are resolved before the check: the files dir may hold hostile content.
        """
        assert self.files_dir is not None
        base = os.path.abspath(self.files_dir)
        joined = posixpath.normpath(base + "/" + local)
        real_base = os.path.realpath(base)
        real = os.path.realpath(joined)
        for candidate, root in ((joined, base), (real, real_base)):
            if candidate != root and not candidate.startswith(root.rstrip("/") + "/"):
                return None
        return joined

    # -- resources ----------------------------------------------------------------------------
    def resource(self, res: dict[str, Any], yp: Path, jp: JSONPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.note(jp, yp)
        if "compression" in res:
            out["compression"] = res["compression"]
            self.note((*jp, "compression"), (*yp, "compression"))
        headers = res.get("http_headers")
        if headers:
            out["httpHeaders"] = []
            for index, header in enumerate(headers):
                entry: dict[str, Any] = {"name": header.get("name", "")}
                if header.get("value") is not None:
                    entry["value"] = header["value"]
                out["httpHeaders"].append(entry)
                self.note((*jp, "httpHeaders", index), (*yp, "http_headers", index))
                self.note((*jp, "httpHeaders", index, "name"), (*yp, "http_headers", index, "name"))
                self.note((*jp, "httpHeaders", index, "value"), (*yp, "http_headers", index, "value"))
            self.note((*jp, "httpHeaders"), (*yp, "http_headers"))
        if "source" in res:
            out["source"] = res["source"]
            self.note((*jp, "source"), (*yp, "source"))
        data: bytes | None = None
        data_key = ""
        if "inline" in res:
            data, data_key = go_utf8(res["inline"]), "inline"
        elif "local" in res:
            data, data_key = self.read_local(res["local"], (*yp, "local")), "local"
        if data is not None:
            encoded = make_data_url(data, res.get("compression"))
            out["source"] = encoded.url
            self.note((*jp, "source"), (*yp, data_key))
            if encoded.compression is not None:
                out["compression"] = encoded.compression
                self.note((*jp, "compression"), (*yp, data_key))
        hash_value = res.get("verification", {}).get("hash")
        if hash_value is not None:
            out["verification"] = {"hash": hash_value}
            self.note((*jp, "verification"), (*yp, "verification"))
            self.note((*jp, "verification", "hash"), (*yp, "verification", "hash"))
        return _ordered(out, ("compression", "httpHeaders", "source", "verification"))

    # -- storage ------------------------------------------------------------------------------
    def node(self, item: dict[str, Any], yp: Path, jp: JSONPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.note(jp, yp)
        for owner in ("group", "user"):
            value = item.get(owner)
            if value:
                owned = {k: value[k] for k in ("id", "name") if k in value}
                if owned:
                    out[owner] = owned
                    self.note((*jp, owner), (*yp, owner))
                    for key in owned:
                        self.note((*jp, owner, key), (*yp, owner, key))
        if "overwrite" in item:
            out["overwrite"] = item["overwrite"]
        out["path"] = item.get("path", "")
        for key in ("overwrite", "path"):
            self.note((*jp, key), (*yp, key))
        return out

    def storage(self, storage: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        directories = []
        for index, item in enumerate(storage.get("directories", [])):
            yp, jp = ("storage", "directories", index), ("storage", "directories", index)
            entry = self.node(item, yp, jp)
            if "mode" in item:
                entry["mode"] = item["mode"]
                self.note((*jp, "mode"), (*yp, "mode"))
            directories.append(_ordered(entry, ("group", "overwrite", "path", "user", "mode")))
        files = []
        for index, item in enumerate(storage.get("files", [])):
            yp = jp = ("storage", "files", index)
            entry = self.node(item, yp, jp)
            appended = [
                self.resource(res, (*yp, "append", i), (*jp, "append", i))
                for i, res in enumerate(item.get("append", []))
            ]
            if appended:
                entry["append"] = appended
                self.note((*jp, "append"), (*yp, "append"))
            if "contents" in item:
                contents = self.resource(item["contents"], (*yp, "contents"), (*jp, "contents"))
                if contents:
                    entry["contents"] = contents
            if "mode" in item:
                entry["mode"] = item["mode"]
                self.note((*jp, "mode"), (*yp, "mode"))
            files.append(entry)
        links = []
        for index, item in enumerate(storage.get("links", [])):
            yp = jp = ("storage", "links", index)
            entry = self.node(item, yp, jp)
            for key in ("hard", "target"):
                if key in item:
                    entry[key] = item[key]
                    self.note((*jp, key), (*yp, key))
            links.append(entry)
        self.trees(storage.get("trees", []), files, links, directories)
        file_order = ("group", "overwrite", "path", "user", "append", "contents", "mode")
        link_order = ("group", "overwrite", "path", "user", "hard", "target")
        if directories:
            out["directories"] = directories
        disks = self.devices(storage, "disks", _DISK_FIELDS)
        if disks:
            out["disks"] = disks
        if files:
            out["files"] = [_ordered(f, file_order) for f in files]
        filesystems = self.devices(storage, "filesystems", _FILESYSTEM_FIELDS)
        if filesystems:
            out["filesystems"] = filesystems
        if links:
            out["links"] = [_ordered(link, link_order) for link in links]
        luks_fields = _LUKS_FIELDS_V11 if self.spec.ignition != "3.3.0" else _LUKS_FIELDS
        luks = self.devices(storage, "luks", luks_fields)
        if luks:
            out["luks"] = luks
        raid = self.devices(storage, "raid", _RAID_FIELDS)
        if raid:
            out["raid"] = raid
        for key in ("directories", "disks", "files", "filesystems", "links", "luks", "raid"):
            self.note(("storage", key), ("storage", key))
        return out

    def devices(self, storage: dict[str, Any], section: str, fields: _Fields) -> list[dict[str, Any]]:
        """disks, filesystems, luks or raid: renamed field for field, in Ignition's key order."""
        return [
            self.struct(item, fields, ("storage", section, index), ("storage", section, index))
            for index, item in enumerate(storage.get(section, []))
        ]

    def struct(self, item: dict[str, Any], fields: _Fields, yp: Path, jp: JSONPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.note(jp, yp)
        for json_key, yaml_key, sub in fields:
            if yaml_key == "key_file":
                resource = self.resource(item.get(yaml_key, {}), (*yp, yaml_key), (*jp, json_key))
                if resource:
                    out[json_key] = resource
                continue
            if isinstance(sub, tuple):
                value = item.get(yaml_key)
                if isinstance(value, list):
                    entries = [
                        self.struct(entry, sub, (*yp, yaml_key, i), (*jp, json_key, i))
                        for i, entry in enumerate(value)
                    ]
                    if entries:
                        out[json_key] = entries
                        self.note((*jp, json_key), (*yp, yaml_key))
                elif isinstance(value, dict):
                    entry = self.struct(value, sub, (*yp, yaml_key), (*jp, json_key))
                    if entry:
                        out[json_key] = entry
                continue
            value = item.get(yaml_key)
            if sub == ALWAYS:
                value = "" if value is None else value
            elif value is None or value == [] or (yaml_key == "number" and value == 0):
                continue  # Go's omitempty (a partition number is a plain int: 0 is omitted)
            out[json_key] = value
            self.note((*jp, json_key), (*yp, yaml_key))
            if isinstance(value, list):
                for index in range(len(value)):
                    self.note((*jp, json_key, index), (*yp, yaml_key, index))
        return out

    # -- mount units (butane base/v0_4 translate.go addMountUnits, mountUnitTemplate) -----------
    def mount_units(self, storage: dict[str, Any]) -> list[dict[str, Any]]:
        units: list[dict[str, Any]] = []
        for index, fs in enumerate(storage.get("filesystems", [])):
            if fs.get("with_mount_unit") is not True:
                continue
            yp: Path = ("storage", "filesystems", index, "with_mount_unit")
            unit = mount_unit(fs)
            jp: JSONPath = ("systemd", "units", len(units))
            for suffix in ((), ("contents",), ("enabled",), ("name",)):
                self.note((*jp, *suffix), yp)
            units.append(unit)
        return units

    def trees(
        self,
        trees: list[dict[str, Any]],
        files: list[dict[str, Any]],
        links: list[dict[str, Any]],
        directories: list[dict[str, Any]],
    ) -> None:
        for index, tree in enumerate(trees):
            yp: Path = ("storage", "trees", index)
            if not self.files_dir:
                self.report.error(yp, ERR_NO_FILES_DIR)
                return
            root = self.local_path(tree.get("local", ""))
            if root is None:
                self.report.error(yp, ERR_FILES_DIR_ESCAPE)
                continue
            try:
                root_info = os.stat(root)
            except OSError:
                self.report.error(yp, f"stat {root}: no such file or directory")
                continue
            if not stat.S_ISDIR(root_info.st_mode):
                self.report.error(yp, ERR_TREE_NOT_DIRECTORY)
                continue
            dest_base = tree.get("path") or "/"
            for src, info in _walk(root):
                rel = os.path.relpath(src, root)
                dest = posixpath.normpath(posixpath.join(dest_base, rel.replace(os.sep, "/")))
                if dest.startswith("//"):
                    dest = dest[1:]
                if stat.S_ISDIR(info.st_mode):
                    continue
                if stat.S_ISREG(info.st_mode):
                    self.tree_file(src, dest, info, yp, files, links, directories)
                elif stat.S_ISLNK(info.st_mode):
                    self.tree_link(src, dest, yp, files, links, directories)
                else:
                    self.report.error(yp, ERR_TREE_FILE_TYPE)

    def tree_file(
        self,
        src: str,
        dest: str,
        info: os.stat_result,
        yp: Path,
        files: list[dict[str, Any]],
        links: list[dict[str, Any]],
        directories: list[dict[str, Any]],
    ) -> None:
        index = next((i for i, f in enumerate(files) if f.get("path") == dest), None)
        if index is not None:
            existing = files[index]
            if existing.get("contents", {}).get("source"):
                self.report.error(yp, ERR_NODE_EXISTS)
                return
        else:
            if any(item.get("path") == dest for item in (*links, *directories)):
                self.report.error(yp, ERR_NODE_EXISTS)
                return
            files.append({"path": dest})
            index = len(files) - 1
            self.note(("storage", "files", index), yp)
        file = files[index]
        try:
            data = FSPath(src).read_bytes()
        except OSError as exc:
            self.report.error(yp, f"open {src}: {exc.strerror or exc}")
            return
        contents = dict(file.get("contents", {}))
        encoded = make_data_url(data, contents.get("compression"))
        contents["source"] = encoded.url
        if encoded.compression is not None:
            contents["compression"] = encoded.compression
        file["contents"] = _ordered(contents, ("compression", "httpHeaders", "source", "verification"))
        jp = ("storage", "files", index)
        for suffix in (("contents",), ("contents", "source"), ("contents", "compression")):
            self.note((*jp, *suffix), yp)
        if "mode" not in file:
            file["mode"] = 0o755 if info.st_mode & 0o111 else 0o644
            self.note((*jp, "mode"), yp)

    def tree_link(
        self,
        src: str,
        dest: str,
        yp: Path,
        files: list[dict[str, Any]],
        links: list[dict[str, Any]],
        directories: list[dict[str, Any]],
    ) -> None:
        index = next((i for i, link in enumerate(links) if link.get("path") == dest), None)
        if index is not None:
            if links[index].get("target"):
                self.report.error(yp, ERR_NODE_EXISTS)
                return
        else:
            if any(item.get("path") == dest for item in (*files, *directories)):
                self.report.error(yp, ERR_NODE_EXISTS)
                return
            links.append({"path": dest})
            index = len(links) - 1
            self.note(("storage", "links", index), yp)
        links[index]["target"] = os.readlink(src).replace(os.sep, "/")
        self.note(("storage", "links", index, "target"), yp)

    # -- systemd ------------------------------------------------------------------------------
    def contents(self, item: dict[str, Any], entry: dict[str, Any], yp: Path, jp: JSONPath) -> None:
        if "contents" in item:
            entry["contents"] = item["contents"]
            self.note((*jp, "contents"), (*yp, "contents"))
        if item.get("contents_local"):
            data = self.read_local(item["contents_local"], (*yp, "contents_local"))
            if data is not None:
                entry["contents"] = data.decode("utf-8", "replace")
                self.note((*jp, "contents"), (*yp, "contents_local"))

    def systemd(self, systemd: dict[str, Any]) -> dict[str, Any]:
        units = []
        for index, unit in enumerate(systemd.get("units", [])):
            yp = jp = ("systemd", "units", index)
            self.note(jp, yp)
            entry: dict[str, Any] = {}
            self.contents(unit, entry, yp, jp)
            dropins = []
            for d_index, dropin in enumerate(unit.get("dropins", [])):
                dyp = djp = (*yp, "dropins", d_index)
                self.note(djp, dyp)
                d_entry: dict[str, Any] = {}
                self.contents(dropin, d_entry, dyp, djp)
                d_entry["name"] = dropin.get("name", "")
                self.note((*djp, "name"), (*dyp, "name"))
                dropins.append(d_entry)
            if dropins:
                entry["dropins"] = dropins
                self.note((*jp, "dropins"), (*yp, "dropins"))
            for key in ("enabled", "mask"):
                if key in unit:
                    entry[key] = unit[key]
                    self.note((*jp, key), (*yp, key))
            entry["name"] = unit.get("name", "")
            self.note((*jp, "name"), (*yp, "name"))
            units.append(entry)
        return {"units": units} if units else {}

    # -- passwd -------------------------------------------------------------------------------
    def passwd(self, passwd: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        user_keys = (
            ("gecos", "gecos"),
            ("groups", "groups"),
            ("homeDir", "home_dir"),
            ("name", "name"),
            ("noCreateHome", "no_create_home"),
            ("noLogInit", "no_log_init"),
            ("noUserGroup", "no_user_group"),
            ("passwordHash", "password_hash"),
            ("primaryGroup", "primary_group"),
            ("shouldExist", "should_exist"),
            ("sshAuthorizedKeys", "ssh_authorized_keys"),
            ("shell", "shell"),
            ("system", "system"),
            ("uid", "uid"),
        )
        group_keys = (
            ("gid", "gid"),
            ("name", "name"),
            ("passwordHash", "password_hash"),
            ("shouldExist", "should_exist"),
            ("system", "system"),
        )
        groups = [
            self.renamed(g, group_keys, ("passwd", "groups", i))
            for i, g in enumerate(passwd.get("groups", []))
        ]
        users = []
        for index, user in enumerate(passwd.get("users", [])):
            yp = ("passwd", "users", index)
            entry = self.renamed(user, user_keys, yp)
            keys = list(entry.get("sshAuthorizedKeys", []))
            local_files = user.get("ssh_authorized_keys_local", [])
            if local_files:
                local_yp = (*yp, "ssh_authorized_keys_local")
                if not self.files_dir:
                    self.report.error(local_yp, ERR_NO_FILES_DIR)
                else:
                    for file_index, local in enumerate(local_files):
                        data = self.read_local(local, (*local_yp, file_index))
                        if data is None:
                            continue
                        for line in re.split(r"\r?\n", data.decode("utf-8", "replace")):
                            if line:
                                self.note((*yp, "sshAuthorizedKeys", len(keys)), (*local_yp, file_index))
                                keys.append(line)
            if keys:
                entry["sshAuthorizedKeys"] = keys
            users.append(_ordered(entry, tuple(k for k, _ in user_keys)))
        if groups:
            out["groups"] = groups
        if users:
            out["users"] = users
        return out

    def renamed(self, item: dict[str, Any], keys: tuple[tuple[str, str], ...], yp: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self.note(yp, yp)
        for json_key, yaml_key in keys:
            value = item.get(yaml_key)
            if yaml_key == "name":
                value = item.get("name", "")
            if value is None or value == []:
                continue
            out[json_key] = value
            self.note((*yp, json_key), (*yp, yaml_key))
            if isinstance(value, list):
                for index in range(len(value)):
                    self.note((*yp, json_key, index), (*yp, yaml_key, index))
        return out

    # -- ignition -----------------------------------------------------------------------------
    def ignition(self, ignition: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        config = ignition.get("config", {})
        cfg_out: dict[str, Any] = {}
        merges = [
            self.resource(r, ("ignition", "config", "merge", i), ("ignition", "config", "merge", i))
            for i, r in enumerate(config.get("merge", []))
        ]
        if merges:
            cfg_out["merge"] = merges
        if config.get("replace"):
            replace = self.resource(
                config["replace"], ("ignition", "config", "replace"), ("ignition", "config", "replace")
            )
            if replace:
                cfg_out["replace"] = replace
        if cfg_out:
            out["config"] = cfg_out
        proxy = ignition.get("proxy", {})
        proxy_out = {
            json_key: proxy[yaml_key]
            for json_key, yaml_key in (
                ("httpProxy", "http_proxy"),
                ("httpsProxy", "https_proxy"),
                ("noProxy", "no_proxy"),
            )
            if proxy.get(yaml_key) not in (None, [])
        }
        if proxy_out:
            out["proxy"] = proxy_out
            for json_key, yaml_key in (("httpProxy", "http_proxy"), ("httpsProxy", "https_proxy")):
                self.note(("ignition", "proxy", json_key), ("ignition", "proxy", yaml_key))
        cas = ignition.get("security", {}).get("tls", {}).get("certificate_authorities", [])
        ca_path = ("ignition", "security", "tls")
        ca_out = [
            self.resource(
                r, (*ca_path, "certificate_authorities", i), (*ca_path, "certificateAuthorities", i)
            )
            for i, r in enumerate(cas)
        ]
        if ca_out:
            out["security"] = {"tls": {"certificateAuthorities": ca_out}}
        timeouts = ignition.get("timeouts", {})
        timeouts_out = {
            json_key: timeouts[yaml_key]
            for json_key, yaml_key in (
                ("httpResponseHeaders", "http_response_headers"),
                ("httpTotal", "http_total"),
            )
            if yaml_key in timeouts
        }
        if timeouts_out:
            out["timeouts"] = timeouts_out
        out["version"] = self.spec.ignition
        return out

    def translate(self) -> dict[str, Any]:
        value = self.decoded.value
        result: dict[str, Any] = {"ignition": self.ignition(value.get("ignition", {}))}
        kargs = value.get("kernel_arguments", {})
        kargs_out = {
            json_key: kargs[yaml_key]
            for json_key, yaml_key in (
                ("shouldExist", "should_exist"),
                ("shouldNotExist", "should_not_exist"),
            )
            if kargs.get(yaml_key)
        }
        for json_key, yaml_key in (("shouldExist", "should_exist"), ("shouldNotExist", "should_not_exist")):
            for index in range(len(kargs.get(yaml_key, []))):
                self.note(("kernelArguments", json_key, index), ("kernel_arguments", yaml_key, index))
        if kargs_out:
            result["kernelArguments"] = kargs_out
        passwd = self.passwd(value.get("passwd", {}))
        if passwd:
            result["passwd"] = passwd
        storage = self.storage(value.get("storage", {}))
        if storage:
            result["storage"] = storage
        systemd = self.systemd(value.get("systemd", {}))
        if any(fs.get("with_mount_unit") is True for fs in value.get("storage", {}).get("filesystems", [])):
            # The user's units move behind the generated ones: set their translations aside.
            prefix = ("systemd", "units")
            user_translations = {jp: yp for jp, yp in self.translations.items() if jp[:2] == prefix}
            for jp in user_translations:
                if len(jp) > 2:
                    del self.translations[jp]
            generated = self.mount_units(value.get("storage", {}))
            systemd = {"units": self.merge_units(generated, systemd.get("units", []), user_translations)}
        if systemd:
            result["systemd"] = systemd
        return result

    def merge_units(
        self,
        parent: list[dict[str, Any]],
        child: list[dict[str, Any]],
        child_translations: dict[JSONPath, Path],
    ) -> list[dict[str, Any]]:
        """Ignition's merge of the user's units over the generated mount units (keyed by name):
        a unit of both keeps its place among the generated ones with the user's fields (and their
        translations) on top; the user's other units follow. source: butane base/util
        MergeTranslatedConfigs -> ignition config/merge."""
        merged = [dict(unit) for unit in parent]
        by_name = {unit["name"]: index for index, unit in enumerate(merged)}
        moved: dict[JSONPath, Path] = {}
        appended = 0
        for index, unit in enumerate(child):
            old_jp: JSONPath = ("systemd", "units", index)
            if unit["name"] in by_name:
                target = by_name[unit["name"]]
                base = merged[target]
                for key in ("contents", "enabled", "mask"):
                    if key in unit:
                        base[key] = unit[key]
                if unit.get("dropins"):
                    dropins = {d["name"]: d for d in base.get("dropins", [])}
                    for dropin in unit["dropins"]:
                        dropins[dropin["name"]] = {**dropins.get(dropin["name"], {}), **dropin}
                    base["dropins"] = list(dropins.values())
                merged[target] = _ordered(base, ("contents", "dropins", "enabled", "mask", "name"))
                new_jp: JSONPath = ("systemd", "units", target)
            else:
                new_jp = ("systemd", "units", len(parent) + appended)
                appended += 1
                merged.append(unit)
            for jp, yp in child_translations.items():
                if jp[: len(old_jp)] == old_jp:
                    moved[(*new_jp, *jp[len(old_jp) :])] = yp
        self.translations.update(moved)
        return merged

    def yaml_path(self, json_path: JSONPath) -> Path:
        """The YAML path a JSON path came from.

        A field the user never wrote (a missing link target) has no translation: keep the
        nearest translated ancestor and append the rest, so the message still names the field.
        """
        for end in range(len(json_path), 0, -1):
            found = self.translations.get(json_path[:end])
            if found is not None:
                return (*found, *json_path[end:])
        return json_path


_UNIT_NAME_ALLOWED = frozenset(b":_.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def unit_name_path_escape(path: str) -> str:
    """go-systemd ``unit.UnitNamePathEscape`` (``systemd-escape --path``): slashes collapse to
    ``-``, a leading ``.`` and bytes outside ``[:_.A-Za-z0-9]`` become ``\\x<hex>``."""
    out: list[str] = []
    in_slashes = False
    start = True
    for byte in path.encode("utf-8", "surrogatepass"):
        if byte == ord("/"):
            in_slashes = True
            continue
        if in_slashes:
            in_slashes = False
            if not start:
                out.append("-")
        if (start and byte == ord(".")) or byte not in _UNIT_NAME_ALLOWED:
            out.append(f"\\x{byte:x}")
        else:
            out.append(chr(byte))
        start = False
    return "".join(out) or "-"


def mount_unit(fs: dict[str, Any]) -> dict[str, Any]:
    """The unit butane generates for a filesystem with ``with_mount_unit: true``.

    source: butane base/v0_4 and v0_5 translate.go ``mountUnitTemplate``/``mountUnitFromFS``.
    Flatcar refuses clevis, so a LUKS-backed filesystem is never remote (no tang) here.
    """
    device = fs.get("device", "")
    options = fs.get("mount_options") or []
    option_line = "\nOptions=" + ",".join(options) if options else ""
    if fs.get("format") == "swap":
        contents = (
            f"# Generated by Butane\n[Swap]\nWhat={device}{option_line}\n\n[Install]\nRequiredBy=swap.target"
        )
        name = unit_name_path_escape(device) + ".swap"
    else:
        escaped = unit_name_path_escape(device)
        contents = (
            "# Generated by Butane\n[Unit]\nBefore=local-fs.target\n"
            f"Requires=systemd-fsck@{escaped}.service\nAfter=systemd-fsck@{escaped}.service\n\n"
            f"[Mount]\nWhere={fs.get('path', '')}\nWhat={device}\nType={fs.get('format', '')}{option_line}"
            "\n\n[Install]\nRequiredBy=local-fs.target"
        )
        name = unit_name_path_escape(fs.get("path", "")) + ".mount"
    return {"contents": contents, "enabled": True, "name": name}


_SURROGATES = re.compile("[\ud800-\udfff]")


def go_utf8(text: str) -> bytes:
    """The bytes of the Go string: surrogate escapes (raw bytes of a ``!!binary`` scalar) are
    those bytes again; any other lone surrogate (none reach here: go-yaml refuses them) U+FFFD."""
    text = _SURROGATES.sub(lambda m: m.group() if "\udc80" <= m.group() <= "\udcff" else "\ufffd", text)
    return text.encode("utf-8", "surrogateescape")


def _ordered(item: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    return {key: item[key] for key in order if key in item}


def _walk(root: str) -> list[tuple[str, os.stat_result]]:
    """Go's ``filepath.Walk`` order: lexical, depth first, symlinks not followed."""
    found: list[tuple[str, os.stat_result]] = []

    def visit(path: str) -> None:
        info = os.lstat(path)
        found.append((path, info))
        if stat.S_ISDIR(info.st_mode):
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name))

    for name in sorted(os.listdir(root)):
        visit(os.path.join(root, name))
    return found


def _validate_source(decoded: schema.Decoded, report: _Report) -> None:
    """butane's source checks: unused keys first (TranslateBytes), then its Validate() walk."""
    for unused_path, _mark in decoded.unused:
        report.add("warning", unused_path, f"Unused key {unused_path[-1]}", key=True)
    first = len(report.messages)
    _check_source(decoded, report)
    report.messages[first:] = sorted(report.messages[first:], key=_source_order)


# butane's struct field order where it is not the order of the keys' names (base/v0_x schema.go).
_YAML_ORDER = {
    (): ("version", "variant", "ignition", "kernel_arguments", "passwd", "storage", "systemd"),
    ("storage",): ("directories", "disks", "files", "filesystems", "links", "luks", "raid", "trees"),
    ("storage", "files", 0): ("group", "overwrite", "path", "user", "append", "contents", "mode"),
}


def _source_order(message: Message) -> tuple[tuple[int, Any], ...]:
    """Where vcontext's depth-first walk of butane's structs meets the check that said it: the
    struct holding the field (its own Validate() runs before its fields')."""
    path = message.path
    emitter = path if path and isinstance(path[-1], int) else path[:-1]
    if message.text == ERR_TREE_NO_LOCAL:
        emitter = path
    key: list[tuple[int, Any]] = []
    for index, part in enumerate(emitter):
        if isinstance(part, int):
            key.append((0, part))
            continue
        parent = tuple(0 if isinstance(p, int) else p for p in emitter[:index])
        order = _YAML_ORDER.get(parent, ())
        key.append((1, order.index(part)) if part in order else (2, part))
    return tuple(key)


def _check_source(decoded: schema.Decoded, report: _Report) -> None:
    value = decoded.value
    storage = value.get("storage", {})

    def check_resource(res: dict[str, Any], path: Path) -> None:
        chosen = [key for key in ("local", "inline", "source") if key in res]
        if len(chosen) > 1:
            report.error((*path, chosen[-1]), ERR_TOO_MANY_SOURCES)

    for index, item in enumerate(storage.get("files", [])):
        path: Path = ("storage", "files", index)
        if "contents" in item:
            check_resource(item["contents"], (*path, "contents"))
        for a_index, res in enumerate(item.get("append", [])):
            check_resource(res, (*path, "append", a_index))
        if item.get("mode") is not None and decimal_mode_warning(item["mode"], directory=False):
            report.warn((*path, "mode"), ERR_DECIMAL_MODE)
    for index, item in enumerate(storage.get("directories", [])):
        if item.get("mode") is not None and decimal_mode_warning(item["mode"], directory=True):
            report.warn(("storage", "directories", index, "mode"), ERR_DECIMAL_MODE)
    for index, tree in enumerate(storage.get("trees", [])):
        if not tree.get("local"):
            report.error(("storage", "trees", index), ERR_TREE_NO_LOCAL)
    ignition = value.get("ignition", {})
    for index, res in enumerate(ignition.get("config", {}).get("merge", [])):
        check_resource(res, ("ignition", "config", "merge", index))
    if "replace" in ignition.get("config", {}):
        check_resource(ignition["config"]["replace"], ("ignition", "config", "replace"))
    for index, res in enumerate(
        ignition.get("security", {}).get("tls", {}).get("certificate_authorities", [])
    ):
        check_resource(res, ("ignition", "security", "tls", "certificate_authorities", index))
    for index, unit in enumerate(value.get("systemd", {}).get("units", [])):
        unit_path: Path = ("systemd", "units", index)
        if "contents" in unit and "contents_local" in unit:
            report.error((*unit_path, "contents_local"), ERR_TOO_MANY_SYSTEMD_SOURCES)
        for d_index, dropin in enumerate(unit.get("dropins", [])):
            if "contents" in dropin and "contents_local" in dropin:
                report.error((*unit_path, "dropins", d_index, "contents_local"), ERR_TOO_MANY_SYSTEMD_SOURCES)
    for index, fs in enumerate(storage.get("filesystems", [])):
        # source: butane base/v0_4 validate.go Filesystem.Validate
        if fs.get("with_mount_unit") is not True:
            continue
        if not fs.get("format"):
            report.error(("storage", "filesystems", index, "format"), ERR_MOUNT_UNIT_NO_FORMAT)
        elif fs["format"] != "swap" and not fs.get("path"):
            report.error(("storage", "filesystems", index, "path"), ERR_MOUNT_UNIT_NO_PATH)
    # Flatcar has no clevis: config/flatcar/v1_x translate.go field filter "storage.luks.clevis".
    for index, luks in enumerate(storage.get("luks", [])):
        if "key_file" in luks:
            check_resource(luks["key_file"], ("storage", "luks", index, "key_file"))
        if _has_value(luks.get("clevis")):
            report.error(("storage", "luks", index, "clevis"), ERR_CLEVIS)


def _has_value(value: Any) -> bool:
    """Whether a decoded value would survive Ignition's JSON encoding (clarketm/json omitempty)."""
    if isinstance(value, dict):
        return any(_has_value(v) for v in value.values())
    if isinstance(value, list):
        return bool(value)
    return value is not None


def read_header(root: yaml.Node | None) -> tuple[str, str]:
    """variant and version, decoded as go-yaml decodes them into butane's first-pass struct."""
    variant = version = ""
    if root is None or ys.is_null(root):
        return variant, version
    if not isinstance(root, yaml.MappingNode):
        raise ys.ScalarError(
            "yaml: unmarshal errors:\n  " + ys.cannot_unmarshal(root, "config.commonVersion")
        )
    errors = []
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value in ("variant", "version"):
            try:
                text = ys.to_str(value) or ""
            except ys.ScalarError as exc:
                errors.append(str(exc))
                continue
            if key.value == "variant":
                variant = text
            else:
                version = text
    if errors:
        raise ys.ScalarError("yaml: unmarshal errors:\n  " + "\n  ".join(errors))
    return variant, version


def transpile(source: str | bytes, files_dir: str | None = None) -> Result:
    """Translate Butane text to Ignition, reporting what butane would report."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8-sig")
        except UnicodeDecodeError:
            return Result(None, [], "Error unmarshaling yaml: yaml: invalid leading UTF-8 octet")
    try:
        root = ys.compose(source)
        variant, version = read_header(root)
    except (ys.YAMLSyntaxError, ys.ScalarError) as exc:
        return Result(None, [], f"Error unmarshaling yaml: {exc}")
    if variant == "":
        return Result(None, [], "Error parsing variant; must be specified")
    if not _SEMVER.match(version):
        return Result(None, [], "Error parsing version; must be a valid semver")
    spec = schema.SPEC_VERSIONS.get(version) if variant == "flatcar" else None
    if spec is None:
        return Result(None, [], f"No translator exists for variant {variant} with version {version}")
    return transpile_document(root, spec, files_dir)


def transpile_document(root: yaml.Node | None, spec: SpecVersion, files_dir: str | None = None) -> Result:
    """Decode, validate, translate and re-validate one composed Butane document."""
    result, _decoded = _transpile_document(root, spec, files_dir)
    return result


def _transpile_document(
    root: yaml.Node | None, spec: SpecVersion, files_dir: str | None
) -> tuple[Result, schema.Decoded]:
    try:
        decoded = schema.decode(root, spec.schema)
    except ys.YAMLSyntaxError as exc:  # go-yaml's failf: an explicit tag the text does not fit
        return Result(None, [], f"Error unmarshaling yaml: {exc}", spec.ignition), schema.Decoded({})
    if decoded.errors:
        detail = "yaml: unmarshal errors:\n  " + "\n  ".join(decoded.errors)
        return Result(None, [], f"Error unmarshaling yaml: {detail}", spec.ignition), decoded
    report = _Report(decoded)
    _validate_source(decoded, report)
    if report.fatal:
        return Result(None, report.messages, ERR_SOURCE_INVALID, spec.ignition), decoded
    translator = _Translator(spec, decoded, files_dir, report)
    config = translator.translate()
    if report.fatal:
        return Result(None, report.messages, ERR_SOURCE_INVALID, spec.ignition), decoded
    for issue in validate_ignition(config, spec.ignition):
        report.add(issue.kind, translator.yaml_path(issue.path), issue.message)
    if report.fatal:
        return Result(None, report.messages, ERR_GENERATED_INVALID, spec.ignition), decoded
    return Result(config, report.messages, None, spec.ignition), decoded


_LINE_PREFIX = re.compile(r"line (\d+): ")


def _fatal_messages(error: str) -> list[Message]:
    """Turn a fatal parse error into messages, one per go-yaml ``line N: ...`` entry."""
    lines = [part.strip() for part in error.split("\n") if part.strip()]
    found = []
    for part in lines:
        match = _LINE_PREFIX.search(part)
        if match and not part.endswith("unmarshal errors:"):
            found.append(Message("error", (), part[match.end() :], int(match.group(1)), None))
    return found or [Message("error", (), error)]


def parse_fragment(text: str, spec_version: str) -> tuple[list[Message], dict[str, Any]]:
    """Validate a free-form Butane fragment and return its messages and its typed value.

    The fragment may omit ``variant``/``version``; when present they must match the flavour's.
    Local files are not available to fragments (there is no files dir on the server).
    """
    spec = schema.SPEC_VERSIONS.get(spec_version)
    if spec is None:
        raise ValueError(f"unsupported Butane spec version {spec_version!r}")
    try:
        root = ys.compose(text)
        variant, version = read_header(root)
    except (ys.YAMLSyntaxError, ys.ScalarError) as exc:
        return _fatal_messages(str(exc)), {}
    if root is not None and not ys.is_null(root) and not isinstance(root, yaml.MappingNode):
        return [Message("error", (), "a Butane fragment must be a mapping", *_line_col(root))], {}
    header_problems = []
    if variant not in ("", "flatcar"):
        header_problems.append(f"variant must be flatcar, not {variant!r}")
    if version not in ("", spec_version):
        header_problems.append(f"version must be {spec_version} to match the flavour, not {version!r}")
    if header_problems:
        return [Message("error", (), problem) for problem in header_problems], {}
    result, decoded = _transpile_document(root, spec, None)
    if result.error is not None and not result.messages:
        return _fatal_messages(result.error), {}
    return result.messages, decoded.value


def validate_fragment(text: str, spec_version: str) -> list[Message]:
    """Errors and warnings (with path, line, column) for a user's Butane fragment; [] if clean."""
    messages, _value = parse_fragment(text, spec_version)
    return messages


def _line_col(node: yaml.Node) -> tuple[int, int]:
    mark = ys.mark_of(node)
    return mark.line, mark.column
