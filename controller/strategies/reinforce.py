"""The LSTM controller trained with REINFORCE (Zoph & Le 2017) or PPO (NASNet), as a strategy.

Trials are sampled m at a time under one policy version; once all m are reported, the gradient is
computed on exactly their recorded actions and applied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from controller.policy.lstm import LSTMPolicy, PolicyConfig
from controller.policy.ppo import make_learner
from controller.policy.reinforce import ReinforceConfig, ScoredTrial, UpdateStats
from controller.policy.updaters import ParameterUpdater
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial, TrialResult


class ReinforceStrategy(Strategy):
    """Samples from an LSTMPolicy and updates it every ``batch_size`` results."""

    name = "reinforce"

    def __init__(self, space: SearchSpace, seed: int = 0, batch_size: int = 1,
                 policy: PolicyConfig | None = None, learner: ReinforceConfig | None = None,
                 job_id: str = "",
                 updater: Callable[[LSTMPolicy], ParameterUpdater] | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__(space, job_id)
        self.batch_size = batch_size
        self.policy = LSTMPolicy(space.decisions, policy, seed=seed)
        self.learner = make_learner(self.policy, learner,
                                    updater(self.policy) if updater is not None else None)
        self._log_probs: dict[str, float] = {}  # trial id -> log P(actions) when sampled
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._scored: list[ScoredTrial] = []
        self.last_update: UpdateStats | None = None

    def suggest(self, n: int = 1) -> list[Trial]:
        out = self.policy.sample(n, generator=self.generator)
        trials = []
        for row, log_prob in zip(out.actions.tolist(), out.log_probs.sum(dim=1).tolist(),
                                 strict=True):
            arch = self.space.decode(row)
            trial = self._new_trial(arch, row, policy_version=self.learner.version)
            self._log_probs[trial.trial_id] = log_prob
            trials.append(trial)
        return trials

    def report(self, trial_id: str, result: TrialResult) -> None:
        trial = self._take(trial_id, result)
        self._scored.append(ScoredTrial(trial, result, self._log_probs.pop(trial_id, None)))
        if len(self._scored) >= self.batch_size:
            batch, self._scored = self._scored[: self.batch_size], self._scored[self.batch_size:]
            self.last_update = self.learner.update(batch)

    def stats(self) -> dict[str, float]:
        if self.last_update is None:
            return {}
        return {"baseline": self.last_update.baseline, "entropy": self.last_update.entropy,
                "mean_reward": self.last_update.reward,
                "policy_version": float(self.learner.version)}
