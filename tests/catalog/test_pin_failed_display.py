"""A failed pinning never reads as a new proposal: status pin-failed, "pinning failed: <reason>"
on every page and in the API; a curator approves again (or rejects) from there."""

from __future__ import annotations

from typing import Any

import pytest

from catalog.models import ExtensionVersion, VersionStatus
from tests.builds.catalog_fixtures import make_extension
from tests.factories import Cast

pytestmark = pytest.mark.django_db

REASON = "fetch.http-error: https://example.org/hello-v2.0.0.tar.gz answered 404"


@pytest.fixture
def failed(cast: Cast) -> ExtensionVersion:
    make_extension("hello", versions={"v1.0.0": VersionStatus.APPROVED, "v2.0.0": VersionStatus.PROPOSED})
    version = ExtensionVersion.objects.get(extension__name="hello", version="v2.0.0")
    version.status, version.pinning_error = VersionStatus.PIN_FAILED, REASON
    version.save()
    return version


def test_pages_say_pinning_failed_with_the_reason(client: Any, cast: Cast, failed: ExtensionVersion) -> None:
    client.force_login(cast.staff)
    listing = client.get("/catalog/").content.decode()
    assert 'data-status="pin-failed"' in listing and "v2.0.0 · Pinning failed" in listing
    assert "v2.0.0 · Proposed" not in listing
    detail = client.get("/catalog/hello/").content.decode()
    assert f"pinning failed: {REASON}" in detail
    assert "Review v2.0.0 again" in detail
    review = client.get(f"/versions/{failed.pk}/review/").content.decode()
    assert f"Pinning failed: {REASON}" in review
    assert 'id="decision-form"' in review  # the curator may approve again


def test_api_exposes_the_failed_pinning(cast: Cast, failed: ExtensionVersion) -> None:
    body = cast.client(cast.viewer).get(f"/api/versions/{failed.pk}/").json()
    assert body["status"] == "pin-failed"
    assert body["status_text"] == f"pinning failed: {REASON}"
    assert body["pinning_error"] == REASON
    assert body["usable_for_new_flavours"] is False


def test_a_curator_approves_again_after_a_failed_pinning(
    client: Any, cast: Cast, failed: ExtensionVersion, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    client.force_login(cast.staff)
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            f"/versions/{failed.pk}/review/", {"decision": "approve", "reason": "upstream fixed"}
        )
    # The review page follows the pinning live instead of leaving for the extension page.
    assert response.status_code == 302 and response["Location"] == f"/versions/{failed.pk}/review/"
    failed.refresh_from_db()
    assert failed.status == VersionStatus.PINNING and failed.pinning_error == ""
    page = client.get(response["Location"]).content.decode()
    assert 'data-active="true"' in page and f'data-api-url="/api/versions/{failed.pk}/"' in page
    assert "js/version-pinning.js" in page
    assert 'id="decision" hidden' in page  # shown again by the page if pinning fails


def test_review_shows_every_url_approval_fetches(client: Any, cast: Cast) -> None:
    make_extension("hello", versions={"v2.0.0": VersionStatus.PROPOSED})
    version = ExtensionVersion.objects.get(extension__name="hello", version="v2.0.0")
    client.force_login(cast.staff)
    response = client.get(f"/versions/{version.pk}/review/")
    urls = {(s["arch"], s["url"]) for s in response.context["source_urls"]}
    assert {arch for arch, _ in urls} == {"x86-64", "arm64"}
    html = response.content.decode()
    for _, url in urls:
        assert url in html
    assert "Approving fetches and pins exactly these files" in html


def test_a_rejection_without_reason_is_explained_in_page_words(
    client: Any, cast: Cast, failed: ExtensionVersion
) -> None:
    client.force_login(cast.staff)
    html = client.post(
        f"/versions/{failed.pk}/review/", {"decision": "reject", "reason": ""}
    ).content.decode()
    assert "Give a reason to reject the version." in html
