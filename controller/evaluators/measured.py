"""An evaluator whose results also carry a child's costs, measured by a function of the
architecture (the NB201 table has accuracies only; its costs come from building the network)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from controller.evaluators.base import Evaluation, Evaluator
from protos.types import Architecture, Trial

Measure = Callable[[Architecture], Mapping[str, float]]


class MeasuredEvaluator(Evaluator):
    """``inner``'s evaluation with ``measure(arch)`` merged into its metrics.

    ``tag`` names what is measured beyond what every result of ``inner`` has (e.g. ``latency``,
    measured only on request): it joins the cache key, so a cached result without it is never
    served to a search that needs it.
    """

    def __init__(self, inner: Evaluator, measure: Measure, tag: str = "") -> None:
        self.inner = inner
        self.measure = measure
        self.tag = tag
        self.name = inner.name

    @property
    def cache_key(self) -> str:
        return f"{self.inner.cache_key}+{self.tag}" if self.tag else self.inner.cache_key

    def evaluate(self, arch: Architecture) -> Evaluation:
        return self._with_costs(arch, self.inner.evaluate(arch))

    def evaluate_trial(self, trial: Trial) -> Evaluation:
        return self._with_costs(trial.architecture, self.inner.evaluate_trial(trial))

    def _with_costs(self, arch: Architecture, evaluation: Evaluation) -> Evaluation:
        return Evaluation(evaluation.reward, {**evaluation.metrics, **self.measure(arch)},
                          evaluation.artifacts, evaluation.cost)

    def describe(self) -> dict[str, object]:
        return {**self.inner.describe(), "cache_key": self.cache_key}

    def test_accuracy(self, arch: Architecture) -> float | None:
        return self.inner.test_accuracy(arch)
