"""Bake one sysext: recipe -> fetch -> unpack -> assemble -> image -> audit -> hash.

Assembling ends with the architecture check (``builds.pipeline.elf``): every ELF file of the tree
must be built for the image's arch.

``bake_image`` ends at a hashed, audited image in a directory of the caller's; publishing it
(SHA256SUMS, signature, transfer files) is ``builds.pipeline.publish``'s job. ``bake_sysext`` is
the command line's whole run: ``bake_image`` into scratch space, then ``publish_extension`` into
the output directory, so a failure at any step leaves nothing new behind there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from builds.pipeline import archive
from builds.pipeline.checksums import SIGNATURE_FILE_NAME, SUMS_FILE_NAME, sha256_file
from builds.pipeline.elf import check_tree_architecture
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import FetchedFile, Fetcher
from builds.pipeline.image import DEFAULT_TIMESTAMP, ImageSpec, audit_image, build_image, tool_versions
from builds.pipeline.publish import (
    DirectoryStore,
    ExtensionPublication,
    ImageFile,
    publish_extension,
    read_published_sums,
    refuse_unsigned_over_signed,
)
from builds.pipeline.recipe import Recipe, ResolvedSource
from builds.pipeline.signing import GpgSigner
from builds.pipeline.source_build import check_toolchain, compile_source, make_removable
from builds.pipeline.sysupdate import image_file_name, transfer_file
from builds.pipeline.tree import TreeSummary, UnpackedSource, assemble_tree
from builds.pipeline.verify import VerifyResult, verify_with_systemd_sysext

# Bump when tree assembly changes in a way that changes image bytes: it is part of cache keys.
PIPELINE_REVISION = "bakehouse-bake/1"
STEPS = ("fetch", "unpack", "compile", "assemble", "image", "audit", "verify", "checksums")
_MINOR_RE = re.compile(r"^(v?\d+\.\d+)\.")

Progress = Callable[[str, str, float], None]
# A caller's own record of a pipeline stage (the portal's build steps): entered around "compile".
StageScope = Callable[[str], AbstractContextManager[object]]


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
class BakedImage:
    """A baked, audited and hashed image, and how it was made."""

    name: str
    version: str
    arch: str
    image_path: Path
    image_sha256: str
    image_size: int
    image_format: str
    compression: str
    sources: tuple[SourceRecord, ...]
    tool_versions: dict[str, str]
    cache_key: str
    tree: TreeSummary
    steps: tuple[StepTiming, ...]
    verification: VerifyResult | None = None

    @property
    def image_name(self) -> str:
        return self.image_path.name

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


@dataclass(frozen=True)
class BakeResult(BakedImage):
    """A bake published into an output directory by ``bake_sysext``."""

    out_dir: Path = Path()
    files: tuple[str, ...] = ()  # names written into out_dir
    sums_path: Path = Path()
    signature_path: Path | None = None
    transfer_files: tuple[str, ...] = ()
    signer_fingerprint: str | None = None


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

    @contextmanager
    def step(self, name: str, message: str) -> Iterator[list[str]]:
        """Time the block as step ``name``; what it appends to the yielded list is the detail."""
        started = time.monotonic()
        self.report(name, message, 0.0)
        detail: list[str] = []
        yield detail
        timing = StepTiming(name, time.monotonic() - started, "".join(detail))
        self.timings.append(timing)
        shown = timing.detail or "done"
        self.report(name, f"{shown} ({timing.seconds:.2f}s)", 1.0)


def bake_image(
    recipe: Recipe,
    version: str,
    arch: str,
    out_dir: str | os.PathLike[str],
    *,
    fetcher: Fetcher,
    work_dir: str | os.PathLike[str] | None = None,
    image_format: str = "squashfs",
    compression: str | None = None,
    pins: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    verify: bool = False,
    timestamp: int = DEFAULT_TIMESTAMP,
    unpack_limits: archive.UnpackLimits | None = None,
    build_log: Callable[[str], None] | None = None,
    stage: StageScope | None = None,
) -> BakedImage:
    """Bake ``recipe`` at ``version`` for ``arch`` into ``out_dir/<name>-<version>-<arch>.raw``.

    ``progress(step, message, fraction)`` is called as steps run. With ``verify`` the image is
    merged by systemd-sysext. ``unpack_limits`` caps each archive's members and unpacked bytes
    (decompression bombs). A recipe with a ``build:`` section is compiled in the sandbox
    (``source_build``) between unpack and assemble: ``build_log`` receives the compiler's output
    as it comes, and ``stage("compile")`` wraps that stage when given. Any failure raises
    ``PipelineError`` and leaves no image behind.
    """
    # Everything that can be refused without downloading is checked first.
    sources = recipe.resolve(version, arch, pins)
    if recipe.build is not None:
        check_toolchain(recipe.build.toolchain, label=f"{recipe.name} {version} {arch}")
    spec = ImageSpec.create(image_format, compression)
    image_name = image_file_name(recipe.name, version, arch)
    tools = tool_versions()
    target = Path(out_dir).absolute() / image_name
    scratch = Path(tempfile.mkdtemp(prefix="bh-bake-", dir=work_dir))
    steps = _Steps(progress)
    try:
        fetched = _fetch(sources, fetcher, steps)
        unpacked = _unpack(sources, fetched, scratch, steps, unpack_limits)
        if recipe.build is not None:
            with stage("compile") if stage is not None else nullcontext():
                unpacked = [_compile(recipe, version, arch, unpacked, scratch, steps, timestamp, build_log)]

        with steps.step("assemble", "assembling the image tree") as detail:
            tree = assemble_tree(recipe, arch, unpacked, scratch / "root")
            elf_files = check_tree_architecture(scratch / "root", arch)
            detail.append(f"{tree.files} files, {tree.bytes} bytes, {elf_files} ELF files for {arch}")

        tool = f"mksquashfs ({spec.compression})" if spec.format == "squashfs" else "mkfs.erofs"
        with steps.step("image", tool) as detail:
            target.parent.mkdir(parents=True, exist_ok=True)
            image_path = build_image(scratch / "root", target, spec, timestamp=timestamp)
            shutil.rmtree(scratch / "root", ignore_errors=True)  # free the space before the next steps
            detail.append(f"{image_name}, {image_path.stat().st_size} bytes")

        with steps.step("audit", "checking the image's file list") as detail:
            detail.append(f"{audit_image(image_path, recipe.name)} entries")

        verification = None
        if verify:
            with steps.step("verify", "merging with systemd-sysext") as detail:
                verification = verify_with_systemd_sysext(image_path, recipe.name, arch)
                detail.append(
                    verification.status + (f": {verification.reason}" if verification.reason else "")
                )

        with steps.step("checksums", "hashing the image") as detail:
            image_sha = sha256_file(image_path)
            detail.append(image_sha)
    except BaseException as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _file_trouble(exc) from exc
        raise
    finally:
        make_removable(scratch)  # a build may leave read-only directories behind
        shutil.rmtree(scratch, ignore_errors=True)

    source_records = tuple(
        SourceRecord(s.id, f.url, f.final_url, f.sha256, f.size, pinned=s.sha256 is not None)
        for s, f in zip(sources, fetched, strict=True)
    )
    return BakedImage(
        name=recipe.name,
        version=version,
        arch=arch,
        image_path=image_path,
        image_sha256=image_sha,
        image_size=image_path.stat().st_size,
        image_format=spec.format,
        compression=spec.compression,
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
    )


def transfer_files(recipe: Recipe, version: str, publish_url: str, *, signed: bool) -> dict[str, bytes]:
    """``NAME.conf``, and ``NAME-vX.Y.conf`` for a recipe that pins minor lines."""
    pins: list[str | None] = [None, minor_pin(version)] if recipe.minor_pinning else [None]
    made = [transfer_file(recipe.name, publish_url, verify=signed, minor_pin=pin) for pin in pins]
    return {transfer.file_name: transfer.text.encode("utf-8") for transfer in made}


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
    build_log: Callable[[str], None] | None = None,
) -> BakeResult:
    """Bake ``recipe`` at ``version`` for ``arch`` and publish it into the directory ``out_dir``.

    Writes ``<name>-<version>-<arch>.raw``, ``SHA256SUMS`` (merged with the lines of images
    already present in ``out_dir``), ``SHA256SUMS.gpg`` when a ``signer`` is given, and the
    transfer file(s) when a ``publish_url`` is given (``publish_extension`` with a
    ``DirectoryStore``). Any failure raises ``PipelineError`` and leaves ``out_dir`` as it was.
    """
    out = Path(out_dir).absolute()
    store = DirectoryStore(out, public_base_url=publish_url or "")
    if signer is None:
        refuse_unsigned_over_signed(store, "")  # before downloading anything
    transfers = transfer_files(recipe, version, publish_url, signed=signer is not None) if publish_url else {}
    created_out = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipelineError(
            "bake.output-unwritable",
            f"cannot write into the output directory {out}: {exc.strerror}; "
            "choose a directory you can write to",
        ) from exc
    before = set(store.list())
    try:
        with tempfile.TemporaryDirectory(prefix="bh-bake-out-", dir=work_dir) as scratch:
            baked = bake_image(
                recipe,
                version,
                arch,
                scratch,
                fetcher=fetcher,
                work_dir=work_dir,
                image_format=image_format,
                compression=compression,
                pins=pins,
                progress=progress,
                verify=verify,
                timestamp=timestamp,
                unpack_limits=unpack_limits,
                build_log=build_log,
            )
            publication = _publish_into(store, baked, signer, transfers, before, progress)
    except BaseException:
        if created_out:
            _remove_if_empty(out)
        raise
    names = [baked.image_name, SUMS_FILE_NAME]
    if publication.signature is not None:
        names.append(SIGNATURE_FILE_NAME)
    names.extend(transfers)
    image = {name: getattr(baked, name) for name in BakedImage.__dataclass_fields__}
    return BakeResult(
        **{**image, "image_path": out / baked.image_name},
        out_dir=out,
        files=tuple(names),
        sums_path=out / SUMS_FILE_NAME,
        signature_path=out / SIGNATURE_FILE_NAME if publication.signature is not None else None,
        transfer_files=tuple(transfers),
        signer_fingerprint=signer.fingerprint if signer is not None else None,
    )


def _publish_into(
    store: DirectoryStore,
    baked: BakedImage,
    signer: GpgSigner | None,
    transfers: dict[str, bytes],
    before: set[str],
    progress: Progress | None,
) -> ExtensionPublication:
    """Publish ``baked`` into the CLI's directory; on failure remove what this run wrote there."""
    steps = _Steps(progress)
    try:
        with steps.step("publish", f"publishing into {store.root}") as detail:
            publication = publish_extension(
                store,
                signer,
                store.lock,
                baked.name,
                [ImageFile(baked.version, baked.arch, baked.image_path, baked.image_sha256)],
                prefix="",
                extra_files=transfers,
            )
            detail.append(f"{len(publication.objects)} files into {store.root}")
    except BaseException as exc:
        # Unlisted files this run wrote are invisible to nodes, but not to people: remove them.
        for key in set(store.list()) - before - _listed(store):
            store.delete(key)
        if isinstance(exc, OSError):
            raise _file_trouble(exc) from exc
        raise
    return publication


