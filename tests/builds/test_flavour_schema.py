"""One schema for flavour options: the validator, the API serializer (and so the OpenAPI document)
and the composer's forms expose the same options, defaults and choices, and flavour IDs of
existing choices did not move when the declaration became one."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest
from django.http import QueryDict
from drf_spectacular.generators import SchemaGenerator

from builds.api.serializers import FlavourOptionsSerializer
from builds.flavours import (
    OPTION_NAMES,
    OPTIONS,
    FlavourChoices,
    FlavourInvalid,
    FlavourOptions,
    canonical_json,
    flavour_options_resolve,
)
from builds.forms import ComposerState, OptionsForm, TargetForm, flavour_state
from builds.pipeline.butane.render import FlavourConfig, render_butane
from builds.pipeline.errors import PipelineError
from tests.pipeline.test_vocabulary import ACCEPTED, REFUSED

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGz9Ff2Wf7k0vL3xQ0m8xv8Hq2n4XhE2m8mM0x2b3c4d user@host"
# Every option away from its default (private is not offered by the composer: checked apart).
EVERYTHING = {
    "channel": "beta",
    "butane_version": "1.1.0",
    "updates": False,
    "update_action": "reboot",
    "minor_pinning": False,
    "signed": False,
    "masks": ["containerd", "docker"],
    "ssh_keys": [KEY],
    "hostname": "node-1.example",
    "butane_fragment": "storage: {}\n",
    "image_format": "squashfs",
    "compression": "gzip",
}
# Options added later, left out of older documents while at their defaults.
EVERYTHING_BEFORE_PREBAKE = dict(EVERYTHING)
EVERYTHING.update(
    {
        "prebake": True,
        "flatcar_version": "4593.2.0",
        "flatcar_image_sha256": "ab" * 32,
        "prebake_ignition": True,
    }
)


def _composer_fields() -> dict[str, Any]:
    return {**TargetForm(teams=[]).fields, **OptionsForm().fields}


def test_the_api_serializer_exposes_every_option_with_its_default_and_choices() -> None:
    fields = FlavourOptionsSerializer().fields
    defaults = FlavourOptions()
    assert (
        tuple(fields) == OPTION_NAMES == tuple(f.name for f in FlavourOptions.__dataclass_fields__.values())
    )
    for option in OPTIONS:
        field = fields[option.name]
        default = field.default() if callable(field.default) else field.default
        expected = (
            list(getattr(defaults, option.name)) if option.kind in ("subset", "lines") else option.default
        )
        assert default == expected, option.name
        choices = getattr(getattr(field, "child", field), "choices", {})
        assert tuple(choices) == option.values, option.name


def test_the_composer_offers_every_option_but_private_with_the_same_defaults_and_choices() -> None:
    fields = _composer_fields()
    offered = {option.name for option in OPTIONS if option.param}
    # The team's private_artifacts setting decides privacy in the composer; every other option,
    # including any added later, must be offered there too.
    assert set(OPTION_NAMES) - offered == {"private"}
    for option in OPTIONS:
        if not option.param:
            continue
        field = fields[option.param]
        if option.kind in ("choice", "subset"):
            assert tuple(value for value, _ in field.choices if value) == option.values, option.name
        if option.kind in ("choice", "flag") and option.name != "butane_version":
            assert field.initial == option.default, option.name
    # Left empty, the spec is the newest the channel reads: the validator's default is that of lts.
    assert dict(fields["butane"].choices)[""] == "The newest the channel reads"


def test_the_validator_takes_every_declared_choice_and_nothing_else() -> None:
    for option in OPTIONS:
        if option.kind == "choice":
            for value in option.values:
                valid = {option.name: value}
                if option.name == "butane_version":
                    valid["channel"] = "stable"
                assert getattr(flavour_options_resolve(valid), option.name) == value
            with pytest.raises(FlavourInvalid) as refused:
                flavour_options_resolve({option.name: "not-declared"})
            assert f"options.{option.name}" in refused.value.errors
        elif option.kind == "subset":
            assert flavour_options_resolve({option.name: list(option.values)}) == FlavourOptions(
                **{option.name: tuple(sorted(option.values))}
            )
            with pytest.raises(FlavourInvalid):
                flavour_options_resolve({option.name: ["not-declared"]})
    with pytest.raises(FlavourInvalid) as unknown:
        flavour_options_resolve({"new_option": True})
    assert ", ".join(OPTION_NAMES) in unknown.value.errors["options.new_option"][0]


def test_composer_and_validator_agree_on_every_option_round_trip() -> None:
    stored = flavour_options_resolve(EVERYTHING).as_document()
    flavour = SimpleNamespace(
        pk="ab" * 32,
        team=SimpleNamespace(slug="blue"),
        name="web nodes",
        description="",
        arch="x86-64",
        options=stored,
        extension_versions=SimpleNamespace(select_related=lambda *_: []),
    )
    state = flavour_state(flavour)
    assert flavour_options_resolve(state.options()).as_document() == stored == EVERYTHING
    # The options step opened from that link shows the same values.
    form = OptionsForm(state.query)
    assert form.is_valid(), form.errors
    reread = ComposerState.from_request_data(QueryDict(state.urlencode()))
    assert reread.options() == state.options()


@pytest.mark.django_db
def test_the_openapi_document_lists_the_declared_options() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    properties = schema["components"]["schemas"]["FlavourOptions"]["properties"]
    assert tuple(properties) == OPTION_NAMES
    for option in OPTIONS:
        described = properties[option.name]
        assert described["description"].startswith(option.help), option.name
        if option.kind == "choice":
            (ref,) = [part["$ref"] for part in described.get("allOf", [described])]
            enum = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]["enum"]
            assert tuple(enum) == option.values, option.name


# --- flavour IDs did not move -------------------------------------------------------------------


class _Chosen:
    """An extension as it appears in the canonical document (its digests are fixed here)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def as_document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": "v1.0.0",
            "catalog": "global",
            "delivery": "bake",
            "recipe_digest": "ab" * 32,
            "pins": {self.name: "cd" * 32},
        }


