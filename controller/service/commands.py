"""``nas serve search`` and the job verbs: ``nas submit``, ``status``, ``list``, ``trials``,
``cancel``. Each verb talks to a search service at ``--endpoint`` (default $NAS_ENDPOINT or
127.0.0.1:50070)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from controller.config import ConfigError, build_config, load_spec
from controller.objectives import ACCURACY, METRICS
from controller.pareto import DEFAULT_METRICS
from controller.service.client import SearchClient
from controller.service.spec import WIRE_NAMES, spec_from_settings
from protos.v1 import search_pb2 as sp

DEFAULT_ENDPOINT = "127.0.0.1:50070"


def _endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=os.environ.get("NAS_ENDPOINT", DEFAULT_ENDPOINT),
                   help="the search service, HOST:PORT (default $NAS_ENDPOINT or "
                        f"{DEFAULT_ENDPOINT})")


def add_parsers(sub: Any) -> None:
    """Register the job verbs on the CLI's subparsers."""
    p = sub.add_parser("submit", help="submit a search job to a search service",
                       description="Submit the search in SPEC (YAML, the keys of `nas search`); "
                                   "prints the job id as its last line.")
    p.add_argument("spec", type=Path)
    _endpoint(p)
    p.set_defaults(func=submit)
    p = sub.add_parser("status", help="a job's state and progress")
    p.add_argument("job_id")
    _endpoint(p)
    p.set_defaults(func=status)
    p = sub.add_parser("list", help="the service's jobs")
    p.add_argument("--state", choices=("PENDING", "RUNNING", "SUCCEEDED", "FAILED",
                                       "CANCELLED"))
    _endpoint(p)
    p.set_defaults(func=list_jobs)
    p = sub.add_parser("trials", help="a job's trials")
    p.add_argument("job_id")
    p.add_argument("--status", choices=("running", "succeeded", "failed"))
    _endpoint(p)
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
    _endpoint(p)
    p.set_defaults(func=best)
    p = sub.add_parser("cancel", help="stop a job before its next training")
    p.add_argument("job_id")
    p.add_argument("--reason", default="", help="recorded with the job")
    _endpoint(p)
    p.set_defaults(func=cancel)


def spec_from_file(path: Path) -> sp.SearchSpec:
    """A YAML spec (the keys of `nas search`) as a SearchSpec; ConfigError names a bad key."""
    settings = load_spec(path)
    unknown = sorted(str(k).replace("-", "_") for k in settings
                     if str(k).replace("-", "_") not in WIRE_NAMES and k != "out")
    if unknown:
        raise ConfigError(f"{unknown[0]}: not settable for a submitted job (settable: "
                          f"{', '.join(sorted(WIRE_NAMES))})")
    cfg = build_config(settings)  # names the field of a bad value
    values = {k: v for k, v in vars(cfg).items() if k in WIRE_NAMES and v is not None}
    if cfg.evaluator != "train":
        for key in ("cells", "epochs"):  # the model and recipe only travel for training
            values.pop(key, None)
    return spec_from_settings(values)


def _client(args: argparse.Namespace) -> SearchClient:
    return SearchClient(args.endpoint)


def _state(job: sp.Job) -> str:
    return sp.JobState.Name(job.state).removeprefix("JOB_STATE_")


def submit(args: argparse.Namespace) -> int:
    """``nas submit SPEC``."""
    spec = spec_from_file(args.spec)
    with _client(args) as client:
        print(client.submit(spec))
    return 0


def status(args: argparse.Namespace) -> int:
    """``nas status JOB``: the state on the first line, then progress."""
    with _client(args) as client:
        job = client.get(args.job_id)
    print(_state(job))
    print(f"  trainings {job.trainings}/{job.spec.budget}, running {job.running}")
    if job.best_arch:
        print(f"  best reward {job.best_reward:.4f}  {job.best_arch}")
    if job.reason:
        print(f"  {job.reason}")
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    """``nas list``."""
    with _client(args) as client:
        jobs = client.list(args.state)
    print(f"{'JOB':22s} {'STATE':10s} {'TRAININGS':>10s} {'BEST':>7s}")
    for job in jobs:
        print(f"{job.job_id:22s} {_state(job):10s} {job.trainings:>4d}/{job.spec.budget:<5d} "
              f"{job.best_reward:7.4f}")
    return 0


def trials(args: argparse.Namespace) -> int:
    """``nas trials JOB``."""
    with _client(args) as client:
        rows = list(client.trials(args.job_id, args.status))
    print(f"{'TRIAL':10s} {'STATUS':10s} {'REWARD':>7s} {'CACHED':6s} ARCH")
    for t in rows:
        print(f"{t.trial_id:10s} {t.status:10s} {t.reward:7.4f} {'yes' if t.cached else '':6s} "
              f"{t.arch}{'  ' + t.error if t.error else ''}")
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
    with _client(args) as client:
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
    with _client(args) as client:
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
    p.add_argument("--max-running", type=int, default=2, help="jobs run at once (2)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535 or args.max_running < 1:
        print("nas serve search: error: --port must be in [0, 65535] and --max-running >= 1",
              file=sys.stderr)
        return 2
    from controller.jobs.store import InMemoryJobStore, JobStore
    from controller.service.runner import JobRunner
    from controller.service.servicer import serve_search

    store: JobStore
    if args.redis:
        import redis

        from controller.jobs.redis_store import RedisJobStore

        store = RedisJobStore(redis.Redis.from_url(args.redis), args.redis_prefix)
    else:
        store = InMemoryJobStore()
    runner = JobRunner(store, args.work_dir, args.max_running)
    try:
        running = serve_search(store, runner, args.host, args.port)
    except OSError as exc:
        print(f"nas serve search: error: --port: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"search service listening on {running.address}", flush=True)
    for job_id in runner.resume():  # jobs a previous instance left running
        print(f"resumed {job_id}", flush=True)
    stop.wait()
    running.stop()
    return 0

