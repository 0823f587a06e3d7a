"""Bake one sysext: recipe -> fetch -> unpack -> assemble -> image -> audit -> SHA256SUMS ->
sign -> sysupdate transfer file, published atomically into an output directory.

Everything is built in scratch space; the output directory only receives the finished files at
the very end (renamed in from a staging directory on the same file system), so a failure at any
step leaves nothing new behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline import archive
from builds.pipeline.checksums import (
    SIGNATURE_FILE_NAME,
    SUMS_FILE_NAME,
    parse_sums,
    sha256_file,
    update_sums,
    write_sums,
)
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import FetchedFile, Fetcher
from builds.pipeline.image import DEFAULT_TIMESTAMP, ImageSpec, audit_image, build_image, tool_versions
from builds.pipeline.recipe import Recipe, ResolvedSource
from builds.pipeline.signing import GpgSigner
from builds.pipeline.sysupdate import image_file_name, render_transfer, transfer_file_name
from builds.pipeline.tree import TreeSummary, UnpackedSource, assemble_tree
from builds.pipeline.verify import VerifyResult, verify_with_systemd_sysext

# Bump when tree assembly changes in a way that changes image bytes: it is part of cache keys.
PIPELINE_REVISION = "bakehouse-bake/1"
STEPS = (
    "fetch",
    "unpack",
    "assemble",
    "image",
    "audit",
    "verify",
    "checksums",
    "sign",
    "transfer",
    "publish",
)
_MINOR_RE = re.compile(r"^(v?\d+\.\d+)\.")

Progress = Callable[[str, str, float], None]


@dataclass(frozen=True)
class StepTiming:
    step: str
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class SourceRecord:
    """Where a source came from and what it was: recorded with every build."""

    id: str
    url: str
    final_url: str
    sha256: str
    size: int
    pinned: bool


@dataclass(frozen=True)
class BakeResult:
    """The published artifacts of one bake and how they were made."""

    name: str
    version: str
    arch: str
    out_dir: Path
    image_path: Path
    image_sha256: str
    image_size: int
    image_format: str
    compression: str
    files: tuple[str, ...]  # names written into out_dir
    sums_path: Path
    signature_path: Path | None
    transfer_files: tuple[str, ...]
    sources: tuple[SourceRecord, ...]
    tool_versions: dict[str, str]
    cache_key: str
    tree: TreeSummary
    steps: tuple[StepTiming, ...]
    verification: VerifyResult | None = None
    signer_fingerprint: str | None = None

    @property
    def image_name(self) -> str:
        return self.image_path.name

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


def minor_pin(version: str) -> str:
    """``v1.32.3`` -> ``v1.32``: the minor line a pinned transfer file follows."""
    match = _MINOR_RE.match(version)
    if not match:
        raise PipelineError(
            "bake.minor-pin",
            f"version {version!r} does not look like X.Y.Z, so it cannot be pinned to a minor line",
        )
    return match.group(1)


def image_cache_key(
    *,
    recipe_digest: str,
    version: str,
    arch: str,
    source_digests: Mapping[str, str],
    image_format: str,
    compression: str,
    tools: Mapping[str, str],
    timestamp: int = DEFAULT_TIMESTAMP,
) -> str:
    """sha256 over everything that determines the image bytes.

    Equal keys mean byte-identical images (the build is reproducible), so a builder can reuse
    an image instead of baking it again.
    """
    image_tool = "mkfs.erofs" if image_format == "erofs" else "mksquashfs"
    canonical = json.dumps(
        {
            "pipeline": PIPELINE_REVISION,
            "recipe": recipe_digest,
            "version": version,
            "arch": arch,
            "sources": dict(sorted(source_digests.items())),
            "format": image_format,
            "compression": compression,
            "tool": [image_tool, tools.get(image_tool, "missing")],
            "timestamp": timestamp,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class _Steps:
    """Times steps and reports progress."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self.timings: list[StepTiming] = []

    def report(self, step: str, message: str, fraction: float) -> None:
        if self._progress is not None:
            self._progress(step, message, max(0.0, min(1.0, fraction)))

    def done(self, step: str, started: float, detail: str = "") -> None:
        timing = StepTiming(step, time.monotonic() - started, detail)
        self.timings.append(timing)
        self.report(
            step, f"{detail} ({timing.seconds:.2f}s)" if detail else f"done ({timing.seconds:.2f}s)", 1.0
        )


