"""After a real build with an operator's passphrase-protected signing key, the key, its
passphrase and the Django SECRET_KEY appear nowhere a person or a node can see: not in the
worker's or the web's logs, any database row, any page or API answer a team member reaches for
the build, an error message, or any published artifact (inside the squashfs images too).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.test import Client

from tests.builds.build_support import serve_extension
from tests.builds.catalog_fixtures import Cast, make_cast
from tests.reliability.support import (
    RECOVERY_BOUND,
    Rig,
    api_client,
    compose,
    finished,
    point_celery_at,
    request_build,
    wait_for_build,
)

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")),
        reason="needs DATABASE_URL (PostgreSQL): the real worker shares the test database",
    ),
]

SECRET_KEY = "bh-reliability-" + secrets.token_urlsafe(40)


@pytest.fixture(scope="module")
def rig(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    made = Rig(tmp_path_factory.mktemp("secret-rig"), store="local")
    try:
        with point_celery_at(made.redis.url, made.queue):
            yield made
    finally:
        made.close()


@pytest.fixture
def cast(transactional_db: Any, rig: Rig, settings: Any) -> Cast:
    rig.configure_portal(settings)
    settings.SECRET_KEY = SECRET_KEY
    return make_cast()


def find(needles: dict[str, str], text: str, where: str) -> list[str]:
    return [f"{what} in {where}" for what, needle in needles.items() if needle and needle in text]


def image_contents(image: Path, scratch: Path) -> str:
    """Every file inside a squashfs image, unpacked with unsquashfs."""
    target = scratch / f"{len(list(scratch.iterdir()))}-{image.name}"
    subprocess.run(
        ["unsquashfs", "-no-progress", "-no-xattrs", "-d", str(target), str(image)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    parts = []
    for path in sorted(target.rglob("*")):
        if path.is_file() and not path.is_symlink():
            parts.append(f"{path.relative_to(target)}\n" + path.read_bytes().decode(errors="replace"))
    assert parts, f"{image.name} holds no file"
    return "\n".join(parts)


def test_no_secret_anywhere_after_a_build(
    rig: Rig, cast: Cast, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the web side's log: everything this process logs
    worker = rig.start_worker("secret-scan", env={"SECRET_KEY": SECRET_KEY, "LOG_LEVEL": "DEBUG"})
    needles = {f"signing secret #{i}": fragment for i, fragment in enumerate(rig.key.secret_fragments())}
    needles["SECRET_KEY"] = SECRET_KEY
    assert len(needles) >= 4, "the armored key should give several base64 body lines"

    serve_extension(rig.upstream, "scanned")
    rig.upstream.add_status(
        "/example/broken/releases/download/v1.0.0/broken-v1.0.0-x86_64.tar.gz", 404, b"gone\n"
    )
    from tests.builds.catalog_fixtures import make_extension

    make_extension("broken")  # pinned to a digest the (missing) upstream file cannot have
    client = api_client(cast.teammate)
    flavour_id = compose(client, "scanned flavour", ["scanned"])
    build_id = request_build(client, flavour_id)
    body = wait_for_build(
        client, build_id, finished, timeout=RECOVERY_BOUND, what="the end", workers=[worker]
    )
    assert body["state"] == "succeeded", (body["error_code"], body["error_message"], worker.tail())
    broken_flavour = compose(client, "broken flavour", ["broken"])
    broken_id = request_build(client, broken_flavour)
    broken = wait_for_build(
        client, broken_id, finished, timeout=RECOVERY_BOUND, what="the end", workers=[worker]
    )
    assert broken["state"] == "failed" and broken["error_message"]
    worker.stop()

    hits: list[str] = []
    # Logs.
    hits += find(needles, worker.log.read_text(errors="replace"), "the worker's log")
    hits += find(needles, caplog.text, "the web's log")
    # Every row of every table.
    for model in apps.get_models():
        fields = [f.attname for f in model._meta.concrete_fields]
        for row in model.objects.values_list(*fields):
            hits += find(needles, " ".join(str(value) for value in row), f"a row of {model._meta.db_table}")
    # Every page and API answer a team member reaches for these builds, error answers included.
    api = api_client(cast.owner)
    pages = Client()
    pages.force_login(cast.owner)
    paths = [
        "/api/builds/", "/api/flavours/", "/api/extensions/", "/api/webhooks/",
        f"/api/flavours/{flavour_id}/", f"/api/flavours/{flavour_id}/butane",
        f"/api/flavours/{flavour_id}/ignition", f"/api/flavours/{flavour_id}/builds/",
        f"/api/builds/{build_id}/", f"/api/builds/{build_id}/log",
        f"/api/builds/{broken_id}/", f"/api/builds/{broken_id}/log",
        f"/api/flavours/{broken_flavour}/butane",  # a 409: not built
        "/api/extensions/scanned/", "/api/schema/",
    ]  # fmt: skip
    paths += [
        a["download_url"].split("testserver", 1)[-1] for a in body["artifacts"] if a.get("download_url")
    ]
    page_paths = [
        "/", "/flavours/", f"/flavours/{flavour_id}/", f"/builds/{build_id}/", f"/builds/{broken_id}/",
        f"/flavours/{broken_flavour}/", "/catalog/", "/catalog/scanned/", "/teams/blue/", "/account/tokens/",
    ]  # fmt: skip
    for path in paths + page_paths:
        response = (api if path.startswith("/api/") else pages).get(path)
        assert response.status_code < 500, (path, response.status_code)
        content = (
            b"".join(response.streaming_content)
            if hasattr(response, "streaming_content")
            else response.content
        )
        hits += find(needles, content.decode(errors="replace"), f"GET {path} ({response.status_code})")
    # Every published artifact, and every file inside every image.
    published = [p for p in sorted(rig.artifact_dir.rglob("*")) if p.is_file()]
    assert any(p.suffix == ".raw" for p in published), f"no image was published: {published}"
    for path in published:
        hits += find(
            needles,
            path.read_bytes().decode(errors="replace"),
            f"artifact {path.relative_to(rig.artifact_dir)}",
        )
        if path.suffix == ".raw":
            hits += find(needles, image_contents(path, tmp_path), f"inside image {path.name}")
    assert not hits, "secrets found:\n" + "\n".join(hits)

    # A control, so that a scan which reads nothing cannot pass: the key's public fingerprint,
    # which the build logs on purpose, is found where the build log lives.
    control = {"fingerprint": rig.key.fingerprint()}
    assert find(control, worker.log.read_text(errors="replace"), "log") or find(
        control, api.get(f"/api/builds/{build_id}/log").content.decode(), "log"
    ), "the scan's control (the public fingerprint) was not found in the build's log"
