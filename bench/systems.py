"""The seed systems, each in a small real run: Zoph & Le's REINFORCE, our default REINFORCE
preset, NASNet's PPO controller and PNAS on the NAS-Bench-201 table (CIFAR-10); PNAS on
enas-micro with children trained for real on Fashion-MNIST; the RNN cell searches (rnn-cell,
enas-rnn) with char-LM children on tinyshakespeare. Then PNAS vs REINFORCE on NB201: how many
trainings each needs to reach the same target.

Every search goes through the path ``nas search`` takes: a ``SearchConfig`` (the same keys as
the flags), run as a job of the embedded search service (``EmbeddedSearch``). The systems are
entries of ``SYSTEMS``: a name and a function returning the row; adding one (say ENAS) is one
entry. Torch runs on ``--threads`` (1) threads and every child trains in this process, so a
run uses one core: CPU-hours = wall seconds x cores / 3600.

    python -m bench.systems              # the full run (~6 min on 2 busy cores)
    python -m bench.systems --quick      # 2 seeds at budget 20, tiny children (~1 min)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.report import background_load, load_during_run, machine, write_section
from controller.config import build_config
from controller.evaluators.nb201 import default_csv, load_table
from controller.search import HistoryEntry, SearchOutcome
from nas.embedded import EmbeddedSearch


@dataclass(frozen=True)
class Options:
    """Sizes of every run (the full defaults; ``--quick`` shrinks them)."""

    seeds: int = 5
    budget: int = 100  # NB201 rows: trainings per run
    compare_budget: int = 200  # PNAS vs REINFORCE: trainings per run
    max_idle: int = 300  # NB201: stop a run after this many cache hits in a row
    children: int = 8  # trained-children rows: trainings
    train_subset: int = 4000  # Fashion-MNIST training images
    val_subset: int = 1000  # Fashion-MNIST held-out validation images
    filters: int = 8
    lm_steps: int = 100
    lm_chars: int = 200_000  # tinyshakespeare training characters
    lm_val_chars: int = 20_000
    threads: int = 1
    nb201_csv: str = ""
    fashion_dir: str | None = None
    corpus: str | None = None


QUICK: dict[str, Any] = {"seeds": 2, "budget": 20, "compare_budget": 30, "children": 3,
                         "train_subset": 500, "val_subset": 300, "filters": 4, "lm_steps": 15,
                         "lm_chars": 50_000, "lm_val_chars": 5_000}


@dataclass
class Run:
    """One search, or the prefix of a longer one up to ``budget`` trainings."""

    settings: dict[str, Any]
    outcome: SearchOutcome
    wall: float
    best: HistoryEntry | None
    to_best: int | None
    done_at: list[float] = field(default_factory=list)  # seconds until each training ended

    def to_reach(self, reward: float) -> int | None:
        """Trainings until a trained cell had >= ``reward`` (None: not within this run)."""
        return self.outcome.trainings_to_reach(reward)


@dataclass
class Row:
    """One system's line of the table; means over its runs."""

    system: str
    space: str
    evaluator: str
    budget: int
    runs: list[Run]
    meaning: str  # what the best found means, e.g. "NB201 test 93.76%"
    cores: int

    @property
    def reward(self) -> float:
        return statistics.mean(r.best.reward if r.best else 0.0 for r in self.runs)

    @property
    def to_best(self) -> float:
        return statistics.mean(r.to_best or 0 for r in self.runs)

    @property
    def wall(self) -> float:
        return statistics.mean(r.wall for r in self.runs)

    @property
    def budget_cell(self) -> str:
        """The budget, and the trainings used when a run stopped before it (converged)."""
        used = [r.outcome.trainings for r in self.runs]
        if min(used) >= self.budget:
            return str(self.budget)
        return f"{self.budget} (used {statistics.mean(used):g})"

    @property
    def cpu_hours(self) -> float:
        return sum(r.wall for r in self.runs) * self.cores / 3600


