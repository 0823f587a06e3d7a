"""Upstream discovery: which GitHub repository a recipe downloads from, and its release tags.

The API answers are hostile input like any upstream: pages are capped, the ``next`` link must
stay on the configured API origin, and malformed bodies are an error, not a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from builds.pipeline.recipe import Recipe

_GITHUB_DOWNLOAD = re.compile(
    r"^https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)/releases/download/([^/]+)/"
)
_VERSION_ALPHABET = re.compile(r"^[A-Za-z0-9.,_+-]{1,128}$")
TIMEOUT = (10.0, 30.0)


class DiscoveryError(Exception):
    """The releases API could not be read (a sentence for the task log)."""


@dataclass(frozen=True)
class GitHubSource:
    """The GitHub repository of a recipe and how its release tags map to recipe versions."""

    owner: str
    repo: str
    tag_template: str  # e.g. "{version}", "v{version_nov}", "WAMR-{version}"

    def version_from_tag(self, tag: str, *, v_prefixed: bool) -> str | None:
        """The recipe version a tag stands for, or None if the tag does not fit the template.

        ``{version_nov}`` is the version without its leading "v": the recipe's own versions
        (``v_prefixed``) tell whether to put the "v" back.
        """
        pattern = ""
        for literal, placeholder in re.findall(r"([^{]*)(?:\{(\w+)\})?", self.tag_template):
            pattern += re.escape(literal)
            if placeholder:
                pattern += f"(?P<{placeholder}>[A-Za-z0-9.,_+-]+)"
        match = re.fullmatch(pattern, tag)
        if match is None:
            return None
        groups = match.groupdict()
        if "version" in groups:
            version = groups["version"]
        else:
            nov = groups["version_nov"]
            version = f"v{nov}" if v_prefixed else nov
        return version if _VERSION_ALPHABET.match(version) else None


def github_source(recipe: Recipe) -> GitHubSource | None:
    """The first source downloading a GitHub release whose tag carries the version, if any."""
    for source in recipe.sources:
        match = _GITHUB_DOWNLOAD.match(source.url)
        if not match:
            continue
        owner, repo, tag = match.groups()
        placeholders = set(re.findall(r"\{(\w+)\}", tag))
        if placeholders in ({"version"}, {"version_nov"}):
            return GitHubSource(owner=owner, repo=repo, tag_template=tag)
    return None


def list_release_tags(api_url: str, owner: str, repo: str, *, max_pages: int = 10) -> list[str]:
    """Tags of published releases (no drafts, no prereleases), newest first as GitHub lists them.

    Follows the ``Link: <...>; rel="next"`` header across pages, at most ``max_pages``.
    """
    base = api_url.rstrip("/")
    origin = urlsplit(base)
    url: str | None = f"{base}/repos/{owner}/{repo}/releases?per_page=100"
    tags: list[str] = []
    pages = 0
    with requests.Session() as session:
        session.headers.update(
            {"Accept": "application/vnd.github+json", "User-Agent": "bakehouse-discovery/1"}
        )
        while url and pages < max_pages:
            pages += 1
            try:
                response = session.get(url, timeout=TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                raise DiscoveryError(f"{owner}/{repo}: cannot reach the releases API ({exc})") from exc
            if response.status_code != 200:
                raise DiscoveryError(f"{owner}/{repo}: releases API answered HTTP {response.status_code}")
            try:
                releases = response.json()
            except ValueError as exc:
                raise DiscoveryError(f"{owner}/{repo}: releases API did not answer JSON") from exc
            if not isinstance(releases, list):
                raise DiscoveryError(
                    f"{owner}/{repo}: releases API answered {type(releases).__name__}, not a list"
                )
            for release in releases:
                if not isinstance(release, dict) or release.get("draft") or release.get("prerelease"):
                    continue
                tag = release.get("tag_name")
                if isinstance(tag, str) and tag:
                    tags.append(tag)
            url = response.links.get("next", {}).get("url")
            if url:
                target = urlsplit(url)
                if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
                    raise DiscoveryError(f"{owner}/{repo}: next page {url} leaves the API host; refused")
    return tags
