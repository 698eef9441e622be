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
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from controller.early_stopping import EarlyStopper
from protos.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError
from protos.types import Resources, Trial, TrialResult, TrialStatus, Workload


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


@dataclass
class _Record:
    trial: Trial
    workload: Workload
    resources: Resources
    group: str = ""  # fairness group (a tenant)
    attempt: int = 0  # the current attempt (0: queued, never leased)
    leased: bool = False
    started: bool = False
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


class TrialHandle:
    """The submitter's view of one trial."""

    def __init__(self, board: TrialBoard, trial_id: str) -> None:
        self.board = board
        self.trial_id = trial_id

    def wait(self, timeout: float | None = None) -> TrialOutcome | None:
        """The outcome once the trial has one (None on timeout)."""
        record = self.board._record(self.trial_id)
        if not record.done.wait(timeout):
            return None
        return record.outcome


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
        self._records: dict[str, _Record] = {}
        self._queue: deque[str] = deque()
        self._grouped = False  # some trial has a fairness group
        self._cond = threading.Condition()
        self._closed = False

    # -- the submitter's side ------------------------------------------------------------

    def submit(self, trial: Trial, workload: Workload, resources: Resources,
               group: str = "") -> TrialHandle:
        """Queue ``trial`` for a worker (in fairness ``group``); submitting the same trial id
        again is an error."""
        with self._cond:
            if self._closed:
                raise FailedPreconditionError("the trial board is closed")
            if trial.trial_id in self._records:
                raise AlreadyExistsError(f"trial_id: {trial.trial_id!r} was submitted before")
            self._records[trial.trial_id] = _Record(trial, workload, resources, group,
                                                    submitted_at=self.clock())
            self._queue.append(trial.trial_id)
            self._grouped = self._grouped or bool(group)
            self.counters.submitted += 1
            self._cond.notify_all()
        return TrialHandle(self, trial.trial_id)

    def close(self, reason: str = "the search stopped") -> None:
        """Fail every unfinished trial (its waiter returns) and refuse new submissions."""
        with self._cond:
            self._closed = True
            for record in self._records.values():
                if record.outcome is None:
                    self._finish(record, _failed(record, f"not finished: {reason}"), {})
            self._queue.clear()
            self._cond.notify_all()

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
                record = self._records[self._next_fair()]
                record.attempt += 1
                record.leased, record.started = True, False
                record.last_seen = self.clock()
                record.epochs.clear()
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
            record, stale = self._current(trial_id, attempt)
            if stale is not None:
                return stale
            if record.started:
                return Ack(duplicate=True)
            record.started, record.worker = True, worker
            record.last_seen = record.started_at = self.clock()
            return Ack(accepted=True)

    def heartbeat(self, trial_id: str, attempt: int) -> Ack:
        """The attempt is alive."""
        with self._cond:
            record, stale = self._current(trial_id, attempt)
            if stale is not None:
                return stale
            record.last_seen = self.clock()
            return Ack(accepted=True)

    def progress(self, trial_id: str, attempt: int, epoch: int, train_loss: float,
                 val_accuracy: float) -> Ack:
        """``epoch`` epochs done; the answer says whether to stop (early stopping)."""
        with self._cond:
            record, stale = self._current(trial_id, attempt)
            if stale is not None:
                return stale
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
            record = self._record(trial_id)
            if result.trial_id != trial_id:
                raise FailedPreconditionError(f"result.trial_id: {result.trial_id!r} reported "
                                              f"for trial {trial_id!r}")
            if not 1 <= attempt <= record.attempt:
                raise FailedPreconditionError(f"attempt: {attempt} of trial {trial_id!r} was "
                                              f"never leased (current: {record.attempt})")
            if record.outcome is not None:
                self.counters.duplicates += 1
                return Ack(duplicate=True)
            record.reported = attempt
            self._finish(record, result, dict(artifacts or {}), attempts=attempt)
            return Ack(accepted=True)

    def lost(self, trial_id: str, attempt: int, reason: str, retryable: bool = True) -> Ack:
        """The attempt's process died (or could not run): retry it or fail the trial."""
        with self._cond:
            record, stale = self._current(trial_id, attempt)
            if stale is not None:
                return stale
            self._lose(record, reason, retryable, timeout=False)
            return Ack(accepted=True)

    def expire(self) -> None:
        """Retry every attempt whose heartbeats stopped (also done on each lease)."""
        with self._cond:
            self._expire()

    # -- reading -----------------------------------------------------------------------

    def outcome(self, trial_id: str) -> TrialOutcome | None:
        """The trial's outcome, if it has one."""
        with self._cond:
            return self._record(trial_id).outcome

    def attempt(self, trial_id: str) -> tuple[int, str]:
        """The current attempt's number and the worker (host:pid) that started it ("" if it has
        not started)."""
        with self._cond:
            record = self._record(trial_id)
            return record.attempt, record.worker if record.started else ""

    def queued(self) -> int:
        """Trials waiting for a worker."""
        with self._cond:
            return len(self._queue)

    def running(self) -> int:
        """Trials leased and not finished."""
        with self._cond:
            return sum(1 for r in self._records.values() if r.leased and r.outcome is None)

    # -- internals (lock held) -----------------------------------------------------------

    def _record(self, trial_id: str) -> _Record:
        try:
            return self._records[trial_id]
        except KeyError:
            raise NotFoundError(f"trial_id: no trial {trial_id!r} on this controller") from None

    def _reported(self, trial_id: str, attempt: int) -> bool:
        record = self._records.get(trial_id)
        return record is not None and record.reported == attempt

    def _wanted(self, trial_id: str, attempt: int) -> bool:
        record = self._records.get(trial_id)
        return (record is not None and record.outcome is None and record.leased
                and record.attempt == attempt)

    def _current(self, trial_id: str, attempt: int) -> tuple[_Record, Ack | None]:
        """The record, and the answer to give when ``attempt`` is not the live one."""
        record = self._record(trial_id)
        if not 1 <= attempt <= record.attempt:
            raise FailedPreconditionError(f"attempt: {attempt} of trial {trial_id!r} was never "
                                          f"leased (current: {record.attempt})")
        if record.outcome is not None:
            return record, Ack(duplicate=True, superseded=True, reason="the trial has a result")
        if attempt != record.attempt or not record.leased:
            return record, Ack(duplicate=True, superseded=True,
                               reason=f"attempt {attempt} was superseded by attempt "
                                      f"{record.attempt}")
        return record, None

    def _next_fair(self) -> str:
        """Take from the queue the first trial of the group with the fewest running trials."""
        if not self._grouped:
            return self._queue.popleft()
        running: dict[str, int] = {}
        for r in self._records.values():
            if r.leased and r.outcome is None:
                running[r.group] = running.get(r.group, 0) + 1
        best = min(range(len(self._queue)),
                   key=lambda i: (running.get(self._records[self._queue[i]].group, 0), i))
        trial_id = self._queue[best]
        del self._queue[best]
        return trial_id

    def _expire(self) -> None:
        now = self.clock()
        for record in self._records.values():
            if not record.leased or record.outcome is not None:
                continue
            limit = self.heartbeat_timeout if record.started else self.start_timeout
            if now - record.last_seen > limit:
                what = "heartbeat" if record.started else "start report"
                self._lose(record, f"attempt {record.attempt}: no {what} for {limit:g} s",
                           retryable=True, timeout=True)

    def _lose(self, record: _Record, reason: str, retryable: bool, timeout: bool) -> None:
        record.lost.append(reason)
        record.leased = False
        if retryable and record.attempt < self.max_attempts:
            if timeout:
                self.counters.retried_timeout += 1
            else:
                self.counters.retried_lost += 1
            self._queue.append(record.trial.trial_id)
            self._cond.notify_all()
            return
        why = (f"gave up after {record.attempt} attempts: " if retryable else "") + \
            "; ".join(record.lost)
        self._finish(record, _failed(record, why), {}, attempts=record.attempt)

    def _finish(self, record: _Record, result: TrialResult, artifacts: dict[str, str],
                attempts: int | None = None) -> None:
        record.leased = False
        if result.status is TrialStatus.SUCCEEDED:
            self.counters.succeeded += 1
        else:
            self.counters.failed += 1
        record.outcome = TrialOutcome(result, artifacts, attempts or record.attempt,
                                      list(record.lost), record.stopped_at_epoch, record.worker,
                                      record.submitted_at, record.started_at, self.clock())
        record.done.set()
        self._cond.notify_all()
        if self.on_outcome is not None:
            self.on_outcome(record.outcome)


def _failed(record: _Record, error: str) -> TrialResult:
    return TrialResult(record.trial.trial_id, TrialStatus.FAILED, 0.0, error=error)
