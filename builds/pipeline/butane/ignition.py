"""Ignition 3.3.0 / 3.4.0: the validation rules we implement and the JSON the butane tool prints.

Validation works on the JSON-shaped config (camelCase keys) and reports JSON paths; the
transpiler maps those back to the Butane YAML paths the user wrote. The same functions check the
Ignition we generate for a flavour, so a rendered config is held to the rules a node applies.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from builds.pipeline.butane.dataurl import DataURLError, decode_data_url
from builds.pipeline.vocabulary import BUTANE_IGNITION

JSONPath = tuple[str | int, ...]
Kind = Literal["error", "warning"]
IGNITION_VERSIONS = tuple(BUTANE_IGNITION.values())

UNIT_SUFFIXES = frozenset(
    {
        ".service",
        ".socket",
        ".device",
        ".mount",
        ".automount",
        ".swap",
        ".target",
        ".path",
        ".timer",
        ".snapshot",
        ".slice",
        ".scope",
    }
)
SYSTEMD_LINE_MAX = 2048


@dataclass(frozen=True)
class Issue:
    """One validation finding on a JSON path of an Ignition config."""

    kind: Kind
    path: JSONPath
    message: str


def go_path_clean(path: str) -> str:
    """Go's ``path.Clean`` (POSIX ``normpath`` keeps a leading ``//``; Go does not)."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def go_quote(text: str) -> str:
    """Go's ``%q`` for ordinary text: double quotes, backslash escapes, printable UTF-8 kept."""
    return json.dumps(text, ensure_ascii=False)


def path_ext(name: str) -> str:
    """Go's ``path.Ext``: the suffix from the last dot of the last element."""
    for index in range(len(name) - 1, -1, -1):
        if name[index] == "/":
            break
        if name[index] == ".":
            return name[index:]
    return ""


def parse_unit(contents: str) -> list[tuple[str, str, str]]:
    """(section, option, value) triples the way go-systemd's ``unit.Deserialize`` reads a unit.

    Raises ValueError with go-systemd's wording on input it rejects.
    """
    options: list[tuple[str, str, str]] = []
    section: str | None = None
    lines = contents.split("\n")
    index = 0
    while index < len(lines):
        raw = lines[index]
        index += 1
        if len(raw.encode("utf-8", "surrogatepass")) > SYSTEMD_LINE_MAX:
            raise ValueError(f"line too long (max {SYSTEMD_LINE_MAX} bytes)")
        line = raw.strip()
        if section is None:
            # Everything before the first section header is skipped, as go-systemd does.
            start = raw.find("[")
            if start < 0 or any(raw.lstrip().startswith(c) for c in "#;"):
                continue
            line = raw[start:].strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            end = line.find("]")
            if end < 0:
                raise ValueError("unable to find end of section")
            name, garbage = line[1:end], line[end + 1 :].strip()
            if garbage:
                raise ValueError(f"found garbage after section name {name}: {go_quote(garbage)}")
            section = name
            continue
        if "=" not in line:
            raise ValueError("unexpected newline encountered while parsing option name")
        key, _, value = line.partition("=")
        value = value.strip()
        while value.endswith("\\") and index < len(lines):
            value = value[:-1].rstrip() + " " + lines[index].strip()
            index += 1
        options.append((section or "", key.strip(), value))
    return options


def _url_problem(source: str, version: str = "3.4.0") -> str | None:
    """Ignition's ``validateURL`` for the spec ``version``.

    source: ignition config/v3_4/types/url.go (http, https, tftp, gs, s3 with a non-empty
    ``versionId``, arn naming an S3 object or access point, data); spec 3.3.0 predates ARN
    sources (docs/configuration-v3_3.md lists http, https, tftp, s3, gs and data only), so there
    ``arn:`` is an invalid scheme.
    """
    try:
        parsed = urllib.parse.urlsplit(source)
    except ValueError:
        return "unable to parse url"
    scheme = parsed.scheme.lower() if ":" in source else ""
    if scheme in ("http", "https", "tftp", "gs"):
        return None
    if scheme == "s3":
        return _version_id_problem(parsed.query)
    if scheme == "arn" and version != "3.3.0":
        return _arn_problem(source.split("?", 1)[0].split("#", 1)[0], parsed.query)
    if scheme == "data":
        try:
            decode_data_url(source)
        except DataURLError:
            return "unable to parse url"
        return None
    return "invalid url scheme"