def bake_sysext(
    recipe: Recipe,
    version: str,
    arch: str,
    out_dir: str | os.PathLike[str],
    *,
    fetcher: Fetcher,
    work_dir: str | os.PathLike[str] | None = None,
    image_format: str = "squashfs",
    compression: str | None = None,
    signer: GpgSigner | None = None,
    publish_url: str | None = None,
    pins: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    verify: bool = False,
    timestamp: int = DEFAULT_TIMESTAMP,
    unpack_limits: archive.UnpackLimits | None = None,
) -> BakeResult:
    """Bake ``recipe`` at ``version`` for ``arch`` into ``out_dir``.

    Writes ``<name>-<version>-<arch>.raw``, ``SHA256SUMS`` (merged with the lines of images
    already present in ``out_dir``), ``SHA256SUMS.gpg`` when a ``signer`` is given, and the
    transfer file(s) when a ``publish_url`` is given. ``progress(step, message, fraction)`` is
    called as steps run. With ``verify`` the image is merged by systemd-sysext before anything
    is published. ``unpack_limits`` caps each archive's members and unpacked bytes (decompression
    bombs). Any failure raises ``PipelineError`` and leaves ``out_dir`` as it was.
    """
    # Everything that can be refused without downloading is checked first.
    sources = recipe.resolve(version, arch, pins)
    spec = ImageSpec.create(image_format, compression)
    image_name = image_file_name(recipe.name, version, arch)
    transfers = _render_transfers(recipe, version, publish_url, signed=signer is not None)
    tools = tool_versions()

    out = Path(out_dir).absolute()
    if signer is None and (out / SIGNATURE_FILE_NAME).exists():
        # A new SHA256SUMS without a new signature would leave the old one stale: nodes that
        # verify would refuse every image in the directory.
        raise PipelineError(
            "bake.signature-required",
            f"{out} holds a signed publication ({SIGNATURE_FILE_NAME}); sign this bake too "
            "(--sign-key) or bake into another directory",
        )
    created_out = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Staging lives in out_dir so that publishing is a rename on one file system.
        staging = Path(tempfile.mkdtemp(prefix=".bakehouse-staging-", dir=out))
    except OSError as exc:
        if created_out:
            _remove_if_empty(out)
        raise PipelineError(
            "bake.output-unwritable",
            f"cannot write into the output directory {out}: {exc.strerror}; "
            "choose a directory you can write to",
        ) from exc
    scratch = Path(tempfile.mkdtemp(prefix="bh-bake-", dir=work_dir))
    steps = _Steps(progress)
    try:
        fetched = _fetch(sources, fetcher, steps)
        unpacked = _unpack(sources, fetched, scratch, steps, unpack_limits)

        started = time.monotonic()
        steps.report("assemble", "assembling the image tree", 0.0)
        tree = assemble_tree(recipe, arch, unpacked, scratch / "root")
        steps.done("assemble", started, f"{tree.files} files, {tree.bytes} bytes")

        started = time.monotonic()
        steps.report(
            "image", f"mksquashfs ({spec.compression})" if spec.format == "squashfs" else "mkfs.erofs", 0.0
        )
        image_path = build_image(scratch / "root", staging / image_name, spec, timestamp=timestamp)
        shutil.rmtree(scratch / "root", ignore_errors=True)  # free the space before the next steps
        steps.done("image", started, f"{image_name}, {image_path.stat().st_size} bytes")

        started = time.monotonic()
        steps.report("audit", "checking the image's file list", 0.0)
        entries = audit_image(image_path, recipe.name)
        steps.done("audit", started, f"{entries} entries")

        verification = None
        if verify:
            started = time.monotonic()
            steps.report("verify", "merging with systemd-sysext", 0.0)
            verification = verify_with_systemd_sysext(image_path, recipe.name, arch)
            steps.done(
                "verify",
                started,
                verification.status + (f": {verification.reason}" if verification.reason else ""),
            )

        started = time.monotonic()
        steps.report("checksums", "hashing the image", 0.0)
        image_sha = sha256_file(image_path)
        sums = update_sums(_existing_sums(out, replacing=image_name), {image_name: image_sha})
        write_sums(staging / SUMS_FILE_NAME, sums)
        steps.done("checksums", started, f"{image_sha} (SHA256SUMS lists {len(sums)})")

        signature = None
        if signer is not None:
            started = time.monotonic()
            steps.report("sign", "signing SHA256SUMS", 0.0)
            signature = signer.sign_detached(staging / SUMS_FILE_NAME, staging / SIGNATURE_FILE_NAME)
            steps.done("sign", started, f"{SIGNATURE_FILE_NAME} by {signer.fingerprint}")

        if transfers:
            started = time.monotonic()
            for file_name, text in transfers.items():
                (staging / file_name).write_text(text, encoding="utf-8")
            steps.done("transfer", started, ", ".join(transfers))

        names = [image_name, SUMS_FILE_NAME]
        if signature is not None:
            names.append(SIGNATURE_FILE_NAME)
        names.extend(transfers)
        started = time.monotonic()
        _publish(staging, names, out)
        steps.done("publish", started, f"{len(names)} files into {out}")
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if created_out:
            _remove_if_empty(out)
        if isinstance(exc, OSError):
            raise _file_trouble(exc) from exc
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)

    source_records = tuple(
        SourceRecord(s.id, f.url, f.final_url, f.sha256, f.size, pinned=s.sha256 is not None)
        for s, f in zip(sources, fetched, strict=True)
    )
    return BakeResult(
        name=recipe.name,
        version=version,
        arch=arch,
        out_dir=out,
        image_path=out / image_name,
        image_sha256=image_sha,
        image_size=(out / image_name).stat().st_size,
        image_format=spec.format,
        compression=spec.compression,
        files=tuple(names),
        sums_path=out / SUMS_FILE_NAME,
        signature_path=out / SIGNATURE_FILE_NAME if signature is not None else None,
        transfer_files=tuple(transfers),
        sources=source_records,
        tool_versions=tools,
        cache_key=image_cache_key(
            recipe_digest=recipe.image_digest(version),
            version=version,
            arch=arch,
            source_digests={r.id: r.sha256 for r in source_records},
            image_format=spec.format,
            compression=spec.compression,
            tools=tools,
            timestamp=timestamp,
        ),
        tree=tree,
        steps=tuple(steps.timings),
        verification=verification,
        signer_fingerprint=signer.fingerprint if signer is not None else None,
    )


