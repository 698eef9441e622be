"""Runs submitted jobs: each in a thread of this process, recording every trial in the job store.

A job moves PENDING -> RUNNING -> SUCCEEDED (budget spent, or the policy converged), FAILED
(its evaluator could not run; the reason says why) or CANCELLED (``cancel``: the search stops
before its next training). At most ``max_running`` jobs run at once; the rest wait PENDING.

The evaluation cache is shared by every job and rebuilt from the store when the service starts,
so a restarted service (``resume``) never trains again what any job trained before: a resumed
job's finished trainings count against its budget and their architectures are free hits. The
in-process policy itself starts afresh on resume.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from controller.cache import CachedEvaluation, InMemoryCache
from controller.config import ConfigError, build_config
from controller.evaluators.base import EvaluatorError
from controller.factory import build_evaluator, build_space, build_strategy
from controller.jobs.store import ENDED, JobStore
from controller.objectives import ACCURACY, RewardShaper
from controller.search import HistoryEntry, run_search
from protos.errors import FailedPreconditionError

log = logging.getLogger(__name__)


class JobRunner:
    """Executes jobs of ``store``; children's files go under ``work_dir/<job_id>``."""

    def __init__(self, store: JobStore, work_dir: Path, max_running: int = 2) -> None:
        self.store = store
        self.work_dir = work_dir
        self._slots = threading.Semaphore(max_running)
        self._cancel: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.cache = InMemoryCache()  # shared by the jobs of this service

    def resume(self) -> list[str]:
        """After a restart: refill the shared cache from every job's trainings, then start
        again every job the store has PENDING or RUNNING; their ids."""
        jobs = self.store.jobs()
        for view in jobs:
            for trial in view.trials.values():
                if trial.get("status") == "succeeded" and not trial.get("cached") \
                        and trial.get("cache_key"):
                    metrics = dict(trial.get("metrics", {}))  # unshaped, as the cache keeps it
                    reward = float(metrics.pop(ACCURACY, trial["reward"]))
                    self.cache.put(trial["cache_key"], CachedEvaluation(
                        reward, str(trial["arch"]), metrics, trial.get("artifacts", {})))
        resumed = [v.job_id for v in jobs if v.state in ("PENDING", "RUNNING")]
        for job_id in resumed:
            self.start(job_id)
        return resumed

    def start(self, job_id: str) -> None:
        """Run the job in the background (it waits PENDING for a free slot)."""
        with self._lock:
            self._cancel[job_id] = threading.Event()
            thread = threading.Thread(target=self._run, args=(job_id,), name=f"job-{job_id}",
                                      daemon=True)
            self._threads[job_id] = thread
        thread.start()

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
            thread = self._threads.get(job_id)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel what still runs and wait for the threads."""
        with self._lock:
            events = list(self._cancel.values())
            threads = list(self._threads.values())
        for event in events:
            event.set()
        for thread in threads:
            thread.join(timeout)

    def _run(self, job_id: str) -> None:
        cancelled = self._cancel[job_id]
        with self._slots:
            if cancelled.is_set() or self.store.get(job_id).state not in ("PENDING",
                                                                          "RUNNING"):
                return
            try:
                self.store.set_state(job_id, "RUNNING")
                reason = self._search(job_id, cancelled)
            except (ConfigError, EvaluatorError, ValueError) as exc:
                self._end(job_id, "FAILED", str(exc))
                return
            except Exception as exc:  # a bug: the job fails with the reason, the service lives
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
        cfg = build_config(view.spec, {"out": str(self.work_dir / job_id)})
        space = build_space(cfg)
        evaluator = build_evaluator(cfg)
        strategy = build_strategy(space, cfg)
        done = [t for t in view.trials.values() if t.get("status") in ("succeeded", "failed")]
        if view.trials:  # resumed: new trial ids, and what was trained stays spent
            strategy.job_id = f"resume{len(view.trials)}"
        claimed = sum(1 for t in done if not t.get("cached"))
        lock = threading.Lock()

        def claim() -> bool:
            nonlocal claimed
            with lock:
                if cancelled.is_set() or claimed >= cfg.budget:
                    return False
                claimed += 1
                return True

        def record(entry: HistoryEntry) -> None:  # one journal entry per proposal
            key = f"{evaluator.cache_key}|" \
                  f"{space.canonical_hash(space.from_string(entry.trained_arch))}"
            self.store.finish_trial(job_id, entry.trial_id,
                                    {**entry.to_json(), "status": entry.status,
                                     "cache_key": key})

        outcome = run_search(space, strategy, evaluator, cfg.budget, cache=self.cache,
                             failure_reward=cfg.failure_reward,
                             max_idle_proposals=cfg.max_idle_proposals, claim=claim,
                             on_entry=record, report_test=False,
                             shaper=RewardShaper.from_settings(cfg.objectives))
        return (f"{outcome.stopped_reason}: {outcome.trainings} trainings, "
                f"{outcome.cache_hits} cache hits")
