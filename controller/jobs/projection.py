"""What one journal entry changes in a job store besides the journal: the plan a backend applies
in the same atomic write as the append.

``plan`` stamps the entry (``seq``: watch events before it; ``best`` on a new best result;
``lost`` on a resume: the trials it finds in flight), folds it into the job's summary and works
out the changes to the indexes a backend keeps so that every read is a page or a lookup:

- trial records (one per trial) and which status list each is in (pages of ListTrials);
- the best index: the first succeeded trial of each trained architecture, by reward (GetBest);
- Pareto fronts of accuracy against every subset of the cost metrics (GetBest pareto), kept
  incrementally: a new point joins when nothing on the front dominates it;
- the job's state list and its tenant's usage (budget admission).

Backends read what a plan needs through ``Reader`` while they hold the job's write.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.jobs.records import (
    ENDED,
    JobSummary,
    TrialRecord,
    TrialState,
    finished_record,
    started_record,
)
from controller.objectives import ACCURACY, METRICS

# front key ("flops,params": sorted metric names) -> members, each
# {"trial_id", "index", "arch" (trained), "point": [-accuracy, metric values in key order]}
Fronts = dict[str, list[dict[str, Any]]]


class Reader(Protocol):
    """What a plan reads of the job's current state (inside the job's write)."""

    def trial(self, trial_id: str) -> TrialRecord | None:
        """The trial's record, if it has one."""

    def has_trained(self, arch_key: str) -> bool:
        """Whether a succeeded trial of this trained architecture (``arch_key``) is indexed."""

    def fronts(self) -> Fronts:
        """The job's Pareto fronts."""


@dataclass
class Change:
    """One append: the stamped entry, the summary after it and the index changes."""

    entry: dict[str, Any]
    summary: JobSummary
    records: list[tuple[TrialRecord, TrialState | None]] = field(default_factory=list)
    dropped: list[TrialRecord] = field(default_factory=list)  # records a resume removes
    best: TrialRecord | None = None  # joins the best index
    fronts: Fronts | None = None  # replaces the fronts when one changed
    state: tuple[str | None, str] | None = None  # the job moves between state lists
    reserved: int = 0  # tenant usage: budget of unfinished jobs
    used: int = 0  # tenant usage: trainings of ended jobs
    cache: tuple[str, dict[str, Any]] | None = None  # a training for the shared cache
    # the job's checkpoint (the policy's learner state) replaced with this append; dropped when
    # the job ends
    checkpoint: dict[str, Any] | None = None
    drop_checkpoint: bool = False


def arch_key(arch: str) -> str:
    """A short, fixed-size key of a trained architecture (the best index's de-duplication)."""
    return hashlib.blake2b(arch.encode(), digest_size=10).hexdigest()


def best_score(record: TrialRecord) -> tuple[float, int]:
    """Sort key of the best index: higher reward first, then the earlier trial."""
    return -record.reward, record.index


def plan(summary: JobSummary, entry: Mapping[str, Any], reader: Reader) -> Change:
    """The change appending ``entry`` (with ``at``) to the job of ``summary`` makes."""
    stamped = {**entry, "seq": summary.events}
    before = summary  # not changed here: the change folds into a fork
    change = Change(stamped, summary.fork())
    op = entry["op"]
    if op == "trial":
        record = started_record(entry["trial"], summary.started, float(entry["at"]))
        change.records.append((record, None))
    elif op == "result":
        _result(change, before, reader)
    elif op == "state":
        change.state = (before.state, entry["state"])
        if entry["state"] in ENDED and before.state not in ENDED:
            change.reserved, change.used = -before.budget, before.trainings
            change.drop_checkpoint = True
    elif op == "note" and entry["kind"] == "resumed":
        stamped["lost"] = dict(before.running)
        change.dropped = [r for r in map(reader.trial, before.running) if r is not None]
    change.summary.apply(stamped)
    return change


def _result(change: Change, before: JobSummary, reader: Reader) -> None:
    entry = change.entry
    trial_id = str(entry["trial_id"])
    if before.is_new_best(entry):
        entry["best"] = True
    known = reader.trial(trial_id)
    old_status = known.status if known is not None else None
    start = known if known is not None else TrialRecord(trial_id, before.started,
                                                         started_at=float(entry["at"]))
    record = finished_record(start, entry["result"], float(entry["at"]))
    change.records.append((record, old_status))
    if before.state in ENDED and not record.cached:  # a late result of an ended job
        change.used = 1
    if record.status is TrialState.SUCCEEDED and not record.cached and record.cache_key:
        change.cache = record.cache_key, cache_value(record)
    if record.status is TrialState.SUCCEEDED and not reader.has_trained(
            arch_key(record.trained_arch)):
        change.best = record
        change.fronts = join_fronts(reader.fronts(), record)


def cache_value(record: TrialRecord) -> dict[str, Any]:
    """What the evaluation cache keeps of a training: its unshaped reward and metrics (jobs
    with other objectives share it), the trained architecture and its files."""
    metrics = dict(record.metrics)
    reward = float(metrics.pop(ACCURACY, record.reward))
    return {"reward": reward, "arch": record.trained_arch, "metrics": metrics,
            "artifacts": dict(record.artifacts)}


def accuracy_of(record: TrialRecord) -> float:
    """The unshaped accuracy of a trial (its reward unless objectives shaped it)."""
    return float(record.metrics.get(ACCURACY, record.reward))


def front_key(metrics: Sequence[str]) -> str:
    """The fronts' key of a set of cost metrics."""
    return ",".join(sorted(metrics))


def join_fronts(fronts: Fronts, record: TrialRecord) -> Fronts | None:
    """The fronts with ``record`` added to each it belongs on (every subset of the cost metrics
    it measured); None when none changed."""
    measured = sorted(m for m in METRICS if m in record.metrics)
    changed = False
    out = dict(fronts)
    for size in range(1, len(measured) + 1):
        for subset in itertools.combinations(measured, size):
            point = [-accuracy_of(record), *(float(record.metrics[m]) for m in subset)]
            joined = _join(out.get(front_key(subset), []), point, record)
            if joined is not None:
                out[front_key(subset)] = joined
                changed = True
    return out if changed else None


def _join(front: list[dict[str, Any]], point: list[float], record: TrialRecord
          ) -> list[dict[str, Any]] | None:
    """The front with the point added, or None when a member dominates it (every coordinate
    minimised; equal points dominate neither, so both stay)."""
    if any(_dominates(m["point"], point) for m in front):
        return None
    kept = [m for m in front if not _dominates(point, m["point"])]
    kept.append({"trial_id": record.trial_id, "index": record.index, "point": point})
    return kept


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True))
