"""Rendered Butane for realistic flavours: clean transpile, valid Ignition, what a node needs."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from typing import Any

import pytest

from builds.pipeline.butane.dataurl import decode_data_url
from builds.pipeline.butane.ignition import validate_ignition
from builds.pipeline.butane.render import (
    ExtensionImage,
    FlavourConfig,
    render_butane,
    render_ignition,
)
from builds.pipeline.butane.transpile import transpile, validate_fragment
from builds.pipeline.errors import PipelineError
from builds.pipeline.sysupdate import UpdateAction

BASE = "https://bake.example.com/p/extensions"
KEYRING = bytes.fromhex("99010d04") + b"binary OpenPGP public key packets \x00\xff"


def image(
    name: str, version: str, arch: str = "x86-64", *, pin: str | None = None, sha: str = "512"
) -> ExtensionImage:
    digest = ("sha512-" + "ab" * 64) if sha == "512" else ("sha256-" + "cd" * 32)
    return ExtensionImage(
        name=name,
        version=version,
        arch=arch,
        url=f"{BASE}/{name}/{name}-{version}-{arch}.raw",
        hash=digest,
        publish_url=f"{BASE}/{name}/",
        minor_pin=pin,
    )


DOCKER = FlavourConfig(
    arch="x86-64",
    extensions=(image("docker", "28.0.4"), image("docker-compose", "2.34.0", sha="256")),
    mask_bundled=("docker", "containerd"),
    signed=True,
    public_keyring=KEYRING,
    ssh_authorized_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@example",),
    hostname="docker-01",
)
KUBERNETES = FlavourConfig(
    arch="x86-64",
    extensions=(image("kubernetes", "v1.32.2", pin="v1.32"), image("containerd", "2.0.4")),
    update_action=UpdateAction.REBOOT,
    spec_version="1.1.0",
    official_extensions=("podman",),
)
WASM = FlavourConfig(
    arch="arm64",
    extensions=(image("wasmtime", "24.0.0", "arm64"), image("spin", "3.1.2", "arm64")),
    updates=False,
)
FLAVOURS = {"docker-compose-signed": DOCKER, "kubernetes-pinned": KUBERNETES, "wasm-no-updates": WASM}


def ignition_of(flavour: FlavourConfig) -> dict[str, Any]:
    result = transpile(render_butane(flavour))
    assert result.ok, result.error
    assert result.messages == []
    assert result.config is not None
    return result.config


def files_by_path(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in cfg.get("storage", {}).get("files", [])}


def content(file: dict[str, Any]) -> bytes:
    data = decode_data_url(file["contents"]["source"])
    return gzip.decompress(data) if file["contents"].get("compression") == "gzip" else data


@pytest.mark.parametrize("name", sorted(FLAVOURS))
@pytest.mark.parametrize("spec", ["1.0.0", "1.1.0"])
def test_flavour_transpiles_cleanly_and_validates(name: str, spec: str) -> None:
    flavour = replace(FLAVOURS[name], spec_version=spec)
    cfg = ignition_of(flavour)
    expected = {"1.0.0": "3.3.0", "1.1.0": "3.4.0"}[spec]
    assert cfg["ignition"]["version"] == expected
    assert validate_ignition(cfg, expected) == []
    # byte-for-byte deterministic
    assert render_butane(flavour) == render_butane(replace(flavour))
    assert render_ignition(flavour) == render_ignition(flavour)
    assert render_ignition(flavour).endswith("}\n")


def test_default_spec_is_1_0_0_for_lts() -> None:
    text = render_butane(WASM)
    assert text.startswith("variant: flatcar\nversion: 1.0.0\n")
    assert json.loads(render_ignition(WASM))["ignition"]["version"] == "3.3.0"


def test_images_are_fetched_by_hash_and_linked() -> None:
    cfg = ignition_of(DOCKER)
    files = files_by_path(cfg)
    docker = files["/opt/extensions/docker/docker-28.0.4-x86-64.raw"]
    assert docker["contents"] == {
        "source": f"{BASE}/docker/docker-28.0.4-x86-64.raw",
        "verification": {"hash": "sha512-" + "ab" * 64},
    }
    assert files["/opt/extensions/docker-compose/docker-compose-2.34.0-x86-64.raw"]["contents"][
        "verification"
    ] == {"hash": "sha256-" + "cd" * 32}
    links = {link["path"]: link for link in cfg["storage"]["links"]}
    assert links["/etc/extensions/docker.raw"]["target"] == "/opt/extensions/docker/docker-28.0.4-x86-64.raw"
    assert links["/etc/extensions/docker-compose.raw"]["target"].endswith("docker-compose-2.34.0-x86-64.raw")
    for bundled in ("docker", "containerd"):
        mask = links[f"/etc/extensions/{bundled}-flatcar.raw"]
        assert (mask["target"], mask["overwrite"]) == ("/dev/null", True)


def test_signed_flavour_ships_both_keyrings_and_verifies() -> None:
    files = files_by_path(ignition_of(DOCKER))
    for path in ("/etc/systemd/import-pubring.gpg", "/etc/systemd/import-pubring.pgp"):
        assert content(files[path]) == KEYRING
    transfer = content(files["/etc/sysupdate.docker.d/docker.conf"]).decode()
    assert "Verify=yes\n" in transfer
    assert f"Path={BASE}/docker/\n" in transfer
    assert "MatchPattern=docker-@v-%a.raw\n" in transfer


def test_unsigned_flavour_has_no_keyring_and_does_not_verify() -> None:
    files = files_by_path(ignition_of(KUBERNETES))
    assert not any("import-pubring" in path for path in files)
    assert "Verify=no\n" in content(files["/etc/sysupdate.containerd.d/containerd.conf"]).decode()


def test_minor_pin_and_reboot_action() -> None:
    cfg = ignition_of(KUBERNETES)
    files = files_by_path(cfg)
    pinned = content(files["/etc/sysupdate.kubernetes.d/kubernetes-v1.32.conf"]).decode()
    assert "MatchPattern=kubernetes-v1.32.@v-%a.raw\n" in pinned
    assert content(files["/etc/sysupdate.d/noop.conf"]).decode().startswith("[Source]\nType=regular-file\n")
    assert content(files["/etc/flatcar/enabled-sysext.conf"]) == b"podman\n"
    units = {unit["name"]: unit for unit in cfg["systemd"]["units"]}
    assert units["systemd-sysupdate.timer"]["enabled"] is True
    dropins = {d["name"]: d["contents"] for d in units["systemd-sysupdate.service"]["dropins"]}
    assert set(dropins) == {"kubernetes.conf", "containerd.conf"}
    assert "systemd-sysupdate -C kubernetes update" in dropins["kubernetes.conf"]
    assert "then touch /run/reboot-required; fi" in dropins["kubernetes.conf"]
    refresh = render_ignition(replace(KUBERNETES, update_action=UpdateAction.REFRESH))
    assert "systemctl restart systemd-sysext" in refresh
    assert "reboot-required" not in refresh


def test_without_updates_nothing_of_sysupdate_is_shipped() -> None:
    cfg = ignition_of(WASM)
    assert "systemd" not in cfg
    assert all("sysupdate" not in path for path in files_by_path(cfg))
    assert len(cfg["storage"]["links"]) == 2


def test_user_extras_land_where_flatcar_reads_them() -> None:
    cfg = ignition_of(DOCKER)
    assert cfg["passwd"]["users"] == [
        {"name": "core", "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOps ops@example"]}
    ]
    hostname = files_by_path(cfg)["/etc/hostname"]
    assert (content(hostname), hostname["overwrite"], hostname["mode"]) == (b"docker-01\n", True, 0o644)


FRAGMENT = """\
storage:
  files:
    - path: /etc/motd.d/team.conf
      mode: 0640
      contents:
        inline: "Welcome <team> & friends: yes\\n"
