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
REINFORCE policy is what the shards hold (afresh without shards). The trials the old service
had handed out and not finished are dropped (a ``resumed`` note) and trained again first.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from controller.cache import CachedEvaluation, InMemoryCache
from controller.config import ConfigError, SearchConfig, build_config
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.remote import RemoteUpdater, ReplicaStats
from controller.distributed.shards import layout_for
from controller.evaluators.base import EvaluatorError
from controller.factory import build_reinforce, build_space, candidates_of
from controller.jobs.store import ENDED, JobStore, all_jobs
from controller.objectives import RewardShaper
from controller.parts import Parts
from controller.policy.lstm import LSTMPolicy
from controller.policy.novelty import NoveltyIndex
from controller.policy.ranking import OverlapGP
from controller.search import HistoryEntry, SearchOutcome, run_search, run_trial
from controller.service.resources import JobCluster
from controller.service.search_metrics import install as install_search_metrics
from controller.service.tenants import FairSlots
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from controller.strategies.enas import EnasStrategy
from protos.errors import FailedPreconditionError
from protos.types import Trial

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
        self._clients: dict[str, ShardedParameterClient] = {}  # running jobs' shard clients
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
            clients = list(self._clients.values())
        for client in clients:
            client.close()
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
        lost = view.requeue_owed()
        if lost:  # handed out by a service that died: dropped here, trained again below
            self.store.note(job_id, "resumed", {"lost": list(lost)})
        self.store.note(job_id, "evaluator", evaluator.describe())
        claimed = float(view.trainings)
        lock = threading.Lock()

        def claim() -> bool:
            nonlocal claimed
            with lock:
                if cancelled.is_set() or claimed + 1 > cfg.budget + 1e-9:
                    return False
                claimed += 1
                return True

        def refund(unused: float) -> None:  # a child stopped early: the rest buys more
            nonlocal claimed
            with lock:
                claimed -= unused

        def record(entry: HistoryEntry) -> None:  # one journal entry per proposal
            key = f"{evaluator.cache_key}|" \
                  f"{space.canonical_hash(space.from_string(entry.trained_arch))}"
            if self.store.finish_trial(job_id, entry.trial_id,
                                       {**entry.to_json(), "status": entry.status,
                                        "cache_key": key}):
                self.metrics.finished(entry.trial_id, entry.status, entry.reward, entry.cached)

        repeats = RepeatCounter(lambda count: self.store.note(job_id, "repeats",
                                                              {"count": count}), view.repeats)

        def repeat(entry: HistoryEntry) -> None:  # counted, journalled in bulk
            repeats.add()
            self.metrics.finished(entry.trial_id, entry.status, entry.reward, True)

        def start(trial: Trial, arch: str, requeues: str = "") -> None:
            self.store.start_trial(job_id, {"trial_id": trial.trial_id, "arch": arch,
                                            **({"requeues": requeues} if requeues else {})})
            self.metrics.started(trial.trial_id)

        updates = 0.0

        def policy_stats(outcome: SearchOutcome, strategy: Strategy) -> None:
            nonlocal updates  # one note per policy update (any replica's)
            stats = strategy.stats()
            if stats.get("policy_version", updates) != updates:
                updates = stats["policy_version"]
                self.store.note(job_id, "policy", stats)

        shaper = RewardShaper.from_settings(cfg.objectives)
        for n, (old, arch) in enumerate(lost.items()):  # re-queued first, each once
            trial = Trial(f"{tag}-q{n + 1}", space.from_string(arch), (),
                          space.canonical_hash(space.from_string(arch)), job_id=job_id)
            done_trial = run_trial(trial, space, evaluator, self.cache, cfg.failure_reward,
                                   claim, refund,
                                   functools.partial(start, requeues=old),
                                   shaper)
            if done_trial is None:
                break
            record(done_trial[0])

        def search(strategy: Strategy) -> SearchOutcome:
            return run_search(space, strategy, evaluator, cfg.budget, cache=self.cache,
                              failure_reward=cfg.failure_reward,
                              max_idle_proposals=cfg.max_idle_proposals, claim=claim,
                              refund=refund, on_entry=record, on_repeat=repeat,
                              report_test=False,
                              parallel=parallel, stop=cancelled.is_set, on_start=start,
                              on_progress=policy_stats, shaper=shaper,
                              keep_history=self.keep_results)

        history = self._history(job_id, space) if view.started else []
        try:
            if cfg.strategy == "reinforce" and self.cluster.has_paramservers:
                outcomes = self._replicas(job_id, tag, cfg, space, search, result, history)
            else:
                strategy = self.parts.strategy(space, cfg)
                strategy.job_id = tag
                strategy.resume(history)
                if isinstance(strategy, EnasStrategy):  # the supernet phase, journaled per epoch
                    report = strategy.search_supernet(
                        stop=cancelled.is_set,
                        on_epoch=lambda stats: self.store.note(job_id, "policy", stats))
                    updates = float(len(report.epochs))
                    self.store.note(job_id, "supernet", report.to_json())
                outcomes = [search(strategy)]
        finally:
            repeats.flush()
        result.outcomes = outcomes
        reasons = sorted({o.stopped_reason for o in outcomes})
        return (f"{','.join(reasons)}: {sum(o.trainings for o in outcomes)} trainings, "
                f"{sum(o.cache_hits for o in outcomes)} cache hits, "
                f"{sum(o.distinct for o in outcomes)} distinct architectures")

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
                  history: list[tuple[tuple[int, ...], float]]) -> list[SearchOutcome]:
        """K controller replicas (threads) sharing the policy on the parameter servers. The
        layout id is the job id: registering it again after a restart keeps what the shards
        hold (or restored from their checkpoint), so a resumed job's policy goes on learning."""
        seeded = build_reinforce(space, cfg)  # the initial policy of a new job
        initial = nn.utils.parameters_to_vector(seeded.policy.parameters()).detach().numpy()
        learner = seeded.learner.config
        layout = layout_for(cfg, job_id, initial.size, learner.learning_rate,
                            learner.adam_betas, num_shards=len(self.cluster.addresses))
        client = self.cluster.parameter_client(layout)
        with self._lock:
            self._clients[job_id] = client
        outcomes: list[SearchOutcome] = []
        errors: list[BaseException] = []
        # what the replicas drew, and the surrogate ranking their draws: one for all of them
        novelty = NoveltyIndex([d.num_choices for d in space.decisions])
        ranker = OverlapGP(len(space.decisions)) if candidates_of(cfg) else None
        try:
            versions = client.register(initial.astype(np.float32))
            if min(versions) > 0:
                log.info("%s: policy resumed from the parameter servers at version %d",
                         job_id, min(versions))
            else:
                log.info("%s: policy registered on %d parameter-server shards, %d replicas",
                         job_id, layout.num_shards, cfg.replicas)

            def replica(index: int) -> None:
                try:
                    def updater(policy: LSTMPolicy) -> RemoteUpdater:
                        remote = RemoteUpdater(
                            list(policy.parameters()), client, f"{tag}-r{index}",
                            metrics=self.cluster.replica_metrics.replica(index))
                        result.replicas[f"{tag}-r{index}"] = remote.stats
                        return remote

                    strategy = build_reinforce(space, cfg, seed=cfg.seed + 7919 * (index + 1),
                                               updater=updater, novelty=novelty,
                                               ranker=ranker)
                    strategy.job_id = f"{tag}-r{index}"
                    if index == 0:  # the draws and the surrogate are the replicas' shared ones
                        strategy.resume(history)
                    outcome = search(strategy)
                    with self._lock:
                        outcomes.append(outcome)
                        result.by_replica[f"{tag}-r{index}"] = outcome
                except BaseException as exc:  # raised in the job's thread below
                    errors.append(exc)

            threads = [threading.Thread(target=replica, args=(i,), name=f"{job_id}-r{i}",
                                        daemon=True) for i in range(cfg.replicas)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            client.close()
            with self._lock:
                self._clients.pop(job_id, None)
        if errors:
            raise errors[0]
        return outcomes


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
