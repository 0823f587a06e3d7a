"""A flavour's choices: validation on submit, and the canonical document whose sha256 is its ID.

The canonical document names every chosen extension with its recipe digest and the upstream
digests pinned for the flavour's arch, plus every option with its default filled in. The same
choices therefore always give the same document, the same ID and the same artifacts; any change
that could change a byte of an artifact changes the ID.

``FlavourOptions`` is the one declaration of the provisioning options: each field carries an
``OptionSpec`` saying how it is checked, documented and offered. The validator below, the API
serializer (``builds.api.serializers``) and the composer's forms (``builds.forms``) are all made
from ``OPTIONS``, so the API, its OpenAPI document and the composer cannot drift apart.

Every input here comes from a user: each problem is reported against the field it concerns, and
nothing is dropped silently (an unknown option is an error, not ignored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from django.db.models import Q

from builds.models import Arch
from builds.pipeline import vocabulary
from builds.pipeline.prebake import flatcar_version_problem
from builds.pipeline.vocabulary import BUNDLED_SYSEXTS, channel_butane_problem
from catalog.models import Delivery, Extension, ExtensionVersion, Team, VersionStatus

__all__ = ["channel_butane_problem"]  # re-exported: the composer checks the pair as you choose

DOCUMENT_SCHEMA = "bakehouse.flavour/v1"

_SSH_KEY = re.compile(
    r"(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
    r" [A-Za-z0-9+/=]+( [^\r\n]*)?"
)
MAX_FRAGMENT_BYTES = 256 * 1024
MAX_EXTENSIONS = 64


def _ssh_key_problem(key: str) -> str:
    return "" if _SSH_KEY.fullmatch(key) else "Not an OpenSSH public key (type, base64, comment)."


def _sha256_problem(digest: str) -> str:
    return "" if re.fullmatch(r"[0-9a-f]{64}", digest) else "Expected 64 lowercase hex digits (a sha256)."


def _fragment_size_problem(fragment: str) -> str:
    if len(fragment.encode("utf-8")) > MAX_FRAGMENT_BYTES:
        return f"The fragment is larger than {MAX_FRAGMENT_BYTES} bytes."
    return ""


OptionKind = Literal["choice", "flag", "subset", "lines", "text"]


@dataclass(frozen=True)
class OptionSpec:
    """How one option is checked (validator), described (API) and offered (composer).

    Kinds: ``choice`` one of ``choices``; ``flag`` true or false; ``subset`` a list drawn from
    ``choices`` (kept sorted, without repeats); ``lines`` a list of text, ``check`` applied to
    each stripped item; ``text`` text (stripped unless ``strip`` is off), ``check`` applied when
    not empty. ``check`` returns why a value is refused, or ''.
    """

    kind: OptionKind
    help: str
    label: str
    # value -> what the composer shows for it.
    choices: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[str], str] | None = None
    invalid: str = ""  # the message when the JSON type is wrong (lines, text)
    strip: bool = True
    max_length: int | None = None
    # The composer: its query parameter (None: not offered there), wizard step and widget.
    param: str | None = None
    step: int = 3
    required: bool = False
    rows: int = 0  # a textarea of this many rows; 0 for a one-line input
    attrs: Mapping[str, str] = field(default_factory=dict)
    # Left out of the canonical document while at its default: an option added after flavours
    # existed must not change their IDs.
    only_when_set: bool = False
    # Filled in from the FlavourOptions field.
    name: str = ""
    default: Any = None

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self.choices)


def _option(default: Any, **spec: Any) -> Any:
    return field(default=default, metadata={"option": OptionSpec(**spec)})


def _plain(*values: str) -> dict[str, str]:
    return {value: value for value in values}


@dataclass(frozen=True)
class FlavourOptions:
    """Provisioning options, every one with its default filled in: the one declaration of them."""

    channel: str = _option(
        vocabulary.DEFAULT_CHANNEL,
        kind="choice",
        choices=vocabulary.CHANNEL_LABELS,
        label="Target Flatcar channel",
        help="The Flatcar channel the nodes run (shown in flatcar-install -C). "
        + "; ".join(
            f"{channel} reads Butane {newest} at most"
            for channel, newest in vocabulary.CHANNEL_NEWEST_BUTANE.items()
            if newest != vocabulary.BUTANE_VERSIONS[-1]
        )
        + ".",
        param="channel",
        step=1,
        required=True,
    )
    butane_version: str = _option(
        vocabulary.DEFAULT_BUTANE_VERSION,
        kind="choice",
        choices={version: vocabulary.butane_label(version) for version in vocabulary.BUTANE_VERSIONS},
        label="Butane spec",
        help=f"The Butane spec of the generated config; {vocabulary.DEFAULT_BUTANE_VERSION} boots on "
        "every channel.",
        param="butane",
        step=1,
    )
    updates: bool = _option(
        True,
        kind="flag",
        label="Keep extensions up to date with systemd-sysupdate",
        help="Keep extensions current with systemd-sysupdate.",
        param="updates",
    )
    update_action: str = _option(
        "refresh",
        kind="choice",
        choices={
            "refresh": "Refresh the extensions in place (systemd-sysext refresh)",
            "reboot": "Flag the node as needing a reboot",
        },
        label="When an update arrives",
        help="refresh the extensions in place, or flag the node reboot-required.",
        param="action",
    )
    minor_pinning: bool = _option(
        True,
        kind="flag",
        label="Stay on the chosen minor line where a recipe supports it (Kubernetes)",
        help="Stay on a minor line where recipes ask (Kubernetes).",
        param="minor_pin",
    )
    signed: bool = _option(
        True,
        kind="flag",
        label="Sign SHA256SUMS; nodes verify the signature before updating",
        help="Sign SHA256SUMS; nodes verify it before updating.",
        param="signed",
    )
    masks: tuple[str, ...] = _option(
        (),
        kind="subset",
        choices={name: f"Flatcar's bundled {name}" for name in BUNDLED_SYSEXTS},
        label="Mask Flatcar's bundled extensions",
        help="Flatcar's bundled sysexts to mask; extensions that replace a bundled one mask it anyway.",
        param="masks",
    )
    ssh_keys: tuple[str, ...] = _option(
        (),
        kind="lines",
        check=_ssh_key_problem,
        invalid="Expected a list of SSH public keys, one per item.",
        label="SSH public keys for user core",
        help="OpenSSH public keys for user core (one per line in the composer).",
        param="ssh",
        rows=3,
        attrs={"spellcheck": "false"},
    )
    hostname: str = _option(
        "",
        kind="text",
        check=vocabulary.hostname_problem,
        invalid="Expected text.",
        max_length=vocabulary.HOSTNAME_MAX,
        label="Hostname",
        help=f"The node's /etc/hostname (empty: Flatcar's default). {vocabulary.HOSTNAME_RULE}",
        param="hostname",
    )
    butane_fragment: str = _option(
        "",
        kind="text",
        check=_fragment_size_problem,
        invalid="Expected Butane YAML as text.",
        strip=False,
        label="Butane fragment",
        help="Extra Butane YAML (variant flatcar) merged into the generated config.",
        param="fragment",
        rows=10,
        attrs={"spellcheck": "false", "data-validate-fragment": ""},
    )
    # One choice each on purpose: published file names (NAME-VER-ARCH.raw) do not carry the format
    # or compression, so two flavours must never make different bytes under one name.
    image_format: str = _option(
        "squashfs",
        kind="choice",
        choices=_plain("squashfs"),
        label="Image format",
        help="File system of the sysext images.",
        param="format",
    )
    compression: str = _option(
        "gzip", kind="choice", choices=_plain("gzip"), label="Image compression", help="Image compression.",
        param="compression",
    )  # fmt: skip
    # A pre-baked disk image (builds.pipeline.prebake): Flatcar's own image of the channel, at this
    # version and pinned digest, with the flavour's extensions in place for an offline first boot.
    prebake: bool = _option(
        False,
        kind="flag",
        label="Also build a pre-baked Flatcar disk image (extensions in place, boots offline)",
        help="Also publish flatcar_production_image-NAME.bin.zst: Flatcar's production image of the "
        "channel, at flatcar_version (its sha256 pinned as flatcar_image_sha256, its signature checked "
        "with Flatcar's key), with the flavour's extensions, transfer files and keyring in place.",
        param="prebake",
        only_when_set=True,
    )
    flatcar_version: str = _option(
        "",
        kind="text",
        check=flatcar_version_problem,
        invalid="Expected text.",
        max_length=32,
        label="Flatcar release of the pre-baked image",
        help="The Flatcar release the pre-baked image starts from, e.g. 4593.2.0 (needed with prebake).",
        param="flatcar_version",
        only_when_set=True,
    )
    flatcar_image_sha256: str = _option(
        "",
        kind="text",
        check=_sha256_problem,
        invalid="Expected text.",
        max_length=64,
        label="sha256 of flatcar_production_image.bin.bz2",
        help="The pinned sha256 of that release's flatcar_production_image.bin.bz2 for the flavour's "
        "architecture (needed with prebake).",
        param="flatcar_sha256",
        only_when_set=True,
        attrs={"spellcheck": "false"},
    )
    prebake_ignition: bool = _option(
        False,
        kind="flag",
        label="Embed the Ignition config in the pre-baked image (OEM partition's config.ign)",
        help="Write what the pre-baked image cannot hold in place (users, SSH keys, remote files) as the "
        "OEM partition's config.ign, read by Ignition on the first boot.",
        param="prebake_ignition",
        only_when_set=True,
    )
    # Artifacts served only to the team and to nodes holding the flavour's token (builds.access).
    private: bool = _option(
        False,
        kind="flag",
        label="Private artifacts",
        help="Private artifacts: the flavour's files (and the images of its team's extensions, "
        "if the team keeps them private) are served only to signed-in team members and to nodes "
        "holding the flavour's token, at PUBLIC_BASE_URL/private/TOKEN/...; the public /artifacts/ "
        "URLs answer 404. Always on for teams with private artifacts.",
        # Not offered by the composer: the team's private_artifacts setting decides there.
        param=None,
        only_when_set=True,
    )

    def as_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if option.only_when_set and value == option.default:
                continue
            document[option.name] = list(value) if isinstance(value, tuple) else value
        return document

    @classmethod
    def from_document(cls, data: Mapping[str, Any]) -> FlavourOptions:
        """Rebuild options stored by ``as_document`` (already validated)."""
        values = dict(data)
        # Flavours stored before the channel was recorded: their Butane spec tells which it was.
        # (Then every spec but the oldest meant a channel newer than LTS.)
        oldest = vocabulary.BUTANE_VERSIONS[0]
        values.setdefault("channel", "lts" if values.get("butane_version") == oldest else "stable")
        for option in OPTIONS:
            if option.kind in ("subset", "lines") and option.name in values:
                values[option.name] = tuple(values[option.name])
        return cls(**values)


OPTIONS: tuple[OptionSpec, ...] = tuple(
    dataclasses.replace(f.metadata["option"], name=f.name, default=f.default)
    for f in dataclasses.fields(FlavourOptions)
)
OPTION_NAMES = tuple(option.name for option in OPTIONS)


@dataclass(frozen=True)
class ChosenExtension:
    """One extension version in a flavour, with everything that determines its image."""

    version: ExtensionVersion
    pins: dict[str, str]

    @property
    def name(self) -> str:
        return self.version.extension.name

    def as_document(self) -> dict[str, Any]:
        extension = self.version.extension
        return {
            "name": extension.name,
            "version": self.version.version,
            "catalog": extension.team.slug if extension.team_id else "global",
            "delivery": extension.delivery,
            # The digest of what shapes this version's image, not of the whole recipe file: a new
            # version proposed upstream must not turn every existing flavour stale.
            "recipe_digest": self.version.recipe().image_digest(self.version.version),
            "pins": dict(sorted(self.pins.items())),
        }


@dataclass(frozen=True)
class FlavourChoices:
    """Validated choices, ready to be stored as a flavour."""

    team: Team
    name: str
    description: str
    arch: str
    extensions: tuple[ChosenExtension, ...]
    options: FlavourOptions

    def document(self) -> dict[str, Any]:
        return {
            "schema": DOCUMENT_SCHEMA,
            "team": self.team.slug,
            "name": self.name,
            "description": self.description,
            "arch": self.arch,
            "extensions": [e.as_document() for e in sorted(self.extensions, key=lambda e: e.name)],
            "options": self.options.as_document(),
        }

    def canonical_json(self) -> str:
        return canonical_json(self.document())

    def flavour_id(self) -> str:
        return flavour_id(self.canonical_json())


class FlavourInvalid(Exception):
    """The submitted choices have problems; ``errors`` maps each field to its reasons."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = dict(errors)


