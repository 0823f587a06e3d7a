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


def _embedded_env(var_dir: Path) -> dict[str, str]:
    unset = {"DATABASE_URL", "REDIS_URL", "S3_BUCKET", "SECRET_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update({"BAKEHOUSE_VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "portal.settings"})
    return env


def test_importing_the_settings_writes_no_files(tmp_path):
    """Embedded defaults (SQLite, filesystem broker, generated key): nothing is made on import,
    neither under BAKEHOUSE_VAR_DIR nor in the working directory."""
    work = tmp_path / "cwd"
    work.mkdir()
    code = "import portal.settings as s; from django.conf import settings; settings.INSTALLED_APPS"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env={**_embedded_env(tmp_path / "var"), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "var").exists()
    assert list(work.iterdir()) == []


def test_generated_secret_key_is_made_on_first_use_and_kept(tmp_path):
    """Without SECRET_KEY, the first signature makes a private key file that later processes share."""
    env = _embedded_env(tmp_path / "var")
    key_file = tmp_path / "var" / "secret_key"

    def django(code: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    django("pass")  # start-up makes the directories it needs, but no key yet
    assert (tmp_path / "var" / "staticfiles").is_dir()
    assert not key_file.exists()
    signed = django("from django.core import signing; print(signing.dumps('bakehouse'))")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_text().strip()) >= 50
    assert django(f"from django.core import signing; print(signing.loads({signed!r}))") == "bakehouse"


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


def test_every_variable_the_settings_read_is_documented():
    """Each variable portal/settings.py reads is in README's configuration table and .env.example."""
    import re

    settings_source = (ROOT / "portal" / "settings.py").read_text()
    config_source = (ROOT / "portal" / "config.py").read_text()
    names = set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', settings_source + config_source))
    assert {"DATABASE_URL", "CUSTOM_UPLOAD_MAX_BYTES", "S3_REGION"} <= names
    readme = (ROOT / "README.md").read_text()
    env_example = (ROOT / ".env.example").read_text()
    assert [n for n in sorted(names) if f"`{n}`" not in readme] == []
    assert [n for n in sorted(names) if f"# {n}=" not in env_example] == []


def test_settings_are_read_without_fallbacks_outside_the_settings_module():
    """A default given at the point of use (getattr(settings, X, default)) would hide a setting
    from portal/settings.py, README and .env.example."""
    import re

    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for app in ("portal", "catalog", "builds")
        for path in (ROOT / app).rglob("*.py")
        for match in re.finditer(r"getattr\(\s*settings\s*,[^)]*\)", path.read_text())
    ]
    assert offenders == []
