"""Runs submitted jobs: each in a thread of this process, recording every trial in the job store.

A job moves PENDING -> RUNNING -> SUCCEEDED (budget spent, or nothing new left to propose), FAILED
(its evaluator could not run; the reason says why) or CANCELLED (``cancel``: the search stops
before its next training). At most ``max_running`` jobs run at once; the rest wait PENDING, and
a freed slot goes to the waiting job of the tenant with the fewest running jobs (``FairSlots``).

The evaluation cache is shared by every job and backed by the store's (every training is
recorded there as it is journalled), so a restarted service (``resume``) never trains again what
any job trained before: a resumed job's finished trainings count against its budget and their
architectures are free hits; its strategy takes up what it evaluated (``Strategy.resume``: the
controller's record of draws and its surrogate; evolution's population; Optuna's study), and a
REINFORCE controller goes on from the job's checkpoint (its learner state: baseline, reward
statistics; without shards its parameters and Adam's state too; with shards those are what the
shards hold). The trials the old service had handed out and not finished are dropped (a
``resumed`` note) and trained again first, as many at once as the job's parallelism. The
reason a job ends with counts the whole job (its summary), not only the last run's search.

An ended job leaves nothing behind in this process (its thread, cancel flag and result, the
trial board's records of its trials, the store's per-job state), unless ``keep_results`` (the
embedded ``nas search`` reads the result after the job ends).

Besides trials, a job's journal notes the evaluator's description (what ``ExportBest`` needs to
rebuild a trained child) and the policy's statistics after each update (for watchers).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from controller.budget import BudgetLedger
from controller.cache import CachedEvaluation, InMemoryCache
from controller.config import ConfigError, SearchConfig, build_config
from controller.distributed.remote import ReplicaStats
from controller.evaluators.base import EvaluatorError
from controller.factory import build_space
from controller.jobs.store import ENDED, JobStore, all_jobs
from controller.objectives import RewardShaper
from controller.parts import Parts
from controller.search import SearchOutcome, run_search
from controller.service.recorder import JobRecorder
from controller.service.replicas import ReplicaGroup
from controller.service.requeue import train_again
from controller.service.resources import JobCluster
from controller.service.search_metrics import install as install_search_metrics
from controller.service.tenants import FairSlots
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.errors import FailedPreconditionError

log = logging.getLogger(__name__)


@functools.cache
def warm_up_policy() -> None:
    """Build and step a throwaway Adam, once per process: the first ``torch.optim`` optimizer
    a process builds imports ``torch._dynamo``, about a second (measured 0.9-1.2 s here) that
    the first job's first replica would otherwise wait for before proposing anything."""
    param = torch.nn.Parameter(torch.zeros(1))
    adam = torch.optim.Adam([param])
    param.grad = torch.zeros(1)
    adam.step()


@dataclass
class JobResult:
    """What a job's run left in this process (for ``nas search``'s result.json): each replica's
    outcome and parameter-server statistics, or the error that failed it."""

    outcomes: list[SearchOutcome] = field(default_factory=list)
    replicas: dict[str, ReplicaStats] = field(default_factory=dict)
    by_replica: dict[str, SearchOutcome] = field(default_factory=dict)
    error: BaseException | None = None


