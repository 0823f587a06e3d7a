"""Tokens for automation: ``POST /api/auth/token/`` trades a username and password for a token.

The token is DRF's (one per user, the same one the API tokens page shows); send it as
``Authorization: Token KEY``. Browsers use their session instead.
"""

from __future__ import annotations

from django.contrib.auth import authenticate
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.signin_throttle import SignInLocked, SignInUnavailable, signin_attempt


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField()
    username = serializers.CharField()


class AuthTokenErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class SignInUnavailableError(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "signin.unavailable"
    wait = SignInUnavailable.retry_after  # -> Retry-After


class ObtainTokenView(APIView):
    """Exchange a username and password for the user's API token (created on first use)."""

    authentication_classes: list = []  # no session, so no CSRF check for scripts
    permission_classes = [AllowAny]
    throttle_classes: list = []  # password guessing is limited by portal.signin_throttle instead

    @extend_schema(
        request=TokenRequestSerializer,
        responses={
            200: TokenSerializer,
            400: OpenApiResponse(
                AuthTokenErrorSerializer, description="Missing fields or wrong credentials."
            ),
            429: OpenApiResponse(
                AuthTokenErrorSerializer,
                description=(
                    "Too many failed attempts for this username or from this address: the password "
                    "was not checked. Retry-After says when to try again."
                ),
            ),
            503: OpenApiResponse(
                AuthTokenErrorSerializer,
                description="The shared cache that counts attempts cannot be reached.",
            ),
        },
        auth=[],
        tags=["auth"],
    )
    def post(self, request: Request) -> Response:
        form = TokenRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        username = form.validated_data["username"]
        try:
            with signin_attempt(request._request, username) as attempt:
                user = authenticate(
                    request._request, username=username, password=form.validated_data["password"]
                )
                if user is not None:
                    attempt.succeeded()
        except SignInLocked as locked:
            throttled = exceptions.Throttled(detail=locked.message)  # the message already says how long
            # -> Retry-After; set after __init__, whose wait= would append to the message.
            throttled.wait = locked.retry_after  # type: ignore[attr-defined]
            raise throttled from None
        except SignInUnavailable as unavailable:
            raise SignInUnavailableError(unavailable.message) from None
        if user is None:  # unknown user, wrong password and inactive account look the same
            return Response(
                {
                    "code": "invalid-credentials",
                    "message": "Unable to sign in with that username and password.",
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key, "username": user.get_username()})


obtain_token = ObtainTokenView.as_view()
