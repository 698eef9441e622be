"""``nas serve search`` and the job verbs: ``nas submit``, ``status``, ``list``, ``trials``,
``cancel`` (``watch``: watch_command). Each verb talks to a search service at ``--endpoint``
(default $NAS_ENDPOINT or 127.0.0.1:50070), as ``--token`` (default $NAS_TOKEN), over TLS when
``--tls-ca`` is given."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from controller.config import ConfigError, build_config, load_spec
from controller.objectives import ACCURACY, METRICS
from controller.pareto import DEFAULT_METRICS
from controller.service import serve_options
from controller.service.connect import add_connection, client_from_args
from controller.service.serve_options import ServeOptionError
from controller.service.spec import GROUP_MEMBERS, WIRE_NAMES, spec_from_settings
from controller.settings import WIRE_SETTINGS
from nas import watch_command
from protos.v1 import search_pb2 as sp


def add_parsers(sub: Any) -> None:
    """Register the job verbs on the CLI's subparsers."""
    p = sub.add_parser("submit", help="submit a search job to a search service",
                       description="Submit the search in SPEC (YAML, the keys of `nas search`); "
                                   "prints the job id as its last line.")
    p.add_argument("spec", type=Path)
    add_connection(p)
    p.set_defaults(func=submit)
    p = sub.add_parser("status", help="a job's state and progress")
    p.add_argument("job_id")
    add_connection(p)
    p.set_defaults(func=status)
    p = sub.add_parser("list", help="the service's jobs, newest first",
                       description="List the service's jobs, newest first (a reader sees its "
                       "own tenant's only).")
    p.add_argument("--state", choices=("PENDING", "RUNNING", "SUCCEEDED", "FAILED",
                                       "CANCELLED"))
    p.add_argument("--tenant", help="only this tenant's jobs (admins: any tenant)")
    p.add_argument("--limit", type=int, default=50,
                   help="show the newest N jobs (50; 0: every job, fetched page by page)")
    add_connection(p)
    p.set_defaults(func=list_jobs)
    p = sub.add_parser("trials", help="a job's trials")
    p.add_argument("job_id")
    p.add_argument("--status", choices=("running", "succeeded", "failed"))
    add_connection(p)
    p.set_defaults(func=trials)
    p = sub.add_parser("best", help="a job's best architectures, or its Pareto front",
                       description="The job's best trained architectures by reward, or with "
                                   "--pareto those no other beats on accuracy and every cost "
                                   "at once, e.g. `nas best JOB --pareto --metrics params,"
                                   "latency_ms` (latency only where the job measured it).")
    p.add_argument("job_id")
    p.add_argument("--top", type=int, default=None,
                   help="how many (1; with --pareto: the whole front)")
    p.add_argument("--pareto", action="store_true",
                   help="the Pareto front: max accuracy, min each of --metrics")
    p.add_argument("--metrics", default="",
                   help=f"--pareto: comma-separated costs, of {', '.join(METRICS)} (params)")
    add_connection(p)
    p.set_defaults(func=best)
    p = sub.add_parser("cancel", help="stop a job before its next training")
    p.add_argument("job_id")
    p.add_argument("--reason", default="", help="recorded with the job")
    add_connection(p)
    p.set_defaults(func=cancel)
    watch_command.add_parser(sub, add_connection)


# keys of a YAML spec that `nas search` reads and a submitted job has no use for
LOCAL_ONLY = ("out",)


def spec_from_file(path: Path) -> sp.SearchSpec:
    """A YAML spec (the keys of `nas search`) as a SearchSpec; ConfigError names a bad key."""
    settings = load_spec(path)
    submittable = {s.yaml_key: s.name for s in WIRE_SETTINGS}
    unknown = sorted(key for key in (str(k).replace("-", "_") for k in settings)
                     if key not in submittable and key not in LOCAL_ONLY)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not settable for a submitted job (settable: "
                          f"{', '.join(sorted(submittable))})")
    cfg = build_config(settings)  # names the field of a bad value
    values = {k: v for k, v in vars(cfg).items() if k in WIRE_NAMES and v is not None}
    if cfg.evaluator != "train":  # the model and recipe only travel for training
        for key in (k for members in GROUP_MEMBERS.values() for k in members):
            values.pop(key, None)
    return spec_from_settings(values)


