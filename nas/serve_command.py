"""The job verbs: ``nas submit``, ``status``, ``list``, ``trials``, ``cancel`` (``watch``:
watch_command; the service itself, ``nas serve search``: serve_search). Each verb talks to a
search service at ``--endpoint`` (default $NAS_ENDPOINT or 127.0.0.1:50070), as ``--token``
(default $NAS_TOKEN), over TLS when ``--tls-ca`` is given."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controller.config import ConfigError, build_config, load_spec
from controller.objectives import ACCURACY, METRICS
from controller.pareto import DEFAULT_METRICS
from controller.service.connect import add_connection, client_from_args
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
