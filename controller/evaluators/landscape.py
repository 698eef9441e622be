"""A seeded reward landscape over a fixed sequence of categorical decisions, with a planted,
known optimum: the synthetic evaluator's model (no training, microseconds per architecture).

score(a) = sum_i u_i(a_i) + sum_{(i, j) in P} v_ij(a_i, a_j). Each decision has an importance
w_i ~ Exp(1) and u_i(c) = w_i * U[0, 1), except u_i(a*_i) = w_i; each pair of P (every decision
interacts with one or two others) has a weight w_ij ~ PAIR_SCALE * Exp(1) and v_ij(c, d) =
w_ij * U[0, 1), except v_ij(a*_i, a*_j) = w_ij. So a* maximises every term at once: it is the
global optimum and its score is known exactly. reward(a) = sigmoid(ALPHA * z + BETA) with
z = (score(a) - mean) / (best - mean), ``mean`` the exact expected score of a uniformly random
architecture: the optimum gets OPTIMUM_REWARD, the random mean RANDOM_MEAN_REWARD, and every
reward lies in (0, 1) like a validation accuracy.

Only ``random.Random(str).random()`` draws the landscape: Python guarantees that sequence across
versions, so a landscape seed means the same landscape everywhere.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

OPTIMUM_REWARD = 0.95
RANDOM_MEAN_REWARD = 0.70  # the reward of an architecture scoring the mean of random ones
BETA = math.log(RANDOM_MEAN_REWARD / (1 - RANDOM_MEAN_REWARD))
ALPHA = math.log(OPTIMUM_REWARD / (1 - OPTIMUM_REWARD)) - BETA
PAIR_SCALE = 0.5  # pair weights relative to decision importances


@dataclass(frozen=True)
class Pair:
    """One interaction v_ij: decisions ``i`` < ``j``; ``values[c * width + d]`` = v_ij(c, d)."""

    i: int
    j: int
    width: int  # choices of decision j
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.i < self.j:
            raise ValueError(f"pair: need 0 <= i < j, got ({self.i}, {self.j})")
        if self.width < 1 or len(self.values) % self.width:
            raise ValueError(f"pair ({self.i}, {self.j}): {len(self.values)} values are not "
                             f"rows of width {self.width}")


@dataclass(frozen=True)
class Landscape:
    """Unary terms per decision, sparse pair terms and the planted optimum (see the module)."""

    unary: tuple[tuple[float, ...], ...]
    pairs: tuple[Pair, ...]
    optimum: tuple[int, ...]
    mean: float  # expected score of a uniformly random action sequence (exact)
    best: float  # score of ``optimum``, the maximum

    def __post_init__(self) -> None:
        if len(self.optimum) != len(self.unary):
            raise ValueError(f"optimum: {len(self.optimum)} actions for {len(self.unary)} "
                             f"decisions")
        for t, (a, row) in enumerate(zip(self.optimum, self.unary, strict=True)):
            if not 0 <= a < len(row):
                raise ValueError(f"optimum[{t}]: {a} is not in [0, {len(row)})")
        for p in self.pairs:
            if p.j >= len(self.unary) or len(p.values) != len(self.unary[p.i]) * p.width:
                raise ValueError(f"pair ({p.i}, {p.j}): does not fit the decisions")
        if self.best < self.mean:
            raise ValueError(f"best: {self.best} is below the mean score {self.mean}")

    @classmethod
    def draw(cls, choices: Sequence[int], seed: str) -> Landscape:
        """The landscape of decisions with ``choices[t]`` choices each, drawn from ``seed``."""
        if any(k < 1 for k in choices):
            raise ValueError(f"choices: every decision needs a choice, got {list(choices)}")
        rng = random.Random(seed)
        optimum = tuple(int(rng.random() * k) for k in choices)
        unary = tuple(_planted(_importance(rng), k, star, rng)
                      for k, star in zip(choices, optimum, strict=True))
        pairs = tuple(Pair(i, j, choices[j],
                           _planted(PAIR_SCALE * _importance(rng), choices[i] * choices[j],
                                    optimum[i] * choices[j] + optimum[j], rng))
                      for i, j in _interactions(choices, rng))
        mean = sum(sum(row) / len(row) for row in unary) + \
            sum(sum(p.values) / len(p.values) for p in pairs)
        return cls(unary, pairs, optimum, mean, _score(unary, pairs, optimum))

    def score(self, actions: Sequence[int]) -> float:
        """The raw score sum_i u_i(a_i) + sum_P v_ij(a_i, a_j) (no range checks: hot path)."""
        return _score(self.unary, self.pairs, actions)

    def reward(self, actions: Sequence[int]) -> float:
        """The score squashed into (0, 1): OPTIMUM_REWARD at the optimum (see the module)."""
        spread = self.best - self.mean
        z = (self.score(actions) - self.mean) / spread if spread > 0 else 1.0
        return 1.0 / (1.0 + math.exp(-(ALPHA * z + BETA)))


def _score(unary: tuple[tuple[float, ...], ...], pairs: tuple[Pair, ...],
           actions: Sequence[int]) -> float:
    total = sum(row[a] for row, a in zip(unary, actions, strict=True))
    return total + sum(p.values[actions[p.i] * p.width + actions[p.j]] for p in pairs)


def _importance(rng: random.Random) -> float:
    """An Exp(1) weight: a few decisions matter much more than most, as in real spaces."""
    return -math.log(1.0 - rng.random())


def _planted(weight: float, size: int, star: int, rng: random.Random) -> tuple[float, ...]:
    """``size`` values weight * U[0, 1), the one at ``star`` raised to ``weight``, the maximum."""
    values = [weight * rng.random() for _ in range(size)]
    values[star] = weight
    return tuple(values)


def _interactions(choices: Sequence[int], rng: random.Random) -> list[tuple[int, int]]:
    """Sparse pairs: each decision with a real choice meets one or two others (sorted, unique)."""
    live = [t for t, k in enumerate(choices) if k > 1]
    pairs: set[tuple[int, int]] = set()
    for n, i in enumerate(live):
        for _ in range(1 + (rng.random() < 0.5) if len(live) > 1 else 0):
            k = int(rng.random() * (len(live) - 1))
            j = live[k + 1 if k >= n else k]  # any live decision but i
            pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)
