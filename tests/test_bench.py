"""The benchmark harness works (``make bench`` itself is too slow for ``make test``).

Its pieces at a few megabytes, and one tiny run of the whole-product end-to-end part in a child
process (it starts its own database, S3, upstream, gunicorn and worker): the table and the JSON
come out, with a figure and a verdict per goal. The figures themselves are not checked here:
goals are the benchmark's business, never a timed test's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench.portal import LoadRun, Row, bare_tools, make_archives, merged_percentile, percentile, render
from builds.pipeline.signing import generate_signing_key

REPO = Path(__file__).resolve().parents[1]


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile([7.0], 0.95) == 7


def test_load_runs_side_by_side_merge_by_their_request_counts() -> None:
    fast = LoadRun(requests=900, errors=0, quantiles=[1.0] * 999)
    slow = LoadRun(requests=100, errors=0, quantiles=[50.0] * 999)
    assert merged_percentile([fast, slow], 0.5) == 1.0
    assert merged_percentile([fast, slow], 0.89) == 1.0
    assert merged_percentile([fast, slow], 0.95) == 50.0
    ramp = LoadRun(requests=999, errors=0, quantiles=[float(n) for n in range(1, 1000)])
    assert ramp.percentile(0.95) == 950.0 and merged_percentile([ramp], 0.95) == 950.0


def test_archives_split_real_binaries_and_the_bare_tools_run_on_them(tmp_path: Path) -> None:
    if not shutil.which("mksquashfs") or not shutil.which("gpg"):
        pytest.skip("needs mksquashfs and gpg")
    archives = make_archives(tmp_path, 2, 3, "smoke")
    assert len(archives) == 3
    members = []
    for archive in archives:
        with tarfile.open(archive) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
        assert names and all(n.startswith("payload/files/") for n in names)
        members += names
    assert len(members) == len(set(members))  # each file in one archive only
    key = tmp_path / "key.asc"
    generate_signing_key(key, name="Smoke", email="smoke@bakehouse.invalid")
    assert bare_tools(archives, tmp_path, key, "gzip") > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["key.asc", *(a.name for a in archives)])


def test_the_table_says_pass_or_fail_against_each_goal() -> None:
    about = {"size": "tiny", "date": "d", "cpus": 2, "cpu": "c", "load_average": [1], "load_average_end": [2]}
    table = render(
        [
            Row("fast", "1 s", "< 2 s", True, {}),
            Row("slow", "3 s", "< 2 s", False, {}),
            Row("i", "x", "", None, {}),
        ],
        about,
    )
    assert "fast  1 s  [< 2 s] PASS" in table and "slow  3 s  [< 2 s] FAIL" in table
    assert table.splitlines()[-1].endswith("x")


@pytest.mark.integration
@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    or not os.environ.get("REDIS_URL")
    or not shutil.which("mksquashfs"),
    reason="the whole-product bench needs DATABASE_URL (PostgreSQL), REDIS_URL and mksquashfs",
)
def test_a_tiny_whole_product_run_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--only", "e2e", "api", "--results", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (written,) = tmp_path.glob("bench-tiny-*.json")
    result = json.loads(written.read_text())
    measures = [row["measure"] for row in result["rows"]]
    assert any(m.startswith("1. end to end") for m in measures)
    assert any(m.startswith("2. cached flavour") for m in measures)
    assert any(m.startswith("4. API, cached reads") for m in measures)
    loaded = next(row for row in result["rows"] if row["measure"].startswith("4. API, cached reads"))
    assert loaded["detail"]["requests"] > 0 and loaded["detail"]["errors"] == 0
    assert all(row["passed"] in (True, False) for row in result["rows"] if row["goal"])
    assert result["table"] in done.stdout
    assert result["machine"]["cpus"] and result["machine"]["load_average"]
