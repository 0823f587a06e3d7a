"""Recipes: one declarative YAML file per extension, loaded into typed, validated objects.

The contract is ``team/recipe-schema.md``. Recipes come from the built-in catalog and from users,
so loading is strict: unknown keys, wrong types, unsafe destinations and undefined URL
placeholders all fail with ``recipe.invalid`` and a message naming the file, the field path and
the reason. A loaded :class:`Recipe` is immutable; :meth:`Recipe.resolve` turns it into the
concrete sources of one (version, arch) build.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from builds.pipeline.errors import PipelineError
from builds.pipeline.vocabulary import ARCHES, BUNDLED_SYSEXTS, CATEGORIES, DELIVERIES

ARCHIVE_KINDS = ("tar.gz", "tgz", "tar.xz", "tar.zst", "zip", "file")
RELEASE_IDS = ("_any", "flatcar")
BUILTIN_PLACEHOLDERS = ("version", "arch", "version_nov")

# User-written recipes are small; a cap keeps a hostile upload from costing memory.
MAX_RECIPE_BYTES = 256 * 1024

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEYWORD_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9.,_+-]+$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a template variable or arch name may hold: it lands inside a URL path segment, so no
# '/', '?', '#', '%', '\\', whitespace or control characters, and (checked apart) no "..".
_URL_VALUE_RE = re.compile(r"^[A-Za-z0-9._+~-]{0,128}$")
_URL_VALUE_CHARS = "letters, digits and . _ + ~ -"
# Percent-escapes a web server decodes before resolving "..": checked as if decoded.
_ENCODED_PATH_CHARS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)
_DECODED = {"2e": ".", "2f": "/", "5c": "/"}
_SOURCE_ID_RE = re.compile(r"^[A-Za-z0-9._{}+-]+$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|timer|path|mount|target)$")
_TARGET_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+\.target$")
_MIN_FLATCAR_RE = re.compile(r"^\d+\.\d+\.\d+$")
_MODE_RE = re.compile(r"^0?[0-7]{3}$")
# Directories whose files systemd only reads when they end in .conf.
_CONF_DIRS = re.compile(r"^usr/lib/(tmpfiles\.d|sysusers\.d|sysctl\.d|modules-load\.d|binfmt\.d)/")
_SUFFIX_KINDS = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tgz"),
    (".tar.xz", "tar.xz"),
    (".tar.zst", "tar.zst"),
    (".zip", "zip"),
)
_TOP_KEYS = frozenset(
    {
        "name",
        "description",
        "homepage",
        "category",
        "delivery",
        "arches",
        "sources",
        "files",
        "start",
        "reload_manager",
        "release_id",
        "minor_pinning",
        "requires",
        "conflicts",
        "replaces_builtin",
        "min_flatcar",
        "versions",
        "build",
        "keywords",
    }
)
_SOURCE_KEYS = frozenset({"url", "id", "archive", "strip_components", "arches", "checksum_url", "install"})
_INSTALL_KEYS = frozenset({"from", "to", "mode"})
_VERSION_KEYS = frozenset({"sha256", "vars", "deprecated"})
_START_KEYS = frozenset({"unit", "target"})
_BUILD_KEYS = frozenset({"toolchain", "commands", "install", "limits"})
_TOOLCHAIN_KEYS = frozenset({"debian"})
_LIMIT_KEYS = frozenset({"seconds", "cpu_seconds", "memory_mb"})
# Debian policy: package names are lowercase letters, digits and + - . (at least two, starting
# alphanumeric); versions are [epoch:]upstream[-revision] from a small alphabet.
_DEBIAN_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,62}$")
_DEBIAN_VERSION_RE = re.compile(r"^([0-9]+:)?[0-9][A-Za-z0-9.+~-]{0,126}$")
MAX_BUILD_COMMANDS = 50
MAX_BUILD_COMMAND_CHARS = 4096
# Defaults and ceilings of a source build's limits (a team recipe may ask for less or up to these).
BUILD_LIMIT_DEFAULTS = {"seconds": 1800, "cpu_seconds": 3600, "memory_mb": 4096}
BUILD_LIMIT_MAXIMA = {"seconds": 4 * 3600, "cpu_seconds": 8 * 3600, "memory_mb": 16384}


@dataclass(frozen=True)
class InstallRule:
    """Copy ``source`` (an archive path or glob; None for a single-file download) to ``to``.

    ``to`` ending in ``/`` means "into this directory". ``mode`` is None to keep the unpacked
    file's own (already sanitised) mode.
    """

    source: str | None
    to: str
    mode: int | None = None

    @property
    def into_directory(self) -> bool:
        return self.to.endswith("/")


@dataclass(frozen=True)
class BuildLimits:
    """What one source build may use: wall-clock seconds, CPU seconds, address space per process."""

    seconds: int = BUILD_LIMIT_DEFAULTS["seconds"]
    cpu_seconds: int = BUILD_LIMIT_DEFAULTS["cpu_seconds"]
    memory_mb: int = BUILD_LIMIT_DEFAULTS["memory_mb"]


@dataclass(frozen=True)
class BuildSpec:
    """A recipe's ``build:`` section: compile the sources, then install from the output directory.

    ``toolchain`` maps Debian package names to the exact versions the worker must have installed;
    ``commands`` are shell lines run one after the other inside the sandbox
    (``builds.pipeline.source_build``); ``install`` rules read from the build's output directory.
    """

    toolchain: dict[str, str]
    commands: tuple[str, ...]
    install: tuple[InstallRule, ...]
    limits: BuildLimits = BuildLimits()

    def as_document(self) -> dict[str, Any]:
        """What a curator reviews before approving (review page, version API): the toolchain, the
        commands, what is installed from the output, the limits."""
        return {
            "toolchain": dict(self.toolchain),
            "commands": list(self.commands),
            "install": [
                {"from": r.source or "", "to": r.to, "mode": f"{r.mode:04o}" if r.mode is not None else ""}
                for r in self.install
            ],
            "limits": {
                "seconds": self.limits.seconds,
                "cpu_seconds": self.limits.cpu_seconds,
                "memory_mb": self.limits.memory_mb,
            },
        }


@dataclass(frozen=True)
class SourceTemplate:
    """One upstream download, with ``{placeholders}`` still in its URL."""

    id: str
    url: str
    archive: str
    strip_components: int
    arches: dict[str, str] | None
    checksum_url: str | None
    install: tuple[InstallRule, ...]


@dataclass(frozen=True)
class StartUnit:
    """A unit started at boot through an ``Upholds=`` drop-in on ``target``."""

    unit: str
    target: str


@dataclass(frozen=True)
class VersionSpec:
    """Per-version data: pins (arch -> source id -> sha256 hex), template vars, deprecation."""

    sha256: dict[str, dict[str, str]]
    vars: dict[str, str]
    deprecated: bool = False


@dataclass(frozen=True)
class ResolvedSource:
    """A source of one concrete build: URL filled in, pin (if any) attached."""

    id: str
    url: str
    archive: str
    strip_components: int
    install: tuple[InstallRule, ...]
    sha256: str | None
    checksum_url: str | None
    label: str  # "wasmtime v31.0.0 x86-64" (+ source id when several): used in error messages


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Build it with :func:`parse_recipe` or :func:`load_recipe`."""

    name: str
    description: str
    homepage: str
    category: str
    delivery: str
    arches: dict[str, str]
    sources: tuple[SourceTemplate, ...]
    files: dict[str, str]
    start: tuple[StartUnit, ...]
    reload_manager: bool
    release_id: str
    minor_pinning: bool
    requires: tuple[tuple[str, ...], ...]
    conflicts: tuple[str, ...]
    replaces_builtin: tuple[str, ...]
    min_flatcar: str | None
    versions: dict[str, VersionSpec]
    digest: str
    build: BuildSpec | None = None  # None: the sources' own install rules give the image
    # Words the catalog search also matches ("wasm", "k8s"); not part of ``digest``: finding an
    # extension differently changes nothing it builds.
    keywords: tuple[str, ...] = ()

    def image_digest(self, version: str) -> str:
        """sha256 of what shapes the image of ``version``: sources, files, units and release
        fields plus that version's own spec. Unlike ``digest`` it ignores descriptions,
        relations and the other versions, so proposing a new version does not invalidate the
        images already baked for the old ones."""
        spec = self.versions.get(version)
        if spec is None:
            raise PipelineError("recipe.unknown-version", f"{self.name} has no version {version!r}")
        shaping: dict[str, Any] = {
            "name": self.name,
            "arches": self.arches,
            "sources": self.sources,
            "files": self.files,
            "start": self.start,
            "reload_manager": self.reload_manager,
            "release_id": self.release_id,
            "version": version,
            "sha256": spec.sha256,
            "vars": spec.vars,
        }
        if self.build is not None:  # absent for release-asset recipes: their digests stay as they were
            shaping["build"] = self.build
        return _digest(shaping)

    @property
    def bakeable(self) -> bool:
        return self.delivery == "bake"

    @property
    def local_file_urls(self) -> tuple[str, ...]:
        """The ``file://`` URL templates of the sources: only generated upload recipes may have
        them (a team's recipe reading the worker's disk would publish its secrets)."""
        templates = [t for s in self.sources for t in (s.url, s.checksum_url) if t]
        return tuple(t for t in templates if t.lower().startswith("file:"))

    def resolve(self, version: str, arch: str, pins: Mapping[str, str] | None = None) -> list[ResolvedSource]:
        """The concrete sources of the (version, arch) build.

        ``pins`` maps source id -> sha256 hex and overrides the recipe's own pins (the catalog
        keeps approved digests outside the recipe file).
        """
        if not self.bakeable:
            raise PipelineError(
                "recipe.not-bakeable",
                f"{self.name} is delivered as {self.delivery!r}; there is nothing to bake",
            )
        spec = self.versions.get(version)
        if spec is None:
            known = ", ".join(self.versions) or "none"
            raise PipelineError(
                "recipe.unknown-version", f"{self.name} has no version {version!r} (known: {known})"
            )
        if arch not in self.arches:
            raise PipelineError(
                "recipe.unsupported-arch",
                f"{self.name} does not support arch {arch!r} (supported: {', '.join(self.arches)})",
            )
        source_ids = {s.id for s in self.sources}
        overrides: dict[str, str] = {}
        for source_id, digest in (pins or {}).items():
            if source_id not in source_ids:
                raise PipelineError(
                    "recipe.invalid-pin",
                    f"{self.name} {version} {arch}: pin for unknown source {source_id!r} "
                    f"(sources: {', '.join(sorted(source_ids))})",
                )
            if not isinstance(digest, str) or not _HEX_RE.match(digest):
                raise PipelineError(
                    "recipe.invalid-pin",
                    f"{self.name} {version} {arch}: pin for {source_id!r} must be 64 hex digits",
                )
            overrides[source_id] = digest.lower()
        own_pins = spec.sha256.get(arch, {})
        # Vars may come from the database (versions proposed through the catalog), not only from
        # a validated recipe file: check them again here, where they become URLs.
        for key, value in spec.vars.items():
            problem = var_problem(key, value)
            if problem is not None:
                raise PipelineError("recipe.invalid-vars", f"{self.name} {version}: vars.{key}: {problem}")
        resolved = []
        for source in self.sources:
            values = {
                **spec.vars,
                "version": version,
                "version_nov": version[1:] if version.startswith("v") else version,
                "arch": (source.arches or {}).get(arch, self.arches[arch]),
            }
            label = f"{self.name} {version} {arch}"
            if len(self.sources) > 1:
                label += f" ({source.id})"
            resolved.append(
                ResolvedSource(
                    id=source.id,
                    url=_fill_url(source.url, values, label),
                    archive=source.archive,
                    strip_components=source.strip_components,
                    install=source.install,
                    sha256=overrides.get(source.id, own_pins.get(source.id)),
                    checksum_url=(
                        _fill_url(source.checksum_url, values, label) if source.checksum_url else None
                    ),
                    label=label,
                )
            )
        return resolved


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` placeholders. Only plain names: no ``str.format`` attribute access."""
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def _fill_url(template: str, values: Mapping[str, str], label: str) -> str:
    url = fill_template(template, values)
    if url_escapes_template(template, url):
        raise PipelineError(
            "recipe.url-escapes",
            f"{label}: {url} leaves {template_prefix(template)}, where the recipe's URL template "
            "points; check the version and its vars",
        )
    return url


def url_value_problem(value: object) -> str | None:
    """Why ``value`` may not be put into a URL template (a var or an arch name), or None."""
    if not isinstance(value, str):
        return "must be a string"
    if not _URL_VALUE_RE.match(value):
        return f"{value!r} may only contain {_URL_VALUE_CHARS} (at most 128)"
    if ".." in value:
        return f"{value!r} must not contain '..'"
    return None


def var_problem(name: object, value: object) -> str | None:
    """Why a version's template variable ``name = value`` is refused, or None when it is fine."""
    if not isinstance(name, str) or not _VAR_NAME_RE.match(name):
        return f"{name!r}: variable names are letters, digits and '_'"
    if name in BUILTIN_PLACEHOLDERS:
        return f"{{{name}}} is built in and cannot be redefined"
    if value == "":
        return "must not be empty"
    return url_value_problem(value)


def template_prefix(template: str) -> str:
    """The literal start of a URL template up to the directory of its first placeholder: every
    URL it fills in to must stay under it (same scheme, host and port, same path prefix)."""
    literal = template.split("{", 1)[0]
    parts = urllib.parse.urlsplit(literal)
    if "{" not in template:
        return literal
    directory = parts.path.rsplit("/", 1)[0] + "/" if "/" in parts.path else "/"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, directory, "", ""))


def url_escapes_template(template: str, url: str) -> bool:
    """True when filled-in ``url`` leaves ``template``'s host or path prefix (e.g. via "..",
    including percent-encoded dots and slashes a server would decode)."""
    prefix = urllib.parse.urlsplit(template_prefix(template))
    parts = urllib.parse.urlsplit(url)
    if (parts.scheme, parts.netloc) != (prefix.scheme, prefix.netloc):
        return True
    decoded = _ENCODED_PATH_CHARS.sub(lambda m: _DECODED[m.group(1).lower()], parts.path).replace("\\", "/")
    path = posixpath.normpath("/" + decoded.lstrip("/")).rstrip("/") + "/"
    return not path.startswith(posixpath.normpath(prefix.path or "/").rstrip("/") + "/")


def guess_archive_kind(url: str) -> str:
    """Archive kind from the URL's suffix (query and fragment ignored); ``file`` otherwise."""
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    for suffix, kind in _SUFFIX_KINDS:
        if path.endswith(suffix):
            return kind
    return "file"


# --------------------------------------------------------------------------------------------
# Loading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases (alias expansion is a memory bomb)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in recipes", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable key: let the base class produce its error
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate one recipe file; the file stem must equal the recipe's name."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PipelineError("recipe.invalid", f"{path}: cannot read the file ({exc.strerror})") from exc
    if len(data) > MAX_RECIPE_BYTES:
        raise PipelineError("recipe.invalid", f"{path}: file is larger than {MAX_RECIPE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineError("recipe.invalid", f"{path}: file is not UTF-8") from exc
    return parse_recipe(text, source=str(path))


def load_recipes(directory: str | Path) -> dict[str, Recipe]:
    """All ``*.yaml`` recipes of a directory, by name (sorted). The first invalid one raises."""
    return {
        recipe.name: recipe
        for recipe in (load_recipe(p) for p in sorted(Path(directory).glob("*.yaml")) if p.is_file())
    }


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate recipe YAML ``text``. ``source`` names the file in messages; when it ends in
    ``.yaml``/``.yml`` the recipe's name must equal its stem."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise PipelineError("recipe.invalid", f"{source}: recipe is larger than {MAX_RECIPE_BYTES} bytes")
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PipelineError("recipe.invalid", f"{source}: not valid YAML: {_yaml_reason(exc)}") from exc
    return _RecipeParser(source).parse(raw)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"{exc.problem or exc.context}{where}"
    return str(exc)


class _RecipeParser:
    """Walks the raw YAML data; every error names ``source: field.path: reason``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, reason: str) -> NoReturn:
        where = f"{self.source}: {field}: " if field else f"{self.source}: "
        raise PipelineError("recipe.invalid", where + reason)

    # -- primitive checks ------------------------------------------------------------------

    def mapping(self, value: Any, field: str, allowed: frozenset[str] | None = None) -> dict[Any, Any]:
        if not isinstance(value, dict):
            self.fail(field, f"must be a mapping, not {_type_name(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(field, f"key {key!r} must be a string (quote it)")
            if allowed is not None and key not in allowed:
                hint = f"; allowed: {', '.join(sorted(allowed))}"
                self.fail(_join(field, key), "unknown key" + hint)
        return value

    def string(self, value: Any, field: str, *, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(field, f"must be a string, not {_type_name(value)} (quote it)")
        if not allow_empty and not value.strip():
            self.fail(field, "must not be empty")
        if "\x00" in value:
            self.fail(field, "must not contain NUL characters")
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"must be true or false, not {_type_name(value)}")
        return value

    def choice(self, value: Any, field: str, choices: tuple[str, ...]) -> str:
        text = self.string(value, field)
        if text not in choices:
            self.fail(field, f"{text!r} is not one of {', '.join(choices)}")
        return text

    def sequence(self, value: Any, field: str) -> list[Any]:
        if not isinstance(value, list):
            self.fail(field, f"must be a list, not {_type_name(value)}")
        return value

    def name(self, value: Any, field: str) -> str:
        text = self.string(value, field)
        if not _NAME_RE.match(text):
            self.fail(field, f"{text!r} must be lowercase letters, digits, '-' or '_' (at most 63)")
        return text

    def keywords(self, value: Any) -> tuple[str, ...]:
        """Search words: short, lowercase, each once."""
        words = []
        for i, item in enumerate(self.sequence(value, "keywords")):
            word = self.string(item, f"keywords[{i}]").strip().lower()
            if not _KEYWORD_RE.match(word):
                self.fail(f"keywords[{i}]", f"{word!r} must be one word: letters, digits or '-' (at most 32)")
            if word not in words:
                words.append(word)
        return tuple(words)

    def names(self, value: Any, field: str) -> tuple[str, ...]:
        items = [self.name(v, f"{field}[{i}]") for i, v in enumerate(self.sequence(value, field))]
        if len(set(items)) != len(items):
            self.fail(field, "lists a name twice")
        return tuple(items)

    def destination(self, value: Any, field: str, *, directory_ok: bool) -> str:
        """A path inside the image: relative, under usr/ or opt/, never where sysext forbids."""
        path = self.string(value, field)
        if path.startswith("/"):
            self.fail(field, f"{path!r} must be relative (e.g. usr/bin/tool), not absolute")
        is_dir = path.endswith("/")
        if is_dir and not directory_ok:
            self.fail(field, f"{path!r} must name a file, not a directory")
        parts = path.rstrip("/").split("/")
        if any(p in ("", ".", "..") for p in parts) or "\\" in path:
            self.fail(field, f"{path!r} must not contain '..', '.', '\\' or empty components")
        if parts[0] not in ("usr", "opt"):
            self.fail(field, f"{path!r} must be under usr/ or opt/ (sysexts only extend /usr and /opt)")
        clean = "/".join(parts)
        if parts[:2] == ["usr", "sbin"]:
            self.fail(field, f"{path!r}: usr/sbin must never be shipped (it is a symlink on Flatcar)")
        if clean == "usr/lib/os-release":
            self.fail(field, f"{path!r}: a sysext must not ship usr/lib/os-release")
        if clean.startswith("usr/lib/extension-release.d"):
            self.fail(field, f"{path!r}: the extension-release file is written by the pipeline")
        if not is_dir and _is_drop_in(clean) and not clean.endswith(".conf"):
            self.fail(field, f"{path!r}: drop-in and configuration files must end in .conf")
        return path

    def template(self, value: Any, field: str) -> str:
        url = self.string(value, field)
        if not re.match(r"^(https?|file)://", url):
            self.fail(field, f"{url!r} must be an http://, https:// or file:// URL")
        if any(c.isspace() for c in url):
            self.fail(field, "must not contain whitespace")
        stripped = _PLACEHOLDER_RE.sub("", url)
        if "{" in stripped or "}" in stripped:
            self.fail(field, "has an unbalanced '{' or '}'")
        for placeholder in _PLACEHOLDER_RE.findall(url):
            if not _VAR_NAME_RE.match(placeholder):
                self.fail(field, f"placeholder {{{placeholder}}} is not a plain name")
        authority = url.split("://", 1)[1].split("/", 1)[0]
        if "{" in authority or "?" in authority or "#" in authority:
            self.fail(field, "the host must be written out: placeholders only go in the path")
        return url

    # -- the recipe ------------------------------------------------------------------------

    def parse(self, raw: Any) -> Recipe:
        if raw is None:
            self.fail("", "the recipe is empty")
        if not isinstance(raw, dict):
            self.fail("", f"the recipe must be a mapping of fields, not {_type_name(raw)}")
        top = self.mapping(raw, "", _TOP_KEYS)
        for required in ("name", "description", "category"):
            if required not in top:
                self.fail(required, "is required")
        name = self.name(top["name"], "name")
        stem = Path(self.source).name
        for suffix in (".yaml", ".yml"):
            if stem.endswith(suffix) and stem[: -len(suffix)] != name:
                self.fail(
                    "name", f"{name!r} must equal the file name without .yaml ({stem[: -len(suffix)]!r})"
                )
        description = self.string(top["description"], "description").strip()
        homepage = ""
        if top.get("homepage") is not None:
            homepage = self.string(top["homepage"], "homepage")
            if not re.match(r"^https?://\S+$", homepage):
                self.fail("homepage", f"{homepage!r} must be an http:// or https:// URL")
        category = self.choice(top["category"], "category", tuple(CATEGORIES))
        delivery = self.choice(top.get("delivery", "bake"), "delivery", tuple(DELIVERIES))
        bake = delivery == "bake"

        if "arches" in top:
            arches = self.arch_map(top["arches"], "arches", ARCHES)
            if not arches:
                self.fail("arches", "must list at least one of " + ", ".join(ARCHES))
        elif bake:
            self.fail("arches", "is required (systemd arch -> upstream name, e.g. {x86-64: amd64})")
        else:
            arches = dict.fromkeys(ARCHES, "")

        build = None
        if top.get("build") is not None:
            if not bake:
                self.fail("build", f"must not be given for delivery {delivery!r}")
            build = self.build(top["build"])
        if bake:
            if "sources" not in top:
                self.fail("sources", "is required for delivery 'bake' (at least one download)")
            sources = self.sources(top["sources"], arches, built=build is not None)
        else:
            if top.get("sources"):
                self.fail("sources", f"must not be given for delivery {delivery!r}")
            sources = ()

        files = self.files(top.get("files", {}))
        start = self.start(top.get("start", []))
        reload_manager = self.boolean(top.get("reload_manager", False), "reload_manager")
        release_id = self.choice(top.get("release_id", "_any"), "release_id", RELEASE_IDS)
        minor_pinning = self.boolean(top.get("minor_pinning", False), "minor_pinning")
        requires = self.requires(top.get("requires", []), name)
        conflicts = self.names(top.get("conflicts", []), "conflicts")
        if name in conflicts:
            self.fail("conflicts", "a recipe cannot conflict with itself")
        replaces_builtin = self.names(top.get("replaces_builtin", []), "replaces_builtin")
        for i, builtin in enumerate(replaces_builtin):
            if builtin not in BUNDLED_SYSEXTS:
                self.fail(
                    f"replaces_builtin[{i}]",
                    f"{builtin!r} is not a Flatcar built-in sysext ({', '.join(BUNDLED_SYSEXTS)})",
                )
        min_flatcar = None
        if top.get("min_flatcar") is not None:
            min_flatcar = self.string(top["min_flatcar"], "min_flatcar")
            if not _MIN_FLATCAR_RE.match(min_flatcar):
                self.fail("min_flatcar", f'{min_flatcar!r} must be a Flatcar version like "3975.2.0"')
        versions = self.versions(top.get("versions"), bake, arches, sources)

        fields: dict[str, Any] = {
            "name": name,
            "description": description,
            "homepage": homepage,
            "category": category,
            "delivery": delivery,
            "arches": arches,
            "sources": sources,
            "files": files,
            "start": start,
            "reload_manager": reload_manager,
            "release_id": release_id,
            "minor_pinning": minor_pinning,
            "requires": requires,
            "conflicts": conflicts,
            "replaces_builtin": replaces_builtin,
            "min_flatcar": min_flatcar,
            "versions": versions,
        }
        keywords = self.keywords(top.get("keywords", []))
        if build is None:
            return Recipe(**fields, digest=_digest(fields), keywords=keywords)
        return Recipe(**fields, digest=_digest({**fields, "build": build}), build=build, keywords=keywords)

    def arch_map(self, value: Any, field: str, allowed_arches: tuple[str, ...]) -> dict[str, str]:
        mapping = self.mapping(value, field)
        result = {}
        for arch, upstream in mapping.items():
            if arch not in allowed_arches:
                self.fail(_join(field, arch), f"unknown arch; use one of {', '.join(allowed_arches)}")
            text = self.string(upstream, _join(field, arch), allow_empty=True)
            problem = url_value_problem(text)
            if problem is not None:
                self.fail(_join(field, arch), problem)
            result[arch] = text
        return result

    def sources(self, value: Any, arches: dict[str, str], *, built: bool) -> tuple[SourceTemplate, ...]:
        items = self.sequence(value, "sources")
        if not items:
            self.fail("sources", "must list at least one download for delivery 'bake'")
        result: list[SourceTemplate] = []
        for i, item in enumerate(items):
            field = f"sources[{i}]"
            raw = self.mapping(item, field, _SOURCE_KEYS)
            if "url" not in raw:
                self.fail(_join(field, "url"), "is required")
            url = self.template(raw["url"], _join(field, "url"))
            if "id" in raw:
                source_id = self.string(raw["id"], _join(field, "id"))
            else:
                source_id = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            if not _SOURCE_ID_RE.match(source_id):
                self.fail(_join(field, "id"), f"{source_id!r} may only contain letters, digits and ._+-{{}}")
            if any(s.id == source_id for s in result):
                self.fail(_join(field, "id"), f"{source_id!r} is used by another source; give each an id")
            if "archive" in raw:
                archive = self.choice(raw["archive"], _join(field, "archive"), ARCHIVE_KINDS)
            else:
                archive = guess_archive_kind(url)
            strip = raw.get("strip_components", 0)
            if isinstance(strip, bool) or not isinstance(strip, int) or strip < 0:
                self.fail(_join(field, "strip_components"), "must be a whole number >= 0")
            if strip and archive == "file":
                self.fail(_join(field, "strip_components"), "only applies to tar and zip archives")
            source_arches = None
            if raw.get("arches") is not None:
                source_arches = self.arch_map(raw["arches"], _join(field, "arches"), tuple(arches))
            checksum_url = None
            if raw.get("checksum_url") is not None:
                checksum_url = self.template(raw["checksum_url"], _join(field, "checksum_url"))
            if built:
                # A built recipe installs from the build's output; its sources are only input.
                if "install" in raw:
                    self.fail(
                        _join(field, "install"), "must be omitted: build.install says what is installed"
                    )
                install: tuple[InstallRule, ...] = ()
            else:
                if "install" not in raw:
                    self.fail(_join(field, "install"), "is required (which files go where in the image)")
                install = self.install(raw["install"], _join(field, "install"), archive)
            result.append(
                SourceTemplate(
                    id=source_id,
                    url=url,
                    archive=archive,
                    strip_components=strip,
                    arches=source_arches,
                    checksum_url=checksum_url,
                    install=install,
                )
            )
        return tuple(result)

    def install(self, value: Any, field: str, archive: str) -> tuple[InstallRule, ...]:
        items = self.sequence(value, field)
        if not items:
            self.fail(field, "must list at least one rule")
        if archive == "file" and len(items) != 1:
            self.fail(field, "a single-file download has exactly one rule (its destination)")
        rules = []
        for i, item in enumerate(items):
            rule_field = f"{field}[{i}]"
            raw = self.mapping(item, rule_field, _INSTALL_KEYS)
            if "to" not in raw:
                self.fail(_join(rule_field, "to"), "is required")
            to = self.destination(raw["to"], _join(rule_field, "to"), directory_ok=True)
            source: str | None = None
            if archive == "file":
                if "from" in raw:
                    self.fail(
                        _join(rule_field, "from"), "must be omitted: the downloaded file itself is installed"
                    )
            else:
                if "from" not in raw:
                    self.fail(_join(rule_field, "from"), "is required (a path or glob inside the archive)")
                source = self.string(raw["from"], _join(rule_field, "from"))
                parts = source.rstrip("/").split("/")
                if source.startswith("/") or any(p in ("", ".", "..") for p in parts):
                    self.fail(_join(rule_field, "from"), f"{source!r} must be a relative path without '..'")
            mode = None
            if "mode" in raw:
                mode = self.mode(raw["mode"], _join(rule_field, "mode"))
            rules.append(InstallRule(source=source, to=to, mode=mode))
        return tuple(rules)

    def build(self, value: Any) -> BuildSpec:
        """The ``build:`` section. Team recipes are hostile: every field is checked strictly here,
        and the commands only ever run inside the sandbox, never on the worker itself."""
        raw = self.mapping(value, "build", _BUILD_KEYS)
        for required in ("toolchain", "commands", "install"):
            if required not in raw:
                self.fail(_join("build", required), "is required")
        toolchain_raw = self.mapping(raw["toolchain"], "build.toolchain", _TOOLCHAIN_KEYS)
        if "debian" not in toolchain_raw:
            self.fail("build.toolchain.debian", "is required (Debian package -> exact version)")
        packages = self.mapping(toolchain_raw["debian"], "build.toolchain.debian")
        toolchain: dict[str, str] = {}
        for package, version in packages.items():
            field = _join("build.toolchain.debian", package)
            if not _DEBIAN_PACKAGE_RE.match(package):
                self.fail(
                    field, f"{package!r} is not a Debian package name (lowercase letters, digits, + - .)"
                )
            text = self.string(version, field)
            if not _DEBIAN_VERSION_RE.match(text):
                self.fail(field, f'{text!r} is not a Debian version (quote it, e.g. "4:12.2.0-3")')
            toolchain[package] = text
        commands = self.sequence(raw["commands"], "build.commands")
        if not commands:
            self.fail("build.commands", "must list at least one command")
        if len(commands) > MAX_BUILD_COMMANDS:
            self.fail("build.commands", f"at most {MAX_BUILD_COMMANDS} commands")
        lines = []
        for i, command in enumerate(commands):
            field = f"build.commands[{i}]"
            text = self.string(command, field)
            if len(text) > MAX_BUILD_COMMAND_CHARS:
                self.fail(field, f"at most {MAX_BUILD_COMMAND_CHARS} characters")
            if any(ord(c) < 32 and c not in "\t\n" for c in text) or "\x7f" in text:
                self.fail(field, "must not contain control characters")
            lines.append(text)
        install = self.install(raw["install"], "build.install", "directory")
        limits_raw = self.mapping(raw.get("limits") or {}, "build.limits", _LIMIT_KEYS)
        limits: dict[str, int] = {}
        for key, default in BUILD_LIMIT_DEFAULTS.items():
            number = limits_raw.get(key, default)
            ceiling = BUILD_LIMIT_MAXIMA[key]
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= ceiling:
                self.fail(_join("build.limits", key), f"must be a whole number from 1 to {ceiling}")
            limits[key] = number
        return BuildSpec(
            toolchain=dict(sorted(toolchain.items())),
            commands=tuple(lines),
            install=install,
            limits=BuildLimits(**limits),
        )

    def mode(self, value: Any, field: str) -> int:
        if not isinstance(value, str):
            self.fail(field, 'must be a quoted octal string such as "0755" (unquoted numbers are ambiguous)')
        if not _MODE_RE.match(value):
            if re.match(r"^[0-7]{4}$", value):
                self.fail(field, f"{value!r} sets setuid/setgid/sticky bits; images must not carry them")
            self.fail(field, f'{value!r} must be an octal mode such as "0755" or "0644"')
        return int(value, 8)

    def files(self, value: Any) -> dict[str, str]:
        mapping = self.mapping(value if value is not None else {}, "files")
        result = {}
        for path, text in mapping.items():
            field = _join("files", path)
            clean = self.destination(path, field, directory_ok=False)
            result[clean] = self.string(text, field, allow_empty=True)
        return dict(sorted(result.items()))

    def start(self, value: Any) -> tuple[StartUnit, ...]:
        units: list[StartUnit] = []
        for i, item in enumerate(self.sequence(value if value is not None else [], "start")):
            field = f"start[{i}]"
            if isinstance(item, dict):
                raw = self.mapping(item, field, _START_KEYS)
                if "unit" not in raw:
                    self.fail(_join(field, "unit"), "is required")
                unit = self.string(raw["unit"], _join(field, "unit"))
                target = self.string(raw["target"], _join(field, "target")) if "target" in raw else None
            else:
                unit = self.string(item, field)
                target = None
            if not _UNIT_RE.match(unit):
                self.fail(field, f"{unit!r} is not a valid unit name (e.g. example.service)")
            if target is None:
                target = _default_target(unit)
            elif not _TARGET_RE.match(target):
                self.fail(_join(field, "target"), f"{target!r} must be a .target unit")
            if any(u.unit == unit for u in units):
                self.fail(field, f"{unit!r} is listed twice")
            units.append(StartUnit(unit=unit, target=target))
        return tuple(units)

    def requires(self, value: Any, name: str) -> tuple[tuple[str, ...], ...]:
        groups = []
        for i, item in enumerate(self.sequence(value if value is not None else [], "requires")):
            field = f"requires[{i}]"
            group = self.names(item, field) if isinstance(item, list) else (self.name(item, field),)
            if not group:
                self.fail(field, "an any-of group must name at least one extension")
            if name in group:
                self.fail(field, "a recipe cannot require itself")
            groups.append(group)
        return tuple(groups)

    def versions(
        self, value: Any, bake: bool, arches: dict[str, str], sources: tuple[SourceTemplate, ...]
    ) -> dict[str, VersionSpec]:
        if value is None:
            if bake:
                self.fail("versions", "is required (at least one version for delivery 'bake')")
            return {}
        mapping = self.mapping(value, "versions")
        # One version is enough for a team's own recipe; the built-in catalog promises two
        # (tests/catalog/test_recipes.py) so that nodes have something to update between.
        if bake and not mapping:
            self.fail("versions", "a bake recipe lists at least one version")
        result = {}
        for version, spec in mapping.items():
            field = _join("versions", version)
            if not _VERSION_RE.match(version):
                self.fail(
                    field, f"{version!r} may only contain letters, digits and . , _ + - (sysupdate's @v)"
                )
            raw = self.mapping(spec if spec is not None else {}, field, _VERSION_KEYS)
            variables = self.variables(raw.get("vars"), _join(field, "vars"))
            pins = self.pins(raw.get("sha256"), _join(field, "sha256"), arches, sources)
            deprecated = self.boolean(raw.get("deprecated", False), _join(field, "deprecated"))
            known = set(BUILTIN_PLACEHOLDERS) | set(variables)
            for i, source in enumerate(sources):
                for key, template in (("url", source.url), ("checksum_url", source.checksum_url)):
                    for placeholder in _PLACEHOLDER_RE.findall(template or ""):
                        if placeholder not in known:
                            self.fail(
                                f"sources[{i}].{key}",
                                f"placeholder {{{placeholder}}} is not defined for version {version} "
                                f"(known: {', '.join(sorted(known))}; add it to {field}.vars)",
                            )
            result[version] = VersionSpec(sha256=pins, vars=variables, deprecated=deprecated)
        return result

    def variables(self, value: Any, field: str) -> dict[str, str]:
        mapping = self.mapping(value if value is not None else {}, field)
        result = {}
        for key, text in mapping.items():
            if not _VAR_NAME_RE.match(key):
                self.fail(_join(field, key), "variable names are letters, digits and '_'")
            var = self.string(text, _join(field, key))
            problem = var_problem(key, var)
            if problem is not None:
                self.fail(_join(field, key), problem)
            result[key] = var
        return result

    def pins(
        self, value: Any, field: str, arches: dict[str, str], sources: tuple[SourceTemplate, ...]
    ) -> dict[str, dict[str, str]]:
        mapping = self.mapping(value if value is not None else {}, field)
        if mapping and not sources:
            self.fail(field, "pins need sources; this recipe has none")
        result: dict[str, dict[str, str]] = {}
        source_ids = [s.id for s in sources]
        for arch, pin in mapping.items():
            arch_field = _join(field, arch)
            if arch not in arches:
                self.fail(arch_field, f"arch is not in the recipe's arches ({', '.join(arches)})")
            if isinstance(pin, str):
                if len(sources) != 1:
                    self.fail(arch_field, "with several sources, pins are {source id: sha256}")
                result[arch] = {source_ids[0]: self.hex(pin, arch_field)}
                continue
            per_source = self.mapping(pin, arch_field)
            result[arch] = {}
            for source_id, hex_digest in per_source.items():
                if source_id not in source_ids:
                    self.fail(
                        _join(arch_field, source_id), f"unknown source id (sources: {', '.join(source_ids)})"
                    )
                result[arch][source_id] = self.hex(hex_digest, _join(arch_field, source_id))
        return result

    def hex(self, value: Any, field: str) -> str:
        text = self.string(value, field)
        if not _HEX_RE.match(text):
            self.fail(field, "must be a sha256 digest: 64 hex digits")
        return text.lower()


def _is_drop_in(path: str) -> bool:
    parts = path.split("/")
    if _CONF_DIRS.match(path):
        return True
    # usr/lib/systemd/<anything>/<x>.d/<file>: unit drop-ins, networkd/resolved conf.d, ...
    return path.startswith("usr/lib/systemd/") and len(parts) >= 5 and parts[-2].endswith(".d")


def _default_target(unit: str) -> str:
    if unit.endswith(".socket"):
        return "sockets.target"
    if unit.endswith(".timer"):
        return "timers.target"
    return "multi-user.target"


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def _digest(fields: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON form of the validated recipe (defaults filled in), so a
    reformatted or reordered file keeps its digest and any meaningful change alters it."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if hasattr(value, "__dataclass_fields__"):
            return {k: plain(getattr(value, k)) for k in value.__dataclass_fields__}
        return value

    canonical = json.dumps(
        {"schema": "bakehouse-recipe/1", **plain(dict(fields))},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
