"""The key that signs every published SHA256SUMS.

``SIGNING_KEY_FILE`` (and ``SIGNING_PASSPHRASE_FILE``) name an operator's key. Without them the
portal makes its own once, under ``VAR_DIR/signing/`` (0600), and keeps using it: nodes trust
the key shipped in their Ignition config, so it must not change between builds. A file lock
keeps a web process and workers that start together from making two different keys.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from django.conf import settings

from builds.pipeline.signing import GpgSigner, generate_signing_key

EMBEDDED_KEY_NAME = "Bakehouse embedded signing key"
EMBEDDED_KEY_EMAIL = "bakehouse@localhost"


def embedded_key_file() -> Path:
    return Path(settings.VAR_DIR) / "signing" / "signing-key.asc"


def ensure_embedded_signing_key() -> Path:
    """The embedded key file, generated on first use; safe to call from several processes."""
    key_file = embedded_key_file()
    if key_file.is_file():
        return key_file
    directory = key_file.parent
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not key_file.is_file():  # another process may have made it while we waited
            partial = key_file.with_name(key_file.name + ".new")
            generate_signing_key(partial, name=EMBEDDED_KEY_NAME, email=EMBEDDED_KEY_EMAIL)
            partial.chmod(0o600)
            os.replace(partial, key_file)
    return key_file


class SharedSigningKeyMissing(Exception):
    """A worker on a remote broker without ``SIGNING_KEY_FILE``."""


def require_shared_signing_key() -> None:
    """Refuse to run a worker that would sign with a key of its own machine.

    With a remote broker (``REDIS_URL``) workers may run on several machines; each would make
    its own embedded key in its own var dir, and nodes trusting one key would reject the builds
    signed by the others. The embedded default (filesystem broker, one machine) keeps its key.
    """
    if settings.REDIS_URL and not settings.SIGNING_KEY_FILE:
        raise SharedSigningKeyMissing(
            "SIGNING_KEY_FILE is not set: with a remote broker (REDIS_URL) every worker must sign "
            "with the same key, or nodes reject the builds of the others. Set SIGNING_KEY_FILE "
            "(and SIGNING_PASSPHRASE_FILE if the key has one) to the same key file on every worker."
        )


def signing_key_files() -> tuple[Path, Path | None]:
    """The secret key file and its passphrase file (None: the key has no passphrase)."""
    if settings.SIGNING_KEY_FILE:
        return Path(settings.SIGNING_KEY_FILE), settings.SIGNING_PASSPHRASE_FILE
    return ensure_embedded_signing_key(), None


def get_signer() -> GpgSigner:
    """A signer for the configured key. Close it (or use ``with``): it owns a GNUPGHOME."""
    key_file, passphrase_file = signing_key_files()
    return GpgSigner(key_file, passphrase_file)