def _version_id_problem(query: str) -> str | None:
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("versionId")
    if values is not None and (not values or values[0] == ""):
        return "invalid S3 object VersionId"
    return None


def _arn_problem(full: str, query: str) -> str | None:
    """aws-sdk-go-v2 ``arn.IsARN``/``arn.Parse`` plus Ignition's S3 checks."""
    if not full.startswith("arn:") or full.count(":") < 5:
        return "invalid S3 ARN format"
    sections = full.split(":", 5)
    required = ((1, "arn: invalid partition"), (2, "arn: invalid service"), (5, "arn: invalid resource"))
    for index, problem in required:
        if sections[index] == "":
            return problem
    if sections[2] != "s3":
        return "invalid S3 ARN format"
    parts = full.split("/")
    if sections[5].startswith("accesspoint/") and len(parts) < 3:
        return "invalid S3 ARN format"
    if len(parts) < 2:
        return "invalid S3 ARN format"
    return _version_id_problem(query)


def _proxy_problem(value: str) -> str | None:
    try:
        scheme = urllib.parse.urlsplit(value).scheme.lower() if ":" in value else ""
    except ValueError:
        return "unable to parse url"
    return None if scheme in ("http", "https") else "proxies must be http(s)"


_GUID = re.compile(r"^(|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$")
FILESYSTEM_FORMATS = ("ext4", "btrfs", "xfs", "swap", "vfat", "none")
_LABEL_LIMITS = {"ext4": 16, "btrfs": 256, "xfs": 12, "swap": 15, "vfat": 11}
RAID_STRIPED = ("linear", "raid0", "0", "stripe")  # no spares
RAID_LEVELS = (
    *RAID_STRIPED,
    "raid1",
    "1",
    "mirror",
    "raid4",
    "4",
    "raid5",
    "5",
    "raid6",
    "6",
    "raid10",
    "10",
)


