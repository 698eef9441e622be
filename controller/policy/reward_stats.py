"""What a REINFORCE learner knows besides its parameters: the EMA baseline, the running scale of
its advantages and the rewards the rank transform ranks against. It is what a resumed job must
get back to learn on where it stopped (``state``/``restore``: a small JSON document the job
store keeps beside the policy), and what a job's replicas share (one policy, so one estimate of
its expected reward: each replica alone would see 1/K of the rewards, a K times noisier
baseline and rank statistics over a K-th of the job's results).

Bounded: the rank transform's rewards are a fixed-size uniform sample of every reward seen
(reservoir sampling, Vitter's algorithm R), kept sorted. A reward's quantile in a uniform sample
estimates its quantile among all rewards (error about ``1/sqrt(RESERVOIR)``), while the memory,
the cost of each insertion and the size of the checkpoint written at every policy update stay
constant however long the job runs; a list of every reward would make each of those grow with
the number of trials. Until ``RESERVOIR`` rewards were seen the sample is all of them, so the
transform is the exact quantile. Which element a new reward replaces is drawn from a generator
seeded by the count of rewards seen, so a restored state goes on exactly as it would have.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

RESERVOIR = 1024  # rewards the rank transform keeps at most (a uniform sample of all seen)


class RewardStats:
    """The baseline, the advantage scale and the sample of rewards seen (thread-safe: a job's
    replicas share one)."""

    def __init__(self, baseline_decay: float = 0.95, capacity: int = RESERVOIR) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.decay = baseline_decay
        self.capacity = capacity
        self.baseline: float | None = None
        self.sq_adv: float | None = None  # running mean of squared advantages
        self.seen: list[float] = []  # sorted: a uniform sample of the rewards seen
        self.count = 0  # rewards seen (those in ``seen`` and those sampled out)
        self.lock = threading.RLock()

    def rank(self, rewards: Sequence[float]) -> list[float]:
        """Each reward's quantile (in [0, 1]) among the rewards seen, these included."""
        with self.lock:
            for r in rewards:
                self._add(float(r))
            n = len(self.seen)
            return [(bisect.bisect_left(self.seen, r) + bisect.bisect_right(self.seen, r))
                    / (2 * n) for r in rewards]

    def _add(self, reward: float) -> None:
        self.count += 1
        if len(self.seen) < self.capacity:
            bisect.insort(self.seen, reward)
            return
        slot = random.Random(self.count).randrange(self.count)
        if slot < self.capacity:  # kept with probability capacity / count; evicts one at random
            del self.seen[slot]
            bisect.insort(self.seen, reward)

    def advantages(self, rewards: Sequence[float], normalize: bool) -> tuple[float, Tensor]:
        """The baseline before this batch and each reward's advantage against it; the EMA
        baseline (and the advantage scale) then move on by the batch."""
        with self.lock:
            if self.baseline is None:
                self.baseline = sum(rewards) / len(rewards)
            base = self.baseline
            adv = torch.tensor([r - base for r in rewards], dtype=torch.float32)
            for r in rewards:
                self.baseline = self.decay * self.baseline + (1 - self.decay) * r
            if normalize:
                sq = float((adv**2).mean())
                self.sq_adv = sq if self.sq_adv is None else (self.decay * self.sq_adv
                                                              + (1 - self.decay) * sq)
                adv = adv / (math.sqrt(self.sq_adv) + 1e-8)
            return base, adv

    def state(self) -> dict[str, Any]:
        """A JSON document of everything above (bounded: at most ``capacity`` rewards)."""
        with self.lock:
            return {"baseline": self.baseline, "sq_adv": self.sq_adv, "count": self.count,
                    "seen": list(self.seen)}

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Take up a ``state`` document (a resumed job's learner goes on where it was)."""
        with self.lock:
            baseline, sq_adv = doc.get("baseline"), doc.get("sq_adv")
            self.baseline = None if baseline is None else float(baseline)
            self.sq_adv = None if sq_adv is None else float(sq_adv)
            seen = sorted(float(r) for r in doc.get("seen", ()))
            step = len(seen) / self.capacity  # a larger sample thinned evenly
            self.seen = seen if step <= 1 else [seen[int(i * step)] for i in range(self.capacity)]
            self.count = max(int(doc.get("count", len(self.seen))), len(self.seen))
