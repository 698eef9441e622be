"""The job store: search jobs, their trials and results, as an append-only journal per job.

Contract (every backend runs ``tests/test_job_store.py``):
- Values are passed by value: what a method returns is a copy the caller may keep.
- ``create`` a job id twice raises AlreadyExistsError; any call naming an unknown job raises
  NotFoundError.
- States move PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED (PENDING may also end
  directly); a move out of an ended state raises FailedPreconditionError. ``set_state`` to the
  state a job is already in changes nothing.
- A trial's result is recorded once: a second ``finish_trial`` for the same trial is a no-op
  that returns False (a replay, or another attempt arriving late), never an overwrite.
- Writes are atomic: a reader never sees half a write; concurrent writers of one job are
  serialised (optimistic: each append is checked against the summary it was planned on).
- ``journal`` returns entries in append order; an entry, once read at a position, is read the
  same there forever (watchers resume by position), until compaction removes it.
- **No read grows with a job's history or the number of jobs.** Each job keeps a summary
  (``JobSummary``) and trial records with indexes, updated in the same atomic write as each
  append (``projection.plan``): ``get`` reads the summary, ``jobs`` and ``trials`` read one
  page, ``best`` and ``pareto`` read their index.
- Compaction (``journal_keep``): once a job's journal holds ``2 * journal_keep`` entries past
  its base, the oldest are folded into the base summary and removed, keeping the last
  ``journal_keep``; reading before the base raises CompactedError. The summary always equals
  the base summary with the journal folded in.
- A job may keep one checkpoint (``note(..., checkpoint=)``: a JSON document, e.g. the policy's
  learner state beside a ``policy`` note), replaced in the same atomic write as that note's
  append, read by ``checkpoint``, and dropped when the job ends.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from controller.jobs.projection import (
    Change,
    Fronts,
    Reader,
    accuracy_of,
    arch_key,
    best_score,
    front_key,
    plan,
)
from controller.jobs.records import (
    ENDED,
    MOVES,
    NOTE_KINDS,
    STATES,
    TRIAL_STATUSES,
    JobSummary,
    TrialRecord,
    TrialState,
    event_count,
)
from controller.objectives import METRICS
from protos.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)

__all__ = ["ENDED", "NOTE_KINDS", "STATES", "TRIAL_STATUSES", "CompactedError", "ConflictError",
           "InMemoryJobStore", "JobStore", "JobSummary", "JournalJobStore", "TrialRecord",
           "TrialState", "all_jobs"]
MAX_FIELD_PAGE = 1000


class ConflictError(RuntimeError):
    """Another writer appended first; re-read and retry (handled inside the store)."""


class CompactedError(LookupError):
    """The journal entries asked for were compacted away; ``base`` is the first kept."""

    def __init__(self, job_id: str, base: int) -> None:
        super().__init__(f"job {job_id!r}: journal entries before {base} were compacted")
        self.base = base


class JobStore(ABC):
    """Jobs and their trials. See the module docstring for the contract."""

    @abstractmethod
    def create(self, job_id: str, owner: str, tenant: str, spec: Mapping[str, Any]
               ) -> JobSummary:
        """Record a new PENDING job."""

    @abstractmethod
    def get(self, job_id: str) -> JobSummary:
        """The job's summary."""

    @abstractmethod
    def jobs(self, tenant: str | None = None, state: str | None = None, limit: int = 100,
             before: int | None = None) -> tuple[list[JobSummary], int | None]:
        """A page of jobs, newest first, optionally of one tenant and in one state:
        those created before job number ``before`` (None: from the newest), and the next
        page's ``before`` (None after the last page)."""

    @abstractmethod
    def count_jobs(self) -> dict[str, int]:
        """How many jobs are in each state."""

    @abstractmethod
    def tenant_usage(self, tenant: str) -> tuple[int, int]:
        """(budget reserved by the tenant's unfinished jobs, trainings its ended jobs used)."""

    @abstractmethod
    def set_state(self, job_id: str, state: str, reason: str = "") -> JobSummary:
        """Move the job to ``state`` (see the allowed moves)."""

    @abstractmethod
    def start_trial(self, job_id: str, trial: Mapping[str, Any]) -> bool:
        """Record a trial handed out (``trial["trial_id"]`` required, ``arch``, optional
        ``requeues``); False if known."""

    @abstractmethod
    def finish_trial(self, job_id: str, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Record a trial's result (``result["status"]`` in succeeded | failed; ``reward``,
        ``cached``, ``same_as``, ``error``, ``metrics``, ``artifacts``, ``cache_key``); False if
        the trial already has one (nothing changes)."""

    @abstractmethod
    def trial(self, job_id: str, trial_id: str) -> TrialRecord:
        """One trial's record (NotFoundError naming it if the job has none)."""

    @abstractmethod
    def trials(self, job_id: str, status: str | None = None, after: int = -1,
               limit: int = 100) -> tuple[list[TrialRecord], int | None]:
        """A page of the job's trials in the order they started: those with ``index > after``,
        and the next page's ``after`` (None after the last page); ValueError for a status not
        in TRIAL_STATUSES."""

    @abstractmethod
    def best(self, job_id: str, k: int) -> list[TrialRecord]:
        """The ``k`` best succeeded trials, one per trained architecture (its first trial),
        highest reward first (ties: the earlier trial)."""

    @abstractmethod
    def pareto(self, job_id: str, metrics: Sequence[str]) -> list[TrialRecord]:
        """The trials on the Pareto front of accuracy (max) against ``metrics`` (min), one per
        trained architecture, best accuracy first (then cheapest, then earliest); ValueError
        naming an unknown or repeated metric."""

    @abstractmethod
    def note(self, job_id: str, kind: str, data: Mapping[str, Any],
             checkpoint: Mapping[str, Any] | None = None) -> None:
        """Journal a fact about the job (``kind`` in NOTE_KINDS: policy statistics after an
        update, the evaluator's description, a resume); the summary keeps the last of each
        kind, and a ``resumed`` note drops the trials still running (lost with the old
        service). ``checkpoint`` (JSON) replaces the job's checkpoint in the same write; it is
        not journalled."""

    @abstractmethod
    def checkpoint(self, job_id: str) -> dict[str, Any] | None:
        """The job's last checkpoint (None: none, or the job has ended)."""

    @abstractmethod
    def journal(self, job_id: str, offset: int = 0, wait: float = 0.0,
                limit: int | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` journal entries from position ``offset`` on (the create entry is 0);
        when there are none yet, block up to ``wait`` seconds for one (watchers stream these).
        CompactedError when ``offset`` is before the job's base."""

    @abstractmethod
    def seek(self, job_id: str, after_seq: int) -> int:
        """The position of the first entry with a watch event numbered above ``after_seq``
        (the journal's length when there is none yet; the base when those were compacted)."""

    @abstractmethod
    def base_summary(self, job_id: str) -> JobSummary | None:
        """The summary as of the job's base (None: nothing was compacted)."""

    @abstractmethod
    def cached(self, cache_key: str) -> dict[str, Any] | None:
        """The first training recorded under ``cache_key`` by any job (``reward``, ``arch``,
        ``metrics``, ``artifacts``: unshaped), or None."""

    def release(self, job_id: str) -> None:  # noqa: B027 (most backends keep nothing)
        """Forget what this process keeps for an ended job (the stored job stays)."""


def all_jobs(store: JobStore, tenant: str | None = None, state: str | None = None,
             page: int = 500) -> Iterator[JobSummary]:
    """Every job matching the filters, newest first, read a page at a time (for the few
    callers that must see them all, e.g. resuming the unfinished jobs)."""
    before: int | None = None
    while True:
        jobs, before = store.jobs(tenant, state, page, before)
        yield from jobs
        if before is None:
            return


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The metrics of a Pareto request (none: params); ValueError naming a bad one."""
    chosen = list(metrics) or ["params"]
    for i, metric in enumerate(chosen):
        if metric not in METRICS:
            raise InvalidArgumentError(f"objectives[{i}]: {metric!r} is not one of "
                                       f"{', '.join(METRICS)}")
        if metric in chosen[:i]:
            raise InvalidArgumentError(f"objectives[{i}]: {metric} is named twice")
    return chosen


def order_front(records: list[TrialRecord], metrics: Sequence[str]) -> list[TrialRecord]:
    """A front's records, best accuracy first, then cheapest in ``metrics`` order, then
    earliest."""
    return sorted(records, key=lambda r: (-accuracy_of(r),
                                          *(float(r.metrics[m]) for m in metrics), r.index))


class Txn(Reader, Protocol):
    """One job's write in progress: its summary, what a plan reads, and the commit."""

    summary: JobSummary

    def entries(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Journal entries at positions [start, stop) (for compaction)."""

    def base_summary(self) -> JobSummary | None:
        """The stored base summary."""

    def commit(self, change: Change, compaction: tuple[JobSummary, int] | None) -> None:
        """Apply the change (and the compaction: the new base summary and its position)
        atomically; ConflictError when another writer got in first."""


class JournalJobStore(JobStore):
    """The JobStore write logic over a backend's transactions."""

    retries = 50

    def __init__(self, journal_keep: int | None = None) -> None:
        if journal_keep is not None and journal_keep < 1:
            raise ValueError(f"journal_keep: must be >= 1, got {journal_keep}")
        self.journal_keep = journal_keep

    @abstractmethod
    def _transaction(self, job_id: str) -> contextlib.AbstractContextManager[Txn]:
        """A write of the job (NotFoundError for an unknown job)."""

    @abstractmethod
    def _insert(self, summary: JobSummary, entry: dict[str, Any]) -> JobSummary:
        """Store a new job (its summary and create entry, numbered by the backend);
        ConflictError when the id exists."""

    def create(self, job_id: str, owner: str, tenant: str, spec: Mapping[str, Any]
               ) -> JobSummary:
        if not job_id:
            raise ValueError("job_id: must not be empty")
        entry = {"op": "create", "at": time.time(), "seq": 0,
                 "job": {"job_id": job_id, "owner": owner, "tenant": tenant,
                         "spec": copy.deepcopy(dict(spec))}}
        try:
            return self._insert(JobSummary.created(entry, 0), entry)
        except ConflictError:
            raise AlreadyExistsError(f"job_id: {job_id!r} exists") from None

    def _write(self, job_id: str, make: Callable[[JobSummary, Reader],
                                                  tuple[dict[str, Any] | None, Any]],
               checkpoint: Mapping[str, Any] | None = None) -> Any:
        """Read, decide with ``make(summary, reader) -> (entry | None, answer)``, append with
        its plan (and ``checkpoint``, unless the job has ended); retried when another writer
        got in between."""
        for _ in range(self.retries):
            with self._transaction(job_id) as txn:
                entry, answer = make(txn.summary, txn)
                if entry is None:
                    return answer
                change = plan(txn.summary, {**entry, "at": time.time()}, txn)
                if checkpoint is not None and txn.summary.state not in ENDED:
                    change.checkpoint = dict(checkpoint)
                try:
                    txn.commit(change, self._compaction(txn, change.summary))
                except ConflictError:
                    continue
                return answer
        raise FailedPreconditionError(f"job {job_id!r}: too many concurrent writers")

    def _compaction(self, txn: Txn, summary: JobSummary) -> tuple[JobSummary, int] | None:
        """The new base when the journal has grown ``2 * journal_keep`` past its base."""
        keep = self.journal_keep
        if keep is None or summary.length - summary.base < 2 * keep:
            return None
        cut = summary.length - keep
        base = txn.base_summary()
        entries = txn.entries(summary.base, cut)  # the new entry (at length - 1) stays
        if base is None:
            base = JobSummary.created(entries[0], summary.number)
            entries = entries[1:]
        for entry in entries:
            base.apply(entry)
        summary.base = cut
        return base, cut

    def set_state(self, job_id: str, state: str, reason: str = "") -> JobSummary:
        if state not in STATES:
            raise ValueError(f"state: {state!r} is not one of {', '.join(STATES)}")

        def make(summary: JobSummary, _: Reader) -> tuple[dict[str, Any] | None, None]:
            if summary.state == state:
                return None, None
            if state not in MOVES.get(summary.state, set()):
                raise FailedPreconditionError(f"state: job {job_id!r} is {summary.state}; it "
                                              f"cannot become {state}")
            return {"op": "state", "state": state, "reason": reason}, None

        self._write(job_id, make)
        return self.get(job_id)

    def start_trial(self, job_id: str, trial: Mapping[str, Any]) -> bool:
        trial_id = str(trial.get("trial_id", ""))
        if not trial_id:
            raise ValueError("trial.trial_id: must not be empty")

        def make(summary: JobSummary, reader: Reader) -> tuple[dict[str, Any] | None, bool]:
            if trial_id in summary.running or reader.trial(trial_id) is not None:
                return None, False
            return {"op": "trial", "trial": copy.deepcopy(dict(trial))}, True

        return bool(self._write(job_id, make))

    def finish_trial(self, job_id: str, trial_id: str, result: Mapping[str, Any]) -> bool:
        if result.get("status") not in (TrialState.SUCCEEDED.value, TrialState.FAILED.value):
            raise ValueError(f"result.status: must be succeeded or failed, got "
                             f"{result.get('status')!r}")

        def make(summary: JobSummary, reader: Reader) -> tuple[dict[str, Any] | None, bool]:
            if trial_id not in summary.running:
                known = reader.trial(trial_id)
                if known is not None and known.done:
                    return None, False
            return {"op": "result", "trial_id": trial_id,
                    "result": copy.deepcopy(dict(result))}, True

        return bool(self._write(job_id, make))

    def note(self, job_id: str, kind: str, data: Mapping[str, Any],
             checkpoint: Mapping[str, Any] | None = None) -> None:
        if kind not in NOTE_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(NOTE_KINDS)}")
        self._write(job_id, lambda summary, reader: (
            {"op": "note", "kind": kind, "data": copy.deepcopy(dict(data))}, None),
            checkpoint)

    def journal(self, job_id: str, offset: int = 0, wait: float = 0.0,
                limit: int | None = None) -> list[dict[str, Any]]:
        if offset < 0:
            raise ValueError(f"offset: must be >= 0, got {offset}")
        deadline = time.monotonic() + wait
        while True:
            entries = self._read(job_id, offset, limit)
            left = deadline - time.monotonic()
            if entries or left <= 0:
                return entries
            self._wait_longer(job_id, offset, left)

    @abstractmethod
    def _read(self, job_id: str, offset: int, limit: int | None) -> list[dict[str, Any]]:
        """Up to ``limit`` entries from ``offset`` (copies); NotFoundError, CompactedError."""

    @abstractmethod
    def _wait_longer(self, job_id: str, length: int, timeout: float) -> None:
        """Return once the journal may be longer than ``length``, or after ``timeout`` s."""

    @abstractmethod
    def _entry_at(self, job_id: str, position: int) -> dict[str, Any] | None:
        """The entry at ``position`` (None if compacted or not written)."""

    def seek(self, job_id: str, after_seq: int) -> int:
        summary = self.get(job_id)
        low, high = summary.base, summary.length  # binary search on seq + events, monotone
        while low < high:
            mid = (low + high) // 2
            entry = self._entry_at(job_id, mid)
            if entry is None:  # compacted meanwhile: start at the (new) base
                return self.get(job_id).base
            if int(entry["seq"]) + event_count(entry) > after_seq:
                high = mid
            else:
                low = mid + 1
        return low

    def trials(self, job_id: str, status: str | None = None, after: int = -1,
               limit: int = 100) -> tuple[list[TrialRecord], int | None]:
        if status is not None and status not in TRIAL_STATUSES:
            raise ValueError(f"status: {status!r} is not one of {', '.join(TRIAL_STATUSES)}")
        if limit < 1:
            raise ValueError(f"limit: must be >= 1, got {limit}")
        page = self._page(job_id, status, after, limit + 1)
        if len(page) > limit:
            return page[:limit], page[limit - 1].index
        return page, None

    @abstractmethod
    def _page(self, job_id: str, status: str | None, after: int, limit: int
              ) -> list[TrialRecord]:
        """Up to ``limit`` records of ``status`` (None: any) with index > ``after``, in index
        order."""

    def pareto(self, job_id: str, metrics: Sequence[str]) -> list[TrialRecord]:
        chosen = check_metrics(metrics)
        summary = self.get(job_id)
        fronts = self._fronts(job_id)
        for metric in chosen:
            if summary.succeeded and not fronts.get(metric):
                raise FailedPreconditionError(
                    f"objectives: no trained child of this job has {metric} measured (the "
                    f"nb201 evaluator measures latency only for jobs with a latency_ms "
                    f"objective)")
        members = fronts.get(front_key(chosen), [])
        records = [r for r in self._records(job_id, [m["trial_id"] for m in members])
                   if r is not None]
        return order_front(records, chosen)

    @abstractmethod
    def _fronts(self, job_id: str) -> Fronts:
        """The job's Pareto fronts."""

    @abstractmethod
    def _records(self, job_id: str, trial_ids: list[str]) -> list[TrialRecord | None]:
        """The records of ``trial_ids`` (None for an unknown one)."""

    def trial(self, job_id: str, trial_id: str) -> TrialRecord:
        found = self._records(job_id, [trial_id])[0]
        if found is None:
            self.get(job_id)  # NotFoundError naming the job when it is the job that is unknown
            raise NotFoundError(f"trial_id: job {job_id} has no trial {trial_id!r}")
        return found


@dataclass
class _Job:
    """One job in memory: its summary, journal tail and indexes."""

    summary: JobSummary
    entries: list[dict[str, Any]]  # positions summary.base ..
    base: JobSummary | None = None
    records: dict[str, TrialRecord] = field(default_factory=dict)
    by_status: dict[str, list[tuple[int, str]]] = field(
        default_factory=lambda: {s: [] for s in TRIAL_STATUSES})
    order: list[tuple[int, str]] = field(default_factory=list)
    best: list[tuple[tuple[float, int], str]] = field(default_factory=list)
    trained: set[str] = field(default_factory=set)
    fronts: Fronts = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None


class _MemoryTxn:
    """A write of one in-memory job (the store's lock is held throughout)."""

    def __init__(self, store: InMemoryJobStore, job: _Job) -> None:
        self.store = store
        self.job = job
        self.summary = job.summary

    def trial(self, trial_id: str) -> TrialRecord | None:
        return self.job.records.get(trial_id)

    def has_trained(self, arch_key: str) -> bool:
        return arch_key in self.job.trained

    def fronts(self) -> Fronts:
        return self.job.fronts

    def entries(self, start: int, stop: int) -> list[dict[str, Any]]:
        first = self.job.summary.base
        return copy.deepcopy(self.job.entries[start - first:stop - first])

    def base_summary(self) -> JobSummary | None:
        return self.job.base.copy() if self.job.base else None

    def commit(self, change: Change, compaction: tuple[JobSummary, int] | None) -> None:
        job = self.job
        for record, old in change.records:
            if old is not None:
                _remove(job.by_status[old.value], (record.index, record.trial_id))
            else:
                bisect.insort(job.order, (record.index, record.trial_id))
            bisect.insort(job.by_status[record.status.value], (record.index, record.trial_id))
            job.records[record.trial_id] = record
        for record in change.dropped:
            del job.records[record.trial_id]
            _remove(job.order, (record.index, record.trial_id))
            _remove(job.by_status[record.status.value], (record.index, record.trial_id))
        if change.best is not None:
            bisect.insort(job.best, (best_score(change.best), change.best.trial_id))
            job.trained.add(arch_key(change.best.trained_arch))
        if change.fronts is not None:
            job.fronts = change.fronts
        job.entries.append(copy.deepcopy(change.entry))
        if compaction is not None:
            job.base, cut = compaction
            del job.entries[:cut - self.summary.base]
        job.summary = change.summary
        self.store._indexed(change.summary, change.state, change.reserved, change.used)
        if change.cache is not None:
            self.store._cache.setdefault(*change.cache)
        if change.checkpoint is not None:
            job.checkpoint = copy.deepcopy(change.checkpoint)
        elif change.drop_checkpoint:
            job.checkpoint = None


def _remove(items: list[tuple[Any, str]], item: tuple[Any, str]) -> None:
    at = bisect.bisect_left(items, item)
    if at < len(items) and items[at] == item:
        del items[at]


class InMemoryJobStore(JournalJobStore):
    """Jobs in this process (tests, the embedded single-process service)."""

    def __init__(self, journal_keep: int | None = None) -> None:
        super().__init__(journal_keep)
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}
        self._numbers: list[tuple[int, str]] = []  # (number, job id), creation order
        self._by: dict[tuple[str | None, str | None], list[int]] = {}  # filter -> numbers
        self._usage: dict[str, list[int]] = {}  # tenant -> [reserved, used]
        self._cache: dict[str, dict[str, Any]] = {}

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return job

    @contextlib.contextmanager
    def _transaction(self, job_id: str) -> Iterator[Txn]:
        with self._lock:
            yield _MemoryTxn(self, self._job(job_id))

    def _indexed(self, summary: JobSummary, move: tuple[str | None, str] | None,
                 reserved: int, used: int) -> None:
        """Keep the filter lists and the tenant's usage up to date (lock held)."""
        number, tenant = summary.number, summary.tenant
        if move is not None:
            old, new = move
            if old is not None:
                for key in ((None, old), (tenant, old)):
                    _remove_number(self._by.get(key, []), number)
            for key in ((None, new), (tenant, new)):
                bisect.insort(self._by.setdefault(key, []), number)
        usage = self._usage.setdefault(tenant, [0, 0])
        usage[0] += reserved
        usage[1] += used
        self._appended.notify_all()

    def _insert(self, summary: JobSummary, entry: dict[str, Any]) -> JobSummary:
        with self._lock:
            if summary.job_id in self._jobs:
                raise ConflictError(summary.job_id)
            summary.number = len(self._numbers) + 1
            self._jobs[summary.job_id] = _Job(summary, [copy.deepcopy(entry)])
            self._numbers.append((summary.number, summary.job_id))
            for key in ((None, None), (summary.tenant, None)):
                self._by.setdefault(key, []).append(summary.number)
            self._indexed(summary, (None, summary.state), summary.budget, 0)
            return summary.copy()

    def get(self, job_id: str) -> JobSummary:
        with self._lock:
            return self._job(job_id).summary.copy()

    def jobs(self, tenant: str | None = None, state: str | None = None, limit: int = 100,
             before: int | None = None) -> tuple[list[JobSummary], int | None]:
        with self._lock:
            numbers = self._by.get((tenant, state), [])
            end = len(numbers) if before is None else bisect.bisect_left(numbers, before)
            chosen = numbers[max(0, end - limit):end][::-1]
            page = [self._jobs[self._numbers[n - 1][1]].summary.copy() for n in chosen]
            return page, (chosen[-1] if end > limit else None)

    def count_jobs(self) -> dict[str, int]:
        with self._lock:
            return {s: len(self._by.get((None, s), [])) for s in STATES}

    def tenant_usage(self, tenant: str) -> tuple[int, int]:
        with self._lock:
            reserved, used = self._usage.get(tenant, (0, 0))
            return reserved, used

    def cached(self, cache_key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._cache.get(cache_key)
            return copy.deepcopy(found) if found is not None else None

    def _read(self, job_id: str, offset: int, limit: int | None) -> list[dict[str, Any]]:
        with self._lock:
            job = self._job(job_id)
            if offset < job.summary.base:
                raise CompactedError(job_id, job.summary.base)
            start = offset - job.summary.base
            stop = None if limit is None else start + limit
            return copy.deepcopy(job.entries[start:stop])

    def _entry_at(self, job_id: str, position: int) -> dict[str, Any] | None:
        with self._lock:
            job = self._job(job_id)
            at = position - job.summary.base
            return job.entries[at] if 0 <= at < len(job.entries) else None

    def _wait_longer(self, job_id: str, length: int, timeout: float) -> None:
        with self._appended:
            self._appended.wait_for(lambda: self._job(job_id).summary.length > length, timeout)

    def base_summary(self, job_id: str) -> JobSummary | None:
        with self._lock:
            base = self._job(job_id).base
            return base.copy() if base else None

    def _page(self, job_id: str, status: str | None, after: int, limit: int
              ) -> list[TrialRecord]:
        with self._lock:
            job = self._job(job_id)
            ids = job.order if status is None else job.by_status[status]
            start = bisect.bisect_right(ids, (after, "\U0010ffff"))
            return [_copied(job.records[t]) for _, t in ids[start:start + limit]]

    def best(self, job_id: str, k: int) -> list[TrialRecord]:
        with self._lock:
            job = self._job(job_id)
            return [_copied(job.records[t]) for _, t in job.best[:k]]

    def _fronts(self, job_id: str) -> Fronts:
        with self._lock:
            return copy.deepcopy(self._job(job_id).fronts)

    def _records(self, job_id: str, trial_ids: list[str]) -> list[TrialRecord | None]:
        with self._lock:
            job = self._job(job_id)
            return [_copied(r) if (r := job.records.get(t)) else None for t in trial_ids]

    def checkpoint(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._job(job_id).checkpoint)


def _copied(record: TrialRecord) -> TrialRecord:
    """A record the caller may keep (its mappings are its own)."""
    return replace(record, metrics=dict(record.metrics), artifacts=dict(record.artifacts))


def _remove_number(numbers: list[int], number: int) -> None:
    at = bisect.bisect_left(numbers, number)
    if at < len(numbers) and numbers[at] == number:
        del numbers[at]
