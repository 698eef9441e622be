"""Controller presets: the LSTM's shape, the REINFORCE settings and m (children per update)."""

from __future__ import annotations

from dataclasses import dataclass

from controller.policy.lstm import PRESETS as POLICY_PRESETS
from controller.policy.lstm import PolicyConfig
from controller.policy.ppo import PPOConfig
from controller.policy.reinforce import ReinforceConfig


@dataclass(frozen=True)
class ControllerPreset:
    """A named controller: policy shape, learning rule, and children per update (m)."""

    policy: PolicyConfig
    learner: ReinforceConfig
    children: int
    description: str
    candidates: int = 0  # draws a surrogate ranks per proposal (0: train what is drawn)


CONTROLLER_PRESETS: dict[str, ControllerPreset] = {
    "zoph-le": ControllerPreset(
        POLICY_PRESETS["zoph-le"],
        ReinforceConfig(learning_rate=6e-4, baseline_decay=0.95, reward_transform="cubed"),
        children=8,
        description="Zoph & Le 2017: 2x35 LSTM, Adam 6e-4, reward cubed, EMA baseline, m=8"),
    "enas": ControllerPreset(
        POLICY_PRESETS["enas"],
        ReinforceConfig(learning_rate=3.5e-3, baseline_decay=0.99, entropy_weight=1e-4),
        children=1,
        description="ENAS: 1x100 LSTM, tanh 2.5, temperature 5, Adam 3.5e-3, entropy 1e-4, "
                    "baseline decay 0.99"),
    # Tuned on NAS-Bench-201 CIFAR-10, seeds 0-29 only, at budgets 50-200 (BENCHMARKS.md):
    # rewards as their rank among all rewards seen (robust to broken children), advantages
    # scaled by their running RMS, an entropy bonus against early collapse, an update after
    # every child; each proposal the most promising of 16 new draws by a GP surrogate's
    # expected improvement (a lower learning rate keeps those draws diverse).
    "sample-efficient": ControllerPreset(
        POLICY_PRESETS["zoph-le"],
        ReinforceConfig(learning_rate=0.01, baseline_decay=0.95, entropy_weight=0.03,
                        reward_transform="rank", normalize_advantages=True),
        children=1,
        description="for budgets of tens to thousands of trainings (tuned on NAS-Bench-201 "
                    "CIFAR-10): 2x35 LSTM, Adam 0.01, rank rewards, normalised advantages, "
                    "entropy 0.03, m=1, each proposal the best of 16 draws by a GP "
                    "surrogate's expected improvement",
        candidates=16),
    # NASNet (Zoph et al. 2018): PPO, Adam 3.5e-4, entropy 1e-5, batches of 20 architectures;
    # its 1x100 LSTM, uniform init +-0.1 (no tanh or temperature, unlike ENAS).
    "ppo": ControllerPreset(
        PolicyConfig(layers=1, units=100, init_range=0.1),
        PPOConfig(learning_rate=3.5e-4, baseline_decay=0.95, entropy_weight=1e-5, clip=0.2,
                  epochs=4),
        children=20,
        description="NASNet: PPO (clip 0.2, 4 epochs per batch), 1x100 LSTM, Adam 3.5e-4, "
                    "entropy 1e-5, m=20"),
}
