"""``python -m builds.pipeline bake RECIPE.yaml ...``: bake one sysext from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from builds.pipeline.bake import bake_sysext
from builds.pipeline.egress import EgressRule
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from builds.pipeline.image import COMPRESSIONS, IMAGE_FORMATS
from builds.pipeline.recipe import load_recipe
from builds.pipeline.signing import GpgSigner
from builds.pipeline.vocabulary import ARCHES


def default_cache_dir() -> str:
    """The download cache of the pipeline's commands: $FETCH_CACHE_DIR, else the user's cache."""
    configured = os.environ.get("FETCH_CACHE_DIR")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "bakehouse" / "fetch")


def parse_pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``FROM=TO`` option values (``--mirror``, ``--pin``) as a mapping."""
    pairs = {}
    for value in values:
        key, sep, replacement = value.partition("=")
        if not sep or not key or not replacement:
            raise PipelineError("cli.invalid-argument", f"{option} {value!r} must look like FROM=TO")
        pairs[key] = replacement
    return pairs


def _write_pubring(path: Path, keyring: bytes) -> None:
    try:
        path.write_bytes(keyring)
    except OSError as exc:
        raise PipelineError(
            "cli.output-unwritable", f"cannot write the public keyring {path}: {exc.strerror or exc}"
        ) from None
    print(f"wrote {path} (public keyring, {len(keyring)} bytes)")


def build_parser() -> argparse.ArgumentParser:
    compressions = sorted({c for cs in COMPRESSIONS.values() for c in cs})
    parser = argparse.ArgumentParser(
        prog="python -m builds.pipeline bake",
        description="Bake a signed sysext image, SHA256SUMS and sysupdate transfer file from a recipe.",
    )
    parser.add_argument("recipe", help="recipe YAML file (see catalog/recipes/)")
    parser.add_argument("--version", required=True, help="version to bake, as listed in the recipe")
    parser.add_argument("--arch", required=True, choices=ARCHES)
    parser.add_argument("--out", required=True, help="output directory (a flat served directory)")
    parser.add_argument(
        "--mirror", action="append", default=[], metavar="FROM=TO", help="rewrite URL prefix FROM to TO"
    )
    parser.add_argument("--format", default="squashfs", choices=IMAGE_FORMATS, dest="image_format")
    parser.add_argument(
        "--compression", choices=compressions, help="default: gzip for squashfs, lz4hc for erofs"
    )
    parser.add_argument("--sign-key", help="armored or binary OpenPGP secret key file")
    parser.add_argument("--passphrase-file", help="file holding the signing key's passphrase")
    parser.add_argument(
        "--export-pubring",
        metavar="FILE",
        help="also write the signing key's public half as a binary keyring for nodes "
        "(/etc/systemd/import-pubring.gpg)",
    )
    parser.add_argument("--publish-url", help="URL the directory is served at (writes NAME.conf)")
    parser.add_argument("--cache-dir", default=None, help="download cache (default: $FETCH_CACHE_DIR)")
    parser.add_argument(
        "--pin", action="append", default=[], metavar="SOURCE=SHA256", help="expected digest of a source"
    )
    parser.add_argument("--verify", action="store_true", help="merge the image with systemd-sysext first")
    parser.add_argument(
        "--allow-private-upstreams",
        action="store_true",
        help="let sources (and their redirects) reach loopback, private and link-local addresses; "
        "by default only public addresses and --mirror targets are fetched from",
    )
    parser.add_argument(
        "--file-root",
        action="append",
        default=[],
        metavar="DIR",
        help="let file:// sources read files under DIR (symlinks resolved); by default none",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting_errors(_run, build_parser().parse_args(list(argv) if argv is not None else None))


def run_reporting_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a pipeline command; a pipeline error is printed as ``error: CODE: sentence`` (and the
    tool's output, if any) and exits 1, never as a traceback."""
    try:
        return run(args)
    except PipelineError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        if exc.output:
            print(exc.output.rstrip(), file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.passphrase_file and not args.sign_key:
        raise PipelineError("cli.invalid-argument", "--passphrase-file needs --sign-key")
    if args.export_pubring and not args.sign_key:
        raise PipelineError("cli.invalid-argument", "--export-pubring needs --sign-key")
    mirrors = parse_pairs(args.mirror, "--mirror")
    pins = parse_pairs(args.pin, "--pin")
    recipe = load_recipe(args.recipe)
    print(f"bake {recipe.name} {args.version} {args.arch} -> {args.out}", flush=True)

    def progress(step: str, message: str, fraction: float) -> None:
        if fraction >= 1.0:
            print(f"  {step:<10} {message}", flush=True)

    signer = GpgSigner(args.sign_key, args.passphrase_file) if args.sign_key else None
    try:
        with Fetcher(
            args.cache_dir or default_cache_dir(),
            mirrors=mirrors,
            egress=EgressRule(allow_private=args.allow_private_upstreams),
            file_roots=args.file_root,
        ) as fetcher:
            result = bake_sysext(
                recipe,
                args.version,
                args.arch,
                args.out,
                fetcher=fetcher,
                image_format=args.image_format,
                compression=args.compression,
                signer=signer,
                publish_url=args.publish_url,
                pins=pins or None,
                progress=progress,
                verify=args.verify,
                build_log=lambda text: print(text, file=sys.stderr, flush=True),  # a source build's output
            )
            if signer is not None and args.export_pubring:
                _write_pubring(Path(args.export_pubring), signer.export_public_keyring())
    finally:
        if signer is not None:
            signer.close()
    for name in result.files:
        print(f"wrote {result.out_dir / name}")
    print(
        f"{result.image_name} sha256 {result.image_sha256} ({result.image_size} bytes, {result.seconds:.2f}s)"
    )
    return 0