def _listed(store: DirectoryStore) -> set[str]:
    try:
        return set(read_published_sums(store, ""))
    except PipelineError:
        return set()


def _fetch(sources: list[ResolvedSource], fetcher: Fetcher, steps: _Steps) -> list[FetchedFile]:
    fetched: list[FetchedFile] = []
    with steps.step("fetch", sources[0].url if sources else "") as detail:
        for index, source in enumerate(sources):
            steps.report("fetch", f"{source.url}", index / len(sources))
            fetched.append(fetcher.fetch(source.url, sha256=source.sha256, label=source.label))
        detail.append(", ".join(f"{f.sha256[:12]} {f.size} bytes" for f in fetched))
    return fetched


def _unpack(
    sources: list[ResolvedSource],
    fetched: list[FetchedFile],
    scratch: Path,
    steps: _Steps,
    limits: archive.UnpackLimits | None = None,
) -> list[UnpackedSource]:
    unpacked: list[UnpackedSource] = []
    with steps.step("unpack", f"{len(sources)} source(s)") as detail:
        _unpack_each(sources, fetched, scratch, steps, limits, unpacked)
        detail.append(f"{len(unpacked)} source(s)")
    return unpacked


def _unpack_each(
    sources: list[ResolvedSource],
    fetched: list[FetchedFile],
    scratch: Path,
    steps: _Steps,
    limits: archive.UnpackLimits | None,
    unpacked: list[UnpackedSource],
) -> None:
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


