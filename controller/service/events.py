"""A job's journal as WatchSearch events: trial started / finished, new best, policy statistics
and state changes.

Events are numbered 1, 2, ... in journal order, and a journal only grows, so the same job always
yields the same numbering: a watcher whose stream broke asks for the events after the last number
it saw and gets exactly the rest. The journal is the only source, so a watch works for any job
store and across service restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from controller.jobs.store import ENDED, JobStore
from protos.v1 import search_pb2 as sp

POLL_S = 0.5  # longest wait for new entries before checking that the watcher is still there
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


class EventFolder:
    """Turns journal entries, in order, into numbered events; remembers the best reward and the
    trials handed out and not finished (a ``resumed`` note ends them as lost)."""

    def __init__(self) -> None:
        self.seq = 0
        self.best: float | None = None
        self.running: dict[str, str] = {}  # trial id -> architecture

    def events(self, entry: Mapping[str, Any]) -> list[sp.SearchEvent]:
        """The events of one journal entry (none for a fact watchers do not need)."""
        op = entry["op"]
        if op in ("create", "state"):
            made = [Event(state=Event.StateChanged(state=STATES[entry.get("state", "PENDING")],
                                                   reason=entry.get("reason", "")))]
        elif op == "trial":
            trial = entry["trial"]
            self.running[trial["trial_id"]] = str(trial.get("arch", ""))
            made = [Event(trial_started=Event.TrialStarted(trial_id=trial["trial_id"],
                                                           arch=str(trial.get("arch", ""))))]
        elif op == "result":
            made = self._finished({"trial_id": entry["trial_id"], **entry["result"]})
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
                for t, arch in self.running.items()]
            self.running.clear()
        else:
            made = []
        for event in made:
            self.seq += 1
            event.seq, event.at = self.seq, float(entry.get("at", 0.0))
        return made

    def _finished(self, trial: dict[str, Any]) -> list[sp.SearchEvent]:
        self.running.pop(trial["trial_id"], None)
        made = [Event(trial_finished=Event.TrialFinished(trial=trial_record(trial)))]
        reward = float(trial.get("reward", 0.0))
        if trial.get("status") == "succeeded" and (self.best is None or reward > self.best):
            self.best = reward
            made.append(Event(new_best=Event.NewBest(
                trial_id=trial["trial_id"], reward=reward,
                arch=str(trial.get("same_as", trial.get("arch", ""))))))
        return made


def watch_events(store: JobStore, job_id: str, after_seq: int = 0,
                 is_active: Callable[[], bool] = lambda: True) -> Iterator[sp.SearchEvent]:
    """The job's events numbered above ``after_seq``, live, until its final state event (or
    until ``is_active()`` turns False: a watcher that went away frees its thread within
    POLL_S). NotFoundError for an unknown job, before any event."""
    folder = EventFolder()
    offset = 0
    while is_active():
        entries = store.journal(job_id, offset, wait=POLL_S if offset else 0.0)
        offset += len(entries)
        for entry in entries:
            for event in folder.events(entry):
                if event.seq > after_seq:
                    yield event
            if entry["op"] == "state" and entry["state"] in ENDED:
                return
