"""Multi-objective rewards: accuracy traded against a child's size or speed, as MnasNet does.

An objective names a measured metric and a target. The reward of a trained child becomes

    reward = accuracy * prod_i (value_i / target_i) ** w_i

with ``w_i`` the objective's weight: a soft constraint uses it on both sides of the target
(MnasNet: w = -0.07, so a model twice the target loses about 5% of its reward and one half the
target gains as much); a hard constraint uses 0 under the target and ``w`` (-1 unless given)
over it, MnasNet's hard form. The evaluator's own reward stays in the metrics as ``accuracy``.

Objectives are written ``METRIC:target=T[:w=W][:hard]`` on the command line and in YAML, or as
a mapping ``{metric, target, weight, hard}``; the config keeps their canonical strings so it
stays plain JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.evaluators.base import EvaluatorError

# metric -> what it measures (every evaluator reports these for each trained child)
METRICS = {
    "params": "parameters of the child network",
    "flops": "multiply-accumulates of one forward pass of one image",
    "latency_ms": "median milliseconds of a batch-1 forward pass on the evaluating device",
}
SOFT_WEIGHT = -0.07  # MnasNet's alpha = beta
HARD_WEIGHT = -1.0  # MnasNet's beta of the hard constraint
ACCURACY = "accuracy"  # the metric that keeps the evaluator's reward when it is shaped
SYNTAX = "METRIC:target=T[:w=W][:hard]"


@dataclass(frozen=True)
class Objective:
    """Keep ``metric`` near ``target`` (soft) or under it (hard); ``weight`` None: the default
    of the form (-0.07 soft, -1 hard)."""

    metric: str
    target: float
    weight: float | None = None
    hard: bool = False

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        if not (isinstance(self.target, int | float) and math.isfinite(self.target)
                and self.target > 0):
            raise ValueError(f"target: must be a finite number > 0, got {self.target!r}")
        weight = (HARD_WEIGHT if self.hard else SOFT_WEIGHT) if self.weight is None \
            else self.weight
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight < 0):
            raise ValueError(f"weight: must be a finite number < 0 (a larger {self.metric} "
                             f"must cost reward), got {weight!r}")
        object.__setattr__(self, "target", float(self.target))
        object.__setattr__(self, "weight", float(weight))

    @property
    def w(self) -> float:
        """The resolved weight (never None after construction)."""
        return float(self.weight if self.weight is not None else SOFT_WEIGHT)

    def factor(self, value: float) -> float:
        """The reward multiplier for a child whose metric is ``value`` (> 0)."""
        if not value > 0:
            raise ValueError(f"{self.metric}: a measured value must be > 0, got {value}")
        exponent = 0.0 if self.hard and value <= self.target else self.w
        return float((value / self.target) ** exponent)

    def __str__(self) -> str:
        text = f"{self.metric}:target={self.target:.12g}:w={self.w:.12g}"
        return text + (":hard" if self.hard else "")


def parse_objective(text: str) -> Objective:
    """``METRIC:target=T[:w=W][:hard]`` (``weight=`` also accepted); ValueError says what is
    wrong."""
    metric, *parts = [p.strip() for p in text.split(":")]
    values: dict[str, str] = {}
    hard = False
    for part in parts:
        key, eq, value = part.partition("=")
        if key == "hard" and not eq:
            hard = True
        elif key in ("target", "w", "weight") and eq:
            values["weight" if key == "w" else key] = value
        else:
            raise ValueError(f"cannot read {part!r}: expected {SYNTAX}")
    if "target" not in values:
        raise ValueError(f"target: missing, expected {SYNTAX}")
    numbers = {}
    for key, value in values.items():
        try:
            numbers[key] = float(value)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    return Objective(metric, numbers["target"], numbers.get("weight"), hard)


def objective_from_mapping(doc: Mapping[str, object]) -> Objective:
    """``{metric, target, weight?, hard?}`` (the YAML and wire form) as an Objective."""
    unknown = sorted(set(doc) - {"metric", "target", "weight", "hard"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key; known: metric, target, weight, hard")
    hard = doc.get("hard", False)
    if not isinstance(hard, bool):
        raise ValueError(f"hard: expected true or false, got {hard!r}")
    numbers: dict[str, float] = {}
    for key in ("target", "weight"):
        value = doc.get(key)
        if value is None and key == "weight":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        numbers[key] = float(value)
    return Objective(str(doc.get("metric", "")), numbers["target"], numbers.get("weight"), hard)


def normalize_objectives(value: object) -> tuple[str, ...]:
    """Config settings (a list of strings or mappings) as canonical strings; ValueError names
    the bad entry as ``objectives[i]`` and the flag that sets it."""
    if isinstance(value, str | Mapping) or not isinstance(value, Iterable):
        value = [value]
    out: list[str] = []
    for i, item in enumerate(value):
        try:
            objective = (objective_from_mapping(item) if isinstance(item, Mapping)
                         else parse_objective(str(item)))
        except ValueError as exc:
            raise ValueError(f"{_entry(i, item)}: {exc}") from None
        if any(parse_objective(o).metric == objective.metric for o in out):
            raise ValueError(f"{_entry(i, item)}: a second objective on {objective.metric}; "
                             f"give each metric once")
        out.append(str(objective))
    return tuple(out)


def _entry(i: int, item: object) -> str:
    """How an error names entry ``i``: the flag form too when it came as one."""
    return f"objectives[{i}]" if isinstance(item, Mapping) else \
        f"objectives[{i}] (--objective {item})"


def shaped_reward(accuracy: float, metrics: Mapping[str, float],
                  objectives: Sequence[Objective]) -> float:
    """``accuracy * prod (value/target)**w``; EvaluatorError names a metric the child lacks
    (the evaluator did not measure it)."""
    reward = accuracy
    for objective in objectives:
        if objective.metric not in metrics:
            raise EvaluatorError(f"{objective.metric}: not measured for this child (measured: "
                           f"{', '.join(sorted(metrics)) or 'nothing'})")
        reward *= objective.factor(float(metrics[objective.metric]))
    return reward


class RewardShaper:
    """Turns an evaluator's (reward, metrics) into the job's reward; the search applies it to
    fresh results and cache hits alike, so the cache keeps unshaped results every job can
    share."""

    def __init__(self, objectives: Sequence[Objective]) -> None:
        if not objectives:
            raise ValueError("objectives: a RewardShaper needs at least one")
        self.objectives = tuple(objectives)

    @classmethod
    def from_settings(cls, objectives: Iterable[str]) -> RewardShaper | None:
        """The shaper of a config's canonical objective strings; None without objectives."""
        parsed = [parse_objective(o) for o in objectives]
        return cls(parsed) if parsed else None

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics the objectives need."""
        return tuple(o.metric for o in self.objectives)

    def __call__(self, reward: float, metrics: Mapping[str, float]
                 ) -> tuple[float, dict[str, float]]:
        """The shaped reward, and the metrics with the unshaped one as ``accuracy``."""
        raw = dict(metrics)
        raw[ACCURACY] = reward
        return shaped_reward(reward, raw, self.objectives), raw
