"""REINFORCE for the controller: gradient of sum_t log P(a_t | a_<t) * (R - b) on recorded actions.

Reward assignment: a reward only ever enters the gradient together with the trial it was measured
for (``ScoredTrial`` checks the ids match) and that trial's recorded actions. There is no call
that pairs a reward with freshly sampled actions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from controller.policy.lstm import LSTMPolicy, Masks
from controller.policy.reward_stats import RewardStats
from controller.policy.updaters import LocalAdam, ParameterUpdater
from protos.types import Trial, TrialResult

REWARD_TRANSFORMS: dict[str, Callable[[float], float]] = {
    "identity": lambda r: r,
    "cubed": lambda r: r**3,  # Zoph & Le: sharpen differences between good accuracies
}
# "rank": the reward's quantile among all rewards the learner has seen (in [0, 1]; estimated from
# a bounded uniform sample of them once there are many: ``RewardStats``); robust to the heavy
# tail of broken children, like the tournaments of evolution.
TRANSFORM_NAMES = (*REWARD_TRANSFORMS, "rank")


@dataclass(frozen=True)
class ScoredTrial:
    """A trial together with its own result: the only way a reward reaches the gradient.
    ``log_prob``: the log-probability of its actions when it was sampled (PPO's old policy);
    ``masks``: the choices its distribution excluded when it was sampled (sampling without
    replacement), applied again when it is scored."""

    trial: Trial
    result: TrialResult
    log_prob: float | None = None
    masks: Masks = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.result.trial_id != self.trial.trial_id:
            raise ValueError(f"result of trial {self.result.trial_id!r} cannot score trial "
                             f"{self.trial.trial_id!r}")
        if not self.trial.actions:
            raise ValueError(f"trial {self.trial.trial_id!r} has no recorded actions")


@dataclass(frozen=True)
class ReinforceConfig:
    """Learning rule settings: Adam, EMA baseline, entropy bonus, reward transform."""

    learning_rate: float = 6e-4
    baseline_decay: float = 0.95
    entropy_weight: float = 0.0
    reward_transform: str = "identity"
    normalize_advantages: bool = False  # divide advantages by their running std
    grad_clip: float | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be > 0")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError("baseline_decay must be in [0, 1)")
        if self.entropy_weight < 0:
            raise ValueError("entropy_weight must be >= 0")
        if self.reward_transform not in TRANSFORM_NAMES:
            raise ValueError(f"reward_transform must be one of {', '.join(TRANSFORM_NAMES)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError("grad_clip must be > 0")


@dataclass(frozen=True)
class UpdateStats:
    """What one update saw: mean transformed reward, baseline before it, mean entropy, loss."""

    reward: float
    baseline: float
    entropy: float
    loss: float
    version: int


class ReinforceLearner:
    """Owns the baseline and reward statistics (``stats``: a job's replicas may share one, and
    a resumed job restores it); the ``updater`` owns the parameters' optimizer state and
    version (local Adam by default, parameter-server shards in a replica)."""

    def __init__(self, policy: LSTMPolicy, config: ReinforceConfig | None = None,
                 updater: ParameterUpdater | None = None,
                 stats: RewardStats | None = None) -> None:
        self.policy = policy
        self.config = config or ReinforceConfig()
        self.updater = updater or LocalAdam(policy.parameters(), self.config.learning_rate,
                                            self.config.adam_betas)
        self.stats = stats or RewardStats(self.config.baseline_decay)

    @property
    def baseline(self) -> float | None:
        """The EMA baseline (None before the first update)."""
        return self.stats.baseline

    @baseline.setter
    def baseline(self, value: float | None) -> None:
        self.stats.baseline = value

    @property
    def version(self) -> int:
        """The version of the parameters the policy holds."""
        return self.updater.version

    def transform(self, rewards: Sequence[float]) -> list[float]:
        """Apply the configured reward transform (rank: quantile among all rewards seen)."""
        if self.config.reward_transform != "rank":
            fn = REWARD_TRANSFORMS[self.config.reward_transform]
            return [fn(r) for r in rewards]
        return self.stats.rank(rewards)

    def advantages(self, rewards: Sequence[float]) -> Tensor:
        """Advantages against the baseline before this batch, then update the EMA baseline."""
        return self.stats.advantages(rewards, self.config.normalize_advantages)[1]

    def score(self, raw: Sequence[float]) -> tuple[list[float], float, Tensor]:
        """A batch's transformed rewards, the baseline before it and the advantages, in one
        step of the statistics (replicas sharing them take turns)."""
        with self.stats.lock:
            rewards = self.transform(raw)
            base, adv = self.stats.advantages(rewards, self.config.normalize_advantages)
        return rewards, base, adv

    def loss(self, batch: Sequence[ScoredTrial]) -> tuple[Tensor, UpdateStats]:
        """The surrogate loss whose gradient is the REINFORCE estimate for ``batch``."""
        if not batch:
            raise ValueError("an update needs at least one scored trial")
        rewards, base_before, adv = self.score([s.result.reward for s in batch])
        actions = torch.tensor([s.trial.actions for s in batch], dtype=torch.long)
        out = self.policy.log_prob(actions, [s.masks for s in batch])
        seq_logp = out.log_probs.sum(dim=1)
        seq_entropy = out.entropies.sum(dim=1)
        loss = -(adv * seq_logp).mean() - self.config.entropy_weight * seq_entropy.mean()
        stats = UpdateStats(reward=sum(rewards) / len(rewards), baseline=base_before,
                            entropy=float(seq_entropy.detach().mean()), loss=float(loss.detach()),
                            version=self.version)
        return loss, stats

    def gradient(self, batch: Sequence[ScoredTrial]) -> tuple[list[Tensor], UpdateStats]:
        """The policy gradient for ``batch`` (one tensor per parameter), without applying it."""
        loss, stats = self.loss(batch)
        params = list(self.policy.parameters())
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads,
                                                                         strict=True)], stats

    def apply(self, grads: Sequence[Tensor]) -> int:
        """Clip (if configured) and hand the gradient to the updater; return the new version."""
        grads = [g.detach().clone() for g in grads]
        if self.config.grad_clip is not None:
            norm = torch.sqrt(torch.stack([(g.double() ** 2).sum() for g in grads]).sum())
            scale = float(self.config.grad_clip / (norm + 1e-6))
            if scale < 1.0:
                grads = [g * scale for g in grads]
        return self.updater.apply(grads)

    def update(self, batch: Sequence[ScoredTrial]) -> UpdateStats:
        """Compute and apply the gradient for ``batch``."""
        grads, stats = self.gradient(batch)
        self.apply(grads)
        return stats
