"""Checking downloads the way the flavour page tells people to: the page's links, then the real
``gpg --verify`` and ``sha256sum -c`` in each downloaded directory (issue 16)."""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit


class _Downloads(HTMLParser):
    """The hrefs inside the page's downloads section, and the verify command it shows."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0  # > 0 inside <section id="downloads-section">
        self.links: set[str] = set()
        self.in_command = False
        self.command = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section" and (self.depth or values.get("id") == "downloads-section"):
            self.depth += 1
        if self.depth and tag == "a" and values.get("href"):
            self.links.add(str(values["href"]))
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


def page_downloads(page: str) -> tuple[set[str], str]:
    """(every link of the flavour page's downloads section, its verify command)."""
    parser = _Downloads()
    parser.feed(page)
    return {html.unescape(link) for link in parser.links}, html.unescape(parser.command).strip()


def store_key(url: str) -> str:
    """The store key a published URL names (``.../artifacts/[private/TOKEN/]KEY`` or a bucket URL)."""
    path = urlsplit(url).path
    for tree in ("/flavours/", "/extensions/"):
        if tree in path:
            return tree[1:] + path.split(tree, 1)[1]
    raise AssertionError(f"{url} is not a published file")


def download_all(get: Callable[[str], bytes], urls: set[str], into: Path) -> dict[str, Path]:
    """Each URL fetched with ``get`` into ``into``/KEY: one local directory per served directory."""
    saved: dict[str, Path] = {}
    for url in sorted(urls):
        target = into / store_key(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(get(url))
        saved[url] = target
    return saved


def verify_downloads(saved: dict[str, Path], command: str, gnupg_home: Path) -> set[Path]:
    """Run ``command`` (gpg --verify, then sha256sum -c) in every directory holding a downloaded
    SHA256SUMS, with the downloaded keyring beside it; return every file it vouched for: the listed
    files that checked OK, and each SHA256SUMS whose signature verified, with that signature."""
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
            env={**os.environ, "GNUPGHOME": str(gnupg_home), "LC_ALL": "C"},
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


def gnupg_home(parent: Path) -> Path:
    home = parent / "gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    return home
