"""The ``nas`` command: a thin dispatcher over the subcommands (the composition root)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller.config import ConfigError
from controller.evaluators.base import EvaluatorError
from controller.spaces.base import InvalidArchitecture
from nas import bundle_command, plot_command, search_command, serve_replica, serve_search
from nas import serve_command as job_commands
from nas.bundle import BundleError
from nas.deploy import command as deploy_command
from protos.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

USER_ERRORS = (ConfigError, EvaluatorError, InvalidArchitecture, BundleError,
               InvalidArgumentError, NotFoundError, FailedPreconditionError,
               ResourceExhaustedError)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="nas", description="Neural architecture search: run searches, serve the cluster.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    search_command.add_parser(sub)
    bundle_command.add_parsers(sub)
    job_commands.add_parsers(sub)
    plot_command.add_parser(sub)
    deploy_command.add_parsers(sub)
    serve = sub.add_parser("serve", help="run one service of the cluster in this process",
                           description="Run a service. `nas serve paramserver --help` lists "
                           "the shard's options.")
    services = serve.add_subparsers(dest="service", metavar="SERVICE", required=True)
    services.add_parser("paramserver", help="a parameter-server shard (options: "
                        "`nas serve paramserver --help`)")
    services.add_parser("worker", help="a worker service: trains a controller's trials on Ray "
                        "(options: `nas serve worker --help`)")
    services.add_parser("search", help="the search service: jobs over gRPC (options: "
                        "`nas serve search --help`)")
    services.add_parser("replica", help="a replica host: runs controller replicas for a search "
                        "service (options: `nas serve replica --help`)")
    return parser


def _paramserver_main(argv: list[str]) -> int:
    from paramserver.__main__ import main as paramserver_main

    return paramserver_main(argv)


def _worker_main(argv: list[str]) -> int:
    from worker.__main__ import main as worker_main

    return worker_main(argv)


SERVICES = {"paramserver": _paramserver_main, "worker": _worker_main,
            "search": serve_search.main, "replica": serve_replica.main}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input exits 2 with one line naming the field, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "serve" and argv[1] in SERVICES:
        return SERVICES[argv[1]](argv[2:])  # each service parses its own options
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except USER_ERRORS as exc:
        print(f"nas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (UnauthenticatedError, PermissionDeniedError) as exc:  # the message names the role
        print(f"nas {args.command}: error: {exc} (pass a token with --token TOKEN or "
              f"$NAS_TOKEN)", file=sys.stderr)
        return 2
    except UnavailableError as exc:
        endpoint = getattr(args, "endpoint", "the service")
        print(f"nas {args.command}: error: cannot reach {endpoint} ({exc}); is "
              f"`nas serve search` running there? (--endpoint HOST:PORT)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
