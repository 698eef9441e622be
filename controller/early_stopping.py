"""Early stopping of children: the median stopping rule and asynchronous successive halving.

Both see one job's children as they report validation accuracy after each epoch, and answer
whether the reporting child should stop now. Decisions are idempotent: a replayed report (a retry
after a lost acknowledgement, or a retried attempt that reaches an epoch again) gets the same
answer and records nothing twice.

- ``median`` (Golovin et al. 2017, Google Vizier): after ``grace_epochs``, stop a child whose best
  accuracy so far is below the median of the running means, at the same epoch, of the children
  that finished, once ``min_completed`` have.
- ``asha`` (Li et al. 2020): rungs at ``grace_epochs * eta**k`` epochs below the full training; a
  child reaching a rung continues only if it is in the top ``1/eta`` of the accuracies recorded at
  that rung so far (promotion never waits for a full rung).
"""

from __future__ import annotations

import statistics
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

EARLY_STOPPING = ("none", "median", "asha")


@dataclass(frozen=True)
class Decision:
    """Whether to stop, and why (for the trial's record)."""

    stop: bool
    reason: str = ""


CONTINUE = Decision(False)


class EarlyStopper(ABC):
    """Watches one job's learning curves. Thread-safe."""

    name = ""

    def __init__(self, max_epochs: int, grace_epochs: int) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs: must be >= 1, got {max_epochs}")
        if grace_epochs < 1:
            raise ValueError(f"grace_epochs: must be >= 1, got {grace_epochs}")
        self.max_epochs = max_epochs
        self.grace_epochs = grace_epochs
        self._curves: dict[str, list[float]] = {}
        self._decided: dict[str, dict[int, Decision]] = {}  # trial -> epoch -> decision
        self._lock = threading.Lock()

    def report(self, trial_id: str, epoch: int, accuracy: float) -> Decision:
        """``trial_id`` reached ``epoch`` (1 = after the first) with ``accuracy``."""
        if epoch < 1:
            raise ValueError(f"epoch: must be >= 1, got {epoch}")
        with self._lock:
            decided = self._decided.setdefault(trial_id, {})
            if epoch in decided:
                return decided[epoch]
            curve = self._curves.setdefault(trial_id, [])
            if epoch != len(curve) + 1:  # a retried attempt catching up, or a gap: no decision
                return CONTINUE
            curve.append(accuracy)
            decision = (self._decide(trial_id, curve) if epoch < self.max_epochs else CONTINUE)
            decided[epoch] = decision
            if decision.stop or epoch == self.max_epochs:
                self._finished(trial_id, curve)
            return decision

    def stopped(self, trial_id: str) -> int | None:
        """The epoch at which ``trial_id`` was told to stop, if it was."""
        with self._lock:
            hits = [e for e, d in self._decided.get(trial_id, {}).items() if d.stop]
            return min(hits) if hits else None

    def forget(self, trial_id: str) -> None:
        """Drop ``trial_id``'s curve and decisions (it finished: nobody replays its reports
        to this rule again). What it contributed to the rule (a finished curve, a rung's
        accuracy) stays."""
        with self._lock:
            self._curves.pop(trial_id, None)
            self._decided.pop(trial_id, None)

    @abstractmethod
    def _decide(self, trial_id: str, curve: list[float]) -> Decision:
        """Decide for a child whose curve just grew (before its last epoch); lock held."""

    def _finished(self, trial_id: str, curve: list[float]) -> None:  # noqa: B027 - optional
        """A child stopped or trained all its epochs; lock held."""


class MedianStoppingRule(EarlyStopper):
    """Stop below the median of finished children's running means at the same epoch."""

    name = "median"

    def __init__(self, max_epochs: int, grace_epochs: int = 1, min_completed: int = 3) -> None:
        super().__init__(max_epochs, grace_epochs)
        if min_completed < 1:
            raise ValueError(f"min_completed: must be >= 1, got {min_completed}")
        self.min_completed = min_completed
        self._completed: list[list[float]] = []

    def _decide(self, trial_id: str, curve: list[float]) -> Decision:
        epoch = len(curve)
        if epoch < self.grace_epochs:
            return CONTINUE
        means = [sum(c[:epoch]) / epoch for c in self._completed if len(c) >= epoch]
        if len(means) < self.min_completed:
            return CONTINUE
        median = statistics.median(means)
        best = max(curve)
        if best < median:
            return Decision(True, f"median: best accuracy {best:.4f} after {epoch} epochs is "
                                  f"below the median {median:.4f} of {len(means)} finished "
                                  f"children's running means")
        return CONTINUE

    def _finished(self, trial_id: str, curve: list[float]) -> None:
        if len(curve) == self.max_epochs:  # only full curves define the median
            self._completed.append(list(curve))


class SuccessiveHalving(EarlyStopper):
    """ASHA: at each rung keep the top 1/eta of the accuracies recorded there so far."""

    name = "asha"

    def __init__(self, max_epochs: int, grace_epochs: int = 1, eta: int = 3) -> None:
        super().__init__(max_epochs, grace_epochs)
        if eta < 2:
            raise ValueError(f"eta: must be >= 2, got {eta}")
        self.eta = eta
        self.rungs: list[int] = []
        r = grace_epochs
        while r < max_epochs:
            self.rungs.append(r)
            r *= eta
        self._recorded: dict[int, list[float]] = {r: [] for r in self.rungs}

    def _decide(self, trial_id: str, curve: list[float]) -> Decision:
        epoch = len(curve)
        if epoch not in self._recorded:
            return CONTINUE
        recorded = self._recorded[epoch]
        value = curve[-1]
        cutoff = _quantile(recorded, 1 - 1 / self.eta) if recorded else None
        recorded.append(value)
        if cutoff is not None and value < cutoff:
            return Decision(True, f"asha: accuracy {value:.4f} at rung {epoch} epochs is below "
                                  f"the top-1/{self.eta} cutoff {cutoff:.4f} of "
                                  f"{len(recorded) - 1} children")
        return CONTINUE


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), q in [0, 1]."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def create_stopper(name: str, max_epochs: int, grace_epochs: int = 1, eta: int = 3,
                   min_completed: int = 3) -> EarlyStopper | None:
    """The rule ``name`` (one of EARLY_STOPPING); None for "none"."""
    factories: dict[str, Callable[[], EarlyStopper | None]] = {
        "none": lambda: None,
        "median": lambda: MedianStoppingRule(max_epochs, grace_epochs, min_completed),
        "asha": lambda: SuccessiveHalving(max_epochs, grace_epochs, eta),
    }
    if name not in factories:
        raise ValueError(f"early_stopping: {name!r} is not one of {', '.join(EARLY_STOPPING)}")
    return factories[name]()
