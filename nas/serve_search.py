"""``nas serve search``: the search service, on the cluster its flags describe, until SIGTERM
or Ctrl-C.

Its jobs survive its restart by default: without ``--redis`` they are kept by a private
redis-server with an append-only file in ``--work-dir`` (``store/``, a unix socket, no TCP
port), started and stopped with the service; only ``--in-memory`` keeps them in memory (and
says so). One service per work dir: a second one is refused."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from controller.config import ConfigError
from controller.distributed.processes import ProcessError, start_private_redis, stop
from controller.jobs.store import InMemoryJobStore, JobStore
from controller.service import serve_options
from controller.service.runner import JobRunner
from controller.service.serve_options import ServeOptionError
from controller.settings import DEFAULT_GPU_SHARE
from nas.cluster import ClusterOptions, ServiceCluster, job_runner
from protos.cluster_auth import ClusterAuth
from protos.signals import StopOnSignal

PROG = "nas serve search"


def parser() -> argparse.ArgumentParser:
    """The command's options: the service, its store, and the cluster its jobs run on."""
    p = argparse.ArgumentParser(prog=PROG, description="Serve the search service (gRPC, with "
                                "the standard health and reflection services).")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=50070, help="gRPC port (50070; 0: a free one)")
    p.add_argument("--redis", help="Redis URL for the job store (default: a private "
                                   "redis-server with an append-only file in --work-dir, so "
                                   "jobs survive a restart)")
    p.add_argument("--in-memory", action="store_true",
                   help="keep jobs in memory instead: lost when the service stops")
    p.add_argument("--redis-prefix", default="nas", help="key prefix in Redis (nas)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/service"),
                   help="children's files, one folder per job (runs/service)")
    p.add_argument("--journal-keep", type=int, default=4096,
                   help="journal entries each job keeps for watchers (4096): older ones are "
                        "folded into the job's summary and dropped, so a job's memory grows "
                        "only with its trial records; a watch from before them starts with a "
                        "snapshot of the job (0: keep every entry)")
    p.add_argument("--max-running", type=int, default=2,
                   help="jobs run at once (2); a freed slot goes to the waiting job of the "
                        "tenant with the fewest running jobs")
    serve_options.add_arguments(p)
    _cluster_arguments(p)
    serve_options.add_cluster_arguments(p)
    return p


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster", "What jobs run on. A REINFORCE job's K replicas "
                             "(spec.execution.replicas) share its policy through the parameter "
                             "servers, which keep it across restarts of this service; children "
                             "that train (evaluator train) go to the Ray workers.")
    g.add_argument("--shards", type=int, default=0,
                   help="start S parameter-server shard processes here (0: none; their "
                        "checkpoints go to --redis, or to a private redis-server)")
    g.add_argument("--paramservers", default="",
                   help="or use running shards: HOST:PORT,... in shard order "
                        "(`nas serve paramserver`)")
    g.add_argument("--replica-hosts", type=int, default=1,
                   help="run the replicas in P replica-host processes started here (replica i "
                        "on host i mod P), each restarted if it dies with nothing lost (1: "
                        "the replicas are threads of this service); needs shards")
    g.add_argument("--replica-host-addresses", default="",
                   help="or run them on running replica hosts: HOST:PORT,... "
                        "(`nas serve replica` on other machines, with the cluster token)")
    g.add_argument("--workers", type=int, default=0,
                   help="children trained at once by Ray workers (0: each job trains its "
                        "children in this process, one at a time)")
    g.add_argument("--ray-address", help="a running Ray cluster (default: a private local Ray "
                                         "on loopback with --workers CPUs)")
    g.add_argument("--cpus-per-child", type=float, default=1.0, help="CPUs per child (1)")
    g.add_argument("--gpus-per-child", type=float,
                   help=f"GPUs per child (default {DEFAULT_GPU_SHARE:g} when Ray has GPUs, "
                        f"else 0)")
    g.add_argument("--max-attempts", type=int, default=3,
                   help="attempts per child whose worker dies (3)")
    g.add_argument("--heartbeat-timeout", type=float, default=60.0,
                   help="a child silent this long is retried (60 s)")
    g.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics (nas_search_* progress, nas_rpc_server_*, "
                        "nas_replica_*, nas_trials_*, nas_worker_*; README: Metrics) at "
                        "http://127.0.0.1:PORT/metrics (0: a free port; default: none); the "
                        "shards' URLs are printed too")
    g.add_argument("--trial-port", type=int, default=0,
                   help="port of the TrialReport service workers report to (0: a free one; "
                        "`nas serve worker --controller HOST:PORT` joins more workers)")
    g.add_argument("--trial-host", default="127.0.0.1",
                   help="interface of the TrialReport service, and the name workers dial it "
                        "by (127.0.0.1; on a cluster this host's name, e.g. `search` in "
                        "docker-compose.yml)")


def main(argv: list[str]) -> int:
    """Serve until SIGTERM or Ctrl-C; 2 with one line for a bad option."""
    args = parser().parse_args(argv)
    if not 0 <= args.port <= 65535 or args.max_running < 1 or args.journal_keep < 0:
        return _refuse("--port must be in [0, 65535], --max-running >= 1 and "
                       "--journal-keep >= 0")
    if args.workers:  # children train on the workers: the controllers' small tensors here
        import torch  # run faster on one thread

        torch.set_num_threads(1)
    args.work_dir = args.work_dir.resolve()
    with contextlib.ExitStack() as stack:
        try:  # everything that can be refused is checked before any process starts
            security = serve_options.security_from_args(args)
            auth = serve_options.cluster_auth_from_args(args)
            stack.enter_context(_work_dir_lock(args.work_dir))
            store, private_url = _store(args, stack)
        except ServeOptionError as exc:
            return _refuse(str(exc))
        _log_jobs()
        try:
            cluster = ServiceCluster(_cluster_options(args, auth, private_url))
        except ConfigError as exc:
            field, _, rest = str(exc).partition(":")
            return _refuse(f"--{field.replace('_', '-')}:{rest}")
        stack.callback(cluster.close)
        return _serve(args, store, job_runner(store, args.work_dir, args.max_running, cluster),
                      security, cluster)
    return 2  # unreachable: for mypy (ExitStack may swallow exceptions)


