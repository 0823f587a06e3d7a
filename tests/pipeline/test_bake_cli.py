"""``python -m builds.pipeline bake``: the command line a user (or CI job) runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from builds.pipeline.bake_cli import main
from builds.pipeline.signing import verify_like_systemd
from tests.pipeline.bake_support import make_signing_key, write_recipe
from tests.pipeline.test_bake import PUBLISH, UPSTREAM, hello_members, serve
from tests.upstream import UpstreamServer, make_tar

ROOT = Path(__file__).resolve().parents[2]
EROFS_MAGIC = (0xE0F5E1E2).to_bytes(4, "little")  # superblock at offset 1024


def arguments(recipe: Path, out: Path, upstream: UpstreamServer, cache: Path, *extra: str) -> list[str]:
    return [
        str(recipe), "--version", "v1.2.3", "--arch", "x86-64", "--out", str(out),
        "--mirror", f"{UPSTREAM}={upstream.url('/dl/')}", "--cache-dir", str(cache), *extra,
    ]  # fmt: skip


def test_bake_prints_steps_and_writes_signed_files(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    key, phrase = make_signing_key(tmp_path)
    out = tmp_path / "out"
    code = main(
        arguments(
            write_recipe(tmp_path),
            out,
            upstream,
            tmp_path / "cache",
            "--sign-key",
            str(key),
            "--passphrase-file",
            str(phrase),
            "--publish-url",
            PUBLISH,
            "--export-pubring",
            str(tmp_path / "ring.gpg"),
        )
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    for step in ("fetch", "unpack", "assemble", "image", "audit", "checksums", "publish"):
        assert f"  {step} " in printed
    assert "s)" in printed  # each step shows its time
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS", "SHA256SUMS.gpg", "hello-v1.2.3-x86-64.raw", "hello.conf",
    ]  # fmt: skip
    # The exported keyring is what nodes get as /etc/systemd/import-pubring.gpg: binary, and enough
    # for gpg run as systemd runs it to accept the signature.
    ring = tmp_path / "ring.gpg"
    assert f"wrote {ring} (public keyring" in printed
    assert not ring.read_bytes().startswith(b"-----BEGIN")
    verify_like_systemd(out / "SHA256SUMS", out / "SHA256SUMS.gpg", ring)


def test_export_pubring_needs_a_signing_key(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ("--export-pubring", str(tmp_path / "ring.gpg"))
    recipe = write_recipe(tmp_path)
    assert main(arguments(recipe, tmp_path / "out", upstream, tmp_path / "cache", *extra)) == 1
    assert "cli.invalid-argument: --export-pubring needs --sign-key" in capsys.readouterr().err
    assert not (tmp_path / "ring.gpg").exists()


def test_failure_prints_code_and_sentence(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    out = tmp_path / "out"
    code = main(
        arguments(
            write_recipe(tmp_path),
            out,
            upstream,
            tmp_path / "cache",
            "--pin",
            "hello-{version}-{arch}.tar.gz=" + "0" * 64,
        )
    )
    assert code == 1
    assert capsys.readouterr().err.startswith("error: fetch.sha256-mismatch: ")
    assert not out.exists()


def test_invalid_recipe(upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(tmp_path, category="games")
    out = tmp_path / "out"
    assert main(arguments(recipe, out, upstream, tmp_path / "cache")) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: recipe.invalid: ") and "category" in error
    assert not out.exists()


def test_wrong_passphrase_file(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    key, _ = make_signing_key(tmp_path)
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    out = tmp_path / "out"
    out.mkdir()
    extra = ("--sign-key", str(key), "--passphrase-file", str(wrong))
    assert main(arguments(write_recipe(tmp_path), out, upstream, tmp_path / "cache", *extra)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: sign.bad-passphrase: ")
    assert "not it" not in err
    assert list(out.iterdir()) == []


def test_module_entry_point(upstream: UpstreamServer, tmp_path: Path) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "builds.pipeline", "bake"]
    command += arguments(write_recipe(tmp_path), out, upstream, tmp_path / "cache", "--compression", "zstd")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "hello-v1.2.3-x86-64.raw sha256 " in done.stdout
    assert (out / "hello-v1.2.3-x86-64.raw").is_file()
    bad = subprocess.run([*command[:4], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--sign-key" in bad.stdout


def test_every_step_line_shows_its_time(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    assert main(arguments(write_recipe(tmp_path), tmp_path / "out", upstream, tmp_path / "cache")) == 0
    lines = capsys.readouterr().out.splitlines()
    step_lines = [line for line in lines if line.startswith("  ")]
    assert [line.split()[0] for line in step_lines] == [
        "fetch", "unpack", "assemble", "image", "audit", "checksums", "publish",
    ]  # fmt: skip
    for line in step_lines:
        assert re.search(r"\(\d+\.\d\ds\)$", line), line


def test_erofs_signed_minor_pinned(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    key, phrase = make_signing_key(tmp_path)
    out = tmp_path / "out"
    extra = ("--format", "erofs", "--sign-key", str(key), "--passphrase-file", str(phrase))
    extra += ("--publish-url", PUBLISH)
    recipe = write_recipe(tmp_path, minor_pinning=True)
    assert main(arguments(recipe, out, upstream, tmp_path / "cache", *extra)) == 0, capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [
        "SHA256SUMS", "SHA256SUMS.gpg", "hello-v1.2.3-x86-64.raw", "hello-v1.2.conf", "hello.conf",
    ]  # fmt: skip
    with open(out / "hello-v1.2.3-x86-64.raw", "rb") as image:
        image.seek(1024)
        assert image.read(4) == EROFS_MAGIC
    pinned = (out / "hello-v1.2.conf").read_text()
    assert pinned.startswith("[Transfer]\nVerify=yes\n") and "MatchPattern=hello-v1.2.@v-%a.raw\n" in pinned
    assert (out / "hello.conf").read_text().startswith("[Transfer]\nVerify=yes\n")


def test_unsigned_publication_does_not_ask_nodes_to_verify(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    out = tmp_path / "out"
    extra = ("--publish-url", PUBLISH)
    assert main(arguments(write_recipe(tmp_path), out, upstream, tmp_path / "cache", *extra)) == 0
    assert not (out / "SHA256SUMS.gpg").exists()
    assert (out / "hello.conf").read_text().startswith("[Transfer]\nVerify=no\n")


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_output_directory_that_cannot_be_written(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory\n")
    out = blocker if where == "a file" else blocker / "out"
    assert main(arguments(write_recipe(tmp_path), out, upstream, tmp_path / "cache")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: bake.output-unwritable: ") and str(out) in err
    assert "Traceback" not in err
    assert blocker.read_text() == "not a directory\n"


def test_zstd_compression_reaches_the_image(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    out = tmp_path / "out"
    extra = ("--compression", "zstd")
    assert main(arguments(write_recipe(tmp_path), out, upstream, tmp_path / "cache", *extra)) == 0
    info = subprocess.run(
        ["unsquashfs", "-s", str(out / "hello-v1.2.3-x86-64.raw")], capture_output=True, text=True, check=True
    ).stdout
    assert "Compression zstd" in info


def test_dispatcher_usage() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "builds.pipeline", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    bare = run()
    assert (bare.returncode, bare.stdout) == (2, "") and "commands:" in bare.stderr
    unknown = run("frobnicate")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr.startswith("unknown command 'frobnicate'")
    helped = run("--help")
    assert (
        (helped.returncode, helped.stderr) == (0, "")
        and "bake" in helped.stdout
        and "butane" in helped.stdout
    )


@pytest.mark.reliability
def test_private_upstreams_and_local_files_need_an_explicit_flag(
    upstream: UpstreamServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve(upstream, "v1.2.3", "x86_64", make_tar(hello_members()))
    recipe = write_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace(UPSTREAM, upstream.url("/dl/")))  # 127.0.0.1, no mirror
    base = [str(recipe), "--version", "v1.2.3", "--arch", "x86-64", "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--out", str(tmp_path / "refused")]) == 1
    assert "error: fetch.refused-address: " in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert upstream.hits("/dl/v1.2.3/hello-v1.2.3-x86_64.tar.gz") == 0
    assert main([*base, "--out", str(tmp_path / "out"), "--allow-private-upstreams"]) == 0

    # file:// sources: refused unless their directory is named with --file-root.
    archive = tmp_path / "dl" / "v1.2.3" / "hello-v1.2.3-x86_64.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(make_tar(hello_members()))
    recipe.write_text(recipe.read_text().replace(upstream.url("/dl/"), (tmp_path / "dl").as_uri() + "/"))
    assert main([*base, "--out", str(tmp_path / "local-refused")]) == 1
    assert "error: fetch.file-refused: " in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "local"), "--file-root", str(tmp_path / "dl")]) == 0