class Bench:
    """Runs searches through the embedded service, remembers them (a shorter run of the same
    settings is the prefix of the longest one), and ticks the progress bar."""

    def __init__(self, opts: Options, bar: tqdm[Any] | None = None) -> None:
        self.opts = opts
        self.bar = bar
        self.runs: dict[tuple[tuple[str, Any], ...], Run] = {}
        self._tables: dict[str, dict[str, tuple[float, float]]] = {}

    def table(self, dataset: str = "cifar10") -> dict[str, tuple[float, float]]:
        """The NB201 table: arch -> (12-epoch validation accuracy, 200-epoch test accuracy)."""
        if dataset not in self._tables:
            self._tables[dataset] = load_table(Path(self.opts.nb201_csv), dataset)
        return self._tables[dataset]

    def search(self, **settings: Any) -> Run:
        """One search with ``settings`` (``nas search``'s keys, ``budget`` included)."""
        budget = int(settings["budget"])
        key = tuple(sorted((k, v) for k, v in settings.items() if k != "budget"))
        done = self.runs.get(key)
        if done is None or done.outcome.budget < budget:
            done = self.runs[key] = self._run(settings)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{settings.get('space')}/{settings.get('strategy')}"
                                     f"/{settings.get('controller', '')} seed "
                                     f"{settings.get('seed')}", refresh=False)
            self.bar.update()
        return prefix(done, budget)

    def _run(self, settings: dict[str, Any]) -> Run:
        with tempfile.TemporaryDirectory(prefix="bench-systems-") as out:
            cfg = build_config(settings, {"out": out})
            search = EmbeddedSearch(cfg)
            try:
                outcome = search.run()
                journal = search.store.journal(search.job_id)
            finally:
                search.close()
        created = next(e["at"] for e in journal if e["op"] == "create")
        done_at = [e["at"] - created for e in journal
                   if e["op"] == "result" and not e["result"].get("cached")]
        outcome.budget = cfg.budget
        return Run(dict(settings), outcome, outcome.wall_seconds, outcome.best,
                   outcome.trainings_to_reach(outcome.best.reward) if outcome.best else None,
                   done_at)


def prefix(run: Run, budget: int) -> Run:
    """The run as if it had stopped after ``budget`` trainings (its wall time: until the
    last of them was journalled)."""
    if run.outcome.budget == budget:
        return run
    cut = SearchOutcome(budget=budget, stopped_reason=run.outcome.stopped_reason)
    for h in run.outcome.history:
        if not h.cached and cut.trainings >= budget:
            cut.stopped_reason = "budget"
            break
        cut.add(h)
    done_at = run.done_at[:cut.trainings]
    wall = done_at[-1] if done_at and cut.trainings < run.outcome.trainings else run.wall
    cut.wall_seconds = wall
    best = cut.best
    return Run({**run.settings, "budget": budget}, cut, wall, best,
               cut.trainings_to_reach(best.reward) if best else None, done_at)


# --- the systems -------------------------------------------------------------------------

RowFn = Callable[[Bench], Row]


@dataclass(frozen=True)
class System:
    """A registry entry: the row's name, the function computing it, and how many searches it
    runs (for the progress bar)."""

    name: str
    row: RowFn
    searches: Callable[[Options], int] = field(default=lambda o: o.seeds)


def nb201_system(name: str, **settings: Any) -> System:
    """A system searched on the NB201 table (CIFAR-10), one run per seed at ``--budget``;
    ``settings`` are ``nas search`` keys (strategy, controller, beam, ...)."""
    def row(bench: Bench) -> Row:
        o = bench.opts
        runs = [bench.search(space="nb201", evaluator="nb201", dataset="cifar10",
                             nb201_csv=o.nb201_csv, budget=o.budget, seed=seed,
                             max_idle_proposals=o.max_idle, **settings)
                for seed in range(o.seeds)]
        table = bench.table()
        tests = [table[r.best.trained_arch][1] for r in runs if r.best]
        return Row(name, "nb201", "nb201 table: CIFAR-10", o.budget, runs,
                   f"NB201 test {100 * statistics.mean(tests):.2f}% (200 ep)", o.threads)
    return System(name, row)