def canonical_json(document: Mapping[str, Any]) -> str:
    """Sorted keys, no insignificant white space, UTF-8: one text for one document."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def flavour_id(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class _Errors:
    by_field: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, reason: str) -> None:
        self.by_field.setdefault(name, []).append(reason)

    def __bool__(self) -> bool:
        return bool(self.by_field)


def flavour_choices_resolve(
    *,
    team: Team,
    name: Any,
    description: Any = "",
    arch: Any,
    extensions: Any,
    options: Any = None,
    previous: Sequence[ExtensionVersion] = (),
) -> FlavourChoices:
    """Check a submitted flavour against the catalog and return its validated choices.

    ``previous`` are the versions of the flavour being edited: a deprecated version stays usable
    in a new revision of a flavour that already had it, but is not offered to new flavours.
    Raises ``FlavourInvalid`` with every problem found, per field.
    """
    errors = _Errors()
    if not isinstance(name, str) or not name.strip():
        errors.add("name", "A flavour needs a name.")
    elif len(name.strip()) > 100:
        errors.add("name", "A flavour name has at most 100 characters.")
    if not isinstance(description, str):
        errors.add("description", "The description must be text.")
        description = ""
    if arch not in Arch.values:
        errors.add("arch", f"Unsupported architecture {arch!r}; choose one of {', '.join(Arch.values)}.")
    chosen = _resolve_extensions(team, extensions, arch if arch in Arch.values else None, previous, errors)
    flavour_options = _resolve_options(options, errors)
    if team.private_artifacts and not flavour_options.private:
        if isinstance(options, Mapping) and options.get("private") is False:
            errors.add(
                "options.private",
                f"Team {team.slug} keeps its artifacts private: its flavours cannot be public.",
            )
        flavour_options = dataclasses.replace(flavour_options, private=True)
    if not errors:
        _check_relations(chosen, errors)
    if not errors:
        _check_renders(arch, flavour_options, chosen, errors)
    if errors:
        raise FlavourInvalid(errors.by_field)
    return FlavourChoices(
        team=team,
        name=name.strip(),
        description=description.strip(),
        arch=arch,
        extensions=tuple(chosen),
        options=flavour_options,
    )


def _resolve_extensions(
    team: Team,
    raw: Any,
    arch: str | None,
    previous: Sequence[ExtensionVersion],
    errors: _Errors,
) -> list[ChosenExtension]:
    # The composer page and the API share these messages: page words, API shapes only where
    # only a script can go wrong (a page never sends anything but a list).
    if not isinstance(raw, list):
        errors.add("extensions", "Extensions must be a list of {name, version} objects.")
        return []
    if not raw:
        errors.add("extensions", "Choose at least one extension.")
        return []
    if len(raw) > MAX_EXTENSIONS:
        errors.add("extensions", f"A flavour has at most {MAX_EXTENSIONS} extensions.")
        return []
    previous_ids = {v.pk for v in previous}
    visible = Q(extension__team__isnull=True) | Q(extension__team=team)
    chosen: list[ChosenExtension] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"extensions[{index}]"
        if not isinstance(item, Mapping) or set(item) - {"name", "version"}:
            errors.add(where, "Each extension is an object with exactly 'name' and 'version'.")
            continue
        ext_name, version = item.get("name"), item.get("version")
        if not isinstance(ext_name, str) or not isinstance(version, str) or not ext_name or not version:
            errors.add(where, "Both 'name' and 'version' must be non-empty text.")
            continue
        if ext_name in seen:
            errors.add(where, f"{ext_name} is chosen more than once; a flavour holds one version of each.")
            continue
        seen.add(ext_name)
        if not Extension.objects.filter(Q(team__isnull=True) | Q(team=team), name=ext_name).exists():
            errors.add(where, f"Unknown extension {ext_name!r}.")
            continue
        found = (
            ExtensionVersion.objects.filter(visible, extension__name=ext_name, version=version)
            .select_related("extension", "extension__team")
            .prefetch_related("digests")
            # A team's private extension never shadows a global one, but prefer it if it did.
            .order_by("extension__team")
            .first()
        )
        if found is None:
            errors.add(where, f"{ext_name} has no version {version!r} in the catalog.")
            continue
        extension = found.extension
        if not extension.selectable:
            errors.add(where, f"{ext_name} needs a source build and cannot be part of a flavour.")
            continue
        if found.status != VersionStatus.APPROVED:
            state = VersionStatus(found.status).label.lower()
            errors.add(where, f"{ext_name} {version} is not approved yet (it is {state}).")
            continue
        if found.deprecated and found.pk not in previous_ids:
            errors.add(where, f"{ext_name} {version} is deprecated and not offered for new flavours.")
            continue
        if arch is not None and arch not in (extension.arches or []):
            supported = ", ".join(extension.arches or []) or "none"
            errors.add(where, f"{ext_name} does not support {arch} (supported: {supported}).")
            continue
        pins: dict[str, str] = {}
        if arch is not None and extension.delivery == Delivery.BAKE:
            pins = found.pins(arch)
            if not pins:
                errors.add(where, f"{ext_name} {version} has no pinned upstream digests for {arch}.")
                continue
        chosen.append(ChosenExtension(version=found, pins=pins))
    return chosen


def flavour_options_resolve(raw: Any) -> FlavourOptions:
    """Check submitted options alone; raises ``FlavourInvalid`` with the problems per option."""
    errors = _Errors()
    options = _resolve_options(raw, errors)
    if errors:
        raise FlavourInvalid(errors.by_field)
    return options


def _resolve_options(raw: Any, errors: _Errors) -> FlavourOptions:
    defaults = FlavourOptions()
    if raw is None:
        return defaults
    if not isinstance(raw, Mapping):
        errors.add("options", "Options must be an object.")
        return defaults
    for unknown in sorted(set(raw) - set(OPTION_NAMES)):
        errors.add(f"options.{unknown}", f"Unknown option; known options are {', '.join(OPTION_NAMES)}.")
    values = {option.name: getattr(defaults, option.name) for option in OPTIONS}
    for option in OPTIONS:
        if option.name in raw:
            values[option.name] = _clean_option(option, raw[option.name], errors)
    if errors:
        return defaults
    too_new = channel_butane_problem(values["channel"], values["butane_version"])
    if too_new:
        errors.add("options.butane_version", too_new)
        return defaults
    if values["prebake"]:
        for name in ("flatcar_version", "flatcar_image_sha256"):
            if not values[name]:
                errors.add(f"options.{name}", "A pre-baked image needs the Flatcar release and its sha256.")
        if errors:
            return defaults
    options = FlavourOptions.from_document(values)
    if options.butane_fragment.strip():
        for reason in fragment_problems(options.butane_fragment, options.butane_version):
            errors.add("options.butane_fragment", reason)
    return options


def _clean_option(option: OptionSpec, value: Any, errors: _Errors) -> Any:
    """``value`` as stored, or the default with the problems added to ``errors``."""
    where = f"options.{option.name}"
    allowed = option.values  # a tuple: a hostile unhashable value must not reach a dict lookup
    if option.kind == "choice":
        if value in allowed:
            return value
        errors.add(where, f"Expected one of {', '.join(allowed)}, got {value!r}.")
    elif option.kind == "flag":
        if isinstance(value, bool):
            return value
        errors.add(where, "Expected true or false.")
    elif option.kind == "subset":
        if isinstance(value, list) and all(item in allowed for item in value):
            return sorted(set(value))
        errors.add(where, f"Expected a list drawn from {', '.join(allowed)}.")
    elif option.kind == "lines":
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            cleaned = [item.strip() for item in value]
            for index, item in enumerate(cleaned):
                problem = option.check(item) if option.check else ""
                if problem:
                    errors.add(f"{where}[{index}]", problem)
            return cleaned
        errors.add(where, option.invalid)
    elif option.kind == "text":
        if isinstance(value, str):
            text = value.strip() if option.strip else value
            problem = option.check(text) if option.check and text else ""
            if problem:
                errors.add(where, problem)
            return text
        errors.add(where, option.invalid)
    return option.default


def fragment_problems(fragment: str, butane_version: str) -> list[str]:
    """Problems the Butane validator finds in a user's fragment (empty when it is fine)."""
    from builds.pipeline.butane.transpile import validate_fragment

    return [str(message) for message in validate_fragment(fragment, butane_version)]


