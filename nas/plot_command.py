"""``nas plot``: a search job (on the search service) or a ``nas search`` run directory drawn as
PNGs: rewards, the policy's entropy, the Pareto front, the best cell."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from controller.config import ConfigError
from controller.factory import build_space
from controller.objectives import METRICS
from controller.service.client import ENDED, SearchClient
from controller.service.connect import add_connection, client_from_args
from controller.service.spec import spec_to_config
from nas.bundle import read_run
from nas.plots import SearchRecord, run_record, write_plots

DESCRIPTION = """\
Draw a search as PNG files in --to:
  rewards.png    reward per trial in the order they finished (free cache hits hollow,
                 failures as crosses) and the best reward so far
  entropy.png    the policy's entropy per update, with the batch's mean reward and the
                 REINFORCE baseline (reinforce only: random and evolution have no policy)
  pareto.png     accuracy against --metric of every trained trial, the Pareto front in red
                 (skipped when no trial measured the metric: latency_ms needs an objective
                 on it with the nb201 evaluator)
  best-cell.png  the best architecture's diagram

SOURCE is the --out directory of `nas search` (its result.json), or else a job id of the
search service at --endpoint; a job still running is drawn as far as it has got."""

EPILOG = """examples:
  nas plot runs/nb201                       # writes runs/nb201/plots/*.png
  nas plot job-3f2a9c1b7d4e --to plots/ --metric flops --endpoint 10.0.0.5:50070"""


def add_parser(sub: Any) -> None:
    """Register ``plot`` on the CLI's subparsers."""
    p = sub.add_parser("plot", help="draw a search run or job as PNGs (rewards, entropy, "
                       "Pareto front, best cell)", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="JOB|RUN_DIR",
                   help="a job id, or the --out directory of `nas search`")
    p.add_argument("--to", type=Path, default=None,
                   help="directory for the PNGs, created (RUN_DIR/plots; required for a job)")
    p.add_argument("--metric", choices=tuple(METRICS), default="params",
                   help="pareto.png's cost axis (params)")
    add_connection(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``nas plot``: print each PNG written, and a note for each one skipped."""
    source = Path(args.source)
    if source.is_dir() or source.name == "result.json" or os.sep in args.source:
        run_dir = source.parent if source.name == "result.json" else source
        record, out = record_from_run(run_dir), args.to or run_dir / "plots"
    else:
        if args.to is None:
            raise ConfigError(f"to: {args.source!r} is not a run directory, so it is taken as a "
                              f"job id; pass --to DIR for its plots")
        with client_from_args(args) as client:
            record, out = record_from_job(client, args.source), args.to
    report = write_plots(record, out, args.metric)
    for path in report.written:
        print(f"wrote {path}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def record_from_run(run_dir: Path) -> SearchRecord:
    """A run directory's result.json as a record; BundleError naming a missing result.json."""
    doc, cfg, space = read_run(run_dir)
    best = doc.get("best", {}).get("arch")
    return run_record(f"{run_dir.name} ({cfg.strategy} on {cfg.space})", cfg.strategy, doc,
                      space.from_string(best) if best else None)


def record_from_job(client: SearchClient, job_id: str) -> SearchRecord:
    """A job's finished trials and policy updates, from its WatchSearch events (NotFoundError
    for an unknown job). For a job still running, the events are read up to the trials that had
    finished when the plot started, so the command returns instead of following the job."""
    job = client.get(job_id)
    cfg = spec_to_config(job.spec)
    waiting = (None if job.state in ENDED else
               {t.trial_id for t in client.trials(job_id) if t.status != "running"})
    trials: list[dict[str, Any]] = []
    policy: list[dict[str, float]] = []
    best_arch = job.best_arch
    stream = client.watch(job_id)
    try:
        for event in stream if waiting is None or waiting else ():
            kind = event.WhichOneof("kind")
            if kind == "trial_finished" and event.trial_finished.trial.status != "lost":
                t = event.trial_finished.trial
                trials.append({"trial_id": t.trial_id, "arch": t.arch, "reward": t.reward,
                               "cached": t.cached, "status": t.status,
                               "metrics": dict(t.metrics)})
                if waiting is not None:
                    waiting.discard(t.trial_id)
            elif kind == "new_best":
                best_arch = event.new_best.arch
            elif kind == "policy":
                p = event.policy
                policy.append({"update": p.updates, "entropy": p.entropy,
                               "baseline": p.baseline, "mean_reward": p.mean_reward})
            if waiting is not None and not waiting:
                break
    finally:
        close = getattr(stream, "close", None)  # a generator: cancels the call now, not
        if close is not None:                    # when collected
            close()
    space = build_space(cfg)
    return SearchRecord(f"{job_id} ({cfg.strategy} on {cfg.space})", cfg.strategy,
                        tuple(trials), tuple(policy),
                        space.from_string(best_arch) if best_arch else None)
