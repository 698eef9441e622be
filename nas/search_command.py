"""``nas search``: run a search in this process and write DIR/result.json."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from controller.config import (
    EVALUATORS,
    NB201_DATASETS,
    STRATEGIES,
    TRAIN_DATASETS,
    SearchConfig,
    build_config,
    load_spec,
)
from controller.early_stopping import EARLY_STOPPING
from controller.factory import build_space
from controller.jobs.store import JobSummary
from controller.objectives import METRICS, SYNTAX, parse_objective
from controller.pareto import pareto_front
from controller.policy.reinforce import TRANSFORM_NAMES
from controller.presets import CONTROLLER_PRESETS
from controller.search import SearchOutcome
from controller.spaces import SPACE_NAMES
from controller.strategies.enas_report import enas_lines, supernet_report
from controller.strategies.pnas_report import pnas_lines, pnas_steps
from controller.strategies.surrogate import SURROGATES
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
    """Register ``search`` on the CLI's subparsers."""
    p = sub.add_parser("search", help="run an architecture search in this process",
                       description="Run an architecture search and write DIR/result.json.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       argument_default=argparse.SUPPRESS)
    p.add_argument("spec", nargs="?", type=Path, default=None,
                   help="YAML file of settings (keys as flags)")
    g = p.add_argument_group("search space")
    g.add_argument("--space", choices=SPACE_NAMES, help="search space (default nb201)")
    g.add_argument("--num-blocks", type=int, help="nasnet/enas-micro: blocks per cell (5); "
                   "enas-rnn: nodes (8)")
    g.add_argument("--num-layers", type=int, help="macro: layers (6)")
    g.add_argument("--predict-strides", action="store_true", help="macro: also choose strides")
    g = p.add_argument_group("strategy")
    g.add_argument("--strategy", choices=STRATEGIES, help="search strategy (default reinforce)")
    g.add_argument("--controller", choices=tuple(CONTROLLER_PRESETS),
                   help="reinforce: controller preset (default sample-efficient; ppo: "
                        "NASNet's PPO learner)")
    g.add_argument("--children", type=int, help="reinforce: children per policy update (m)")
    g.add_argument("--controller-lr", type=float, help="reinforce: the policy's Adam learning rate")
    g.add_argument("--entropy-weight", type=float, help="reinforce: entropy bonus weight")
    g.add_argument("--baseline-decay", type=float, help="reinforce: EMA baseline decay")
    g.add_argument("--reward-transform", choices=TRANSFORM_NAMES,
                   help="reinforce: reward shaping: cubed (Zoph & Le), rank (quantile among the "
                        "rewards seen so far)")
    g.add_argument("--ppo-clip", type=float,
                   help="--controller ppo: clip range epsilon of the probability ratio (0.2)")
    g.add_argument("--candidates", type=int,
                   help="reinforce: draws of the policy a surrogate (a Gaussian process on the "
                        "architectures trained so far) ranks per proposal; the one with the "
                        "highest expected improvement trains (0: train each draw; default: "
                        "the preset's)")
    g.add_argument("--ppo-epochs", type=int,
                   help="--controller ppo: gradient steps over each batch of children (4)")
    g.add_argument("--population", type=int, help="evolution: population size (10)")
    g.add_argument("--tournament", type=int, help="evolution: tournament sample size (3)")
    g.add_argument("--beam", type=int, help="pnas: cells trained per progressive step, the "
                   "top-K of the surrogate's ranking (16)")
    g.add_argument("--surrogate", choices=SURROGATES,
                   help="pnas: accuracy predictor, an ensemble of 5 LSTMs or MLPs (lstm)")
    g.add_argument("--enas-epochs", type=int, help="enas: passes of shared-weight training, "
                   "each followed by the controller's steps (10)")
    g.add_argument("--controller-steps", type=int, help="enas: controller updates after each "
                   "pass, each rewarded by a sampled child's accuracy on a validation "
                   "minibatch under the shared weights (20)")
    g.add_argument("--derive-samples", type=int, help="enas: children sampled from the final "
                   "policy and scored on the validation split; the best-scored trains from "
                   "scratch first, the budget's next trainings take the next ones (16)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--evaluator", choices=EVALUATORS,
                   help="nb201: NAS-Bench-201 table lookups (default); train: build and train "
                        "each child for real; synthetic (any space): a benchmark instrument: "
                        "a seeded reward landscape with a known optimum, no training")
    g.add_argument("--dataset", help=f"nb201: {', '.join(NB201_DATASETS)} (cifar10); train: "
                                     f"{', '.join(TRAIN_DATASETS)} (fashion-mnist); "
                                     f"synthetic: synthetic")
    g.add_argument("--nb201-csv", help="nb201 table (default $NAS_NB201_CSV or ../shared/data)")
    g.add_argument("--failure-reward", type=float, help="reward of a failed child (0)")
    g.add_argument("--objective", action="append", dest="objectives", metavar=SYNTAX,
                   help="trade accuracy for cost, MnasNet-style (repeat for several): reward = "
                        "accuracy * (value/target)^w, w=-0.07 unless given; ':hard' uses w=0 "
                        "under the target and -1 (or w) over it. METRIC: "
                        f"{', '.join(METRICS)} (nb201: params/FLOPs of the benchmark's network, "
                        "latency on this CPU). e.g. --objective params:target=8e5:hard. "
                        "result.json then keeps the raw accuracy and the Pareto front")
    g.add_argument("--simulate-seconds", type=float,
                   help="nb201, synthetic: make each evaluation take this long, like a child's "
                        "training (0)")
    g.add_argument("--landscape-seed", type=int,
                   help="synthetic: the reward landscape's seed, its optimum printed in "
                        "result.json's evaluator section; --seed seeds the search (0)")
    g.add_argument("--parallel", type=int, help="children of one batch evaluated at once (1)")
    g = p.add_argument_group("child training (--evaluator train)")
    g.add_argument("--data-dir", help="dataset directory (fashion-mnist: "
                                      "/usr/share/datasets/fashion-mnist)")
    g.add_argument("--train-subset", type=int, help="train on this many images (all)")
    g.add_argument("--val-subset", type=int, help="validate on this many held-out images (all)")
    g.add_argument("--cells", type=int, help="cells per stage, N (1)")
    g.add_argument("--filters", type=int, help="initial filters, F (8)")
    g.add_argument("--drop-path", type=float, help="max ScheduledDropPath probability (0)")
    g.add_argument("--aux-head", action="store_true", help="auxiliary head (cell spaces)")
    g.add_argument("--epochs", type=int, help="epochs per child (1)")
    g.add_argument("--batch-size", type=int, help="batch size (64)")
    g.add_argument("--lr", type=float, help="SGD learning rate, cosine-annealed (0.1)")
    g.add_argument("--weight-decay", type=float, help="weight decay (3e-4)")
    g.add_argument("--label-smoothing", type=float, help="label smoothing (0)")
    g.add_argument("--reward", choices=("last", "max5"),
                   help="last epoch's val accuracy, or max of the last 5 (Zoph & Le)")
    g.add_argument("--cube-reward", action="store_true", help="cube the reward (Zoph & Le)")
    g.add_argument("--device", help="auto (cuda if present), cpu, cuda, cuda:N")
    g = p.add_argument_group("recurrent cells (--space rnn-cell/enas-rnn --dataset text)")
    g.add_argument("--corpus", help="text file for the char-level LM children (default "
                   "$NAS_DATA_DIR/text/tinyshakespeare.txt); --train-subset/--val-subset count "
                   "characters (validation: the corpus's tail, 10%% by default)")
    g.add_argument("--lm-steps", type=int, help="Adam steps per child LM (200); reward = "
                   "min(1, 80 / val_perplexity^2) (Zoph & Le)")
    g.add_argument("--lm-hidden", type=int, help="hidden size of the child LM (64)")
    g.add_argument("--bptt", type=int, help="truncated-BPTT window in characters (32)")
    g.add_argument("--reward-c", type=float, help="c of the reward min(1, c / perplexity^2) "
                   "(80, Zoph & Le); lower it when good children reach perplexity < sqrt(c)")
    g = p.add_argument_group("distributed layout (Zoph & Le: S shards, K replicas, m children)")
    g.add_argument("--shards", type=int, help="parameter-server shards, S (1)")
    g.add_argument("--replicas", type=int, help="controller replicas, K (1); > 1 or --shards "
                   "> 1 starts shard processes on loopback, the replicas share the policy there")
    g.add_argument("--redis", help="Redis URL (default with S or K > 1: a private redis-server)")
    g.add_argument("--update-policy", choices=("async", "sync"),
                   help="async: apply each push, reject pushes older than --staleness; sync: "
                        "average --sync-pushes pushes per update (async)")
    g.add_argument("--staleness", type=int, help="async: staleness bound tau in versions (4)")
    g.add_argument("--sync-pushes", type=int, help="sync: pushes per update (K)")
    g.add_argument("--checkpoint-every", type=int,
                   help="shards checkpoint to Redis every N updates (10)")
    g.add_argument("--workers", type=int, help="children trained at once by Ray tasks (0: one "
                   "at a time in this process); at least this many are sampled per round")
    g.add_argument("--ray-address", help="a running Ray cluster, e.g. 10.0.0.5:6380 (default: "
                   "a private local Ray on loopback)")
    g.add_argument("--cpus-per-child", type=float, help="CPUs (and torch threads) per child (1)")
    g.add_argument("--gpus-per-child", type=float, help="GPUs per child; 0.25 packs four on one "
                   "GPU (default 0.125 when the cluster has GPUs, else 0)")
    g.add_argument("--max-attempts", type=int, help="attempts per child when its worker process "
                   "dies or stops heartbeating (3); a child that fails by itself is not retried")
    g.add_argument("--heartbeat-seconds", type=float, help="workers report this often (5)")
    g.add_argument("--heartbeat-timeout", type=float,
                   help="a child silent this long is presumed lost and retried (60)")
    g.add_argument("--early-stopping", choices=EARLY_STOPPING,
                   help="stop children that learn badly: median (Vizier's median stopping "
                        "rule) or asha (successive halving); the budget is charged only the "
                        "epochs trained (none)")
    g.add_argument("--grace-epochs", type=int,
                   help="early stopping: epochs every child trains first (1)")
    g.add_argument("--asha-eta", type=int, help="asha: keep the top 1/eta at each rung (3)")
    g.add_argument("--median-min-trials", type=int,
                   help="median: finished children needed before stopping any (3)")
    g.add_argument("--metrics-port", type=int, help="serve Prometheus metrics (nas_trials_* with "
                   "--workers, nas_replica_* with --shards/--replicas) at "
                   "http://127.0.0.1:PORT/metrics while the search runs (0: a free port)")
    g = p.add_argument_group("run")
    g.add_argument("--budget", type=int, help="child trainings to spend (100)")
    g.add_argument("--seed", type=int, help="random seed; same seed, same result (0)")
    g.add_argument("--max-idle-proposals", type=int,
                   help="end the search as exhausted after this many proposals in a row that "
                        "were all cache hits (2000); the REINFORCE controller samples without "
                        "replacement, so it ends early only when it has drawn every "
                        "architecture")
    g.add_argument("--out", help="directory for result.json (default runs/<space>-<strategy>)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_config(args: argparse.Namespace) -> SearchConfig:
    """Settings from the spec file, then the flags on top."""
    values = dict(vars(args))
    for key in ("func", "command", "spec", "quiet"):
        values.pop(key, None)
    spec = load_spec(args.spec) if getattr(args, "spec", None) else {}
    return build_config(spec, values)


def run(args: argparse.Namespace) -> int:
    """Execute ``nas search``: the job runs through an embedded search service (the same
    runner and cluster code as ``nas serve search``); raises ConfigError/EvaluatorError for the
    CLI to report."""
    cfg = parse_config(args)
    space = build_space(cfg)
    evaluator = build_evaluator(cfg)  # a bad dataset or table fails here, before any process
    build_strategy(space, cfg)
    bar = tqdm(total=cfg.budget, unit="training", disable=getattr(args, "quiet", False),
               desc=f"{cfg.space}/{cfg.strategy}", dynamic_ncols=True,
               mininterval=0.5)
    started = time.perf_counter()

    def progress(job: JobSummary) -> None:
        if cfg.strategy == "enas" and job.started:  # children train from scratch now
            bar.set_description(f"{cfg.space}/enas from scratch", refresh=False)
        rate = job.proposals / max(time.perf_counter() - started, 1e-9)
        postfix = {"proposals": job.proposals, "hits": job.cache_hits + job.repeats,
                   "proposals/s": f"{rate:.1f}"}
        if job.best is not None:
            postfix["best"] = f"{job.best.reward:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(min(job.trainings, cfg.budget) - bar.n)

    previous = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    search: EmbeddedSearch | None = None
    stopped: Stopped | None = None
    try:
        search = EmbeddedSearch(cfg)
        if search.cluster.metrics_url:
            print(f"metrics: {search.cluster.metrics_url}", file=sys.stderr, flush=True)
        def supernet_epoch(note: dict[str, Any]) -> None:  # ENAS: the phase before training
            if "enas_epoch" in note:
                bar.set_description(f"{cfg.space}/enas supernet epoch "
                                    f"{int(note['enas_epoch'])}/{int(note['enas_epochs'])}",
                                    refresh=False)
                bar.set_postfix(shared_acc=f"{note['shared_accuracy']:.3f}",
                                controller=f"{note['controller_reward']:.3f}")

        outcome = search.run(progress, supernet_epoch if cfg.strategy == "enas" else None)
        layout = search.layout_report() if search.cluster.has_paramservers else None
        policy = search.policy_updates()
        journal = search.store.journal(search.job_id)
        pnas = pnas_steps(journal) if cfg.strategy == "pnas" else []
        supernet = supernet_report(journal)
        workers = search.cluster.workers.summary() if search.cluster.workers else None
    except Stopped as stop:
        stopped = stop
        for s in previous:  # a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
    finally:
        bar.close()
        if search is not None:
            search.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped is not None:
        if search is not None:  # what it found so far, marked interrupted
            print(interrupted(cfg, search, evaluator.describe()))
        print(f"nas search: stopped by {stopped}", file=sys.stderr)
        return stopped.exit_code
    if outcome.best is not None:
        outcome.best_test_accuracy = evaluator.test_accuracy(
            space.from_string(outcome.best.trained_arch))
    out_dir = Path(str(cfg.out))
    info = evaluator.describe()
    if workers is not None:
        info["workers"] = "ray"
    doc = result_json(cfg, outcome, info)
    doc["policy"] = policy  # empty for a strategy without a policy
    if layout is not None:
        doc["layout"] = layout
    if workers is not None:
        doc["workers"] = workers
    if cfg.strategy == "pnas":
        doc["pnas"] = pnas
        for line in pnas_lines(pnas):
            print(line)
    if supernet is not None:
        doc["enas"] = supernet
        for line in enas_lines(supernet):
            print(line)
    path = write_result(out_dir, doc)
    print(summary(cfg, outcome, path))
    return 0


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