class JobRunner:
    """Executes jobs of ``store``; children's files go under ``work_dir/<job_id>``."""

    def __init__(self, store: JobStore, work_dir: Path, max_running: int = 2, *,
                 cluster: JobCluster, parts: Parts, keep_results: bool = False) -> None:
        self.store = store
        self.keep_results = keep_results
        self.cluster = cluster
        self.parts = parts
        self.work_dir = work_dir
        self.slots = FairSlots(max_running)
        self._cancel: dict[str, threading.Event] = {}
        # set when the job's thread has let go of everything (not Thread.join: a join cut
        # short by Ctrl-C in Python 3.11 marks a thread that still runs as stopped)
        self._done: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.cache = InMemoryCache(self._stored)  # shared by the jobs of this service
        self.results: dict[str, JobResult] = {}
        self._groups: dict[str, ReplicaGroup] = {}  # running jobs' replicas on the shards
        self.metrics = install_search_metrics(self.cluster.registry, store)
        warm_up_policy()

    def resume(self) -> list[str]:
        """After a restart: start again every job the store has PENDING or RUNNING, oldest
        first; their ids. (The cache needs no refill: it reads through to the store's.)"""
        unfinished = sorted((j.number, j.job_id) for state in ("RUNNING", "PENDING")
                            for j in all_jobs(self.store, state=state))
        for _, job_id in unfinished:
            self.start(job_id)
        return [job_id for _, job_id in unfinished]

    def _stored(self, key: str) -> CachedEvaluation | None:
        """A training of any job, from the store's cache."""
        found = self.store.cached(key)
        if found is None:
            return None
        return CachedEvaluation(float(found["reward"]), str(found["arch"]),
                                dict(found["metrics"]), dict(found["artifacts"]))

    def start(self, job_id: str) -> None:
        """Run the job in the background (it waits PENDING for a free slot)."""
        with self._lock:
            self._cancel[job_id] = threading.Event()
            self._done[job_id] = threading.Event()
        threading.Thread(target=self._run, args=(job_id,), name=f"job-{job_id}",
                         daemon=True).start()

    def cancel(self, job_id: str, reason: str = "cancelled by the user") -> None:
        """Stop the job before its next training (its finished trials stay recorded); an ended
        job raises FailedPreconditionError."""
        state = self.store.get(job_id).state
        if state in ENDED:
            raise FailedPreconditionError(f"job_id: job {job_id} has ended ({state}); nothing "
                                          f"to cancel")
        self.store.set_state(job_id, "CANCELLED", reason)
        with self._lock:
            event = self._cancel.get(job_id)
        if event is not None:
            event.set()

    def wait(self, job_id: str, timeout: float | None = None) -> bool:
        """Whether the job's thread ended within ``timeout``."""
        with self._lock:
            done = self._done.get(job_id)
        return done is None or done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what still runs and wait up to ``timeout`` for each job to stop at its next
        proposal; then cut its parameter-server calls short (a job left RUNNING resumes when
        the service starts again)."""
        with self._lock:
            events = list(self._cancel.values())
            done = list(self._done.values())
        for event in events:
            event.set()
        for finished in done:
            finished.wait(timeout)
        with self._lock:
            groups = list(self._groups.values())
        for group in groups:
            group.close()
        for finished in done:
            finished.wait(min(timeout, 5.0))

    def _run(self, job_id: str) -> None:
        try:
            self._hold_and_run(job_id)
        finally:
            self._release(job_id)

    def _release(self, job_id: str) -> None:
        """Forget what this process kept for the job (it has ended, or this service is
        closing: a RUNNING job resumes from the store)."""
        try:
            self.store.release(job_id)
            self.cluster.forget_job(job_id)  # the trial board's records of the job's trials
        finally:
            with self._lock:
                self._cancel.pop(job_id, None)
                done = self._done.pop(job_id, None)
                if not self.keep_results:
                    self.results.pop(job_id, None)
            if done is not None:
                done.set()

    def _hold_and_run(self, job_id: str) -> None:
        cancelled = self._cancel[job_id]
        view = self.store.get(job_id)
        with self.slots.hold(job_id, view.tenant, view.created_at):
            if cancelled.is_set() or self.store.get(job_id).state not in ("PENDING",
                                                                          "RUNNING"):
                return
            try:
                self.store.set_state(job_id, "RUNNING")
                reason = self._search(job_id, cancelled)
            except (ConfigError, EvaluatorError, ValueError) as exc:
                self.results.setdefault(job_id, JobResult()).error = exc
                self._end(job_id, "FAILED", str(exc))
                return
            except Exception as exc:  # a bug: the job fails with the reason, the service lives
                self.results.setdefault(job_id, JobResult()).error = exc
                log.exception("job %s failed", job_id)
                self._end(job_id, "FAILED", f"internal error: {type(exc).__name__}: {exc}")
                return
            if not cancelled.is_set():
                self._end(job_id, "SUCCEEDED", reason)

    def _end(self, job_id: str, state: str, reason: str) -> None:
        with contextlib.suppress(FailedPreconditionError):  # cancelled meanwhile: it stands
            self.store.set_state(job_id, state, reason)

    def _search(self, job_id: str, cancelled: threading.Event) -> str:
        """Run the job to its end; the reason it ended."""
        view = self.store.get(job_id)
        result = self.results.setdefault(job_id, JobResult())
        # an embedded job (nas search) names its directory; a submitted one gets work_dir/<id>
        cfg = build_config(view.spec, {"out": view.spec.get("out")
                                       or str(self.work_dir / job_id)})
        self.cluster.check_job(cfg)
        space = build_space(cfg)
        local = self.parts.evaluator(cfg)
        evaluator = self.cluster.evaluator(cfg, local, view.tenant)
        # children in flight per replica: the job's own setting, at least the workers' slots
        parallel = cfg.parallel if evaluator is local else max(cfg.parallel,
                                                               self.cluster.worker_slots)
        # trial ids name the job (the trial board is shared by every job); a resumed run's
        # ids name the resumption by the journal's length, which only grows, so they never
        # repeat an earlier run's (the number of trials could: a resume drops the lost ones)
        tag = f"{job_id}-x{view.length}" if view.started or view.requeue else job_id
        recorder = JobRecorder(self.store, self.metrics, job_id, space, evaluator.cache_key,
                               view.repeats)
        lost = view.requeue_owed()
        if lost:  # handed out by a service that died: dropped here, trained again below
            recorder.note("resumed", {"lost": list(lost)})
        recorder.note("evaluator", evaluator.describe())
        ledger = BudgetLedger(cfg.budget, float(view.trainings), cancelled.is_set)
        hooks = recorder.hooks(ledger, cancelled.is_set)
        shaper = RewardShaper.from_settings(cfg.objectives)
        train_again(lost, tag, space, evaluator, self.cache, cfg.failure_reward, recorder,
                    ledger, shaper, parallel)

        def search(strategy: Strategy) -> SearchOutcome:
            return run_search(space, strategy, evaluator, cfg.budget, cache=self.cache,
                              failure_reward=cfg.failure_reward,
                              max_idle_proposals=cfg.max_idle_proposals, hooks=hooks,
                              report_test=False, parallel=parallel, shaper=shaper,
                              keep_history=self.keep_results)

        history = self._history(job_id, space) if view.started else []
        checkpoint = self.store.checkpoint(job_id) if view.started else None
        try:
            if cfg.strategy == "reinforce" and self.cluster.has_paramservers:
                result.outcomes = self._replicas(job_id, tag, cfg, space, search, result,
                                                 history, checkpoint)
            else:
                strategy = self.parts.strategy(space, cfg)
                strategy.job_id = tag
                strategy.resume(history)
                if checkpoint is not None:
                    strategy.restore(checkpoint)  # e.g. the learner goes on where it was
                strategy.prepare(cancelled.is_set, recorder.note)
                result.outcomes = [search(strategy)]
        finally:
            recorder.repeats.flush()
        return self._reason(job_id, result.outcomes)

    def _reason(self, job_id: str, outcomes: list[SearchOutcome]) -> str:
        """Why the job ended, with the whole job's counts (its summary: every run of a
        resumed job, and its re-queued trials), not only this run's search."""
        view = self.store.get(job_id)
        reasons = sorted({o.stopped_reason for o in outcomes}) or ["budget"]
        return (f"{','.join(reasons)}: {view.trainings} trainings, "
                f"{view.cache_hits + view.repeats} cache hits, "
                f"{view.finished} distinct architectures")

    def _history(self, job_id: str, space: SearchSpace) -> list[tuple[tuple[int, ...], float]]:
        """What an earlier run of a resumed job evaluated, for its strategy to take up
        (``Strategy.resume``): the finished trials' actions and rewards in start order, read
        once, a page at a time."""
        history = []
        after: int | None = -1
        while after is not None:
            page, after = self.store.trials(job_id, after=after, limit=1000)
            history += [(space.encode(space.from_string(r.arch)), r.reward) for r in page
                        if r.done]
        return history

    def _replicas(self, job_id: str, tag: str, cfg: SearchConfig, space: SearchSpace,
                  search: Callable[[Strategy], SearchOutcome], result: JobResult,
                  history: list[tuple[tuple[int, ...], float]],
                  checkpoint: Mapping[str, object] | None) -> list[SearchOutcome]:
        """K controller replicas sharing the policy on the parameter servers (and the learner
        state of the job's ``checkpoint``)."""
        group = ReplicaGroup(self.cluster, job_id, tag, cfg, space, checkpoint,
                             self.store.get(job_id).spec)
        result.replicas, result.by_replica = group.stats, group.outcomes
        with self._lock:
            self._groups[job_id] = group
        try:
            return group.run(search, history, lambda: self._history(job_id, space))
        finally:
            with self._lock:
                self._groups.pop(job_id, None)
