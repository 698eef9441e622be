"""Plots for the benchmark sections (matplotlib, written under bench/out/)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import ROOT

if TYPE_CHECKING:
    from bench.nb201 import RunResult

OUT = ROOT / "bench" / "out"


def plot_nb201(results: list[RunResult], methods: list[str], dataset: str,
               budgets: tuple[int, ...], out: Path = OUT) -> Path:
    """Mean reported test accuracy against budget, one line per method (+- standard error)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for method in methods:
        runs = [r for r in results if r.method == method and r.dataset == dataset]
        if not runs:
            continue
        means, errs = [], []
        for b in budgets:
            accs = [100 * r.test_at[b] for r in runs]
            means.append(statistics.mean(accs))
            errs.append(statistics.pstdev(accs) / max(1, len(accs)) ** 0.5)
        ax.errorbar(budgets, means, yerr=errs, marker="o", capsize=3, label=method)
    ax.set_xlabel("budget (child trainings)")
    ax.set_ylabel("test accuracy of best-reward cell (%)")
    ax.set_title(f"NAS-Bench-201 {dataset}: mean over seeds (+- s.e.)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"nb201-{dataset}.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_blocks(curves: dict[str, list[float]], band: list[tuple[float, float]] | None,
                block: int, name: str, title: str, out: Path = OUT) -> Path:
    """Mean reward per block of trainings, one line per run, and a reference band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    if band:
        xs = [block * (b + 1) for b in range(len(band))]
        ax.fill_between(xs, [lo for lo, _ in band], [hi for _, hi in band], color="grey",
                        alpha=0.3, label="K=1: 95% prediction interval")
    for label, values in curves.items():
        ax.plot([block * (b + 1) for b in range(len(values))], values, marker=".",
                linewidth=1, label=label)
    ax.set_xlabel(f"trainings (each point: the block of {block:,} ending there)")
    ax.set_ylabel("mean reward of the block")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