def _state(job: sp.Job) -> str:
    return sp.JobState.Name(job.state).removeprefix("JOB_STATE_")


def submit(args: argparse.Namespace) -> int:
    """``nas submit SPEC``."""
    spec = spec_from_file(args.spec)
    with client_from_args(args) as client:
        print(client.submit(spec))
    return 0


def status(args: argparse.Namespace) -> int:
    """``nas status JOB``: the state on the first line, then progress."""
    with client_from_args(args) as client:
        job = client.get(args.job_id)
    print(_state(job))
    print(f"  trainings {job.trainings}/{job.spec.budget}, running {job.running}, "
          f"cache hits {job.cache_hits} (free)")
    if job.best_arch:
        print(f"  best reward {job.best_reward:.4f}  {job.best_arch}")
    if job.reason:
        print(f"  {job.reason}")
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    """``nas list``."""
    if args.limit < 0:
        raise ConfigError(f"--limit: must be >= 0, got {args.limit}")
    with client_from_args(args) as client:
        jobs = client.list(args.state, args.tenant, limit=args.limit or None)
    print(f"{'JOB':22s} {'STATE':10s} {'TRAININGS':>10s} {'BEST':>7s}")
    for job in jobs:
        print(f"{job.job_id:22s} {_state(job):10s} {job.trainings:>4d}/{job.spec.budget:<5d} "
              f"{job.best_reward:7.4f}")
    return 0


def trials(args: argparse.Namespace) -> int:
    """``nas trials JOB``."""
    with client_from_args(args) as client:
        rows = list(client.trials(args.job_id, args.status))
    width = max([len("TRIAL")] + [len(t.trial_id) for t in rows])  # ids name job and replica
    print(f"{'TRIAL':{width}s} {'STATUS':10s} {'REWARD':>7s} {'CACHED':6s} ARCH")
    for t in rows:
        print(f"{t.trial_id:{width}s} {t.status:10s} {t.reward:7.4f} "
              f"{'yes' if t.cached else '':6s} {t.arch}{'  ' + t.error if t.error else ''}")
    return 0


def _metric_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise ConfigError(f"--metrics: {bad[0]!r} is not one of {', '.join(METRICS)}")
    return names


def best(args: argparse.Namespace) -> int:
    """``nas best JOB``: reward and architecture, best first; ``--pareto``: the front's
    accuracy and costs, best accuracy first."""
    chosen = _metric_list(args.metrics)
    if chosen and not args.pareto:
        raise ConfigError("--metrics: only with --pareto")
    with client_from_args(args) as client:
        rows = client.best(args.job_id, args.top, pareto=args.pareto, objectives=chosen)
    if not args.pareto:
        for t in rows:
            print(f"{t.reward:.4f}  {t.arch}  ({t.trial_id})")
        return 0
    metrics = chosen or list(DEFAULT_METRICS)
    print(f"{'ACCURACY':>8s} " + " ".join(f"{m.upper():>12s}" for m in metrics)
          + f" {'REWARD':>7s}  ARCH")
    for t in rows:
        accuracy = t.metrics.get(ACCURACY, t.reward)
        print(f"{accuracy:8.4f} " + " ".join(f"{t.metrics[m]:12.6g}" for m in metrics)
              + f" {t.reward:7.4f}  {t.arch}  ({t.trial_id})")
    return 0


def cancel(args: argparse.Namespace) -> int:
    """``nas cancel JOB``."""
    with client_from_args(args) as client:
        print(_state(client.cancel(args.job_id, args.reason)))
    return 0


