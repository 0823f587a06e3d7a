"""``python -m builds.pipeline {bake,butane,prebake} ...``: the pipeline's command line."""

from __future__ import annotations

import sys

USAGE = """usage: python -m builds.pipeline COMMAND [ARGS]

commands:
  bake     build a sysext image, SHA256SUMS, signature and transfer file from a recipe
  butane   transpile Butane (variant flatcar) to Ignition JSON, like the butane tool
  prebake  bake a flavour's extensions into the official Flatcar disk image
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in {"-h", "--help"}:
        print(USAGE, end="")
        return 0
    if not args:
        # A usage error: the text goes to stderr so that stdout stays clean for pipes.
        print(USAGE, end="", file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command == "bake":
        from builds.pipeline.bake_cli import main as bake_main

        return bake_main(rest)
    if command == "butane":
        from builds.pipeline.butane.cli import main as butane_main

        return butane_main(rest)
    if command == "prebake":
        from builds.pipeline.prebake_cli import main as prebake_main

        return prebake_main(rest)
    print(f"unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
