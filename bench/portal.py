"""``make bench``: the whole product against the bare tools, and how it scales.

Every figure is measured in the same run on the same machine (bench/stack.py starts the stack):

1. end to end: a flavour of three extensions (``e2e_mb`` of real binaries in all) from POST to
   succeeded, through gunicorn, Celery on Redis, PostgreSQL and moto's S3, over the bare
   ``tar -x`` + ``mksquashfs`` (the pipeline's own options) + ``sha256sum`` + ``gpg --detach-sign``
   on the same archives; zstd is the pipeline alone (bench/bake.py: the product offers gzip only);
2. cached: the same flavour requested again, POST to succeeded, nothing rebuilt;
3. scale: 1, 2 and 4 independent builds with 1 and 2 worker processes, and 2 workers on
   separate var dirs (two machines) sharing Redis, PostgreSQL and S3;
4. API under load: catalog list, flavour detail, Butane download and build status;
5. memory: peak RSS of the worker baking ``memory_mb`` of input, and of the web process streaming
   a ``stream_mb`` artifact from S3;
6. fairness: one team's ``flood`` builds, then another team's one, on one worker.

Prints one table and writes it as JSON under ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bake import gather_payload
from bench.stack import Stack, member_token, product_stack

RESULTS = Path(__file__).resolve().parent / "results"
SIZES: dict[str, dict[str, int]] = {
    "full": {
        "e2e_mb": 150, "scale_mb": 40, "memory_mb": 1024, "stream_mb": 1024,
        "load_seconds": 20, "clients": 16, "cached": 50, "flood": 20,
    },
    # The smoke test's (tests/test_bench.py): proves the harness, measures nothing worth keeping.
    "tiny": {
        "e2e_mb": 2, "scale_mb": 1, "memory_mb": 2, "stream_mb": 2,
        "load_seconds": 1, "clients": 2, "cached": 3, "flood": 2,
    },
    "quick": {
        "e2e_mb": 6, "scale_mb": 2, "memory_mb": 8, "stream_mb": 8,
        "load_seconds": 2, "clients": 4, "cached": 10, "flood": 4,
    },
}  # fmt: skip


@dataclass
class Row:
    """One line of the table: a measured figure, the goal, and whether it is met."""

    measure: str
    value: str
    goal: str
    passed: bool | None  # None: informational
    detail: dict[str, Any]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def make_archives(work: Path, megabytes: int, parts: int, tag: str) -> list[Path]:
    """``parts`` tar.gz archives of ``payload/files/*``, ``megabytes`` of real binaries in all."""
    staging = work / f"staging-{tag}"
    gather_payload(staging, megabytes)
    # Largest first into the lightest part: parts of about the same size.
    files = sorted((staging / "payload" / "files").iterdir(), key=lambda p: (-p.stat().st_size, p.name))
    loads = [0] * parts
    targets = []
    for part in range(parts):
        target = work / f"part-{tag}-{part}" / "payload" / "files"
        target.mkdir(parents=True)
        targets.append(target)
    for path in files:
        lightest = loads.index(min(loads))
        loads[lightest] += path.stat().st_size
        path.rename(targets[lightest] / path.name)
    archives = []
    for part in range(parts):
        root = work / f"part-{tag}-{part}"
        archive = work / f"{tag}-{part}.tar.gz"
        subprocess.run(["tar", "-czf", str(archive), "-C", str(root), "payload"], check=True)
        shutil.rmtree(root)
        archives.append(archive)
    shutil.rmtree(staging)
    return archives


def bare_tools(archives: list[Path], work: Path, key: Path, compression: str) -> float:
    """Seconds for what the product does with the bare tools: unpack, image, sums, signature."""
    from builds.pipeline.image import mksquashfs_argv

    home = Path(tempfile.mkdtemp(prefix="bh-bench-gpg-"))
    home.chmod(0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--quiet", "--import", str(key)], check=True, env=env, capture_output=True
    )
    out = work / f"bare-{time.monotonic_ns()}"
    out.mkdir()
    started = time.monotonic()
    images = []
    for n, archive in enumerate(archives):
        root = out / f"root-{n}"
        root.mkdir()
        subprocess.run(["tar", "-xzf", str(archive), "-C", str(root)], check=True)
        image = out / f"image-{n}.raw"
        subprocess.run(mksquashfs_argv(root, image, compression), check=True)
        images.append(image.name)
    sums = subprocess.run(["sha256sum", *images], cwd=out, check=True, capture_output=True).stdout
    (out / "SHA256SUMS").write_bytes(sums)
    subprocess.run(
        ["gpg", "--batch", "--yes", "--detach-sign",
         "--output", str(out / "SHA256SUMS.gpg"), str(out / "SHA256SUMS")],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    seconds = time.monotonic() - started
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def timed_build(stack: Stack, flavour_id: str) -> float:
    return timed_build_steps(stack, flavour_id)[0]


def timed_build_steps(stack: Stack, flavour_id: str) -> tuple[float, dict[str, float]]:
    """Seconds from POST to succeeded, and the seconds of each step the build recorded (a step
    run once per extension, bake and verify, summed over the extensions)."""
    started = time.monotonic()
    build = stack.request_build(flavour_id)
    # A cached flavour's POST already answers with the succeeded build, as a CI client reads it.
    body = build if build["state"] == "succeeded" else stack.wait_finished(build["id"])
    seconds = time.monotonic() - started
    steps: dict[str, float] = {}
    for step in body.get("steps", []):
        steps[step["name"]] = steps.get(step["name"], 0.0) + (step["duration_seconds"] or 0.0)
    return seconds, steps


# --- 1 and 2: end to end, cached ------------------------------------------------------------


def measure_end_to_end(stack: Stack, work: Path, size: dict[str, int]) -> tuple[list[Row], str]:
    archives = make_archives(work, size["e2e_mb"], 3, "e2e")
    names = [f"e2e-{n}" for n in range(3)]
    for name, archive in zip(names, archives, strict=True):
        stack.add_extension(name, archive)
    flavour = stack.compose("end to end", names)
    stack.start_workers(1, concurrency=1)  # one image at a time, as the bare tools run
    product, steps = timed_build_steps(stack, flavour)
    bare = bare_tools(archives, work, Path(stack.env["SIGNING_KEY_FILE"]), "gzip")
    ratio = product / bare
    mb = sum(a.stat().st_size for a in archives) / 2**20
    rows = [
        Row(
            "1. end to end, gzip (3 extensions)",
            f"x{ratio:.2f} ({product:.1f} s / bare {bare:.1f} s; steps "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in steps.items())
            + ")",
            "<= 1.15",
            ratio <= 1.15,
            {
                "product_s": product,
                "steps": steps,
                "bare_s": bare,
                "ratio": ratio,
                "archives_mb": mb,
                "input_mb": size["e2e_mb"],
            },
        )
    ]
    rows.append(measure_zstd_pipeline(archives, work, Path(stack.env["SIGNING_KEY_FILE"])))
    cached = []
    for _ in range(size["cached"]):
        cached.append(timed_build(stack, flavour) * 1000)
    p95 = percentile(cached, 0.95)
    rows.append(
        Row(
            "2. cached flavour, POST to succeeded",
            f"p95 {p95:.0f} ms (p50 {percentile(cached, 0.5):.0f} ms, n={len(cached)})",
            "p95 < 100 ms",
            p95 < 100,
            {"ms": cached},
        )
    )
    stack.stop_workers()
    return rows, flavour


def measure_zstd_pipeline(archives: list[Path], work: Path, key: Path) -> Row:
    """zstd level 3 through the pipeline (bench/bake.py), the product offering gzip only."""
    from bench.bake import _one

    pipeline = sum(float(_one("pipeline", a, key, "zstd")["seconds"]) for a in archives)
    bare = bare_tools(archives, work, key, "zstd")
    goal = 1.2 * bare + 1
    return Row(
        "1. zstd (pipeline; the API offers gzip)",
        f"{pipeline:.1f} s / bare {bare:.1f} s (x{pipeline / bare:.2f})",
        "<= 1.2 x bare + 1 s",
        pipeline <= goal,
        {"pipeline_s": pipeline, "bare_s": bare},
    )


# --- 3: scale -------------------------------------------------------------------------------


def measure_scale(stack: Stack, work: Path, size: dict[str, int]) -> list[Row]:
    (archive,) = make_archives(work, size["scale_mb"], 1, "scale")
    configurations = [
        ("1 worker", 1, False),
        ("2 workers", 2, False),
        ("2 workers, 2 var dirs", 2, True),
    ]
    times: dict[str, dict[int, float]] = {}
    run = 0
    for label, workers, separate in configurations:
        stack.start_workers(workers, concurrency=1, separate_var_dirs=separate)
        # Not timed: each worker's first task pays for imports and connections.
        warm = []
        for _ in range(workers):
            run += 1
            name = f"scale-warm-{run}"
            stack.add_extension(name, archive)
            warm.append(stack.request_build(stack.compose(name, [name]))["id"])
        for build in warm:
            stack.wait_finished(build)
        times[label] = {}
        for count in (1, 2, 4):
            run += 1
            flavours = []
            for n in range(count):
                name = f"scale-{run}-{n}"
                stack.add_extension(name, archive)
                flavours.append(stack.compose(name, [name]))
            started = time.monotonic()
            builds = [stack.request_build(f)["id"] for f in flavours]
            for build in builds:
                stack.wait_finished(build)
            times[label][count] = time.monotonic() - started
        stack.stop_workers()
    single = times["1 worker"][1]
    two = times["2 workers"][2]
    ratio = two / (2 * single)
    per_worker = {
        label: {count: round(count / seconds * 60, 2) for count, seconds in by_count.items()}
        for label, by_count in times.items()
    }
    cells = ", ".join(f"{label}: " + "/".join(f"{times[label][c]:.1f}" for c in (1, 2, 4)) for label in times)
    return [
        Row(
            "3. 2 builds on 2 workers vs twice one",
            f"x{ratio:.2f} ({two:.1f} s vs 2 x {single:.1f} s)",
            "< 0.65",
            ratio < 0.65,
            {"seconds": times, "builds_per_minute": per_worker, "mb_per_image": size["scale_mb"]},
        ),
        Row("3. wall time for 1/2/4 builds (s)", cells, "model in README", None, {}),
    ]


# --- 4: API under load ----------------------------------------------------------------------


# wrk's report, one line per run: requests, errors, then the latency (microseconds) at the
# 0.1st, 0.2nd ... 99.9th percentile, so runs side by side merge into one distribution.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  local quantiles = {}
  for i = 1, 999 do quantiles[i] = string.format("%d", latency:percentile(i / 10)) end
  io.write(string.format("BENCH %d %d %s\\n", summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, table.concat(quantiles, ",")))
end
"""


@dataclass
class LoadRun:
    """One wrk run's count, errors and latency quantiles (ms; index i is the (i+1)/10 percentile)."""

    requests: int
    errors: int
    quantiles: list[float]

    def percentile(self, fraction: float) -> float:
        return self.quantiles[min(998, max(0, round(fraction * 1000) - 1))]


def merged_percentile(runs: list[LoadRun], fraction: float) -> float:
    """The percentile of all requests of ``runs`` together (each quantile weighs requests/999)."""
    weighted = sorted((ms, run.requests / 999) for run in runs for ms in run.quantiles)
    total = sum(weight for _, weight in weighted)
    seen = 0.0
    for ms, weight in weighted:
        seen += weight
        if seen >= fraction * total:
            return ms
    return weighted[-1][0]


def load(
    stack: Stack, paths: dict[str, str], clients: int, seconds: int, headers: dict[str, str]
) -> dict[str, LoadRun]:
    """``clients`` connections for ``seconds``, spread evenly over ``paths`` (at least one each),
    all at once: one wrk per path (a C client; 16 Python threads on these cores would measure
    their own GIL more than the server)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing: apt-get install wrk (the API load's client)")
    script = Path(tempfile.mkstemp(prefix="bh-bench-wrk-", suffix=".lua")[1])
    script.write_text(WRK_REPORT)
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    per_path = [max(1, clients // len(paths) + (n < clients % len(paths))) for n in range(len(paths))]
    try:
        running = {
            name: subprocess.Popen(
                [
                    wrk,
                    "-t1",
                    f"-c{connections}",
                    f"-d{seconds}s",
                    "--timeout",
                    "30s",
                    *header_args,
                    "-s",
                    str(script),
                    stack.web_url + path,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for (name, path), connections in zip(paths.items(), per_path, strict=True)
        }
        runs = {}
        for name, process in running.items():
            out, _ = process.communicate(timeout=seconds + 120)
            report = next((line for line in out.splitlines() if line.startswith("BENCH ")), None)
            if process.returncode or report is None:
                raise SystemExit(f"wrk failed on {name}:\n{out[-2000:]}")
            _, requests_, errors, quantiles = report.split(" ")
            runs[name] = LoadRun(int(requests_), int(errors), [int(us) / 1000 for us in quantiles.split(",")])
        return runs
    finally:
        script.unlink()


def measure_api_load(stack: Stack, flavour_id: str, size: dict[str, int]) -> list[Row]:
    build_id = stack.request_build(flavour_id)["id"]
    stack.wait_finished(build_id)  # the flavour is built: its build is a finished one
    paths = {
        "catalog list": "/api/extensions/",
        "flavour detail": f"/api/flavours/{flavour_id}/",
        "butane download": f"/api/flavours/{flavour_id}/butane",
        "build status": f"/api/builds/{build_id}/",
    }
    token = {"Authorization": f"Token {stack.token}"}
    for path in paths.values():  # warm: the first read of each is stored (portal.read_cache)
        response = stack.api("GET", path)
        if response.status_code != 200:
            raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:300]}")
    clients, seconds = size["clients"], size["load_seconds"]
    rows = []
    # Cached: what clients polling these reads get. Uncached: the same reads with a cookie, which
    # the read cache never answers (a session could be behind it): what a first read costs.
    for kind, headers in (("cached", token), ("uncached", {**token, "Cookie": "bench=uncached"})):
        runs = load(stack, paths, clients, seconds, headers)
        total = sum(run.requests for run in runs.values())
        errors = sum(run.errors for run in runs.values())
        p95 = merged_percentile(list(runs.values()), 0.95)
        figures = (
            f"{total / seconds:.0f} req/s, p50 {merged_percentile(list(runs.values()), 0.5):.1f} / "
            f"p95 {p95:.1f} / p99 {merged_percentile(list(runs.values()), 0.99):.1f} ms, {errors} errors"
        )
        detail = {"requests": total, "errors": errors, "per_read": {n: asdict(r) for n, r in runs.items()}}
        if kind == "cached":
            rows.append(
                Row(
                    f"4. API, cached reads, {clients} clients for {seconds} s",
                    figures,
                    "p95 < 20 ms, 0 errors",
                    p95 < 20 and not errors,
                    detail,
                )
            )
        else:
            rows.append(
                Row(
                    f"4. API, uncached reads, {clients} clients for {seconds} s",
                    figures,
                    "0 errors",
                    not errors,
                    detail,
                )
            )
        for name, run in runs.items():
            rows.append(
                Row(
                    f"4.   {name} ({kind})",
                    f"p50 {run.percentile(0.5):.1f} / p95 {run.percentile(0.95):.1f} / "
                    f"p99 {run.percentile(0.99):.1f} ms (n={run.requests})",
                    "",
                    None,
                    {},
                )
            )
    return rows


# --- 5: memory ------------------------------------------------------------------------------


def measure_memory(stack: Stack, work: Path, size: dict[str, int]) -> list[Row]:
    (archive,) = make_archives(work, size["memory_mb"], 1, "memory")
    stack.add_extension("memory", archive)
    flavour = stack.compose("memory", ["memory"])
    stack.start_workers(1, concurrency=1)
    peak_tools = 0
    build = stack.request_build(flavour)
    done = threading.Event()

    def watch() -> None:
        nonlocal peak_tools
        from bench.stack import peak_rss_kib, session_pids

        while not done.is_set():
            for worker in stack.workers:
                for pid in session_pids(worker.process.pid):
                    peak_tools = max(peak_tools, peak_rss_kib(pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stack.wait_finished(build["id"])
    finally:
        done.set()
        watcher.join()
    worker_peak = stack.workers[0].python_peak_kib() / 1024
    stack.stop_workers()
    rows = [
        Row(
            f"5. worker peak RSS baking {size['memory_mb']} MB",
            f"{worker_peak:.0f} MB (any process of it, tools too: {peak_tools / 1024:.0f} MB)",
            "< 150 MB",
            worker_peak < 150,
            {"worker_mb": worker_peak, "tools_mb": peak_tools / 1024},
        )
    ]
    rows.append(measure_streaming(stack, work, size))
    return rows


def measure_streaming(stack: Stack, work: Path, size: dict[str, int]) -> Row:
    """A large object in S3, downloaded through ``/artifacts/`` (the portal streams it)."""
    import boto3
    import requests

    from bench.stack import peak_rss_kib

    big = work / "stream.bin"
    with big.open("wb") as f:
        for _ in range(size["stream_mb"]):
            f.write(os.urandom(1 << 20))
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.env["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=stack.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=stack.env["AWS_SECRET_ACCESS_KEY"],
    )
    s3.upload_file(str(big), "bench", "extensions/streamed/streamed-v1-x86-64.raw")
    big.unlink()
    before = {pid: peak_rss_kib(pid) for pid in stack.web_pids()}
    received = 0
    started = time.monotonic()
    with requests.get(
        f"{stack.web_url}/artifacts/extensions/streamed/streamed-v1-x86-64.raw", stream=True, timeout=600
    ) as r:
        r.raise_for_status()
        for chunk in r.iter_content(1 << 20):
            received += len(chunk)
    seconds = time.monotonic() - started
    after = {pid: peak_rss_kib(pid) for pid in stack.web_pids()}
    peak = max(after.values()) / 1024
    grew = max(after[pid] - before.get(pid, 0) for pid in after) / 1024
    return Row(
        f"5. web peak RSS streaming {size['stream_mb']} MB from S3",
        f"{peak:.0f} MB (grew {grew:.0f} MB; {received / 2**20 / seconds:.0f} MB/s)",
        "< 150 MB",
        peak < 150 and received == size["stream_mb"] << 20,
        {"peak_mb": peak, "grew_mb": grew, "bytes": received},
    )


# --- 6: fairness ----------------------------------------------------------------------------


def measure_fairness(stack: Stack, work: Path, size: dict[str, int]) -> list[Row]:
    (archive,) = make_archives(work, 1, 1, "fair")
    stack.add_extension("fair", archive)
    red_token = member_token("red", "red-admin")
    flood = []
    for n in range(size["flood"]):
        flood.append(stack.compose(f"flood {n}", ["fair"]))
    saved, stack.token = stack.token, red_token
    lone = stack.compose("lone", ["fair"], team="red")
    stack.token = saved
    # All queued before the one worker starts: first in, first out would run red's last.
    flood_builds = [stack.request_build(f)["id"] for f in flood]
    started = time.monotonic()
    lone_build = stack.request_build(lone, token=red_token)["id"]
    stack.start_workers(1, concurrency=1)
    stack.wait_finished(lone_build, token=red_token)
    lone_seconds = time.monotonic() - started
    finished_before = 0
    for build in flood_builds:
        body = stack.api("GET", f"/api/builds/{build}/").json()
        finished_before += body["state"] == "succeeded"
    for build in flood_builds:
        stack.wait_finished(build)
    all_seconds = time.monotonic() - started
    stack.stop_workers()
    return [
        Row(
            f"6. other team's 1 build behind a flood of {size['flood']}",
            f"done after {finished_before} of {size['flood']} "
            f"({lone_seconds:.1f} s; flood {all_seconds:.1f} s)",
            "before the flood is done",
            finished_before < size["flood"],
            {"flood_done_before": finished_before, "lone_s": lone_seconds, "flood_s": all_seconds},
        )
    ]


# --- the table ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def render(rows: list[Row], about: dict[str, Any]) -> str:
    width = max(len(r.measure) for r in rows)
    lines = [
        f"Bakehouse bench ({about['size']}), {about['date']}, {about['cpus']} CPUs ({about['cpu']}), "
        f"load {about['load_average']} at start, {about.get('load_average_end')} at end"
    ]
    for row in rows:
        verdict = {True: "PASS", False: "FAIL", None: ""}[row.passed]
        goal = f"[{row.goal}]" if row.goal else ""
        lines.append(f"{row.measure:<{width}}  {row.value}  {goal} {verdict}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["e2e", "scale", "api", "memory", "fairness"],
        help="run these parts only",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    only = set(args.only or ["e2e", "scale", "api", "memory", "fairness"])
    about = {"size": args.size, **machine(), "sizes": size}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bh-bench-") as scratch:
        work = Path(scratch)
        with product_stack(work) as stack:
            flavour = ""

            def part(name: str, measure: Callable[[], list[Row]]) -> None:
                # A part that breaks is a FAIL row with the reason; the others still run.
                try:
                    rows.extend(measure())
                except (Exception, SystemExit) as problem:
                    stack.stop_workers()
                    rows.append(Row(f"{name}: did not run", str(problem)[-300:], "runs", False, {}))

            if "e2e" in only or "api" in only:

                def end_to_end() -> list[Row]:
                    nonlocal flavour
                    e2e, flavour = measure_end_to_end(stack, work, size)
                    return e2e if "e2e" in only else []

                part("1-2. end to end", end_to_end)
            if "scale" in only:
                part("3. scale", lambda: measure_scale(stack, work, size))
            if "api" in only and flavour:
                part("4. API", lambda: measure_api_load(stack, flavour, size))
            if "memory" in only:
                part("5. memory", lambda: measure_memory(stack, work, size))
            if "fairness" in only:
                part("6. fairness", lambda: measure_fairness(stack, work, size))
    about["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    table = render(rows, about)
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.results / f"bench-{args.size}-{stamp}.json"
    path.write_text(
        json.dumps({"machine": about, "rows": [asdict(r) for r in rows], "table": table}, indent=2)
    )
    print(f"written to {path}")
    failed = [r for r in rows if r.passed is False]
    return 1 if failed and args.size == "full" else 0


if __name__ == "__main__":
    sys.exit(main())
