"""result.json's ``pnas`` section and its summary lines, read back from the job's journal.

The runner journals a strategy's ``stats()`` each time its ``policy_version`` moves; for PNAS
that is once per progressive step (a surrogate update), so those notes are the steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def pnas_steps(journal: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per finished step: blocks, candidates ranked, cells trained, their best
    reward, and the surrogate's Kendall tau on them (predicted before they trained; None at
    step 1, which trains every 1-block cell unranked)."""
    steps = []
    for entry in journal:
        data = entry.get("data", {})
        if entry.get("op") != "note" or entry.get("kind") != "policy" \
                or "pnas_blocks" not in data:
            continue
        steps.append({"blocks": int(data["pnas_blocks"]),
                      "candidates": int(data["pnas_candidates"]),
                      "trained": int(data["pnas_trained"]),
                      "best_reward": data.get("pnas_best_reward"),
                      "kendall_tau": data.get("kendall_tau"),
                      "surrogate_cells": int(data["pnas_surrogate_cells"])})
    return steps


def pnas_lines(steps: list[dict[str, Any]]) -> list[str]:
    """A line per step for the terminal."""
    lines = []
    for s in steps:
        tau = "-" if s["kendall_tau"] is None else f"{s['kendall_tau']:+.3f}"
        best = "-" if s["best_reward"] is None else f"{s['best_reward']:.4f}"
        lines.append(f"  pnas {s['blocks']} block(s): trained {s['trained']} of "
                     f"{s['candidates']} candidates, best {best}, surrogate Kendall tau {tau}")
    return lines
