"""Multi-objective search on the wire: a spec's objectives (``nas.v1.Objective``) to and from
job settings, validated with INVALID_ARGUMENT naming ``spec.objectives[i].<field>`` (GetBest's
Pareto front is kept by the job store: ``JobStore.pareto``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from controller.objectives import Objective, normalize_objectives, parse_objective
from protos.errors import InvalidArgumentError
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
