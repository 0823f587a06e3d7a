"""The worker's own trouble while checking an upload is not the team's fault: it is raised as
infrastructure (the check runs again), never turned into a refusal that rejects the version."""

from __future__ import annotations

from pathlib import Path

import pytest

from builds.pipeline.error_codes import ErrorKind
from builds.pipeline.errors import PipelineError
from catalog import uploads
from catalog.errors import CatalogError
from tests.upstream import executable, make_tar


def test_a_worker_fault_while_unpacking_an_upload_is_not_a_refusal(tmp_path: Path) -> None:
    archive = tmp_path / "tool.tar.gz"
    archive.write_bytes(make_tar([executable("usr/bin/tool")]))
    dest = tmp_path / "tree"
    dest.mkdir()
    (dest / "left-over").write_text("scratch a killed worker left")  # archive.dest-not-empty

    with pytest.raises(PipelineError) as caught:
        uploads._unpack_strictly(archive, "tar.gz", dest, "tool.tar.gz")
    assert not isinstance(caught.value, CatalogError)
    assert caught.value.code == "archive.dest-not-empty"
    assert caught.value.kind == ErrorKind.INFRASTRUCTURE
    assert not caught.value.message.startswith("The archive was refused")


def test_a_hostile_upload_is_still_refused_as_the_users_problem(tmp_path: Path) -> None:
    archive = tmp_path / "tool.tar.gz"
    archive.write_bytes(b"not a tarball at all")
    dest = tmp_path / "tree"
    dest.mkdir()

    with pytest.raises(CatalogError) as caught:
        uploads._unpack_strictly(archive, "tar.gz", dest, "tool.tar.gz")
    assert caught.value.code == "archive.corrupt" and caught.value.kind == ErrorKind.USER
    assert caught.value.message.startswith("The archive was refused")
