"""``nas search``'s engine: one job through an embedded instance of the search service.

The job runs exactly as a submitted one would (the same ``JobRunner`` and ``ServiceCluster``:
K replica threads sharing the policy on S local shard processes, children on a local Ray or the
in-process evaluator), with an in-memory job store instead of Redis, so the local and the
cluster paths cannot diverge. What this adds is only what a one-shot command needs: the job's
settings are the whole ``SearchConfig`` (paths, simulated durations: things a submitted spec
does not carry), progress while it runs, and the pieces of result.json that live in this
process (per-replica parameter-server statistics, the workers' counters).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from controller.config import SearchConfig
from controller.jobs.records import charged
from controller.jobs.store import InMemoryJobStore, JobSummary
from controller.search import HistoryEntry, SearchOutcome
from controller.service.runner import JobResult
from nas.cluster import ClusterOptions, ServiceCluster, job_runner

ProgressFn = Callable[[JobSummary], None]  # the job's summary after each change


class EmbeddedSearch:
    """One search job on a private cluster; ``close`` stops every process it started."""

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.out = Path(str(cfg.out))
        if cfg.evaluator != "train" or cfg.workers:  # no child trains in this process: the
            torch.set_num_threads(1)  # controller's small tensors run faster on one thread
        # trial ids name the job: the same for every run, so a seed's result.json is the same;
        # the shards are this run's own (their checkpoints under a prefix of their own)
        self.job_id = "search"
        self.cluster = ServiceCluster(ClusterOptions.for_search(
            cfg, self.out / "logs", f"nas-search:{uuid.uuid4().hex[:12]}"))
        self.store = InMemoryJobStore()
        self.runner = job_runner(self.store, self.out, max_running=1, cluster=self.cluster,
                                 keep_results=True)
        self.started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "cluster.json").write_text(json.dumps(self.describe(), indent=1) + "\n")

    def describe(self) -> dict[str, Any]:
        """Every process started for the search and every endpoint (cluster.json)."""
        processes = self.cluster.processes
        return {"processes": {**{c.name: c.proc.pid for c in processes.children},
                              **self.cluster.hosts.pids()},
                "replica_hosts": self.cluster.replica_hosts,
                "shards": self.cluster.addresses, "metrics": processes.metrics,
                "trial_reports": self.cluster.workers.report_address
                if self.cluster.workers else None}

    def run(self, progress: ProgressFn | None = None,
            on_policy: Callable[[dict[str, Any]], None] | None = None) -> SearchOutcome:
        """Run the job to its end; the outcome over all replicas (history in journal order).
        ``progress`` gets the job's summary whenever it changed (read from the store's
        summary: the same cost at the 20,000th training as at the first); ``on_policy`` each
        new policy note (e.g. an ENAS supernet epoch). The error that failed the job is raised
        as it was (ConfigError, EvaluatorError, ...)."""
        settings = {k: v for k, v in vars(self.cfg).items() if v is not None}
        self.store.create(self.job_id, "local", "local", settings)
        self.started = time.perf_counter()
        self.runner.start(self.job_id)
        seen = 0
        last_note: dict[str, Any] | None = None
        while not self.runner.wait(self.job_id, 0.2):
            summary = self.store.get(self.job_id)
            if summary.length == seen:
                continue
            seen = summary.length
            note = summary.notes.get("policy")
            if on_policy is not None and note is not None and note != last_note:
                last_note = note
                on_policy(note)
            if progress is not None:
                progress(summary)
        if progress is not None:  # the bar ends where the job did
            progress(self.store.get(self.job_id))
        start = self.started
        result = self.runner.results.get(self.job_id, JobResult())
        if result.error is not None:
            raise result.error
        view = self.store.get(self.job_id)
        if view.state != "SUCCEEDED":
            raise RuntimeError(f"the search ended {view.state}: {view.reason}")
        if len(result.outcomes) == 1 and result.outcomes[0].distinct == view.finished:
            outcome = result.outcomes[0]
        else:  # replicas, or a run that took up an earlier one's trials (re-queued ones too):
            # the whole job's history, in the order the trials started
            outcome = self.recorded()
            reasons = {o.stopped_reason for o in result.outcomes}
            outcome.stopped_reason = "budget" if outcome.trainings >= self.cfg.budget or \
                reasons == {"budget"} else ",".join(sorted(reasons))
        outcome.wall_seconds = time.perf_counter() - start
        self.result = result
        return outcome

    def recorded(self, stopped_reason: str = "budget") -> SearchOutcome:
        """The outcome as the job's trial records say, read a page at a time: every finished
        trial in the order they started (e.g. of a search interrupted before its end)."""
        outcome = SearchOutcome(budget=self.cfg.budget, stopped_reason=stopped_reason)
        outcome.repeats = self.store.get(self.job_id).repeats
        outcome.cache_hits = outcome.repeats
        after: int | None = -1
        while after is not None:
            page, after = self.store.trials(self.job_id, after=after, limit=1000)
            for record in page:
                if record.done:
                    outcome.add(HistoryEntry.from_json(record.history_json()),
                                charged(record.metrics))
        outcome.wall_seconds = time.perf_counter() - self.started
        return outcome

    def policy_updates(self) -> list[dict[str, float]]:
        """result.json's ``policy``: the statistics the runner journalled after each policy
        update (``nas plot`` draws them; none for a strategy without a policy)."""
        return [{"update": int(e["data"].get("policy_version", n + 1)),
                 **{k: float(e["data"][k]) for k in ("entropy", "baseline", "mean_reward")
                    if k in e["data"]}}
                for n, e in enumerate(x for x in self.store.journal(self.job_id)
                                      if x["op"] == "note" and x["kind"] == "policy")]

    def layout_report(self) -> dict[str, Any]:
        """result.json's ``layout``: shards, their versions and restarts, each replica's pushes
        and the staleness and push/pull latency distributions over all of them."""
        cfg, result = self.cfg, self.result
        reports: dict[str, dict[str, Any]] = {}
        for replica_id, stats in result.replicas.items():
            outcome = result.by_replica.get(replica_id)
            reports[replica_id] = {
                "trainings": outcome.trainings if outcome else 0,
                "cache_hits": outcome.cache_hits if outcome else 0,
                "pushes": stats.pushes, "rejected_stale": stats.rejected_stale,
                "duplicates": stats.duplicates,
                "stopped_reason": outcome.stopped_reason if outcome else "failed"}
        distributions: dict[str, dict[str, float]] = {}
        for key, name, scale in (("staleness", "staleness_versions", 1.0),
                                 ("push_seconds", "push_ms", 1000.0),
                                 ("pull_seconds", "pull_ms", 1000.0)):
            values = np.array([v for s in result.replicas.values() for v in getattr(s, key)],
                              dtype=float) * scale
            if values.size:
                distributions[name] = {f"p{q}": float(np.percentile(values, q))
                                       for q in (50, 90, 99)}
                distributions[name].update(max=float(values.max()), count=float(values.size))
        return {"job_id": self.job_id, "shards": len(self.cluster.addresses),
                "replicas": cfg.replicas, "shard_addresses": self.cluster.addresses,
                "shard_versions": [int(s.version) for s in
                                   self.cluster.shard_status(self.job_id)],
                "restarts": {**self.cluster.processes.restarts, **self.cluster.hosts.restarts},
                "replica_hosts": len(self.cluster.replica_hosts),
                "metrics": dict(self.cluster.processes.metrics),
                "replica_reports": reports, **distributions}

    def close(self) -> None:
        """Stop the job (if it still runs), the workers, the shards and a private Redis."""
        self.runner.close(timeout=5.0)  # replicas stop at their next claim, shards still up
        self.cluster.close()  # a job still waiting on a worker's result is released
        self.runner.close(timeout=10.0)
