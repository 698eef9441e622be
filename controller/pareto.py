"""The Pareto front of a search: trained architectures no other one beats on every count.

Accuracy is maximised and each chosen metric (params, FLOPs, latency) minimised. A trial is
dominated when another is at least as good on every count and better on one; trials that tie on
every count dominate neither, so all of them stay. Two dimensions (accuracy and one metric) take
one sort and a sweep, O(n log n); more take the plain pairwise test, O(n^2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby
from typing import Any

from controller.objectives import ACCURACY, METRICS

DEFAULT_METRICS = ("params",)


def non_dominated(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, every coordinate minimised."""
    if not points:
        return []
    dims = {len(p) for p in points}
    if len(dims) != 1:
        raise ValueError(f"points: all need the same number of coordinates, got {sorted(dims)}")
    if dims == {2}:
        return _non_dominated_2d(points)
    return [i for i, p in enumerate(points)
            if not any(_dominates(q, p) for q in points)]


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True))


def _non_dominated_2d(points: Sequence[Sequence[float]]) -> list[int]:
    # Sweep by x: within one x only the smallest y can survive, and it survives if every point of
    # a smaller x has a larger y (an equal y at a smaller x dominates it).
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best_y = float("inf")
    for _, group in groupby(order, key=lambda i: points[i][0]):
        members = list(group)
        lowest = points[members[0]][1]
        if lowest < best_y:
            front += [i for i in members if points[i][1] == lowest]
            best_y = lowest
    return sorted(front)


def pareto_front(trials: Iterable[Mapping[str, Any]],
                 metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict[str, Any]]:
    """The non-dominated succeeded trials, one per trained architecture (the earliest), best
    accuracy first.

    ``trials`` are history entries or job-store trial records (``arch``, ``reward``, optional
    ``same_as``, ``status`` and ``metrics``). Accuracy is ``metrics["accuracy"]`` when the reward
    was shaped by objectives, else the reward. Trials lacking one of ``metrics`` are left out.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics: {unknown[0]!r} is not one of {', '.join(METRICS)}"
                         if unknown else "metrics: name at least one")
    seen: set[str] = set()
    chosen: list[dict[str, Any]] = []
    points: list[tuple[float, ...]] = []
    for trial in trials:
        measured = trial.get("metrics", {})
        arch = str(trial.get("same_as", trial.get("arch", "")))
        if trial.get("status", "succeeded") != "succeeded" or arch in seen \
                or any(m not in measured for m in metrics):
            continue
        seen.add(arch)
        accuracy = float(measured.get(ACCURACY, trial.get("reward", 0.0)))
        chosen.append(dict(trial))
        points.append((-accuracy, *(float(measured[m]) for m in metrics)))
    front = non_dominated(points)
    front.sort(key=lambda i: points[i])  # stable: best accuracy, then cheapest, then earliest
    return [chosen[i] for i in front]
