"""Composing flavours through the API: canonical IDs, revisions and validation per field."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from builds.models import Flavour
from catalog.models import Extension, ExtensionVersion, UpstreamDigest
from tests.builds.catalog_fixtures import Cast, flavour_payload

pytestmark = pytest.mark.django_db


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def post_flavour(user: Any, **overrides: Any) -> Any:
    return client_for(user).post("/api/flavours/", flavour_payload(**overrides), format="json")


def test_created_flavour_id_is_sha256_of_its_canonical_document(small_catalog: Cast) -> None:
    response = post_flavour(small_catalog.teammate)
    assert response.status_code == 201, response.json()
    body = response.json()
    flavour = Flavour.objects.get(pk=body["id"])
    assert body["id"] == hashlib.sha256(flavour.canonical.encode()).hexdigest()
    document = json.loads(flavour.canonical)
    assert document["extensions"] == body["extensions"]
    (hello,) = document["extensions"]
    # Digests are part of the document: recipe digest and the pins for the flavour's arch.
    pinned = UpstreamDigest.objects.get(
        version__extension__name="hello", version__version="v1.0.0", arch="x86-64"
    )
    assert hello["pins"] == {"hello": pinned.sha256}
    chosen = ExtensionVersion.objects.get(extension__name="hello", version="v1.0.0")
    assert hello["recipe_digest"] == chosen.recipe().image_digest("v1.0.0")
    assert document["options"]["butane_version"] == "1.0.0"  # defaults are filled in, not implied


def test_same_choices_give_the_same_flavour(small_catalog: Cast) -> None:
    first = post_flavour(
        small_catalog.teammate,
        extensions=[
            {"name": "hello", "version": "v1.0.0"},
            {"name": "hello-tools", "version": "v1.0.0"},
        ],
    )
    again = post_flavour(
        small_catalog.owner,
        extensions=[
            {"name": "hello-tools", "version": "v1.0.0"},
            {"name": "hello", "version": "v1.0.0"},
        ],
        options={"butane_version": "1.0.0"},
    )
    assert first.status_code == 201
    assert again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert Flavour.objects.count() == 1


@pytest.mark.parametrize(
    "change",
    [
        {"arch": "arm64"},
        {"name": "other name"},
        {"options": {"hostname": "node-1"}},
        {"options": {"update_action": "reboot"}},
        {"options": {"updates": False}},
        {"options": {"channel": "beta"}},
    ],
)
def test_any_changed_choice_changes_the_id(small_catalog: Cast, change: dict[str, Any]) -> None:
    base = post_flavour(small_catalog.teammate).json()["id"]
    changed = post_flavour(small_catalog.teammate, **change)
    assert changed.status_code == 201, changed.json()
    assert changed.json()["id"] != base


def test_a_new_upstream_pin_changes_the_id(small_catalog: Cast) -> None:
    base = post_flavour(small_catalog.teammate).json()["id"]
    UpstreamDigest.objects.filter(version__extension__name="hello", arch="x86-64").update(sha256="ab" * 32)
    assert post_flavour(small_catalog.teammate).json()["id"] != base


def test_a_new_catalog_version_leaves_existing_flavours_alone(small_catalog: Cast) -> None:
    base = post_flavour(small_catalog.teammate).json()["id"]
    hello = Extension.objects.get(name="hello")
    hello.recipe_text = hello.recipe_text.replace("versions:\n", "versions:\n  v9.9.9: {}\n")
    hello.recipe_digest = hello.recipe().digest
    hello.save()
    assert "v9.9.9" in hello.recipe().versions
    again = post_flavour(small_catalog.teammate)
    assert again.status_code == 201
    assert again.json()["id"] == base


def test_a_changed_install_map_changes_the_id(small_catalog: Cast) -> None:
    base = post_flavour(small_catalog.teammate).json()["id"]
    hello = Extension.objects.get(name="hello")
    hello.recipe_text = hello.recipe_text.replace("to: usr/bin/hello,", "to: usr/bin/hello2,")
    hello.save()
    assert post_flavour(small_catalog.teammate).json()["id"] != base


def test_editing_makes_a_new_revision_and_keeps_the_old_one(small_catalog: Cast) -> None:
    client = client_for(small_catalog.teammate)
    first = post_flavour(small_catalog.teammate).json()
    edited = client.post(
        "/api/flavours/",
        flavour_payload(options={"hostname": "edited"}, revision_of=first["id"]),
        format="json",
    ).json()
    assert edited["id"] != first["id"]
    assert edited["revision_of"] == first["id"]
    assert edited["lineage"] == first["lineage"]
    assert edited["revision"] == first["revision"] + 1
    assert client.get(f"/api/flavours/{first['id']}/").status_code == 200


def test_deprecated_version_stays_usable_in_a_revision_of_a_flavour_that_had_it(small_catalog: Cast) -> None:
    old = ExtensionVersion.objects.get(extension__name="hello", version="v0.9.0")
    old.deprecated = False
    old.save()
    first = post_flavour(small_catalog.teammate, extensions=[{"name": "hello", "version": "v0.9.0"}]).json()
    old.deprecated = True
    old.save()
    fresh = post_flavour(
        small_catalog.teammate, name="fresh", extensions=[{"name": "hello", "version": "v0.9.0"}]
    )
    assert fresh.status_code == 400
    revision = post_flavour(
        small_catalog.teammate,
        extensions=[{"name": "hello", "version": "v0.9.0"}],
        options={"hostname": "n2"},
        revision_of=first["id"],
    )
    assert revision.status_code == 201, revision.json()


def _fields(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid"
    return body["fields"]


@pytest.mark.parametrize(
    ("extensions", "field", "fragment"),
    [
        ([{"name": "nope", "version": "v1.0.0"}], "extensions[0]", "Unknown extension"),
        ([{"name": "hello", "version": "v9.9.9"}], "extensions[0]", "no version"),
        ([{"name": "hello", "version": "v2.0.0"}], "extensions[0]", "not approved"),
        ([{"name": "hello", "version": "v0.9.0"}], "extensions[0]", "deprecated"),
        ([{"name": "wave", "version": "v1.0.0"}], "extensions[0]", "source build"),
        ([{"name": "secret", "version": "v1.0.0"}], "extensions[0]", "Unknown extension"),
        ([{"name": "hello-tools", "version": "v1.0.0"}], "extensions", "requires hello"),
        (
            [{"name": "hello", "version": "v1.0.0"}, {"name": "rival", "version": "v1.0.0"}],
            "extensions",
            "conflict",
        ),
        (
            [{"name": "hello", "version": "v1.0.0"}, {"name": "hello", "version": "v1.0.0"}],
            "extensions[1]",
            "more than once",
        ),
        ([{"name": "hello", "version": "v1.0.0", "extra": 1}], "extensions[0]", "exactly"),
        ([], "extensions", "at least one"),
    ],
)
def test_extension_problems_are_reported_per_field(
    small_catalog: Cast, extensions: list[Any], field: str, fragment: str
) -> None:
    fields = _fields(post_flavour(small_catalog.teammate, extensions=extensions))
    assert fragment in " ".join(fields[field])
    assert not Flavour.objects.exists()


def test_unsupported_arch_is_reported_for_the_extension_and_the_flavour(small_catalog: Cast) -> None:
    fields = _fields(
        post_flavour(
            small_catalog.teammate,
            arch="arm64",
            extensions=[
                {"name": "x86only", "version": "v1.0.0"},
            ],
        )
    )
    assert "does not support arm64" in fields["extensions[0]"][0]
    fields = _fields(post_flavour(small_catalog.teammate, arch="riscv64"))
    assert "Unsupported architecture" in fields["arch"][0]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"butane_version": "9.9.9"}, "options.butane_version"),
        ({"channel": "edge"}, "options.channel"),
        ({"update_action": "explode"}, "options.update_action"),
        ({"updates": "yes"}, "options.updates"),
        ({"masks": ["podman"]}, "options.masks"),
        ({"ssh_keys": ["not a key"]}, "options.ssh_keys[0]"),
        ({"hostname": "Bad_Host!"}, "options.hostname"),
        ({"hostnmae": "typo"}, "options.hostnmae"),
        ("not an object", "options"),
    ],
)
def test_option_problems_are_reported_per_field(small_catalog: Cast, options: Any, field: str) -> None:
    fields = _fields(post_flavour(small_catalog.teammate, options=options))
    assert field in fields, fields


def test_lts_channel_refuses_a_butane_spec_its_ignition_cannot_read(small_catalog: Cast) -> None:
    options = {"channel": "lts", "butane_version": "1.1.0"}
    fields = _fields(post_flavour(small_catalog.teammate, options=options))
    assert "Flatcar lts reads Butane 1.0.0 at most" in fields["options.butane_version"][0]

    kept = post_flavour(small_catalog.teammate, options={"channel": "lts"})
    assert kept.status_code == 201, kept.json()
    assert kept.json()["options"]["channel"] == "lts"
    assert kept.json()["options"]["butane_version"] == "1.0.0"


def test_unknown_top_level_field_is_an_error_not_ignored(small_catalog: Cast) -> None:
    fields = _fields(post_flavour(small_catalog.teammate, architecture="x86-64"))
    assert fields == {"architecture": ["Unknown field."]}


def test_several_problems_are_reported_together(small_catalog: Cast) -> None:
    fields = _fields(post_flavour(small_catalog.teammate, name="", arch="sparc", options={"hostname": "_"}))
    assert {"name", "arch", "options.hostname"} <= set(fields)


def test_valid_options_are_kept(small_catalog: Cast) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGz9Ff2Wf7k0vL3xQ0m8xv8Hq2n4XhE2m8mM0x2b3c4d user@host"
    response = post_flavour(
        small_catalog.teammate,
        options={"ssh_keys": [key], "hostname": "node-1.example", "masks": ["docker"], "updates": False},
    )
    assert response.status_code == 201, response.json()
    options = response.json()["options"]
    assert options["ssh_keys"] == [key]
    assert options["hostname"] == "node-1.example"
    assert options["masks"] == ["docker"]
    assert options["updates"] is False


def test_team_private_extension_is_usable_by_its_team(small_catalog: Cast) -> None:
    response = post_flavour(small_catalog.teammate, extensions=[{"name": "bluetool", "version": "v1.0.0"}])
    assert response.status_code == 201, response.json()
    assert response.json()["extensions"][0]["catalog"] == "blue"


@pytest.mark.parametrize(
    ("fragment", "reason"),
    [
        ("storage:\n  files:\n    - path: relative/path\n", "absolute"),
        ("storage: [not, a, mapping]\n", "cannot unmarshal"),
        ("variant: fcos\nversion: 1.0.0\n", "variant must be flatcar"),
        (
            "storage:\n  luks:\n    - name: x\n      device: /dev/sda\n      clevis:\n        tpm2: true\n",
            "clevis",
        ),
    ],
)
def test_invalid_butane_fragment_is_a_field_error(small_catalog: Cast, fragment: str, reason: str) -> None:
    fields = _fields(post_flavour(small_catalog.teammate, options={"butane_fragment": fragment}))
    assert "options.butane_fragment" in fields, fields
    assert reason.lower() in " ".join(fields["options.butane_fragment"]).lower()


def test_fragment_that_collides_with_a_generated_file_is_refused_on_submit(small_catalog: Cast) -> None:
    fragment = "storage:\n  files:\n    - path: /etc/hostname\n      contents:\n        inline: other\n"
    fields = _fields(
        post_flavour(small_catalog.teammate, options={"hostname": "node-1", "butane_fragment": fragment})
    )
    assert "/etc/hostname" in " ".join(fields["options.butane_fragment"])


def test_valid_fragment_is_kept(small_catalog: Cast) -> None:
    fragment = (
        "storage:\n  files:\n    - path: /etc/motd.d/bakehouse.conf\n      contents:\n        inline: hi\n"
    )
    response = post_flavour(small_catalog.teammate, options={"butane_fragment": fragment})
    assert response.status_code == 201, response.json()
    assert response.json()["options"]["butane_fragment"] == fragment
