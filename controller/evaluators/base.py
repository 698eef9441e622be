"""The evaluator contract: how a child architecture gets its reward."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from protos.types import Architecture, Trial


class EvaluatorError(RuntimeError):
    """The evaluator cannot run at all (missing or malformed data); the message says how to fix."""


class EvaluationFailed(RuntimeError):
    """One child failed (bad op, NaN loss, out of memory); the search records it and goes on."""


@dataclass(frozen=True)
class Evaluation:
    """A child's reward (validation accuracy in [0, 1]) and what else was measured.

    ``cost`` is the share of one full training it took (below 1 when stopped early); the
    search's budget is charged that much.
    """

    reward: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)  # e.g. {"weights": path}
    cost: float = 1.0


class Evaluator(ABC):
    """Trains (or looks up) children. ``evaluate`` sees only training and validation data; the test
    set is touched once, by ``test_accuracy``, for the architecture a search reports."""

    name: str = ""

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """Identifies dataset and recipe: results are shared only between equal keys."""

    @abstractmethod
    def evaluate(self, arch: Architecture) -> Evaluation:
        """The reward of one architecture; raises EvaluationFailed for a failed child."""

    def evaluate_trial(self, trial: Trial) -> Evaluation:
        """The reward of one trial (evaluators that dispatch trials use its id)."""
        return self.evaluate(trial.architecture)

    def describe(self) -> dict[str, object]:
        """What result.json records about this evaluator."""
        return {"name": self.name, "cache_key": self.cache_key}

    def test_accuracy(self, arch: Architecture) -> float | None:
        """Test accuracy in [0, 1] of a reported architecture, when the evaluator has one."""
        return None