def serve_main(argv: list[str]) -> int:
    """``nas serve search``: the search service until SIGTERM or Ctrl-C."""
    p = argparse.ArgumentParser(prog="nas serve search",
                                description="Serve the search service (gRPC, with the standard "
                                            "health and reflection services).")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=50070, help="gRPC port (50070; 0: a free one)")
    p.add_argument("--redis", help="Redis URL for the job store (default: in memory, lost on "
                                   "exit)")
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
    g.add_argument("--workers", type=int, default=0,
                   help="children trained at once by Ray workers (0: each job trains its "
                        "children in this process, one at a time)")
    g.add_argument("--ray-address", help="a running Ray cluster (default: a private local Ray "
                                         "on loopback with --workers CPUs)")
    g.add_argument("--cpus-per-child", type=float, default=1.0, help="CPUs per child (1)")
    g.add_argument("--gpus-per-child", type=float,
                   help="GPUs per child (default 0.125 when Ray has GPUs, else 0)")
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
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535 or args.max_running < 1 or args.journal_keep < 0:
        print("nas serve search: error: --port must be in [0, 65535], --max-running >= 1 and "
              "--journal-keep >= 0", file=sys.stderr)
        return 2
    keep = args.journal_keep or None
    if args.workers:  # children train on the workers: the controllers' small tensors here
        import torch  # run faster on one thread

        torch.set_num_threads(1)
    from controller.jobs.store import InMemoryJobStore, JobStore
    from nas.cluster import ClusterOptions, ServiceCluster, job_runner

    store: JobStore
    try:  # everything that can be refused is checked before any process starts
        security = serve_options.security_from_args(args)
        if args.redis:
            from controller.jobs.redis_store import RedisJobStore

            store = RedisJobStore(serve_options.connect_redis(args.redis, args.redis_password),
                                  args.redis_prefix, journal_keep=keep)
        elif args.redis_password:
            raise ServeOptionError("--redis-password: needs --redis URL")
        else:
            store = InMemoryJobStore(journal_keep=keep)
    except ServeOptionError as exc:
        print(f"nas serve search: error: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)  # what the jobs do, for the operator
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.getLogger("controller.service").addHandler(handler)
    logging.getLogger("controller.service").setLevel(logging.INFO)
    options = ClusterOptions(
        shards=args.shards, paramservers=[a for a in args.paramservers.split(",") if a],
        redis_url=serve_options.url_with_password(args.redis, args.redis_password),
        workers=args.workers, ray_address=args.ray_address,
        cpus_per_child=args.cpus_per_child, gpus_per_child=args.gpus_per_child,
        max_attempts=args.max_attempts, heartbeat_timeout=args.heartbeat_timeout,
        report_port=args.trial_port, report_host=args.trial_host,
        redis_prefix=args.redis_prefix, metrics_port=args.metrics_port,
        metrics_host=args.host, log_dir=args.work_dir / "logs")
    try:
        cluster = ServiceCluster(options)
    except ConfigError as exc:
        field, _, rest = str(exc).partition(":")
        print(f"nas serve search: error: --{field.replace('_', '-')}:{rest}", file=sys.stderr)
        return 2
    try:
        return _serve(args, store, job_runner(store, args.work_dir, args.max_running, cluster),
                      security, cluster)
    finally:
        cluster.close()


def _serve(args: argparse.Namespace, store: Any, runner: Any, security: Any,
           cluster: Any) -> int:
    from controller.service.servicer import serve_search

    try:
        running = serve_search(store, runner, args.host, args.port, tokens=security.tokens,
                               budgets=security.budgets, tls=security.tls,
                               max_concurrent_rpcs=security.max_concurrent_rpcs,
                               max_workers=security.max_workers)
    except OSError as exc:
        print(f"nas serve search: error: --port: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"search service listening on {running.address}", flush=True)
    if cluster.metrics_url:
        print(f"metrics {cluster.metrics_url}", flush=True)
    for name, url in sorted(cluster.processes.metrics.items()):  # the shards' scrape targets
        print(f"metrics {url} ({name})", flush=True)
    ends = cluster.describe()
    if ends["paramservers"]:
        print(f"parameter servers {','.join(ends['paramservers'])}", flush=True)
    if ends["trial_reports"]:
        print(f"workers report to {ends['trial_reports']} ({ends['workers']} Ray workers)",
              flush=True)
    if security.tokens is None:
        print("warning: no --tokens-file or $NAS_TOKENS: the service is open, every caller is "
              "admin of tenant 'default'", file=sys.stderr, flush=True)
    for job_id in runner.resume():  # jobs a previous instance left running
        print(f"resumed {job_id}", flush=True)
    stop.wait()
    running.stop()
    return 0