def _render_transfers(
    recipe: Recipe, version: str, publish_url: str | None, *, signed: bool
) -> dict[str, str]:
    if publish_url is None:
        return {}
    transfers = {transfer_file_name(recipe.name): render_transfer(recipe.name, publish_url, verify=signed)}
    if recipe.minor_pinning:
        pin = minor_pin(version)
        transfers[transfer_file_name(recipe.name, pin)] = render_transfer(
            recipe.name, publish_url, verify=signed, minor_pin=pin
        )
    return transfers


def _fetch(sources: list[ResolvedSource], fetcher: Fetcher, steps: _Steps) -> list[FetchedFile]:
    started = time.monotonic()
    fetched = []
    for index, source in enumerate(sources):
        steps.report("fetch", f"{source.url}", index / len(sources))
        fetched.append(fetcher.fetch(source.url, sha256=source.sha256, label=source.label))
    steps.done("fetch", started, ", ".join(f"{f.sha256[:12]} {f.size} bytes" for f in fetched))
    return fetched


def _unpack(
    sources: list[ResolvedSource],
    fetched: list[FetchedFile],
    scratch: Path,
    steps: _Steps,
    limits: archive.UnpackLimits | None = None,
) -> list[UnpackedSource]:
    started = time.monotonic()
    unpacked = []
    for index, (source, download) in enumerate(zip(sources, fetched, strict=True)):
        if source.archive == "file":
            # The cached download is installed by copying; the cache itself is never modified.
            unpacked.append(UnpackedSource(source, download.path, movable=False))
            continue
        steps.report("unpack", f"{source.label}: {source.archive}", index / len(sources))
        dest = scratch / "src" / str(index)
        try:
            archive.unpack(
                download.path, source.archive, dest, strip_components=source.strip_components, limits=limits
            )
        except PipelineError as exc:
            # Name the source: the cached file's own name is only its digest.
            raise PipelineError(
                exc.code, f"{source.label}: {exc.message}", retryable=exc.retryable, output=exc.output
            ) from exc
        unpacked.append(UnpackedSource(source, dest, movable=True))
    steps.done("unpack", started, f"{len(unpacked)} source(s)")
    return unpacked


def _existing_sums(out: Path, *, replacing: str) -> dict[str, str]:
    """Lines of the current SHA256SUMS in ``out`` whose files are still there."""
    path = out / SUMS_FILE_NAME
    if not path.exists():
        return {}
    try:
        entries = parse_sums(path.read_bytes(), source=str(path))
    except PipelineError as exc:
        raise PipelineError(
            "bake.invalid-sums", f"the existing {path} is not a valid SHA256SUMS: {exc.message}"
        ) from exc
    return {name: digest for name, digest in entries.items() if name != replacing and (out / name).is_file()}


def _publish(staging: Path, names: list[str], out: Path) -> None:
    """Rename the staged files into ``out``; on any error put back what was there before."""
    backups: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    backup_dir = staging / ".previous"
    backup_dir.mkdir()
    try:
        for name in names:
            target = out / name
            if target.exists() or target.is_symlink():
                backup = backup_dir / name
                os.replace(target, backup)
                backups.append((backup, target))
            os.replace(staging / name, target)
            placed.append(target)
    except OSError as exc:
        for target in placed:
            target.unlink(missing_ok=True)
        for backup, target in backups:
            os.replace(backup, target)
        raise PipelineError("bake.publish-failed", f"could not write {out}: {exc.strerror}") from exc


def _file_trouble(exc: OSError) -> PipelineError:
    """A file operation of ours failed (a full disk, a vanished directory): the machine's trouble,
    not the recipe's, so a later attempt may succeed."""
    where = f" on {exc.filename}" if exc.filename else ""
    return PipelineError(
        "bake.file-error",
        f"a file operation failed{where}: {exc.strerror or exc}; check the free space and permissions "
        "of the work and output directories",
        retryable=True,
    )


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass
