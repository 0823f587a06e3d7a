"""sysupdate files, checked line by line against shared/reference/sysupdate.md (written out here,
so a change to the templates cannot pass by comparing the code with itself)."""

from __future__ import annotations

import pytest

from builds.pipeline.errors import PipelineError
from builds.pipeline.sysupdate import (
    NOOP_TRANSFER,
    NOOP_TRANSFER_PATH,
    UpdateAction,
    image_file_name,
    render_service_dropin,
    render_transfer,
    transfer_file_name,
    transfer_file_path,
)

SIGNED_DOCKER = """\
[Transfer]
Verify=yes

[Source]
Type=url-file
Path=https://bake.example.com/p/extensions/docker/
MatchPattern=docker-@v-%a.raw

[Target]
Type=regular-file
Path=/opt/extensions/docker
CurrentSymlink=/etc/extensions/docker.raw
InstancesMax=3
"""


def test_transfer_file_is_the_reference_shape() -> None:
    # sysupdate appends file names to Path=, so the directory URL gets its trailing slash
    assert (
        render_transfer("docker", "https://bake.example.com/p/extensions/docker", verify=True)
        == SIGNED_DOCKER
    )
    unsigned = render_transfer("docker", "https://bake.example.com/p/extensions/docker/", verify=False)
    assert unsigned == SIGNED_DOCKER.replace("Verify=yes", "Verify=no")
    assert transfer_file_path("docker") == "/etc/sysupdate.docker.d/docker.conf"


def test_minor_pinned_transfer_follows_one_line() -> None:
    text = render_transfer("kubernetes", "https://h/extensions/kubernetes/", minor_pin="v1.32")
    assert "MatchPattern=kubernetes-v1.32.@v-%a.raw\n" in text
    assert "CurrentSymlink=/etc/extensions/kubernetes.raw\n" in text  # still loaded as kubernetes.raw
    assert transfer_file_path("kubernetes", "v1.32") == "/etc/sysupdate.kubernetes.d/kubernetes-v1.32.conf"
    assert transfer_file_name("kubernetes", "1.32") == "kubernetes-v1.32.conf"


@pytest.mark.parametrize(
    ("url", "options", "code"),
    [
        ("https://s3.example.com/b/docker/?X-Amz-Signature=abc", {}, "sysupdate.invalid-url"),
        ("https://h/extensions/docker/#top", {}, "sysupdate.invalid-url"),
        ("ftp://h/extensions/docker/", {}, "sysupdate.invalid-url"),
        ("https://h/extensions/docker/", {"instances_max": 1}, "sysupdate.invalid-instances"),
        ("https://h/extensions/docker/", {"minor_pin": "v1.32/../x"}, "sysupdate.invalid-version"),
    ],
)
def test_transfers_a_node_could_not_use_are_refused(url: str, options: dict[str, object], code: str) -> None:
    with pytest.raises(PipelineError) as caught:
        render_transfer("docker", url, **options)  # type: ignore[arg-type]
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("name", "version", "code"),
    [
        ("Docker", "1.0", "sysupdate.invalid-name"),
        ("docker/../x", "1.0", "sysupdate.invalid-name"),
        ("docker", "1.0 beta", "sysupdate.invalid-version"),
        ("docker", "1.0/../x", "sysupdate.invalid-version"),
        ("docker", "", "sysupdate.invalid-version"),
    ],
)
def test_image_names_stay_in_the_at_v_alphabet(name: str, version: str, code: str) -> None:
    with pytest.raises(PipelineError) as caught:
        image_file_name(name, version, "x86-64")
    assert caught.value.code == code
    assert image_file_name("docker", "28.0.4+build_1", "arm64") == "docker-28.0.4+build_1-arm64.raw"


def test_noop_transfer_is_the_reference_one() -> None:
    assert NOOP_TRANSFER_PATH == "/etc/sysupdate.d/noop.conf"
    assert NOOP_TRANSFER == (
        "[Source]\nType=regular-file\nPath=/\nMatchPattern=invalid@v.raw\n\n[Target]\nType=regular-file\nPath=/\n"
    )


@pytest.mark.parametrize(
    ("action", "command"),
    [
        (UpdateAction.REFRESH, "systemctl restart systemd-sysext"),
        (UpdateAction.REBOOT, "touch /run/reboot-required"),
    ],
)
def test_service_dropin_is_the_reference_one(action: UpdateAction, command: str) -> None:
    assert render_service_dropin("spin", action) == (
        "[Service]\n"
        'ExecStartPre=/usr/bin/sh -c "readlink --canonicalize /etc/extensions/spin.raw > /tmp/spin"\n'
        "ExecStartPre=/usr/lib/systemd/systemd-sysupdate -C spin update\n"
        'ExecStartPost=/usr/bin/sh -c "readlink --canonicalize /etc/extensions/spin.raw > /tmp/spin-new"\n'
        f'ExecStartPost=/usr/bin/sh -c "if ! cmp --silent /tmp/spin /tmp/spin-new; then {command}; fi"\n'
    )
