"""Sampling without replacement at the sequence level: the controller never proposes an
architecture's action sequence twice in one search.

A REINFORCE controller that has learned what it likes keeps proposing it: on NAS-Bench-201 the
default controller trained 69 children of a budget of 100 and then proposed 7,108 architectures
it had already trained. Sampling without replacement (Kool et al. 2019, "Stochastic Beams and
Where to Find Them"; Shi et al. 2020, "Incremental Sampling Without Replacement for Sequence
Models") removes every sequence already drawn from the distribution: at each decision, the
choices whose every completion was proposed before get probability zero and the rest are
renormalised. A policy that has converged then proposes the most likely architecture it has not
tried: the neighbourhood of its mode, best first, which is what a search with budget left should
spend it on. The policy gradient is taken on the distribution the sequence was drawn from (the
masks recorded at sampling are applied again when it is scored), so REINFORCE stays unbiased for
the policy as sampled.

Which choices are exhausted is counted per prefix of the sequence. A prefix of length k heads
``size(k)`` = the product of the later decisions' choice counts; it can only be exhausted once
that many sequences under it were drawn, so only prefixes with ``size(k) <= track`` are
counted (a hash of the prefix -> sequences drawn under it): a few per sequence on large spaces,
all of them on NAS-Bench-201's 15,625 cells. A prefix beyond the tracked ones that is exhausted
anyway (more than ``track`` draws under one prefix) surfaces as a dead end, where every choice of
a tracked decision is masked; the sampler then draws again.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence


class NoveltyIndex:
    """The distinct action sequences drawn so far (thread-safe: a job's replicas share one)."""

    def __init__(self, choices: Sequence[int], track: int = 4096) -> None:
        if not choices or min(choices) < 1:
            raise ValueError("choices: every decision needs at least one choice")
        if track < 1:
            raise ValueError(f"track: must be >= 1, got {track}")
        self.choices = tuple(choices)
        steps = len(self.choices)
        # size[k]: sequences under a prefix of length k (size[steps] = 1: the sequence itself)
        self.size = [math.prod(self.choices[k:]) for k in range(steps + 1)]
        self.first = min(k for k in range(steps + 1) if self.size[k] <= track)
        self._counts: dict[int, int] = {}
        self._distinct = 0
        # architectures (canonical hashes) proposed -> their reward (None: not back yet)
        self._classes: dict[str, float | None] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many distinct sequences were added."""
        return self._distinct

    @property
    def total(self) -> int:
        """How many sequences the space has."""
        return self.size[0]

    def exhausted(self) -> bool:
        """Whether every sequence of the space was drawn."""
        return self._distinct >= self.size[0]

    def tracks(self, length: int) -> bool:
        """Whether prefixes of ``length`` are counted (a choice at step ``length - 1`` can be
        masked)."""
        return length >= self.first

    def add(self, actions: Sequence[int]) -> bool:
        """Record a drawn sequence; False if it was drawn before (nothing changes)."""
        seq = tuple(actions)
        if len(seq) != len(self.choices):
            raise ValueError(f"actions: expected {len(self.choices)} decisions, got {len(seq)}")
        with self._lock:
            if self._counts.get(hash(seq), 0):
                return False
            for k in range(self.first, len(seq) + 1):
                key = hash(seq[:k])
                self._counts[key] = self._counts.get(key, 0) + 1
            self._distinct += 1
            return True

    def seen(self, actions: Sequence[int]) -> bool:
        """Whether this sequence was drawn before."""
        with self._lock:
            return bool(self._counts.get(hash(tuple(actions)), 0))

    def claim(self, key: str) -> tuple[bool, float | None]:
        """Claim the architecture of canonical hash ``key`` for a proposal: (True, None) when
        nobody proposed it yet (the caller does now), else (False, its reward, or None while
        its result is not back)."""
        with self._lock:
            if key not in self._classes:
                self._classes[key] = None
                return True, None
            return False, self._classes[key]

    def settle(self, key: str, reward: float) -> None:
        """The reward of a claimed architecture."""
        with self._lock:
            self._classes[key] = reward

    @property
    def architectures(self) -> int:
        """How many distinct architectures (canonical hashes) were claimed."""
        return len(self._classes)

    def uniform(self, rng: random.Random) -> tuple[int, ...] | None:
        """A sequence drawn uniformly among the choices left at each decision (no policy);
        None on a dead end (every choice of a tracked decision masked)."""
        row: tuple[int, ...] = ()
        for n in self.choices:
            blocked = self.full(row)
            left = [c for c in range(n) if c not in blocked]
            if not left:
                return None
            row = (*row, rng.choice(left))
        return row

    def full(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        """The choices after ``prefix`` whose every completion was drawn (only when prefixes
        one longer are tracked; else none)."""
        k = len(prefix) + 1
        if k < self.first:
            return ()
        limit = self.size[k]
        with self._lock:
            return tuple(c for c in range(self.choices[k - 1])
                         if self._counts.get(hash((*prefix, c)), 0) >= limit)
