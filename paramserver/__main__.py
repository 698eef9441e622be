"""``python -m paramserver``: run one parameter-server shard with checkpoints in Redis.

Prints one line once serving (launchers parse it; with ``--port 0`` it holds the real port):
``paramserver shard I/S listening on HOST:PORT [metrics http://HOST:MPORT/metrics]``.
SIGTERM or SIGINT checkpoints every layout, stops the server and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import redis

from paramserver.checkpoint import RedisCheckpointStore
from protos.cluster_auth import ClusterAuth, ClusterAuthError, add_token_argument, server_auth
from protos.signals import StopOnSignal

PASSWORD_ENV = "NAS_REDIS_PASSWORD"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m paramserver",
        description="Serve shard I of S of every registered parameter layout (gRPC nas.v1."
                    "ParameterServer), with Adam (numpy), versions, a staleness rule "
                    "(scale stale pushes' learning rate, or reject them) and idempotent pushes. "
                    "Layouts checkpointed in Redis for this shard are restored at start.",
        epilog="Once serving, one line is printed to stdout: 'paramserver shard I/S listening on "
               "HOST:PORT' (plus ' metrics http://HOST:MPORT/metrics' with --metrics-port). "
               "SIGTERM/SIGINT checkpoint every layout and exit 0.")
    parser.add_argument("--shard", type=int, required=True, help="this shard's index I, 0-based")
    parser.add_argument("--num-shards", type=_count, required=True,
                        help="number of shards S (layouts must use the same)")
    parser.add_argument("--port", type=_port, required=True, help="gRPC port (0: any free one)")
    parser.add_argument("--redis", required=True, metavar="URL",
                        help="Redis URL for checkpoints, e.g. redis://127.0.0.1:6379/0 (its "
                             f"password: ${PASSWORD_ENV}, never on the command line)")
    parser.add_argument("--redis-prefix", default="nas",
                        help="key prefix in Redis (default: nas)")
    parser.add_argument("--metrics-port", type=_port, default=None,
                        help="serve Prometheus /metrics over HTTP on this port (0: any free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--grace", type=float, default=5.0,
                        help="seconds in-flight calls get on shutdown (default: 5)")
    add_token_argument(parser, server=True)
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate")
    parser.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    return parser


def _auth(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClusterAuth:
    """The cluster token (and TLS) the shard checks; exits 2 naming the flag without one."""
    try:
        auth = server_auth(args, args.tls_cert, args.tls_key)
    except ClusterAuthError as exc:  # one line naming the flag, exit 2
        print(f"paramserver: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if auth.token is None:
        print("paramserver: warning: --insecure-no-token: anyone who reaches the port may push "
              "gradients", file=sys.stderr, flush=True)
    return auth


def main(argv: Sequence[str] | None = None) -> int:
    """Run a shard until SIGTERM/SIGINT; 2 on bad arguments or an unreachable Redis."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.shard < args.num_shards:
        parser.error(f"--shard: must be in [0, {args.num_shards}) for --num-shards "
                     f"{args.num_shards}, got {args.shard}")
    auth = _auth(parser, args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        store = RedisCheckpointStore(args.redis, prefix=args.redis_prefix,
                                     password=os.environ.get(PASSWORD_ENV) or None)
        store.ping()
    except ValueError as exc:
        parser.error(f"--redis: {exc}")
    except redis.RedisError as exc:
        print(f"paramserver: error: cannot reach Redis at {args.redis}: {exc}", file=sys.stderr)
        return 2
    from paramserver.server import serve  # here: --help and bad arguments skip loading grpc

    with StopOnSignal() as stop:  # from here: a signal during start-up is not lost
        try:
            running = serve(args.shard, args.num_shards, store, host=args.host,
                            port=args.port, metrics_port=args.metrics_port,
                            credentials=auth.server_credentials(),
                            interceptors=auth.interceptors())
        except (OSError, redis.RedisError) as exc:
            print(f"paramserver: error: {exc}", file=sys.stderr)
            return 2
        line = (f"paramserver shard {args.shard}/{args.num_shards} listening on "
                f"{running.address}")
        if running.metrics_port is not None:
            line += f" metrics http://{args.host}:{running.metrics_port}/metrics"
        print(line, flush=True)
        stop.wait()
        try:
            running.stop(args.grace)
        except redis.RedisError as exc:
            print(f"paramserver: error: final checkpoint failed: {exc}", file=sys.stderr)
            return 1
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