class _Validator:
    def __init__(self, version: str) -> None:
        self.version = version
        self.issues: list[Issue] = []

    def error(self, path: JSONPath, message: str | None) -> None:
        if message:
            self.issues.append(Issue("error", path, message))

    def warn(self, path: JSONPath, message: str | None) -> None:
        if message:
            self.issues.append(Issue("warning", path, message))

    def resource(self, res: dict[str, Any], path: JSONPath, *, source_required: bool = False) -> None:
        compression = res.get("compression")
        if compression is not None and compression not in ("", "gzip"):
            self.error((*path, "compression"), "invalid compression method")
        hash_value = res.get("verification", {}).get("hash")
        if hash_value is not None and res.get("source") is None:
            self.error(
                (*path, "verification", "hash"), "source must be specified if verification is specified"
            )
        source = res.get("source")
        if source is None:
            if source_required:
                self.error((*path, "source"), "source is required")
        else:
            self.error((*path, "source"), _url_problem(source, self.version))
        headers = res.get("httpHeaders", [])
        if headers:
            scheme = urllib.parse.urlsplit(source or "").scheme.lower() if source else ""
            if not source:
                self.error((*path, "httpHeaders"), "unable to parse url")
            elif scheme not in ("http", "https"):
                self.error((*path, "httpHeaders"), "cannot use HTTP headers with this source scheme")
            for index, header in enumerate(headers):
                if not header.get("name"):
                    self.error((*path, "httpHeaders", index, "name"), "HTTP header name can't be empty")
            self.duplicates(headers, (*path, "httpHeaders"), "name")
        if hash_value is not None:
            hash_path = (*path, "verification", "hash")
            function, sep, digest = hash_value.partition("-")
            if not sep:
                self.error(hash_path, "malformed hash specifier")
            elif function not in ("sha256", "sha512"):
                self.error(hash_path, "unrecognized hash function")
            elif len(digest) != (64 if function == "sha256" else 128):
                self.error(hash_path, "incorrect size for hash sum")

    def node(self, node: dict[str, Any], path: JSONPath) -> None:
        node_path = node.get("path", "")
        if node_path == "":
            self.error((*path, "path"), "path not specified")
        elif not node_path.startswith("/"):
            self.error((*path, "path"), "path not absolute")
        elif go_path_clean(node_path) != node_path:
            self.error((*path, "path"), "path is not fully simplified")
        for owner in ("user", "group"):
            value = node.get(owner, {})
            if value.get("id") is not None and value.get("name"):
                self.error((*path, owner), "cannot set both id and name")

    def device_path(self, value: str, path: JSONPath) -> None:
        """Ignition's ``validatePath`` (config/v3_x/types/path.go)."""
        if value == "":
            self.error(path, "path not specified")
        elif not value.startswith("/"):
            self.error(path, "path not absolute")
        elif go_path_clean(value) != value:
            self.error(path, "path is not fully simplified")

    def disk(self, disk: dict[str, Any], path: JSONPath) -> None:
        """source: ignition config/v3_4/types/disk.go and partition.go."""
        device = disk.get("device", "")
        if device == "":
            self.error((*path, "device"), "disk device is required")
            return
        self.device_path(device, (*path, "device"))
        partitions = disk.get("partitions", [])
        numbers: dict[int, list[int]] = {}
        for index, part in enumerate(partitions):
            if part.get("number", 0):
                numbers.setdefault(part["number"], []).append(index)
        collided = [indexes[1] for indexes in numbers.values() if len(indexes) > 1]
        if collided:
            self.error((*path, "partitions", collided[0]), "partition numbers collide")
        overlap = _overlapping(partitions)
        if overlap is not None:
            self.error((*path, "partitions", overlap), "partitions overlap")
        if any(p.get("number", 0) == 0 for p in partitions) and any(
            p.get("shouldExist") is False for p in partitions
        ):
            self.error(
                (*path, "partitions"),
                "shouldExist is false for a partition and other partition(s) has start or size 0",
            )
        labels: set[str] = set()
        for index, part in enumerate(partitions):
            if "label" in part:
                if part["label"] in labels:
                    self.error((*path, "partitions", index), "cannot use the same partition label twice")
                    break
                labels.add(part["label"])
        for index, part in enumerate(partitions):
            self.partition(part, (*path, "partitions", index))

    def partition(self, part: dict[str, Any], path: JSONPath) -> None:
        if part.get("shouldExist") is False and (
            "label" in part
            or part.get("typeGuid")
            or part.get("guid")
            or "startMiB" in part
            or "sizeMiB" in part
        ):
            self.error(path, "shouldExist specified false with other options also specified")
        if not part.get("number") and "label" not in part:
            self.error(path, "a partition number >= 1 or a label must be specified")
        label = part.get("label")
        if label is not None:
            if len(label.encode("utf-8", "surrogatepass")) > 36:
                self.error((*path, "label"), "partition labels may not exceed 36 characters")
            elif ":" in label:
                self.error((*path, "label"), "partition label will be truncated to text before the colon")
        for key in ("guid", "typeGuid"):
            if key in part and not _GUID.match(part[key]):
                self.error((*path, key), 'doesn\'t match the form "01234567-89AB-CDEF-EDCB-A98765432101"')

    def filesystem(self, fs: dict[str, Any], path: JSONPath) -> None:
        """source: ignition config/v3_4/types/filesystem.go (before virtiofs)."""
        if fs.get("path"):
            self.device_path(fs["path"], (*path, "path"))
        self.device_path(fs.get("device", ""), (*path, "device"))
        fmt = fs.get("format")
        if not fmt:
            if (
                fs.get("path")
                or fs.get("label")
                or fs.get("uuid")
                or fs.get("wipeFilesystem") is True
                or fs.get("mountOptions")
                or fs.get("options")
            ):
                self.error(
                    (*path, "format"),
                    "format cannot be empty when path, label, uuid, wipeFilesystem, options, or "
                    "mountOptions is specified",
                )
        elif fmt not in FILESYSTEM_FORMATS:
            self.error((*path, "format"), "invalid filesystem format")
        label = fs.get("label")
        if label:
            if not fmt:
                self.error((*path, "label"), "filesystem must specify format if label is specified")
            elif fmt in _LABEL_LIMITS and len(label.encode("utf-8", "surrogatepass")) > _LABEL_LIMITS[fmt]:
                limit = _LABEL_LIMITS[fmt]
                message = f"filesystem labels cannot be longer than {limit} characters when using {fmt}"
                self.error((*path, "label"), message)

    def raid(self, raid: dict[str, Any], path: JSONPath) -> None:
        """source: ignition config/v3_4/types/raid.go."""
        level = raid.get("level")
        if not level:
            self.error((*path, "level"), "raid level is required")
        elif level not in RAID_LEVELS:
            self.error((*path, "level"), "unrecognized raid level")
        elif level in RAID_STRIPED and raid.get("spares", 0) != 0:
            self.error((*path, "level"), "spares unsupported for linear and raid0 arrays")
        if not raid.get("devices"):
            self.error((*path, "devices"), "raid devices required")
        for index, device in enumerate(raid.get("devices", [])):
            self.device_path(device, (*path, "devices", index))

    def luks(self, luks: dict[str, Any], path: JSONPath) -> None:
        """source: ignition config/v3_4/types/luks.go (the key file problem is reported on
        ``keys``, as Ignition does)."""
        if "/" in luks.get("name", ""):
            self.error((*path, "name"), "device names cannot contain slashes")
        label = luks.get("label")
        if label and len(label.encode("utf-8", "surrogatepass")) > 47:
            self.error((*path, "label"), "luks device labels cannot be longer than 47 characters")
        if not luks.get("device"):
            self.error((*path, "device"), "disk device is required")
        else:
            self.device_path(luks["device"], (*path, "device"))
        key_file = luks.get("keyFile", {})
        source = key_file.get("source")
        if source and _url_problem(source, self.version):
            self.error((*path, "keys"), "invalid key-file source")
        self.resource(key_file, (*path, "keyFile"))

    def mode(self, mode: int | None, path: JSONPath) -> None:
        if mode is None:
            return
        if mode < 0 or mode > 0o7777:
            self.error(path, "illegal file mode")
        elif mode & 0o7000 and self.version == "3.3.0":
            self.warn(path, "setuid/setgid/sticky bits are not supported in spec versions older than 3.4.0")

    def duplicates(self, items: list[Any], path: JSONPath, key: str | None) -> None:
        seen: set[Any] = set()
        for index, item in enumerate(items):
            value = item.get(key) if key is not None else item
            if value in seen:
                # Ignition's ValidateDups (config/validate/validate.go) names the entry, not its key.
                self.error((*path, index), "duplicate entry defined")
            seen.add(value)

    def storage(self, storage: dict[str, Any]) -> None:
        base: JSONPath = ("storage",)
        files = storage.get("files", [])
        directories = storage.get("directories", [])
        links = storage.get("links", [])
        disks = storage.get("disks", [])
        filesystems = storage.get("filesystems", [])
        if self.version != "3.3.0":
            # source: ignition config/v3_4/types/storage.go validateFilesystems (Ignition 2.15,
            # with spec 3.4.0; the 3.3.0 tests carry no such case).
            by_device = {disk.get("device", ""): disk for disk in disks}
            for index, fs in enumerate(filesystems):
                disk = by_device.get(fs.get("device", ""))
                if disk is None:
                    continue
                where = (*base, "filesystems", index, "device")
                if disk.get("partitions"):
                    self.warn(where, "filesystem overwrites partitioned device")
                elif fs.get("wipeFilesystem") is not True and disk.get("wipeTable") is True:
                    self.warn(where, "device matches disk with wipeTable enabled; filesystem will be wiped")
        for index, disk in enumerate(disks):
            self.disk(disk, (*base, "disks", index))
        self.duplicates(disks, (*base, "disks"), "device")
        for index, fs in enumerate(filesystems):
            self.filesystem(fs, (*base, "filesystems", index))
        self.duplicates(filesystems, (*base, "filesystems"), "device")
        for index, luks in enumerate(storage.get("luks", [])):
            self.luks(luks, (*base, "luks", index))
        self.duplicates(storage.get("luks", []), (*base, "luks"), "name")
        for index, raid in enumerate(storage.get("raid", [])):
            self.raid(raid, (*base, "raid", index))
        self.duplicates(storage.get("raid", []), (*base, "raid"), "name")
        for index, directory in enumerate(directories):
            self.node(directory, (*base, "directories", index))
            self.mode(directory.get("mode"), (*base, "directories", index, "mode"))
        for index, file in enumerate(files):
            path = (*base, "files", index)
            self.node(file, path)
            self.mode(file.get("mode"), (*path, "mode"))
            contents = file.get("contents", {})
            self.resource(contents, (*path, "contents"))
            for append_index, appended in enumerate(file.get("append", [])):
                self.resource(appended, (*path, "append", append_index))
            if file.get("overwrite") is True and contents.get("source") is None:
                self.error((*path, "overwrite"), "overwrite must be false if source is unspecified")
        for index, link in enumerate(links):
            path = (*base, "links", index)
            self.node(link, path)
            if not link.get("target"):
                self.error((*path, "target"), "link target is required")
        # files, directories and links share one path namespace
        seen: set[str] = set()
        for section, items in (("directories", directories), ("files", files), ("links", links)):
            for index, item in enumerate(items):
                if item.get("path") in seen:
                    self.error((*base, section, index), "duplicate entry defined")
                seen.add(item.get("path", ""))
        link_paths = [link.get("path", "") for link in links]
        for section, items, message in (
            ("directories", directories, "directory path includes link in config"),
            ("files", files, "file path includes link in config"),
            ("links", links, "link path includes link in config"),
        ):
            for index, item in enumerate(items):
                if any(item.get("path", "").startswith(lp + "/") for lp in link_paths):
                    self.error((*base, section, index), message)
        directory_paths = {d.get("path") for d in directories}
        for index, link in enumerate(links):
            if link.get("hard") is not True:
                continue
            target = go_path_clean(link.get("target", ""))
            if not target.startswith("/"):
                target = go_path_clean(link.get("path", "") + "/" + link.get("target", ""))
            if target in directory_paths:
                self.error((*base, "links", index), "hard link target is a directory")
            for owner in ("user", "group"):
                for field in ("id", "name"):
                    if link.get(owner, {}).get(field) is not None:
                        self.warn((*base, "links", index, owner, field), "user/group ignored for hard link")

    def systemd(self, systemd: dict[str, Any]) -> None:
        units = systemd.get("units", [])
        for index, unit in enumerate(units):
            path: JSONPath = ("systemd", "units", index)
            name = unit.get("name", "")
            if path_ext(name) not in UNIT_SUFFIXES:
                self.error((*path, "name"), "invalid systemd unit extension")
            contents = unit.get("contents")
            options: list[tuple[str, str, str]] = []
            if contents is not None:
                try:
                    options = parse_unit(contents)
                except ValueError as exc:
                    self.error((*path, "contents"), f"invalid unit content: {exc}")
            if unit.get("enabled") is True and contents and options:
                if not any(section == "Install" for section, _, _ in options):
                    message = (
                        f"unit {go_quote(name)} is enabled, but has no install section so enable does nothing"
                    )
                    self.warn((*path, "contents"), message)
            dropins = unit.get("dropins", [])
            for dropin_index, dropin in enumerate(dropins):
                dropin_path = (*path, "dropins", dropin_index)
                if dropin.get("contents") is not None:
                    try:
                        parse_unit(dropin["contents"])
                    except ValueError as exc:
                        self.error((*dropin_path, "contents"), f"invalid unit content: {exc}")
                if path_ext(dropin.get("name", "")) != ".conf":
                    self.error((*dropin_path, "name"), "invalid systemd drop-in extension")
            self.duplicates(dropins, (*path, "dropins"), "name")
        self.duplicates(units, ("systemd", "units"), "name")

    def config(self, cfg: dict[str, Any]) -> None:
        version = cfg.get("ignition", {}).get("version")
        if version != self.version:
            self.error(("ignition", "version"), "unsupported config version")
        ignition = cfg.get("ignition", {})
        for index, merge in enumerate(ignition.get("config", {}).get("merge", [])):
            self.resource(merge, ("ignition", "config", "merge", index), source_required=True)
        if "replace" in ignition.get("config", {}):
            self.resource(
                ignition["config"]["replace"], ("ignition", "config", "replace"), source_required=True
            )
        cas = ignition.get("security", {}).get("tls", {}).get("certificateAuthorities", [])
        for index, ca in enumerate(cas):
            self.resource(
                ca, ("ignition", "security", "tls", "certificateAuthorities", index), source_required=True
            )
        proxy = ignition.get("proxy", {})
        # source: ignition config/v3_4/types/proxy.go: httpProxy may be http or https; an http
        # httpsProxy is a warning (the proxy for HTTPS resources would be plaintext).
        if "httpProxy" in proxy:
            self.error(("ignition", "proxy", "httpProxy"), _proxy_problem(proxy["httpProxy"]))
        if "httpsProxy" in proxy:
            problem = _proxy_problem(proxy["httpsProxy"])
            self.error(("ignition", "proxy", "httpsProxy"), problem)
            if problem is None and urllib.parse.urlsplit(proxy["httpsProxy"]).scheme.lower() == "http":
                self.warn(
                    ("ignition", "proxy", "httpsProxy"),
                    "insecure plaintext HTTP proxy specified for HTTPS resources",
                )
        kargs = cfg.get("kernelArguments", {})
        # One namespace for both lists (Ignition's KernelArguments.MergedKeys): an argument that
        # should and should not exist is a duplicate entry.
        seen_kargs: set[str] = set()
        for section in ("shouldExist", "shouldNotExist"):
            for index, argument in enumerate(kargs.get(section, [])):
                if argument in seen_kargs:
                    self.error(("kernelArguments", section, index), "duplicate entry defined")
                seen_kargs.add(argument)
        passwd = cfg.get("passwd", {})
        self.duplicates(passwd.get("users", []), ("passwd", "users"), "name")
        self.duplicates(passwd.get("groups", []), ("passwd", "groups"), "name")
        self.storage(cfg.get("storage", {}))
        self.systemd(cfg.get("systemd", {}))
        self.systemd_conflicts(cfg)

    def systemd_conflicts(self, cfg: dict[str, Any]) -> None:
        unit_paths: set[str] = set()
        for unit in cfg.get("systemd", {}).get("units", []):
            name = unit.get("name", "")
            if unit.get("contents"):
                unit_paths.add("/etc/systemd/system/" + name)
            for dropin in unit.get("dropins", []):
                if dropin.get("contents"):
                    unit_paths.add(f"/etc/systemd/system/{name}.d/{dropin.get('name', '')}")
        for section in ("files", "directories", "links"):
            for index, item in enumerate(cfg.get("storage", {}).get(section, [])):
                if item.get("path") in unit_paths:
                    self.error(
                        ("storage", section, index, "path"), "path conflicts with systemd unit or dropin"
                    )


