"""Test data: factory_boy factories and the one cast of users every suite shares.

The cast (``make_cast()``, the ``cast`` fixture of tests/conftest.py):

=========  ======================  ===========================================
user       who                     also called (names older tests use)
=========  ======================  ===========================================
alice      admin of team blue      ``owner``, ``admin``
bob        builder in blue         ``teammate``, ``builder``
cora       curator in blue         ``curator``
vera       viewer in blue          ``viewer``, ``watcher``
carol      admin of team red       ``outsider``
sam        staff, in no team       ``staff``
=========  ======================  ===========================================

Teams: ``blue`` (also ``team``) and ``red`` (also ``other_team``). Every user signs in with
:data:`PASSWORD`; its hash is computed once per hasher and shared, because hashing with the real
hasher costs most of a second per user.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import factory
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from catalog.models import Extension, ExtensionVersion, Membership, Role, Team, VersionStatus

PASSWORD = "correct horse battery staple"


@cache
def _password_hash(hashers: tuple[str, ...]) -> str:
    return make_password(PASSWORD)


def password_hash() -> str:
    """PASSWORD hashed by the hasher in effect (a test may switch to a fast one)."""
    return _password_hash(tuple(settings.PASSWORD_HASHERS))


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.org")
    password = factory.LazyFunction(password_hash)


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team

    name = factory.Sequence(lambda n: f"Team {n}")
    slug = factory.LazyAttribute(lambda team: team.name.lower().replace(" ", "-"))


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    team = factory.SubFactory(TeamFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.VIEWER


def member(team: Team, role: str, **user_fields: object) -> User:
    """A new user with ``role`` in ``team``."""
    user = UserFactory(**user_fields)
    MembershipFactory(team=team, user=user, role=role)
    return user


class ExtensionFactory(factory.django.DjangoModelFactory):
    """A global extension (``team=None``) with a placeholder recipe; see
    tests/builds/catalog_fixtures.make_extension for one with a real recipe, pins and versions."""

    class Meta:
        model = Extension

    name = factory.Sequence(lambda n: f"ext{n}")
    team = None
    description = factory.LazyAttribute(lambda ext: f"Test extension {ext.name}")
    arches = factory.LazyFunction(lambda: ["x86-64", "arm64"])
    recipe_text = factory.LazyAttribute(lambda ext: f"name: {ext.name}\n")
    recipe_digest = "0" * 64


class ExtensionVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ExtensionVersion

    extension = factory.SubFactory(ExtensionFactory)
    version = factory.Sequence(lambda n: f"v1.0.{n}")
    status = VersionStatus.APPROVED


@dataclass
class Cast:
    """The people of every test; see the module docstring for who is who."""

    blue: Team
    red: Team
    alice: User
    bob: User
    cora: User
    vera: User
    carol: User
    sam: User

    # The names the suites used before they shared one cast, by role.
    @property
    def team(self) -> Team:
        return self.blue

    @property
    def other_team(self) -> Team:
        return self.red

    @property
    def owner(self) -> User:
        return self.alice

    @property
    def admin(self) -> User:
        return self.alice

    @property
    def teammate(self) -> User:
        return self.bob

    @property
    def builder(self) -> User:
        return self.bob

    @property
    def curator(self) -> User:
        return self.cora

    @property
    def viewer(self) -> User:
        return self.vera

    @property
    def watcher(self) -> User:
        return self.vera

    @property
    def outsider(self) -> User:
        return self.carol

    @property
    def staff(self) -> User:
        return self.sam

    def client(self, user: User) -> APIClient:
        """An API client authenticated as ``user``."""
        client = APIClient()
        client.force_authenticate(user)
        return client


def make_cast() -> Cast:
    blue = TeamFactory(name="Blue", slug="blue")
    red = TeamFactory(name="Red", slug="red")
    return Cast(
        blue=blue,
        red=red,
        alice=member(blue, Role.ADMIN, username="alice"),
        bob=member(blue, Role.BUILDER, username="bob"),
        cora=member(blue, Role.CURATOR, username="cora"),
        vera=member(blue, Role.VIEWER, username="vera"),
        carol=member(red, Role.ADMIN, username="carol"),
        sam=UserFactory(username="sam", is_staff=True),
    )