def _compile(
    recipe: Recipe,
    version: str,
    arch: str,
    unpacked: list[UnpackedSource],
    scratch: Path,
    steps: _Steps,
    timestamp: int,
    build_log: Callable[[str], None] | None,
) -> UnpackedSource:
    """Compile the unpacked sources in the sandbox; the result is the one source to install from.

    The first source is the tree at ``/build/src``; the others are at ``/build/deps/<id>``.
    """
    assert recipe.build is not None
    build = recipe.build
    label = f"{recipe.name} {version} {arch}"
    main, *others = unpacked
    with steps.step("compile", f"{len(build.commands)} command(s) in the build sandbox") as detail:
        result = compile_source(
            build,
            source_dir=main.path,
            deps={u.source.id: u.path for u in others},
            scratch=scratch / "build",
            label=label,
            timestamp=timestamp,
            variables={"VERSION": version, "ARCH": recipe.arches[arch]},
            output=build_log,
        )
        detail.append(f"{result.lines} lines of output")
    output = ResolvedSource(
        id="build",
        url="",
        archive="directory",
        strip_components=0,
        install=build.install,
        sha256=None,
        checksum_url=None,
        label=f"{label} (build output)",
    )
    return UnpackedSource(output, result.output_dir, movable=True)


def _file_trouble(exc: OSError) -> PipelineError:
    """A file operation of ours failed (a full disk, a vanished directory): the machine's trouble,
    not the recipe's, so a later attempt may succeed."""
    # The file's name, not where it lies on the worker (a scratch directory means nothing to users).
    where = f" on {Path(str(exc.filename)).name}" if exc.filename else ""
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
