"""Portal-wide pages: home, sign-in, API tokens, health."""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods
from rest_framework.authtoken.models import Token

from builds import selectors
from catalog.models import Membership
from portal.checklist import first_run_steps
from portal.forms import ThrottledAuthenticationForm
from portal.signin_throttle import SignInUnavailable


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and docker-compose healthchecks."""
    return JsonResponse({"status": "ok"})


def home(request: HttpRequest) -> HttpResponse:
    """Signed-out visitors meet the sign-in page; members see their teams and recent work."""
    if not request.user.is_authenticated:
        return redirect("login")
    memberships = Membership.objects.filter(user=request.user).select_related("team").order_by("team__name")
    steps = first_run_steps(request.user)
    context = {
        "checklist": steps,
        "checklist_done": all(step.done for step in steps),
        "memberships": memberships,
        "flavours": selectors.flavours_visible_to(user=request.user).order_by("-created_at")[:5],
        "builds": selectors.builds_visible_to(user=request.user).order_by("-created_at")[:5],
    }
    return render(request, "portal/home.html", context)


class SignInView(LoginView):
    form_class = ThrottledAuthenticationForm
    redirect_authenticated_user = True

    def form_invalid(self, form: ThrottledAuthenticationForm) -> HttpResponse:  # type: ignore[override]
        response = super().form_invalid(form)
        if form.locked is not None:  # the same page, with the message; scripts also see the status
            response.status_code = 503 if isinstance(form.locked, SignInUnavailable) else 429
            response["Retry-After"] = str(form.locked.retry_after)
        return response


@login_required
@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    """One REST token per user (DRF authtoken, the same one `POST /api/auth/token/` returns).

    Creating replaces any existing token, so a leaked token is revoked by making a new one. The
    full key is shown once, right after creation; later visits show only its first characters.
    """
    new_key = ""
    user = cast(User, request.user)  # login_required
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "create":
            Token.objects.filter(user=user).delete()
            new_key = Token.objects.create(user=user).key
            messages.success(request, "New API token created. Copy it now: it will not be shown again.")
        elif action == "revoke":
            deleted, _ = Token.objects.filter(user=user).delete()
            messages.success(request, "API token revoked." if deleted else "You had no API token.")
            return redirect("api-tokens")
        else:
            messages.error(request, "Unknown action.")
            return redirect("api-tokens")
    token = Token.objects.filter(user=user).first()
    return render(request, "portal/api_tokens.html", {"token": token, "new_key": new_key})
