"""The controller's record of trials handed to workers: queue, attempts, heartbeats, results.

A trial is submitted once and leased to worker services one attempt at a time. Reports are
idempotent by (trial_id, attempt): a replay changes nothing and says so. The first result of a
trial is final (from whichever attempt delivers it); every later one is a duplicate, so each trial
has exactly one result. An attempt is retried (attempt + 1, up to ``max_attempts``) when its
process is reported lost or when it stops heartbeating; a child that fails by itself (a bad op, a
NaN loss, out of memory) reports a FAILED result, which is final and never retried.

Fairness: a trial may be submitted in a ``group`` (its job's tenant); a lease then hands out the
queued trial of the group with the fewest running trials first (ties: first queued), so one
tenant's many trials do not starve another's. Without groups the queue is plain FIFO.

Memory stays bounded for a service that runs for weeks: a trial's full record (its trial,
attempts, epochs, outcome) is kept until its submitter takes the outcome (``TrialHandle.wait``
returns it); the board then keeps a tombstone of two small numbers, enough to answer that
trial's late, replayed or superseded reports exactly as before. ``forget_job`` drops every record
and tombstone of a job that ended; its trials are then unknown (``NotFoundError``). Per-call costs
do not grow with the trials finished: a lease picks from per-group queues (O(groups)) and expires
silent attempts from a deadline heap (O(log live attempts)); ``running`` is a maintained count.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.early_stopping import EarlyStopper
from controller.trials.queues import DeadlineHeap, FairQueue
from protos.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from protos.types import Resources, Trial, TrialResult, TrialStatus, Workload

# Results accepted lately, remembered past ``forget_job``: a forgotten trial's attempt that
# reported its result may still be returning on its worker, and must not be named for a
# force-cancel (see ``lease``). A worker names its running attempts every lease (about 1 s),
# and an attempt returns moments after its result: a second's results at the fastest rate.
RECENT_RESULTS = 1024


@dataclass(frozen=True)
class Ack:
    """The answer to a report."""

    accepted: bool = False
    duplicate: bool = False
    stop: bool = False  # stop training this child (early stopping)
    superseded: bool = False  # this attempt is no longer wanted: abandon it without a result
    reason: str = ""


@dataclass(frozen=True)
class LeasedTask:
    """One attempt handed to a worker service."""

    trial: Trial  # trial.attempt is this attempt's number (1, 2, ...)
    workload: Workload
    resources: Resources
    heartbeat_seconds: float


@dataclass
class TrialOutcome:
    """How a trial ended, after however many attempts."""

    result: TrialResult
    artifacts: dict[str, str]
    attempts: int
    lost: list[str]  # why each retried attempt was lost
    stopped_at_epoch: int | None
    worker: str  # host:pid of the process whose attempt started last
    submitted_at: float  # board clock
    started_at: float | None  # the last attempt's start report
    finished_at: float


@dataclass(frozen=True)
class BoardSizes:
    """What a board holds right now (for tests and diagnostics)."""

    records: int  # full records: queued, leased, or finished and not yet taken
    tombstones: int  # finished trials whose outcome the submitter took
    queued: int
    running: int
    deadlines: int  # deadline-heap entries: live attempts, plus stale ones not yet dropped
    jobs: int  # job ids (trial.job_id) with a record or a tombstone


@dataclass(eq=False)  # compared by identity: the fair queue removes records by identity
class _Record:
    trial: Trial
    workload: Workload
    resources: Resources
    group: str = ""  # fairness group (a tenant)
    attempt: int = 0  # the current attempt (0: queued, never leased)
    leased: bool = False
    started: bool = False
    queued: bool = False
    armed: int = 0  # the number of its live deadline-heap entry (0: none)
    submitted_at: float = 0.0
    last_seen: float = 0.0
    started_at: float | None = None
    worker: str = ""
    lost: list[str] = field(default_factory=list)
    epochs: dict[int, tuple[float, float]] = field(default_factory=dict)
    stopped_at_epoch: int | None = None
    outcome: TrialOutcome | None = None
    reported: int = 0  # the attempt whose result was accepted (it ends by itself)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Tombstone:
    """A finished trial whose outcome was taken: what answering its reports needs."""

    attempts: int  # attempts leased
    reported: int  # the attempt whose result was accepted (0: it failed without one)


@functools.lru_cache(maxsize=256)
def _tombstone(attempts: int, reported: int) -> _Tombstone:
    """Shared instances: both numbers are at most ``max_attempts``, so a few cover them all."""
    return _Tombstone(attempts, reported)


class TrialHandle:
    """The submitter's view of one trial. The first ``wait`` that returns the outcome takes
    it: the handle keeps it (later waits return it again), the board keeps a tombstone."""

    def __init__(self, board: TrialBoard, record: _Record) -> None:
        self.board = board
        self.trial_id = record.trial.trial_id
        self._record: _Record | None = record
        self._outcome: TrialOutcome | None = None

    def wait(self, timeout: float | None = None) -> TrialOutcome | None:
        """The outcome once the trial has one (None on timeout)."""
        record = self._record
        if record is None:
            return self._outcome
        if not record.done.wait(timeout):
            return None
        self._outcome = self.board._take(record)
        self._record = None
        return self._outcome


@dataclass
class BoardCounters:
    """Running totals, for metrics and result.json."""

    submitted: int = 0
    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    retried_lost: int = 0
    retried_timeout: int = 0
    duplicates: int = 0
    stopped_early: int = 0


class TrialBoard:
    """Thread-safe; servicers call the report methods, the search calls ``submit``.

    ``start_timeout``: a leased attempt must report its start within this (Ray may queue it for
    resources, and a fresh worker process must start). ``heartbeat_timeout``: a started attempt
    silent this long is presumed dead and retried.
    """

    def __init__(self, max_attempts: int = 3, heartbeat_seconds: float = 5.0,
                 heartbeat_timeout: float = 60.0, start_timeout: float = 600.0,
                 stopper: EarlyStopper | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_outcome: Callable[[TrialOutcome], None] | None = None) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be >= 1, got {max_attempts}")
        if not 0 < heartbeat_seconds < heartbeat_timeout:
            raise ValueError(f"heartbeat_timeout: must exceed heartbeat_seconds "
                             f"({heartbeat_seconds}), got {heartbeat_timeout}")
        self.max_attempts = max_attempts
        self.heartbeat_seconds = heartbeat_seconds
        self.heartbeat_timeout = heartbeat_timeout
        self.start_timeout = start_timeout
        self.stopper = stopper
        self.clock = clock
        self.on_outcome = on_outcome
        self.counters = BoardCounters()
        self._live: dict[str, _Record] = {}  # not finished, or finished and not yet taken
        self._tombs: dict[str, _Tombstone] = {}  # finished and taken
        self._jobs: dict[str, set[str]] = {}  # trial.job_id -> ids in _live or _tombs
        self._queue: FairQueue[_Record] = FairQueue()  # also counts the running, by group
        self._deadlines: DeadlineHeap[tuple[str, int]] = DeadlineHeap()  # (trial_id, armed)
        self._arms = itertools.count(1)
        self._recent_results: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.broken: str | None = None  # why the workers were lost for good (``close``)

    # -- the submitter's side ------------------------------------------------------------

    def submit(self, trial: Trial, workload: Workload, resources: Resources,
               group: str = "") -> TrialHandle:
        """Queue ``trial`` for a worker (in fairness ``group``); submitting the same trial id
        again is an error (until ``forget_job`` dropped it)."""
        with self._cond:
            if self._closed:
                raise FailedPreconditionError("the trial board is closed" + (
                    f": {self.broken}" if self.broken else ""))
            trial_id = trial.trial_id
            if trial_id in self._live or trial_id in self._tombs:
                raise AlreadyExistsError(f"trial_id: {trial_id!r} was submitted before")
            record = _Record(trial, workload, resources, group, submitted_at=self.clock())
            self._live[trial_id] = record
            self._jobs.setdefault(trial.job_id, set()).add(trial_id)
            self._enqueue(record)
            self.counters.submitted += 1
            self._cond.notify_all()
        return TrialHandle(self, record)

    def close(self, reason: str = "the search stopped", broken: bool = False) -> None:
        """Fail every unfinished trial (its waiter returns) and refuse new submissions;
        ``broken``: because the workers are lost for good (``broken`` keeps the reason)."""
        with self._cond:
            if broken and not self._closed:
                self.broken = reason
            self._closed = True
            self._queue.clear()
            for record in list(self._live.values()):
                record.queued = False
                if record.outcome is None:
                    self._finish(record, _failed(record, f"not finished: {reason}"), {})
            self._cond.notify_all()

    def forget_job(self, job_id: str) -> int:
        """Drop every record and tombstone of job ``job_id``: trials whose ``job_id`` is it or
        one of its tags (``job_id-...``: a resumed run's, a replica's; so no job id may be
        another's followed by "-"). Unfinished ones fail first (their waiters return). Later
        reports of them raise NotFoundError, as for trials never submitted. Returns how many
        trials were dropped."""
        with self._cond:
            tags = [t for t in self._jobs
                    if t == job_id or (job_id and t.startswith(f"{job_id}-"))]
            trial_ids = [trial_id for tag in tags for trial_id in self._jobs.pop(tag)]
            records = [r for r in map(self._live.get, trial_ids) if r is not None]
            queued = {id(r) for r in records if r.queued}
            if queued:  # one pass over the queue, not one per trial
                self._queue.discard(lambda r: id(r) in queued)
            for record in records:
                record.queued = False
                if record.outcome is None:
                    self._finish(record, _failed(record, f"not finished: its job {job_id} "
                                                         f"ended"), {})
            for trial_id in trial_ids:
                self._live.pop(trial_id, None)
                self._tombs.pop(trial_id, None)
            if trial_ids:  # a dict keeps its largest table after deletions; a copy does not
                self._live, self._tombs = dict(self._live), dict(self._tombs)
            self._compact_deadlines()
            return len(trial_ids)

    # -- the workers' side ---------------------------------------------------------------

    def lease(self, max_trials: int, wait: float = 0.0,
              running: list[tuple[str, int]] | None = None
              ) -> tuple[list[LeasedTask], list[tuple[str, int]]]:
        """Up to ``max_trials`` queued attempts, waiting up to ``wait`` seconds for one; and
        which of the caller's ``running`` attempts to cancel (finished or superseded)."""
        deadline = self.clock() + wait
        with self._cond:
            self._expire()
            # not an attempt that reported its result: it is returning by itself, and a
            # force-cancel racing its return crashed Ray's core worker in this process
            # ("Tried to complete task that was not pending", Ray 2.60)
            cancel = [(t, a) for t, a in running or []
                      if not self._wanted(t, a) and not self._reported(t, a)]
            while not self._queue and not self._closed and max_trials > 0:
                left = deadline - self.clock()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
                self._expire()
            tasks: list[LeasedTask] = []
            while self._queue and len(tasks) < max_trials:
                _, record = self._queue.pop()
                record.queued = False
                record.attempt += 1
                record.leased, record.started = True, False
                record.last_seen = self.clock()
                record.epochs.clear()
                self._queue.started(record.group)
                self._arm(record, self.start_timeout)
                self.counters.leased += 1
                trial = Trial(record.trial.trial_id, record.trial.architecture,
                              record.trial.actions, record.trial.arch_hash,
                              record.trial.policy_version, record.trial.job_id, record.attempt)
                tasks.append(LeasedTask(trial, record.workload, record.resources,
                                        self.heartbeat_seconds))
            return tasks, cancel

    def start(self, trial_id: str, attempt: int, worker: str) -> Ack:
        """The attempt's process began."""
        with self._cond:
            record = self._current(trial_id, attempt)
            if isinstance(record, Ack):
                return record
            if record.started:
                return Ack(duplicate=True)
            record.started, record.worker = True, worker
            record.last_seen = record.started_at = self.clock()
            self._arm(record, self.heartbeat_timeout)
            return Ack(accepted=True)

    def heartbeat(self, trial_id: str, attempt: int) -> Ack:
        """The attempt is alive."""
        with self._cond:
            record = self._current(trial_id, attempt)
            if isinstance(record, Ack):
                return record
            record.last_seen = self.clock()  # its heap entry, when due, is pushed back
            return Ack(accepted=True)

    def progress(self, trial_id: str, attempt: int, epoch: int, train_loss: float,
                 val_accuracy: float) -> Ack:
        """``epoch`` epochs done; the answer says whether to stop (early stopping)."""
        with self._cond:
            record = self._current(trial_id, attempt)
            if isinstance(record, Ack):
                return record
            record.last_seen = self.clock()
            duplicate = epoch in record.epochs
            record.epochs[epoch] = (train_loss, val_accuracy)
            if self.stopper is None:
                return Ack(accepted=not duplicate, duplicate=duplicate)
            decision = self.stopper.report(trial_id, epoch, val_accuracy)
            if decision.stop and record.stopped_at_epoch is None:
                record.stopped_at_epoch = epoch
                self.counters.stopped_early += 1
            return Ack(accepted=not duplicate, duplicate=duplicate, stop=decision.stop,
                       reason=decision.reason)

    def result(self, trial_id: str, attempt: int, result: TrialResult,
               artifacts: dict[str, str] | None = None) -> Ack:
        """The attempt's final result; the trial's first result wins."""
        with self._cond:
            record = self._live.get(trial_id)
            attempts = record.attempt if record is not None else self._tomb(trial_id).attempts
            if result.trial_id != trial_id:
                raise FailedPreconditionError(f"result.trial_id: {result.trial_id!r} reported "
                                              f"for trial {trial_id!r}")
            if not 1 <= attempt <= attempts:
                raise FailedPreconditionError(f"attempt: {attempt} of trial {trial_id!r} was "
                                              f"never leased (current: {attempts})")
            if record is None or record.outcome is not None:
                self.counters.duplicates += 1
                return Ack(duplicate=True)
            record.reported = attempt
            self._recent_results[(trial_id, attempt)] = None
            if len(self._recent_results) > RECENT_RESULTS:
                self._recent_results.popitem(last=False)
            self._finish(record, result, dict(artifacts or {}), attempts=attempt)
            return Ack(accepted=True)

    def lost(self, trial_id: str, attempt: int, reason: str, retryable: bool = True) -> Ack:
        """The attempt's process died (or could not run): retry it or fail the trial."""
        with self._cond:
            record = self._current(trial_id, attempt)
            if isinstance(record, Ack):
                return record
            self._lose(record, reason, retryable, timeout=False)
            return Ack(accepted=True)

    def expire(self) -> None:
        """Retry every attempt whose heartbeats stopped (also done on each lease)."""
        with self._cond:
            self._expire()

    # -- reading -----------------------------------------------------------------------

    def outcome(self, trial_id: str) -> TrialOutcome | None:
        """The trial's outcome, if it has one. Once its submitter took it (``TrialHandle.wait``
        returned it) the board no longer holds it: FailedPreconditionError."""
        with self._cond:
            record = self._live.get(trial_id)
            if record is not None:
                return record.outcome
            self._tomb(trial_id)
            raise FailedPreconditionError(f"trial_id: the outcome of {trial_id!r} was taken by "
                                          f"its submitter; the board kept only its tombstone")

    def attempt(self, trial_id: str) -> tuple[int, str]:
        """The current attempt's number and the worker (host:pid) that started it ("" if it has
        not started, or the trial finished and its outcome was taken)."""
        with self._cond:
            record = self._live.get(trial_id)
            if record is None:
                return self._tomb(trial_id).attempts, ""
            return record.attempt, record.worker if record.started else ""

    def queued(self) -> int:
        """Trials waiting for a worker."""
        with self._cond:
            return len(self._queue)

    def running(self) -> int:
        """Trials leased and not finished."""
        with self._cond:
            return self._queue.running

    def sizes(self) -> BoardSizes:
        """How much the board holds now."""
        with self._cond:
            return BoardSizes(len(self._live), len(self._tombs), len(self._queue),
                              self._queue.running, len(self._deadlines), len(self._jobs))

    # -- internals (lock held) -----------------------------------------------------------

    def _tomb(self, trial_id: str) -> _Tombstone:
        try:
            return self._tombs[trial_id]
        except KeyError:
            raise NotFoundError(f"trial_id: no trial {trial_id!r} on this controller") from None

    def _take(self, record: _Record) -> TrialOutcome:
        """The submitter takes ``record``'s outcome: the board keeps a tombstone of it."""
        with self._cond:
            outcome = record.outcome
            assert outcome is not None, "taken before it finished"
            trial_id = record.trial.trial_id
            if self._live.get(trial_id) is record:  # not forgotten meanwhile
                del self._live[trial_id]
                self._tombs[trial_id] = _tombstone(record.attempt, record.reported)
            return outcome

    def _reported(self, trial_id: str, attempt: int) -> bool:
        record = self._live.get(trial_id)
        if record is not None:
            return record.reported == attempt
        tomb = self._tombs.get(trial_id)
        if tomb is not None:
            return tomb.reported == attempt
        return (trial_id, attempt) in self._recent_results  # forgotten since

    def _wanted(self, trial_id: str, attempt: int) -> bool:
        record = self._live.get(trial_id)
        return (record is not None and record.outcome is None and record.leased
                and record.attempt == attempt)

    def _current(self, trial_id: str, attempt: int) -> _Record | Ack:
        """The record, or the answer to give when ``attempt`` is not the live one."""
        record = self._live.get(trial_id)
        attempts = record.attempt if record is not None else self._tomb(trial_id).attempts
        if not 1 <= attempt <= attempts:
            raise FailedPreconditionError(f"attempt: {attempt} of trial {trial_id!r} was never "
                                          f"leased (current: {attempts})")
        if record is None or record.outcome is not None:
            return Ack(duplicate=True, superseded=True, reason="the trial has a result")
        if attempt != record.attempt or not record.leased:
            return Ack(duplicate=True, superseded=True,
                       reason=f"attempt {attempt} was superseded by attempt {record.attempt}")
        return record

    def _enqueue(self, record: _Record) -> None:
        self._queue.push(record.group, record)
        record.queued = True

    def _arm(self, record: _Record, limit: float) -> None:
        """Check the leased attempt when it has been silent for ``limit`` seconds (its
        earlier entry, if any, goes stale)."""
        record.armed = next(self._arms)
        self._deadlines.push(record.last_seen + limit, (record.trial.trial_id, record.armed))
        self._compact_deadlines()

    def _armed(self, key: tuple[str, int]) -> bool:
        record = self._live.get(key[0])
        return record is not None and record.armed == key[1]

    def _compact_deadlines(self) -> None:
        """Drop stale heap entries once they outnumber the live ones (amortised O(1))."""
        if len(self._deadlines) > 2 * self._queue.running + 64:
            self._deadlines.compact(self._armed)

    def _expire(self) -> None:
        now = self.clock()
        pushed_back: list[tuple[_Record, float]] = []
        for key in self._deadlines.due(now):
            if not self._armed(key):
                continue
            record = self._live[key[0]]
            limit = self.heartbeat_timeout if record.started else self.start_timeout
            if now - record.last_seen > limit:
                what = "heartbeat" if record.started else "start report"
                self._lose(record, f"attempt {record.attempt}: no {what} for {limit:g} s",
                           retryable=True, timeout=True)
            else:  # heard from since it was pushed: due again a full limit after that
                pushed_back.append((record, limit))
        for record, limit in pushed_back:  # after the loop: each entry is looked at once
            self._deadlines.push(record.last_seen + limit, (record.trial.trial_id, record.armed))

    def _stop_running(self, record: _Record) -> None:
        record.leased = False
        record.armed = 0  # its heap entry goes stale
        self._queue.stopped(record.group)
        self._compact_deadlines()

    def _lose(self, record: _Record, reason: str, retryable: bool, timeout: bool) -> None:
        record.lost.append(reason)
        self._stop_running(record)
        if retryable and record.attempt < self.max_attempts:
            if timeout:
                self.counters.retried_timeout += 1
            else:
                self.counters.retried_lost += 1
            self._enqueue(record)
            self._cond.notify_all()
            return
        why = (f"gave up after {record.attempt} attempts: " if retryable else "") + \
            "; ".join(record.lost)
        self._finish(record, _failed(record, why), {}, attempts=record.attempt)

    def _finish(self, record: _Record, result: TrialResult, artifacts: dict[str, str],
                attempts: int | None = None) -> None:
        if record.leased:
            self._stop_running(record)
        elif record.queued:  # a result of an earlier attempt while it waits to be retried
            self._queue.remove(record.group, record)
            record.queued = False
        if result.status is TrialStatus.SUCCEEDED:
            self.counters.succeeded += 1
        else:
            self.counters.failed += 1
        record.outcome = TrialOutcome(result, artifacts, attempts or record.attempt,
                                      list(record.lost), record.stopped_at_epoch, record.worker,
                                      record.submitted_at, record.started_at, self.clock())
        record.epochs.clear()
        if self.stopper is not None:  # never consulted for this trial again
            self.stopper.forget(record.trial.trial_id)
        record.done.set()
        self._cond.notify_all()
        if self.on_outcome is not None:
            self.on_outcome(record.outcome)


def _failed(record: _Record, error: str) -> TrialResult:
    return TrialResult(record.trial.trial_id, TrialStatus.FAILED, 0.0, error=error)
