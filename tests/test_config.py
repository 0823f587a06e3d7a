"""Start-up fails on a wrong configuration value, naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check(env_overrides: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "S3_BUCKET"}}
    env.update({"BAKEHOUSE_VAR_DIR": str(tmp_path / "var"), **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_embedded_defaults_start(tmp_path):
    result = _check({}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "var" / "secret_key").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "nosuchdb://x"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("S3_ENDPOINT_URL", "ftp://storage"),
        ("S3_BUCKET", "Not_A_Bucket!"),
        ("PUBLIC_BASE_URL", "nodes.example.com/path"),
        ("SIGNING_KEY_FILE", "/nonexistent/key.asc"),
        ("UPSTREAM_MIRRORS", "https://github.com/"),
        ("DEBUG", "maybe"),
    ],
)
def test_wrong_value_names_the_variable(tmp_path, name, value):
    result = _check({name: value}, tmp_path)
    assert result.returncode != 0
    assert name in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"configuration error: {name}:")
