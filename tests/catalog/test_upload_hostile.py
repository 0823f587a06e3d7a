"""Hostile uploads cost the web nothing and the worker little; racing adds of one name get a 409.

The web request only stores the bytes (no scratch directory appears while it runs); the worker's
check refuses a many-entries archive and a gzip bomb early, writing far less than they expand to,
and leaves no scratch behind. Scratch left by a killed worker is removed at the next worker start.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import tarfile
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone

from builds.recovery import scratch_remove_stale
from catalog.models import Extension, UploadedArchive
from catalog.services import uploaded_archive_check, uploads_requeue_unchecked
from portal.celery import app
from tests.catalog.conftest import DEMO_RECIPE, Cast
from tests.catalog.test_custom_extensions import GOOD_TREE
from tests.upstream import make_tar

pytestmark = pytest.mark.reliability


@pytest.fixture
def scratch_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir scratch directories are made in, watched by the test."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@functools.cache
def many_directories(count: int) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for index in range(count):
            info = tarfile.TarInfo(f"usr/share/d{index}")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def gzip_bomb(expanded: int) -> bytes:
    """A tar.gz holding one file of ``expanded`` zero bytes, made without holding it in memory."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        header = tarfile.TarInfo("usr/share/zeros")
        header.size = expanded
        header.mode = 0o644
        gz.write(header.tobuf(format=tarfile.GNU_FORMAT))
        block = b"\0" * (1024 * 1024)
        for _ in range(expanded // len(block)):
            gz.write(block)
        gz.write(b"\0" * 1024)  # end-of-archive blocks
    return out.getvalue()


def post(cast: Cast, data: bytes, name: str = "hello", client=None):
    form = {
        "team": "blue",
        "name": name,
        "version": "1.0",
        "file": SimpleUploadedFile(f"{name}.tar.gz", data, content_type="application/octet-stream"),
    }
    return (client or cast.client(cast.teammate)).post("/api/extensions/", form, format="multipart")


def written_bytes() -> int:
    """Bytes this process has passed to write(2) so far (the kernel's count, /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.mark.django_db
def test_a_many_entries_upload_is_stored_by_the_web_and_refused_by_the_worker(
    cast: Cast, scratch_root: Path, settings
) -> None:
    settings.CUSTOM_UPLOAD_MAX_RATIO = 10_000  # the entry budget, not the ratio, is under test here
    data = many_directories(30_000)  # the probe's 99k directories, cut to what the budget needs
    assert len(data) < 1024 * 1024

    response = post(cast, data)  # the check is queued after the commit; nothing runs it here

    assert response.status_code == 202, response.content
    assert response.json()["versions"][0]["status"] == "checking"
    assert list(scratch_root.iterdir()) == []  # the web unpacked nothing

    upload = UploadedArchive.objects.get()
    uploaded_archive_check(upload_id=upload.pk)  # what the worker's task runs
    upload.refresh_from_db()
    assert (upload.state, upload.error_code) == ("refused", "archive.too-many-members")
    assert "more than 20000 members" in upload.error_message
    assert list(scratch_root.iterdir()) == []  # the worker's scratch is gone too


@pytest.mark.django_db
def test_a_slow_upload_is_refused_by_the_time_budget(cast: Cast, scratch_root: Path, settings) -> None:
    settings.CUSTOM_UPLOAD_MAX_ENTRIES = 1_000_000
    settings.CUSTOM_UPLOAD_MAX_RATIO = 10_000
    settings.CUSTOM_UPLOAD_CHECK_SECONDS = 0.5
    post(cast, many_directories(30_000))
    upload = UploadedArchive.objects.get()
    started = time.monotonic()
    uploaded_archive_check(upload_id=upload.pk)
    upload.refresh_from_db()
    assert (upload.state, upload.error_code) == ("refused", "archive.too-slow")
    assert time.monotonic() - started < 20
    assert list(scratch_root.iterdir()) == []


@pytest.mark.django_db
def test_a_gzip_bomb_is_refused_before_it_is_written_out(cast: Cast, scratch_root: Path) -> None:
    expanded = 256 * 1024 * 1024
    bomb = gzip_bomb(expanded)
    assert len(bomb) < 1024 * 1024

    response = post(cast, bomb)
    assert response.status_code == 202, response.content
    assert list(scratch_root.iterdir()) == []

    before = written_bytes()
    uploaded_archive_check(upload_id=UploadedArchive.objects.get().pk)
    written = written_bytes() - before

    upload = UploadedArchive.objects.get()
    assert (upload.state, upload.error_code) == ("refused", "archive.ratio")
    assert "decompression bomb" in upload.error_message
    assert written < expanded // 20, f"{written} bytes written for a {expanded}-byte bomb"
    assert list(scratch_root.iterdir()) == []


def test_scratch_left_by_killed_workers_is_removed_at_worker_start(scratch_root: Path) -> None:
    now = time.time()
    stale = [
        scratch_root / "bh-build-abc",
        scratch_root / "bakehouse-upload-def",
        scratch_root / "bh-final-x",
    ]
    for directory in stale:
        (directory / "tree" / "usr").mkdir(parents=True)
        (directory / "tree" / "usr" / "big").write_bytes(b"x" * 4096)
        os.utime(directory, (now - 7200, now - 7200))
    running = scratch_root / "bh-build-running"
    running.mkdir()
    unrelated = scratch_root / "someone-elses"
    unrelated.mkdir()
    os.utime(unrelated, (now - 7200, now - 7200))

    removed = scratch_remove_stale(older_than=3600, now=now)

    assert sorted(removed) == sorted(d.name for d in stale)
    assert sorted(p.name for p in scratch_root.iterdir()) == ["bh-build-running", "someone-elses"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["upload", "recipe"])
def test_concurrent_adds_of_one_new_name_get_one_success_and_409s(cast: Cast, kind: str) -> None:
    if connection.vendor != "postgresql":
        pytest.skip(
            "concurrent writers need PostgreSQL (DATABASE_URL); the SQLite test database is in memory"
        )
    from tests.upstream import executable, make_tar

    data = make_tar([executable("usr/bin/racer")])
    racer_recipe = DEMO_RECIPE.replace("name: demo", "name: racer", 1)
    threads = 8
    barrier = threading.Barrier(threads)
    statuses: list[int] = []
    bodies: list[dict] = []
    lock = threading.Lock()

    def add() -> None:
        try:
            client = cast.client(cast.teammate)
            client.raise_request_exception = False
            barrier.wait()
            if kind == "upload":
                response = post(cast, data, name="racer", client=client)
            else:
                response = client.post(
                    "/api/extensions/", {"team": "blue", "recipe": racer_recipe}, format="json"
                )
            with lock:
                statuses.append(response.status_code)
                bodies.append(response.json() if response.status_code < 500 else {})
        finally:
            connection.close()

    workers = [threading.Thread(target=add) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert len(statuses) == threads
    assert 500 not in statuses, statuses
    assert sorted(statuses) == [202 if kind == "upload" else 201] + [409] * (threads - 1), statuses
    assert {b["code"] for b in bodies if "code" in b} == {"extension.name-taken"}
    assert Extension.objects.filter(name="racer").count() == 1


@pytest.mark.django_db
def test_an_upload_whose_check_was_lost_is_checked_again(
    cast: Cast, scratch_root: Path, django_capture_on_commit_callbacks
) -> None:
    response = post(cast, make_tar(GOOD_TREE))  # the queued check is lost: nothing runs it
    assert response.status_code == 202, response.content
    upload = UploadedArchive.objects.get()
    assert uploads_requeue_unchecked(after=900) == []  # just arrived: still waiting its turn

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True  # the re-queued task runs here, as a worker would run it
    try:
        later = timezone.now() + timedelta(seconds=901)
        with django_capture_on_commit_callbacks(execute=True):  # tasks are sent after commit
            assert uploads_requeue_unchecked(now=later, after=900) == [upload.pk]
    finally:
        app.conf.task_always_eager = previous
    upload.refresh_from_db()
    assert upload.state == "ready"
    assert Extension.objects.get().versions.get().status == "proposed"
    assert uploads_requeue_unchecked(now=later, after=900) == []
