"""The ``featwrap`` command line: one subcommand per module of this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from featwrap._version import __version__
from featwrap.errors import FeatwrapError

# Each module defines ``add_parser(subparsers)`` (which sets ``func``) and ``HELP``.
COMMANDS = ["extract", "layers", "show"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featwrap",
        description="Intermediate activations from any PyTorch model.",
    )
    parser.add_argument("--version", action="version", version=f"featwrap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"featwrap.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for bad input, as argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        code: int = args.func(args)
    except FeatwrapError as error:
        print(f"featwrap {args.command}: error: {error}", file=sys.stderr)
        return 2
    return code


def _entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `featwrap layers | head`: the reader left, which is fine
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    raise SystemExit(code)
