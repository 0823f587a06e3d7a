"""``make bench-pipeline``: the bake pipeline alone against the bare tools it wraps (``make bench``
runs the whole product, bench/portal.py).

Packs real binaries from this machine (``/usr/bin``, ``/usr/lib/<triplet>``) into a tar.gz,
then for two input sizes times:

- the pipeline: ``bake_sysext`` from a ``file://`` URL (download cache warm, as for the bare
  run, which downloads nothing), with a GPG signer;
- the bare tools: ``tar -x`` + ``mksquashfs`` (same compressor) + ``sha256sum`` + ``gpg --detach-sign``.

Each run happens in a fresh child process so that its peak memory (``getrusage`` of the process
itself and of its children) is its own. Prints the wall-time ratio (goal: <= 1.10 for gzip) and
peak memory per size (goal: independent of input size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

SIZES_MB = (75, 150)
REPEATS = 2
GOAL_RATIO = 1.10
RECIPE = """\
name: benchmark
description: Real binaries from the build machine, for the benchmark
homepage: https://example.org/benchmark
category: tool
arches: {{x86-64: x86_64, arm64: aarch64}}
sources:
  - url: {url}
    archive: tar.gz
    strip_components: 1
    install:
      - {{from: files, to: usr/lib/benchmark}}
versions:
  v1.0.0: {{}}
  v0.9.0: {{}}