def fashion_system(name: str, space: str, **settings: Any) -> System:
    """Children of ``space`` trained for real on a Fashion-MNIST subset, 1 epoch each."""
    def row(bench: Bench) -> Row:
        o = bench.opts
        extra = {"data_dir": o.fashion_dir} if o.fashion_dir else {}
        run = bench.search(space=space, evaluator="train", dataset="fashion-mnist",
                           budget=o.children, seed=0, epochs=1, cells=1, filters=o.filters,
                           train_subset=o.train_subset, val_subset=o.val_subset,
                           device="cpu", **extra, **settings)
        acc = run.best.reward if run.best else 0.0
        return Row(name, space, f"train: Fashion-MNIST {o.train_subset}/{o.val_subset} img, "
                   f"1 ep, F={o.filters}", o.children, [run],
                   f"val accuracy {100 * acc:.2f}%", o.threads)
    return System(name, row, lambda o: 1)


def lm_system(name: str, space: str, **settings: Any) -> System:
    """Recurrent cells of ``space``, each a char LM trained on tinyshakespeare."""
    def row(bench: Bench) -> Row:
        o = bench.opts
        extra = {"corpus": o.corpus} if o.corpus else {}
        run = bench.search(space=space, evaluator="train", dataset="text", budget=o.children,
                           seed=0, lm_steps=o.lm_steps, train_subset=o.lm_chars,
                           val_subset=o.lm_val_chars, **extra, **settings)
        ppl = run.best.metrics.get("val_perplexity", math.nan) if run.best else math.nan
        return Row(name, space, f"train: char LM, tinyshakespeare {o.lm_chars // 1000}k chars, "
                   f"{o.lm_steps} steps", o.children, [run], f"val perplexity {ppl:.2f}",
                   o.threads)
    return System(name, row, lambda o: 1)


SYSTEMS: list[System] = [
    nb201_system("Zoph & Le REINFORCE", strategy="reinforce", controller="zoph-le"),
    nb201_system("REINFORCE (default preset)", strategy="reinforce",
                 controller="sample-efficient"),
    nb201_system("PPO (NASNet)", strategy="reinforce", controller="ppo"),
    nb201_system("PNAS", strategy="pnas"),
    fashion_system("PNAS, trained children", "enas-micro", strategy="pnas"),
    lm_system("RNN cell search (Zoph & Le)", "rnn-cell", strategy="reinforce"),
    lm_system("RNN cell search (ENAS DAG)", "enas-rnn", strategy="reinforce"),
]

# --- PNAS vs REINFORCE on NB201 -----------------------------------------------------------

COMPARED = {"PNAS": {"strategy": "pnas"},
            "REINFORCE (default preset)": {"strategy": "reinforce",
                                           "controller": "sample-efficient"}}


@dataclass
class Comparison:
    """Per method and seed: the runs at the comparison budget and the targets' thresholds."""

    budget: int
    targets: dict[str, float]
    runs: dict[str, list[Run]]


def compare(bench: Bench) -> Comparison:
    """PNAS and REINFORCE, one run per seed at ``compare_budget`` (the same settings as the
    NB201 rows, so those rows read these runs' prefixes)."""
    o = bench.opts
    rewards = sorted((r for r, _ in bench.table().values()), reverse=True)
    targets = {f"top {share:g}% ({math.ceil(len(rewards) * share / 100)} cells)":
               rewards[math.ceil(len(rewards) * share / 100) - 1] for share in (1, 0.1)}
    runs = {name: [bench.search(space="nb201", evaluator="nb201", dataset="cifar10",
                                nb201_csv=o.nb201_csv, budget=o.compare_budget, seed=seed,
                                max_idle_proposals=o.max_idle, **settings)
                   for seed in range(o.seeds)] for name, settings in COMPARED.items()}
    return Comparison(o.compare_budget, targets, runs)


def _stat(values: list[int | None], budget: int) -> str:
    reached = [v for v in values if v is not None]
    if not reached:
        return f"not reached in {budget} ({0}/{len(values)} seeds)"
    return (f"mean {statistics.mean(reached):.1f}, median {statistics.median(reached):g} "
            f"({len(reached)}/{len(values)} seeds)")


