"""``python -m builds.pipeline prebake IMAGE --flavour-dir DIR --out OUT``: a flavour baked into a
Flatcar disk image (see ``builds.pipeline.prebake``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from builds.pipeline.bake_cli import default_cache_dir, parse_pairs, run_reporting_errors
from builds.pipeline.checksums import sha256_file
from builds.pipeline.egress import EgressRule
from builds.pipeline.errors import PipelineError
from builds.pipeline.fetch import Fetcher
from builds.pipeline.prebake import (
    DEFAULT_SIGNING_KEY,
    fetch_flatcar_image,
    image_files_in,
    prebake_image,
    prebaked_image_name,
    verify_image_signature,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m builds.pipeline prebake",
        description="Bake a flavour's sysext images, transfer files and keyring into the official "
        "Flatcar disk image (flatcar_production_image.bin.bz2), without mounts or loop devices.",
    )
    parser.add_argument(
        "image",
        help="the Flatcar image: a local flatcar_production_image.bin.bz2 (its .sig beside it) or its "
        "http(s) URL, e.g. https://stable.release.flatcar-linux.net/amd64-usr/4593.2.0/"
        "flatcar_production_image.bin.bz2",
    )
    parser.add_argument(
        "--flavour-dir",
        required=True,
        help="the flavour's files: config.ign, and the sysext images (*.raw, in any subdirectory)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--name", help="the flavour's name in the file name (default: the flavour directory's)"
    )
    parser.add_argument("--sha256", help="expected sha256 of the compressed image (required for a URL)")
    parser.add_argument("--signature", help="the image's detached signature (default: IMAGE.sig)")
    parser.add_argument(
        "--signing-key",
        default=str(DEFAULT_SIGNING_KEY),
        help="the OpenPGP public key that signs Flatcar images (default: Flatcar's, shipped)",
    )
    parser.add_argument(
        "--embed-config",
        action="store_true",
        help="also write what the image cannot hold baked (users, remote files) as the OEM "
        "partition's config.ign for the first boot",
    )
    parser.add_argument(
        "--mirror", action="append", default=[], metavar="FROM=TO", help="rewrite URL prefix FROM to TO"
    )
    parser.add_argument("--cache-dir", default=None, help="download cache (default: $FETCH_CACHE_DIR)")
    parser.add_argument(
        "--allow-private-upstreams",
        action="store_true",
        help="let the download reach loopback, private and link-local addresses",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_reporting_errors(_run, build_parser().parse_args(list(argv) if argv is not None else None))


def _run(args: argparse.Namespace) -> int:
    flavour_dir = Path(args.flavour_dir)
    config_path = flavour_dir / "config.ign"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipelineError("cli.invalid-argument", f"cannot read {config_path}: {exc}") from None
    name = args.name or flavour_dir.absolute().name
    out = Path(args.out) / prebaked_image_name(name)

    def progress(step: str, message: str, fraction: float) -> None:
        if fraction >= 1.0:
            print(f"  {step:<10} {message}", flush=True)

    if args.image.startswith(("http://", "https://")):
        if not args.sha256:
            raise PipelineError("cli.invalid-argument", "an image URL needs --sha256 (the pinned digest)")
        with Fetcher(
            args.cache_dir or default_cache_dir(),
            mirrors=parse_pairs(args.mirror, "--mirror"),
            egress=EgressRule(allow_private=args.allow_private_upstreams),
        ) as fetcher:
            image = fetch_flatcar_image(fetcher, args.image, sha256=args.sha256, signing_key=args.signing_key)
        image_path = image.path
    else:
        image_path = Path(args.image)
        if not image_path.is_file():
            raise PipelineError("cli.invalid-argument", f"{image_path} does not exist")
        if args.sha256 and sha256_file(image_path) != args.sha256.lower():
            raise PipelineError(
                "prebake.digest-mismatch", f"{image_path} does not have the sha256 {args.sha256}"
            )
        signature = Path(args.signature) if args.signature else image_path.with_name(image_path.name + ".sig")
        if not signature.is_file():
            raise PipelineError("cli.invalid-argument", f"the image's signature {signature} does not exist")
        verify_image_signature(image_path, signature, args.signing_key)
    print(f"prebake {name} into {image_path.name} -> {out}", flush=True)
    result = prebake_image(
        image_path,
        out,
        config=config,
        images=image_files_in(flavour_dir),
        embed_config=args.embed_config,
        progress=progress,
    )
    for path in result.placed:
        print(f"placed {path}")
    print(f"wrote {result.path} sha256 {result.sha256} ({result.size} bytes)")
    return 0