def _flavour_id(
    options: FlavourOptions, *, arch: str = "x86-64", names: tuple[str, ...] = ("hello", "docker")
) -> str:
    choices = FlavourChoices(
        team=SimpleNamespace(slug="blue"),  # type: ignore[arg-type]
        name="web nodes",
        description="",
        arch=arch,
        extensions=tuple(_Chosen(name) for name in names),  # type: ignore[arg-type]
        options=options,
    )
    assert choices.flavour_id() == hashlib.sha256(canonical_json(choices.document()).encode()).hexdigest()
    return choices.flavour_id()


# Computed before the options had one declaration: these choices must keep these IDs.
@pytest.mark.parametrize(
    ("options", "known_id"),
    [
        (FlavourOptions(), "1828a4f4020926eb41a83a2e872e7d130b92a8fc61b53e8437a6a9e18d25d602"),
        (FlavourOptions(channel="lts"), "a6c47a332f18e9a2bb57565f70a0d1f624cf415c935b3f9b36a3f9ea1612d9fd"),
        (
            FlavourOptions.from_document({**EVERYTHING_BEFORE_PREBAKE, "private": True}),
            "1d5477f246935a40e2820e7682db52cb63c9837c4b1e13eead75b649903de1fa",
        ),
    ],
)
def test_known_flavour_documents_keep_their_ids(options: FlavourOptions, known_id: str) -> None:
    assert _flavour_id(options) == known_id


def test_submitted_options_are_normalised_as_before_so_ids_stay() -> None:
    submitted = {
        "masks": ["docker", "containerd", "docker"],
        "ssh_keys": [f"  {KEY} "],
        "hostname": " node-1.example ",
        "channel": "alpha",
        "butane_version": "1.1.0",
        "updates": True,
        "update_action": "reboot",
        "butane_fragment": "storage: {}\n",
    }
    options = flavour_options_resolve(submitted)
    known = "8520ef8054f2a45cfa1fbf0de952004106f4b5d1388c6718d473e76acfa226dc"
    assert _flavour_id(options, arch="arm64", names=("hello",)) == known


def test_a_flavour_stored_before_private_existed_rebuilds_to_the_same_document() -> None:
    stored = FlavourOptions().as_document()
    assert "private" not in stored
    assert FlavourOptions.from_document(stored).as_document() == stored


# --- the hostname rule: one on submit, the same in the Butane renderer --------------------------


def _renders(hostname: str) -> bool:
    try:
        render_butane(FlavourConfig(arch="x86-64", hostname=hostname))
    except PipelineError as problem:
        assert problem.code == "butane.invalid-hostname"
        return False
    return True


def _submits(hostname: str) -> bool:
    try:
        flavour_options_resolve({"hostname": hostname})
    except FlavourInvalid as refused:
        assert set(refused.errors) == {"options.hostname"}
        return False
    return True


# Submitting strips surrounding white space first (as for every text option), so compare the rest.
@pytest.mark.parametrize("hostname", [*ACCEPTED, *[h for h in REFUSED if h and h == h.strip()]])
def test_submit_and_renderer_apply_the_same_hostname_rule(hostname: str) -> None:
    assert _submits(hostname) == _renders(hostname) == (hostname in ACCEPTED)
