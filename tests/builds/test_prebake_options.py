"""The pre-baked image options: declared once, checked together, invisible to flavours without them."""

from __future__ import annotations

import pytest

from builds.flavours import FlavourInvalid, FlavourOptions, flavour_options_resolve

SHA = "ab" * 32


def test_a_prebaked_image_needs_the_flatcar_release_and_its_digest() -> None:
    with pytest.raises(FlavourInvalid) as refused:
        flavour_options_resolve({"prebake": True})
    assert set(refused.value.errors) == {"options.flatcar_version", "options.flatcar_image_sha256"}
    options = flavour_options_resolve(
        {"prebake": True, "flatcar_version": "4593.2.0", "flatcar_image_sha256": SHA}
    )
    assert (options.prebake, options.flatcar_version, options.flatcar_image_sha256) == (True, "4593.2.0", SHA)
    assert options.prebake_ignition is False


@pytest.mark.parametrize(
    ("option", "value"),
    [("flatcar_version", "latest"), ("flatcar_version", "4593.2"), ("flatcar_image_sha256", "AB" * 32),
     ("flatcar_image_sha256", "ab")],
)  # fmt: skip
def test_malformed_release_or_digest_is_refused_on_its_field(option: str, value: str) -> None:
    good = {"prebake": True, "flatcar_version": "4593.2.0", "flatcar_image_sha256": SHA}
    with pytest.raises(FlavourInvalid) as refused:
        flavour_options_resolve({**good, option: value})
    assert list(refused.value.errors) == [f"options.{option}"]


def test_flavours_without_a_prebaked_image_keep_their_document() -> None:
    document = FlavourOptions().as_document()
    assert not {"prebake", "flatcar_version", "flatcar_image_sha256", "prebake_ignition"} & set(document)
