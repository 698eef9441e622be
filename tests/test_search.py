"""Strategies, the evaluation cache and the search loop, on the real NB201 table."""

from __future__ import annotations

import pytest
import torch

from controller.cache import InMemoryCache
from controller.evaluators.base import Evaluation, EvaluationFailed, Evaluator
from controller.evaluators.nb201 import NB201Evaluator
from controller.presets import CONTROLLER_PRESETS
from controller.search import HistoryEntry, SearchHooks, run_search
from controller.spaces.base import SearchSpace
from controller.spaces.nb201 import NB201Space
from controller.strategies.base import Strategy, UnknownTrial
from controller.strategies.evolution import EvolutionStrategy
from controller.strategies.random_search import RandomStrategy
from controller.strategies.reinforce import ReinforceStrategy
from protos.types import Architecture, TrialResult, TrialStatus

Table = dict[str, tuple[float, float]]


def _strategies(space: SearchSpace, seed: int) -> list[Strategy]:
    return [RandomStrategy(space, seed), EvolutionStrategy(space, seed),
            ReinforceStrategy(space, seed, batch_size=4)]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["random", "evolution", "reinforce"])
def test_budget_counts_trainings_and_cache_hits_are_free(index: int, nb201_table: Table) -> None:
    # Arrange
    space = NB201Space()
    strategy = _strategies(space, seed=0)[index]
    evaluator = NB201Evaluator("cifar10", table=nb201_table)
    cache = InMemoryCache()
    # Act
    outcome = run_search(space, strategy, evaluator, budget=60, cache=cache)
    # Assert
    trained = [h for h in outcome.history if not h.cached]
    assert outcome.trainings == len(trained) == 60
    # hits of what the search had (repeats) are counted, not listed
    assert outcome.cache_hits - outcome.repeats == len(outcome.history) - 60
    assert outcome.cache_hits == cache.hits
    hashes = [space.canonical_hash(space.from_string(h.arch)) for h in trained]
    assert len(set(hashes)) == 60, "an architecture was trained twice"
    for h in outcome.history:  # the reward is the table's, also on a hit (via its twin)
        assert h.reward == nb201_table[h.trained_arch][0]
    assert outcome.best is not None
    assert outcome.best.reward == max(h.reward for h in outcome.history)
    assert outcome.best_test_accuracy == nb201_table[outcome.best.trained_arch][1]


def test_isomorphic_proposal_is_a_free_hit(nb201_table: Table) -> None:
    space = NB201Space()
    evaluator = NB201Evaluator("cifar10", table=nb201_table)
    cache = InMemoryCache()
    twins = ["|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|",
             "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"]

    class Fixed(RandomStrategy):
        def suggest(self, n: int = 1) -> list:  # type: ignore[type-arg]
            return [self._new_trial(space.from_string(twins[self._counter % 2]))]

    repeats: list[HistoryEntry] = []
    outcome = run_search(space, Fixed(space), evaluator, budget=2, cache=cache,
                         max_idle_proposals=5, hooks=SearchHooks(on_repeat=repeats.append))
    # the twin is a free hit of what the search trained: counted (a repeat), not a new entry
    assert outcome.trainings == 1 and len(outcome.history) == 1
    assert outcome.cache_hits == outcome.repeats == 5 and outcome.distinct == 1
    assert outcome.stopped_reason == "exhausted"
    assert repeats[0].cached and repeats[0].arch == twins[1]
    assert repeats[0].trained_arch == twins[0]


def test_strategies_reject_unknown_or_repeated_reports() -> None:
    space = NB201Space()
    for strategy in _strategies(space, seed=1):
        (trial,) = strategy.suggest(1)
        result = TrialResult(trial.trial_id, TrialStatus.SUCCEEDED, 0.5)
        with pytest.raises(UnknownTrial):
            strategy.report("nope", TrialResult("nope", TrialStatus.SUCCEEDED, 0.5))
        with pytest.raises(UnknownTrial, match="reported as"):
            strategy.report(trial.trial_id, TrialResult("other", TrialStatus.SUCCEEDED, 0.5))
        strategy.report(trial.trial_id, result)
        with pytest.raises(UnknownTrial, match="already reported"):
            strategy.report(trial.trial_id, result)


def test_reinforce_updates_on_the_trials_it_issued() -> None:
    # Arrange
    space = NB201Space()
    strategy = ReinforceStrategy(space, seed=0, batch_size=3)
    trials = strategy.suggest(3)
    # Act: report out of order; the update happens once all three are in.
    for k, trial in enumerate(reversed(trials)):
        assert strategy.learner.version == 0
        strategy.report(trial.trial_id, TrialResult(trial.trial_id, TrialStatus.SUCCEEDED,
                                                    0.1 * k))
    # Assert
    assert strategy.learner.version == 1
    assert all(t.policy_version == 0 for t in trials)
    assert all(space.decode(t.actions) == t.architecture for t in trials)
    assert strategy.suggest(1)[0].policy_version == 1


