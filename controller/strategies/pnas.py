"""PNAS (Liu et al. 2018): progressive search, smallest cells first, a surrogate picks the beam.

Step 1 trains every 1-block cell. Step b (2..B) expands each cell trained at step b-1 by every
choice of block b, ranks the new cells with the surrogate ensemble (trained on every cell
trained so far), and trains the top ``beam``; the surrogate's Kendall tau on those cells,
predicted before they trained, is the step's held-out rank correlation. After step B the next
best-ranked B-block candidates are trained while budget remains.

How each space's decisions form blocks is in ``controller.strategies.pnas_layouts``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from controller.strategies.pnas_layouts import LAYOUTS, PNAS_SPACES, BlockLayout, Prefix
from controller.strategies.surrogate import SURROGATES, SurrogateEnsemble, kendall_tau
from protos.types import Trial, TrialResult

__all__ = ["PNAS_SPACES", "SURROGATES", "BlockLayout", "PNASStrategy", "StepReport"]


@dataclass
class StepReport:
    """What one progressive step did: cells ranked and trained, and how well it was predicted."""

    blocks: int
    candidates: int
    trained: int = 0
    kendall_tau: float | None = None
    best_reward: float | None = None
    predicted: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)


class PNASStrategy(Strategy):
    """Progressive beam search with a surrogate ensemble (``surrogate``: lstm or mlp)."""

    name = "pnas"

    def __init__(self, space: SearchSpace, seed: int = 0, beam: int = 16,
                 surrogate: str = "lstm", max_blocks: int | None = None,
                 job_id: str = "") -> None:
        if space.name not in LAYOUTS:
            raise ValueError(f"space: pnas runs on {', '.join(PNAS_SPACES)}, not {space.name!r}")
        if beam < 1:
            raise ValueError(f"beam: must be >= 1, got {beam}")
        super().__init__(space, job_id)
        self.layout = LAYOUTS[space.name](space)
        self.max_blocks = min(max_blocks or len(self.layout.groups), len(self.layout.groups))
        self.beam = beam
        self.rng = random.Random(seed)
        offsets = itertools.accumulate((d.num_choices for d in space.decisions), initial=0)
        self._offset = list(offsets)
        self.surrogate = SurrogateEnsemble(self._offset[-1], surrogate, seed)
        self.data: list[tuple[list[int], float]] = []
        self.steps: list[StepReport] = []
        self._queue: list[tuple[Prefix, float]] = []
        self._outstanding: dict[str, tuple[Prefix, float]] = {}
        self._trained: list[Prefix] = []
        self._rest: list[tuple[Prefix, float]] = []  # ranked B-block cells not trained yet
        first = self.expand([()])
        self.rng.shuffle(first)  # a budget too small for all 1-block cells trains a sample
        self._start_step(1, first)

    def cell_actions(self, prefix: Prefix) -> tuple[int, ...]:
        """The space's actions of a cell whose first ``len(prefix)`` blocks are decided."""
        return self.layout.actions(prefix)

    def tokens(self, prefix: Prefix) -> list[int]:
        """The surrogate's input: one token per decided decision, in block order."""
        return [self._offset[d] + c + 1 for group, choice in zip(self.layout.groups, prefix,
                                                                 strict=False)
                for d, c in zip(group, choice, strict=True)]

    def expand(self, cells: list[Prefix]) -> list[Prefix]:
        """Every cell one block larger, each isomorphism class once (an isomorph of a cell
        trained earlier stays: it is a free cache hit, and its own expansions may be new)."""
        out: list[Prefix] = []
        seen: set[str] = set()
        for cell in cells:
            for choice in self.layout.choices(len(cell)):
                bigger = (*cell, choice)
                key = self.space.canonical_hash(self.space.decode(self.cell_actions(bigger)))
                if key not in seen:
                    seen.add(key)
                    out.append(bigger)
        return out

    def _start_step(self, blocks: int, candidates: list[Prefix]) -> None:
        if blocks == 1:
            ranked = [(c, 0.0) for c in candidates]
        else:
            predicted = self.surrogate.predict([self.tokens(c) for c in candidates])
            ranked = sorted(zip(candidates, predicted, strict=True), key=lambda cp: -cp[1])
        self._queue = ranked if blocks == 1 else ranked[:self.beam]
        if blocks == self.max_blocks:
            self._rest = ranked[len(self._queue):]
        self._trained = []
        self.steps.append(StepReport(blocks, len(candidates)))

    def _finish_step(self) -> None:
        step = self.steps[-1]
        step.trained = len(step.rewards)
        if step.rewards:
            step.best_reward = max(step.rewards)
        if len(step.rewards) > 1 and step.blocks > 1:
            step.kendall_tau = kendall_tau(step.predicted, step.rewards)
        self.surrogate.fit([t for t, _ in self.data], [r for _, r in self.data])
        bigger = self.expand(self._trained) if step.blocks < self.max_blocks else []
        if bigger:  # none left (all seen up to isomorphism): random cells spend the rest
            self._start_step(step.blocks + 1, bigger)

    def suggest(self, n: int = 1) -> list[Trial]:
        trials = []
        for _ in range(n):
            if self._queue:
                prefix, predicted = self._queue.pop(0)
            elif self._rest:  # the search is done: the next-best ranked cells
                prefix, predicted = self._rest.pop(0)
            else:
                trials.append(self._new_trial(self.space.sample_random(self.rng)))
                continue
            trial = self._new_trial(self.space.decode(self.cell_actions(prefix)))
            self._outstanding[trial.trial_id] = (prefix, predicted)
            trials.append(trial)
            if not self._queue and self.steps[-1].blocks < self.max_blocks:
                break  # the next step's candidates need this step's results
        return trials

    def report(self, trial_id: str, result: TrialResult) -> None:
        self._take(trial_id, result)
        taken = self._outstanding.pop(trial_id, None)
        if taken is None:  # a random proposal after the search ran out of candidates
            return
        prefix, predicted = taken
        self.data.append((self.tokens(prefix), result.reward))
        step = self.steps[-1]
        if len(prefix) == step.blocks and step.trained == 0:
            self._trained.append(prefix)
            step.predicted.append(predicted)
            step.rewards.append(result.reward)
            if not self._queue and not self._outstanding:
                self._finish_step()

    def stats(self) -> dict[str, float]:
        """The last finished step: ``policy_version`` counts surrogate updates (one a step)."""
        done = [s for s in self.steps if s.trained]
        if not done:
            return {}
        last = done[-1]
        out = {"policy_version": float(len(done)), "pnas_blocks": float(last.blocks),
               "pnas_trained": float(last.trained), "pnas_candidates": float(last.candidates),
               "pnas_surrogate_cells": float(len(self.data))}
        if last.best_reward is not None:
            out["pnas_best_reward"] = last.best_reward
        if last.kendall_tau is not None:
            out["kendall_tau"] = last.kendall_tau
        return out
