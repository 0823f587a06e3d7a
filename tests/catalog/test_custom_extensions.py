"""Custom extensions: a team's recipe, or an uploaded archive; hostile uploads are refused clearly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.models import Extension, ExtensionVersion, UploadedArchive, VersionStatus
from catalog.services import uploaded_archive_materialize
from tests.catalog.conftest import Cast
from tests.upstream import (
    device,
    directory,
    executable,
    fifo,
    file,
    hardlink,
    make_tar,
    make_zip,
    setuid_file,
    static_hello,
    symlink,
)

pytestmark = pytest.mark.django_db

GOOD_TREE = [
    directory("usr"),
    directory("usr/bin"),
    executable("usr/bin/hello"),
    file("usr/share/hello/README", b"hi"),
]


def upload(cast: Cast, data: bytes, file_name: str = "hello.tar.gz", **fields: str):
    form = {"team": "blue", "name": "hello", "version": "1.0", **fields}
    form["file"] = SimpleUploadedFile(file_name, data, content_type="application/octet-stream")
    return cast.client(cast.teammate).post("/api/extensions/", form, format="multipart")


@pytest.fixture
def checked_upload(cast: Cast, eager_celery: None, django_capture_on_commit_callbacks):
    """Upload, then let the (eager) worker task check the archive, as it does after the commit."""

    def post(data: bytes, file_name: str = "hello.tar.gz", **fields: str):
        with django_capture_on_commit_callbacks(execute=True):
            response = upload(cast, data, file_name, **fields)
        return response

    return post


def version_seen(cast: Cast, name: str = "hello", version: str = "1.0") -> dict:
    """The version as the team reads it in the API."""
    body = cast.client(cast.teammate).get(f"/api/extensions/{name}/").json()
    return next(v for v in body["versions"] if v["version"] == version)


def test_a_good_upload_becomes_a_proposed_version_pinned_to_its_bytes(
    cast: Cast, fetch_cache: Path, checked_upload, django_capture_on_commit_callbacks
) -> None:
    data = make_tar(GOOD_TREE)
    response = checked_upload(data, description="Says hello")

    # The web only kept the bytes: the version is being checked when the answer leaves.
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["origin"] == "upload"
    assert body["team"] == "blue"
    (version,) = body["versions"]
    assert version["status"] == "checking"
    version = version_seen(cast)
    assert version["status"] == "proposed"
    assert UploadedArchive.objects.get().state == UploadedArchive.State.READY
    sha = hashlib.sha256(data).hexdigest()
    assert {d["arch"]: d["sha256"] for d in version["digests"]} == {"x86-64": sha, "arm64": sha}
    assert "file://" in body["recipe_text"]
    assert cast.client(cast.outsider).get("/api/extensions/hello/").status_code == 404

    # The team's curator approves: the archive is materialised and fetched like any upstream file.
    with django_capture_on_commit_callbacks(execute=True):
        approved = cast.client(cast.curator).post(f"/api/versions/{version['id']}/approve", {}, format="json")
    assert approved.status_code == 200
    row = ExtensionVersion.objects.get(pk=version["id"])
    assert row.status == VersionStatus.APPROVED, row.pinning_error
    assert row.pins("arm64") == {"upload": sha}

    # A second version of the same extension; the recipe resolves both to their own files.
    second = make_tar([*GOOD_TREE, file("usr/share/hello/CHANGES", b"v2")])
    assert checked_upload(second, version="1.1").status_code == 202
    extension = Extension.objects.get(name="hello", team=cast.team)
    recipe = extension.recipe()
    assert set(recipe.versions) == {"1.0", "1.1"}
    (source,) = recipe.resolve("1.1", "x86-64")
    assert source.sha256 == hashlib.sha256(second).hexdigest()
    path = uploaded_archive_materialize(version=extension.versions.get(version="1.1"))
    assert source.url == path.as_uri()
    assert path.read_bytes() == second


def test_a_zip_upload_is_accepted(cast: Cast, fetch_cache: Path, checked_upload) -> None:
    response = checked_upload(make_zip(GOOD_TREE), file_name="hello.zip")
    assert response.status_code == 202, response.content
    assert UploadedArchive.objects.get().kind == "zip"
    assert version_seen(cast)["status"] == "proposed"


HOSTILE = {  # case: (archive, code, what the message must say)
    "traversal": (
        make_tar([file("usr/../../etc/cron.d/evil", b"* * * * * root sh")]),
        "archive.path-traversal",
        "'usr/../../etc/cron.d/evil' contains '..'",
    ),
    "absolute path": (make_tar([file("/etc/passwd", b"x")]), "archive.absolute-path", "is an absolute path"),
    "device node": (
        make_tar([*GOOD_TREE, device("usr/lib/mem")]),
        "archive.special-file",
        "is a device node",
    ),
    "fifo": (make_tar([*GOOD_TREE, fifo("usr/lib/pipe")]), "archive.special-file", "is a FIFO"),
    "hard link": (
        make_tar([*GOOD_TREE, hardlink("usr/bin/shadow", "/etc/shadow")]),
        "archive.hard-link",
        "hard link",
    ),
    "escaping symlink": (
        make_tar([*GOOD_TREE, symlink("usr/bin/sh", "../../../bin/sh")]),
        "archive.unsafe-symlink",
        "points outside",
    ),
    "setuid": (
        make_tar([*GOOD_TREE, setuid_file("usr/bin/rootme")]),
        "upload.setuid",
        "'usr/bin/rootme' is setuid",
    ),
    "outside usr": (
        make_tar([*GOOD_TREE, file("etc/hello.conf", b"x")]),
        "upload.outside-usr",
        "outside usr/",
    ),
    "usr/sbin": (make_tar([*GOOD_TREE, executable("usr/sbin/hello")]), "upload.forbidden-path", "usr/sbin"),
    "zip traversal": (make_zip([file("../../evil", b"x")]), "archive.path-traversal", "contains '..'"),
    "not an archive": (b"\x7fELF not a tarball", "archive.corrupt", "hello.tar.gz is not a readable tar.gz"),
}


def assert_refused(cast: Cast, code: str, explanation: str = "") -> None:
    """The version is rejected with the refusal's code and sentence, in the API and the upload."""
    version = version_seen(cast)
    assert version["status"] == "rejected"
    assert f"({code})" in version["reason"]
    assert explanation in version["reason"]
    row = UploadedArchive.objects.get(version_id=version["id"])
    assert (row.state, row.error_code) == (UploadedArchive.State.REFUSED, code)
    assert explanation in row.error_message
    # Never buildable, never in the recipe a build resolves.
    assert "1.0" not in Extension.objects.get(name="hello").recipe().versions


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_uploads_are_refused_with_a_clear_message(
    cast: Cast, fetch_cache: Path, checked_upload, case: str
) -> None:
    data, code, explanation = HOSTILE[case]
    name = "hello.zip" if case.startswith("zip") else "hello.tar.gz"

    response = checked_upload(data, file_name=name)

    assert response.status_code == 202, response.content
    assert_refused(cast, code, explanation)
    assert not list(fetch_cache.glob("uploads/**/*.tar.gz"))


