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
  serialised (optimistic: each append names the journal length it read).
- ``journal`` returns entries in append order; an entry, once read at a position, is read the
  same there forever (watchers resume by position).

The job's current view is the fold of its journal (``JobView.apply``); backends may store
snapshots of the view to read less, but the journal stays the truth.
"""

from __future__ import annotations

import copy
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protos.errors import AlreadyExistsError, FailedPreconditionError, NotFoundError

R = TypeVar("R")
STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ENDED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
MOVES = {"PENDING": {"RUNNING", *ENDED}, "RUNNING": set(ENDED)}
TRIAL_STATUSES = ("running", "succeeded", "failed")
# facts a job's journal keeps besides trials (supernet: an ENAS job's weight-sharing phase)
NOTE_KINDS = ("policy", "evaluator", "resumed", "supernet")


class ConflictError(RuntimeError):
    """Another writer appended first; re-read and retry (handled inside the store)."""


@dataclass
class JobView:
    """What a job's journal says now."""

    job_id: str
    owner: str
    tenant: str
    spec: dict[str, Any]
    state: str = "PENDING"
    reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    trials: dict[str, dict[str, Any]] = field(default_factory=dict)  # insertion-ordered
    length: int = 0  # journal entries folded in
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last note of each kind
    # trials a ``resumed`` note dropped whose re-queued trial has not started yet (id -> arch):
    # a service killed again before it re-queued them all must re-queue these too
    requeue: dict[str, str] = field(default_factory=dict)

    def apply(self, entry: Mapping[str, Any]) -> None:
        """Fold one journal entry into the view."""
        op, at = entry["op"], float(entry.get("at", 0.0))
        if op == "state":
            self.state, self.reason = entry["state"], entry.get("reason", "")
        elif op == "trial":
            self.trials.setdefault(entry["trial"]["trial_id"],
                                   {**entry["trial"], "status": "running"})
            self.requeue.pop(str(entry["trial"].get("requeues", "")), None)
        elif op == "result":
            trial = self.trials.setdefault(entry["trial_id"], {"trial_id": entry["trial_id"]})
            if trial.get("status") in (None, "running"):
                trial.update(entry["result"])
        elif op == "note":
            self.notes[entry["kind"]] = entry["data"]
            if entry["kind"] == "resumed":  # in-flight trials died with the previous service
                for trial_id in lost_trials(self):
                    self.requeue[trial_id] = str(self.trials.pop(trial_id).get("arch", ""))
        self.updated_at = max(self.updated_at, at)
        self.length += 1

    @classmethod
    def from_journal(cls, entries: Iterable[Mapping[str, Any]]) -> JobView:
        """Fold a whole journal (its first entry creates the job)."""
        it = iter(entries)
        first = next(it, None)
        if first is None or first["op"] != "create":
            raise ValueError("a job's journal must start with its create entry")
        job = first["job"]
        view = cls(job["job_id"], job["owner"], job["tenant"], copy.deepcopy(job["spec"]),
                   created_at=float(first["at"]), updated_at=float(first["at"]), length=1)
        for entry in it:
            view.apply(entry)
        return view

    def to_json(self) -> dict[str, Any]:
        """A snapshot of the view."""
        return copy.deepcopy(vars(self))

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobView:
        """Read back ``to_json``."""
        return cls(**copy.deepcopy(dict(doc)))


def lost_trials(view: JobView) -> list[str]:
    """The trials a ``resumed`` note drops: handed out, never finished."""
    return [k for k, t in view.trials.items() if t.get("status") in (None, "running")]


def to_requeue(view: JobView) -> dict[str, str]:
    """What a resumed job must train again first (trial id -> architecture): the trials handed
    out and never finished, and those an earlier resume dropped but had not re-queued yet
    (its service was killed in between). A re-queued trial's start entry names the trial it
    re-queues (``requeues``), which settles it."""
    lost = dict(view.requeue)
    lost.update((k, str(view.trials[k]["arch"])) for k in lost_trials(view))
    return lost


