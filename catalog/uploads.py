"""Custom extensions uploaded as an archive of files (a tarball or zip laid out as ``usr/...``).

How an upload becomes a bakeable extension:

1. The web checks only what costs nothing (name, version, size, kind: a 400 otherwise), keeps
   the bytes as uploaded in ``UploadedArchive`` (the database) with their sha256, and answers 202:
   the version is ``checking``. Each upload is one version of the extension.
2. A worker (``catalog.check_upload``) unpacks the archive with the pipeline's strict unpacker
   into a scratch directory, within budgets of bytes, members, seconds and compression ratio
   (``check_archive_contents``): it refuses path traversal, links leaving the tree, device nodes,
   FIFOs, setuid/setgid files and bombs; then every file must sit under ``usr/`` (not
   ``usr/sbin``, not an ``os-release`` or ``extension-release.d`` file). The version becomes
   proposed, or rejected with the refusal's code and sentence. The scratch directory is always
   removed; one left by a killed worker is removed when a worker starts.
3. The extension's recipe is generated: one source ``upload`` with a ``file://`` URL template
   ``<FETCH_CACHE_DIR>/uploads/<team>/<name>/{version}.<kind>``, one install rule
   ``{from: usr, to: usr}``, and every version pinned to its upload's sha256.
4. Builds call ``catalog.services.uploaded_archive_materialize(version=...)`` before fetching:
   it writes the bytes to that path (any worker host with database access can), and the
   fetcher then verifies the pin like for any upstream download.

The recipe of an uploaded extension is built here rather than parsed: it is generated, not
written by a person, and a first upload has a single version, which the loader's "at least two
versions" rule for hand-written recipes would refuse.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from django.conf import settings

from builds.pipeline.checksums import sha256_file
from builds.pipeline.elf import describe_foreign, foreign_elf_files
from builds.pipeline.errors import PipelineError
from builds.pipeline.recipe import (
    InstallRule,
    Recipe,
    SourceTemplate,
    VersionSpec,
    guess_archive_kind,
)
from builds.pipeline.vocabulary import ARCHES, CATEGORIES, DEFAULT_CATEGORY, ELF_MACHINES
from catalog.errors import CatalogError

if TYPE_CHECKING:
    from builds.pipeline.archive import UnpackLimits
    from catalog.models import Extension, UploadedArchive

UPLOAD_KINDS = ("tar.gz", "tgz", "tar.xz", "tar.zst", "zip")
SOURCE_ID = "upload"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9.,_+-]{1,128}$")
_FORBIDDEN = ("usr/sbin", "usr/lib/os-release", "usr/lib/extension-release.d")


def max_upload_bytes() -> int:
    return int(settings.CUSTOM_UPLOAD_MAX_BYTES)


@dataclass(frozen=True)
class CustomArchive:
    """An upload as received: what the user called it, and the bytes."""

    name: str
    version: str
    file_name: str
    data: bytes
    description: str = ""
    category: str = DEFAULT_CATEGORY
    arches: tuple[str, ...] = ARCHES


@dataclass(frozen=True)
class CheckedArchive:
    kind: str
    sha256: str
    size: int


def _refuse(code: str, message: str) -> CatalogError:
    return CatalogError(code, message)


def validate_archive(archive: CustomArchive) -> CheckedArchive:
    """Check the metadata, size and kind, without unpacking (a worker does that later).

    Raises CatalogError (400) with a sentence naming the problem; returns kind, sha256 and size.
    """
    if not _NAME_RE.match(archive.name):
        raise _refuse(
            "upload.invalid-name", f"{archive.name!r} is not a valid name: use a-z, 0-9, '-' and '_'."
        )
    if not _VERSION_RE.match(archive.version):
        raise _refuse(
            "upload.invalid-version",
            f"{archive.version!r} is not a valid version: use letters, digits and . , _ + - only.",
        )
    if archive.category not in CATEGORIES:
        raise _refuse("upload.invalid-category", f"category must be one of {', '.join(CATEGORIES)}.")
    if not archive.arches or any(a not in ARCHES for a in archive.arches):
        raise _refuse("upload.invalid-arches", f"arches must be a non-empty subset of {', '.join(ARCHES)}.")
    limit = max_upload_bytes()
    if len(archive.data) > limit:
        raise _refuse(
            "upload.too-large",
            f"The archive is {len(archive.data)} bytes; uploads are limited to {limit} bytes.",
        )
    kind = guess_archive_kind(archive.file_name)
    if kind not in UPLOAD_KINDS:
        raise _refuse(
            "upload.unsupported-kind",
            f"{archive.file_name!r} is not a supported archive: "
            "upload a .tar.gz, .tgz, .tar.xz, .tar.zst or .zip.",
        )
    return CheckedArchive(kind=kind, sha256=hashlib.sha256(archive.data).hexdigest(), size=len(archive.data))


def check_archive_contents(data: bytes, kind: str, file_name: str, arches: Sequence[str] = ARCHES) -> None:
    """Unpack an upload strictly within its budgets and check the layout (run by a worker).

    One archive serves every arch the extension declares, so its ELF files must suit each of
    them: an archive of aarch64 executables declared for x86-64 too is refused here rather than
    failing the first x86-64 build (``image.wrong-architecture``).

    Raises CatalogError with the refusal's code and sentence. The scratch directory is removed
    whatever happens (short of SIGKILL: see ``builds.recovery.scratch_remove_stale``).
    """
    with tempfile.TemporaryDirectory(prefix="bakehouse-upload-") as scratch:
        # Named after the user's file so the unpacker's messages speak of it.
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(file_name).name)[:100] or "upload"
        path = Path(scratch, stem if stem.endswith("." + kind) else f"{stem}.{kind}")
        path.write_bytes(data)
        tree = Path(scratch, "tree")
        tree.mkdir()
        _unpack_strictly(path, kind, tree, file_name)
        _check_layout(tree)
        _check_architectures(tree, arches)


def upload_limits() -> UnpackLimits:
    from builds.pipeline.archive import UnpackLimits

    return UnpackLimits(
        # Limits and their reasons: portal/settings.py.
        max_total_bytes=int(settings.CUSTOM_UPLOAD_MAX_UNPACKED_BYTES),
        max_members=int(settings.CUSTOM_UPLOAD_MAX_ENTRIES),
        max_seconds=float(settings.CUSTOM_UPLOAD_CHECK_SECONDS),
        max_ratio=float(settings.CUSTOM_UPLOAD_MAX_RATIO),
    )


def _unpack_strictly(path: Path, kind: str, dest: Path, file_name: str) -> None:
    from builds.pipeline.archive import unpack

    try:
        result = unpack(path, kind, dest, limits=upload_limits(), file_name=file_name)
    except PipelineError as exc:
        if not exc.is_users_fault:
            raise  # the worker's trouble (a full disk): the check is retried, the upload not refused
        raise _refuse(exc.code, f"The archive was refused: {exc.message}") from exc
    # The unpacker clears setuid/setgid bits of upstream tarballs; from a user it is a refusal.
    if result.cleared_mode_bits:
        raise _refuse(
            "upload.setuid",
            f"{result.cleared_mode_bits[0]!r} is setuid, setgid or sticky; images must not carry such files.",
        )


def _check_layout(tree: Path) -> None:
    """Everything under usr/, nothing where a sysext must not write, no special files."""
    files = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for entry in [*dirnames, *filenames]:
            full = Path(dirpath, entry)
            rel = full.relative_to(tree).as_posix()
            if rel.split("/")[0] != "usr":
                raise _refuse(
                    "upload.outside-usr",
                    f"{rel!r} is outside usr/: an uploaded sysext holds its files under usr/ "
                    "(e.g. usr/bin/tool).",
                )
            if any(rel == bad or rel.startswith(bad + "/") for bad in _FORBIDDEN):
                raise _refuse("upload.forbidden-path", f"{rel!r} must not be shipped in a sysext.")
            mode = full.lstat().st_mode
            if stat.S_ISREG(mode):
                files += 1
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    raise _refuse(
                        "upload.setuid", f"{rel!r} is setuid/setgid; images must not carry such files."
                    )
            elif not (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                raise _refuse("upload.special-file", f"{rel!r} is not a regular file, directory or symlink.")
    if files == 0:
        raise _refuse("upload.empty", "The archive holds no files under usr/.")


def _check_architectures(tree: Path, arches: Sequence[str]) -> None:
    for arch in arches:
        _checked, foreign = foreign_elf_files(tree, arch)
        if foreign:
            raise _refuse(
                "upload.wrong-architecture",
                f"The extension is declared for {', '.join(arches)}, but {describe_foreign(foreign)}, "
                f"which does not run on {arch} ({ELF_MACHINES[arch][1]}): one archive serves every "
                "declared arch. Declare only the arch its executables are built for.",
            )


def archive_dir(extension: Extension) -> Path:
    team = extension.team.slug if extension.team is not None else "_global"
    return Path(settings.FETCH_CACHE_DIR).resolve() / "uploads" / team / extension.name


def archive_path(extension: Extension, version: str, kind: str) -> Path:
    return archive_dir(extension) / f"{version}.{kind}"


def write_archive(path: Path, upload: UploadedArchive) -> Path:
    """Write the upload's bytes to ``path`` (atomically) unless an identical file is there."""
    data = bytes(upload.data)
    if hashlib.sha256(data).hexdigest() != upload.sha256:
        raise CatalogError(
            "upload.corrupt", f"The stored archive {upload.file_name} no longer matches its sha256."
        )
    if path.is_file() and sha256_file(path) == upload.sha256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    return path