def test_strategy_update_is_the_gradient_of_the_recorded_actions() -> None:
    # Arrange: two identical policies; one inside the strategy, one updated by hand.
    from controller.policy import LSTMPolicy, ReinforceLearner, ScoredTrial

    space = NB201Space()
    strategy = ReinforceStrategy(space, seed=3, batch_size=4)
    twin = LSTMPolicy(space.decisions, strategy.policy.config, seed=3)
    twin_learner = ReinforceLearner(twin, strategy.learner.config)
    trials = strategy.suggest(4)
    results = [TrialResult(t.trial_id, TrialStatus.SUCCEEDED, 0.2 * k)
               for k, t in enumerate(trials)]
    # Act: the strategy samples more (moving its generator) before the rewards come back.
    strategy.policy.sample(16, generator=strategy.generator)
    for trial, result in zip(trials, results, strict=True):
        strategy.report(trial.trial_id, result)
    twin_learner.update([ScoredTrial(t, r) for t, r in zip(trials, results, strict=True)])
    # Assert: the same step, so the strategy used exactly the recorded action sequences.
    for a, b in zip(strategy.policy.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_evolution_mutates_one_decision_of_a_tournament_winner() -> None:
    space = NB201Space()
    strategy = EvolutionStrategy(space, seed=0, population=4, sample=2)
    for trial in strategy.suggest(4):
        strategy.report(trial.trial_id, TrialResult(trial.trial_id, TrialStatus.SUCCEEDED,
                                                    sum(trial.actions) / 24))
    parents = {actions for actions, _ in strategy.population}
    (child,) = strategy.suggest(1)
    assert any(sum(a != b for a, b in zip(child.actions, p, strict=True)) == 1 for p in parents)


class _FlakyEvaluator(Evaluator):
    name = "flaky"

    def __init__(self, table: Table) -> None:
        self.inner = NB201Evaluator("cifar10", table=table)
        self.calls = 0

    @property
    def cache_key(self) -> str:
        return "flaky"

    def evaluate(self, arch: Architecture) -> Evaluation:
        self.calls += 1
        if self.calls % 3 == 0:
            raise EvaluationFailed("NaN loss at epoch 2")
        return self.inner.evaluate(arch)


def test_failed_children_get_the_failure_reward_and_cost_their_training(
        nb201_table: Table) -> None:
    space = NB201Space()
    outcome = run_search(space, RandomStrategy(space, 0), _FlakyEvaluator(nb201_table), budget=9,
                         failure_reward=-0.1, report_test=False)
    failed = [h for h in outcome.history if h.status == "failed"]
    assert len(failed) == 3 and outcome.trainings == 9
    assert all(h.reward == -0.1 and "NaN" in h.error for h in failed)
    assert outcome.best is not None and outcome.best.status == "succeeded"


def test_reinforce_learns_on_nb201(nb201_table: Table) -> None:
    # The trained policy proposes better cells than the untrained one, on the real table.
    space = NB201Space()
    evaluator = NB201Evaluator("cifar10", table=nb201_table)
    preset = CONTROLLER_PRESETS["sample-efficient"]
    strategy = ReinforceStrategy(space, seed=0, batch_size=preset.children,
                                 policy=preset.policy, learner=preset.learner)
    before = _mean_reward(strategy, nb201_table)
    run_search(space, strategy, evaluator, budget=150, report_test=False)
    after = _mean_reward(strategy, nb201_table)
    assert after > before + 0.05, (before, after)


def _mean_reward(strategy: ReinforceStrategy, table: Table) -> float:
    out = strategy.policy.sample(200, generator=strategy.generator)
    space = strategy.space
    rewards = [table[space.to_string(space.decode(row))][0] for row in out.actions.tolist()]
    return sum(rewards) / len(rewards)


class _StoppedEarlyEvaluator(NB201Evaluator):
    """The NB201 table, every other child stopped early after a quarter of its training."""

    calls = 0

    def evaluate(self, arch: Architecture) -> Evaluation:
        self.calls += 1
        full = super().evaluate(arch)
        return Evaluation(full.reward, full.metrics, cost=0.25 if self.calls % 2 else 1.0)


def test_early_stopped_children_are_charged_their_share_and_free_budget(
        nb201_table: Table) -> None:
    space = NB201Space()
    evaluator = _StoppedEarlyEvaluator("cifar10", table=nb201_table)
    outcome = run_search(space, RandomStrategy(space, 0), evaluator, budget=10,
                         report_test=False)
    # children cost 0.25, 1, 0.25, 1, ...: 8 children charge 5, 16 charge 10
    assert outcome.trainings == 16 and outcome.charged == pytest.approx(10.0)


def test_parallel_evaluation_with_a_policy_batch_of_one_spends_the_budget(
        nb201_table: Table) -> None:
    space = NB201Space()
    outcome = run_search(space, ReinforceStrategy(space, 0, batch_size=1),
                         NB201Evaluator("cifar10", table=nb201_table), budget=12, parallel=4,
                         report_test=False)
    assert outcome.trainings == 12 and outcome.charged == 12
