"""Sampling without replacement: every proposal of the controller is new, a collapsed policy
still spends the whole budget on new architectures, and the gradient is that of the masked
distribution each sequence was drawn from."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from controller.evaluators.nb201 import NB201Evaluator
from controller.policy import LSTMPolicy, PolicyConfig, ReinforceConfig, ReinforceLearner
from controller.policy.novelty import NoveltyIndex
from controller.policy.reinforce import ScoredTrial
from controller.search import SearchHooks, run_search
from controller.spaces.base import Decision
from controller.spaces.nb201 import NB201Space
from controller.strategies.reinforce import DRAWS, ReinforceStrategy
from protos.types import Trial, TrialResult, TrialStatus

Table = dict[str, tuple[float, float]]


def test_the_index_masks_a_choice_once_every_completion_was_drawn() -> None:
    # Arrange: 2 x 3 x 2 sequences, every prefix tracked
    index = NoveltyIndex([2, 3, 2])
    # Act / Assert
    assert index.add((0, 1, 0)) and not index.add((0, 1, 0))
    assert index.full((0, 1)) == (0,) and index.full((0,)) == ()
    index.add((0, 1, 1))
    assert index.full((0, 1)) == (0, 1) and index.full((0,)) == (1,)
    for a, b in itertools.product(range(3), range(2)):
        index.add((0, a, b))
    assert index.full(()) == (0,) and len(index) == 6 and not index.exhausted()
    with pytest.raises(ValueError, match="actions"):
        index.add((0, 1))


def test_only_prefixes_small_enough_to_run_out_are_counted() -> None:
    index = NoveltyIndex([13] * 10, track=200)  # 13^10 sequences: only the last 2 decisions
    assert index.first == 8 and not index.tracks(7) and index.tracks(8)
    index.add((0,) * 10)
    assert index.full((0,) * 9) == (0,) and index.full((0,) * 3) == ()


def test_a_policy_drawing_without_replacement_draws_every_sequence_once() -> None:
    # Arrange: a space of 2 x 3 x 2 = 12 sequences
    decisions = tuple(Decision(f"d{i}", "op", tuple(map(str, range(n))))
                      for i, n in enumerate((2, 3, 2)))
    policy = LSTMPolicy(decisions, PolicyConfig(layers=1, units=8), seed=0)
    index = NoveltyIndex([2, 3, 2])
    generator = torch.Generator().manual_seed(0)
    drawn: list[tuple[int, ...]] = []
    # Act: one at a time, each added as it is drawn
    for _ in range(12):
        out = policy.sample(1, generator=generator, novelty=index)
        row = tuple(out.actions[0].tolist())
        assert not out.dead[0] and index.add(row)
        drawn.append(row)
    # Assert
    assert sorted(drawn) == sorted(itertools.product(range(2), range(3), range(2)))
    assert index.exhausted()


def test_the_gradient_is_that_of_the_masked_distribution() -> None:
    # Arrange: a sequence drawn with choices masked at two decisions
    space = NB201Space()
    policy = LSTMPolicy(space.decisions, seed=4)
    masks = {3: (0, 2), 5: (1,)}
    actions = [1, 2, 3, 4, 0, 3]
    # Act
    scored = policy.log_prob(torch.tensor([actions]), [masks]).log_probs.sum()
    (grad,) = torch.autograd.grad(scored, [policy.heads["op"].weight])
    # Assert: log P under the masked distribution, written out: the unmasked log-probs less,
    # at each masked decision, the log of the mass left to the other choices
    plain = policy.log_prob(torch.tensor([actions]))
    probs = plain.log_probs.exp()  # (1, 6): P(taken) per decision, unmasked
    logits_of = _decision_probs(policy, actions)
    expected = plain.log_probs.sum() - sum(
        torch.log(1 - logits_of[t][list(excluded)].sum()) for t, excluded in masks.items())
    torch.testing.assert_close(scored, expected)
    (ref,) = torch.autograd.grad(expected, [policy.heads["op"].weight])
    torch.testing.assert_close(grad, ref)
    assert bool((probs > 0).all()) and bool(torch.isfinite(grad).all())


def _decision_probs(policy: LSTMPolicy, actions: list[int]) -> list[torch.Tensor]:
    """The unmasked distribution at each decision given the earlier actions (teacher-forced)."""
    out = []
    for t in range(len(actions)):
        # P(choice c at t) = exp(log P(prefix + c) - log P(prefix)), each scored unmasked
        base = policy.log_prob(torch.tensor([actions])).log_probs[0, :t].sum()
        row = []
        for c in range(policy.decisions[t].num_choices):
            trial = [*actions[:t], c, *actions[t + 1:]]
            row.append(policy.log_prob(torch.tensor([trial])).log_probs[0, : t + 1].sum() - base)
        out.append(torch.stack(row).exp())
    return out


def test_a_learner_steps_on_masked_trials_without_nan() -> None:
    space = NB201Space()
    policy = LSTMPolicy(space.decisions, seed=1)
    learner = ReinforceLearner(policy, ReinforceConfig(learning_rate=0.1, entropy_weight=0.1))
    arch = space.decode([0, 1, 2, 3, 4, 0])
    trial = Trial("t1", arch, (0, 1, 2, 3, 4, 0), space.canonical_hash(arch))
    learner.update([ScoredTrial(trial, TrialResult("t1", TrialStatus.SUCCEEDED, 0.9),
                                masks={5: (1, 2, 3, 4)})])
    assert all(bool(torch.isfinite(p).all()) for p in policy.parameters())


def collapsed_strategy(space: NB201Space, logit: float) -> ReinforceStrategy:
    """A controller that barely learns, its policy collapsed onto op 3 (its heads' bias for
    op 3 is ``logit``, dwarfing everything else)."""
    strategy = ReinforceStrategy(space, seed=0, learner=ReinforceConfig(learning_rate=1e-6))
    with torch.no_grad():
        strategy.policy.heads["op"].bias.copy_(torch.tensor([0.0, 0.0, 0.0, logit, 0.0]))
    return strategy


def test_a_collapsed_policy_still_spends_its_budget_on_new_architectures(
        nb201_table: Table) -> None:
    # Arrange: a policy collapsed onto one cell (its heads' biases dwarf everything else)
    space = NB201Space()
    strategy = collapsed_strategy(space, 40.0)
    evaluator = NB201Evaluator("cifar10", table=nb201_table)
    repeats: list[str] = []
    # Act
    outcome = run_search(space, strategy, evaluator, budget=150, report_test=False,
                         hooks=SearchHooks(on_repeat=lambda entry: repeats.append(entry.arch)))
    # Assert: all 150 trainings, no proposal drawn twice (its hits are isomorphic twins of
    # cells it trained)
    assert outcome.stopped_reason == "budget" and outcome.trainings == 150
    drawn = [h.arch for h in outcome.history] + repeats
    assert len(set(drawn)) == len(drawn) == 150 + outcome.cache_hits
    assert outcome.cache_hits == outcome.repeats == len(repeats)


def test_a_search_that_runs_out_of_architectures_says_it_is_exhausted(
        nb201_table: Table) -> None:
    # Arrange: NB201 has 15,625 sequences in 6,466 isomorphism classes; a budget beyond that
    space = NB201Space()
    strategy = ReinforceStrategy(space, seed=0, batch_size=64,
                                 learner=ReinforceConfig(learning_rate=1e-6))
    evaluator = NB201Evaluator("cifar10", table=nb201_table)
    # Act
    outcome = run_search(space, strategy, evaluator, budget=7000, report_test=False,
                         max_idle_proposals=100_000)
    # Assert: every sequence drawn once, every architecture (isomorphism class) trained once;
    # the twins were never proposed (nor cache hits)
    assert outcome.stopped_reason == "exhausted"
    assert outcome.trainings == outcome.distinct == 6466 and outcome.cache_hits == 0
    assert strategy.novelty is not None and len(strategy.novelty) == 15_625 == math.prod([5] * 6)
    assert strategy.novelty.architectures == 6466 and strategy.free > 0


def test_the_surrogate_ranks_draws_near_good_architectures_first() -> None:
    # Arrange: rewards that grow with the number of 3s in a sequence of 6 decisions
    from controller.policy.ranking import OverlapGP

    gp = OverlapGP(6)
    rng = torch.Generator().manual_seed(0)
    for _ in range(40):
        row = torch.randint(0, 5, (6,), generator=rng).tolist()
        gp.observe(row, sum(a == 3 for a in row) / 6)
    # Act
    ei = gp.expected_improvement([(3, 3, 3, 3, 3, 1), (0, 1, 2, 4, 0, 1), (3, 0, 1, 2, 4, 0)])
    # Assert
    assert ei[0] > ei[2] > ei[1] >= 0


def test_the_surrogate_keeps_a_bounded_window_of_the_best_and_the_latest() -> None:
    from controller.policy.ranking import OverlapGP

    gp = OverlapGP(3, window=8)
    for i in range(100):
        gp.observe((i % 5, i % 3, i % 2), reward=1.0 if i == 7 else i / 1000)
    assert len(gp) == 8
    assert 1.0 in gp._ys and 0.099 in gp._ys  # the best ever and the latest


def test_ranked_proposals_are_new_and_spend_the_budget(nb201_table: Table) -> None:
    space = NB201Space()
    strategy = ReinforceStrategy(space, seed=0, candidates=32)
    outcome = run_search(space, strategy, NB201Evaluator("cifar10", table=nb201_table),
                         budget=60, report_test=False)
    assert outcome.trainings == 60 and strategy.ranker is not None and len(strategy.ranker) >= 60
    assert len({h.arch for h in outcome.history}) == len(outcome.history)


def test_replicas_share_one_record_of_draws_and_one_surrogate_from_the_start() -> None:
    # found by the soak: an empty index is falsy (len 0), and `novelty or NoveltyIndex()` gave
    # each replica its own, so replicas proposed each other's architectures again
    from controller.policy.ranking import OverlapGP

    space = NB201Space()
    shared, ranker = NoveltyIndex([5] * 6), OverlapGP(6)
    a, b = (ReinforceStrategy(space, seed=s, novelty=shared, ranker=ranker, candidates=4)
            for s in (1, 2))
    assert a.novelty is shared and b.novelty is shared
    assert a.ranker is ranker and b.ranker is ranker


def test_a_policy_that_draws_nothing_new_explores_and_spends_its_budget(
        nb201_table: Table) -> None:
    # Arrange: a policy collapsed onto cells whose first edge is op 3, all of whose
    # architectures were proposed already (by another run: claimed, their sequences not
    # drawn here, so only twins come out of the policy)
    space = NB201Space()
    strategy = collapsed_strategy(space, 60.0)
    assert strategy.novelty is not None
    for row in itertools.product(range(5), repeat=6):
        if row[0] == 3:
            key = space.canonical_hash(space.decode(row))
            strategy.novelty.claim(key)
            strategy.novelty.settle(key, 0.5)
    # Act
    outcome = run_search(space, strategy, NB201Evaluator("cifar10", table=nb201_table),
                         budget=100, report_test=False)
    # Assert: the whole budget on new architectures, most found by exploring
    assert outcome.stopped_reason == "budget" and outcome.trainings == 100
    assert strategy.explored > 50 and strategy.draws < DRAWS
