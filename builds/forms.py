"""Forms of the builds pages, and the composer wizard's state.

The composer keeps every choice in the URL query, so each step is a link a colleague can open.
``ComposerState`` reads that query and turns it into the arguments of
``builds.services.flavour_create``; the flavour rules themselves live in ``builds.flavours``.
The option fields, their query parameters, defaults, choices and labels are made from
``builds.flavours.OPTIONS``, the one declaration the API and the validator use too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.http import QueryDict

from builds.flavours import OPTIONS, FlavourOptions, OptionSpec, channel_butane_problem
from builds.models import Arch
from builds.pipeline import vocabulary

# The options the composer offers, per wizard step (by query parameter).
COMPOSER_OPTIONS: Mapping[int, tuple[OptionSpec, ...]] = {
    step: tuple(option for option in OPTIONS if option.param and option.step == step) for step in (1, 3)
}
_CHANNEL = next(option for option in COMPOSER_OPTIONS[1] if option.name == "channel")
_BUTANE = next(option for option in COMPOSER_OPTIONS[1] if option.name == "butane_version")
# The composer targets the newest Butane spec the chosen channel's Ignition reads.
CHANNELS = {
    channel: (vocabulary.CHANNEL_LABELS[channel], newest)
    for channel, newest in vocabulary.CHANNEL_NEWEST_BUTANE.items()
}
EXTENSION_PREFIX = "x_"
# Present once the options step has been submitted: from then on an unticked box means "off".
OPTIONS_MARKER = "o"
STEP1_FIELDS = ("team", "name", "description", "arch", *(str(o.param) for o in COMPOSER_OPTIONS[1]))
STEP3_FIELDS = (OPTIONS_MARKER, *(str(o.param) for o in COMPOSER_OPTIONS[3]))
# Query parameters that only drive the wizard itself and are never part of the state.
CONTROL_PARAMS = ("go",)


@dataclass(frozen=True)
class ComposerState:
    """The wizard's choices as read from the query string."""

    query: QueryDict

    @classmethod
    def from_request_data(cls, data: QueryDict) -> ComposerState:
        query = data.copy()
        for name in (*CONTROL_PARAMS, "csrfmiddlewaretoken"):
            query.pop(name, None)
        for name in [k for k, values in query.lists() if not any(v.strip() for v in values)]:
            query.pop(name)  # empty fields and "not included" selects carry no meaning: shorter links
        return cls(query)

    def get(self, name: str, default: str = "") -> str:
        return (self.query.get(name) or default).strip()

    @property
    def name(self) -> str:
        return self.get("name")

    @property
    def team(self) -> str:
        return self.get("team")

    @property
    def arch(self) -> str:
        return self.get("arch")

    @property
    def channel(self) -> str:
        channel = self.get(str(_CHANNEL.param), _CHANNEL.default)
        return channel if channel in CHANNELS else _CHANNEL.default

    @property
    def butane_version(self) -> str:
        """The spec asked for, else the newest the channel reads (flavour validation checks the pair)."""
        asked = self.get(str(_BUTANE.param))
        return asked if asked in _BUTANE.values else CHANNELS[self.channel][1]

    @property
    def picks(self) -> dict[str, str]:
        """Extension name -> chosen version."""
        return {
            key[len(EXTENSION_PREFIX) :]: str(value).strip()
            for key, value in self.query.items()
            if key.startswith(EXTENSION_PREFIX) and str(value).strip()
        }

    @property
    def options_chosen(self) -> bool:
        return OPTIONS_MARKER in self.query

    def options(self) -> dict[str, Any]:
        """The ``options`` document for ``flavour_create`` (defaults until step 3 is submitted)."""
        options: dict[str, Any] = {"channel": self.channel, "butane_version": self.butane_version}
        if not self.options_chosen:
            return options
        for option in COMPOSER_OPTIONS[3]:
            param = str(option.param)
            if option.kind == "flag":
                options[option.name] = self.get(param) == "on"
            elif option.kind == "subset":
                options[option.name] = sorted(set(self.query.getlist(param)))
            elif option.kind == "lines":
                options[option.name] = [line.strip() for line in self.get(param).splitlines() if line.strip()]
            elif option.kind == "text":
                options[option.name] = self.get(param) if option.strip else self.query.get(param, "")
            elif self.get(param):  # a choice left empty takes the default
                options[option.name] = self.get(param)
        return options

    def flavour_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``flavour_create`` / ``flavour_choices_resolve`` (team excepted)."""
        return {
            "name": self.get("name"),
            "description": self.get("description"),
            "arch": self.arch,
            "extensions": [{"name": n, "version": v} for n, v in sorted(self.picks.items())],
            "options": self.options(),
        }

    def with_changes(self, **changes: str | None) -> ComposerState:
        query = self.query.copy()
        for name, value in changes.items():
            query.pop(name, None)
            if value:
                query[name] = value
        return ComposerState(query)

    def urlencode(self, *, exclude: Iterable[str] = ()) -> str:
        skip = set(exclude)
        pairs = [(k, v) for k, values in self.query.lists() if k not in skip for v in values]
        return urlencode(pairs)

    def hidden_pairs(
        self, own_fields: Iterable[str], *, own_extensions: bool = False
    ) -> list[tuple[str, str]]:
        """The state a step's form must carry along, minus the fields that step shows."""
        own = set(own_fields)
        return [
            (k, v)
            for k, values in self.query.lists()
            if k not in own and not (own_extensions and k.startswith(EXTENSION_PREFIX))
            for v in values
        ]


