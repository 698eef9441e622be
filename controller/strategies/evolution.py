"""Regularized evolution (Real et al. 2019): tournament selection, one-decision mutation, aging."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence

from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial, TrialResult


class EvolutionStrategy(Strategy):
    """Population of ``population`` most recent members; parents by tournaments of ``sample``."""

    name = "evolution"

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 10, sample: int = 3,
                 job_id: str = "") -> None:
        if population < 1 or not 1 <= sample <= population:
            raise ValueError("evolution needs population >= 1 and 1 <= sample <= population")
        super().__init__(space, job_id)
        self.rng = random.Random(seed)
        self.population_size = population
        self.sample_size = sample
        self.population: deque[tuple[tuple[int, ...], float]] = deque(maxlen=population)
        self._issued = 0

    def _mutate(self, actions: tuple[int, ...]) -> tuple[int, ...]:
        decisions = self.space.decisions
        mutable = [t for t, d in enumerate(decisions) if d.num_choices > 1]
        t = self.rng.choice(mutable)
        new = list(actions)
        new[t] = self.rng.choice([c for c in range(decisions[t].num_choices) if c != actions[t]])
        return tuple(new)

    def suggest(self, n: int = 1) -> list[Trial]:
        trials = []
        for _ in range(n):
            if self._issued < self.population_size or not self.population:
                arch = self.space.sample_random(self.rng)
                trials.append(self._new_trial(arch))
            else:
                contenders = self.rng.sample(list(self.population), self.sample_size)
                parent = max(contenders, key=lambda member: member[1])[0]
                child = self._mutate(parent)
                trials.append(self._new_trial(self.space.decode(child), child))
            self._issued += 1
        return trials

    def report(self, trial_id: str, result: TrialResult) -> None:
        trial = self._take(trial_id, result)
        self.population.append((trial.actions, result.reward))

    def resume(self, history: Iterable[tuple[Sequence[int], float]]) -> None:
        """The population is the last ``population`` members evaluated (aging), as if the
        run had not stopped."""
        for actions, reward in history:
            self.population.append((tuple(actions), reward))
            self._issued += 1

    def stats(self) -> dict[str, float]:
        if not self.population:
            return {}
        return {"population_best": max(r for _, r in self.population)}
