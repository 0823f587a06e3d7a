"""Every error code Bakehouse raises, with its meaning, whose problem it is and whether to retry.

A code is ``area.problem``, stable across releases: users search for it, scripts match on it.
``kind`` says whose move it is:

- ``user``: the request, recipe, flavour, upload or archive is wrong; the message says what to
  change. Never retried. HTTP 4xx.
- ``upstream``: a server Bakehouse downloads from misbehaves (a 404, a changed file, a timeout).
  Transient ones (``retryable``) pass on a later attempt; the rest need a look at the upstream.
  HTTP 502.
- ``infrastructure``: the portal itself is at fault (a tool is missing, the signing key is bad,
  the artifact store is down). Nothing the user can fix; an operator has to. HTTP 503.

``retryable`` is the default for the code; a raise site may override it (an HTTP 503 from an
upstream is retryable, its 404 is not: both are ``fetch.http-error``). ``status`` is the HTTP
status when it is not the kind's (404 for something missing, 409 for a conflict).

tests/pipeline/test_error_codes.py checks that every code raised in the code base is listed here
and that nothing here is unused. Pure: no Django.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorKind(StrEnum):
    USER = "user"
    UPSTREAM = "upstream"
    INFRASTRUCTURE = "infrastructure"


# The HTTP status an error answers with when its code names none.
STATUS_BY_KIND = {ErrorKind.USER: 400, ErrorKind.UPSTREAM: 502, ErrorKind.INFRASTRUCTURE: 503}


@dataclass(frozen=True)
class ErrorCode:
    code: str
    kind: ErrorKind
    meaning: str
    retryable: bool = False
    status: int | None = None

    @property
    def http_status(self) -> int:
        return self.status or STATUS_BY_KIND[self.kind]


def _user(code: str, meaning: str, *, status: int | None = None) -> ErrorCode:
    return ErrorCode(code, ErrorKind.USER, meaning, status=status)


def _upstream(code: str, meaning: str, *, retryable: bool = False) -> ErrorCode:
    return ErrorCode(code, ErrorKind.UPSTREAM, meaning, retryable=retryable)


def _infra(code: str, meaning: str, *, retryable: bool = False, status: int | None = None) -> ErrorCode:
    return ErrorCode(code, ErrorKind.INFRASTRUCTURE, meaning, retryable=retryable, status=status)


# Checks shared by the image tree and the audit of a finished image (pipeline/tree.py).
_TREE_PROBLEMS = {
    "invalid-name": "A path is not UTF-8 or contains control characters.",
    "forbidden-path": "A path lies outside what a sysext may ship (only usr/ and opt/).",
    "absolute-symlink": "A symlink points to an absolute path outside the extension.",
    "escaping-symlink": "A symlink leads out of the extension tree.",
    "setuid": "A file is setuid or setgid.",
    "special-file": "A device, FIFO or socket is in the tree.",
    "hard-link": "A hard link is in the tree.",
    "missing-release": "The extension-release file is missing or not a regular file.",
    "invalid-unit": "A systemd unit file is not valid.",
    "invalid-dropin": "A systemd drop-in file does not end in .conf.",
}

_CODES: tuple[ErrorCode, ...] = (
    # --- requests refused by the portal ---------------------------------------------------------
    _user("forbidden", "You lack the team role this action needs.", status=403),
    _user("approval.same-person", "The team requires a second person to approve a version.", status=403),
    _user("reason.required", "A rejection needs a reason."),
    _user("filter.invalid-arch", "A list filter names an unknown architecture."),
    _user("filter.invalid-category", "A list filter names an unknown category."),
    _user("team.required", "Say which team (team=slug); you are in several."),
    _user("team.invalid-role", "The role is not one of the team roles."),
    _user("team.invalid-setting", "The team setting does not exist."),
    _user("team.not-found", "No such team among yours.", status=404),
    _user("team.unknown-user", "No account has that username; it must exist before joining a team."),
    _user("team.already-member", "The user is already a member of the team.", status=409),
    _user("team.not-member", "The user is not a member of the team.", status=404),
    _user("team.last-admin", "The team's last admin cannot leave or lose the admin role.", status=409),
    _user("user.not-found", "No such user.", status=404),
    _user("extension.invalid", "The custom extension request is incomplete or contradictory."),
    _user("extension.name-taken", "Another extension has this name.", status=409),
    _user("extension.not-found", "No such extension visible to you.", status=404),
    _user("version.invalid", "The version does not resolve with the recipe on every arch."),
    _user("version.exists", "This extension already has this version.", status=409),
    _user("version.not-found", "No such version visible to you.", status=404),
    _user("version.not-proposed", "Only proposed versions are approved or rejected.", status=409),
    _user("version.not-approved", "Only approved versions are deprecated.", status=409),
    _user("version.upload-only", "Versions of an uploaded extension come from uploads."),
    _user("catalog.invalid-recipes", "Some recipe files did not load; nothing was synced."),
    _user("flavour.wrong-team", "A revision must belong to the team of the flavour it edits."),
    _user("flavour.not-private", "Only a private flavour has a token to rotate.", status=409),
    _user("flavour.not-built", "The flavour has no successful build yet.", status=409),
    _user("flavour.inconsistent", "The build's image is not part of its flavour's document."),
    _user("flavour.stale", "A recipe changed since the flavour was composed; compose a new revision."),
    _user("build.not-retryable", "Only a failed or cancelled build is retried.", status=409),
    _user("build.not-cancellable", "The build has already ended.", status=409),
    _user("build.cancelled", "Someone cancelled the build."),
    _user("artifact.missing", "The published file is no longer in the artifact store.", status=404),
    _user("webhook.refused-url", "The webhook URL is refused (not http(s), or not allowed)."),
    _user("webhook.invalid-url", "The webhook URL is not a valid http(s) URL."),
    _user("webhook.refused-address", "The webhook host resolves to a private address."),
    _upstream("webhook.unresolvable-host", "The webhook host does not resolve right now.", retryable=True),
    # --- recipes --------------------------------------------------------------------------------
    _user("recipe.invalid", "The recipe does not follow the recipe format."),
    _user("recipe.invalid-pin", "A sha256 pin in the recipe is malformed or for an unknown source."),
    _user("recipe.invalid-vars", "The recipe needs variables the version does not give."),
    _user("recipe.unknown-version", "The recipe has no such version."),
    _user("recipe.unsupported-arch", "The recipe does not build for this architecture."),
    _user("recipe.not-bakeable", "The extension is delivered by Flatcar itself; nothing to bake."),
    _user("recipe.url-escapes", "A filled-in URL leaves the place its template points to."),
    _user("recipe.local-file", "Team recipes cannot read local files."),
    # --- uploads --------------------------------------------------------------------------------
    _user("upload.invalid-name", "The uploaded extension's name is not valid."),
    _user("upload.invalid-version", "The uploaded version is not valid."),
    _user("upload.invalid-category", "The category is not one of the catalog's."),
    _user("upload.invalid-arches", "The arches are not a subset of the supported ones."),
    _user("upload.too-large", "The upload is larger than allowed."),
    _user("upload.unsupported-kind", "The upload is neither a sysext image nor a supported archive."),
    _user("upload.corrupt", "The uploaded archive or image cannot be read."),
    _user("upload.setuid", "The upload contains a setuid or setgid file."),
    _user("upload.outside-usr", "The upload ships files outside usr/ and opt/."),
    _user("upload.forbidden-path", "The upload ships a path a sysext may not."),
    _user("upload.special-file", "The upload contains a device, FIFO or socket."),
    _user("upload.empty", "The upload contains no files."),
    _user("upload.wrong-architecture", "The upload's ELF files do not suit every arch it is declared for."),
    _user("upload.kind-changed", "A new version must be uploaded in the same form as the first."),
    # --- fetching upstream files ----------------------------------------------------------------
    _user("fetch.invalid-url", "A source URL is not a valid http(s) URL."),
    _user("fetch.unsupported-url", "Only http, https and (for uploads) file URLs are fetched."),
    _user("fetch.invalid-pin", "A sha256 pin is not 64 hex digits."),
    _user("fetch.refused-address", "A source host resolves to a private or reserved address."),
    _user("fetch.file-refused", "A local file lies outside the extension's upload directory."),
    _upstream(
        "fetch.http-error", "The upstream answered an HTTP error (5xx and 429 are retried).", retryable=False
    ),
    _upstream("fetch.timeout", "The upstream did not answer, or download, in time.", retryable=True),
    _upstream(
        "fetch.connection-error", "The connection to the upstream failed or broke off.", retryable=True
    ),
    _upstream(
        "fetch.unresolvable-host", "The upstream host name does not resolve right now.", retryable=True
    ),
    _upstream("fetch.tls-error", "The upstream's TLS certificate is not valid."),
    _upstream("fetch.bad-redirect", "The upstream redirects to a non-http URL."),
    _upstream("fetch.too-many-redirects", "The upstream redirects too many times."),
    _upstream("fetch.too-large", "The upstream file is larger than the download limit."),
    _upstream("fetch.sha256-mismatch", "The upstream file differs from its pinned sha256."),
    _infra("fetch.file-error", "An uploaded file cannot be read on the worker."),
    _infra("fetch.cache-unwritable", "The worker's download cache is not writable."),
    _infra("fetch.io-error", "The worker could not write a download (disk full?).", retryable=True),
    # --- unpacking archives (upstream or uploaded; hostile input) -------------------------------
    _user("archive.unsupported-kind", "The archive format is not supported."),
    _user("archive.corrupt", "The archive is damaged or not what its name says."),
    _user("archive.absolute-path", "An archive member has an absolute path."),
    _user("archive.path-traversal", "An archive member leads out of the target directory."),
    _user("archive.unsafe-symlink", "An archive symlink points outside the archive."),
    _user("archive.hard-link", "An archive member is a hard link to an unsafe target."),
    _user("archive.special-file", "An archive member is a device, FIFO or socket."),
    _user("archive.duplicate-member", "Two archive members have the same path."),
    _user("archive.too-many-members", "The archive has more members than allowed."),
    _user("archive.too-large", "The archive unpacks to more bytes than allowed."),
    _user("archive.ratio", "The archive compresses suspiciously well (a zip bomb?)."),
    _user("archive.too-slow", "Unpacking took longer than allowed."),
    _infra("archive.dest-not-empty", "The worker's unpack directory was not empty."),
    _infra("archive.io-error", "The worker could not write unpacked files.", retryable=True),
    # --- the image tree, the image and its audit ------------------------------------------------
    *(_user(f"tree.{problem}", meaning) for problem, meaning in _TREE_PROBLEMS.items()),
    *(_user(f"image.{problem}", meaning) for problem, meaning in _TREE_PROBLEMS.items()),
    _user("tree.install-no-match", "An install rule matches no file of the unpacked sources."),
    _user("tree.install-ambiguous", "An install rule matches several files where one is expected."),
    _user("tree.install-bad-symlink", "An install rule's symlink is not valid."),
    _user("tree.install-conflict", "Two install rules write the same path."),
    _user("tree.missing-unit", "The recipe enables a systemd unit the tree does not ship."),
    _user("image.unsupported-format", "The image format is not squashfs or erofs."),
    _user("image.unsupported-compression", "The compression is not supported for this format."),
    _user("image.unknown-format", "The file is not a squashfs or erofs image."),
    _user(
        "image.wrong-architecture",
        "An ELF file in the image is built for another machine than the image's architecture.",
    ),
    _infra("image.mksquashfs-failed", "mksquashfs failed on the worker."),
    _infra("image.mkfs-erofs-failed", "mkfs.erofs failed on the worker."),
    _infra("image.tool-version", "The image tool's version cannot be read."),
    _infra("image.audit-failed", "Listing the finished image failed."),
    _infra("image.audit-unreadable", "The image listing has lines the audit cannot read."),
    _infra("image.timeout", "An image tool ran past its time limit.", retryable=True),
    # --- verification ---------------------------------------------------------------------------
    _user("verify.merge-failed", "systemd-sysext refused to merge the image."),
    _user("verify.check-failed", "The extension's check program failed in the merged image."),
    _infra("verify.unavailable", "systemd-sysext cannot run on this worker."),
    _infra("verify.timeout", "Verification ran past its time limit.", retryable=True),
    # --- signing (the operator's key) -----------------------------------------------------------
    _infra("sign.invalid-key", "The configured signing key cannot be read or is not a secret key."),
    _infra("sign.bad-passphrase", "The signing key's passphrase is wrong."),
    _infra("sign.keygen-failed", "Generating a signing key failed."),
    _infra("sign.export-failed", "Exporting the public key failed."),
    _infra("sign.failed", "gpg failed to sign SHA256SUMS."),
    _infra("sign.verify-failed", "The fresh signature does not verify."),
    _infra("sign.cleanup", "Stopping gpg's agents failed (ignored)."),
    _infra("sign.timeout", "gpg ran past its time limit.", retryable=True),
    # --- checksums, sysupdate files, Butane -----------------------------------------------------
    _user("sums.invalid", "A SHA256SUMS file is malformed."),
    _user("sums.invalid-name", "A SHA256SUMS entry names an unsafe file."),
    _user("sums.invalid-digest", "A SHA256SUMS entry has a malformed digest."),
    _user("sysupdate.invalid-name", "The extension name cannot be used in a transfer file."),
    _user("sysupdate.invalid-version", "The version cannot be used in a transfer file."),
    _user("sysupdate.invalid-url", "The artifact URL cannot be used in a transfer file."),
    _user("sysupdate.invalid-instances", "InstancesMax is out of range."),
    _user("butane.invalid-spec-version", "The Butane spec version is not supported."),
    _user("butane.invalid-arch", "The architecture is not one Flatcar supports."),
    _user("butane.invalid-url", "An artifact URL in the config is not a stable https URL."),
    _user("butane.expiring-url", "An artifact URL is presigned or expiring."),
    _user("butane.duplicate-extension", "The same extension is listed twice."),
    _user("butane.arch-mismatch", "An image is for another architecture than the flavour."),
    _user("butane.invalid-hash", "An image digest is malformed."),
    _user("butane.missing-keyring", "Signed updates need the public keyring."),
    _user("butane.armored-keyring", "The keyring must be binary, not ASCII-armored."),
    _user("butane.invalid-mask", "A masked extension name is not valid."),
    _user("butane.invalid-official-extension", "The official Flatcar extension is unknown."),
    _user("butane.invalid-ssh-key", "An SSH key is not a valid public key line."),
    _user("butane.invalid-hostname", "The host name is not a valid host name."),
    _user("butane.invalid-fragment", "The Butane fragment is not valid Butane."),
    _user("butane.fragment-conflict", "The Butane fragment redefines what the flavour sets."),
    _infra(
        "butane.schema-invalid",
        "A rendered Ignition config fails the JSON schema of its spec version; it is not published (a bug).",
    ),
    # --- the bake CLI ---------------------------------------------------------------------------
    _user("cli.invalid-argument", "A command-line argument is not valid."),
    _user("cli.output-unwritable", "The output directory cannot be written."),
    _user("bake.minor-pin", "A minor-line pin needs an X.Y.Z version."),
    _user("bake.signature-required", "The output holds a signed publication; sign this bake too."),
    _user("bake.invalid-sums", "The output directory's SHA256SUMS is not valid."),
    _infra("bake.output-unwritable", "The output directory cannot be written."),
    _infra("bake.file-error", "Reading or writing a file of the bake failed."),
    _infra("bake.publish-failed", "Moving the baked files into place failed."),
    # --- source builds (pipeline/source_build.py) ------------------------------------------------
    _user("source.compile-failed", "A command of the recipe's build section failed (see the last lines)."),
    _user("source.timeout", "The source build ran past its time or CPU limit and was stopped."),
    _user("source.out-of-memory", "The source build ran out of its memory limit."),
    _infra(
        "source.toolchain-mismatch", "The worker lacks a pinned toolchain package, or has another version."
    ),
    _infra("source.sandbox-unavailable", "The worker cannot create the build sandbox (user namespaces)."),
    # --- pre-baked Flatcar disk images (builds.pipeline.prebake) ---------------------------------
    _user("prebake.invalid-version", "The Flatcar version is not a release number (4593.2.0)."),
    _user("prebake.invalid-arch", "Flatcar publishes no disk image for this architecture."),
    _upstream("prebake.digest-mismatch", "The Flatcar image differs from its pinned sha256."),
    _upstream(
        "prebake.signature-mismatch", "The Flatcar image's signature does not verify with Flatcar's key."
    ),
    _upstream("prebake.unpack-failed", "The Flatcar image is not a bzip2-compressed disk image."),
    _upstream(
        "prebake.missing-partition", "The image lacks a partition of a Flatcar disk (not a Flatcar image)."
    ),
    _upstream("prebake.not-ext4", "The image's ROOT partition holds no ext4 file system."),
    _user("prebake.no-space", "The extensions (or the embedded config) do not fit on the image."),
    _user("prebake.invalid-config", "The flavour's config names something that cannot be baked."),
    _user("prebake.image-mismatch", "A sysext image is not the one the flavour's config names."),
    _user("prebake.oem-unsupported", "The config cannot be embedded into this image's OEM file system."),
    _infra("prebake.signing-key-missing", "Flatcar's image signing key is missing or unreadable."),
    _infra("prebake.partition-size", "A rewritten partition changed size (a bug)."),
    _infra("prebake.write-failed", "debugfs or mkfs.btrfs could not write the files into the image."),
    _infra("prebake.compress-failed", "Compressing the pre-baked image failed."),
    _infra("prebake.timeout", "A pre-bake tool ran past its time limit.", retryable=True),
    # --- publication and the artifact store -----------------------------------------------------
    _infra("publish.invalid-flavour", "The flavour ID to publish is not a digest (a bug)."),
    _infra("publish.nothing", "There is no image to publish (a bug)."),
    _infra("publish.reserved-name", "A flavour file would overwrite one the publisher writes (a bug)."),
    _infra("publish.sums-invalid", "The published SHA256SUMS in the store is damaged."),
    _infra("publish.image-conflict", "A published image name already holds other bytes."),
    _infra("publish.image-changed", "A staged image changed before it was published."),
    _user("store.not-found", "No artifact is stored under this key.", status=404),
    _user("store.invalid-key", "The artifact key is not valid.", status=404),
    _infra("store.unavailable", "The artifact store cannot be reached.", retryable=True),
    _infra("store.read-failed", "Reading from the artifact store failed.", retryable=True),
    _infra("store.write-failed", "Writing to the artifact store failed.", retryable=True),
    _infra("store.write-lost", "An object written to the store is not there afterwards.", retryable=True),
    _infra("store.sha256-mismatch", "An object in the store differs from what was written."),
    # --- builds and pinning as a whole ----------------------------------------------------------
    _infra("tool.missing", "A tool the worker needs is not installed."),
    _infra(
        "build.infrastructure", "The worker lost its database, broker or store connection.", retryable=True
    ),
    _infra("build.internal-error", "An unexpected error (a bug) stopped the build."),
    _infra("build.worker-lost", "The worker running the build stopped sending heartbeats."),
    _infra("build.queue-timeout", "No worker took the build in time."),
    _upstream("build.time-limit", "A build step ran past its time limit (a hanging upstream, a huge image)."),
    _infra("pinning.internal-error", "An unexpected error (a bug) stopped digest pinning."),
    _infra("pinning.lost", "The digest pinning task was lost."),
)

CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _CODES}
assert len(CODES) == len(_CODES), "an error code is listed twice"


def lookup(code: str) -> ErrorCode | None:
    """The registry entry of ``code``, or None for a code nobody registered."""
    return CODES.get(code)
