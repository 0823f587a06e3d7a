"""Start-up fails on a wrong configuration value, naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _check(env_overrides: dict[str, str], tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    # What the test session itself set (the browser suite's DJANGO_ALLOW_ASYNC_UNSAFE, services)
    # is no deployment's environment.
    ours = {"DATABASE_URL", "REDIS_URL", "S3_BUCKET", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update({"BAKEHOUSE_VAR_DIR": str(tmp_path / "var"), **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", "check", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _production_like_environment() -> dict[str, str]:
    """production.env.example: the documented production values (.ci/run checks the same file)."""
    lines = (ROOT / "production.env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_production_like_environment_passes_the_deployment_checks(tmp_path):
    embedded = _check({}, tmp_path, "--deploy", "--fail-level", "WARNING")
    assert embedded.returncode != 0  # plain HTTP for `make run`: the checks do warn
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in embedded.stderr

    result = _check(_production_like_environment(), tmp_path, "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


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
        ("SECURE_HSTS_SECONDS", "one year"),
        ("SECURE_SSL_REDIRECT", "sometimes"),
        ("SESSION_COOKIE_SECURE", "2"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto: https"),
        # A header naming HTTPS with no proxy of ours in front: clients could claim HTTPS.
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto"),
        ("SIGNIN_FAILURES_PER_USER", "0"),
        ("SIGNIN_LOCKOUT_SECONDS", "15m"),
    ],
)
def test_wrong_value_names_the_variable(tmp_path, name, value):
    result = _check({name: value}, tmp_path)
    assert result.returncode != 0
    assert name in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"configuration error: {name}:")
