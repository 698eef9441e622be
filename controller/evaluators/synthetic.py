"""A benchmark instrument: children that cost nothing but behave like real ones.

Rewards come from a seeded landscape over the space's decisions with a planted, known optimum
(``controller.evaluators.landscape``); params, FLOPs and latency from the choices
(``controller.evaluators.synthetic_costs``). Microseconds per child, unless ``simulate_seconds``
makes each evaluation take that long, like a training.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import time
from dataclasses import dataclass
from functools import cached_property

from controller.evaluators.base import Evaluation, Evaluator
from controller.evaluators.landscape import OPTIMUM_REWARD, RANDOM_MEAN_REWARD, Landscape
from controller.evaluators.synthetic_costs import CostTable
from controller.spaces.base import SearchSpace
from protos.types import Architecture

DATASET = "synthetic"  # the only dataset of this evaluator
TEST_OFFSET = 0.01  # test accuracy = reward + a seeded per-architecture offset in [-this, this)
REFERENCE_SAMPLES = 1000  # random architectures described for reference


@dataclass(frozen=True)
class Optimum:
    """The best architecture of a landscape and its reward."""

    arch: Architecture
    arch_string: str
    reward: float

    def __post_init__(self) -> None:
        if not 0 <= self.reward <= 1:
            raise ValueError(f"reward: must be in [0, 1], got {self.reward}")


def space_label(space: SearchSpace) -> str:
    """The space with its size options, e.g. ``nasnet:blocks=5``, ``macro:layers=6:strides``."""
    spec = space.spec
    parts = [spec.name]
    if spec.num_blocks is not None:
        parts.append(f"blocks={spec.num_blocks}")
    if spec.num_layers is not None:
        parts.append(f"layers={spec.num_layers}")
    if spec.predict_strides:
        parts.append("strides")
    return ":".join(parts)


class SyntheticEvaluator(Evaluator):
    """Rewards from the landscape of (space, ``landscape_seed``); equal architectures, equal
    rewards. Thread-safe: evaluating only reads."""

    name = "synthetic"

    def __init__(self, space: SearchSpace, landscape_seed: int = 0,
                 simulate_seconds: float = 0.0) -> None:
        if landscape_seed < 0:
            raise ValueError(f"landscape_seed: must be >= 0, got {landscape_seed}")
        if not (math.isfinite(simulate_seconds) and simulate_seconds >= 0):
            raise ValueError(f"simulate_seconds: must be >= 0, got {simulate_seconds}")
        self.space = space
        self.landscape_seed = landscape_seed
        self.simulate_seconds = simulate_seconds
        self._seed = f"synthetic|{space_label(space)}|{landscape_seed}"
        self.landscape = Landscape.draw([d.num_choices for d in space.decisions], self._seed)
        self.costs = CostTable.of(space.decisions)

    @property
    def cache_key(self) -> str:
        return f"synthetic:{space_label(self.space)}:landscape{self.landscape_seed}"

    def evaluate(self, arch: Architecture) -> Evaluation:
        if self.simulate_seconds > 0:  # stand in for a child's training time
            time.sleep(self.simulate_seconds)
        actions = self.space.encode(arch)
        return Evaluation(reward=self.landscape.reward(actions),
                          metrics={**self.costs.metrics(actions),
                                   "train_seconds": self.simulate_seconds})

    def test_accuracy(self, arch: Architecture) -> float | None:
        """The reward moved by a seeded offset of this architecture (the test split's noise)."""
        actions = self.space.encode(arch)
        digest = hashlib.blake2b(f"{self._seed}|test|{actions}".encode(), digest_size=8)
        unit = int.from_bytes(digest.digest(), "big") / 2.0**64
        return min(1.0, max(0.0, self.landscape.reward(actions) + TEST_OFFSET * (2 * unit - 1)))

    def optimum(self) -> Optimum:
        """The landscape's planted optimum: no architecture of the space scores higher."""
        arch = self.space.decode(self.landscape.optimum)
        return Optimum(arch, self.space.to_string(arch), self.landscape.reward(
            self.landscape.optimum))

    @cached_property
    def _random_rewards(self) -> list[float]:
        rng = random.Random(f"{self._seed}|reference")
        choices = [d.num_choices for d in self.space.decisions]
        return sorted(self.landscape.reward([int(rng.random() * k) for k in choices])
                      for _ in range(REFERENCE_SAMPLES))

    def describe(self) -> dict[str, object]:
        """The landscape (seed, size, model), its optimum and random architectures' rewards,
        for reporting a search's distance to the optimum."""
        best = self.optimum()
        rewards = self._random_rewards
        return {"name": self.name, "cache_key": self.cache_key, "dataset": DATASET,
                "space": space_label(self.space), "landscape_seed": self.landscape_seed,
                "decisions": len(self.landscape.unary), "pairs": len(self.landscape.pairs),
                "model": f"reward = sigmoid(a*z + b), z = (score - mean random) / (optimum - "
                         f"mean random), score = sum_i u_i(a_i) + sum_pairs v_ij(a_i, a_j); "
                         f"{RANDOM_MEAN_REWARD} at the mean, {OPTIMUM_REWARD} at the optimum",
                "optimum": {"arch": best.arch_string, "reward": best.reward,
                            "test_accuracy": self.test_accuracy(best.arch)},
                "random_reward": {"samples": REFERENCE_SAMPLES,
                                  "mean": round(statistics.fmean(rewards), 4),
                                  "p90": round(rewards[int(0.9 * len(rewards))], 4),
                                  "max": round(rewards[-1], 4)},
                "costs": "modelled from the choices on NAS-Bench-201's skeleton, not measured",
                "simulate_seconds": self.simulate_seconds}
