"""Automation gets a token with a username and password, or from the create_token command."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db
URL = "/api/auth/token/"


@pytest.fixture
def alice(settings) -> User:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, not security
    return User.objects.create_user("alice", password="correct horse battery")


@pytest.fixture
def api() -> APIClient:
    # enforce_csrf_checks: a script has no CSRF cookie, and must not need one.
    return APIClient(enforce_csrf_checks=True)


def test_password_gives_a_token_that_authenticates_the_api(api: APIClient, alice: User) -> None:
    response = api.post(URL, {"username": "alice", "password": "correct horse battery"}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert response.json()["username"] == "alice"
    again = api.post(URL, {"username": "alice", "password": "correct horse battery"}, format="json")
    assert again.json()["token"] == token  # one token per user, stable

    # GET /api/flavours/ (issue 5) needs an authenticated user: the token is one.
    assert APIClient().get("/api/flavours/").status_code in {401, 403}
    assert APIClient(HTTP_AUTHORIZATION=f"Token {token}").get("/api/flavours/").status_code == 200
    bad = APIClient(HTTP_AUTHORIZATION="Token " + "0" * 40).get("/api/flavours/")
    assert bad.status_code in {401, 403}
    assert bad.json()["code"] == "authentication_failed"
    schema = APIClient().get("/api/schema/?format=json")
    assert "/api/auth/token/" in schema.json()["paths"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"username": "alice", "password": "wrong"}, "invalid-credentials"),
        ({"username": "nobody", "password": "correct horse battery"}, "invalid-credentials"),
        ({"username": "alice"}, "invalid"),
        ({}, "invalid"),
        ({"username": ["a", "b"], "password": {"x": 1}}, "invalid"),
    ],
)
def test_bad_requests_are_json_errors(api: APIClient, alice: User, payload: dict, code: str) -> None:
    response = api.post(URL, payload, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code
    assert body["message"]
    assert "token" not in body


def test_malformed_json_and_inactive_users(api: APIClient, alice: User) -> None:
    response = api.post(URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    alice.is_active = False
    alice.save()
    response = api.post(URL, {"username": "alice", "password": "correct horse battery"}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid-credentials"
    assert api.get(URL).status_code == 405


def test_create_token_command_prints_the_same_token(api: APIClient, alice: User) -> None:
    out = StringIO()
    call_command("create_token", "alice", stdout=out)
    token = out.getvalue().strip()
    assert len(token) == 40
    via_api = api.post(URL, {"username": "alice", "password": "correct horse battery"}, format="json")
    assert via_api.json()["token"] == token

    rotated = StringIO()
    call_command("create_token", "alice", "--rotate", stdout=rotated)
    assert rotated.getvalue().strip() != token
    assert APIClient(HTTP_AUTHORIZATION=f"Token {token}").get("/api/flavours/").status_code in {401, 403}


def test_create_token_for_an_unknown_user_fails_clearly(alice: User) -> None:
    with pytest.raises(CommandError, match="no user named 'bob'"):
        call_command("create_token", "bob")
