"""``nas search``: run a search in this process and write DIR/result.json."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from controller.config import SearchConfig, build_config, load_spec
from controller.factory import build_space
from controller.jobs.store import JobSummary
from controller.objectives import parse_objective
from controller.pareto import pareto_front
from controller.presets import CONTROLLER_PRESETS
from controller.search import SearchOutcome
from controller.settings import RUN, SETTINGS, Setting
from controller.strategies.enas_report import enas_lines, supernet_report
from controller.strategies.pnas_report import pnas_lines, pnas_steps
from nas.embedded import EmbeddedSearch
from nas.wiring import build_evaluator, build_strategy

EPILOG = """examples:
  nas search --space nb201 --strategy reinforce --evaluator nb201 --dataset cifar10 \\
      --budget 100 --seed 0 --out runs/nb201
  nas search spec.yaml --seed 3          # a YAML spec of the same keys; flags override it
  nas search --objective params:target=8e5 --objective latency_ms:target=20:w=-0.07

--budget counts child trainings; an architecture already evaluated (same canonical hash) is a
free cache hit. result.json holds the best architecture, its reward (validation accuracy in
[0, 1]) and test accuracy, the budget accounting and the full history.

controller presets (--controller):
""" + "\n".join(f"  {name:17s} {p.description}" for name, p in CONTROLLER_PRESETS.items())


def add_parser(sub: Any) -> None:
    """Register ``search`` on the CLI's subparsers: one flag per row of
    ``controller.settings.SETTINGS``, in its --help section."""
    p = sub.add_parser("search", help="run an architecture search in this process",
                       description="Run an architecture search and write DIR/result.json.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       argument_default=argparse.SUPPRESS)
    p.add_argument("spec", nargs="?", type=Path, default=None,
                   help="YAML file of settings (keys as flags)")
    groups: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.group not in groups:
            groups[setting.group] = p.add_argument_group(setting.group)
        groups[setting.group].add_argument(setting.cli_flag, dest=setting.name,
                                           help=flag_help(setting), **_flag_kind(setting))
    groups[RUN].add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def flag_help(setting: Setting) -> str:
    """The setting's help with its default (argparse's defaults are suppressed: an unset flag
    leaves the spec file's value)."""
    shown = setting.shown_default
    text = setting.help if shown is None else f"{setting.help} (default: {shown})"
    return text.replace("%", "%%")


def _flag_kind(setting: Setting) -> dict[str, Any]:
    if setting.type is bool:
        return {"action": "store_true"}
    if setting.type is tuple:  # one entry per use of the flag
        return {"action": "append", "metavar": setting.metavar}
    kind: dict[str, Any] = {} if setting.type is str else {"type": setting.type}
    if setting.choices is not None:
        kind["choices"] = setting.choices
    return kind


def parse_config(args: argparse.Namespace) -> SearchConfig:
    """Settings from the spec file, then the flags on top."""
    values = dict(vars(args))
    for key in ("func", "command", "spec", "quiet"):
        values.pop(key, None)
    spec = load_spec(args.spec) if getattr(args, "spec", None) else {}
    return build_config(spec, values)


class Progress:
    """The progress bar of a search: trainings of the budget, proposals, hits and their rate;
    for ENAS the supernet's epochs first."""

    def __init__(self, cfg: SearchConfig, quiet: bool) -> None:
        self.cfg = cfg
        self.bar = tqdm(total=cfg.budget, unit="training", disable=quiet,
                        desc=f"{cfg.space}/{cfg.strategy}", dynamic_ncols=True, mininterval=0.5)
        self.started = time.perf_counter()

    def job(self, job: JobSummary) -> None:
        cfg, bar = self.cfg, self.bar
        if cfg.strategy == "enas" and job.started:  # children train from scratch now
            bar.set_description(f"{cfg.space}/enas from scratch", refresh=False)
        rate = job.proposals / max(time.perf_counter() - self.started, 1e-9)
        postfix = {"proposals": job.proposals, "hits": job.cache_hits + job.repeats,
                   "proposals/s": f"{rate:.1f}"}
        if job.best is not None:
            postfix["best"] = f"{job.best.reward:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(min(job.trainings, cfg.budget) - bar.n)

    def supernet_epoch(self, note: dict[str, Any]) -> None:
        """ENAS: the phase before training."""
        if "enas_epoch" in note:
            self.bar.set_description(f"{self.cfg.space}/enas supernet epoch "
                                     f"{int(note['enas_epoch'])}/{int(note['enas_epochs'])}",
                                     refresh=False)
            self.bar.set_postfix(shared_acc=f"{note['shared_accuracy']:.3f}",
                                 controller=f"{note['controller_reward']:.3f}")


