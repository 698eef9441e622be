"""Random search: every decision uniform."""

from __future__ import annotations

import random

from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial, TrialResult


class RandomStrategy(Strategy):
    """Uniformly random architectures."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0, job_id: str = "") -> None:
        super().__init__(space, job_id)
        self.rng = random.Random(seed)

    def suggest(self, n: int = 1) -> list[Trial]:
        return [self._new_trial(self.space.sample_random(self.rng)) for _ in range(n)]

    def report(self, trial_id: str, result: TrialResult) -> None:
        self._take(trial_id, result)
