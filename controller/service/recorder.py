"""What a running job writes to its journal: a trial as it starts and as it ends, repeats as a
count, the policy's statistics each time it updates (with, in the same write, the job's
checkpoint of the REINFORCE learner: what a resumed run restores), and notes (the evaluator, a
resumption, ENAS's supernet)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from controller.budget import BudgetLedger
from controller.jobs.store import JobStore
from controller.search import HistoryEntry, SearchHooks, SearchOutcome
from controller.service.search_metrics import SearchCounters
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial


class JobRecorder:
    """The journal writer of one run of ``job_id`` (one per run; its replicas share it)."""

    def __init__(self, store: JobStore, metrics: SearchCounters, job_id: str, space: SearchSpace,
                 cache_key: str, repeats: int = 0) -> None:
        self.store = store
        self.metrics = metrics
        self.job_id = job_id
        self.space = space
        self.cache_key = cache_key
        self.repeats = RepeatCounter(lambda count: self.note("repeats", {"count": count}),
                                     repeats)
        self.policy_version = 0.0  # the last policy statistics journalled (any replica's)
        self._progress = threading.Lock()  # replicas' policy notes and checkpoints, in turn

    def note(self, kind: str, doc: dict[str, Any],
             checkpoint: dict[str, Any] | None = None) -> None:
        """A note in the job's journal (``policy`` notes move ``policy_version``), and the
        job's ``checkpoint`` replaced in the same write."""
        if kind == "policy":
            self.policy_version = float(doc.get("policy_version", self.policy_version))
        self.store.note(self.job_id, kind, doc, checkpoint)

    def started(self, trial: Trial, arch: str, requeues: str = "") -> None:
        """A trial handed to a training (or answered by the cache)."""
        self.store.start_trial(self.job_id, {"trial_id": trial.trial_id, "arch": arch,
                                             **({"requeues": requeues} if requeues else {})})
        self.metrics.started(trial.trial_id)

    def finished(self, entry: HistoryEntry) -> None:
        """One journal entry per proposal that is not a repeat, with its cache key."""
        arch = self.space.from_string(entry.trained_arch)
        key = f"{self.cache_key}|{self.space.canonical_hash(arch)}"
        if self.store.finish_trial(self.job_id, entry.trial_id,
                                   {**entry.to_json(), "status": entry.status,
                                    "cache_key": key}):
            self.metrics.finished(entry.trial_id, entry.status, entry.reward, entry.cached)

    def repeated(self, entry: HistoryEntry) -> None:
        """A cache hit of an architecture the job already has: counted, journalled in bulk."""
        self.repeats.add()
        self.metrics.finished(entry.trial_id, entry.status, entry.reward, True)

    def progress(self, outcome: SearchOutcome, strategy: Strategy) -> None:
        """One ``policy`` note each time the policy's version moves, with the strategy's
        checkpoint (``Strategy.checkpoint``)."""
        with self._progress:
            stats = strategy.stats()
            if stats.get("policy_version", self.policy_version) == self.policy_version:
                return
            self.note("policy", stats, strategy.checkpoint())

    def hooks(self, ledger: BudgetLedger, stop: Callable[[], bool]) -> SearchHooks:
        """The search loop's hooks: the shared budget, this journal, the job's stop flag."""
        return SearchHooks(claim=ledger.claim, refund=ledger.refund, stop=stop,
                           on_start=self.started, on_entry=self.finished,
                           on_repeat=self.repeated, on_progress=self.progress)


class RepeatCounter:
    """Counts a job's repeats (cache hits of architectures it already had) and journals the
    count at most once per ``every`` seconds (and on ``flush``), not one entry per repeat: a
    controller that keeps proposing what it has seen costs microseconds a proposal."""

    def __init__(self, write: Callable[[int], None], start: int = 0, every: float = 1.0) -> None:
        self.write = write
        self.count = self.written = start
        self.every = every
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def add(self) -> None:
        """One more repeat."""
        with self._lock:
            self.count += 1
            due = time.monotonic() - self._at >= self.every
        if due:
            self.flush()

    def flush(self) -> None:
        """Journal the count if it changed."""
        with self._lock:
            count, self._at = self.count, time.monotonic()
            if count == self.written:
                return
            self.written = count
        self.write(count)