def _n(v: int | None, budget: int) -> str:
    return str(v) if v is not None else f">{budget}"


def render_comparison(c: Comparison) -> list[str]:
    """The trainings-to-target tables."""
    names = list(c.runs)
    lines = [f"Budget {c.budget} trainings per run. Targets: the 12-epoch validation accuracy "
             "(the search's reward) of the k-th best of all 15,625 cells. Trainings until a "
             "trained cell reached the target, over the seeds that reached it:", "",
             "| target | reward | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for label, target in c.targets.items():
        cells = [_stat([r.to_reach(target) for r in c.runs[n]], c.budget) for n in names]
        lines.append(f"| {label} | {100 * target:.2f}% | " + " | ".join(cells) + " |")
    lines += ["", "The same best, per seed: each method's trainings until it reached "
              "min(best of PNAS, best of REINFORCE) of that seed:", "",
              "| seed | same best (reward) | " + " | ".join(names) + " |",
              "|---" * (len(names) + 2) + "|"]
    pairs = list(zip(*(c.runs[n] for n in names), strict=True))
    same: dict[str, list[int | None]] = {n: [] for n in names}
    for seed, runs in enumerate(pairs):
        target = min(r.best.reward if r.best else 0.0 for r in runs)
        for n, r in zip(names, runs, strict=True):
            same[n].append(r.to_reach(target))
        lines.append(f"| {seed} | {100 * target:.2f}% | " +
                     " | ".join(_n(r.to_reach(target), c.budget) for r in runs) + " |")
    lines.append("| all | | " + " | ".join(_stat(same[n], c.budget) for n in names) + " |")
    used = {n: statistics.mean(r.outcome.trainings for r in c.runs[n]) for n in names}
    best = {n: statistics.mean(r.best.reward if r.best else 0.0 for r in c.runs[n])
            for n in names}
    lines += ["", "Trainings used per run, mean (a run whose controller converged stops "
              "early): " + ", ".join(f"{n} {used[n]:g}" for n in names) +
              "; best reward reached, mean: " +
              ", ".join(f"{n} {100 * best[n]:.2f}%" for n in names) + "."]
    return lines


# --- the section ----------------------------------------------------------------------------


def render(rows: list[Row], comparison: Comparison, opts: Options, command: str,
           wall: float) -> str:
    """The markdown section."""
    lines = ["## The seed systems: a small real run each", "",
             f"Command: `{command}` ({wall / 60:.1f} min on {machine()}; "
             f"{background_load()}; {load_during_run()}).", "",
             "Every search runs as `nas search` runs it: its settings as a `SearchConfig`, a "
             "job of the embedded search service. Budget = child trainings (a cache hit is "
             f"free). NB201 rows: mean over {opts.seeds} seeds (0..{opts.seeds - 1}); a run "
             f"also stops after {opts.max_idle} cache hits in a row (`--max-idle-proposals`: "
             "the controller has converged). Trained-children rows: one run, seed 0. Best "
             "found = the best reward (NB201: 12-epoch validation accuracy; Fashion-MNIST: "
             "validation accuracy; LM: min(1, 80 / val perplexity^2)) and what it means "
             "(NB201: the 200-epoch test accuracy of the best-reward cell; the best child's "
             "validation accuracy or perplexity). To best = trainings until the best was "
             f"found. Torch uses {opts.threads} thread(s) and children train one at a time in "
             f"the search's process, so a run uses {opts.threads} core(s): CPU-hours = wall x "
             f"{opts.threads} core(s), summed over the row's runs; wall s is per run.", "",
             "| system | space | evaluator / data | budget | best found (reward; meaning) | "
             "to best | wall s | CPU-h |", "|---" * 8 + "|"]
    for r in rows:
        lines.append(f"| {r.system} | {r.space} | {r.evaluator} | {r.budget_cell} | "
                     f"{r.reward:.4f}; {r.meaning} | {r.to_best:.1f} | {r.wall:.1f} | "
                     f"{r.cpu_hours:.4f} |")
    lines += ["", "ENAS (weight sharing) has its own section below (`python -m bench.enas`): "
              "its cost is a supernet phase, not trainings.", "",
              "### PNAS vs REINFORCE on NB201 CIFAR-10: trainings to the same best", ""]
    lines += render_comparison(comparison)
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    """Options from the command line."""
    p = argparse.ArgumentParser(prog="python -m bench.systems", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Options()
    p.add_argument("--quick", action="store_true",
                   help="small sizes: 2 seeds, budget 20 (compare 30), 3 tiny children")
    p.add_argument("--seeds", type=int, help=f"NB201 runs per system ({d.seeds}; quick 2)")
    p.add_argument("--budget", type=int, help=f"NB201 rows: trainings per run ({d.budget}; "
                   "quick 20)")
    p.add_argument("--compare-budget", type=int, help="PNAS vs REINFORCE: trainings per run "
                   f"({d.compare_budget}; quick 30); at least --budget")
    p.add_argument("--max-idle-proposals", type=int, dest="max_idle",
                   help=f"NB201: stop a run after this many cache hits in a row ({d.max_idle})")
    p.add_argument("--children", type=int, help="trained-children rows: trainings "
                   f"({d.children}; quick 3)")
    p.add_argument("--train-subset", type=int, help="Fashion-MNIST training images "
                   f"({d.train_subset}; quick 500)")
    p.add_argument("--val-subset", type=int, help="Fashion-MNIST validation images "
                   f"({d.val_subset}; quick 300)")
    p.add_argument("--filters", type=int, help=f"Fashion-MNIST child filters F ({d.filters}; "
                   "quick 4)")
    p.add_argument("--lm-steps", type=int, help=f"char-LM Adam steps ({d.lm_steps}; quick 15)")
    p.add_argument("--lm-chars", type=int, help="tinyshakespeare training characters "
                   f"({d.lm_chars}; quick 50000)")
    p.add_argument("--lm-val-chars", type=int, help="validation characters "
                   f"({d.lm_val_chars}; quick 5000)")
    p.add_argument("--threads", type=int, help=f"torch threads = cores used ({d.threads})")
    p.add_argument("--systems", help="comma list of systems to run (default: all): " +
                   ", ".join(s.name for s in SYSTEMS))
    p.add_argument("--nb201-csv", default=str(default_csv()), help="the NB201 table")
    p.add_argument("--fashion-dir", help="Fashion-MNIST idx files (default: the train "
                   "evaluator's, /usr/share/datasets/fashion-mnist)")
    p.add_argument("--corpus", help="the LM corpus (default $NAS_DATA_DIR/text/"
                   "tinyshakespeare.txt)")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    opts = replace(d, **QUICK) if args.quick else d
    given = {k: v for k, v in vars(args).items() if v is not None and k in
             {f for f in Options.__dataclass_fields__}}
    opts = replace(opts, **given)
    if opts.compare_budget < opts.budget:
        p.error("--compare-budget must be at least --budget")
    return opts, args


def command_line(argv: list[str]) -> str:
    """The command that reproduces the run (paths left out)."""
    shown: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--nb201-csv", "--fashion-dir", "--corpus"):
            skip = True
            continue
        if a != "--no-write":
            shown.append(a)
    return " ".join(["python -m bench.systems", *shown])


def main(argv: list[str] | None = None) -> int:
    """Run every system and the comparison; print the section and write it to BENCHMARKS.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, args = parse(argv)
    chosen = [s for s in SYSTEMS if not args.systems or s.name in args.systems.split(",")]
    threads = torch.get_num_threads()
    torch.set_num_threads(opts.threads)
    total = 2 * opts.seeds + sum(s.searches(opts) for s in chosen)
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="run", desc="systems", dynamic_ncols=True) as bar:
            bench = Bench(opts, bar)
            comparison = compare(bench)  # first: the NB201 PNAS/REINFORCE rows are prefixes
            rows = [s.row(bench) for s in chosen]
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start
    body = render(rows, comparison, opts, command_line(argv), wall)
    print(body)
    if not args.no_write:
        write_section("systems", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