def _check_relations(chosen: list[ChosenExtension], errors: _Errors) -> None:
    names = {c.name for c in chosen}
    for item in chosen:
        extension = item.version.extension
        for group in extension.requires or []:
            alternatives = [group] if isinstance(group, str) else list(group)
            if not names.intersection(alternatives):
                wanted = " or ".join(alternatives)
                errors.add("extensions", f"{extension.name} requires {wanted}; add it to the flavour.")
        for other in extension.conflicts or []:
            if other in names and other != extension.name:
                pair = sorted((extension.name, other))
                reason = f"{pair[0]} and {pair[1]} conflict; choose one."
                if reason not in errors.by_field.get("extensions", []):
                    errors.add("extensions", reason)


@dataclass(frozen=True)
class PublishedImage:
    """Where nodes fetch one image of a flavour, and its hash (``sha512-<hex>``)."""

    url: str
    hash: str
    publish_url: str


def butane_config(
    *,
    arch: str,
    options: FlavourOptions,
    versions: Sequence[ExtensionVersion],
    images: Mapping[str, PublishedImage],
    keyring: bytes,
) -> Any:
    """The pipeline's ``FlavourConfig``: chosen versions and options, plus where images live.

    ``images`` maps the name of every baked extension to its published image; Flatcar's own
    extensions are enabled rather than downloaded, and bundled docker/containerd are masked when
    an extension replaces them.
    """
    from builds.pipeline.bake import minor_pin
    from builds.pipeline.butane.render import ExtensionImage, FlavourConfig
    from builds.pipeline.sysupdate import UpdateAction

    masks = set(options.masks)
    official: list[str] = []
    extension_images = []
    for version in sorted(versions, key=lambda v: v.extension.name):
        extension = version.extension
        masks.update(name for name in extension.replaces_builtin or [] if name in BUNDLED_SYSEXTS)
        if extension.delivery == Delivery.FLATCAR_OFFICIAL:
            official.append(extension.name)
            continue
        image = images[extension.name]
        pinned = options.minor_pinning and extension.minor_pinning
        extension_images.append(
            ExtensionImage(
                name=extension.name,
                version=version.version,
                arch=arch,
                url=image.url,
                hash=image.hash,
                publish_url=image.publish_url,
                minor_pin=minor_pin(version.version) if pinned else None,
            )
        )
    return FlavourConfig(
        arch=arch,
        extensions=tuple(extension_images),
        spec_version=options.butane_version,
        updates=options.updates,
        update_action=UpdateAction(options.update_action),
        signed=options.signed,
        public_keyring=keyring if options.signed else b"",
        mask_bundled=tuple(sorted(masks)),
        official_extensions=tuple(official),
        ssh_authorized_keys=options.ssh_keys,
        hostname=options.hostname or None,
        fragment=options.butane_fragment,
    )


