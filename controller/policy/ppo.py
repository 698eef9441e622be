"""PPO for the controller (NASNet, Zoph et al. 2018): the clipped surrogate objective on recorded
actions, several epochs over each batch of architectures.

The ratio is P_new(actions) / P_old(actions) of the whole recorded action sequence, where P_old is
the probability the trial was sampled with (``ScoredTrial.log_prob``, recorded at sampling), not
a recomputation: with parameter servers other replicas move the policy between a replica's
sample and its update, and PPO's clip is what keeps such a step bounded. Every epoch is one
gradient handed to the ``ParameterUpdater`` (a push to the shards in a replica).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from controller.policy.lstm import LSTMPolicy, Masks
from controller.policy.reinforce import ReinforceConfig, ReinforceLearner, ScoredTrial, UpdateStats
from controller.policy.updaters import ParameterUpdater


@dataclass(frozen=True)
class PPOConfig(ReinforceConfig):
    """REINFORCE's settings (Adam, EMA baseline, entropy, reward transform) plus the clip range
    epsilon and the epochs over each batch."""

    clip: float = 0.2
    epochs: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.clip < 1:
            raise ValueError("clip must be in (0, 1)")
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")


def clipped_surrogate(new_log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor,
                      clip: float) -> Tensor:
    """PPO's loss: -mean(min(r * A, clip(r, 1-eps, 1+eps) * A)) with r = exp(new - old).

    Where the clipped term is the smaller one (r beyond the range in the advantage's direction),
    it is constant in the parameters, so that trial contributes no gradient: the update cannot
    move its probability further from the one it was sampled with.
    """
    ratio = torch.exp(new_log_prob - old_log_prob)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    return -torch.min(unclipped, clipped).mean()


class PPOLearner(ReinforceLearner):
    """The REINFORCE learner's baseline and reward statistics with PPO's update rule."""

    config: PPOConfig

    def __init__(self, policy: LSTMPolicy, config: PPOConfig | None = None,
                 updater: ParameterUpdater | None = None) -> None:
        super().__init__(policy, config or PPOConfig(), updater)

    def _prepare(self, batch: Sequence[ScoredTrial]) -> tuple[Tensor, Tensor, Tensor, float,
                                                               list[float]]:
        """Actions, recorded log-probs, advantages (moving the baseline once), the baseline
        before the batch and the transformed rewards."""
        if not batch:
            raise ValueError("an update needs at least one scored trial")
        missing = [s.trial.trial_id for s in batch if s.log_prob is None]
        if missing:
            raise ValueError(f"PPO needs the log-prob each trial was sampled with; "
                             f"{missing[0]!r} has none")
        rewards, base_before, adv = self.score([s.result.reward for s in batch])
        actions = torch.tensor([s.trial.actions for s in batch], dtype=torch.long)
        old = torch.tensor([float(s.log_prob or 0.0) for s in batch], dtype=torch.float64)
        return actions, old, adv, base_before, rewards

    def _epoch_loss(self, actions: Tensor, old: Tensor, adv: Tensor,
                    masks: Sequence[Masks]) -> tuple[Tensor, float]:
        """The clipped objective minus the entropy bonus at the current parameters (each
        trial's distribution masked as when it was sampled)."""
        out = self.policy.log_prob(actions, masks)
        entropy = out.entropies.sum(dim=1).mean()
        surrogate = clipped_surrogate(out.log_probs.sum(dim=1).double(), old, adv.double(),
                                      self.config.clip)
        return surrogate.float() - self.config.entropy_weight * entropy, float(entropy.detach())

    def loss(self, batch: Sequence[ScoredTrial]) -> tuple[Tensor, UpdateStats]:
        """One epoch's loss for ``batch`` (what ``gradient`` differentiates)."""
        actions, old, adv, base_before, rewards = self._prepare(batch)
        loss, entropy = self._epoch_loss(actions, old, adv, [s.masks for s in batch])
        return loss, UpdateStats(reward=sum(rewards) / len(rewards), baseline=base_before,
                                 entropy=entropy, loss=float(loss.detach()), version=self.version)

    def update(self, batch: Sequence[ScoredTrial]) -> UpdateStats:
        """Advantages once per batch (the baseline moves once), then ``epochs`` gradient steps
        of the clipped objective, each applied through the updater."""
        actions, old, adv, base_before, rewards = self._prepare(batch)
        params = list(self.policy.parameters())
        first: tuple[float, float] | None = None
        for _ in range(self.config.epochs):
            loss, entropy = self._epoch_loss(actions, old, adv, [s.masks for s in batch])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            first = first or (entropy, float(loss.detach()))
            self.apply([torch.zeros_like(p) if g is None else g
                        for p, g in zip(params, grads, strict=True)])
        assert first is not None
        return UpdateStats(reward=sum(rewards) / len(rewards), baseline=base_before,
                           entropy=first[0], loss=first[1], version=self.version)

def make_learner(policy: LSTMPolicy, config: ReinforceConfig | None = None,
                 updater: ParameterUpdater | None = None) -> ReinforceLearner:
    """The learner a config asks for: PPO for a ``PPOConfig``, else REINFORCE."""
    if isinstance(config, PPOConfig):
        return PPOLearner(policy, config, updater)
    return ReinforceLearner(policy, config, updater)