def _overlapping(partitions: list[dict[str, Any]]) -> int | None:
    """Index of a partition overlapping an explicitly placed one (Ignition's
    ``partitionsOverlap``: a start of 0 or a missing start/size is not checked)."""

    def end(part: dict[str, Any]) -> int:
        start, size = part["startMiB"], part["sizeMiB"]
        return int(start) if size == 0 else int(start + size - 1)

    def placed(part: dict[str, Any]) -> bool:
        return "startMiB" in part and "sizeMiB" in part and part["startMiB"] != 0

    for p in partitions:
        if not placed(p):
            continue
        for index, o in enumerate(partitions):
            if not placed(o) or p is o:
                continue
            if o["startMiB"] <= p["startMiB"] <= end(o) or o["startMiB"] <= end(p) <= end(o):
                return index
            if p["startMiB"] < o["startMiB"] and end(p) > end(o):
                return index
    return None


# Checks Ignition runs in a struct's own Validate() for a field or entry below it.
_STORAGE_CHECKS = frozenset(
    {
        "file path includes link in config",
        "directory path includes link in config",
        "link path includes link in config",
        "link target is required",
        "hard link target is a directory",
        "user/group ignored for hard link",
        "filesystem overwrites partitioned device",
        "device matches disk with wipeTable enabled; filesystem will be wiped",
    }
)
_DISK_CHECKS = frozenset(
    {
        "partition numbers collide",
        "partitions overlap",
        "shouldExist is false for a partition and other partition(s) has start or size 0",
        "cannot use the same partition label twice",
    }
)
_NODE_FIELDS = ("group", "overwrite", "path", "user")
_GO_NAMES = {
    "sshAuthorizedKeys": "SSHAuthorizedKeys",
    "uid": "UID",
    "uuid": "UUID",
    "guid": "GUID",
    "typeGuid": "TypeGUID",
    "httpHeaders": "HTTPHeaders",
    "httpProxy": "HTTPProxy",
    "httpsProxy": "HTTPSProxy",
    "httpResponseHeaders": "HTTPResponseHeaders",
    "httpTotal": "HTTPTotal",
    "tls": "TLS",
}


