"""``python -m builds.pipeline butane``: the butane tool's command line, for flatcar configs.

Same flags, streams and exit codes as ``butane``: Ignition JSON plus a newline on stdout, the
report on stderr (``warning at $.path, line L col C: ...``), exit 1 on an error, or on any
warning with ``--strict``.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from builds.pipeline.butane.transpile import go_utf8, transpile

VERSION = "Bakehouse butane-compatible transpiler (flatcar 1.0.0, 1.1.0; modelled on butane v0.23.0)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"Error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m builds.pipeline butane", add_help=False)
    parser.add_argument("input", nargs="?", help="Butane config (default: stdin)")
    parser.add_argument("-c", "--check", action="store_true", help="check config without producing output")
    parser.add_argument(
        "-d", "--files-dir", metavar="DIR", help="allow embedding local files from this directory"
    )
    parser.add_argument("-h", "--help", action="store_true", help="show usage and exit")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to output file instead of stdout")
    parser.add_argument("-p", "--pretty", action="store_true", help="output formatted json")
    parser.add_argument(
        "-r", "--raw", action="store_true", help="accepted for compatibility; output is always Ignition"
    )
    parser.add_argument("-s", "--strict", action="store_true", help="fail on any warning")
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    return parser


def _report(line: str) -> None:
    """One stderr line; text echoed from hostile input may hold lone surrogates, never crash on them."""
    sys.stderr.write(go_text(line) + "\n")
    sys.stderr.flush()


def go_text(text: str) -> str:
    return go_utf8(text).decode("utf-8")


def main(argv: list[str] | None = None, stdin: TextIO | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.help:
        parser.print_help(sys.stdout)
        return 0
    if args.version:
        print(VERSION)
        return 0
    if args.input:
        try:
            with open(args.input, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            reason = exc.strerror.lower() if exc.strerror else str(exc)
            print(f"failed to open {args.input}: open {args.input}: {reason}", file=sys.stderr)
            return 1
    else:
        stream = stdin if stdin is not None else sys.stdin
        data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode("utf-8")

    result = transpile(data, files_dir=args.files_dir)
    for message in result.messages:
        _report(str(message))
    if result.error is not None:
        _report(f"Error translating config: {result.error}")
        return 1
    if args.strict and result.messages:
        _report("Config produced warnings and --strict was specified")
        return 1
    if args.check:
        return 0
    output = result.json(pretty=args.pretty) + "\n"
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(output)
        except OSError as exc:
            print(f"failed to create {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(output)
    sys.stdout.flush()
    return 0
