"""The pipeline must stay free of Django, Celery and boto3 so it can be reused on its own."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("django", "celery", "boto3", "botocore", "kombu", "rest_framework")


def test_pipeline_imports_without_web_stack():
    modules = sorted(
        "builds.pipeline." + ".".join(p.relative_to(ROOT / "builds/pipeline").with_suffix("").parts)
        for p in (ROOT / "builds/pipeline").rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    )
    script = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import builds.pipeline.__main__\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    # -S-free fresh interpreter, without the Django settings env var a pytest run sets.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert len(modules) >= 2
    assert result.stdout.strip() == "", f"pipeline pulled in {result.stdout.strip()}"
