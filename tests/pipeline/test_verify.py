"""Images merged by the real systemd-sysext into a scratch root, in a private mount namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from builds.pipeline.errors import PipelineError
from builds.pipeline.image import build_squashfs
from builds.pipeline.tree import UnpackedSource, assemble_tree
from builds.pipeline.verify import VerifyResult, host_arch, verify_with_systemd_sysext
from tests.pipeline.bake_support import HELLO_SCRIPT, make_recipe


def built_image(tmp_path: Path, arch: str = "x86-64", **recipe: object) -> Path:
    src = tmp_path / "src/bin"
    src.mkdir(parents=True)
    (src / "hello").write_bytes(HELLO_SCRIPT)
    made = make_recipe(**recipe)
    resolved = made.resolve("v1.2.3", arch)
    root = tmp_path / "root"
    assemble_tree(made, arch, [UnpackedSource(resolved[0], tmp_path / "src")], root)
    return build_squashfs(root, tmp_path / f"hello-v1.2.3-{arch}.raw")


def require_verified(result: VerifyResult) -> VerifyResult:
    if not result.verified:
        pytest.skip(f"systemd-sysext merge not possible here: {result.reason}")
    return result


def test_merged_image_runs_its_executable(tmp_path: Path) -> None:
    arch = host_arch()
    if arch is None:
        pytest.skip("this machine's architecture has no sysext name")
    image = built_image(tmp_path, arch)
    result = require_verified(
        verify_with_systemd_sysext(image, "hello", arch, run_check=["usr/bin/hello", "--version"])
    )
    assert result.merged_bin == ("hello",)
    assert result.check_output == "hello from the sysext --version\n"


def test_flatcar_release_id_merges_on_a_flatcar_like_root(tmp_path: Path) -> None:
    arch = host_arch() or "x86-64"
    image = built_image(tmp_path, arch, release_id="flatcar")
    require_verified(verify_with_systemd_sysext(image, "hello", arch))


def test_a_wrong_name_is_refused_by_systemd_sysext(tmp_path: Path) -> None:
    arch = host_arch() or "x86-64"
    image = built_image(tmp_path, arch)
    probe = verify_with_systemd_sysext(image, "hello", arch)
    require_verified(probe)
    with pytest.raises(PipelineError) as error:
        verify_with_systemd_sysext(image, "goodbye", arch)
    assert error.value.code == "verify.merge-failed"
    assert "goodbye" in error.value.message


def test_a_failing_check_program_fails(tmp_path: Path) -> None:
    arch = host_arch() or "x86-64"
    image = built_image(tmp_path, arch)
    require_verified(verify_with_systemd_sysext(image, "hello", arch))
    with pytest.raises(PipelineError) as error:
        verify_with_systemd_sysext(image, "hello", arch, run_check=["usr/bin/missing"])
    assert error.value.code == "verify.check-failed"


def test_a_foreign_architecture_is_skipped_with_a_reason(tmp_path: Path) -> None:
    other = "arm64" if host_arch() == "x86-64" else "x86-64"
    image = built_image(tmp_path, other)
    result = verify_with_systemd_sysext(image, "hello", other)
    assert result.status == "skipped"
    assert other in result.reason or "not" in result.reason
