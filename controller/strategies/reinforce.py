"""The LSTM controller trained with REINFORCE (Zoph & Le 2017) or PPO (NASNet), as a strategy.

Trials are sampled m at a time under one policy version; once all m are reported, the gradient is
computed on exactly their recorded actions and applied. Sampling is without replacement over the
search (``controller.policy.novelty``): a sequence drawn once is never drawn again, so every
proposal is an architecture the search has not tried (an isomorphic twin of one it has is still
a free cache hit), and a search ends early only when the space is exhausted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from controller.policy.lstm import LSTMPolicy, Masks, PolicyConfig
from controller.policy.novelty import NoveltyIndex
from controller.policy.ppo import make_learner
from controller.policy.ranking import OverlapGP
from controller.policy.reinforce import ReinforceConfig, ScoredTrial, UpdateStats
from controller.policy.updaters import ParameterUpdater
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial, TrialResult

DRAWS = 16  # draws of the policy one suggest may take to find new sequences


class ReinforceStrategy(Strategy):
    """Samples from an LSTMPolicy and updates it every ``batch_size`` results."""

    name = "reinforce"

    def __init__(self, space: SearchSpace, seed: int = 0, batch_size: int = 1,
                 policy: PolicyConfig | None = None, learner: ReinforceConfig | None = None,
                 job_id: str = "",
                 updater: Callable[[LSTMPolicy], ParameterUpdater] | None = None,
                 novelty: NoveltyIndex | None = None, with_replacement: bool = False,
                 candidates: int = 0, ranker: OverlapGP | None = None,
                 warmup: int = 10) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__(space, job_id)
        self.batch_size = batch_size
        self.policy = LSTMPolicy(space.decisions, policy, seed=seed)
        self.learner = make_learner(self.policy, learner,
                                    updater(self.policy) if updater is not None else None)
        # the sequences drawn (shared by a job's replicas); None: sampling with replacement
        self.novelty = None if with_replacement else (
            novelty or NoveltyIndex([d.num_choices for d in space.decisions]))
        # ranking (candidates > 0): each proposal is the most promising of that many draws,
        # by the surrogate's expected improvement, once it has ``warmup`` results
        if candidates < 0 or warmup < 2:
            raise ValueError("candidates must be >= 0 and warmup >= 2")
        self.candidates = candidates if self.novelty is not None else 0
        self.ranker = ranker or (OverlapGP(len(space.decisions)) if self.candidates else None)
        self.warmup = warmup
        self._log_probs: dict[str, float] = {}  # trial id -> log P(actions) when sampled
        self._masks: dict[str, Masks] = {}  # trial id -> choices its distribution excluded
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._scored: list[ScoredTrial] = []
        self.last_update: UpdateStats | None = None

    def suggest(self, n: int = 1) -> list[Trial]:
        """Up to ``n`` trials; without replacement, none that was drawn before (fewer, or none
        once the space is exhausted: rows of one draw that picked the same new sequence, or
        that hit an exhausted prefix, are drawn again a bounded number of times)."""
        trials: list[Trial] = []
        if self.ranker is not None and len(self.ranker) >= self.warmup:
            while len(trials) < n and (ranked := self._ranked()) is not None:
                trials.append(ranked)
        for _ in range(DRAWS):
            if len(trials) == n or (self.novelty is not None and self.novelty.exhausted()):
                break
            out = self.policy.sample(n - len(trials), generator=self.generator,
                                     novelty=self.novelty)
            rows = zip(out.actions.tolist(), out.log_probs.sum(dim=1).tolist(),
                       out.masks or [{}] * len(out.dead), out.dead, strict=True)
            for row, log_prob, masks, dead in rows:
                if self.novelty is not None and (dead or not self.novelty.add(row)):
                    continue
                trial = self._new_trial(self.space.decode(row), row,
                                        policy_version=self.learner.version)
                self._log_probs[trial.trial_id] = log_prob
                self._masks[trial.trial_id] = masks
                trials.append(trial)
        return trials

    def _ranked(self) -> Trial | None:
        """The draw with the highest expected improvement among ``candidates`` new ones (None
        when the draws held nothing new)."""
        assert self.novelty is not None and self.ranker is not None
        out = self.policy.sample(self.candidates, generator=self.generator, novelty=self.novelty)
        found: dict[tuple[int, ...], tuple[float, Masks]] = {}
        for row, log_prob, masks, dead in zip(out.actions.tolist(),
                                              out.log_probs.sum(dim=1).tolist(),
                                              out.masks, out.dead, strict=True):
            if not dead and tuple(row) not in found and not self.novelty.seen(row):
                found[tuple(row)] = (log_prob, masks)
        if not found:
            return None
        rows = list(found)
        for i in self.ranker.expected_improvement(rows).argsort()[::-1]:
            row = rows[int(i)]
            if self.novelty.add(row):  # (another replica may have drawn it meanwhile)
                trial = self._new_trial(self.space.decode(row), row,
                                        policy_version=self.learner.version)
                self._log_probs[trial.trial_id], self._masks[trial.trial_id] = found[row]
                return trial
        return None

    def report(self, trial_id: str, result: TrialResult) -> None:
        trial = self._take(trial_id, result)
        if self.ranker is not None:
            self.ranker.observe(trial.actions, result.reward)
        self._scored.append(ScoredTrial(trial, result, self._log_probs.pop(trial_id, None),
                                        self._masks.pop(trial_id, {})))
        if len(self._scored) >= self.batch_size:
            batch, self._scored = self._scored[: self.batch_size], self._scored[self.batch_size:]
            self.last_update = self.learner.update(batch)

    def resume(self, history: Iterable[tuple[Sequence[int], float]]) -> None:
        """Never draw again what an earlier run of the job drew, and rank draws knowing its
        results (its policy comes back from the parameter servers, or starts afresh without
        them)."""
        for actions, reward in history:
            if self.novelty is not None:
                self.novelty.add(actions)
            if self.ranker is not None:
                self.ranker.observe(actions, reward)

    def stats(self) -> dict[str, float]:
        if self.last_update is None:
            return {}
        return {"baseline": self.last_update.baseline, "entropy": self.last_update.entropy,
                "mean_reward": self.last_update.reward,
                "policy_version": float(self.learner.version)}
