"""The in-process search loop: suggest -> cache or evaluate -> report, until the budget is spent.

``budget`` counts child trainings; an architecture whose canonical hash is already in the cache
gets the stored result for free. A failed child gets ``failure_reward`` (and costs its training).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from controller.budget import BudgetLedger
from controller.cache import CachedEvaluation, EvaluationCache, InMemoryCache
from controller.evaluators.base import EvaluationFailed, Evaluator
from controller.objectives import RewardShaper
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial, TrialResult, TrialStatus


@dataclass
class HistoryEntry:
    """One proposal: what was sampled, its reward, whether it was free, what was trained."""

    trial_id: str
    arch: str
    reward: float
    cached: bool
    trained_arch: str  # the architecture whose training gave the reward (differs on an
    # isomorphic cache hit)
    status: str = "succeeded"
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HistoryEntry:
        """Read back what ``to_json`` wrote."""
        return cls(doc["trial_id"], doc["arch"], doc["reward"], doc["cached"],
                   doc.get("same_as", doc["arch"]), doc.get("status", "succeeded"),
                   doc.get("error", ""), dict(doc.get("metrics", {})),
                   dict(doc.get("artifacts", {})))

    def to_json(self) -> dict[str, Any]:
        """The result.json form."""
        out: dict[str, Any] = {"trial_id": self.trial_id, "arch": self.arch,
                               "reward": self.reward, "cached": self.cached}
        if self.trained_arch != self.arch:
            out["same_as"] = self.trained_arch
        if self.status != "succeeded":
            out["status"], out["error"] = self.status, self.error
        if self.metrics:
            out["metrics"] = self.metrics
        if self.artifacts:
            out["artifacts"] = self.artifacts
        return out


@dataclass
class SearchOutcome:
    """What a search found and what it cost."""

    budget: int
    trainings: int = 0
    charged: float = 0.0  # budget spent: trainings, less the epochs early stopping saved
    cache_hits: int = 0  # proposals the cache answered, repeats included
    repeats: int = 0  # cache hits of an architecture this search had already (not in history)
    history: list[HistoryEntry] = field(default_factory=list)
    best: HistoryEntry | None = None
    best_test_accuracy: float | None = None
    wall_seconds: float = 0.0
    stopped_reason: str = "budget"
    _seen: set[str] = field(default_factory=set, repr=False)  # trained architectures

    @property
    def distinct(self) -> int:
        """Distinct architectures the search evaluated or got from the cache."""
        return self.trainings + self.cache_hits - self.repeats

    def is_repeat(self, entry: HistoryEntry) -> bool:
        """Whether ``entry`` is a cache hit of an architecture this search already has."""
        return entry.cached and entry.trained_arch in self._seen

    def add(self, entry: HistoryEntry, cost: float = 1.0, keep: bool = True) -> None:
        """Count one proposal (training or cache hit) and track the best; a training charges
        ``cost`` of the budget. A repeat is only counted; anything else is appended to
        ``history`` when ``keep``."""
        if self.is_repeat(entry):
            self.cache_hits += 1
            self.repeats += 1
            return
        self._seen.add(entry.trained_arch)
        if keep:
            self.history.append(entry)
        if entry.cached:
            self.cache_hits += 1
        else:
            self.trainings += 1
            self.charged += cost
        if entry.status == "succeeded" and (self.best is None or entry.reward > self.best.reward):
            self.best = entry

    def trainings_to_reach(self, reward: float) -> int | None:
        """How many trainings it took until an architecture with >= ``reward`` was seen."""
        trained = 0
        for h in self.history:
            trained += 0 if h.cached else 1
            if h.reward >= reward:
                return trained
        return None


ProgressFn = Callable[[SearchOutcome, Strategy], None]


@dataclass
class SearchHooks:
    """How a search shares its budget and tells its caller what happens (every hook optional).

    ``claim()`` is asked before each training (a budget shared by several replicas; the search
    stops when it says no) and ``refund(unused)`` gets back the untrained part of a child
    stopped early. ``stop()`` is asked before each batch: true ends the search (``cancelled``).
    ``on_start(trial, arch)`` sees every trial as it is handed to a training or recorded as a
    cache hit (not one the budget refused), ``on_entry`` every history entry as it is made,
    ``on_repeat`` every cache hit of an architecture the search already has (instead of
    ``on_start``/``on_entry``), ``on_progress(outcome, strategy)`` the state after each
    proposal."""

    claim: Callable[[], bool] | None = None
    refund: Callable[[float], None] | None = None
    stop: Callable[[], bool] | None = None
    on_start: Callable[[Trial, str], None] | None = None
    on_entry: Callable[[HistoryEntry], None] | None = None
    on_repeat: Callable[[HistoryEntry], None] | None = None
    on_progress: ProgressFn | None = None


NO_HOOKS = SearchHooks()


def run_search(space: SearchSpace, strategy: Strategy, evaluator: Evaluator, budget: int,
               cache: EvaluationCache | None = None, failure_reward: float = 0.0,
               max_idle_proposals: int = 2000, hooks: SearchHooks = NO_HOOKS,
               report_test: bool = True, parallel: int = 1,
               shaper: RewardShaper | None = None, keep_history: bool = True
               ) -> SearchOutcome:
    """Run ``strategy`` until ``budget`` trainings are spent.

    A cache hit is free; one of an architecture the search already has (a repeat) is also
    kept out of the history and given to ``hooks.on_repeat`` instead, so it costs a count, not
    a record. The strategy learns from every result, repeats included. Stops before the budget
    is spent only when the strategy has nothing new to propose (``stopped_reason ==
    "exhausted"``): it suggests nothing (a controller sampling without replacement that drew
    every architecture), or ``max_idle_proposals`` proposals in a row were all cache hits; or
    when ``hooks.stop()`` or a shared ``hooks.claim()`` says so.
    ``parallel > 1`` evaluates the trials of one suggested batch concurrently (reports stay in
    order). ``shaper`` turns each result into a multi-objective reward (the cache keeps the
    unshaped result, so jobs with other objectives share it). Without ``keep_history`` the
    outcome keeps counts and the best only (a service's job: its journal has the history), so
    a long search's memory does not grow with it.

    A child stopped early costs the share of its epochs it trained; the rest buys more
    children (``outcome.charged`` <= ``budget``; ``trainings`` may be more).
    """
    if budget < 1:
        raise ValueError("budget must be >= 1")
    cache = cache if cache is not None else InMemoryCache()
    outcome = SearchOutcome(budget=budget)
    local = BudgetLedger(budget)
    claim, refund = (hooks.claim, hooks.refund) if hooks.claim else (local.claim, local.refund)

    def run(t: Trial) -> tuple[HistoryEntry, TrialResult, float] | None:
        return run_trial(t, space, evaluator, cache, failure_reward, claim, refund,
                         hooks.on_start, shaper, start_hits=False)

    pool = ThreadPoolExecutor(parallel) if parallel > 1 else None
    start = time.perf_counter()
    idle = 0
    try:
        while outcome.charged <= budget - 1 + 1e-9:
            if hooks.stop is not None and hooks.stop():
                outcome.stopped_reason = "cancelled"
                break
            trials = strategy.suggest(max(strategy.batch_size, parallel))
            if idle >= max_idle_proposals or not trials:
                outcome.stopped_reason = "exhausted"
                break
            done = pool.map(run, trials) if pool is not None else map(run, trials)
            idle, spent = _take_batch(trials, done, strategy, outcome, hooks, idle,
                                      keep_history, sequential=pool is None)
            if spent:
                break
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if report_test and outcome.best is not None:
        best_arch = space.from_string(outcome.best.trained_arch)
        outcome.best_test_accuracy = evaluator.test_accuracy(best_arch)
    outcome.wall_seconds = time.perf_counter() - start
    return outcome


def _take_batch(trials: list[Trial],
                done: Iterable[tuple[HistoryEntry, TrialResult, float] | None],
                strategy: Strategy, outcome: SearchOutcome, hooks: SearchHooks, idle: int,
                keep_history: bool, sequential: bool) -> tuple[int, bool]:
    """Report a batch's results to the strategy and the hooks, in order; the proposals in a
    row that were cache hits, and whether the budget ran out."""
    spent = False
    for trial, evaluated in zip(trials, done, strict=False):
        if evaluated is None:  # the budget is spent (here or by other replicas)
            spent = True
            if sequential:
                break
            continue  # the batch's other children ran at the same time: kept
        entry, result, cost = evaluated
        strategy.report(trial.trial_id, result)
        if outcome.is_repeat(entry):
            if hooks.on_repeat is not None:
                hooks.on_repeat(entry)
        else:
            if entry.cached and hooks.on_start is not None:
                hooks.on_start(trial, entry.arch)
            if hooks.on_entry is not None:
                hooks.on_entry(entry)
        outcome.add(entry, cost, keep_history)
        idle = idle + 1 if entry.cached else 0
        if hooks.on_progress is not None:
            hooks.on_progress(outcome, strategy)
    return idle, spent


def run_trial(trial: Trial, space: SearchSpace, evaluator: Evaluator, cache: EvaluationCache,
               failure_reward: float, claim: Callable[[], bool],
               refund: Callable[[float], None] | None,
               on_start: Callable[[Trial, str], None] | None = None,
               shaper: RewardShaper | None = None, start_hits: bool = True
               ) -> tuple[HistoryEntry, TrialResult, float] | None:
    """One trial: a cache hit, or a claimed training, with the budget it cost; None when no
    training may be claimed. Without ``refund`` a training costs 1. ``on_start`` is told of a
    training before it starts, and of a cache hit unless ``start_hits`` is off (the caller
    decides about hits)."""
    arch_str = space.to_string(trial.architecture)
    key = f"{evaluator.cache_key}|{trial.arch_hash}"
    hit = cache.get(key)
    while hit is None and not cache.begin(key):  # in flight elsewhere: its result is a hit
        hit = cache.wait(key)
    if hit is None:
        try:
            return _train(trial, arch_str, key, evaluator, cache, failure_reward, claim, refund,
                          on_start, shaper)
        finally:
            cache.end(key)
    if on_start is not None and start_hits:
        on_start(trial, arch_str)
    reward, metrics = shaper(hit.reward, hit.metrics) if shaper else (hit.reward,
                                                                      dict(hit.metrics))
    result = TrialResult(trial.trial_id, TrialStatus.SUCCEEDED, reward, metrics, cached=True)
    return HistoryEntry(trial.trial_id, arch_str, reward, True, hit.arch, metrics=metrics,
                        artifacts=dict(hit.artifacts)), result, 0.0


def _train(trial: Trial, arch_str: str, key: str, evaluator: Evaluator, cache: EvaluationCache,
           failure_reward: float, claim: Callable[[], bool],
           refund: Callable[[float], None] | None,
           on_start: Callable[[Trial, str], None] | None, shaper: RewardShaper | None
           ) -> tuple[HistoryEntry, TrialResult, float] | None:
    """A claimed training of ``trial`` (None: the budget is spent), its result cached."""
    if not claim():
        return None
    if on_start is not None:
        on_start(trial, arch_str)
    try:
        evaluation = evaluator.evaluate_trial(trial)
    except EvaluationFailed as exc:
        result = TrialResult(trial.trial_id, TrialStatus.FAILED, failure_reward, error=str(exc))
        return HistoryEntry(trial.trial_id, arch_str, failure_reward, False, arch_str,
                            status="failed", error=str(exc)), result, 1.0
    cost = 1.0
    if refund is not None:
        cost = min(max(evaluation.cost, 0.0), 1.0)
        refund(1.0 - cost)
    cache.put(key, CachedEvaluation(evaluation.reward, arch_str, evaluation.metrics,
                                    evaluation.artifacts))
    reward, metrics = shaper(evaluation.reward, evaluation.metrics) if shaper else (
        evaluation.reward, dict(evaluation.metrics))
    result = TrialResult(trial.trial_id, TrialStatus.SUCCEEDED, reward, metrics)
    return HistoryEntry(trial.trial_id, arch_str, reward, False, arch_str, metrics=metrics,
                        artifacts=dict(evaluation.artifacts)), result, cost
