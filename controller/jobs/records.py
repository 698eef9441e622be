"""The values a job store keeps: a job's summary and its trial records.

A job's journal is the truth; these are folds of it kept up to date as entries are appended, so
no read needs the journal (or a copy of it):

- ``JobSummary`` is bounded whatever the job's length: state, counts, budget spent, the best
  trial, the last note of each kind, the trials in flight. ``JobSummary.apply`` folds one entry.
- ``TrialRecord`` is one trial as it stands (one per trial, typed).

Journal entries are JSON objects with ``op`` (create | state | trial | result | note) and
``at``; the store stamps each with ``seq``, the number of watch events before it, so watchers
can number events without folding the journal from its start (``event_count``).
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ENDED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
MOVES = {"PENDING": {"RUNNING", *ENDED}, "RUNNING": set(ENDED)}
# facts a job's journal keeps besides trials (supernet: an ENAS job's weight-sharing phase)
# repeats: how many cache hits of architectures the job already had (counted, not journalled
# one by one)
NOTE_KINDS = ("policy", "evaluator", "resumed", "supernet", "repeats")


class TrialState(enum.Enum):
    """Where a trial is."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TRIAL_STATUSES = tuple(s.value for s in TrialState)
DONE = frozenset({TrialState.SUCCEEDED, TrialState.FAILED})


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a job: what was proposed, what was trained for it, and how it ended.

    ``index`` numbers the job's trials in the order they started (pages are read by it);
    ``trained_arch`` is the architecture whose training gave the reward (an isomorphic twin's
    for a cache hit of one); ``requeues`` names the trial a resumed job re-queued as this one.
    """

    trial_id: str
    index: int
    arch: str = ""
    status: TrialState = TrialState.RUNNING
    trained_arch: str = ""
    reward: float = 0.0
    cached: bool = False
    error: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)
    cache_key: str = ""
    requeues: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def done(self) -> bool:
        """Whether the trial has its result."""
        return self.status in DONE

    def to_json(self) -> dict[str, Any]:
        """The stored form: fields at their defaults are left out (a store keeps one record per
        trial, so its size is what a trial costs), as is the trained architecture when it is
        the proposed one."""
        doc: dict[str, Any] = {"trial_id": self.trial_id, "index": self.index,
                               "status": self.status.value}
        for name in ("arch", "reward", "cached", "error", "cache_key", "requeues",
                     "started_at", "finished_at"):
            value = getattr(self, name)
            if value:
                doc[name] = value
        if self.trained_arch != self.arch:
            doc["trained_arch"] = self.trained_arch
        if self.metrics:
            doc["metrics"] = dict(self.metrics)
        if self.artifacts:
            doc["artifacts"] = dict(self.artifacts)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TrialRecord:
        """Read back ``to_json``."""
        return cls(**{**doc, "status": TrialState(doc["status"]),
                      "trained_arch": doc.get("trained_arch", doc.get("arch", "")),
                      "metrics": dict(doc.get("metrics", {})),
                      "artifacts": dict(doc.get("artifacts", {}))})

    def history_json(self) -> dict[str, Any]:
        """The result.json history form of a finished trial (as ``HistoryEntry.to_json``)."""
        out: dict[str, Any] = {"trial_id": self.trial_id, "arch": self.arch,
                               "reward": self.reward, "cached": self.cached}
        if self.trained_arch and self.trained_arch != self.arch:
            out["same_as"] = self.trained_arch
        if self.status is not TrialState.SUCCEEDED:
            out["status"], out["error"] = self.status.value, self.error
        if self.metrics:
            out["metrics"] = dict(self.metrics)
        if self.artifacts:
            out["artifacts"] = dict(self.artifacts)
        return out


def started_record(trial: Mapping[str, Any], index: int, at: float) -> TrialRecord:
    """The record of a trial handed out (a ``trial`` entry's payload)."""
    arch = str(trial.get("arch", ""))
    return TrialRecord(str(trial["trial_id"]), index, arch, trained_arch=arch,
                       requeues=str(trial.get("requeues", "")), started_at=at)


def finished_record(before: TrialRecord, result: Mapping[str, Any], at: float) -> TrialRecord:
    """``before`` with a ``result`` entry's payload (status, reward, cached, same_as, error,
    metrics, artifacts, cache_key) applied."""
    arch = str(result.get("arch", before.arch))
    return replace(before, arch=arch, status=TrialState(result["status"]),
                   trained_arch=str(result.get("same_as", arch)),
                   reward=float(result.get("reward", 0.0)), cached=bool(result.get("cached")),
                   error=str(result.get("error", "")),
                   metrics={k: float(v) for k, v in result.get("metrics", {}).items()},
                   artifacts={k: str(v) for k, v in result.get("artifacts", {}).items()},
                   cache_key=str(result.get("cache_key", "")), finished_at=at)


def charged(metrics: Mapping[str, float]) -> float:
    """The budget a training charged: 1, or the share of its epochs it trained when early
    stopping stopped it."""
    if "stopped_at_epoch" in metrics and metrics.get("max_epochs"):
        return float(metrics.get("epochs", metrics["max_epochs"])) / float(metrics["max_epochs"])
    return 1.0


def event_count(entry: Mapping[str, Any]) -> int:
    """How many watch events a (stamped) journal entry makes: a state change, a trial start or
    a policy update one each; a result one, two when it is a new best; a resume one per trial
    it found in flight (lost); other notes none."""
    op = entry["op"]
    if op in ("create", "state", "trial"):
        return 1
    if op == "result":
        return 2 if entry.get("best") else 1
    if op == "note":
        if entry["kind"] == "policy":
            return 1
        if entry["kind"] == "resumed":
            return len(entry.get("lost", {}))
    return 0


@dataclass(frozen=True)
class Best:
    """The best succeeded trial so far."""

    trial_id: str
    reward: float
    arch: str  # the trained architecture


@dataclass
class JobSummary:
    """What a job's journal says now, in a size that does not grow with the job's length."""

    job_id: str
    owner: str
    tenant: str
    spec: dict[str, Any]
    number: int = 0  # creation order in the store (ListSearches pages by it)
    state: str = "PENDING"
    reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    length: int = 0  # journal entries appended (positions 0 .. length - 1)
    base: int = 0  # entries before this position were compacted away
    events: int = 0  # watch events numbered so far
    started: int = 0  # trials started (the next one's index)
    succeeded: int = 0
    failed: int = 0
    trainings: int = 0  # finished trials that trained (not cache hits)
    cache_hits: int = 0
    budget_spent: float = 0.0
    best: Best | None = None
    policy_version: int = 0
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)  # the last of each kind
    running: dict[str, str] = field(default_factory=dict)  # trial id -> arch, in flight
    # trials a ``resumed`` note dropped whose re-queued trial has not started yet (id -> arch):
    # a service killed again before it re-queued them all must re-queue these too
    requeue: dict[str, str] = field(default_factory=dict)

    @property
    def budget(self) -> int:
        """The trainings the job may spend."""
        return int(self.spec.get("budget", 0))

    @property
    def finished(self) -> int:
        """Trials with a result (trainings and cache hits)."""
        return self.succeeded + self.failed

    @property
    def repeats(self) -> int:
        """Cache hits of architectures the job already had (counted, not recorded as trials)."""
        return int(self.notes.get("repeats", {}).get("count", 0))

    @property
    def proposals(self) -> int:
        """Every architecture proposed and answered: trials with a result and repeats."""
        return self.finished + self.repeats

    @classmethod
    def created(cls, entry: Mapping[str, Any], number: int) -> JobSummary:
        """The summary of a job's create entry."""
        job = entry["job"]
        at = float(entry["at"])
        return cls(job["job_id"], job["owner"], job["tenant"], copy.deepcopy(job["spec"]),
                   number=number, created_at=at, updated_at=at, length=1, events=1)

    def is_new_best(self, entry: Mapping[str, Any]) -> bool:
        """Whether a result entry beats the best so far."""
        result = entry["result"]
        return result["status"] == TrialState.SUCCEEDED.value and (
            self.best is None or float(result.get("reward", 0.0)) > self.best.reward)

    def apply(self, entry: Mapping[str, Any]) -> None:
        """Fold one (stamped) journal entry in."""
        op = entry["op"]
        if op == "state":
            self.state, self.reason = entry["state"], entry.get("reason", "")
        elif op == "trial":
            trial = entry["trial"]
            self.running[str(trial["trial_id"])] = str(trial.get("arch", ""))
            self.requeue.pop(str(trial.get("requeues", "")), None)
            self.started += 1
        elif op == "result":
            self._finish(entry)
        elif op == "note":
            self.notes[entry["kind"]] = copy.deepcopy(entry["data"])
            if entry["kind"] == "policy":
                self.policy_version = int(entry["data"].get("policy_version",
                                                            self.policy_version + 1))
            elif entry["kind"] == "resumed":  # in-flight trials died with the old service
                self.requeue.update(self.running)
                self.running.clear()
        self.events += event_count(entry)
        self.updated_at = max(self.updated_at, float(entry.get("at", 0.0)))
        self.length += 1

    def _finish(self, entry: Mapping[str, Any]) -> None:
        trial_id, result = str(entry["trial_id"]), entry["result"]
        if self.running.pop(trial_id, None) is None:
            self.started += 1  # a result for a trial never started (or dropped): recorded too
        if self.is_new_best(entry):
            reward = float(result.get("reward", 0.0))
            self.best = Best(trial_id, reward, str(result.get("same_as",
                                                              result.get("arch", ""))))
        if result["status"] == TrialState.SUCCEEDED.value:
            self.succeeded += 1
        else:
            self.failed += 1
        if result.get("cached"):
            self.cache_hits += 1
        else:
            self.trainings += 1
            self.budget_spent += charged(result.get("metrics", {}))

    def requeue_owed(self) -> dict[str, str]:
        """What a resumed job must train again first (trial id -> architecture): the trials
        handed out and never finished, and those an earlier resume dropped but had not
        re-queued yet (its service was killed in between). A re-queued trial's start entry
        names the trial it re-queues (``requeues``), which settles it."""
        return {**self.requeue, **self.running}

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        doc = asdict(self)
        doc["best"] = asdict(self.best) if self.best else None
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobSummary:
        """Read back ``to_json``."""
        values = copy.deepcopy(dict(doc))
        values["best"] = Best(**values["best"]) if values.get("best") else None
        return cls(**values)

    def copy(self) -> JobSummary:
        """A deep copy (stores pass values out by value)."""
        return replace(self.fork(), spec=copy.deepcopy(self.spec),
                       notes=copy.deepcopy(self.notes))

    def fork(self) -> JobSummary:
        """A copy to fold more entries into, leaving this one as it is: ``apply`` replaces
        notes and never changes the spec, so those are shared."""
        return replace(self, notes=dict(self.notes), running=dict(self.running),
                       requeue=dict(self.requeue))