def _refuse(why: str) -> int:
    print(f"{PROG}: error: {why}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _work_dir_lock(work_dir: Path) -> Iterator[None]:
    """Hold ``work_dir/service.lock`` while serving: a second service on the same work dir
    (and its private store) is refused; the kernel frees it when this process dies."""
    work_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(work_dir / "service.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ServeOptionError(f"--work-dir: {work_dir} is in use by another `{PROG}` "
                                   f"(pid {holder}); stop it or choose another") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _store(args: argparse.Namespace, stack: contextlib.ExitStack) -> tuple[JobStore, str | None]:
    """The job store, and the URL of the private redis-server started for it (None: none)."""
    keep = args.journal_keep or None
    if args.in_memory and (args.redis or args.redis_password):
        raise ServeOptionError("--in-memory: not with --redis or --redis-password")
    if args.in_memory:
        print("warning: --in-memory: jobs are kept in memory only and lost when the service "
              "stops", file=sys.stderr, flush=True)
        return InMemoryJobStore(journal_keep=keep), None
    if args.redis_password and not args.redis:
        raise ServeOptionError("--redis-password: needs --redis URL")
    from controller.jobs.redis_store import RedisJobStore

    url, private = args.redis, None
    if not url:
        try:
            child, url = start_private_redis(args.work_dir / "store", args.work_dir / "logs",
                                             durable=True)
        except ProcessError as exc:
            raise ServeOptionError(f"--redis: the private job store did not start ({exc}); "
                                   f"give --redis URL or --in-memory") from None
        stack.callback(stop, [child])
        private = url
    return RedisJobStore(serve_options.connect_redis(url, args.redis_password),
                         args.redis_prefix, journal_keep=keep), private


def _log_jobs() -> None:
    """What the jobs do, on stdout for the operator."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("controller.service").addHandler(handler)
    logging.getLogger("controller.service").setLevel(logging.INFO)


def _cluster_options(args: argparse.Namespace, auth: ClusterAuth,
                     private_url: str | None) -> ClusterOptions:
    return ClusterOptions(
        shards=args.shards, paramservers=[a for a in args.paramservers.split(",") if a],
        replica_hosts=args.replica_hosts,
        replica_host_addresses=[a for a in args.replica_host_addresses.split(",") if a],
        redis_url=args.redis or private_url, redis_password=args.redis_password, auth=auth,
        workers=args.workers, ray_address=args.ray_address,
        cpus_per_child=args.cpus_per_child, gpus_per_child=args.gpus_per_child,
        max_attempts=args.max_attempts, heartbeat_timeout=args.heartbeat_timeout,
        report_port=args.trial_port, report_host=args.trial_host,
        redis_prefix=args.redis_prefix, metrics_port=args.metrics_port,
        metrics_host=args.host, log_dir=args.work_dir / "logs")


def _serve(args: argparse.Namespace, store: JobStore, runner: JobRunner, security: Any,
           cluster: ServiceCluster) -> int:
    from controller.service.servicer import serve_search

    with StopOnSignal() as stop:
        try:
            running = serve_search(store, runner, args.host, args.port,
                                   tokens=security.tokens, budgets=security.budgets,
                                   tls=security.tls,
                                   max_concurrent_rpcs=security.max_concurrent_rpcs,
                                   max_workers=security.max_workers)
        except OSError as exc:
            return _refuse(f"--port: {exc}")
        print(f"search service listening on {running.address}", flush=True)
        _banner(cluster, security.tokens is None)
        for job_id in runner.resume():  # jobs a previous instance left running
            print(f"resumed {job_id}", flush=True)
        stop.wait()
        running.stop()
    return 0


def _banner(cluster: ServiceCluster, open_service: bool) -> None:
    """The endpoints of the cluster, for the operator (and the tests) to read."""
    if cluster.metrics_url:
        print(f"metrics {cluster.metrics_url}", flush=True)
    for name, url in sorted(cluster.processes.metrics.items()):  # the shards' scrape targets
        print(f"metrics {url} ({name})", flush=True)
    ends: dict[str, Any] = cluster.describe()
    if ends["paramservers"]:
        print(f"parameter servers {','.join(ends['paramservers'])}", flush=True)
    if ends["replica_hosts"]:
        print(f"replica hosts {','.join(ends['replica_hosts'])}", flush=True)
    if ends["trial_reports"]:
        print(f"workers report to {ends['trial_reports']} ({ends['workers']} Ray workers)",
              flush=True)
        if cluster.token_generated:
            print("note: no $NAS_CLUSTER_TOKEN or --cluster-token-file: a random cluster token "
                  "was generated for this service's own workers; `nas serve worker` joins "
                  "only with the same token, so give both one", flush=True)
    if cluster.token_generated and cluster.options.paramservers:
        print("warning: --paramservers without $NAS_CLUSTER_TOKEN or --cluster-token-file: "
              "running shards that require the cluster token refuse this service's calls",
              file=sys.stderr, flush=True)
    if open_service:
        print("warning: no --tokens-file or $NAS_TOKENS: the service is open, every caller is "
              "admin of tenant 'default'", file=sys.stderr, flush=True)