def flavour_state(flavour: Any) -> ComposerState:
    """The composer state that reproduces a stored flavour (to edit it as a new revision)."""
    options = dict(flavour.options)
    channel = FlavourOptions.from_document(options).channel
    query = QueryDict(mutable=True)
    butane = options["butane_version"]
    query.update(
        {
            "team": flavour.team.slug,
            "name": flavour.name,
            "description": flavour.description,
            "arch": flavour.arch,
            str(_CHANNEL.param): channel,
            # Only when it is not what the channel implies, so that links stay short.
            str(_BUTANE.param): "" if butane == CHANNELS[channel][1] else butane,
            "revision_of": flavour.pk,
            OPTIONS_MARKER: "1",
        }
    )
    for option in COMPOSER_OPTIONS[3]:
        param, value = str(option.param), options.get(option.name, option.default)
        if option.kind == "flag":
            if value:
                query[param] = "on"
        elif option.kind == "subset":
            query.setlist(param, list(value))
        elif option.kind == "lines":
            query[param] = "\n".join(value)
        else:
            query[param] = value
    for version in flavour.extension_versions.select_related("extension"):
        query[EXTENSION_PREFIX + version.extension.name] = version.version
    return ComposerState.from_request_data(query)


# --- step forms ---------------------------------------------------------------------------------


def composer_field(option: OptionSpec) -> forms.Field:
    """The composer's form field for one flavour option (``builds.flavours.OPTIONS``)."""
    # A box's label says it all; other fields show what the API documents.
    hint = "" if option.kind == "flag" else option.help
    common: dict[str, Any] = {"label": option.label, "help_text": hint, "required": option.required}
    choices = list(option.choices.items())
    if option.kind == "flag":
        return forms.BooleanField(initial=option.default, **common)
    if option.kind == "choice":
        if option is _BUTANE:
            # Left empty, the composer picks the newest spec the chosen channel reads.
            return forms.ChoiceField(choices=[("", "The newest the channel reads"), *choices], **common)
        return forms.ChoiceField(choices=choices, initial=option.default, **common)
    if option.kind == "subset":
        return forms.MultipleChoiceField(choices=choices, widget=forms.CheckboxSelectMultiple, **common)
    widget = forms.Textarea(attrs={"rows": option.rows, **option.attrs}) if option.rows else None
    return forms.CharField(max_length=option.max_length, strip=option.strip, widget=widget, **common)


def _option_fields(step: int) -> dict[str, forms.Field]:
    return {str(option.param): composer_field(option) for option in COMPOSER_OPTIONS[step]}