def test_a_refused_version_can_be_uploaded_again(cast: Cast, fetch_cache: Path, checked_upload) -> None:
    checked_upload(make_tar([file("etc/hello.conf", b"x")]))
    assert_refused(cast, "upload.outside-usr")
    assert checked_upload(make_tar(GOOD_TREE)).status_code == 202
    assert version_seen(cast)["status"] == "proposed"


def test_an_upload_must_suit_every_arch_it_is_declared_for(
    cast: Cast, fetch_cache: Path, checked_upload
) -> None:
    arm64_tree = [directory("usr"), directory("usr/bin"), executable("usr/bin/hello", static_hello("arm64"))]
    checked_upload(make_tar(arm64_tree))  # declared for every arch, the default
    assert_refused(
        cast,
        "upload.wrong-architecture",
        "usr/bin/hello is an ELF file for aarch64, which does not run on x86-64",
    )
    assert checked_upload(make_tar(arm64_tree), arches="arm64").status_code == 202
    assert version_seen(cast)["status"] == "proposed"
    assert Extension.objects.get(name="hello").arches == ["arm64"]


def test_oversized_uploads_are_refused(cast: Cast, fetch_cache: Path, settings) -> None:
    settings.CUSTOM_UPLOAD_MAX_BYTES = 1024
    response = upload(cast, make_tar([executable("usr/bin/big", b"\0" * 8192)], compression=""))
    assert response.status_code == 400
    assert response.json()["code"] == "upload.too-large"
    assert "limited to 1024 bytes" in response.json()["message"]


def test_decompression_bombs_are_refused(cast: Cast, fetch_cache: Path, checked_upload, settings) -> None:
    settings.CUSTOM_UPLOAD_MAX_UNPACKED_BYTES = 64 * 1024
    settings.CUSTOM_UPLOAD_MAX_RATIO = 10_000  # the byte cap, not the ratio, is under test here
    bomb = make_tar([file("usr/share/zeros", b"\0" * (1024 * 1024))])
    assert len(bomb) < 64 * 1024
    response = checked_upload(bomb)
    assert response.status_code == 202
    assert_refused(cast, "archive.too-large")


def test_upload_metadata_is_checked(cast: Cast, fetch_cache: Path) -> None:
    bad_name = upload(cast, make_tar(GOOD_TREE), name="../Hello")
    assert bad_name.status_code == 400 and bad_name.json()["code"] == "upload.invalid-name"
    bad_version = upload(cast, make_tar(GOOD_TREE), version="1.0 beta")
    assert bad_version.status_code == 400 and bad_version.json()["code"] == "upload.invalid-version"
    bad_kind = upload(cast, make_tar(GOOD_TREE), file_name="hello.rar")
    assert bad_kind.status_code == 400 and bad_kind.json()["code"] == "upload.unsupported-kind"
    no_version = cast.client(cast.teammate).post(
        "/api/extensions/",
        {"team": "blue", "name": "x", "file": SimpleUploadedFile("x.tar.gz", make_tar(GOOD_TREE))},
        format="multipart",
    )
    assert no_version.status_code == 400 and no_version.json()["code"] == "invalid"
    viewer = cast.client(cast.viewer).post(
        "/api/extensions/",
        {
            "team": "blue",
            "name": "x",
            "version": "1",
            "file": SimpleUploadedFile("x.tar.gz", make_tar(GOOD_TREE)),
        },
        format="multipart",
    )
    assert viewer.status_code == 403


def test_invalid_recipes_are_refused_with_the_loaders_reason(cast: Cast) -> None:
    response = cast.client(cast.teammate).post(
        "/api/extensions/",
        {"team": "blue", "recipe": "name: x\ndescription: y\ncategory: tool\nfoo: 1\n"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "recipe.invalid"
    assert "foo" in response.json()["message"]
    hostile = cast.client(cast.teammate).post(
        "/api/extensions/", {"team": "blue", "recipe": "a: &a [*a, *a]\n"}, format="json"
    )
    assert hostile.status_code == 400
    assert not Extension.objects.exists()
