"""The LSTM policy and REINFORCE: sampling, scoring, and the exact gradient on recorded actions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from controller.policy import (
    PRESETS,
    LSTMPolicy,
    PolicyConfig,
    ReinforceConfig,
    ReinforceLearner,
    ScoredTrial,
)
from controller.spaces import create_space
from controller.spaces.base import Decision
from controller.spaces.macro import MacroSpace
from controller.spaces.nb201 import NB201Space
from protos.types import SearchSpaceSpec, Trial, TrialResult, TrialStatus

SPACES = ["nb201", "nasnet", "enas-micro", "macro"]


def _trial(space_name: str, actions: list[int], tid: str) -> Trial:
    space = create_space(space_name)
    arch = space.decode(actions)
    return Trial(tid, arch, tuple(actions), space.canonical_hash(arch))


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_sampled_log_probs_equal_teacher_forced_scores(name: str, preset: str) -> None:
    space = create_space(name)
    policy = LSTMPolicy(space.decisions, PRESETS[preset], seed=3)
    out = policy.sample(4, generator=torch.Generator().manual_seed(0))
    scored = policy.log_prob(out.actions)
    assert out.actions.shape == (4, len(space.decisions))
    torch.testing.assert_close(scored.log_probs, out.log_probs)
    torch.testing.assert_close(scored.entropies, out.entropies)
    for row in out.actions.tolist():
        space.check_actions(row)  # every sampled index is a valid choice


def test_presets_match_the_papers() -> None:
    zl, enas = PRESETS["zoph-le"], PRESETS["enas"]
    assert (zl.layers, zl.units, zl.init_range) == (2, 35, 0.08)
    assert (enas.layers, enas.units, enas.tanh_constant, enas.temperature) == (1, 100, 2.5, 5.0)
    policy = LSTMPolicy(NB201Space().decisions, zl, seed=0)
    assert all(float(p.detach().abs().max()) <= 0.08 for p in policy.parameters())


def test_sampling_is_seeded() -> None:
    policy = LSTMPolicy(NB201Space().decisions, seed=1)
    a = policy.sample(8, generator=torch.Generator().manual_seed(5)).actions
    b = policy.sample(8, generator=torch.Generator().manual_seed(5)).actions
    assert torch.equal(a, b)


def test_skip_probability_is_the_anchor_attention() -> None:
    # Arrange: a 2-layer macro space; the only skip decision is layer 1 <- layer 0.
    space = MacroSpace(num_layers=2)
    policy = LSTMPolicy(space.decisions, PolicyConfig(layers=1, units=8), seed=0)
    actions = torch.tensor([[1, 2, 3, 0, 1, 2, 1]])
    # Act: recompute P(skip) by hand from the anchors (LSTM outputs at each layer's last step).
    hidden = []
    x, state = policy.start, None
    for t in range(6):
        state = policy.cells[0](x, state)
        hidden.append(state[0])
        x = policy.embeddings[space.decisions[t].kind](actions[:, t])
    h0, h1 = hidden[2], hidden[5]
    p_skip = torch.sigmoid(policy.v(torch.tanh(policy.w_prev(h0) + policy.w_curr(h1))))
    # Assert
    out = policy.log_prob(actions)
    torch.testing.assert_close(out.log_probs[0, 6].exp(), p_skip[0, 0])


def _reference_log_prob(policy: LSTMPolicy, decisions: tuple[Decision, ...],
                        actions: list[int]) -> torch.Tensor:
    """An independent implementation: the LSTM equations written out, one sequence at a time."""
    units = policy.config.units
    h = [torch.zeros(units) for _ in policy.cells]
    c = [torch.zeros(units) for _ in policy.cells]
    x = policy.start[0]
    total = torch.zeros(())
    for d, a in zip(decisions, actions, strict=True):
        inp = x
        for i, cell in enumerate(policy.cells):
            gates = cell.weight_ih @ inp + cell.bias_ih + cell.weight_hh @ h[i] + cell.bias_hh
            ig, fg, gg, og = gates.chunk(4)
            c[i] = torch.sigmoid(fg) * c[i] + torch.sigmoid(ig) * torch.tanh(gg)
            h[i] = torch.sigmoid(og) * torch.tanh(c[i])
            inp = h[i]
        head = policy.heads[d.kind]
        logits = (head.weight @ inp + head.bias)[: d.num_choices]
        total = total + logits[a] - torch.logsumexp(logits, 0)
        x = policy.embeddings[d.kind].weight[a]
    return total


def test_gradient_is_exactly_that_of_the_recorded_sequences() -> None:
    # Arrange: sample m=4 trials, score them, and keep the policy weights.
    space = NB201Space()
    policy = LSTMPolicy(space.decisions, PRESETS["zoph-le"], seed=7)
    learner = ReinforceLearner(policy, ReinforceConfig(learning_rate=0.1, baseline_decay=0.9))
    learner.baseline = 0.5
    sample = policy.sample(4, generator=torch.Generator().manual_seed(11))
    rows = sample.actions.tolist()
    rewards = [0.9, 0.2, 0.7, 0.4]
    batch = [ScoredTrial(_trial("nb201", row, f"t{k}"),
                         TrialResult(f"t{k}", TrialStatus.SUCCEEDED, r))
             for k, (row, r) in enumerate(zip(rows, rewards, strict=True))]
    params = list(policy.parameters())
    # Act
    grads, stats = learner.gradient(batch)
    # Assert: d/dtheta of -(1/m) sum_k (R_k - b) log P(a_k), b = the baseline before the batch.
    ref_loss = -sum((r - 0.5) * _reference_log_prob(policy, space.decisions, row)
                    for row, r in zip(rows, rewards, strict=True)) / len(rows)
    ref = torch.autograd.grad(ref_loss, params, allow_unused=True)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, torch.zeros_like(g) if r is None else r,
                                   atol=1e-6, rtol=1e-5)
    assert stats.baseline == 0.5
    assert learner.baseline == pytest.approx(
        0.9**4 * 0.5 + 0.1 * (0.9**3 * 0.9 + 0.9**2 * 0.2 + 0.9 * 0.7 + 0.4))


def test_a_reward_cannot_be_paired_with_another_trial() -> None:
    trial = _trial("nb201", [1, 2, 3, 4, 0, 1], "t1")
    with pytest.raises(ValueError, match="cannot score trial"):
        ScoredTrial(trial, TrialResult("t2", TrialStatus.SUCCEEDED, 0.9))


def test_update_moves_probability_toward_rewarded_actions() -> None:
    space = NB201Space()
    policy = LSTMPolicy(space.decisions, seed=0)
    learner = ReinforceLearner(policy, ReinforceConfig(learning_rate=0.05))
    good, bad = [3] * 6, [0] * 6
    before = float(policy.log_prob(torch.tensor([good])).log_probs.detach().sum())
    for k in range(30):
        batch = [ScoredTrial(_trial("nb201", good, f"g{k}"),
                             TrialResult(f"g{k}", TrialStatus.SUCCEEDED, 0.9)),
                 ScoredTrial(_trial("nb201", bad, f"b{k}"),
                             TrialResult(f"b{k}", TrialStatus.SUCCEEDED, 0.1))]
        learner.update(batch)
    after = float(policy.log_prob(torch.tensor([good])).log_probs.detach().sum())
    assert after > before + 1.0
    assert learner.version == 30


def test_entropy_bonus_and_cubed_rewards() -> None:
    space = create_space(SearchSpaceSpec("nb201"))
    policy = LSTMPolicy(space.decisions, seed=0)
    learner = ReinforceLearner(policy, ReinforceConfig(reward_transform="cubed",
                                                       entropy_weight=0.5))
    batch = [ScoredTrial(_trial("nb201", [1] * 6, "t"), TrialResult("t", TrialStatus.SUCCEEDED,
                                                                   0.5))]
    loss, stats = learner.loss(batch)
    assert stats.reward == pytest.approx(0.125)
    # first batch: baseline = its mean, advantage 0, so the loss is the entropy bonus alone
    assert float(loss.detach()) == pytest.approx(-0.5 * stats.entropy, rel=1e-5)
    with pytest.raises(ValueError, match="reward_transform"):
        ReinforceConfig(reward_transform="squared")


def test_rank_transform_is_the_quantile_among_rewards_seen() -> None:
    learner = ReinforceLearner(LSTMPolicy(NB201Space().decisions),
                               ReinforceConfig(reward_transform="rank"))
    assert learner.transform([0.5]) == [0.5]  # alone: the median of itself
    assert learner.transform([0.1, 0.9]) == pytest.approx([1 / 6, 5 / 6])
    # a broken child (10%) and a good one differ by the same step as two good ones
    assert learner.transform([0.85]) == pytest.approx([5 / 8])


def test_gradient_clipping_bounds_the_norm_handed_to_the_updater() -> None:
    from controller.policy.updaters import ParameterUpdater

    class Recorder(ParameterUpdater):
        def __init__(self) -> None:
            self.seen: list[torch.Tensor] = []

        def apply(self, grads: Sequence[torch.Tensor]) -> int:
            self.seen = list(grads)
            self.version += 1
            return self.version

    recorder = Recorder()
    policy = LSTMPolicy(NB201Space().decisions)
    learner = ReinforceLearner(policy, ReinforceConfig(grad_clip=0.5), updater=recorder)
    big = [torch.full_like(p, 3.0) for p in policy.parameters()]
    assert learner.apply(big) == 1
    norm = torch.sqrt(sum((g**2).sum() for g in recorder.seen))
    assert float(norm) == pytest.approx(0.5, rel=1e-4)
    assert float(big[0].flatten()[0]) == 3.0  # the caller's tensors are left alone