def _uploads(extension: Extension) -> list[tuple[str, str, str, bool]]:
    """(version, kind, sha256, deprecated) of every uploaded version, oldest first.

    Read through the extension's own relations, so this module never imports the models (which
    import it for ``Extension.recipe``).
    """
    refused = "refused"  # UploadedArchive.State.REFUSED
    rows = (
        extension.versions.filter(upload__isnull=False)
        .exclude(upload__state=refused)
        .order_by("proposed_at", "upload__pk")
        .values_list("version", "upload__kind", "upload__sha256", "deprecated")
    )
    return [(version, kind, sha256, deprecated) for version, kind, sha256, deprecated in rows]


def upload_recipe(extension: Extension) -> Recipe:
    """The pipeline recipe of an uploaded extension (see the module docstring)."""
    uploads = _uploads(extension)
    kind = uploads[0][1] if uploads else "tar.gz"
    arches = {arch: "" for arch in extension.arches}
    url = f"{archive_dir(extension).as_uri()}/{{version}}.{kind}"
    source = SourceTemplate(
        id=SOURCE_ID,
        url=url,
        archive=kind,
        strip_components=0,
        arches=None,
        checksum_url=None,
        install=(InstallRule(source="usr", to="usr"),),
    )
    versions = {
        version: VersionSpec(
            sha256={arch: {SOURCE_ID: digest} for arch in arches}, vars={}, deprecated=deprecated
        )
        for version, _, digest, deprecated in uploads
    }
    return Recipe(
        name=extension.name,
        description=extension.description,
        homepage=extension.homepage,
        category=extension.category,
        delivery="bake",
        arches=arches,
        sources=(source,),
        files={},
        start=(),
        reload_manager=False,
        release_id="_any",
        minor_pinning=False,
        requires=(),
        conflicts=(),
        replaces_builtin=(),
        min_flatcar=None,
        versions=versions,
        digest=hashlib.sha256(render_upload_recipe(extension).encode()).hexdigest(),
    )


def render_upload_recipe(extension: Extension) -> str:
    """The generated recipe as YAML, for people to read (the same content ``upload_recipe`` builds)."""
    uploads = _uploads(extension)
    kind = uploads[0][1] if uploads else "tar.gz"
    document = {
        "name": extension.name,
        "description": extension.description or f"Custom extension {extension.name}",
        "category": str(extension.category),
        "arches": {arch: "" for arch in extension.arches},
        "sources": [
            {
                "id": SOURCE_ID,
                "url": f"{archive_dir(extension).as_uri()}/{{version}}.{kind}",
                "archive": kind,
                "install": [{"from": "usr", "to": "usr"}],
            }
        ],
        "versions": {
            version: {
                "sha256": dict.fromkeys(extension.arches, digest),
                **({"deprecated": True} if dep else {}),
            }
            for version, _, digest, dep in uploads
        },
    }
    header = "# Generated from uploaded archives; the archives are kept in the portal's database.\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
