"""Django's sign-in forms (the portal's and the admin site's), throttled by portal.signin_throttle."""

from __future__ import annotations

from typing import Any

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from portal.signin_throttle import SignInLocked, SignInUnavailable, signin_attempt


class _ThrottledClean:
    """Each password check of the form is spent from the shared guessing budgets."""

    locked: SignInLocked | SignInUnavailable | None = None

    def clean(self) -> dict[str, Any]:
        data = self.cleaned_data  # type: ignore[attr-defined]
        username = data.get("username")
        if username is None or not data.get("password"):
            return super().clean()  # type: ignore[misc]  # a missing field: no password is checked
        try:
            with signin_attempt(self.request, username) as attempt:  # type: ignore[attr-defined]
                super().clean()  # type: ignore[misc]  # raises on a wrong password: a failure
                attempt.succeeded()
        except (SignInLocked, SignInUnavailable) as locked:
            self.locked = locked
            raise ValidationError(locked.message, code="throttled") from None
        return data


class ThrottledAuthenticationForm(_ThrottledClean, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(_ThrottledClean, AdminAuthenticationForm):
    pass
