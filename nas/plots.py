"""A search drawn as PNGs (``nas plot``): the rewards with the best so far, the policy's learning,
the Pareto front and the best architecture's diagram.

Both sources (a run's result.json, a job's events on the search service) are first turned into
one ``SearchRecord``, so a local run and a submitted job draw the same figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.objectives import ACCURACY
from controller.pareto import pareto_front
from nas import diagram
from protos.types import Architecture

LOG_SPAN = 20.0  # a cost axis spanning more than this factor is drawn on a log scale


@dataclass(frozen=True)
class SearchRecord:
    """What the plots need of a search, whichever source it came from."""

    title: str
    strategy: str
    trials: tuple[Mapping[str, Any], ...]  # finished proposals in order: arch, reward, cached,
    # status (default succeeded), metrics
    policy: tuple[Mapping[str, float], ...]  # per update: update, entropy, baseline, mean_reward
    best_arch: Architecture | None
    policy_missing: str = ""  # why a policy strategy has no statistics (an old result.json)


@dataclass
class PlotReport:
    """The PNGs written, and one note per plot that was skipped (and why)."""

    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_plots(record: SearchRecord, out: Path, metric: str = "params") -> PlotReport:
    """Write rewards.png, entropy.png, pareto.png and best-cell.png into ``out`` (created);
    a plot without data is skipped with a note instead of drawn empty."""
    out.mkdir(parents=True, exist_ok=True)
    report = PlotReport()
    if record.trials:
        report.written.append(plot_rewards(record, out / "rewards.png"))
    else:
        report.notes.append("rewards.png skipped: no trial has finished yet")
    if record.policy:
        report.written.append(plot_policy(record, out / "entropy.png"))
    else:
        report.notes.append(f"entropy.png skipped: {_no_policy(record)}")
    if plot_pareto(record, metric, out / "pareto.png"):
        report.written.append(out / "pareto.png")
    else:
        report.notes.append(f"pareto.png skipped: no trained trial has the metric {metric!r}")
    if record.best_arch is not None:
        report.written.append(diagram.draw(record.best_arch, out / "best-cell.png"))
    else:
        report.notes.append("best-cell.png skipped: no trial has succeeded yet")
    return report


def _no_policy(record: SearchRecord) -> str:
    if record.strategy != "reinforce":
        return f"strategy {record.strategy!r} has no policy to plot"
    return record.policy_missing or "the policy has not been updated yet"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe in any thread or container
    import matplotlib.pyplot as plt

    return plt


def plot_rewards(record: SearchRecord, path: Path) -> Path:
    """Reward per proposal in order: trainings filled, free cache hits hollow, failures as
    crosses; the best reward so far as a step line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    groups: dict[str, tuple[list[int], list[float]]] = {"trained": ([], []), "cached": ([], []),
                                                         "failed": ([], [])}
    best: list[float] = []
    for n, trial in enumerate(record.trials, start=1):
        reward = float(trial.get("reward", 0.0))
        kind = ("failed" if trial.get("status", "succeeded") != "succeeded"
                else "cached" if trial.get("cached") else "trained")
        groups[kind][0].append(n)
        groups[kind][1].append(reward)
        ok = kind != "failed"
        best.append(max(best[-1] if best else float("-inf"), reward if ok else float("-inf")))
    xs, ys = groups["trained"]
    ax.scatter(xs, ys, s=18, color="tab:blue", label=f"training ({len(xs)})", zorder=3)
    xs, ys = groups["cached"]
    ax.scatter(xs, ys, s=30, facecolors="none", edgecolors="tab:orange", zorder=3,
               label=f"cache hit, free ({len(xs)})")
    xs, ys = groups["failed"]
    if xs:
        ax.scatter(xs, ys, s=24, marker="x", color="tab:red", label=f"failed ({len(xs)})")
    steps = [(n, b) for n, b in enumerate(best, start=1) if b != float("-inf")]
    if steps:
        ax.step([n for n, _ in steps], [b for _, b in steps], where="post", color="tab:green",
                lw=1.8, label=f"best so far ({steps[-1][1]:.4f})")
    shaped = any(ACCURACY in t.get("metrics", {}) for t in record.trials)
    ax.set(xlabel="proposal (in the order they finished)",
           ylabel="reward (accuracy shaped by the objectives)" if shaped else "reward",
           title=f"{record.title}: reward per trial")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path)


def plot_policy(record: SearchRecord, path: Path) -> Path:
    """The policy's entropy per update (falling as it commits to choices) above the batch's mean
    reward and the REINFORCE baseline it is compared with."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), dpi=100, sharex=True)
    updates = [int(p.get("update", n)) for n, p in enumerate(record.policy, start=1)]
    top.plot(updates, [float(p.get("entropy", 0.0)) for p in record.policy], color="tab:purple")
    top.set(ylabel="entropy (nats)", title=f"{record.title}: policy per update")
    bottom.plot(updates, [float(p.get("mean_reward", 0.0)) for p in record.policy],
                color="tab:blue", lw=1, label="mean reward of the update's batch")
    bottom.plot(updates, [float(p.get("baseline", 0.0)) for p in record.policy],
                color="tab:orange", lw=1.8, label="baseline")
    bottom.set(xlabel="policy update", ylabel="reward (after the transform)")
    bottom.legend(loc="lower right", fontsize=8)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_pareto(record: SearchRecord, metric: str, path: Path) -> bool:
    """Accuracy against ``metric`` of every trained trial, the Pareto front (max accuracy, min
    the metric) highlighted; False, and nothing written, when no trained trial has the metric."""
    trained = [t for t in record.trials if not t.get("cached")
               and t.get("status", "succeeded") == "succeeded"
               and metric in t.get("metrics", {})]
    if not trained:
        return False
    front = pareto_front(trained, [metric])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.scatter([_cost(t, metric) for t in trained], [_accuracy(t) for t in trained], s=16,
               color="0.6", label=f"trained ({len(trained)})", zorder=2)
    ax.step([_cost(t, metric) for t in reversed(front)],
            [_accuracy(t) for t in reversed(front)], where="post", color="tab:red", lw=1.2,
            zorder=3)
    ax.scatter([_cost(t, metric) for t in front], [_accuracy(t) for t in front], s=40,
               color="tab:red", label=f"Pareto front ({len(front)})", zorder=4)
    costs = [_cost(t, metric) for t in trained]
    if min(costs) > 0 and max(costs) / min(costs) > LOG_SPAN:
        ax.set_xscale("log")
    ax.set(xlabel=metric, ylabel="accuracy (unshaped reward)",
           title=f"{record.title}: accuracy vs {metric}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(plt, fig, path)
    return True


def _cost(trial: Mapping[str, Any], metric: str) -> float:
    return float(trial["metrics"][metric])


def _accuracy(trial: Mapping[str, Any]) -> float:
    return float(trial.get("metrics", {}).get(ACCURACY, trial.get("reward", 0.0)))


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_record(title: str, strategy: str, doc: Mapping[str, Any],
               best_arch: Architecture | None) -> SearchRecord:
    """The record of a result.json document (its ``history`` and ``policy``)."""
    missing = "" if "policy" in doc else ("this result.json has no policy statistics (written "
                                          "before `nas search` recorded them): search again")
    history: Sequence[Mapping[str, Any]] = doc.get("history", [])
    return SearchRecord(title, strategy, tuple(history), tuple(doc.get("policy", ())),
                        best_arch, policy_missing=missing)
