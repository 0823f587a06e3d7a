"""Recipes: the schema of team/recipe-schema.md, loaded strictly into typed objects."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from builds.pipeline.errors import PipelineError
from builds.pipeline.recipe import (
    InstallRule,
    Recipe,
    StartUnit,
    guess_archive_kind,
    load_recipe,
    load_recipes,
    parse_recipe,
)
from builds.pipeline.vocabulary import ARCHES

PIN_X86 = "a" * 64
PIN_ARM = "B" * 64

WASMTIME = f"""\
name: wasmtime
description: Fast and secure WebAssembly runtime
homepage: https://wasmtime.dev
category: wasm-runtime
arches: {{x86-64: x86_64, arm64: aarch64}}
sources:
  - url: https://github.com/bytecodealliance/wasmtime/releases/download/{{version}}/wasmtime-{{version}}-{{arch}}-linux.tar.xz
    strip_components: 1
    install:
      - {{from: wasmtime, to: usr/bin/wasmtime, mode: "0755"}}
files:
  usr/lib/systemd/system/example.service: |
    [Service]
    ExecStart=/usr/bin/example
start: [example.service]
reload_manager: true
versions:
  v31.0.0: {{sha256: {{x86-64: {PIN_X86}, arm64: {PIN_ARM}}}}}
  v30.0.2: {{}}
"""

MULTI = """\
name: wasmcloud
description: wasmCloud host with NATS
category: wasm-runtime
arches: {x86-64: x86_64, arm64: aarch64}
sources:
  - url: https://github.com/wasmCloud/wasmCloud/releases/download/{version}/wasmcloud-{arch}-unknown-linux-musl
    id: wasmcloud
    install: [{to: usr/bin/wasmcloud, mode: "0755"}]
  - url: https://github.com/nats-io/nats-server/releases/download/v{nats_version}/nats-server-v{nats_version}-linux-{arch}.tar.gz
    id: nats
    arches: {x86-64: amd64, arm64: arm64}
    strip_components: 1
    checksum_url: https://github.com/nats-io/nats-server/releases/download/v{nats_version}/SHA256SUMS
    install:
      - {from: nats-server, to: usr/bin/nats-server, mode: "0755"}
      - {from: "lib/*.so*", to: usr/lib/wasmcloud/}
start:
  - wasmcloud.service
  - {unit: nats.socket}
  - {unit: wasmcloud-web.service, target: graphical.target}
files:
  usr/lib/systemd/system/wasmcloud.service: "[Service]\\nExecStart=/usr/bin/wasmcloud\\n"
  usr/lib/systemd/system/multi-user.target.d/10-extra.conf: "[Unit]\\n"
  usr/lib/tmpfiles.d/wasmcloud.conf: "d /var/lib/wasmcloud 0755 - - -\\n"
requires: [[containerd, docker], nerdctl]
conflicts: [k3s]
replaces_builtin: [containerd]
min_flatcar: "3975.2.0"
release_id: flatcar
minor_pinning: true
versions:
  v1.7.0:
    vars: {nats_version: "2.10.24"}
    sha256: {x86-64: {nats: "%s"}}
  v1.6.0:
    vars: {nats_version: "2.10.20"}
    deprecated: true
