"""A job's journal as WatchSearch events: trial started / finished, new best, policy statistics
and state changes.

Events are numbered 1, 2, ... in journal order, and a journal only grows, so the same job always
yields the same numbering: a watcher whose stream broke asks for the events after the last number
it saw and gets exactly the rest. The journal is the only source, so a watch works for any job
store and across service restarts; a long job's oldest entries are compacted into its summary,
and a watch that starts before them gets that summary as a Snapshot event first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from controller.jobs.store import ENDED, CompactedError, JobStore, JobSummary
from protos.v1 import search_pb2 as sp

POLL_S = 0.5  # longest wait for new entries before checking that the watcher is still there
PAGE = 256  # journal entries read at once
LOST = "lost when the service stopped; its architecture is proposed again"
Event = sp.SearchEvent
STATES = {"PENDING": sp.JOB_STATE_PENDING, "RUNNING": sp.JOB_STATE_RUNNING,
          "SUCCEEDED": sp.JOB_STATE_SUCCEEDED, "FAILED": sp.JOB_STATE_FAILED,
          "CANCELLED": sp.JOB_STATE_CANCELLED}


def trial_record(t: Mapping[str, Any]) -> sp.TrialRecord:
    """The wire form of a journal trial (or result)."""
    return sp.TrialRecord(trial_id=str(t["trial_id"]), arch=str(t.get("arch", "")),
                          status=str(t.get("status", "running")),
                          reward=float(t.get("reward", 0.0)), cached=bool(t.get("cached")),
                          error=str(t.get("error", "")),
                          metrics={k: float(v) for k, v in t.get("metrics", {}).items()})


def entry_events(entry: Mapping[str, Any]) -> list[sp.SearchEvent]:
    """The numbered events of one journal entry, from the entry alone: the store stamped it
    with ``seq`` (events before it), ``best`` on a new best result and ``lost`` on a resume
    (``records.event_count`` says how many each makes)."""
    op, at = entry["op"], float(entry.get("at", 0.0))
    if op in ("create", "state"):
        made = [Event(state=Event.StateChanged(state=STATES[entry.get("state", "PENDING")],
                                               reason=entry.get("reason", "")))]
    elif op == "trial":
        trial = entry["trial"]
        made = [Event(trial_started=Event.TrialStarted(trial_id=trial["trial_id"],
                                                       arch=str(trial.get("arch", ""))))]
    elif op == "result":
        result = {"trial_id": entry["trial_id"], **entry["result"]}
        made = [Event(trial_finished=Event.TrialFinished(trial=trial_record(result)))]
        if entry.get("best"):
            made.append(Event(new_best=Event.NewBest(
                trial_id=result["trial_id"], reward=float(result.get("reward", 0.0)),
                arch=str(result.get("same_as", result.get("arch", ""))))))
    elif op == "note" and entry["kind"] == "policy":
        stats = entry["data"]
        made = [Event(policy=Event.PolicyStats(
            updates=int(stats.get("policy_version", 0)),
            mean_reward=float(stats.get("mean_reward", 0.0)),
            baseline=float(stats.get("baseline", 0.0)),
            entropy=float(stats.get("entropy", 0.0))))]
    elif op == "note" and entry["kind"] == "resumed":
        made = [Event(trial_finished=Event.TrialFinished(trial=trial_record(
            {"trial_id": t, "arch": arch, "status": "lost", "error": LOST})))
            for t, arch in entry.get("lost", {}).items()]
    else:
        made = []
    for n, event in enumerate(made, start=int(entry["seq"]) + 1):
        event.seq, event.at = n, at
    return made


def watch_events(store: JobStore, job_id: str, after_seq: int = 0,
                 is_active: Callable[[], bool] = lambda: True,
                 snapshot: Callable[[JobSummary], sp.Job] | None = None
                 ) -> Iterator[sp.SearchEvent]:
    """The job's events numbered above ``after_seq``, live, until its final state event (or
    until ``is_active()`` turns False: a watcher that went away frees its thread within
    POLL_S). The watch starts at the entry holding event ``after_seq + 1`` (found by binary
    search, not by replaying the journal); when those events were compacted away it starts with
    a Snapshot event (the job as of the compaction, encoded by ``snapshot``). NotFoundError for
    an unknown job, before any event."""
    offset = store.seek(job_id, after_seq)
    while is_active():
        try:
            base = store.base_summary(job_id) if offset <= store.get(job_id).base else None
            if base is not None and base.events > after_seq:  # those events are gone
                after_seq, offset = base.events, base.length
                if snapshot is not None:
                    yield Event(seq=base.events, at=base.updated_at,
                                snapshot=Event.Snapshot(job=snapshot(base)))
            entries = store.journal(job_id, offset, wait=POLL_S, limit=PAGE)
        except CompactedError as exc:  # a slow watcher fell behind compaction: catch up
            offset = exc.base
            continue
        if not entries and store.get(job_id).state in ENDED:
            return  # resumed after the job's final state event: nothing more will come
        offset += len(entries)
        for entry in entries:
            for event in entry_events(entry):
                if event.seq > after_seq:
                    yield event
            if entry["op"] == "state" and entry["state"] in ENDED:
                return
