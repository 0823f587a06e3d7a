"""Every file a flavour page links can be verified from that page (issue 16): a real build (Celery
eager, local store), then the page's links downloaded through the portal's /artifacts/, and the
real ``gpg --verify`` and ``sha256sum -c`` run on them as the page says to. The API's file list
must pass the same check. Public and private (token URLs) flavours alike.
"""

from __future__ import annotations

import hashlib
import html
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client
from rest_framework.test import APIClient

from builds.published import VERIFY_COMMAND
from tests.builds.build_support import serve_extension
from tests.builds.catalog_fixtures import Cast
from tests.builds.test_build_flow import eager  # noqa: F401 - the fixture
from tests.upstream import UpstreamServer

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        shutil.which("sha256sum") is None or shutil.which("gpg") is None, reason="needs coreutils, gpg"
    ),
]


class _Links(HTMLParser):
    """The hrefs inside the page's downloads section, and the verify command it shows."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # > 0 inside <section id="downloads-section">
        self.links: list[str] = []
        self.in_command = False
        self.command = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section" and (self.depth or values.get("id") == "downloads-section"):
            self.depth += 1
        if self.depth and tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))
        if tag == "pre" and values.get("id") == "verify-command":
            self.in_command = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self.depth:
            self.depth -= 1
        if tag == "pre":
            self.in_command = False

    def handle_data(self, data: str) -> None:
        if self.in_command:
            self.command += data


def _download_all(client: Client, urls: set[str], into: Path) -> dict[str, Path]:
    """Each URL fetched through the portal into ``into``/KEY (a directory per served directory)."""
    saved: dict[str, Path] = {}
    for url in sorted(urls):
        path = urlsplit(url).path
        assert path.startswith("/artifacts/"), url
        response = client.get(path)
        assert response.status_code == 200, (url, response.status_code)
        key = path.removeprefix("/artifacts/")
        if key.startswith("private/"):
            key = key.split("/", 2)[2]  # private/TOKEN/KEY
        target = into / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"".join(response.streaming_content))
        saved[url] = target
    return saved


def _verify(saved: dict[str, Path], command: str, home: Path) -> set[Path]:
    """Run ``command`` (the page's: gpg --verify, then sha256sum -c) in every directory holding a
    downloaded SHA256SUMS; return every file it vouched for (the listed files that checked OK,
    each verified SHA256SUMS and its signature)."""
    keyrings = [p for p in saved.values() if p.name == "import-pubring.gpg"]
    assert len(keyrings) == 1, keyrings
    covered: set[Path] = set()
    for sums in sorted(p for p in saved.values() if p.name == "SHA256SUMS"):
        directory = sums.parent
        assert (directory / "SHA256SUMS.gpg").is_file(), f"no signature linked for {sums}"
        if not (directory / "import-pubring.gpg").exists():
            shutil.copy(keyrings[0], directory / "import-pubring.gpg")
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=directory,
            env={**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (directory, result.stdout, result.stderr)
        assert "Good signature" in result.stderr, result.stderr
        covered |= {sums, directory / "SHA256SUMS.gpg"}
        for line in result.stdout.splitlines():
            name, _, outcome = line.rpartition(": ")
            assert outcome == "OK", line
            covered.add(directory / name)
    return covered


@pytest.fixture
def gnupg_home(tmp_path: Path) -> Path:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    return home


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
    gnupg_home: Path,
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
    parser = _Links()
    parser.feed(page.content.decode())
    links = {html.unescape(link) for link in parser.links}
    assert parser.command and html.unescape(parser.command).strip() == VERIFY_COMMAND
    # The page links both images, and each extension's signed listing next to them.
    names = {link.rsplit("/", 1)[1] for link in links}
    assert {"hello-v1.0.0-x86-64.raw", "world-v1.0.0-x86-64.raw", "config.ign", "config.bu"} <= names
    assert not any("hello-v0.9.0" in link for link in links)
    for extension in ("hello", "world"):
        assert any(link.endswith(f"extensions/{extension}/SHA256SUMS.gpg") for link in links)
    if private:  # nodes' token URLs
        token = flavour["artifacts_url"].split("/private/")[1].split("/")[0]
        assert all(f"/artifacts/private/{token}/" in link for link in links), links
    downloader = Client()  # anonymous, as a node: public URLs, or the token is the credential

    saved = _download_all(downloader, links, tmp_path / "page")
    covered = _verify(saved, html.unescape(parser.command).strip(), gnupg_home)
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
    saved = _download_all(downloader, api_urls, tmp_path / "api")
    covered = _verify(saved, VERIFY_COMMAND, gnupg_home)
    for a in artifacts:
        path = saved[a["public_url"]]
        assert path in covered, a["key"]
        if a["name"] not in ("SHA256SUMS", "SHA256SUMS.gpg"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == a["sha256"], a["key"]
            assert a["size"] == path.stat().st_size
