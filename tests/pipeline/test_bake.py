"""bake_sysext end to end: fixture upstream on 127.0.0.1 -> image, SHA256SUMS, signature, transfer."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.pipeline.archive import UnpackLimits
from builds.pipeline.bake import BakeResult, bake_sysext, image_cache_key, minor_pin
from builds.pipeline.checksums import parse_sums, sha256_file
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from builds.pipeline.recipe import Recipe
from builds.pipeline.signing import GpgSigner, verify_like_systemd
from builds.pipeline.sysupdate import render_transfer
from builds.pipeline.verify import host_arch
from tests.pipeline.bake_support import HELLO_SCRIPT, image_file, image_listing, make_recipe, make_signing_key
from tests.upstream import (
    Member,
    UpstreamServer,
    device,
    directory,
    executable,
    fifo,
    file,
    hardlink,
    make_tar,
    make_zip,
    setuid_file,
    symlink,
)

UPSTREAM = "https://downloads.example.org/"
PUBLISH = "https://bakehouse.example.org/extensions/hello/"


def hello_members(version: str = "v1.2.3", extra: tuple[Member, ...] = ()) -> list[Member]:
    top = f"hello-{version}"
    return [
        directory(top),
        directory(f"{top}/bin"),
        executable(f"{top}/bin/hello", HELLO_SCRIPT),
        file(f"{top}/README", b"docs"),
        *extra,
    ]


def serve(upstream: UpstreamServer, version: str, arch: str, data: bytes, suffix: str = "tar.gz") -> str:
    return upstream.add_bytes(f"/dl/{version}/hello-{version}-{arch}.{suffix}", data)


@pytest.fixture
def fetcher(upstream: UpstreamServer, tmp_path: Path) -> Iterator[Fetcher]:
    with Fetcher(tmp_path / "cache", mirrors={UPSTREAM: upstream.url("/dl/")}, retries=0) as made:
        yield made


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgSigner]:
    key, phrase = make_signing_key(tmp_path_factory.mktemp("key"))
    with GpgSigner(key, phrase) as made:
        yield made


def bake(recipe: Recipe, out: Path, fetcher: Fetcher, arch: str = "x86-64", **options: object) -> BakeResult:
    return bake_sysext(recipe, "v1.2.3", arch, out, fetcher=fetcher, **options)  # type: ignore[arg-type]


def test_full_bake_publishes_signed_verifiable_artifacts(
    upstream: UpstreamServer, fetcher: Fetcher, signer: GpgSigner, tmp_path: Path
) -> None:
    archive = make_tar(hello_members())
    serve(upstream, "v1.2.3", "x86_64", archive)
    steps: list[str] = []
    out = tmp_path / "out"
    result = bake(
        make_recipe(),
        out,
        fetcher,
        signer=signer,
        publish_url=PUBLISH,
        verify=True,
        progress=lambda step, message, fraction: steps.append(step) if fraction >= 1.0 else None,
    )
    image = out / "hello-v1.2.3-x86-64.raw"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["hello-v1.2.3-x86-64.raw", "SHA256SUMS", "SHA256SUMS.gpg", "hello.conf"]
    )
    assert result.image_path == image and result.image_sha256 == sha256_file(image)
    assert (out / "SHA256SUMS").read_text() == f"{result.image_sha256}  hello-v1.2.3-x86-64.raw\n"
    keyring = tmp_path / "pubring.gpg"
    keyring.write_bytes(signer.export_public_keyring())
    verify_like_systemd(out / "SHA256SUMS", out / "SHA256SUMS.gpg", keyring)
    assert (out / "hello.conf").read_text() == render_transfer("hello", PUBLISH, verify=True)
    assert image_file(image, "usr/bin/hello") == HELLO_SCRIPT
    release = image_file(image, "usr/lib/extension-release.d/extension-release.hello").decode()
    assert release == "ID=_any\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n"
    assert "usr/lib/systemd/system/multi-user.target.d/10-hello.conf" in image_listing(image)
    assert "README" not in " ".join(image_listing(image))  # only what the install rules name
    # what was built from, and how
    (source,) = result.sources
    assert source.url == UPSTREAM + "v1.2.3/hello-v1.2.3-x86_64.tar.gz"
    assert source.final_url == upstream.url("/dl/v1.2.3/hello-v1.2.3-x86_64.tar.gz")
    assert source.sha256 == hashlib.sha256(archive).hexdigest()
    assert result.tool_versions["mksquashfs"]
    assert steps[:5] == ["fetch", "unpack", "assemble", "image", "audit"]
    assert steps[-3:] == ["verify", "checksums", "publish"]
    assert [s.step for s in result.steps] == steps[:-1]  # the image's steps; publishing is the CLI's
    assert result.verification is not None
    if host_arch() == "x86-64":
        assert result.verification.status in {"verified", "skipped"}
        if result.verification.verified:
            assert "hello" in result.verification.merged_bin


def test_two_bakes_are_byte_identical_with_equal_cache_keys(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    first = bake(make_recipe(), tmp_path / "a", fetcher)
    second = bake(make_recipe(), tmp_path / "b", fetcher, work_dir=tmp_path)
    assert first.image_path.read_bytes() == second.image_path.read_bytes()
    assert first.cache_key == second.cache_key
    assert upstream.hits("/dl/v1.2.3/hello-v1.2.3-x86_64.tar.gz") == 1  # the cache served the second
    xz = bake(make_recipe(), tmp_path / "c", fetcher, compression="xz")
    assert xz.cache_key != first.cache_key and xz.image_sha256 != first.image_sha256


def test_cache_key_covers_what_shapes_the_image() -> None:
    base = dict(
        recipe_digest="r" * 64,
        version="v1",
        arch="x86-64",
        source_digests={"a": "1" * 64},
        image_format="squashfs",
        compression="gzip",
        tools={"mksquashfs": "4.5.1", "gpg": "2.2.40"},
    )
    key = image_cache_key(**base)  # type: ignore[arg-type]
    for change in (
        {"recipe_digest": "s" * 64},
        {"version": "v2"},
        {"arch": "arm64"},
        {"source_digests": {"a": "2" * 64}},
        {"compression": "zstd"},
        {"tools": {"mksquashfs": "4.6.1", "gpg": "2.2.40"}},
    ):
        assert image_cache_key(**{**base, **change}) != key  # type: ignore[arg-type]
    # a signing tool update does not change image bytes
    assert image_cache_key(**{**base, "tools": {"mksquashfs": "4.5.1", "gpg": "2.4"}}) == key  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("suffix", "archive", "data"),
    [
        ("tar.xz", "tar.xz", make_tar(hello_members(), "xz")),
        ("zip", "zip", make_zip(hello_members())),
        ("tar.zst", "tar.zst", make_tar(hello_members(), "zst")),
    ],
)
def test_archive_kinds(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path, suffix: str, archive: str, data: bytes
) -> None:
    serve(upstream, "v1.2.3", "x86_64", data, suffix)
    source = {
        "url": UPSTREAM + "{version}/hello-{version}-{arch}." + suffix,
        "strip_components": 1,
        "install": [{"from": "bin/hello", "to": "usr/bin/hello", "mode": "0755"}],
    }
    result = bake(make_recipe(sources=[source]), tmp_path / "out", fetcher)
    assert image_file(result.image_path, "usr/bin/hello") == HELLO_SCRIPT
    assert image_listing(result.image_path)["usr/bin/hello"] == "-rwxr-xr-x"


def test_single_binary_behind_redirects(upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path) -> None:
    upstream.add_bytes("/files/hello-static", HELLO_SCRIPT)
    upstream.add_redirect_chain("/dl/v1.2.3/hello-x86_64", upstream.url("/files/hello-static"), hops=3)
    source = {
        "url": UPSTREAM + "{version}/hello-{arch}",
        "install": [{"to": "usr/bin/hello", "mode": "0755"}],
    }
    result = bake(make_recipe(sources=[source]), tmp_path / "out", fetcher)
    assert image_file(result.image_path, "usr/bin/hello") == HELLO_SCRIPT
    assert result.sources[0].final_url == upstream.url("/files/hello-static")


def test_minor_pinned_transfer_file(upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    result = bake(make_recipe(minor_pinning=True), tmp_path / "out", fetcher, publish_url=PUBLISH)
    assert result.transfer_files == ("hello.conf", "hello-v1.2.conf")
    pinned = (tmp_path / "out/hello-v1.2.conf").read_text()
    assert "MatchPattern=hello-v1.2.@v-%a.raw" in pinned and "Verify=no" in pinned
    assert minor_pin("1.32.0") == "1.32"


def test_signed_minor_pin_without_v_verifies_both_transfers(
    upstream: UpstreamServer, fetcher: Fetcher, signer: GpgSigner, tmp_path: Path
) -> None:
    serve(upstream, "1.2.3", "x86_64", make_tar(hello_members("1.2.3")))
    recipe = make_recipe(minor_pinning=True, versions={"1.2.3": {}})
    out = tmp_path / "out"
    result = bake_sysext(recipe, "1.2.3", "x86-64", out, fetcher=fetcher, signer=signer, publish_url=PUBLISH)
    # sysupdate.md: a minor-pinned transfer is published as NAME-vX.Y.conf, whatever the spelling
    assert result.transfer_files == ("hello.conf", "hello-v1.2.conf")
    pinned = (out / "hello-v1.2.conf").read_text()
    assert "MatchPattern=hello-1.2.@v-%a.raw\n" in pinned  # matches hello-1.2.3-x86-64.raw
    for name in result.transfer_files:
        assert "[Transfer]\nVerify=yes\n" in (out / name).read_text()  # signed: nodes check the signature


def test_other_arch_joins_the_served_directory(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    serve(upstream, "v1.2.3", "aarch64", make_tar(hello_members()))
    out = tmp_path / "out"
    first = bake(make_recipe(), out, fetcher)
    second = bake(make_recipe(), out, fetcher, arch="arm64")
    assert parse_sums((out / "SHA256SUMS").read_bytes()) == {
        first.image_name: first.image_sha256,
        second.image_name: second.image_sha256,
    }
    release = image_file(second.image_path, "usr/lib/extension-release.d/extension-release.hello")
    assert b"ARCHITECTURE=arm64" in release


# --------------------------------------------------------------------------------------------
# Failures: a stable code each, and nothing new in the output directory


def snapshot(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_wrong_pin_fails_and_leaves_nothing(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    out = tmp_path / "out"
    with pytest.raises(PipelineError) as error:
        bake(make_recipe(), out, fetcher, pins={"hello-{version}-{arch}.tar.gz": "0" * 64})
    assert error.value.code == "fetch.sha256-mismatch"
    assert not out.exists()


def test_a_full_disk_fails_with_a_retryable_code_and_keeps_the_previous_publication(
    upstream: UpstreamServer,
    fetcher: Fetcher,
    signer: GpgSigner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from builds.pipeline import bake as bake_module

    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    out = tmp_path / "out"
    bake(make_recipe(), out, fetcher, signer=signer, publish_url=PUBLISH)
    before = snapshot(out)

    write = bake_module.DirectoryStore._write

    def disk_full(store: object, key: str, fill: object) -> object:
        if key.endswith("SHA256SUMS"):
            raise OSError(errno.ENOSPC, "No space left on device", key)
        return write(store, key, fill)  # type: ignore[arg-type]

    monkeypatch.setattr(bake_module.DirectoryStore, "_write", disk_full)
    with pytest.raises(PipelineError) as error:
        bake(make_recipe(), out, fetcher, arch="x86-64", signer=signer, publish_url=PUBLISH)
    assert error.value.code == "bake.file-error"
    assert error.value.retryable  # the machine's trouble: a later attempt may succeed
    assert "No space left on device" in error.value.message and "free space" in error.value.message
    assert snapshot(out) == before


def test_a_failure_keeps_the_previous_publication(
    upstream: UpstreamServer, fetcher: Fetcher, signer: GpgSigner, tmp_path: Path
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    out = tmp_path / "out"
    bake(make_recipe(), out, fetcher, signer=signer, publish_url=PUBLISH)
    before = snapshot(out)
    serve(upstream, "v1.2.3", "aarch64", make_tar(hello_members(extra=(fifo("hello-v1.2.3/bin/pipe"),))))
    with pytest.raises(PipelineError):
        bake(make_recipe(), out, fetcher, arch="arm64", signer=signer, publish_url=PUBLISH)
    assert snapshot(out) == before


def test_an_unsigned_bake_cannot_leave_a_stale_signature(
    upstream: UpstreamServer, fetcher: Fetcher, signer: GpgSigner, tmp_path: Path
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    serve(upstream, "v1.2.3", "aarch64", make_tar(hello_members()))
    out = tmp_path / "out"
    bake(make_recipe(), out, fetcher, signer=signer, publish_url=PUBLISH)
    before = snapshot(out)
    with pytest.raises(PipelineError) as error:
        bake(make_recipe(), out, fetcher, arch="arm64", publish_url=PUBLISH)
    assert error.value.code == "bake.signature-required"
    assert "--sign-key" in error.value.message
    assert snapshot(out) == before
    assert upstream.hits("/dl/v1.2.3/hello-v1.2.3-aarch64.tar.gz") == 0  # refused before downloading
    signed = bake(make_recipe(), out, fetcher, arch="arm64", signer=signer, publish_url=PUBLISH)
    keyring = tmp_path / "pubring.gpg"
    keyring.write_bytes(signer.export_public_keyring())
    verify_like_systemd(out / "SHA256SUMS", out / "SHA256SUMS.gpg", keyring)
    assert len(parse_sums((out / "SHA256SUMS").read_bytes())) == 2 and signed.signature_path


HOSTILE = [
    ("absolute-path", [file("/etc/cron.d/evil", b"x")], "archive.absolute-path"),
    ("dot-dot", [file("hello-v1.2.3/../../evil", b"x")], "archive.path-traversal"),
    ("hard-link", [hardlink("hello-v1.2.3/bin/again", "hello-v1.2.3/bin/hello")], "archive.hard-link"),
    ("device", [device("hello-v1.2.3/bin/null")], "archive.special-file"),
    ("fifo", [fifo("hello-v1.2.3/bin/pipe")], "archive.special-file"),
    ("escaping-symlink", [symlink("hello-v1.2.3/bin/up", "../../../../etc")], "archive.unsafe-symlink"),
    ("absolute-symlink", [symlink("hello-v1.2.3/bin/shadow", "/etc/shadow")], "archive.unsafe-symlink"),
]


HOSTILE_CASES = [
    pytest.param(kind, members, code, id=f"{kind}-{name}")
    for kind in ("tar.gz", "zip")
    for name, members, code in HOSTILE
    if not (kind == "zip" and code == "archive.hard-link")  # zip has no hard links
]


@pytest.mark.parametrize(("kind", "members", "code"), HOSTILE_CASES)
def test_hostile_archives_fail_with_their_own_code(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path, kind: str, members: list[Member], code: str
) -> None:
    extra = tuple(members)
    data = make_tar(hello_members(extra=extra)) if kind == "tar.gz" else make_zip(hello_members(extra=extra))
    serve(upstream, "v1.2.3", "x86_64", data, kind)
    source = {
        "url": UPSTREAM + "{version}/hello-{version}-{arch}." + kind,
        "strip_components": 1,
        "install": [{"from": "bin/hello", "to": "usr/bin/hello"}],
    }
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PipelineError) as error:
        bake(make_recipe(sources=[source]), out, fetcher)
    assert error.value.code == code
    assert "hello v1.2.3 x86-64" in error.value.message  # names the source, not a cache digest
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("members", "limits", "code"),
    [
        pytest.param(
            [directory("hello-v1.2.3"), file("hello-v1.2.3/zeros", bytes(32 * 1024 * 1024))],
            UnpackLimits(max_total_bytes=4 * 1024 * 1024),
            "archive.too-large",
            id="decompression-bomb",
        ),
        pytest.param(
            [directory("hello-v1.2.3"), *(file(f"hello-v1.2.3/f{i}", b"x") for i in range(40))],
            UnpackLimits(max_members=20),
            "archive.too-many-members",
            id="too-many-members",
        ),
    ],
)
def test_archive_caps_fail_the_bake_and_leave_nothing(
    upstream: UpstreamServer,
    fetcher: Fetcher,
    tmp_path: Path,
    members: list[Member],
    limits: UnpackLimits,
    code: str,
) -> None:
    data = make_tar(members)
    assert len(data) < 1024 * 1024  # small download, big (or crowded) tree
    serve(upstream, "v1.2.3", "x86_64", data)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PipelineError) as error:
        bake(make_recipe(), out, fetcher, unpack_limits=limits)
    assert error.value.code == code
    assert error.value.message.startswith("hello v1.2.3 x86-64: ")
    assert list(out.iterdir()) == []


def test_setuid_bits_from_an_archive_never_reach_the_image(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path
) -> None:
    members = [directory("hello-v1.2.3"), setuid_file("hello-v1.2.3/bin/hello", HELLO_SCRIPT)]
    serve(upstream, "v1.2.3", "x86_64", make_tar(members))
    source = {
        "url": UPSTREAM + "{version}/hello-{version}-{arch}.tar.gz",
        "strip_components": 1,
        "install": [{"from": "bin/hello", "to": "usr/bin/hello"}],
    }
    result = bake(make_recipe(sources=[source]), tmp_path / "out", fetcher)
    assert image_listing(result.image_path)["usr/bin/hello"] == "-rwxr-xr-x"


def test_oversized_download_fails(upstream: UpstreamServer, tmp_path: Path) -> None:
    upstream.add_stream("/dl/v1.2.3/hello-v1.2.3-x86_64.tar.gz", 5 * 1024 * 1024, send_length=False)
    out = tmp_path / "out"
    with Fetcher(
        tmp_path / "cache", mirrors={UPSTREAM: upstream.url("/dl/")}, max_bytes=1024 * 1024
    ) as small:
        with pytest.raises(PipelineError) as error:
            bake(make_recipe(), out, small)
    assert error.value.code == "fetch.too-large"
    assert not out.exists()


def test_install_rule_matching_nothing_fails(
    upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    source = {
        "url": UPSTREAM + "{version}/hello-{version}-{arch}.tar.gz",
        "install": [{"from": "bin/hello", "to": "usr/bin/hello"}],  # forgot strip_components
    }
    out = tmp_path / "out"
    with pytest.raises(PipelineError) as error:
        bake(make_recipe(sources=[source]), out, fetcher)
    assert error.value.code == "tree.install-no-match"
    assert "strip_components" in error.value.message
    assert not out.exists()


def test_refusals_before_any_download(upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cases = [
        ({"version": "v9.9.9"}, "recipe.unknown-version"),
        ({"arch": "riscv64"}, "recipe.unsupported-arch"),
        ({"image_format": "ext4"}, "image.unsupported-format"),
        ({"publish_url": "ftp://example.org/"}, "sysupdate.invalid-url"),
    ]
    for options, code in cases:
        arguments: dict[str, object] = {"version": "v1.2.3", "arch": "x86-64", **options}
        with pytest.raises(PipelineError) as error:
            bake_sysext(make_recipe(), out_dir=out, fetcher=fetcher, **arguments)  # type: ignore[arg-type]
        assert error.value.code == code
    assert not out.exists()
    assert upstream.hits("/dl/v1.2.3/hello-v1.2.3-x86_64.tar.gz") == 0


def test_erofs_bake(upstream: UpstreamServer, fetcher: Fetcher, tmp_path: Path) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    result = bake(make_recipe(), tmp_path / "out", fetcher, image_format="erofs", verify=True)
    assert result.image_format == "erofs" and result.compression == "lz4hc"
    assert result.image_path.read_bytes()[1024:1028] == bytes.fromhex("e2e1f5e0")
    assert result.verification is not None and result.verification.status in {"verified", "skipped"}