@dataclass
class Finished:
    """What a search that ran to its end leaves for result.json."""

    outcome: SearchOutcome
    policy: list[dict[str, float]]
    layout: dict[str, Any] | None
    workers: dict[str, object] | None
    pnas: list[dict[str, Any]]
    supernet: dict[str, Any] | None


def _search(cfg: SearchConfig, search: EmbeddedSearch, progress: Progress) -> Finished:
    if search.cluster.metrics_url:
        print(f"metrics: {search.cluster.metrics_url}", file=sys.stderr, flush=True)
    outcome = search.run(progress.job,
                         progress.supernet_epoch if cfg.strategy == "enas" else None)
    journal = search.store.journal(search.job_id)
    return Finished(outcome, search.policy_updates(),
                    search.layout_report() if search.cluster.has_paramservers else None,
                    search.cluster.workers.summary() if search.cluster.workers else None,
                    pnas_steps(journal) if cfg.strategy == "pnas" else [],
                    supernet_report(journal))


def run(args: argparse.Namespace) -> int:
    """Execute ``nas search``: the job runs through an embedded search service (the same
    runner and cluster code as ``nas serve search``); raises ConfigError/EvaluatorError for the
    CLI to report."""
    cfg = parse_config(args)
    space = build_space(cfg)
    evaluator = build_evaluator(cfg)  # a bad dataset or table fails here, before any process
    build_strategy(space, cfg)
    progress = Progress(cfg, quiet=getattr(args, "quiet", False))
    previous = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    search: EmbeddedSearch | None = None
    stopped: Stopped | None = None
    try:
        search = EmbeddedSearch(cfg)
        finished = _search(cfg, search, progress)
    except Stopped as stop:
        stopped = stop
        for s in previous:  # a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
    finally:
        progress.bar.close()
        if search is not None:
            search.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped is not None:
        if search is not None:  # what it found so far, marked interrupted
            print(interrupted(cfg, search, evaluator.describe()))
        print(f"nas search: stopped by {stopped}", file=sys.stderr)
        return stopped.exit_code
    outcome = finished.outcome
    if outcome.best is not None:
        outcome.best_test_accuracy = evaluator.test_accuracy(
            space.from_string(outcome.best.trained_arch))
    path = write_result(Path(str(cfg.out)), _document(cfg, finished, evaluator.describe()))
    print(summary(cfg, outcome, path))
    return 0


def _document(cfg: SearchConfig, finished: Finished, info: dict[str, Any]) -> dict[str, Any]:
    """result.json of a finished search; prints the PNAS and ENAS reports on the way."""
    if finished.workers is not None:
        info["workers"] = "ray"
    doc = result_json(cfg, finished.outcome, info)
    doc["policy"] = finished.policy  # empty for a strategy without a policy
    if finished.layout is not None:
        doc["layout"] = finished.layout
    if finished.workers is not None:
        doc["workers"] = finished.workers
    if cfg.strategy == "pnas":
        doc["pnas"] = finished.pnas
        for line in pnas_lines(finished.pnas):
            print(line)
    if finished.supernet is not None:
        doc["enas"] = finished.supernet
        for line in enas_lines(finished.supernet):
            print(line)
    return doc