""" % ("c" * 64)


def test_example_recipe_loads_into_typed_objects() -> None:
    recipe = parse_recipe(WASMTIME, "wasmtime.yaml")
    assert isinstance(recipe, Recipe)
    assert recipe.name == "wasmtime"
    assert recipe.category == "wasm-runtime"
    assert recipe.delivery == "bake"
    assert recipe.arches == {"x86-64": "x86_64", "arm64": "aarch64"}
    (source,) = recipe.sources
    assert source.archive == "tar.xz"  # guessed from the URL
    assert source.id == "wasmtime-{version}-{arch}-linux.tar.xz"  # file name with placeholders
    assert source.strip_components == 1
    assert source.install == (InstallRule(source="wasmtime", to="usr/bin/wasmtime", mode=0o755),)
    assert recipe.files == {
        "usr/lib/systemd/system/example.service": "[Service]\nExecStart=/usr/bin/example\n"
    }
    assert recipe.start == (StartUnit("example.service", "multi-user.target"),)
    assert recipe.reload_manager is True
    assert recipe.release_id == "_any"
    assert recipe.minor_pinning is False
    assert recipe.requires == () and recipe.conflicts == () and recipe.replaces_builtin == ()
    assert list(recipe.versions) == ["v31.0.0", "v30.0.2"]
    assert recipe.versions["v31.0.0"].sha256 == {
        "x86-64": {source.id: PIN_X86},
        "arm64": {source.id: "b" * 64},
    }
    assert len(recipe.digest) == 64
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "other"  # type: ignore[misc]


def test_resolve_fills_templates_and_pins() -> None:
    recipe = parse_recipe(WASMTIME, "wasmtime.yaml")
    (arm,) = recipe.resolve("v31.0.0", "arm64")
    assert arm.url == (
        "https://github.com/bytecodealliance/wasmtime/releases/download/v31.0.0/wasmtime-v31.0.0-aarch64-linux.tar.xz"
    )
    assert arm.sha256 == "b" * 64
    assert arm.archive == "tar.xz" and arm.strip_components == 1
    assert arm.label == "wasmtime v31.0.0 arm64"
    (unpinned,) = recipe.resolve("v30.0.2", "x86-64")
    assert unpinned.sha256 is None
    assert "wasmtime-v30.0.2-x86_64-linux" in unpinned.url
    # Pins given by the catalog override the recipe's own.
    (override,) = recipe.resolve("v31.0.0", "x86-64", pins={arm.id: "D" * 64})
    assert override.sha256 == "d" * 64


def test_resolve_several_sources_vars_and_arch_override() -> None:
    recipe = parse_recipe(MULTI, "catalog/recipes/wasmcloud.yaml")
    host, nats = recipe.resolve("v1.7.0", "x86-64")
    assert host.url.endswith("/v1.7.0/wasmcloud-x86_64-unknown-linux-musl")
    assert host.archive == "file" and host.sha256 is None
    assert nats.url == (
        "https://github.com/nats-io/nats-server/releases/download/v2.10.24/nats-server-v2.10.24-linux-amd64.tar.gz"
    )
    assert nats.checksum_url == "https://github.com/nats-io/nats-server/releases/download/v2.10.24/SHA256SUMS"
    assert nats.sha256 == "c" * 64
    assert nats.label == "wasmcloud v1.7.0 x86-64 (nats)"
    assert nats.install[1] == InstallRule(source="lib/*.so*", to="usr/lib/wasmcloud/", mode=None)
    assert nats.install[1].into_directory
    _, nats_arm = recipe.resolve("v1.6.0", "arm64")
    assert nats_arm.url.endswith("/v2.10.20/nats-server-v2.10.20-linux-arm64.tar.gz")
    assert nats_arm.sha256 is None
    assert recipe.versions["v1.6.0"].deprecated


def test_relations_start_units_and_flags() -> None:
    recipe = parse_recipe(MULTI, "wasmcloud.yaml")
    assert recipe.requires == (("containerd", "docker"), ("nerdctl",))
    assert recipe.conflicts == ("k3s",)
    assert recipe.replaces_builtin == ("containerd",)
    assert recipe.min_flatcar == "3975.2.0"
    assert recipe.release_id == "flatcar"
    assert recipe.minor_pinning is True
    assert recipe.start == (
        StartUnit("wasmcloud.service", "multi-user.target"),
        StartUnit("nats.socket", "sockets.target"),
        StartUnit("wasmcloud-web.service", "graphical.target"),
    )


def test_version_nov_and_k3s_style_empty_arch_suffix() -> None:
    recipe = parse_recipe(
        textwrap.dedent("""\
        name: k3s
        description: Lightweight Kubernetes
        category: kubernetes
        arches: {x86-64: "", arm64: "-arm64"}
        sources:
          - url: https://github.com/k3s-io/k3s/releases/download/{version}/k3s{arch}
            install: [{to: usr/local/bin/k3s, mode: "0755"}]
          - url: https://example.com/tools/{version_nov}/tool-{version_nov}.zip
            install: [{from: tool, to: opt/tool/}]
        versions: {v1.32.2+k3s1: {}, v1.31.6+k3s1: {}}
        """),
        "k3s.yaml",
    )
    k3s, tool = recipe.resolve("v1.32.2+k3s1", "x86-64")
    assert k3s.url.endswith("/v1.32.2+k3s1/k3s")
    assert recipe.resolve("v1.32.2+k3s1", "arm64")[0].url.endswith("/k3s-arm64")
    assert tool.url == "https://example.com/tools/1.32.2+k3s1/tool-1.32.2+k3s1.zip"
    assert tool.archive == "zip"


def test_resolve_errors() -> None:
    recipe = parse_recipe(
        WASMTIME.replace("arm64: aarch64", "").replace(", arm64: " + PIN_ARM, ""), "wasmtime.yaml"
    )
    assert tuple(recipe.arches) == ("x86-64",)
    with pytest.raises(PipelineError) as caught:
        recipe.resolve("v9.9.9", "x86-64")
    assert caught.value.code == "recipe.unknown-version"
    assert "v31.0.0" in caught.value.message
    with pytest.raises(PipelineError) as caught:
        recipe.resolve("v31.0.0", "arm64")
    assert caught.value.code == "recipe.unsupported-arch"
    with pytest.raises(PipelineError) as caught:
        recipe.resolve("v31.0.0", "x86-64", pins={"nope": "a" * 64})
    assert caught.value.code == "recipe.invalid-pin"
    with pytest.raises(PipelineError) as caught:
        recipe.resolve("v31.0.0", "x86-64", pins={recipe.sources[0].id: "xyz"})
    assert caught.value.code == "recipe.invalid-pin"


def test_official_and_source_build_recipes_have_no_sources() -> None:
    podman = parse_recipe(
        "name: podman\ndescription: Podman from Flatcar\ncategory: container-runtime\n"
        "delivery: flatcar-official\n",
        "podman.yaml",
    )
    assert podman.sources == () and podman.versions == {}
    assert tuple(podman.arches) == ARCHES
    with pytest.raises(PipelineError) as caught:
        podman.resolve("v1", "x86-64")
    assert caught.value.code == "recipe.not-bakeable"
    wave = parse_recipe(
        "name: wave\ndescription: d\ncategory: tool\ndelivery: source-build-required\narches: {x86-64: x}\n",
        "wave.yaml",
    )
    assert wave.delivery == "source-build-required"


def test_digest_ignores_formatting_but_not_content() -> None:
    recipe = parse_recipe(WASMTIME, "wasmtime.yaml")
    # Same content written differently: keys reordered, flow vs block style, comments.
    rewritten = WASMTIME.replace("reload_manager: true\n", "") + "reload_manager: yes # on\n"
    rewritten = rewritten.replace("reload_manager: yes # on", "reload_manager: true  # comment")
    rewritten = rewritten.replace("homepage: https://wasmtime.dev\n", "") + "homepage: https://wasmtime.dev\n"
    rewritten = rewritten.replace("start: [example.service]", "start:\n  - example.service")
    assert rewritten != WASMTIME
    assert parse_recipe(rewritten, "wasmtime.yaml").digest == recipe.digest
    changed = WASMTIME.replace("strip_components: 1", "strip_components: 2")
    assert parse_recipe(changed, "wasmtime.yaml").digest != recipe.digest
    pinned = WASMTIME.replace("v30.0.2: {}", f"v30.0.2: {{sha256: {{arm64: {'e' * 64}}}}}")
    assert parse_recipe(pinned, "wasmtime.yaml").digest != recipe.digest


def test_archive_kind_guess() -> None:
    assert guess_archive_kind("https://x/a.tar.gz?raw=1") == "tar.gz"
    assert guess_archive_kind("https://x/a.TGZ") == "tgz"
    assert guess_archive_kind("https://x/a.tar.zst") == "tar.zst"
    assert guess_archive_kind("https://x/a.zip#frag") == "zip"
    assert guess_archive_kind("https://x/k3s-arm64") == "file"


def test_load_recipe_and_directory(tmp_path: Path) -> None:
    (tmp_path / "wasmtime.yaml").write_text(WASMTIME)
    (tmp_path / "wasmcloud.yaml").write_text(MULTI)
    (tmp_path / "notes.txt").write_text("not a recipe")
    recipes = load_recipes(tmp_path)
    assert list(recipes) == ["wasmcloud", "wasmtime"]
    assert recipes["wasmtime"] == load_recipe(tmp_path / "wasmtime.yaml")
    (tmp_path / "broken.yaml").write_text(WASMTIME)
    with pytest.raises(PipelineError) as caught:
        load_recipes(tmp_path)
    assert caught.value.code == "recipe.invalid"
    assert caught.value.message.startswith(f"{tmp_path / 'broken.yaml'}: name: ")


def test_unreadable_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as caught:
        load_recipe(tmp_path / "missing.yaml")
    assert caught.value.code == "recipe.invalid"
    assert "missing.yaml" in caught.value.message
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "#" * 300_000)
    with pytest.raises(PipelineError) as caught:
        load_recipe(big)
    assert "larger than" in caught.value.message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PipelineError) as caught:
        load_recipe(binary)
    assert "UTF-8" in caught.value.message


# -- invalid recipes: each message names the file, the field and the reason ----------------


def _edit(old: str, new: str) -> str:
    assert old in WASMTIME, old
    return WASMTIME.replace(old, new)


INVALID = [
    ("unknown top-level key", WASMTIME + "descripton: typo\n", "descripton", "unknown key"),
    (
        "unknown source key",
        _edit("strip_components: 1", "strip_component: 1"),
        "sources[0].strip_component",
        "unknown key",
    ),
    (
        "unknown install key",
        _edit('mode: "0755"}', 'mode: "0755", owner: root}'),
        "sources[0].install[0].owner",
        "unknown key",
    ),
    ("name differs from file", _edit("name: wasmtime", "name: wasmtime2"), "name", "file name"),
    ("bad name", _edit("name: wasmtime", "name: Wasm Time"), "name", "lowercase"),
    (
        "missing description",
        _edit("description: Fast and secure WebAssembly runtime\n", ""),
        "description",
        "required",
    ),
    ("bad category", _edit("category: wasm-runtime", "category: games"), "category", "not one of"),
    ("bad delivery", WASMTIME + "delivery: magic\n", "delivery", "not one of"),
    ("unknown arch", _edit("arm64: aarch64}", "riscv64: riscv64}"), "arches.riscv64", "unknown arch"),
    ("missing arches", _edit("arches: {x86-64: x86_64, arm64: aarch64}\n", ""), "arches", "required"),
    (
        "no sources",
        WASMTIME.split("sources:\n")[0] + "sources: []\nfiles:" + WASMTIME.split("files:")[1],
        "sources",
        "at least one",
    ),
    (
        "absolute destination",
        _edit("to: usr/bin/wasmtime", "to: /usr/bin/wasmtime"),
        "sources[0].install[0].to",
        "relative",
    ),
    (
        "destination in etc",
        _edit("to: usr/bin/wasmtime", "to: etc/wasmtime"),
        "sources[0].install[0].to",
        "usr/ or opt/",
    ),
    (
        "usr/sbin",
        _edit("to: usr/bin/wasmtime", "to: usr/sbin/wasmtime"),
        "sources[0].install[0].to",
        "usr/sbin",
    ),
    (
        "dot-dot destination",
        _edit("to: usr/bin/wasmtime", "to: usr/../etc/x"),
        "sources[0].install[0].to",
        "'..'",
    ),
    (
        "os-release",
        _edit("usr/lib/systemd/system/example.service:", "usr/lib/os-release:"),
        "files.usr/lib/os-release",
        "os-release",
    ),
    (
        "drop-in without .conf",
        _edit(
            "usr/lib/systemd/system/example.service:", "usr/lib/systemd/system/example.service.d/override:"
        ),
        "files.usr/lib/systemd/system/example.service.d/override",
        ".conf",
    ),
    (
        "tmpfiles without .conf",
        _edit("usr/lib/systemd/system/example.service:", "usr/lib/tmpfiles.d/x.txt:"),
        "files.usr/lib/tmpfiles.d/x.txt",
        ".conf",
    ),
    (
        "file content not text",
        _edit("files:\n", "files:\n  usr/share/x: 42\n"),
        "files.usr/share/x",
        "string",
    ),
    ("unknown placeholder", _edit("{arch}-linux.tar.xz", "{arch}-{libc}.tar.xz"), "sources[0].url", "{libc}"),
    (
        "attribute placeholder",
        _edit("{arch}-linux.tar.xz", "{arch.__class__}.tar.xz"),
        "sources[0].url",
        "plain name",
    ),
    ("non-http url", _edit("url: https://github.com", "url: ftp://github.com"), "sources[0].url", "http"),
    (
        "pin for unknown arch",
        _edit(f"arm64: {PIN_ARM}", f"s390x: {PIN_ARM}"),
        "versions.v31.0.0.sha256.s390x",
        "arch",
    ),
    ("short pin", _edit(PIN_X86, "abc123"), "versions.v31.0.0.sha256.x86-64", "64 hex"),
    (
        "no versions",
        WASMTIME.split("versions:")[0] + "versions: {}\n",
        "versions",
        "at least one",
    ),
    ("bad version chars", _edit("v30.0.2: {}", "v30 beta: {}"), "versions.v30 beta", "@v"),
    ("unquoted mode", _edit('mode: "0755"', "mode: 0755"), "sources[0].install[0].mode", "quoted"),
    ("setuid mode", _edit('mode: "0755"', 'mode: "4755"'), "sources[0].install[0].mode", "setuid"),
    (
        "strip on single file",
        _edit("wasmtime-{version}-{arch}-linux.tar.xz", "wasmtime-{version}-{arch}"),
        "sources[0].strip_components",
        "tar and zip",
    ),
    ("bad unit name", _edit("start: [example.service]", "start: [example]"), "start[0]", "unit name"),
    (
        "bad start target",
        _edit("start: [example.service]", "start: [{unit: a.service, target: b.service}]"),
        "start[0].target",
        ".target",
    ),
    (
        "boolean as string",
        _edit("reload_manager: true", 'reload_manager: "yes"'),
        "reload_manager",
        "true or false",
    ),
    ("bad release id", WASMTIME + "release_id: debian\n", "release_id", "not one of"),
    ("unknown builtin", WASMTIME + "replaces_builtin: [podman]\n", "replaces_builtin[0]", "built-in"),
    ("requires itself", WASMTIME + "requires: [[docker, wasmtime]]\n", "requires[0]", "itself"),
    ("bad min_flatcar", WASMTIME + "min_flatcar: 3975\n", "min_flatcar", "string"),
    ("unknown version key", _edit("v30.0.2: {}", "v30.0.2: {sha: x}"), "versions.v30.0.2.sha", "unknown key"),
]


@pytest.mark.parametrize(("label", "text", "field", "reason"), INVALID, ids=[i[0] for i in INVALID])
def test_invalid_recipes_name_file_field_and_reason(label: str, text: str, field: str, reason: str) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_recipe(text, "catalog/recipes/wasmtime.yaml")
    error = caught.value
    assert error.code == "recipe.invalid"
    assert error.message.startswith(f"catalog/recipes/wasmtime.yaml: {field}: "), error.message
    assert reason in error.message


SHAPES = [
    ("yaml syntax", "name: [unclosed\n", "not valid YAML"),
    ("duplicate key", WASMTIME + "name: wasmtime\n", "duplicate key 'name'"),
    ("alias bomb", "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "aliases"),
    ("not a mapping", "- just\n- a list\n", "mapping"),
    ("empty", "", "empty"),
    ("float version key", _edit("v30.0.2: {}", "1.30: {}"), "quote it"),
]


@pytest.mark.parametrize(("label", "text", "reason"), SHAPES, ids=[s[0] for s in SHAPES])
def test_malformed_documents(label: str, text: str, reason: str) -> None:
    with pytest.raises(PipelineError) as caught:
        parse_recipe(text, "wasmtime.yaml")
    assert caught.value.code == "recipe.invalid"
    assert caught.value.message.startswith("wasmtime.yaml: ")
    assert reason in caught.value.message


def test_multi_source_invalid_cases() -> None:
    def fails(text: str, field: str, reason: str) -> None:
        with pytest.raises(PipelineError) as caught:
            parse_recipe(text, "wasmcloud.yaml")
        assert caught.value.message.startswith(f"wasmcloud.yaml: {field}: "), caught.value.message
        assert reason in caught.value.message

    fails(MULTI.replace("id: nats", "id: wasmcloud"), "sources[1].id", "another source")
    fails(
        MULTI.replace('{nats: "' + "c" * 64 + '"}', '"' + "c" * 64 + '"'),
        "versions.v1.7.0.sha256.x86-64",
        "several",
    )
    fails(MULTI.replace("{nats: ", "{natz: "), "versions.v1.7.0.sha256.x86-64.natz", "unknown source id")
    fails(MULTI.replace('    vars: {nats_version: "2.10.20"}\n', ""), "sources[1].url", "version v1.6.0")
    fails(
        MULTI.replace("install: [{to: usr/bin/wasmcloud", "install: [{from: x, to: usr/bin/wasmcloud"),
        "sources[0].install[0].from",
        "omitted",
    )
    fails(
        MULTI.replace("{from: nats-server,", "{from: ../nats-server,"), "sources[1].install[0].from", "'..'"
    )
    fails(
        MULTI.replace("vars: {nats_version:", "vars: {version:"), "versions.v1.7.0.vars.version", "built in"
    )
    fails(MULTI + "delivery: flatcar-official\n", "sources", "must not be given")


def test_a_single_version_is_enough_for_a_team_recipe():
    recipe = parse_recipe(_edit("  v30.0.2: {}\n", ""), source="wasmtime.yaml")
    assert list(recipe.versions) == ["v31.0.0"]


def test_image_digest_ignores_other_versions_and_descriptions():
    recipe = parse_recipe(WASMTIME, source="wasmtime.yaml")
    more = parse_recipe(WASMTIME + "  v32.0.0: {}\n", source="wasmtime.yaml")
    reworded = parse_recipe(_edit("Fast and secure", "Speedy"), source="wasmtime.yaml")
    assert recipe.digest != more.digest
    assert recipe.image_digest("v30.0.2") == more.image_digest("v30.0.2") == reworded.image_digest("v30.0.2")
    assert recipe.image_digest("v30.0.2") != recipe.image_digest("v31.0.0")
    changed_install = parse_recipe(
        _edit("to: usr/bin/wasmtime", "to: usr/bin/wasmtime2"), source="wasmtime.yaml"
    )
    assert changed_install.image_digest("v30.0.2") != recipe.image_digest("v30.0.2")


def test_keywords_are_search_words_outside_the_digest() -> None:
    plain = parse_recipe(WASMTIME, "wasmtime.yaml")
    assert plain.keywords == ()
    with_words = parse_recipe(
        WASMTIME.replace("category: wasm-runtime", "category: wasm-runtime\nkeywords: [Wasm, wasi, wasm]"),
        "wasmtime.yaml",
    )
    assert with_words.keywords == ("wasm", "wasi")  # lowercased, each once
    assert with_words.digest == plain.digest  # finding it differently changes nothing it builds
    for bad in ("keywords: wasm", "keywords: [two words]", "keywords: [{a: b}]"):
        with pytest.raises(PipelineError) as refused:
            parse_recipe(
                WASMTIME.replace("category: wasm-runtime", f"category: wasm-runtime\n{bad}"), "wasmtime.yaml"
            )
        assert "keywords" in refused.value.message
