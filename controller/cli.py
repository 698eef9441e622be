"""The ``nas`` command: a thin dispatcher over the subcommands (the composition root)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller import bundle_command, search_command
from controller.bundle import BundleError
from controller.config import ConfigError
from controller.evaluators.base import EvaluatorError
from controller.spaces.base import InvalidArchitecture

USER_ERRORS = (ConfigError, EvaluatorError, InvalidArchitecture, BundleError)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="nas", description="Neural architecture search: run searches, serve the cluster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    search_command.add_parser(sub)
    bundle_command.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input exits 2 with one line naming the field, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"nas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