class Stopped(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM: stop the search, keep what it found."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


def interrupted(cfg: SearchConfig, search: EmbeddedSearch, info: dict[str, object]) -> str:
    """Write the partial result.json of a stopped search (``stopped_reason: interrupted``,
    the trials finished so far, no test accuracy); the lines to print."""
    outcome = search.recorded("interrupted")
    path = write_result(Path(str(cfg.out)), result_json(cfg, outcome, info))
    return summary(cfg, outcome, path)


def result_json(cfg: SearchConfig, outcome: SearchOutcome,
                evaluator_info: dict[str, object]) -> dict[str, Any]:
    """The result.json document; with objectives also the ``pareto`` front (accuracy against
    each objective's metric)."""
    best = outcome.best
    doc: dict[str, Any] = {
        "best": {"arch": best.trained_arch if best else None,
                 "reward": best.reward if best else None,
                 "test_accuracy": outcome.best_test_accuracy},
        "budget": cfg.budget,
        "trainings": outcome.trainings,
        "budget_charged": round(outcome.charged, 4),
        "cache_hits": outcome.cache_hits,
        "repeats": outcome.repeats,
        "distinct": outcome.distinct,
        "wall_seconds": round(outcome.wall_seconds, 3),
        "stopped_reason": outcome.stopped_reason,
        "config": {k: v for k, v in vars(cfg).items() if k != "out"},
        "evaluator": evaluator_info,
        "history": [h.to_json() for h in outcome.history],
    }
    if cfg.objectives:
        doc["pareto"] = pareto_section(outcome, cfg.objectives)
    return doc


def pareto_section(outcome: SearchOutcome, objectives: tuple[str, ...]) -> dict[str, Any]:
    """The non-dominated architectures for max accuracy, min each objective's metric."""
    metrics = [parse_objective(o).metric for o in objectives]
    front = pareto_front((h.to_json() for h in outcome.history), metrics)
    return {"metrics": metrics,
            "front": [{"arch": t.get("same_as", t["arch"]), "trial_id": t["trial_id"],
                       "reward": t["reward"], "accuracy": t["metrics"].get("accuracy"),
                       **{m: t["metrics"][m] for m in metrics}} for t in front]}


def write_result(out_dir: Path, doc: dict[str, Any]) -> Path:
    """Write result.json atomically (a reader never sees half a file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "result.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".result-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def summary(cfg: SearchConfig, outcome: SearchOutcome, path: Path) -> str:
    """A few human lines about the search."""
    proposals = outcome.trainings + outcome.cache_hits
    rate = outcome.cache_hits / proposals if proposals else 0.0
    lines = [f"{cfg.strategy} on {cfg.space} ({cfg.evaluator}:{cfg.dataset}), seed {cfg.seed}",
             f"  trainings {outcome.trainings}/{cfg.budget}, cache hits {outcome.cache_hits} "
             f"({rate:.0%} of {proposals} proposals), {outcome.wall_seconds:.1f} s, "
             f"stopped: {outcome.stopped_reason}"]
    if outcome.stopped_reason == "exhausted":
        lines.append(f"  exhausted: the strategy proposed nothing new after "
                     f"{outcome.distinct} distinct architectures")
    if outcome.best is not None:
        found = outcome.trainings_to_reach(outcome.best.reward)
        lines.append(f"  best reward {outcome.best.reward:.4f} (found after {found} trainings)")
        lines.append(f"  best arch   {outcome.best.trained_arch}")
        if outcome.best_test_accuracy is not None:
            lines.append(f"  test accuracy {outcome.best_test_accuracy:.2%}")
    if cfg.objectives:
        section = pareto_section(outcome, cfg.objectives)
        lines.append(f"  objectives  {', '.join(cfg.objectives)}; Pareto front: "
                     f"{len(section['front'])} architectures (accuracy vs "
                     f"{', '.join(section['metrics'])})")
    lines.append(f"  wrote {path}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: nas search --help")