systemd:
  units:
    - name: hello.service
      enabled: yes
      contents: |
        [Service]
        ExecStart=/usr/bin/echo hello
        [Install]
        WantedBy=multi-user.target
    - name: systemd-sysupdate.service
      dropins:
        - name: 90-proxy.conf
          contents: |
            [Service]
            Environment=HTTPS_PROXY=http://proxy:3128
kernel_arguments:
  should_exist:
    - console=ttyS0
"""


def test_fragment_is_merged_with_its_typed_values() -> None:
    flavour = replace(DOCKER, fragment=FRAGMENT)
    cfg = ignition_of(flavour)
    motd = files_by_path(cfg)["/etc/motd.d/team.conf"]
    assert motd["mode"] == 0o640
    assert content(motd) == b"Welcome <team> & friends: yes\n"
    units = {unit["name"]: unit for unit in cfg["systemd"]["units"]}
    assert units["hello.service"]["enabled"] is True
    assert [d["name"] for d in units["systemd-sysupdate.service"]["dropins"]] == [
        "docker.conf",
        "docker-compose.conf",
        "90-proxy.conf",
    ]
    assert cfg["kernelArguments"] == {"shouldExist": ["console=ttyS0"]}
    assert render_butane(flavour) == render_butane(flavour)


@pytest.mark.parametrize(
    ("fragment", "named"),
    [
        (
            "storage:\n  files:\n    - path: /etc/hostname\n      contents:\n        inline: x\n",
            "/etc/hostname",
        ),
        (
            "storage:\n  links:\n    - path: /etc/extensions/docker-flatcar.raw\n      target: /opt/x\n",
            "/etc/extensions/docker-flatcar.raw",
        ),
        (
            "storage:\n  directories:\n    - path: /opt/extensions/docker/docker-28.0.4-x86-64.raw\n",
            "/opt/extensions/docker/docker-28.0.4-x86-64.raw",
        ),
        (
            "systemd:\n  units:\n    - name: systemd-sysupdate.timer\n      enabled: false\n",
            "systemd-sysupdate.timer",
        ),
        (
            "systemd:\n  units:\n    - name: systemd-sysupdate.service\n      dropins:\n"
            '        - name: docker.conf\n          contents: "[Service]\\n"\n',
            "docker.conf",
        ),
        ("passwd:\n  users:\n    - name: core\n      shell: /bin/zsh\n", "core"),
    ],
)
def test_fragment_conflicts_are_errors_naming_the_path(fragment: str, named: str) -> None:
    with pytest.raises(PipelineError) as caught:
        render_butane(replace(DOCKER, fragment=fragment))
    assert caught.value.code == "butane.fragment-conflict"
    assert named in caught.value.message


def test_fragment_clashing_with_a_unit_file_fails_after_merge() -> None:
    fragment = (
        "storage:\n  files:\n    - path: /etc/systemd/system/hello.service\n"
        "      contents:\n        inline: x\n"
        "systemd:\n  units:\n    - name: hello.service\n"
        '      contents: "[Service]\\nExecStart=/bin/true\\n"\n'
    )
    with pytest.raises(PipelineError) as caught:
        render_butane(replace(WASM, fragment=fragment))
    assert "path conflicts with systemd unit or dropin" in caught.value.message


def test_invalid_fragment_is_refused_with_positions() -> None:
    fragment = "storage:\n  files:\n    - path: etc/relative\n      contnets: {}\n"
    with pytest.raises(PipelineError) as caught:
        render_butane(replace(WASM, fragment=fragment))
    assert caught.value.code == "butane.invalid-fragment"
    assert "path not absolute" in caught.value.message
    messages = validate_fragment(fragment, "1.0.0")
    by_text = {m.text: m for m in messages}
    assert by_text["Unused key contnets"].as_dict() == {
        "kind": "warning",
        "path": "$.storage.files.0.contnets",
        "line": 4,
        "column": 7,
        "message": "Unused key contnets",
    }
    assert (by_text["path not absolute"].line, by_text["path not absolute"].column) == (3, 13)


def test_validate_fragment_version_rules() -> None:
    assert validate_fragment("", "1.0.0") == []
    assert validate_fragment("variant: flatcar\nversion: 1.1.0\n", "1.1.0") == []
    local = "systemd:\n  units:\n    - name: a.service\n      contents_local: a.service\n"
    assert [m.text for m in validate_fragment(local, "1.0.0")] == ["Unused key contents_local"]
    assert [m.text for m in validate_fragment(local, "1.1.0")] == [
        "local file paths are relative to a files directory that must be specified with -d/--files-dir"
    ]
    mismatch = validate_fragment("version: 1.1.0\n", "1.0.0")
    assert mismatch and "1.0.0" in mismatch[0].text
    broken = validate_fragment("storage: [\n", "1.0.0")
    assert broken[0].kind == "error" and broken[0].line is not None


@pytest.mark.parametrize(
    "url",
    [
        f"{BASE}/docker/docker-28.0.4-x86-64.raw?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
        f"{BASE}/docker/docker-28.0.4-x86-64.raw?AWSAccessKeyId=AK&Expires=1700000000&Signature=x",
        f"{BASE}/docker/docker-28.0.4-x86-64.raw?sv=2022&se=2026-01-01&sig=abc",
        f"{BASE}/docker/docker-28.0.4-x86-64.raw?X-Goog-Signature=abc",
    ],
)
def test_presigned_urls_are_refused(url: str) -> None:
    ext = replace(DOCKER.extensions[0], url=url)
    with pytest.raises(PipelineError) as caught:
        render_butane(replace(DOCKER, extensions=(ext,)))
    assert caught.value.code == "butane.expiring-url"
    publish = replace(DOCKER.extensions[0], publish_url=f"{BASE}/docker/?X-Amz-Expires=300")
    with pytest.raises(PipelineError):
        render_butane(replace(DOCKER, extensions=(publish,)))


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"signed": True, "public_keyring": b""}, "butane.missing-keyring"),
        ({"public_keyring": b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n"}, "butane.armored-keyring"),
        ({"arch": "arm64"}, "butane.arch-mismatch"),
        ({"spec_version": "1.2.0"}, "butane.invalid-spec-version"),
        ({"mask_bundled": ("podman",)}, "butane.invalid-mask"),
        ({"hostname": "bad host"}, "butane.invalid-hostname"),
        ({"ssh_authorized_keys": ("ssh-ed25519 A\nssh-rsa B",)}, "butane.invalid-ssh-key"),
        ({"extensions": (image("docker", "1"), image("docker", "2"))}, "butane.duplicate-extension"),
        ({"extensions": (replace(image("docker", "1"), hash="sha256-abc"),)}, "butane.invalid-hash"),
        ({"extensions": (replace(image("docker", "1"), url="ftp://host/x.raw"),)}, "butane.invalid-url"),
        ({"extensions": (image("Docker!", "1"),)}, "sysupdate.invalid-name"),
    ],
)
def test_bad_flavour_input_is_a_clear_error(change: dict[str, Any], code: str) -> None:
    with pytest.raises(PipelineError) as caught:
        render_butane(replace(DOCKER, **change))
    assert caught.value.code == code
    assert caught.value.message


def test_fragment_may_not_replace_the_whole_config() -> None:
    fragment = "ignition:\n  config:\n    replace:\n      source: https://config.example.com/other.ign\n"
    with pytest.raises(PipelineError) as caught:
        render_butane(replace(WASM, fragment=fragment))
    assert "ignition.config.replace" in caught.value.message
    merged = "ignition:\n  config:\n    merge:\n      - source: https://config.example.com/extra.ign\n"
    cfg = ignition_of(replace(WASM, fragment=merged))
    assert cfg["ignition"]["config"]["merge"] == [{"source": "https://config.example.com/extra.ign"}]
