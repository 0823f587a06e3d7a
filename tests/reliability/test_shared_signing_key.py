# ruff: noqa: F811 - the end-to-end fixtures are imported, then requested by name
"""Issue 10, hole 12: workers on several machines sign with one shared key, or do not start.

A worker on a remote broker (REDIS_URL) without SIGNING_KEY_FILE would make a key of its own in
its own var dir, and nodes trusting one key would reject the builds of the others: it refuses to
start, naming the variable. Two workers on two var dirs given the same key file each bake a build,
and both signatures verify with the one public keyring.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from builds.pipeline.signing import GpgSigner
from portal.celery import app
from tests.builds.build_support import check_published_extension, serve_extension
from tests.builds.test_end_to_end import (  # noqa: F401 - fixtures
    REPO,
    _route_to,
    api,
    bucket,
    cast,
    compose,
    finished,
    portal_side,
    queue_name,
    s3,
    start_worker,
    upstream_server,
    wait_for,
    worker_env,
)
from tests.builds.test_end_to_end import pytestmark as end_to_end_marks
from tests.upstream import UpstreamServer

pytestmark = pytest.mark.reliability


def _remote_broker_without_key(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGNING_", "CELERY_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        BAKEHOUSE_VAR_DIR=str(tmp_path / "var"),
        REDIS_URL="redis://127.0.0.1:1/0",  # never reached: the worker must stop before connecting
    )
    env.pop("DATABASE_URL", None)
    return env


def test_a_worker_on_a_remote_broker_without_a_signing_key_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "-Q", f"bh-nokey-{uuid.uuid4().hex[:8]}"],
        cwd=REPO, env=_remote_broker_without_key(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "SIGNING_KEY_FILE" in result.stderr, result.stderr
    assert not (tmp_path / "var" / "signing").exists()  # no key of its own was made


def test_runportal_on_a_remote_broker_without_a_signing_key_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "runportal", "--no-collectstatic"],
        cwd=REPO, env=_remote_broker_without_key(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "SIGNING_KEY_FILE" in result.stderr, result.stderr
    assert "runportal: started" not in result.stdout


@end_to_end_marks[1]
@pytest.mark.integration
def test_two_workers_on_two_var_dirs_sign_with_the_one_shared_key(
    cast: Any,
    worker_env: dict[str, str],
    portal_side: Any,
    bucket: str,
    upstream_server: UpstreamServer,
    tmp_path: Path,
) -> None:
    key_file = Path(worker_env["SIGNING_KEY_FILE"])
    with GpgSigner(key_file) as signer:
        keyring = signer.export_public_keyring()
    previous = app.conf.task_default_queue
    client = api(cast.teammate)
    workers = []
    try:
        for machine in ("one", "two"):
            queue = f"bh-machine-{machine}-{uuid.uuid4().hex[:8]}"
            env = {**worker_env, "BAKEHOUSE_VAR_DIR": str(tmp_path / f"var-{machine}")}
            worker = start_worker(env, queue, tmp_path / f"worker-{machine}.log", concurrency=1)
            workers.append(worker)
            _route_to(queue)  # this machine's worker takes this build
            name = f"signed-{machine}"
            serve_extension(upstream_server, name)
            flavour = compose(client, f"signed on {machine}", [name])
            build_id = client.post(f"/api/flavours/{flavour['id']}/builds/").json()["id"]
            body = wait_for(client, build_id, worker, finished)
            assert body["state"] == "succeeded", (body, worker.tail())
            assert not (tmp_path / f"var-{machine}" / "signing").exists()  # no key of its own

        def get(key: str) -> bytes:
            return bytes(portal_side.get_object(Bucket=bucket, Key=key)["Body"].read())

        for machine in ("one", "two"):
            check_published_extension(get, f"extensions/signed-{machine}/", keyring)
    finally:
        for worker in workers:
            worker.stop()
        _route_to(previous)
