"""Who may read a published artifact: public by default, private for teams and flavours that ask.

Extension names are global and published artifacts are public by design: ``/artifacts/KEY`` is
what ``PUBLIC_BASE_URL`` points at and needs no sign-in. Two things make artifacts private:

- a flavour with the ``private`` option: its directory ``flavours/ID/`` (config.bu, config.ign
  with SSH keys and hostname, transfer files, SBOM);
- a team with ``private_artifacts``: every flavour of the team is private (the option is forced
  on) and so are the images of the team's own extensions, ``extensions/NAME/``.

A private artifact is served at ``/artifacts/KEY`` only to signed-in members of the owning team;
anyone else gets the same 404 as for a key that does not exist, so names do not leak. Nodes use
the flavour's token instead: ``PUBLIC_BASE_URL/private/TOKEN/KEY`` serves the flavour's own
directory and the directories of the extensions it includes, and nothing else. The token is in a
path segment because systemd-sysupdate appends file names to its URL and sends no headers; the
configs and transfer files of a private flavour are rendered with these URLs. Rotating the token
makes the old URLs 404 and republishes the flavour's files with the new one.

This works when the portal serves ``PUBLIC_BASE_URL`` (the default): a bucket or CDN readable
without credentials would serve private objects to anyone who knows their keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from django.db import IntegrityError, transaction
from django.utils import timezone

from builds.models import Flavour, FlavourToken
from catalog.models import Delivery, Extension, Role, Team
from catalog.permissions import has_team_role, team_role
from portal import read_cache

PRIVATE_SEGMENT = "private"


def flavour_is_private(flavour: Flavour) -> bool:
    return bool(flavour.options.get("private")) or flavour.team.private_artifacts


def flavour_token(flavour: Flavour) -> str:
    """The flavour's token, made on first use (a private flavour's first build)."""
    existing = FlavourToken.objects.filter(flavour=flavour).values_list("token", flat=True).first()
    if existing:
        return existing
    try:
        with transaction.atomic():
            return FlavourToken.objects.create(flavour=flavour, token=secrets.token_urlsafe(32)).token
    except IntegrityError:  # made by a concurrent build a moment ago
        return FlavourToken.objects.get(flavour=flavour).token


def private_url(token: str, key: str) -> str:
    from builds.adapters.store import check_prefix, get_artifact_store

    base = get_artifact_store().public_base_url
    return f"{base}{PRIVATE_SEGMENT}/{token}/" + quote(check_prefix(key), safe="/")


def artifact_url_for(flavour: Flavour) -> Callable[[str], str]:
    """How the flavour's nodes address a key: the public URL, or the token URL when private."""
    from builds.adapters.store import get_artifact_store

    if not flavour_is_private(flavour):
        return get_artifact_store().public_url
    token = flavour_token(flavour)
    return lambda key: private_url(token, key)


def flavour_token_rotate(*, flavour: Flavour, user: Any) -> tuple[str, Any]:
    """Replace a private flavour's token (builders of its team); the old URLs 404 from now on.

    The flavour's files embed the token, so they are published again with the new one (a new
    build, which reuses the baked images). Returns (new token, that build).
    """
    from builds.services import BuildRefused, build_request

    if not has_team_role(user, flavour.team, Role.BUILDER):
        raise BuildRefused(
            "forbidden",
            f"Rotating a flavour's token needs the builder role in team {flavour.team.slug}.",
            status=403,
        )
    if not flavour_is_private(flavour):
        raise BuildRefused(
            "flavour.not-private", "This flavour is public: it has no token to rotate.", status=409
        )
    token = secrets.token_urlsafe(32)
    with transaction.atomic():
        updated = FlavourToken.objects.filter(flavour=flavour).update(token=token, rotated_at=timezone.now())
        if not updated:
            FlavourToken.objects.create(flavour=flavour, token=token)
        read_cache.bump(read_cache.DATA)  # update() sends no signal; the flavour's URLs changed
    build, _created = build_request(flavour=flavour, user=user, republish=True)
    return token, build


def _owner(key: str) -> tuple[bool, Team | None, Flavour | None]:
    """(private?, owning team, flavour) of a store key; unknown keys are public, as before."""
    parts = key.split("/")
    if len(parts) >= 2 and parts[0] == "flavours":
        flavour = Flavour.objects.select_related("team").filter(pk=parts[1]).first()
        if flavour is not None and flavour_is_private(flavour):
            return True, flavour.team, flavour
    elif len(parts) >= 2 and parts[0] == "extensions":
        extension = Extension.objects.select_related("team").filter(name=parts[1]).first()
        if extension is not None and extension.team is not None and extension.team.private_artifacts:
            return True, extension.team, None
    return False, None, None


# What nodes read. The rest of the store (baked images not yet published under images/, staged
# SHA256SUMS pairs under pending-publication/) is the worker's, never served.
PUBLISHED_TREES = frozenset({"extensions", "flavours"})


def public_read_allowed(user: Any, key: str) -> bool:
    """Whether ``/artifacts/KEY`` may serve ``key`` to ``user`` (anonymous for nodes)."""
    if key.split("/", 1)[0] not in PUBLISHED_TREES:
        return False
    private, team, _flavour = _owner(key)
    return not private or team_role(user, team) is not None


def token_read_allowed(token: str, key: str) -> bool:
    """Whether the flavour holding ``token`` may read ``key``: its own files and the images of the
    extensions it includes (the ones its config and transfer files point at), nothing else."""
    holder = FlavourToken.objects.select_related("flavour").filter(token=token).first()
    if holder is None or not token:
        return False
    flavour = holder.flavour
    parts = key.split("/")
    if len(parts) < 3:
        return False
    if parts[0] == "flavours":
        return parts[1] == flavour.pk
    if parts[0] == "extensions":
        return flavour.extension_versions.filter(
            extension__name=parts[1], extension__delivery=Delivery.BAKE
        ).exists()
    return False
