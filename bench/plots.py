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


def plot_curves(curves: dict[str, list[tuple[int, float]]], name: str, title: str,
                out: Path = OUT) -> Path:
    """Best reward so far against trainings, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, points in curves.items():
        ax.step([p[0] for p in points], [p[1] for p in points], where="post", label=label)
    ax.set_xlabel("trainings")
    ax.set_ylabel("best reward so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
