"""Every file a flavour page links can be verified from that page (issue 16): a real build (Celery
eager, local store), then the page's links downloaded through the portal's /artifacts/, and the
real ``gpg --verify`` and ``sha256sum -c`` run on them as the page says to. The API's file list
must pass the same check. Public and private (token URLs) flavours alike.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client
from rest_framework.test import APIClient

from builds.models import Artifact, ArtifactKind
from builds.published import VERIFY_COMMAND, published_directories
from tests.builds.build_support import serve_extension
from tests.builds.catalog_fixtures import Cast
from tests.builds.test_build_flow import eager  # noqa: F401 - the fixture
from tests.builds.verify_support import download_all, gnupg_home, page_downloads, verify_downloads
from tests.upstream import UpstreamServer

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        shutil.which("sha256sum") is None or shutil.which("gpg") is None, reason="needs coreutils, gpg"
    ),
]


def _client_get(client: Client) -> Any:
    def get(url: str) -> bytes:
        path = urlsplit(url).path
        assert path.startswith("/artifacts/"), url  # served by the portal
        response = client.get(path)
        assert response.status_code == 200, (url, response.status_code)
        return b"".join(response.streaming_content)

    return get


def _flavour_and_build(
    client: APIClient, capture: Any, *, private: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    # Another version of hello is published first, so its SHA256SUMS lists a file the page does
    # not link (checked with --ignore-missing).
    flavours = []
    for name, extensions in (
        ("old", [{"name": "hello", "version": "v0.9.0"}]),
        ("n", [{"name": "hello", "version": "v1.0.0"}, {"name": "world", "version": "v1.0.0"}]),
    ):
        body = {"name": name, "arch": "x86-64", "extensions": extensions, "options": {"private": private}}
        flavour = client.post("/api/flavours/", body, format="json").json()
        with capture(execute=True):
            started = client.post(f"/api/flavours/{flavour['id']}/builds/")
        assert started.status_code == 202, started.json()
        build = client.get(f"/api/builds/{started.json()['id']}/").json()
        assert build["state"] == "succeeded", build
        flavours.append((flavour, build))
    return flavours[-1]


@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
def test_every_file_the_flavour_page_links_verifies_with_gpg_and_sha256sum(
    cast: Cast,
    upstream: UpstreamServer,
    eager: None,  # noqa: F811
    django_capture_on_commit_callbacks: Any,
    tmp_path: Path,
    private: bool,
) -> None:
    serve_extension(upstream, "hello")
    serve_extension(upstream, "world")
    api = APIClient()
    api.force_authenticate(cast.teammate)
    flavour, build = _flavour_and_build(api, django_capture_on_commit_callbacks, private=private)

    member = Client()
    member.force_login(cast.teammate)
    page = member.get(f"/flavours/{flavour['id']}/")
    assert page.status_code == 200
    links, command = page_downloads(page.content.decode())
    assert command == VERIFY_COMMAND
    # The page links both images, and each extension's signed listing next to them.
    names = {link.rsplit("/", 1)[1] for link in links}
    assert {"hello-v1.0.0-x86-64.raw", "world-v1.0.0-x86-64.raw", "config.ign", "config.bu"} <= names
    assert not any("hello-v0.9.0" in link for link in links)
    for extension in ("hello", "world"):
        assert any(link.endswith(f"extensions/{extension}/SHA256SUMS.gpg") for link in links)
    if private:  # nodes' token URLs
        token = flavour["artifacts_url"].split("/private/")[1].split("/")[0]
        assert all(f"/artifacts/private/{token}/" in link for link in links), links
    get = _client_get(Client())  # anonymous, as a node: public URLs, or the token is the credential

    home = gnupg_home(tmp_path)
    saved = download_all(get, links, tmp_path / "page")
    covered = verify_downloads(saved, command, home)
    unverified = sorted(str(p) for p in saved.values() if p not in covered)
    assert not unverified, f"linked files no signed SHA256SUMS vouches for: {unverified}"

    # The API lists the same files, each with the listing that signs it.
    artifacts = build["artifacts"]
    assert {a["public_url"] for a in artifacts} == links
    api_urls = {a["public_url"] for a in artifacts}
    for a in artifacts:
        if a["name"] not in ("SHA256SUMS", "SHA256SUMS.gpg"):
            assert a["sha256sums_url"] and a["signature_url"], a
            api_urls |= {a["sha256sums_url"], a["signature_url"]}
    saved = download_all(get, api_urls, tmp_path / "api")
    covered = verify_downloads(saved, VERIFY_COMMAND, home)
    for a in artifacts:
        path = saved[a["public_url"]]
        assert path in covered, a["key"]
        if a["name"] not in ("SHA256SUMS", "SHA256SUMS.gpg"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"], a["key"]
            assert a["size"] == path.stat().st_size


def test_a_new_kind_of_published_file_is_listed_with_the_listing_that_signs_it() -> None:
    """The downloads come from what was published: a file of a kind the page does not know (a
    pre-baked disk image, say) shows among the flavour's files, vouched for by its SHA256SUMS."""
    prefix = "flavours/" + "a" * 64 + "/"
    rows = [
        Artifact(kind=ArtifactKind.TRANSFER, name=name, key=prefix + name, sha256="0" * 64, size=1)
        for name in ("hello.conf", "flatcar_production_image-edge.bin.zst")
    ]
    rows += [
        Artifact(
            kind=ArtifactKind.SHA256SUMS, name="SHA256SUMS", key=prefix + "SHA256SUMS", sha256="1", size=1
        ),
        Artifact(
            kind=ArtifactKind.IGNITION, name="config.ign", key=prefix + "config.ign", sha256="2", size=1
        ),
        Artifact(kind=ArtifactKind.IMAGE, name="x.raw", key="extensions/x/x.raw", sha256="3", size=1),
    ]
    directories = published_directories(rows, lambda key: "https://n.example/" + key)
    assert [d.prefix for d in directories] == [prefix, "extensions/x/"]
    flavour_dir, extension_dir = directories
    assert [f.artifact.name for f in flavour_dir.files] == [
        "config.ign",
        "flatcar_production_image-edge.bin.zst",
    ]
    assert [f.artifact.name for f in flavour_dir.transfers] == ["hello.conf"]
    disk = flavour_dir.files[1]
    assert disk.url == f"https://n.example/{prefix}flatcar_production_image-edge.bin.zst"
    assert (disk.sums_url, disk.signature_url) == (
        f"https://n.example/{prefix}SHA256SUMS",
        f"https://n.example/{prefix}SHA256SUMS.gpg",
    )
    assert flavour_dir.sums is not None and flavour_dir.sums.sums_url is None
    assert flavour_dir.sums.signature_url == f"https://n.example/{prefix}SHA256SUMS.gpg"
    # An extension image is vouched for by its extension's listing, even one not recorded as a row.
    assert extension_dir.files[0].sums_url == "https://n.example/extensions/x/SHA256SUMS"
