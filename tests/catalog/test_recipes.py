"""The built-in catalog (catalog/recipes/*.yaml) as users and nodes depend on it.

Every recipe loads through the real loader, the catalog covers every extension of
``../shared/reference/catalog.md`` and reproduces its upstream URLs, every bake recipe resolves
for each of its versions and arches to the real upstream hosts (and, through a mirror map, to a
local mirror only), relations point at recipes that exist, and shipped systemd units are coherent
(started units exist, executables they run are shipped, tmpfiles/sysusers entries line up).
No test touches the network: fetches go to a fixture server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from builds.pipeline.recipe import Recipe, load_recipe, load_recipes
from builds.pipeline.tree import UnpackedSource, assemble_tree
from builds.pipeline.vocabulary import ARCHES

ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = ROOT / "catalog" / "recipes"
CATALOG_MD = ROOT.parent / "shared" / "reference" / "catalog.md"
RECIPE_NAMES = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))

# The hosts catalog.md names as upstreams. Recipe URL templates stay on these real hosts;
# tests and air-gapped sites reach them only through the mirror map.
# static.crates.io: the Rust crates a source build (wave) vendors, pinned from its Cargo.lock.
UPSTREAM_HOSTS = frozenset(
    {"github.com", "download.docker.com", "storage.googleapis.com", "dl.k8s.io", "static.crates.io"}
)

# Programs a unit may run that come with Flatcar itself rather than with the extension.
BASE_OS_PROGRAMS = frozenset({"/bin/kill", "/bin/sh", "/sbin/modprobe", "/usr/bin/mkdir", "/usr/bin/cp"})


def _all_recipes() -> dict[str, Recipe]:
    return load_recipes(RECIPES_DIR)


@pytest.fixture(scope="module")
def recipes() -> dict[str, Recipe]:
    return _all_recipes()


def _bake_names() -> list[str]:
    return [name for name, recipe in _all_recipes().items() if recipe.bakeable]


# --------------------------------------------------------------------------------------------
# catalog.md, parsed


def _catalog_rows() -> list[dict[str, str]]:
    """Table rows of catalog.md: name (normalised like a recipe name), asset, example version."""
    rows = []
    for line in CATALOG_MD.read_text().splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "name" or len(cells) < 5:
            continue
        # "wamr (iwasm)" -> wamr, "runwasi shims" -> runwasi-shims
        name = re.sub(r"\s*\(.*\)", "", cells[0]).strip().lower().replace(" ", "-")
        rows.append({"name": name, "asset": cells[1], "example": cells[3]})
    return rows


def _catalog_params() -> list[object]:
    if not CATALOG_MD.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{CATALOG_MD} is absent (no ../shared)"))]
    return [pytest.param(row, id=row["name"]) for row in _catalog_rows()]


def _expand_braces(text: str) -> list[str]:
    """``a/{x,y}.tgz`` -> [``a/x.tgz``, ``a/y.tgz``] (one brace group is all catalog.md uses)."""
    match = re.search(r"\{([^{}]*)\}", text)
    if not match:
        return [text]
    return [
        expanded
        for choice in match.group(1).split(",")
        for expanded in _expand_braces(text[: match.start()] + choice + text[match.end() :])
    ]


def test_catalog_lists_every_extension_of_catalog_md(recipes: dict[str, Recipe]) -> None:
    if not CATALOG_MD.is_file():
        pytest.skip(f"{CATALOG_MD} is absent (no ../shared)")
    expected = {row["name"] for row in _catalog_rows()}
    assert len(expected) >= 20, "catalog.md parsing found too few rows; did its table format change?"
    missing = expected - set(recipes)
    assert not missing, f"catalog.md extensions without a recipe: {sorted(missing)}"


@pytest.mark.parametrize("row", _catalog_params())
def test_recipe_reproduces_catalog_md_upstream(row: dict[str, str], recipes: dict[str, Recipe]) -> None:
    """The example version of catalog.md resolves (x86-64) to exactly the asset URL it gives."""
    recipe = recipes[row["name"]]
    asset = row["asset"].split(" ")[0].rstrip(",")
    if "/" not in asset:
        # No release asset: podman (official Flatcar extension) or wave (built from source).
        if "official Flatcar" in row["asset"]:
            assert recipe.delivery == "flatcar-official"
            assert recipe.sources == ()
        else:
            assert "built from source" in row["asset"]
            assert recipe.delivery == "bake" and recipe.build is not None
            assert urlsplit(recipe.sources[0].url).hostname == "github.com"
        return
    assert recipe.delivery == "bake"
    example = row["example"]
    version = next((v for v in (example, "v" + example) if v in recipe.versions), None)
    assert version is not None, f"{recipe.name}: catalog.md's example version {example} is not offered"
    resolved = {source.url for source in recipe.resolve(version, "x86-64")}
    filled = asset.replace("$v", example).replace("$a", recipe.arches["x86-64"])
    for expected in _expand_braces("https://" + filled):
        assert expected in resolved, f"{recipe.name} {version}: {expected} not among {sorted(resolved)}"


# --------------------------------------------------------------------------------------------
# loading and resolving


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_file_loads(name: str) -> None:
    recipe = load_recipe(RECIPES_DIR / f"{name}.yaml")
    assert recipe.name == name
    assert recipe.description
    if recipe.bakeable:
        # A source build's versions are commits that each need vetting (and their own pinned
        # dependencies): one is enough to start with.
        least = 1 if recipe.build is not None else 2
        assert len(recipe.versions) >= least, "nodes need at least two versions to update between"
        assert recipe.sources
    else:
        assert recipe.sources == () and recipe.versions == {}


@pytest.mark.parametrize("name", _bake_names())
def test_every_version_and_arch_resolves_to_real_upstream_hosts(
    name: str, recipes: dict[str, Recipe]
) -> None:
    recipe = recipes[name]
    by_version: dict[str, list[str]] = {}
    for version in recipe.versions:
        by_arch: dict[str, list[str]] = {}
        for arch in recipe.arches:
            sources = recipe.resolve(version, arch)
            assert [s.id for s in sources] == [s.id for s in recipe.sources]
            for source in sources:
                for url in filter(None, (source.url, source.checksum_url)):
                    parts = urlsplit(url)
                    assert parts.scheme == "https", url
                    assert parts.hostname in UPSTREAM_HOSTS, f"{url} is not on a catalog.md upstream host"
                    assert "{" not in url and "}" not in url, url
                assert source.sha256 is None or len(source.sha256) == 64
            by_arch[arch] = [s.url for s in sources]
        if len(by_arch) > 1:
            # Every download is arch-specific: a forgotten {arch} would bake x86-64 binaries into
            # the arm64 image.
            for urls in zip(*by_arch.values(), strict=True):
                assert len(set(urls)) == len(urls), f"{name} {version}: same URL for several arches: {urls}"
        by_version[version] = by_arch["x86-64"] if "x86-64" in by_arch else next(iter(by_arch.values()))
    distinct = {tuple(urls) for urls in by_version.values()}
    assert len(distinct) == len(by_version), f"{name}: two versions download the same files"


@pytest.mark.parametrize("name", _bake_names())
def test_unsupported_arch_and_unknown_version_are_refused(name: str, recipes: dict[str, Recipe]) -> None:
    recipe = recipes[name]
    some_version = next(iter(recipe.versions))
    for arch in ARCHES:
        if arch not in recipe.arches:
            with pytest.raises(PipelineError) as excinfo:
                recipe.resolve(some_version, arch)
            assert excinfo.value.code == "recipe.unsupported-arch"
    with pytest.raises(PipelineError) as excinfo:
        recipe.resolve("v0.0.0-not-offered", next(iter(recipe.arches)))
    assert excinfo.value.code == "recipe.unknown-version"


# --------------------------------------------------------------------------------------------
# mirrors


@pytest.mark.parametrize("name", _bake_names())
def test_mirror_map_sends_every_download_to_the_mirror(
    name: str, recipes: dict[str, Recipe], upstream, tmp_path
) -> None:
    """With a mirror per upstream host no URL leaks to the real host, and the mirrored files are
    fetched (and pinned) from the local mirror."""
    recipe = recipes[name]
    mirrors = {f"https://{host}/": f"{upstream.base_url}/{host}/" for host in UPSTREAM_HOSTS}
    with Fetcher(tmp_path / "cache", mirrors=mirrors, retries=0) as fetcher:
        for version in recipe.versions:
            for arch in recipe.arches:
                for source in recipe.resolve(version, arch):
                    for url in filter(None, (source.url, source.checksum_url)):
                        mirrored = fetcher.rewrite_url(url)
                        assert mirrored.startswith(upstream.base_url + "/"), f"{url} escapes the mirror map"
                        host = urlsplit(url).hostname
                        assert mirrored == f"{upstream.base_url}/{host}{urlsplit(url).path}"

        version = next(iter(recipe.versions))
        arch = next(iter(recipe.arches))
        served = {}
        for source in recipe.resolve(version, arch):
            content = f"{name} {version} {arch} {source.id}\n".encode()
            upstream.add_bytes(urlsplit(fetcher.rewrite_url(source.url)).path, content)
            served[source.id] = hashlib.sha256(content).hexdigest()
        for source in recipe.resolve(version, arch, pins=served):
            fetched = fetcher.fetch(source.url, sha256=source.sha256, label=source.label)
            assert fetched.sha256 == served[source.id]
            assert fetched.url == source.url
            assert fetched.final_url.startswith(upstream.base_url)


# --------------------------------------------------------------------------------------------
# relations


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_relations_refer_to_existing_selectable_recipes(name: str, recipes: dict[str, Recipe]) -> None:
    recipe = recipes[name]
    for group in recipe.requires:
        for required in group:
            assert required in recipes, f"{name} requires unknown extension {required!r}"
            assert recipes[required].delivery != "source-build-required", f"{required} cannot be selected"
        assert set(group) - set(recipe.conflicts), f"{name}: every choice of {group} conflicts with it"
    for other in recipe.conflicts:
        assert other in recipes, f"{name} conflicts with unknown extension {other!r}"
        # A conflict holds both ways; declaring it on one side only lets the other order through.
        assert name in recipes[other].conflicts, f"{other}.yaml does not list {name} in conflicts"


def test_relations_the_catalog_promises(recipes: dict[str, Recipe]) -> None:
    """issue 4: compose/buildx need docker, nerdctl and the shims need a containerd, kubernetes
    needs a container runtime, docker/containerd mask Flatcar's bundled ones, and two providers
    of the same files (docker ships containerd) or two Kubernetes distributions never mix."""
    assert ("docker",) in recipes["docker-compose"].requires
    assert ("docker",) in recipes["docker-buildx"].requires
    assert any("containerd" in group for group in recipes["nerdctl"].requires)
    assert any("containerd" in group for group in recipes["runwasi-shims"].requires)
    assert {"containerd", "cri-o", "docker"} in [set(group) for group in recipes["kubernetes"].requires]
    assert set(recipes["docker"].replaces_builtin) == {"docker", "containerd"}
    assert recipes["containerd"].replaces_builtin == ("containerd",)
    assert "containerd" in recipes["docker"].conflicts
    assert {"k3s", "rke2"} <= set(recipes["kubernetes"].conflicts)
    assert recipes["kubernetes"].minor_pinning


# --------------------------------------------------------------------------------------------
# image contents


def _destinations(recipe: Recipe) -> list[str]:
    return [rule.to for source in recipe.sources for rule in source.install] + list(recipe.files)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_nothing_is_shipped_where_a_sysext_must_not_write(name: str, recipes: dict[str, Recipe]) -> None:
    for path in _destinations(recipes[name]):
        parts = path.rstrip("/").split("/")
        assert parts[0] in ("usr", "opt"), path
        # usr/sbin is a symlink to bin on Flatcar: shipping it as a directory bricks hosts.
        assert parts[:2] != ["usr", "sbin"], path
        assert path != "usr/lib/os-release", path


def _unit_files(recipe: Recipe) -> dict[str, str]:
    prefix = "usr/lib/systemd/system/"
    return {
        path[len(prefix) :]: text
        for path, text in recipe.files.items()
        if path.startswith(prefix) and "/" not in path[len(prefix) :]
    }


def _shipped(recipe: Recipe, absolute_path: str) -> bool:
    relative = absolute_path.lstrip("/")
    for source in recipe.sources:
        for rule in source.install:
            if rule.to == relative:
                return True
            # A glob installed into a directory: any file of that directory may come from it.
            if rule.into_directory and relative.rsplit("/", 1)[0] + "/" == rule.to:
                return True
    return relative in recipe.files


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_units_are_coherent(name: str, recipes: dict[str, Recipe]) -> None:
    recipe = recipes[name]
    units = _unit_files(recipe)
    if units:
        # Without a manager reload after the merge systemd would not see the new units.
        assert recipe.reload_manager, f"{name} ships units but does not ask for a manager reload"
    for start in recipe.start:
        assert start.unit in units, f"{name} starts {start.unit} but ships no such unit"
    for path in recipe.files:
        drop_in = re.match(r"usr/lib/systemd/system/([^/]+)\.d/", path)
        if drop_in and not drop_in.group(1).endswith(".target"):
            assert drop_in.group(1) in units, f"{path} extends a unit the recipe does not ship"

    sysusers = "".join(text for path, text in recipe.files.items() if path.startswith("usr/lib/sysusers.d/"))
    declared_users = set(re.findall(r"^[ug]\s+(\S+)", sysusers, re.MULTILINE))
    for unit_name, text in {**units, **{p: t for p, t in recipe.files.items() if ".service.d/" in p}}.items():
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStopPost", "ExecReload") and value:
                program = value.lstrip("-@+!:").split()[0]
                assert program.startswith("/"), f"{unit_name}: {line}"
                assert program in BASE_OS_PROGRAMS or _shipped(recipe, program), (
                    f"{name}: {unit_name} runs {program}, which neither the extension nor Flatcar ships"
                )
            if key in ("User", "Group", "SocketGroup") and value != "root":
                assert value in declared_users, (
                    f"{name}: {unit_name} uses {key}={value} without a sysusers.d entry"
                )

    for path, text in recipe.files.items():
        if not path.startswith("usr/lib/tmpfiles.d/"):
            continue
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0] == "C":
                # /etc cannot be shipped: defaults are copied from /usr/share (or elsewhere in /usr).
                assert fields[1].startswith("/etc/"), line
                assert fields[6].lstrip("/") in recipe.files, f"{name}: {line} copies a file it does not ship"


def _stand_in_member(pattern: str) -> str:
    """An archive path that the install pattern matches (``bin/*`` -> ``bin/stand-in``)."""
    return re.sub(r"\[[^\]]*\]", "a", pattern).replace("*", "stand-in").replace("?", "x")


@pytest.mark.parametrize("name", _bake_names())
def test_recipe_assembles_into_a_valid_sysext_tree(name: str, recipes: dict[str, Recipe], tmp_path) -> None:
    """Fed archives laid out the way the install rules expect, the real tree assembler accepts the
    recipe for every arch: no two rules write one path, started units exist, unit and drop-in
    names are valid, and extension-release names the recipe."""
    recipe = recipes[name]
    version = next(iter(recipe.versions))
    for arch in recipe.arches:
        unpacked = []
        if recipe.build is not None:  # the build's output stands in for the sources
            output = tmp_path / arch / "build-output"
            for rule in recipe.build.install:
                member = output / _stand_in_member(rule.source or "")
                member.parent.mkdir(parents=True, exist_ok=True)
                member.write_bytes(b"\x7fELF stand-in\n")
            first = recipe.resolve(version, arch)[0]
            unpacked.append(UnpackedSource(replace(first, install=recipe.build.install), output))
        for source in [] if recipe.build is not None else recipe.resolve(version, arch):
            where = tmp_path / arch / "sources" / source.id
            if source.archive == "file":
                where.parent.mkdir(parents=True, exist_ok=True)
                where.write_bytes(b"\x7fELF stand-in\n")
            else:
                for rule in source.install:
                    member = where / _stand_in_member(rule.source or "")
                    member.parent.mkdir(parents=True, exist_ok=True)
                    member.write_bytes(b"\x7fELF stand-in\n")
            unpacked.append(UnpackedSource(source=source, path=where))
        root = tmp_path / arch / "tree"
        summary = assemble_tree(recipe, arch, unpacked, root)
        assert summary.files >= len(unpacked) + len(recipe.files) + 1
        release = (root / f"usr/lib/extension-release.d/extension-release.{name}").read_text()
        assert f"ARCHITECTURE={arch}" in release
        for start in recipe.start:
            dropin = root / f"usr/lib/systemd/system/{start.target}.d/10-{start.unit.rsplit('.', 1)[0]}.conf"
            assert f"Upholds={start.unit}" in dropin.read_text()
        assert not (root / "usr/sbin").exists()
