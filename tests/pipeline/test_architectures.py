"""Images for both architectures: real static executables from Debian's cross compilers, served
by the fixture upstream, baked per arch; an ELF file for the other machine fails the bake.

The image's ELF files are read back with binutils' ``readelf`` (not the pipeline's own parser),
the transfer file's pattern is expanded the way systemd-sysupdate expands it on an arm64 node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.pipeline.bake import bake_sysext
from builds.pipeline.checksums import parse_sums
from builds.pipeline.elf import check_tree_architecture, parse_elf_header, read_elf_header
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from builds.pipeline.image import build_squashfs
from builds.pipeline.tree import UnpackedSource, assemble_tree
from builds.pipeline.verify import host_arch, verify_with_systemd_sysext
from tests.pipeline.bake_support import HELLO_SCRIPT, image_file, make_recipe
from tests.upstream import UpstreamServer, directory, executable, make_tar, readelf_machine, static_hello

UPSTREAM = "https://downloads.example.org/"
PUBLISH = "https://bakehouse.example.org/extensions/hello/"
UPSTREAM_NAMES = {"x86-64": "x86_64", "arm64": "aarch64"}  # the recipe's arches: map
READELF = {"x86-64": "Advanced Micro Devices X86-64", "arm64": "AArch64"}


def serve_hello(upstream: UpstreamServer, arch: str, binary: bytes, *, script: bool = True) -> None:
    """The ``arch`` download of hello v1.2.3: ``bin/hello`` is ``binary``, plus a shell script."""
    top = "hello-v1.2.3"
    members = [directory(top), directory(f"{top}/bin"), executable(f"{top}/bin/hello", binary)]
    if script:
        members.append(executable(f"{top}/bin/hello-script", HELLO_SCRIPT))
    upstream.add_bytes(f"/dl/v1.2.3/{top}-{UPSTREAM_NAMES[arch]}.tar.gz", make_tar(members))


def hello_recipe() -> object:
    return make_recipe(
        sources=[
            {
                "url": UPSTREAM + "{version}/hello-{version}-{arch}.tar.gz",
                "strip_components": 1,
                "install": [
                    {"from": "bin/hello", "to": "usr/bin/hello", "mode": "0755"},
                    {"from": "bin/hello-script", "to": "usr/bin/hello-script", "mode": "0755"},
                ],
            }
        ]
    )


@pytest.fixture
def fetcher(upstream: UpstreamServer, tmp_path: Path) -> Iterator[Fetcher]:
    with Fetcher(tmp_path / "cache", mirrors={UPSTREAM: upstream.url("/dl/")}, retries=0) as made:
        yield made


def sysupdate_matches(pattern: str, file_name: str, node_arch: str) -> bool:
    """Does a ``MatchPattern`` select ``file_name`` on a node of ``node_arch``? (%a is the node's
    architecture in systemd's names, @v a version of sysupdate's alphabet.)"""
    regex = re.escape(pattern).replace("%a", re.escape(node_arch)).replace("@v", r"[A-Za-z0-9.,_+-]+")
    return re.fullmatch(regex, file_name) is not None


def test_an_arm64_bake_publishes_an_arm64_image_of_aarch64_executables(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path
) -> None:
    serve_hello(upstream, "arm64", static_hello("arm64"))
    out = tmp_path / "out"
    result = bake_sysext(hello_recipe(), "v1.2.3", "arm64", out, fetcher=fetcher, publish_url=PUBLISH)  # type: ignore[arg-type]

    assert result.image_name == "hello-v1.2.3-arm64.raw"
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "hello-v1.2.3-arm64.raw", "hello.conf"]
    assert list(parse_sums((out / "SHA256SUMS").read_bytes())) == ["hello-v1.2.3-arm64.raw"]
    image = out / "hello-v1.2.3-arm64.raw"
    assert readelf_machine(image_file(image, "usr/bin/hello")) == "AArch64"
    assert image_file(image, "usr/bin/hello-script") == HELLO_SCRIPT  # scripts are no ELF: fine
    release = image_file(image, "usr/lib/extension-release.d/extension-release.hello").decode()
    assert "ARCHITECTURE=arm64\n" in release
    assert "1 ELF files for arm64" in next(s.detail for s in result.steps if s.step == "assemble")
    assert result.sources[0].url == UPSTREAM + "v1.2.3/hello-v1.2.3-aarch64.tar.gz"
    # The transfer file picks this image on an arm64 node, and not on an x86-64 one.
    lines = (out / "hello.conf").read_text().splitlines()
    pattern = next(line.removeprefix("MatchPattern=") for line in lines if line.startswith("MatchPattern="))
    assert sysupdate_matches(pattern, "hello-v1.2.3-arm64.raw", "arm64")
    assert not sysupdate_matches(pattern, "hello-v1.2.3-arm64.raw", "x86-64")


def test_the_x86_64_bake_is_unchanged(upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path) -> None:
    serve_hello(upstream, "x86-64", static_hello("x86-64"))
    result = bake_sysext(hello_recipe(), "v1.2.3", "x86-64", tmp_path / "out", fetcher=fetcher)  # type: ignore[arg-type]
    assert result.image_name == "hello-v1.2.3-x86-64.raw"
    assert readelf_machine(image_file(result.image_path, "usr/bin/hello")) == READELF["x86-64"]


@pytest.mark.parametrize(("arch", "other"), [("arm64", "x86-64"), ("x86-64", "arm64")])
def test_an_executable_for_the_other_machine_fails_the_bake(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path, arch: str, other: str
) -> None:
    serve_hello(upstream, arch, static_hello(other))  # the upstream put the wrong file under the name
    out = tmp_path / "out"
    with pytest.raises(PipelineError) as error:
        bake_sysext(hello_recipe(), "v1.2.3", arch, out, fetcher=fetcher, publish_url=PUBLISH)  # type: ignore[arg-type]
    assert error.value.code == "image.wrong-architecture"
    message = error.value.message
    machine = {"x86-64": "x86-64", "arm64": "aarch64"}
    assert f"usr/bin/hello is an ELF file for {machine[other]}" in message
    assert f"the {arch} image" in message and f"built for {machine[arch]}" in message
    assert "hello-script" not in message
    assert not out.exists() or not any(out.iterdir())  # nothing published


def test_elf_headers_are_read_from_the_bytes() -> None:
    arm = parse_elf_header(static_hello("arm64")[:20])
    x86 = parse_elf_header(static_hello("x86-64")[:20])
    assert arm is not None and (arm.machine, arm.bits, arm.little_endian) == (183, 64, True)
    assert x86 is not None and (x86.machine, x86.machine_name) == (62, "x86-64")
    # big-endian 32-bit PowerPC: e_machine read in the file's byte order
    ppc = parse_elf_header(b"\x7fELF\x01\x02\x01" + bytes(9) + b"\x00\x02\x00\x14")
    assert ppc is not None and (ppc.machine, ppc.bits, ppc.little_endian) == (20, 32, False)
    for not_elf in (HELLO_SCRIPT, b"\x7fELF stand-in\n", b"\x7fELF" + b"\x09" * 16, b""):
        assert parse_elf_header(not_elf[:20]) is None


def test_bpf_objects_belong_in_every_image_and_links_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/bpf").mkdir(parents=True)
    bpf = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x01\x00\xf7\x00" + bytes(44)  # EM_BPF (247)
    (root / "usr/lib/bpf/prog.o").write_bytes(bpf)
    outside = tmp_path / "x86-binary"
    outside.write_bytes(static_hello("x86-64"))
    (root / "usr/lib/bpf/link").symlink_to(outside)
    assert check_tree_architecture(root, "arm64") == 1
    assert read_elf_header(root / "usr/lib/bpf/prog.o") is not None


def foreign_image(tmp_path: Path, arch: str) -> Path:
    src = tmp_path / "src/bin"
    src.mkdir(parents=True)
    (src / "hello").write_bytes(static_hello(arch))
    recipe = make_recipe()
    root = tmp_path / "root"
    assemble_tree(recipe, arch, [UnpackedSource(recipe.resolve("v1.2.3", arch)[0], tmp_path / "src")], root)
    return build_squashfs(root, tmp_path / f"hello-v1.2.3-{arch}.raw")


def test_a_foreign_image_is_checked_by_systemd_sysext_up_to_its_architecture(tmp_path: Path) -> None:
    """On an x86-64 worker an arm64 image cannot be merged (systemd has no override), but the
    real systemd-sysext still mounts it and reads its extension-release: a wrong name fails."""
    if host_arch() != "x86-64":
        pytest.skip("written for x86-64 workers")
    image = foreign_image(tmp_path, "arm64")
    result = verify_with_systemd_sysext(image, "hello", "arm64", run_check=["usr/bin/hello"])
    if "systemd-sysext mounted it" not in result.reason:
        pytest.skip(f"systemd-sysext cannot mount here: {result.reason}")
    assert result.status == "skipped" and not result.verified
    assert "read extension-release.hello and refused it for its architecture alone" in result.reason
    assert "'arm64', but deployed on top of 'x86-64'" in result.reason
    assert "needs an arm64 worker" in result.reason
    with pytest.raises(PipelineError) as error:
        verify_with_systemd_sysext(image, "goodbye", "arm64")
    assert error.value.code == "verify.merge-failed"
    assert "goodbye" in error.value.message
