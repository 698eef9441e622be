"""The worker service: leases trials from the controller and runs them on a Scheduler (Ray).

Loop: lease up to the free capacity (telling the controller what runs here, so it can name
attempts to cancel) -> submit -> collect ended attempts. An attempt whose process died is
reported lost (the controller retries it with a new attempt number); one that asks for more than
any machine has is reported lost and not retryable, so it fails at once instead of hanging.

Short attempts (each of the last 8 ran under ``prefetch_below_s``: table lookups, tiny
children) are prefetched: each slot gets one more attempt queued behind its running one
in the scheduler, so a slot starts its next attempt the moment the last ends instead of after
this loop's collect and lease round trip (which cost more than such an attempt itself). Long
attempts are never prefetched (one among the last 8 turns it off): a trial queued behind an
hour-long training here could have started on another worker meanwhile.

A round that can do nothing (no free slot and nothing running: the cluster lost its nodes) or
that fails backs off, doubling up to ``MAX_BACKOFF_S``: never a busy loop. Each round first
asks the scheduler to ``check`` its cluster: a private local Ray that died is restarted there
(its attempts come back lost and are retried); one lost for good ends the loop, its attempts
reported lost and ``on_unavailable`` told why.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable

from protos import codec
from protos.cluster_auth import ClusterAuth
from protos.errors import NasError
from protos.types import Resources
from worker.reporting import TrialReporter
from worker.scheduler import InfeasibleResources, RayUnavailable, Scheduler

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 5.0  # the longest pause of an idle or failing loop


class WorkerService:
    """Feeds ``scheduler`` with trials of the controller at ``controller`` (host:port); the
    service and its attempts call it with ``auth``'s cluster token (and TLS when it has a CA)."""

    def __init__(self, scheduler: Scheduler, controller: str, worker_id: str | None = None,
                 poll_seconds: float = 0.5, max_slots: int | None = None,
                 prefetch_below_s: float = 1.0, auth: ClusterAuth | None = None,
                 on_unavailable: Callable[[str], None] | None = None) -> None:
        self.scheduler = scheduler
        self.controller = controller
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_seconds = poll_seconds
        self.max_slots = max_slots
        self.prefetch_below_s = prefetch_below_s
        self._durations: deque[float] = deque(maxlen=8)  # the last attempts' run times
        self.auth = auth.for_clients() if auth is not None else None
        self.reporter = TrialReporter(controller, auth=self.auth)
        self.lost_reported = 0
        self._last_resources = Resources()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.on_unavailable = on_unavailable  # told why, when the cluster is lost for good
        self.failure: str | None = None  # that reason, once the loop ended on it

    def start(self) -> WorkerService:
        """Run the loop in a background thread."""
        self._thread = threading.Thread(target=self.run, name="worker-service", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop leasing and leave the loop (running attempts are the scheduler's to close)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.reporter.close()

    def run(self) -> None:
        """Serve until ``stop``, or until the scheduler's cluster is lost for good."""
        pause = 0.0
        while not self._stop.is_set():
            try:
                busy = self.step()
                pause = 0.0 if busy else min(max(2 * pause, self.poll_seconds), MAX_BACKOFF_S)
            except RayUnavailable as exc:
                self._unavailable(str(exc))
                return
            except NasError as exc:  # the controller is away or refused: wait and go on
                log.warning("worker service: %s", exc)
                pause = 1.0
            except Exception:  # Ray failed under us: say so, back off, go on
                log.exception("worker service: a round failed")
                pause = min(max(2 * pause, 1.0), MAX_BACKOFF_S)
            if pause:
                self._stop.wait(pause)

    def _unavailable(self, reason: str) -> None:
        log.error("worker service: %s; it stops leasing", reason)
        self.failure = reason
        for ended in self.scheduler.wait(0.0):  # the attempts the lost cluster took
            if ended.lost:
                self._report_lost(ended.trial_id, ended.attempt, ended.reason)
        if self.on_unavailable is not None:
            self.on_unavailable(reason)

    def slots(self) -> int:
        """How many attempts run here at once."""
        slots = self.scheduler.capacity(self._last_resources)
        if self.max_slots is not None:
            slots = min(slots, self.max_slots)
        return slots

    def prefetching(self) -> bool:
        """Whether attempts are short enough to queue one more behind each running one."""
        return (len(self._durations) == self._durations.maxlen
                and max(self._durations) < self.prefetch_below_s)

    def free_slots(self) -> int:
        """How many more attempts to take now (with prefetching: to run or to queue)."""
        slots = self.slots()
        allowed = 2 * slots if self.prefetching() else slots
        return max(0, allowed - len(self.scheduler.running()))

    def step(self) -> bool:
        """One lease, submit, collect round; False when it could do nothing (no free slot,
        nothing running): the caller backs off instead of spinning."""
        self.scheduler.check()
        free = self.free_slots()
        busy = bool(free or self.scheduler.running())
        lease = self.reporter.lease(self.worker_id, free, self.poll_seconds if free else 0.0,
                                    self.scheduler.running())
        for attempt in lease.cancel:
            self.scheduler.cancel(attempt.trial_id, attempt.attempt)
        for task in lease.tasks:
            try:
                resources = codec.resources_from_proto(task.resources)
                self._last_resources = resources
                self.scheduler.check_feasible(resources)
            except (InfeasibleResources, NasError) as exc:
                self._report_lost(task.trial.trial_id, task.trial.attempt, str(exc),
                                  retryable=False)
                continue
            self.scheduler.submit(task, self.controller, self.auth)
        # full: wait for an attempt to end; else the lease's long poll already waited
        for ended in self.scheduler.wait(0.0 if free else self.poll_seconds):
            if ended.seconds is not None:
                self._durations.append(ended.seconds)
            if ended.lost:
                self._report_lost(ended.trial_id, ended.attempt, ended.reason)
        return busy

    def _report_lost(self, trial_id: str, attempt: int, reason: str,
                     retryable: bool = True) -> None:
        log.warning("trial %s attempt %d lost: %s", trial_id, attempt, reason)
        try:
            self.reporter.lost(trial_id, attempt, reason, retryable)
            self.lost_reported += 1
        except NasError as exc:  # e.g. the trial is gone: nothing to retry
            log.warning("could not report the lost attempt: %s", exc)