class JobStore(ABC):
    """Jobs and their trials. See the module docstring for the contract."""

    @abstractmethod
    def create(self, job_id: str, owner: str, tenant: str, spec: Mapping[str, Any]) -> JobView:
        """Record a new PENDING job."""

    @abstractmethod
    def get(self, job_id: str) -> JobView:
        """The job's current view."""

    @abstractmethod
    def jobs(self, tenant: str | None = None, state: str | None = None) -> list[JobView]:
        """Jobs, oldest first, optionally of one tenant and in one state."""

    @abstractmethod
    def set_state(self, job_id: str, state: str, reason: str = "") -> JobView:
        """Move the job to ``state`` (see the allowed moves)."""

    @abstractmethod
    def start_trial(self, job_id: str, trial: Mapping[str, Any]) -> bool:
        """Record a trial handed out (``trial["trial_id"]`` required); False if known."""

    @abstractmethod
    def finish_trial(self, job_id: str, trial_id: str, result: Mapping[str, Any]) -> bool:
        """Record a trial's result (``result["status"]`` in succeeded | failed); False if the
        trial already has one (nothing changes)."""

    @abstractmethod
    def trials(self, job_id: str, status: str | None = None, offset: int = 0,
               limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the job's trials in the order they started, and the next page's offset
        (None after the last page); ValueError for a status not in TRIAL_STATUSES."""

    @abstractmethod
    def note(self, job_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Journal a fact about the job (``kind`` in NOTE_KINDS: policy statistics after an
        update, the evaluator's description, a resume); the view keeps the last of each kind,
        and a ``resumed`` note drops the trials still running (lost with the old service)."""

    @abstractmethod
    def journal(self, job_id: str, offset: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        """The job's journal entries from position ``offset`` on (the create entry is 0); when
        there are none yet, block up to ``wait`` seconds for one (watchers stream these)."""


class JournalJobStore(JobStore):
    """The JobStore API over two journal primitives a backend provides."""

    retries = 50

    @abstractmethod
    def _with_view(self, job_id: str, fn: Callable[[JobView], R]) -> R:
        """``fn`` of the job's up-to-date view, while no other thread changes it (``fn`` must
        not change it either). NotFoundError for an unknown job."""

    @abstractmethod
    def _append(self, job_id: str, expected_length: int, entry: dict[str, Any]) -> None:
        """Append ``entry`` if the journal still has ``expected_length`` entries (0: create the
        job); else raise ConflictError."""

    @abstractmethod
    def _job_ids(self) -> list[str]:
        """Every job id, oldest first."""

    @abstractmethod
    def _read(self, job_id: str, offset: int) -> list[dict[str, Any]]:
        """Journal entries from ``offset`` on (copies); NotFoundError for an unknown job."""

    @abstractmethod
    def _wait_longer(self, job_id: str, length: int, timeout: float) -> None:
        """Return once the journal may be longer than ``length``, or after ``timeout`` s."""

    def journal(self, job_id: str, offset: int = 0, wait: float = 0.0) -> list[dict[str, Any]]:
        if offset < 0:
            raise ValueError(f"offset: must be >= 0, got {offset}")
        deadline = time.monotonic() + wait
        while True:
            entries = self._read(job_id, offset)
            left = deadline - time.monotonic()
            if entries or left <= 0:
                return entries
            self._wait_longer(job_id, offset, left)

    def note(self, job_id: str, kind: str, data: Mapping[str, Any]) -> None:
        if kind not in NOTE_KINDS:
            raise ValueError(f"kind: {kind!r} is not one of {', '.join(NOTE_KINDS)}")
        self._write(job_id, lambda view: ({"op": "note", "kind": kind,
                                           "data": copy.deepcopy(dict(data))}, None))

    def create(self, job_id: str, owner: str, tenant: str, spec: Mapping[str, Any]) -> JobView:
        if not job_id:
            raise ValueError("job_id: must not be empty")
        entry = {"op": "create", "at": time.time(),
                 "job": {"job_id": job_id, "owner": owner, "tenant": tenant,
                         "spec": copy.deepcopy(dict(spec))}}
        try:
            self._append(job_id, 0, entry)
        except ConflictError:
            raise AlreadyExistsError(f"job_id: {job_id!r} exists") from None
        return self.get(job_id)

    def get(self, job_id: str) -> JobView:
        return self._with_view(job_id, copy.deepcopy)

    def jobs(self, tenant: str | None = None, state: str | None = None) -> list[JobView]:
        views = [self.get(j) for j in self._job_ids()]
        return [v for v in views if (tenant is None or v.tenant == tenant)
                and (state is None or v.state == state)]

    def trials(self, job_id: str, status: str | None = None, offset: int = 0,
               limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        if status is not None and status not in TRIAL_STATUSES:
            raise ValueError(f"status: {status!r} is not one of {', '.join(TRIAL_STATUSES)}")

        def page(view: JobView) -> tuple[list[dict[str, Any]], int | None]:
            rows = [t for t in view.trials.values() if status is None or t.get("status") ==
                    status]
            more = offset + limit < len(rows)
            return copy.deepcopy(rows[offset:offset + limit]), offset + limit if more else None

        return self._with_view(job_id, page)

    def _write(self, job_id: str, make: Any) -> Any:
        """Read, decide with ``make(view) -> (entry | None, answer)``, append; retried when
        another writer got in between."""
        for _ in range(self.retries):
            entry, answer, length = self._with_view(job_id, lambda v: (*make(v), v.length))
            if entry is None:
                return answer
            try:
                self._append(job_id, length, {**entry, "at": time.time()})
            except ConflictError:
                continue
            return answer
        raise FailedPreconditionError(f"job {job_id!r}: too many concurrent writers")

    def set_state(self, job_id: str, state: str, reason: str = "") -> JobView:
        if state not in STATES:
            raise ValueError(f"state: {state!r} is not one of {', '.join(STATES)}")

        def make(view: JobView) -> tuple[dict[str, Any] | None, None]:
            if view.state == state:
                return None, None
            if state not in MOVES.get(view.state, set()):
                raise FailedPreconditionError(f"state: job {job_id!r} is {view.state}; it "
                                              f"cannot become {state}")
            return {"op": "state", "state": state, "reason": reason}, None

        self._write(job_id, make)
        return self.get(job_id)

    def start_trial(self, job_id: str, trial: Mapping[str, Any]) -> bool:
        trial_id = str(trial.get("trial_id", ""))
        if not trial_id:
            raise ValueError("trial.trial_id: must not be empty")

        def make(view: JobView) -> tuple[dict[str, Any] | None, bool]:
            if trial_id in view.trials:
                return None, False
            return {"op": "trial", "trial": copy.deepcopy(dict(trial))}, True

        return bool(self._write(job_id, make))

    def finish_trial(self, job_id: str, trial_id: str, result: Mapping[str, Any]) -> bool:
        if result.get("status") not in ("succeeded", "failed"):
            raise ValueError(f"result.status: must be succeeded or failed, got "
                             f"{result.get('status')!r}")

        def make(view: JobView) -> tuple[dict[str, Any] | None, bool]:
            if view.trials.get(trial_id, {}).get("status") in ("succeeded", "failed"):
                return None, False
            return {"op": "result", "trial_id": trial_id,
                    "result": copy.deepcopy(dict(result))}, True

        return bool(self._write(job_id, make))


class InMemoryJobStore(JournalJobStore):
    """Journals in this process (tests, the embedded single-process service); each job's view
    is folded as entries are appended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._entries: dict[str, list[dict[str, Any]]] = {}
        self._views: dict[str, JobView] = {}

    def _with_view(self, job_id: str, fn: Callable[[JobView], R]) -> R:
        with self._lock:
            view = self._views.get(job_id)
            if view is None:
                raise NotFoundError(f"job_id: no job {job_id!r}")
            return fn(view)

    def _append(self, job_id: str, expected_length: int, entry: dict[str, Any]) -> None:
        with self._lock:
            entries = self._entries.get(job_id, [])
            if len(entries) != expected_length:
                raise ConflictError(job_id)
            entry = copy.deepcopy(entry)
            if expected_length == 0:
                self._entries[job_id] = [entry]
                self._views[job_id] = JobView.from_journal([entry])
            else:
                entries.append(entry)
                self._views[job_id].apply(entry)
            self._appended.notify_all()

    def _job_ids(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def _read(self, job_id: str, offset: int) -> list[dict[str, Any]]:
        with self._lock:
            if job_id not in self._entries:
                raise NotFoundError(f"job_id: no job {job_id!r}")
            return copy.deepcopy(self._entries[job_id][offset:])

    def _wait_longer(self, job_id: str, length: int, timeout: float) -> None:
        with self._appended:
            self._appended.wait_for(lambda: len(self._entries.get(job_id, ())) > length,
                                    timeout)
