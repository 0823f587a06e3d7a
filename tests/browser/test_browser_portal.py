"""Sign in, keyboard use and the token page in a real browser."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from tests.browser.conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def alice(transactional_db, cast) -> User:
    return cast.alice


def test_sign_in_create_a_token_and_sign_out(page, snap, alice):
    page.goto("/")
    snap(page, "signin")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_text("Please enter a correct username and password").is_visible()
    snap(page, "signin-error")

    sign_in(page, "alice")
    assert page.get_by_role("heading", name="Welcome, alice").is_visible()
    snap(page, "home")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="API tokens").click()
    page.get_by_role("button", name="Create a token").click()
    key = page.locator("#new-token").inner_text()
    assert len(key) == 40
    snap(page, "api-token-created")

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/signin/")
    assert page.get_by_role("button", name="Sign in").is_visible()


def test_skip_link_is_the_first_tab_stop_and_focus_is_visible(page, alice):
    sign_in(page, "alice")
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.textContent.trim()")
    assert focused == "Skip to content"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"


def test_phone_width_has_no_horizontal_scroll(page, snap, alice):
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, "alice")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    snap(page, "home-phone")
