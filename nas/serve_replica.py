"""``nas serve replica``: a replica host, the process that runs controller replicas (the LSTM
policy, REINFORCE, the pushes to the parameter-server shards) for a search service.

``nas serve search --replica-hosts P`` starts P of them on loopback and restarts one that
dies; on other machines run ``nas serve replica --host 0.0.0.0 --port 7100`` and give the
service ``--replica-host-addresses HOST:7100,...``. Once serving it prints one line:
``replica host listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from protos.cluster_auth import ClusterAuthError, add_token_argument, server_auth
from protos.server import BindError
from protos.signals import StopOnSignal

READY = "replica host listening on"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="nas serve replica", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="gRPC port (0: any free one)")
    add_token_argument(p, server=True)
    p.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate")
    p.add_argument("--tls-key", type=Path, help="the PEM private key of --tls-cert")
    p.add_argument("--grace", type=float, default=2.0,
                   help="seconds calls in flight get on shutdown (2)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    try:
        auth = server_auth(args, args.tls_cert, args.tls_key)
    except ClusterAuthError as exc:
        print(f"nas serve replica: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from controller.distributed.host_service import serve_replica_host  # after --help

    with StopOnSignal() as stop:
        try:
            served, state = serve_replica_host(args.host, args.port, auth)
        except BindError as exc:
            print(f"nas serve replica: error: --port: {exc}", file=sys.stderr)
            return 2
        print(f"{READY} {served.address}", flush=True)
        stop.wait()
        state.close()
        served.stop(args.grace)
    return 0
