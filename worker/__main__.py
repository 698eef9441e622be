"""``nas serve worker``: lease trials from a controller and train them on a Ray cluster.

    nas serve worker --controller 10.0.0.2:50061 --ray-address 10.0.0.5:6380
    nas serve worker --controller 127.0.0.1:50061 --num-cpus 4     # a private local Ray

The cluster token the controller checks comes from $NAS_CLUSTER_TOKEN or --cluster-token-file
(mode 0600), never the command line; Ray tasks get it with each attempt.

Runs until SIGTERM or Ctrl-C; attempts still running are cancelled (the controller retries them
elsewhere after its heartbeat timeout).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from protos.cluster_auth import (
    ClusterAuth,
    ClusterAuthError,
    add_token_argument,
    read_pem,
    resolve_token,
)
from protos.signals import StopOnSignal


def build_parser() -> argparse.ArgumentParser:
    """The worker service's options."""
    p = argparse.ArgumentParser(prog="nas serve worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--controller", required=True, metavar="HOST:PORT",
                   help="the controller's TrialReport endpoint (trials come from there, "
                        "reports go there)")
    p.add_argument("--ray-address", help="a running Ray cluster (default: start a private "
                   "local Ray on loopback)")
    p.add_argument("--num-cpus", type=int, help="local Ray: CPUs to use (default: all)")
    p.add_argument("--num-gpus", type=int, help="local Ray: GPUs to use (default: all)")
    p.add_argument("--slots", type=int, help="at most this many children at once (default: as "
                   "many as the cluster's resources fit)")
    p.add_argument("--worker-id", help="name in the controller's logs (default host:pid)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics (nas_worker_*: busy slots, GPU utilisation "
                        "when a GPU is present) at http://0.0.0.0:PORT/metrics (0: a free "
                        "port; default: none)")
    add_token_argument(p, server=False)
    p.add_argument("--tls-ca", type=Path,
                   help="dial the controller over TLS, trusting the certificate this PEM CA "
                        "signed (default: plaintext)")
    return p


def _auth(args: argparse.Namespace) -> ClusterAuth:
    """The token and CA the worker (and its Ray tasks) call the controller with."""
    token = resolve_token(args.cluster_token_file)
    if token is None:
        print("nas serve worker: warning: no cluster token ($NAS_CLUSTER_TOKEN or "
              "--cluster-token-file): a controller that requires one refuses this worker",
              file=sys.stderr, flush=True)
    return ClusterAuth(token, read_pem(args.tls_ca, "--tls-ca") if args.tls_ca else None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker service; bad options exit 2 with a message."""
    args = build_parser().parse_args(argv)
    if ":" not in args.controller:
        print(f"nas serve worker: error: --controller: want HOST:PORT, got {args.controller!r}",
              file=sys.stderr)
        return 2
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        print(f"nas serve worker: error: --metrics-port: must be in [0, 65535], got "
              f"{args.metrics_port}", file=sys.stderr)
        return 2
    for name in ("num_cpus", "num_gpus", "slots"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "slots" else 0):
            print(f"nas serve worker: error: --{name.replace('_', '-')}: got {value}",
                  file=sys.stderr)
            return 2
    try:
        auth = _auth(args)
    except ClusterAuthError as exc:
        print(f"nas serve worker: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from worker.metrics import serve_metrics
    from worker.scheduler import RayScheduler
    from worker.service import WorkerService

    scheduler = RayScheduler(address=args.ray_address, num_cpus=args.num_cpus,
                             num_gpus=args.num_gpus)
    # after ray.init, which installs handlers of its own that exit at once
    lost: list[str] = []

    with StopOnSignal() as stop:
        def unavailable(reason: str) -> None:  # Ray is gone for good: exit 1 with the reason
            lost.append(reason)
            stop.set()

        service = WorkerService(scheduler, args.controller, worker_id=args.worker_id,
                                max_slots=args.slots, auth=auth,
                                on_unavailable=unavailable).start()
        print(f"worker service {service.worker_id} serving controller {args.controller} "
              f"(Ray: {args.ray_address or 'local'})", flush=True)
        rc = 0
        if args.metrics_port is not None:
            try:
                print(f"metrics {serve_metrics(service, args.metrics_port)}", flush=True)
            except OSError as exc:
                print(f"nas serve worker: error: --metrics-port: {exc}", file=sys.stderr)
                rc = 2
                stop.set()
        try:
            stop.wait()
        finally:
            service.stop()
            scheduler.close()
    if lost:
        print(f"nas serve worker: error: Ray is unavailable: {lost[0]}", file=sys.stderr)
        return 1
    print("worker service stopped", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