def _report_order(issue: Issue) -> tuple[int, tuple[tuple[int, Any], ...]]:
    """Where vcontext's walk reports ``issue``: duplicates first (butane runs ValidateDups before
    Validate), then Config.Validate (systemd conflicts), then depth first in Go field order, each
    struct's own Validate() before its fields (vcontext validate.go, butane config/util)."""
    path = issue.path
    if issue.message == "duplicate entry defined":
        phase, emitter = 0, path[:-2]
    elif issue.message == "path conflicts with systemd unit or dropin":
        phase, emitter = 1, ()
    elif issue.message in _STORAGE_CHECKS:
        phase, emitter = 2, path[:1]
    elif issue.message in _DISK_CHECKS:
        phase, emitter = 2, path[:3]
    else:
        phase, emitter = 2, path if path and isinstance(path[-1], int) else path[:-1]
    key: list[tuple[int, Any]] = []
    for index, part in enumerate(emitter):
        if isinstance(part, int):
            key.append((0, part))
        elif index >= 2 and emitter[index - 2] in ("files", "directories", "links") and part in _NODE_FIELDS:
            key.append((1, _NODE_FIELDS.index(part)))  # the embedded Node comes first
        else:
            key.append((2, _GO_NAMES.get(part, part[:1].upper() + part[1:])))
    return phase, tuple(key)