class _TargetBase(forms.Form):
    team = forms.ChoiceField(label="Team")
    name = forms.CharField(label="Flavour name", max_length=100, help_text="e.g. edge-docker")
    description = forms.CharField(label="Description", required=False, max_length=2000)
    arch = forms.ChoiceField(
        label="Architecture", choices=Arch.choices, widget=forms.RadioSelect, initial=vocabulary.DEFAULT_ARCH
    )

    def __init__(self, *args: Any, teams: Iterable[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["team"]).choices = [(t.slug, t.name) for t in teams]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        channel, butane = cleaned.get(str(_CHANNEL.param)), cleaned.get(str(_BUTANE.param))
        if channel and butane:
            too_new = channel_butane_problem(channel, butane)
            if too_new:
                self.add_error(str(_BUTANE.param), too_new)
        return cleaned


# The option fields are added by the forms' metaclass, after the fixed ones, in declaration order.
TargetForm = type(forms.Form)(  # type: ignore[misc]  # the stubs do not see the metaclass
    "TargetForm",
    (_TargetBase,),
    {
        "__module__": __name__,
        "__doc__": "Step 1: who owns it, what it is called, which arch and Flatcar channel.",
        **_option_fields(1),
    },
)
OptionsForm = type(forms.Form)(  # type: ignore[misc]
    "OptionsForm",
    (forms.Form,),
    {
        "__module__": __name__,
        "__doc__": "Step 3: updates, signing, SSH keys, hostname and an optional Butane fragment.",
        **_option_fields(3),
    },
)


def options_initial(state: ComposerState) -> dict[str, Any]:
    """Initial values of the options form from the state (for a step opened from a link)."""
    if not state.options_chosen:
        return {}
    initial: dict[str, Any] = {}
    for option in COMPOSER_OPTIONS[3]:
        param = str(option.param)
        if option.kind == "flag":
            initial[param] = state.get(param) == "on"
        elif option.kind == "choice":
            initial[param] = state.get(param) or option.default
        elif option.kind == "subset":
            initial[param] = state.query.getlist(param)
        else:
            initial[param] = state.get(param) if option.strip else state.query.get(param, "")
    return initial


# Which wizard step and field a flavour validation error belongs to.
ERROR_PLACES: Mapping[str, tuple[int, str]] = {
    "name": (1, "name"),
    "description": (1, "description"),
    "arch": (1, "arch"),
    "extensions": (2, ""),
    **{
        f"options.{option.name}": (step, str(option.param))
        for step, options in COMPOSER_OPTIONS.items()
        for option in options
    },
}


def error_place(key: str) -> tuple[int, str]:
    """(step, field) for an error key of ``FlavourInvalid`` such as ``options.ssh_keys[1]``."""
    base = key.split("[", 1)[0]
    if base in ERROR_PLACES:
        return ERROR_PLACES[base]
    if base == "extensions" or base.startswith("extensions"):
        return 2, ""
    return (3, "") if base.startswith("options") else (1, "")


class WebhookForm(forms.Form):
    url = forms.URLField(
        label="Webhook URL", max_length=500, assume_scheme="https", help_text="Receives a signed JSON POST."
    )

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        if not url.lower().startswith(("http://", "https://")):
            raise forms.ValidationError("Webhook URLs are http or https.")
        return url


class TeamSettingsForm(forms.Form):
    """A team admin's switches (catalog.services.TEAM_SETTINGS)."""

    two_person_approval = forms.BooleanField(
        required=False,
        label="Two people approve",
        help_text="Whoever proposed a version cannot approve it; another curator must.",
    )
    private_artifacts = forms.BooleanField(
        required=False,
        label="Private artifacts",
        help_text="Serve the team's extension images and flavour files only to signed-in members and to "
        "nodes holding a flavour's token. Switching on closes their public /artifacts/ URLs at once: "
        "nodes provisioned from a public flavour stop getting updates until re-provisioned.",
    )


# --- the extensions step ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtensionRow:
    """One extension offered in the composer, its usable versions (newest first) and the pick."""

    extension: Any
    versions: list[Any]
    picked: str

    @property
    def field_name(self) -> str:
        return EXTENSION_PREFIX + self.extension.name

    @property
    def picked_unavailable(self) -> bool:
        """The link asks for a version this list does not offer (kept, so that Next explains why)."""
        return bool(self.picked) and all(v.version != self.picked for v in self.versions)

    @property
    def requires_text(self) -> str:
        return "; ".join(" or ".join(group) for group in _groups(self.extension.requires))


def _groups(requires: Any) -> list[list[str]]:
    """``requires`` as any-of groups (recipes may write a bare name for a group of one)."""
    return [[group] if isinstance(group, str) else list(group) for group in requires or []]


def extension_rows(versions: Iterable[Any], picks: Mapping[str, str]) -> list[ExtensionRow]:
    from catalog.selectors import version_sort_key

    by_extension: dict[int, tuple[Any, dict[int, Any]]] = {}
    for version in versions:
        entry = by_extension.setdefault(version.extension_id, (version.extension, {}))
        entry[1][version.pk] = version
    rows = [
        ExtensionRow(
            extension=extension,
            versions=sorted(found.values(), key=lambda v: version_sort_key(v.version), reverse=True),
            picked=picks.get(extension.name, ""),
        )
        for extension, found in by_extension.values()
    ]
    return sorted(rows, key=lambda row: (row.extension.category, row.extension.name))


@dataclass(frozen=True)
class RelationHint:
    """A sentence about the current picks, with an optional link that fixes it."""

    kind: str  # unavailable | requires | conflicts | needs | replaces
    text: str
    fixes: tuple[tuple[str, str], ...] = ()  # (label, url)


CONFLICT_WHY = (
    "they install the same files (binaries, units), and when two merged sysexts provide one path "
    "one silently hides the other"
)


def relation_hints(
    rows: list[ExtensionRow], state: ComposerState, *, step_url: str = ""
) -> list[RelationHint]:
    """What the current picks need or clash with, as the extensions step shows it."""
    offered = {row.extension.name: row for row in rows}
    picks = state.picks
    hints: list[RelationHint] = []
    seen_pairs: set[tuple[str, ...]] = set()
    for name in sorted(picks):
        row = offered.get(name)
        if row is None or row.picked_unavailable:
            remove = f"{step_url}?{state.with_changes(**{EXTENSION_PREFIX + name: None}).urlencode()}"
            hints.append(
                RelationHint(
                    "unavailable",
                    f"{name} {picks[name]} is not offered for {state.arch}: "
                    "not in your catalog, not approved, or deprecated.",
                    ((f"Remove {name}", remove),),
                )
            )
            continue
        for group in _groups(row.extension.requires):
            if picks.keys() & set(group):
                continue
            fixes = tuple(
                (
                    f"Add {other} {latest}",
                    f"{step_url}?{state.with_changes(**{EXTENSION_PREFIX + other: latest}).urlencode()}",
                )
                for other in group
                if other in offered
                for latest in [offered[other].versions[0].version]
            )
            hints.append(RelationHint("requires", f"{name} requires {' or '.join(group)}.", fixes))
        for other in row.extension.conflicts or []:
            pair = tuple(sorted((name, other)))
            if other in picks and pair not in seen_pairs:
                seen_pairs.add(pair)
                hints.append(
                    RelationHint(
                        "conflicts", f"{pair[0]} and {pair[1]} conflict: {CONFLICT_WHY}. Choose one."
                    )
                )
        if row.extension.min_flatcar and state.channel == "lts":
            hints.append(
                RelationHint(
                    "needs",
                    f"{name} needs Flatcar {row.extension.min_flatcar} or newer: check the LTS release your "
                    "nodes run (LTS-2023 is older).",
                )
            )
        if row.extension.replaces_builtin:
            bundled = ", ".join(row.extension.replaces_builtin)
            hints.append(
                RelationHint("replaces", f"{name} replaces Flatcar's bundled {bundled}: they will be masked.")
            )
    return hints
