"""Multi-objective search on the wire: a spec's objectives (``nas.v1.Objective``) to and from
job settings, validated with INVALID_ARGUMENT naming ``spec.objectives[i].<field>``, and
GetBest's Pareto front."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from controller.objectives import METRICS, Objective, normalize_objectives, parse_objective
from controller.pareto import DEFAULT_METRICS, pareto_front
from protos.errors import FailedPreconditionError, InvalidArgumentError
from protos.v1 import search_pb2 as sp


def check_objectives(objectives: Sequence[sp.Objective]) -> tuple[Objective, ...]:
    """Each objective valid and each metric once, else InvalidArgumentError naming the field."""
    out: list[Objective] = []
    for i, msg in enumerate(objectives):
        try:
            objective = Objective(msg.metric, msg.target,
                                  msg.weight if msg.HasField("weight") else None, msg.hard)
        except ValueError as exc:
            field, _, rest = str(exc).partition(":")
            raise InvalidArgumentError(f"spec.objectives[{i}].{field}:{rest}") from None
        if any(o.metric == objective.metric for o in out):
            raise InvalidArgumentError(f"spec.objectives[{i}].metric: {objective.metric} has an "
                                       f"objective already; give each metric once")
        out.append(objective)
    return tuple(out)


def objectives_settings(objectives: Iterable[sp.Objective]) -> list[dict[str, Any]]:
    """The job settings of wire objectives (mappings ``build_config`` reads), unvalidated."""
    out = []
    for msg in objectives:
        doc: dict[str, Any] = {"metric": msg.metric, "target": msg.target, "hard": msg.hard}
        if msg.HasField("weight"):
            doc["weight"] = msg.weight
        out.append(doc)
    return out


def objectives_to_proto(settings: object) -> list[sp.Objective]:
    """Wire objectives of job settings (mappings or ``METRIC:target=T...`` strings)."""
    return [sp.Objective(metric=o.metric, target=o.target, weight=o.w, hard=o.hard)
            for o in (parse_objective(text) for text in normalize_objectives(settings))]


def pareto_of_trials(trials: Iterable[dict[str, Any]], metrics: Sequence[str]
                     ) -> list[dict[str, Any]]:
    """GetBest's Pareto front of a job's trial records over ``metrics`` (none: params);
    InvalidArgumentError for an unknown metric, FailedPreconditionError when no trained child
    of the job has a metric measured."""
    chosen = list(metrics) or list(DEFAULT_METRICS)
    for i, metric in enumerate(chosen):
        if metric not in METRICS:
            raise InvalidArgumentError(f"objectives[{i}]: {metric!r} is not one of "
                                       f"{', '.join(METRICS)}")
        if metric in chosen[:i]:
            raise InvalidArgumentError(f"objectives[{i}]: {metric} is named twice")
    done = [t for t in trials if t.get("status") == "succeeded"]
    for metric in chosen:
        if done and not any(metric in t.get("metrics", {}) for t in done):
            raise FailedPreconditionError(
                f"objectives: no trained child of this job has {metric} measured (the nb201 "
                f"evaluator measures latency only for jobs with a latency_ms objective)")
    return pareto_front(done, chosen)