"""


def _source_dirs() -> list[Path]:
    triplet = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return [Path("/usr/bin"), Path("/usr/lib") / triplet, Path("/usr/lib"), Path("/usr/libexec")]


def gather_payload(dest: Path, megabytes: int) -> int:
    """Copy regular files from the system into ``dest/payload/files`` until ``megabytes``."""
    files = dest / "payload" / "files"
    files.mkdir(parents=True)
    budget = megabytes * 1024 * 1024
    total = 0
    seen: set[tuple[int, int]] = set()
    for source in _source_dirs():
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink() or (st.st_dev, st.st_ino) in seen:
                    continue
                if st.st_size == 0 or st.st_size > 64 * 1024 * 1024 or not os.access(path, os.R_OK):
                    continue
                seen.add((st.st_dev, st.st_ino))
                target = files / f"{len(seen):05d}-{name}"
                shutil.copyfile(path, target)
                target.chmod(0o755 if st.st_mode & 0o111 else 0o644)
                total += st.st_size
                if total >= budget:
                    return total
    return total


def prepare(work: Path, megabytes: int) -> tuple[Path, int]:
    staging = work / f"staging-{megabytes}"
    size = gather_payload(staging, megabytes)
    archive = work / f"input-{megabytes}.tar.gz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(staging), "payload"], check=True)
    shutil.rmtree(staging)
    return archive, size


def _peak() -> dict[str, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self_kib": own, "children_kib": children}


def run_pipeline(archive: Path, work: Path, key: Path, compression: str) -> dict[str, float | int]:
    from builds.pipeline.bake import bake_sysext
    from builds.pipeline.fetch import Fetcher
    from builds.pipeline.recipe import parse_recipe
    from builds.pipeline.signing import GpgSigner

    recipe = parse_recipe(RECIPE.format(url=archive.absolute().as_uri()), source="benchmark.yaml")
    out = work / "pipeline-out"
    with Fetcher(work / "cache", file_roots=[archive.absolute().parent]) as fetcher, GpgSigner(key) as signer:
        fetcher.fetch(archive.absolute().as_uri())  # warm cache: the bare run downloads nothing either
        started = time.monotonic()
        result = bake_sysext(
            recipe,
            "v1.0.0",
            "x86-64",
            out,
            fetcher=fetcher,
            compression=compression,
            signer=signer,
            work_dir=work,
        )
        seconds = time.monotonic() - started
    steps = {s.step: round(s.seconds, 2) for s in result.steps}
    return {"seconds": seconds, "image_bytes": result.image_size, "steps": steps, **_peak()}  # type: ignore[dict-item]


def run_bare(archive: Path, work: Path, key: Path, compression: str) -> dict[str, float | int]:
    home = Path(tempfile.mkdtemp(prefix="bh-bench-gpg-"))
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--quiet", "--import", str(key)], check=True, env=env, capture_output=True
    )
    root = work / "bare-root"
    root.mkdir()
    image = work / "bare.raw"
    started = time.monotonic()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(root)], check=True)
    before_image = time.monotonic()
    subprocess.run(
        [
            "mksquashfs",
            str(root),
            str(image),
            "-all-root",
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            compression,
        ],
        check=True,
    )
    image_seconds = time.monotonic() - before_image
    sums = subprocess.run(["sha256sum", image.name], cwd=work, check=True, capture_output=True).stdout
    (work / "SHA256SUMS").write_bytes(sums)
    subprocess.run(
        [
            "gpg",
            "--batch",
            "--yes",
            "--detach-sign",
            "--output",
            str(work / "SHA256SUMS.gpg"),
            str(work / "SHA256SUMS"),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    seconds = time.monotonic() - started
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    shutil.rmtree(home, ignore_errors=True)
    steps = {"image": round(image_seconds, 2)}
    return {"seconds": seconds, "image_bytes": image.stat().st_size, "steps": steps, **_peak()}  # type: ignore[dict-item]


def _one(kind: str, archive: Path, key: Path, compression: str) -> dict[str, float | int]:
    """Run one measurement in a fresh child process (clean getrusage peaks)."""
    with tempfile.TemporaryDirectory(prefix="bh-bench-run-") as work:
        command = [
            sys.executable,
            "-m",
            "bench.bake",
            "--one",
            kind,
            str(archive),
            str(key),
            compression,
            work,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{kind} run failed:\n{done.stdout}\n{done.stderr}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bake")
    parser.add_argument("--compression", default="gzip", choices=("gzip", "zstd", "xz"))
    parser.add_argument("--one", nargs=5, metavar=("KIND", "ARCHIVE", "KEY", "COMPRESSION", "WORK"))
    args = parser.parse_args(argv)
    if args.one:
        kind, archive, key, compression, work = args.one
        runner = run_pipeline if kind == "pipeline" else run_bare
        print(json.dumps(runner(Path(archive), Path(work), Path(key), compression)))
        return 0

    from builds.pipeline.signing import generate_signing_key

    with tempfile.TemporaryDirectory(prefix="bh-bench-") as scratch:
        work = Path(scratch)
        key = work / "key.asc"
        generate_signing_key(key, name="Bakehouse Bench", email="bench@bakehouse.invalid")
        print(f"bake benchmark ({args.compression}); {os.cpu_count()} CPUs; best of {REPEATS} runs each")
        header = f"{'input':>10} {'pipeline':>9} {'bare':>7} {'ratio':>6} {'py peak':>9} {'tools peak':>11}"
        print(header + "  steps")
        ratios = []
        peaks = []
        for megabytes in SIZES_MB:
            archive, size = prepare(work, megabytes)
            # Alternate the two so that a busy neighbour slows both alike; keep each one's best.
            runs: dict[str, list[dict[str, float | int]]] = {"pipeline": [], "bare": []}
            for _ in range(REPEATS):
                for kind in runs:
                    runs[kind].append(_one(kind, archive, key, args.compression))
            pipeline = min(runs["pipeline"], key=_secs)
            bare = min(runs["bare"], key=_secs)
            ratio = float(pipeline["seconds"]) / float(bare["seconds"])
            # mksquashfs dominates and is the same tool in both; on a busy machine its time is
            # noisy, so also show the ratio of everything around it.
            around = _around_image(pipeline) / max(_around_image(bare), 1e-3)
            ratios.append(ratio)
            peaks.append(max(int(pipeline["self_kib"]), int(pipeline["children_kib"])))
            print(
                f"{size / 2**20:>8.0f}MB {pipeline['seconds']:>8.2f}s {bare['seconds']:>6.2f}s {ratio:>6.3f} "
                f"{int(pipeline['self_kib']) / 1024:>7.0f}MB {int(pipeline['children_kib']) / 1024:>9.0f}MB  "
                f"{pipeline['steps']}"
            )
            print(
                f"{'':>10} outside the compressor: pipeline {_around_image(pipeline):.2f}s, "
                f"bare {_around_image(bare):.2f}s (x{around:.2f})"
            )
            print(
                f"{'(bare)':>10} {'':>9} {'':>7} {'':>6} {int(bare['self_kib']) / 1024:>7.0f}MB "
                f"{int(bare['children_kib']) / 1024:>9.0f}MB"
            )
            archive.unlink()
        worst = max(ratios)
        growth = peaks[-1] / peaks[0]
        verdict = "OK" if worst <= GOAL_RATIO or args.compression != "gzip" else "ABOVE GOAL"
        print(f"worst ratio {worst:.3f} (goal <= {GOAL_RATIO} for gzip): {verdict}")
        print(
            f"pipeline peak memory (own process or any tool) grows x{growth:.2f} "
            f"from {SIZES_MB[0]} MB to {SIZES_MB[-1]} MB of input"
        )
    return 0


def _around_image(run: dict[str, float | int]) -> float:
    steps = run["steps"]
    assert isinstance(steps, dict)
    return float(run["seconds"]) - float(steps["image"])


def _secs(run: dict[str, float | int]) -> float:
    return float(run["seconds"])


if __name__ == "__main__":
    sys.exit(main())
