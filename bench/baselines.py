"""Peer baselines as strategies, so every method runs through the same loop and accounting.

- ``LogitsReinforce``: the NAS-Bench-201 protocol's REINFORCE: a softmax of free logits per
  edge (init 1e-3 * N(0, 1)), Adam lr 0.01, EMA baseline with momentum 0.9 (bias-corrected,
  updated before the loss), one architecture per update, reward = the accuracy in percent.
"""

from __future__ import annotations

import torch

from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial, TrialResult


class LogitsReinforce(Strategy):
    """REINFORCE on independent per-decision logits (NAS-Bench-201's baseline)."""

    name = "logits-reinforce"

    def __init__(self, space: SearchSpace, seed: int = 0, learning_rate: float = 0.01,
                 momentum: float = 0.9) -> None:
        super().__init__(space)
        gen = torch.Generator().manual_seed(seed)
        width = max(d.num_choices for d in space.decisions)
        self.logits = torch.nn.Parameter(1e-3 * torch.randn(len(space.decisions), width,
                                                            generator=gen))
        mask = torch.full_like(self.logits, float("-inf"))
        for t, d in enumerate(space.decisions):
            mask[t, : d.num_choices] = 0.0
        self.mask = mask
        self.optimizer = torch.optim.Adam([self.logits], lr=learning_rate)
        self.generator = gen
        self.momentum = momentum
        self._num = 0.0
        self._den = 0.0

    def suggest(self, n: int = 1) -> list[Trial]:
        with torch.no_grad():
            probs = torch.softmax(self.logits + self.mask, dim=1)
        trials = []
        for _ in range(n):
            actions = torch.multinomial(probs, 1, generator=self.generator).squeeze(1).tolist()
            trials.append(self._new_trial(self.space.decode(actions), actions))
        return trials

    def report(self, trial_id: str, result: TrialResult) -> None:
        trial = self._take(trial_id, result)
        reward = 100.0 * result.reward
        self._num = self.momentum * self._num + (1 - self.momentum) * reward
        self._den = self.momentum * self._den + (1 - self.momentum)
        baseline = self._num / self._den
        logp = torch.log_softmax(self.logits + self.mask, dim=1)
        chosen = logp[torch.arange(len(trial.actions)), torch.tensor(trial.actions)].sum()
        loss = -chosen * (reward - baseline)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
