"""``nas up`` / ``nas down`` (the cluster as local processes) and ``nas deploy compose`` (the
same topology as ``docker-compose.yml``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from controller.config import ConfigError
from nas.deploy import compose
from nas.deploy.local import CLUSTER_FILE, LocalCluster, UpError, start_time
from protos.signals import StopOnSignal

DEFAULT_DIR = Path("runs/cluster")
DOWN_GRACE_S = 30.0


def add_parsers(sub: Any) -> None:
    """Register ``up``, ``down`` and ``deploy`` on the CLI's subparsers."""
    p = sub.add_parser(
        "up", help="run the cluster as local processes until `nas down` or Ctrl-C",
        description="Start the cluster of docker-compose.yml as processes on 127.0.0.1 with "
                    "free ports: a private redis-server (password on), S parameter-server "
                    "shards, the search service (on a private local Ray with --workers W) and "
                    "with --prometheus a Prometheus scraping every metrics endpoint. Grafana "
                    "is not run locally. Prints every endpoint and `export NAS_ENDPOINT=...`, "
                    "writes DIR/cluster.json, and runs until `nas down --dir DIR`, SIGTERM or "
                    "Ctrl-C, stopping everything it started.")
    p.add_argument("--shards", type=int, default=2, help="parameter-server shards S (2)")
    p.add_argument("--workers", type=int, default=0,
                   help="children trained at once on a private local Ray (0: the search "
                        "service trains them itself, no Ray)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                   help=f"run directory: cluster.json, logs/, redis and work files "
                        f"({DEFAULT_DIR})")
    p.add_argument("--prometheus", action="store_true",
                   help="also run Prometheus (from PATH) scraping every service, config in "
                        "DIR/prometheus.yml")
    p.set_defaults(func=up)
    p = sub.add_parser("down", help="stop a cluster `nas up` started",
                       description="Stop the `nas up` of DIR/cluster.json and every process it "
                                   "started: SIGTERM, then SIGKILL what is left after a grace.")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"its run directory "
                                                                 f"({DEFAULT_DIR})")
    p.set_defaults(func=down)
    p = sub.add_parser("deploy", help="generate the deployment files from the topology")
    verbs = p.add_subparsers(dest="deploy", metavar="WHAT", required=True)
    c = verbs.add_parser("compose", help="docker-compose.yml (and its prometheus.yml)",
                         description="Print docker-compose.yml for S shards and W Ray workers' "
                                     "children at once; --write writes it and deploy/"
                                     "prometheus/prometheus.yml under --root.")
    c.add_argument("--shards", type=int, default=2, help="parameter-server shards S (2)")
    c.add_argument("--workers", type=int, default=4,
                   help="children trained at once (4; $NAS_WORKERS overrides it at "
                        "`docker compose up`)")
    c.add_argument("--write", action="store_true", help="write the files instead of printing")
    c.add_argument("--root", type=Path, default=Path("."), help="the repository root (.)")
    c.set_defaults(func=deploy_compose)


def _counts(args: argparse.Namespace) -> None:
    if args.shards < 1:
        raise ConfigError(f"--shards: must be >= 1, got {args.shards}")
    if args.workers < 0:
        raise ConfigError(f"--workers: must be >= 0, got {args.workers}")


def deploy_compose(args: argparse.Namespace) -> int:
    """``nas deploy compose``."""
    _counts(args)
    if args.write:
        for path in compose.write(args.root, args.shards, args.workers):
            print(f"wrote {path}")
    else:
        sys.stdout.write(compose.render_compose(args.shards, args.workers))
    return 0


def _alive(pid: int, start: str) -> bool:
    return bool(start) and start_time(pid) == start


def up(args: argparse.Namespace) -> int:
    """``nas up``: start, print the endpoints, wait for a signal or a dead service, stop."""
    _counts(args)
    previous = _read(args.dir)
    if previous and _alive(previous["pid"], previous.get("start", "")):
        raise ConfigError(f"--dir: a cluster already runs in {args.dir} (pid {previous['pid']}); "
                          f"`nas down --dir {args.dir}` first")
    with StopOnSignal() as stop:
        cluster = LocalCluster(args.dir, args.shards, args.workers, args.prometheus)
        try:
            cluster.up()
        except UpError as exc:
            print(f"nas up: error: {exc}", file=sys.stderr)
            return 1
        _print_endpoints(cluster, args.dir)
        rc = 0
        try:
            while not stop.wait(0.5):
                dead = cluster.dead()
                if dead is not None:
                    print(f"nas up: {dead.name} exited with {dead.proc.returncode}; stopping "
                          f"the cluster:\n{dead.tail()}", file=sys.stderr)
                    rc = 1
                    break
        finally:
            cluster.down()
    print("cluster stopped", flush=True)
    return rc


def _print_endpoints(cluster: LocalCluster, run_dir: Path) -> None:
    for name, ends in cluster.endpoints.items():
        print(f"{name:14s} " + "  ".join(f"{k} {v}" for k, v in ends.items()))
    for name, why in cluster.skipped.items():
        print(f"{name:14s} skipped: {why}")
    print(f"export NAS_ENDPOINT={cluster.endpoints['search']['grpc']}")
    print(f"cluster up: {run_dir / CLUSTER_FILE}; logs in {run_dir / 'logs'}; stop with "
          f"`nas down --dir {run_dir}` or Ctrl-C", flush=True)


def _read(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads((run_dir / CLUSTER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc


def _wait_gone(pids: dict[int, str], seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = {p: s for p, s in pids.items() if _alive(p, s)}
        if not pids:
            break
        time.sleep(0.1)
    return pids


def _signal(pids: dict[int, str], sig: signal.Signals) -> None:
    for pid, start in pids.items():
        if _alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def down(args: argparse.Namespace) -> int:
    """``nas down``: SIGTERM ``nas up`` (it stops its services in order), then SIGTERM and
    SIGKILL any service still running."""
    doc = _read(args.dir)
    if doc is None:
        raise ConfigError(f"--dir: no {CLUSTER_FILE} in {args.dir}; is `nas up --dir "
                          f"{args.dir}` running?")
    owner = {int(doc["pid"]): str(doc.get("start", ""))}
    services = {int(s["pid"]): str(s.get("start", "")) for s in doc["services"].values()}
    _signal(owner, signal.SIGTERM)
    left = _wait_gone(owner | services, DOWN_GRACE_S)
    if left:
        _signal(left, signal.SIGTERM)
        left = _wait_gone(left, 10.0)
        _signal(left, signal.SIGKILL)
        left = _wait_gone(left, 5.0)
    (args.dir / CLUSTER_FILE).unlink(missing_ok=True)
    print(f"stopped {len(services)} services of {args.dir}"
          + (f"; still running: {sorted(left)}" if left else ""))
    return 1 if left else 0