# Which option a rendering problem belongs to (anything else is reported on "options").
_RENDER_PROBLEM_FIELDS = {
    "butane.invalid-fragment": "options.butane_fragment",
    "butane.fragment-conflict": "options.butane_fragment",
    "butane.invalid-hostname": "options.hostname",
    "butane.invalid-ssh-key": "options.ssh_keys",
    "bake.minor-pin": "options.minor_pinning",
}


def _check_renders(
    arch: str, options: FlavourOptions, chosen: list[ChosenExtension], errors: _Errors
) -> None:
    """Render the Butane config with stand-in URLs now, so that a fragment that collides with a
    generated file (say ``/etc/hostname`` with a hostname set) is refused on submit, not at the
    end of a build."""
    from builds.pipeline.errors import PipelineError

    placeholder = PublishedImage(
        url="https://bakehouse.invalid/image.raw",
        hash="sha512-" + "0" * 128,
        publish_url="https://bakehouse.invalid/",
    )
    versions = [c.version for c in chosen]
    try:
        from builds.pipeline.butane.render import render_butane

        config = butane_config(
            arch=arch,
            options=options,
            versions=versions,
            images={v.extension.name: placeholder for v in versions},
            keyring=b"\x99 stand-in keyring",
        )
        render_butane(config)
    except PipelineError as problem:
        errors.add(_RENDER_PROBLEM_FIELDS.get(problem.code, "options"), problem.message)
