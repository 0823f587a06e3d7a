"""Sign in, sign out, home and the API token page, through Django's test client (no browser)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", password="correct horse battery")


def test_home_sends_visitors_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/signin/")


def test_sign_in_with_a_wrong_password_shows_an_error(client, alice):
    response = client.post("/signin/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    assert "_auth_user_id" not in client.session


def test_sign_in_then_out(client, alice):
    response = client.post("/signin/", {"username": "alice", "password": "correct horse battery"})
    assert response.status_code == 302
    home = client.get("/")
    assert b"Welcome, alice" in home.content
    assert b'href="#main"' in home.content  # skip link
    response = client.post("/signout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_token_page_needs_sign_in(client):
    response = client.get("/account/tokens/")
    assert response.status_code == 302
    assert "/signin/" in response["Location"]


def test_create_shows_the_key_once_and_it_authenticates_the_api(client, alice):
    client.force_login(alice)
    response = client.post("/account/tokens/", {"action": "create"})
    key = Token.objects.get(user=alice).key
    assert key in response.content.decode()
    assert key not in client.get("/account/tokens/").content.decode()

    api = APIClient()
    assert api.get("/api/extensions/").status_code in (401, 403)
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/extensions/").status_code == 200


def test_create_again_replaces_the_old_token(client, alice):
    client.force_login(alice)
    client.post("/account/tokens/", {"action": "create"})
    first = Token.objects.get(user=alice).key
    client.post("/account/tokens/", {"action": "create"})
    assert Token.objects.filter(user=alice).count() == 1
    assert Token.objects.get(user=alice).key != first


def test_revoke_deletes_the_token(client, alice):
    client.force_login(alice)
    client.post("/account/tokens/", {"action": "create"})
    response = client.post("/account/tokens/", {"action": "revoke"}, follow=True)
    assert not Token.objects.filter(user=alice).exists()
    assert b"API token revoked" in response.content
