"""``manage.py create_token USERNAME``: print the user's API token, creating it if needed."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Print USERNAME's REST API token (created on first use). --rotate replaces it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--rotate", action="store_true", help="revoke the current token and print a new one"
        )

    def handle(self, *args: Any, username: str, rotate: bool, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"no user named {username!r}; create one with createsuperuser") from None
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive; a token would not authenticate")
        if rotate:
            Token.objects.filter(user=user).delete()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