def validate_ignition(cfg: dict[str, Any], version: str) -> list[Issue]:
    """Check an Ignition config (JSON-shaped dict) against the 3.3.0/3.4.0 rules we implement,
    in the order butane reports them."""
    if version not in IGNITION_VERSIONS:
        raise ValueError(f"unsupported Ignition version {version!r}")
    validator = _Validator(version)
    validator.config(cfg)
    return sorted(validator.issues, key=_report_order)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(text: str) -> str:
    # Go's encoder writes each invalid UTF-8 byte as U+FFFD; lone surrogates (the raw bytes of a
    # !!binary scalar, as surrogate escapes) are Python's equivalent.
    return _SURROGATE.sub("\ufffd", text)


def _sanitize(value: Any) -> Any:
    if isinstance(value, str):
        return _replace_surrogates(value)
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sanitize(v) for v in value]
    return value


def to_json(cfg: dict[str, Any], *, pretty: bool = False) -> str:
    """Serialize like Go's ``json.Marshal``/``MarshalIndent(.., "", "  ")`` (HTML-safe escapes)."""
    if pretty:
        text = json.dumps(_sanitize(cfg), ensure_ascii=False, indent=2, separators=(",", ": "))
    else:
        text = json.dumps(_sanitize(cfg), ensure_ascii=False, separators=(",", ":"))
    # Safe outside strings too: these characters only ever occur inside JSON strings here.
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def iter_resources(cfg: dict[str, Any]) -> Iterator[tuple[JSONPath, dict[str, Any]]]:
    """Every resource of a config with its path (used to compare data URLs semantically)."""
    for index, file in enumerate(cfg.get("storage", {}).get("files", [])):
        if "contents" in file:
            yield ("storage", "files", index, "contents"), file["contents"]
        for append_index, appended in enumerate(file.get("append", [])):
            yield ("storage", "files", index, "append", append_index), appended
    for index, luks in enumerate(cfg.get("storage", {}).get("luks", [])):
        if "keyFile" in luks:
            yield ("storage", "luks", index, "keyFile"), luks["keyFile"]
    ignition = cfg.get("ignition", {})
    for index, merge in enumerate(ignition.get("config", {}).get("merge", [])):
        yield ("ignition", "config", "merge", index), merge
    if "replace" in ignition.get("config", {}):
        yield ("ignition", "config", "replace"), ignition["config"]["replace"]
    for index, ca in enumerate(ignition.get("security", {}).get("tls", {}).get("certificateAuthorities", [])):
        yield ("ignition", "security", "tls", "certificateAuthorities", index), ca
