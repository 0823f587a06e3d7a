"""Recipes that build from source: a C project compiled in the sandbox into a sysext that merges
and runs; the same bytes twice; no network, limits and hostile build sections refused."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builds.pipeline.bake import BakeResult, bake_sysext
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from builds.pipeline.recipe import Recipe, parse_recipe
from builds.pipeline.source_build import check_toolchain
from builds.pipeline.verify import host_arch, verify_with_systemd_sysext
from tests.pipeline.bake_support import image_file
from tests.pipeline.source_support import built_recipe, built_recipe_data, source_members
from tests.upstream import UpstreamServer, make_tar

UPSTREAM = "https://src.example.org/"
SOURCE_PATH = "/src/archive/refs/tags/v1.0.0.tar.gz"

pytestmark = pytest.mark.skipif(host_arch() != "x86-64", reason="the test project is built for x86-64")


@pytest.fixture
def fetcher(upstream: UpstreamServer, tmp_path: Path) -> Iterator[Fetcher]:
    upstream.add_bytes(SOURCE_PATH, make_tar(source_members()))
    with Fetcher(tmp_path / "cache", mirrors={UPSTREAM: upstream.url("/src/")}, retries=0) as made:
        yield made


def bake(recipe: Recipe, out: Path, fetcher: Fetcher, **options: Any) -> BakeResult:
    return bake_sysext(recipe, "v1.0.0", "x86-64", out, fetcher=fetcher, **options)


def test_a_c_project_is_compiled_into_an_image_that_merges_and_runs(
    fetcher: Fetcher, upstream: UpstreamServer, tmp_path: Path
) -> None:
    logged: list[str] = []
    steps: list[str] = []
    result = bake(
        built_recipe(),
        tmp_path / "out",
        fetcher,
        verify=True,
        build_log=logged.append,
        progress=lambda step, message, fraction: steps.append(step) if fraction >= 1.0 else None,
    )
    assert steps[:4] == ["fetch", "unpack", "compile", "assemble"]
    output = "\n".join(logged)
    assert "$ make -f $SRC_DIR/Makefile" in output  # each command is echoed, then its output
    assert "built v1.0.0 for x86_64" in output
    # The binary runs from the image's bytes...
    binary = tmp_path / "hello"
    binary.write_bytes(image_file(result.image_path, "usr/bin/hello"))
    binary.chmod(0o755)
    assert (
        subprocess.run([binary, "world"], capture_output=True, text=True).stdout
        == "hello from source, world\n"
    )
    # ...and from the tree systemd-sysext merges.
    assert result.verification is not None
    if result.verification.verified:
        checked = verify_with_systemd_sysext(
            result.image_path, "hello-src", "x86-64", run_check=("usr/bin/hello",)
        )
        assert checked.verified and "hello" in checked.merged_bin
    else:  # no systemd-sysext here: say why rather than pass silently
        assert result.verification.reason
    assert upstream.hits(SOURCE_PATH) == 1


def test_two_builds_give_the_same_image_bytes(fetcher: Fetcher, tmp_path: Path) -> None:
    first = bake(built_recipe(), tmp_path / "a", fetcher, work_dir=tmp_path)
    (tmp_path / "elsewhere").mkdir()
    time.sleep(1.1)  # a later second: any timestamp that leaked into the image would differ
    second = bake(built_recipe(), tmp_path / "b", fetcher, work_dir=tmp_path / "elsewhere")
    assert first.image_sha256 == second.image_sha256
    assert first.image_path.read_bytes() == second.image_path.read_bytes()
    assert first.cache_key == second.cache_key


def test_the_build_has_no_network(fetcher: Fetcher, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    connect = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=5)'"
    try:
        with pytest.raises(PipelineError) as caught:
            bake(built_recipe(commands=[connect, "echo reached"]), tmp_path / "out", fetcher)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()
    assert caught.value.code == "source.compile-failed"
    assert "Connection refused" in caught.value.message  # the last lines say why
    assert "reached" not in caught.value.message
    assert not (tmp_path / "out").exists()


def test_the_build_sees_none_of_the_workers_files(fetcher: Fetcher, tmp_path: Path) -> None:
    secret = tmp_path / "signing-key.asc"
    secret.write_text("secret")
    with pytest.raises(PipelineError) as caught:
        bake(built_recipe(commands=[f"cat {secret}"]), tmp_path / "out", fetcher)
    assert caught.value.code == "source.compile-failed"
    assert "No such file or directory" in caught.value.message
    # nor can it write into its source tree
    with pytest.raises(PipelineError) as caught:
        bake(built_recipe(commands=["touch $SRC_DIR/hello.c"]), tmp_path / "out", fetcher)
    assert "Read-only file system" in caught.value.message


def test_a_failing_compile_fails_with_its_code_and_last_lines(fetcher: Fetcher, tmp_path: Path) -> None:
    logged: list[str] = []
    failing = built_recipe(commands=["echo compiling; echo 'hello.c:3: error: boom' >&2; exit 2"])
    with pytest.raises(PipelineError) as caught:
        bake(failing, tmp_path / "out", fetcher, build_log=logged.append)
    assert caught.value.code == "source.compile-failed" and not caught.value.retryable
    assert "exit code 2" in caught.value.message and "hello.c:3: error: boom" in caught.value.message
    assert "hello.c:3: error: boom" in "\n".join(logged)  # streamed before the failure
    assert not (tmp_path / "out").exists()


def test_control_characters_of_the_output_never_reach_the_log(fetcher: Fetcher, tmp_path: Path) -> None:
    logged: list[str] = []
    with pytest.raises(PipelineError) as caught:
        bake(
            built_recipe(commands=["printf 'nul\\000 esc\\033[2J end\\n'; exit 1"]),
            tmp_path / "out",
            fetcher,
            build_log=logged.append,
        )
    text = "\n".join(logged) + caught.value.message
    assert "nul\ufffd esc\ufffd[2J end" in text
    assert "\x00" not in text and "\x1b" not in text


def test_a_build_past_its_time_limit_is_stopped_and_publishes_nothing(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(PipelineError) as caught:
        bake(
            built_recipe(commands=["echo waiting", "sleep 60"], limits={"seconds": 2}),
            tmp_path / "out",
            fetcher,
        )
    assert time.monotonic() - started < 30
    assert caught.value.code == "source.timeout"
    assert "2 seconds" in caught.value.message
    assert not (tmp_path / "out").exists()


def test_a_build_past_its_cpu_limit_is_stopped(fetcher: Fetcher, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        bake(
            built_recipe(commands=["while :; do :; done"], limits={"cpu_seconds": 1, "seconds": 60}),
            tmp_path / "out",
            fetcher,
        )
    assert caught.value.code == "source.timeout"
    assert "1 CPU seconds" in caught.value.message


def test_a_build_past_its_memory_limit_fails_cleanly(fetcher: Fetcher, tmp_path: Path) -> None:
    hungry = "python3 -c 'bytearray(1024 * 1024 * 1024)'"
    with pytest.raises(PipelineError) as caught:
        bake(built_recipe(commands=[hungry], limits={"memory_mb": 200}), tmp_path / "out", fetcher)
    assert caught.value.code == "source.out-of-memory"
    assert "200 MiB" in caught.value.message
    assert not (tmp_path / "out").exists()


def test_a_toolchain_other_than_the_pinned_one_is_refused_before_downloading(
    fetcher: Fetcher, upstream: UpstreamServer, tmp_path: Path
) -> None:
    data = built_recipe_data()
    data["build"]["toolchain"]["debian"]["gcc"] = "1:0.1-1"
    data["build"]["toolchain"]["debian"]["no-such-package"] = "1.0"
    recipe = parse_recipe(yaml.safe_dump(data), "hello-src.yaml")
    with pytest.raises(PipelineError) as caught:
        bake(recipe, tmp_path / "out", fetcher)
    assert caught.value.code == "source.toolchain-mismatch"
    assert "the recipe pins 1:0.1-1" in caught.value.message
    assert "no-such-package 1.0 is not installed" in caught.value.message
    assert upstream.hits(SOURCE_PATH) == 0


def test_check_toolchain_compares_exact_versions() -> None:
    check_toolchain({"gcc": "4:12"}, label="x", query=lambda names: {"gcc": "4:12"})
    with pytest.raises(PipelineError, match=r"gcc is 4:12\.1, the recipe pins 4:12"):
        check_toolchain({"gcc": "4:12"}, label="x", query=lambda names: {"gcc": "4:12.1"})


def test_an_output_symlink_out_of_the_sandbox_is_not_followed(fetcher: Fetcher, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        bake(built_recipe(commands=["ln -s /etc/passwd $OUT_DIR/hello"]), tmp_path / "out", fetcher)
    assert caught.value.code == "tree.install-bad-symlink"


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"install": [{"from": "/etc/shadow", "to": "usr/bin/x"}]}, "build.install[0].from"),
        ({"install": [{"from": "../../etc/shadow", "to": "usr/bin/x"}]}, "build.install[0].from"),
        ({"install": [{"from": "hello", "to": "/usr/bin/x"}]}, "build.install[0].to"),
        ({"install": [{"from": "hello", "to": "etc/cron.d/x"}]}, "build.install[0].to"),
        ({"toolchain": {"debian": {"gcc; curl evil": "1.0"}}}, "build.toolchain.debian.gcc; curl evil"),
        ({"toolchain": {"debian": {"gcc": "1.0 && curl evil"}}}, "build.toolchain.debian.gcc"),
        ({"toolchain": {"image": "docker.io/evil"}}, "build.toolchain.image"),
        ({"commands": "make"}, "build.commands"),
        ({"commands": []}, "build.commands"),
        ({"commands": ["make\x1b[2J"]}, "build.commands[0]"),
        ({"commands": [["make"]]}, "build.commands[0]"),
        ({"commands": ["x"] * 51}, "build.commands"),
        ({"limits": {"seconds": 10**9}}, "build.limits.seconds"),
        ({"limits": {"memory_mb": 0}}, "build.limits.memory_mb"),
        ({"network": True}, "build.network"),
        ({"run_on_host": ["make"]}, "build.run_on_host"),
    ],
)
def test_hostile_build_sections_are_refused(change: dict[str, Any], field: str) -> None:
    data = built_recipe_data()
    data["build"].update(change)
    with pytest.raises(PipelineError) as caught:
        parse_recipe(yaml.safe_dump(data), "hello-src.yaml")
    assert caught.value.code == "recipe.invalid"
    assert f"hello-src.yaml: {field}" in caught.value.message


def test_a_built_recipe_installs_from_the_build_only() -> None:
    data = built_recipe_data()
    data["sources"][0]["install"] = [{"from": "hello", "to": "usr/bin/hello"}]
    with pytest.raises(PipelineError, match=r"sources\[0\]\.install: must be omitted"):
        parse_recipe(yaml.safe_dump(data), "hello-src.yaml")
    data = built_recipe_data()
    data["delivery"] = "flatcar-official"
    del data["sources"]
    with pytest.raises(PipelineError, match="build: must not be given"):
        parse_recipe(yaml.safe_dump(data), "hello-src.yaml")


def test_the_build_section_shapes_the_image_digest() -> None:
    plain = built_recipe()
    other = built_recipe(commands=["make -f $SRC_DIR/Makefile CFLAGS=-O0"])
    assert plain.image_digest("v1.0.0") != other.image_digest("v1.0.0")
    assert plain.build is not None and plain.build.limits.seconds == 1800
