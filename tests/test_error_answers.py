"""One handler per interface turns any BakehouseError into its answer: the API's {code, message}
and the pages' error page, with the status its code's kind gives. An operator's fault (a missing
tool, a bad signing key, the store down) is a 503 that says so, never the user's 400 or a 500."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import RequestFactory

from builds.pipeline.errors import PipelineError
from builds.services import BuildRefused
from catalog.errors import CatalogConflict, CatalogError
from portal.api import exception_handler
from portal.error_pages import BakehouseErrorMiddleware

pytestmark = pytest.mark.django_db


def _page(path: str, exc: Exception):
    request = RequestFactory().get(path)
    request.user = AnonymousUser()
    middleware = BakehouseErrorMiddleware(lambda r: None)  # type: ignore[arg-type,return-value]
    return middleware.process_exception(request, exc)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (PipelineError("tool.missing", "mksquashfs is not installed"), 503),
        (PipelineError("sign.invalid-key", "the signing key is not a secret key"), 503),
        (PipelineError("store.unavailable", "S3 cannot be reached"), 503),
        (PipelineError("fetch.http-error", "upstream answered HTTP 404"), 502),
        (PipelineError("recipe.invalid-pin", "the pin is not 64 hex digits"), 400),
        (CatalogError("version.invalid", "no such version"), 400),
        (CatalogConflict("version.exists", "already there"), 409),
        (BuildRefused("build.not-cancellable", "the build has ended"), 409),
    ],
)
def test_the_api_answers_any_error_with_its_code_message_and_kinds_status(error, status) -> None:
    response = exception_handler(error, {})
    assert response is not None
    assert response.status_code == status
    assert response.data == {"code": error.code, "message": error.message}


def test_a_transient_infrastructure_fault_tells_api_clients_when_to_retry() -> None:
    assert exception_handler(PipelineError("store.unavailable", "down"), {})["Retry-After"]
    assert "Retry-After" not in exception_handler(PipelineError("tool.missing", "gone"), {})


def test_an_operators_fault_on_a_page_is_a_503_that_does_not_blame_the_user() -> None:
    response = _page(
        "/flavours/", PipelineError("sign.bad-passphrase", "the signing key's passphrase is wrong")
    )
    assert response.status_code == 503
    text = response.content.decode()
    assert "sign.bad-passphrase" in text and "passphrase is wrong" in text
    assert "a problem with the portal, not with your request" in text
    assert "Cannot do that" not in text


def test_a_users_mistake_on_a_page_keeps_its_status_and_no_excuse() -> None:
    response = _page("/catalog/", CatalogConflict("version.exists", "demo v1 is already proposed"))
    assert response.status_code == 409
    text = response.content.decode()
    assert "demo v1 is already proposed" in text and "version.exists" in text
    assert "not with your request" not in text


def test_under_api_a_page_handler_still_answers_json() -> None:
    response = _page("/api/whatever/", PipelineError("tool.missing", "unsquashfs is not installed"))
    assert response.status_code == 503
    assert json.loads(response.content) == {"code": "tool.missing", "message": "unsquashfs is not installed"}


def test_other_exceptions_are_left_to_django() -> None:
    assert _page("/flavours/", ValueError("a bug")) is None
