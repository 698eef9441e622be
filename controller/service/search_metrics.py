"""Search progress as Prometheus metrics (``nas_search_*``): is each search learning?

Two sources, both on the service's one registry (``ServiceCluster.registry``):

- ``SearchCollector`` reads the job store at scrape time: jobs by state, and per RUNNING job
  (label ``job_id``, not ``job``, Prometheus's target label; bounded by ``--max-running``: a
  job's series end when it does) its best reward, trials by status, trainings, cache hits and
  the last policy statistics its journal noted (REINFORCE only: other strategies have no
  policy, so no series, never a fake zero).
  Read from the store, the per-job values survive a restart of the service.
- ``SearchCounters``, bumped by the job runner as proposals finish (no job label): proposals,
  trainings, cache hits, the reward histogram, trials by status and their duration. The
  cache-hit rate is ``rate(nas_search_cache_hits_total) / rate(nas_search_proposals_total)``.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.jobs.store import JobStore, all_jobs

REWARD_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # rewards are in [0, 1]
DURATION_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1800.0, 3600.0)
POLICY_GAUGES = {"entropy": "Policy entropy after the last update (nats per decision set)",
                 "baseline": "REINFORCE baseline (EMA of rewards) after the last update",
                 "mean_reward": "Mean reward of the children of the last update",
                 "policy_version": "Policy updates applied"}
# Trials whose start is remembered for their duration: a trial that never finishes (its job
# cancelled or failed mid-training) would otherwise stay for the life of the service. Far more
# than ever run at once; past it the oldest starts are dropped (their durations go unobserved).
MAX_STARTED = 10_000


class SearchCollector(Collector):
    """Jobs of ``store`` read at each scrape: the count of jobs in each state and the
    summaries of the running ones (never a job's trials: a scrape costs the same at the
    20,000th training as at the first)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        """The store's jobs as Prometheus families."""
        jobs = GaugeMetricFamily("nas_search_jobs", "Jobs, by state", labels=["state"])
        for state, count in self.store.count_jobs().items():
            jobs.add_metric([state], count)
        yield jobs
        best = GaugeMetricFamily("nas_search_job_best_reward",
                                 "Best reward so far of each running job", labels=["job_id"])
        trials = GaugeMetricFamily("nas_search_job_trials",
                                   "Trials of each running job, by status",
                                   labels=["job_id", "status"])
        trainings = CounterMetricFamily("nas_search_job_trainings",
                                        "Children trained (the budget spent) by each running job",
                                        labels=["job_id"])
        hits = CounterMetricFamily("nas_search_job_cache_hits",
                                   "Proposals of each running job answered by the cache",
                                   labels=["job_id"])
        budget = GaugeMetricFamily("nas_search_job_budget", "Trainings each running job may "
                                   "spend", labels=["job_id"])
        policy = {k: GaugeMetricFamily(f"nas_search_policy_{k.removeprefix('policy_')}", doc,
                                       labels=["job_id"]) for k, doc in POLICY_GAUGES.items()}
        running = 0
        for view in all_jobs(self.store, state="RUNNING"):
            job = [view.job_id]
            by_status = {"running": len(view.running), "succeeded": view.succeeded,
                         "failed": view.failed}
            running += by_status["running"]
            for status, count in by_status.items():
                trials.add_metric([*job, status], count)
            trainings.add_metric(job, view.trainings)
            hits.add_metric(job, view.cache_hits)
            budget.add_metric(job, float(view.budget))
            if view.best is not None:  # no reward yet: no series rather than a fake zero
                best.add_metric(job, view.best.reward)
            stats: dict[str, Any] = view.notes.get("policy", {})
            for key, family in policy.items():
                if key in stats:
                    family.add_metric(job, float(stats[key]))
        yield GaugeMetricFamily("nas_search_trials_running",
                                "Trials handed out and not finished, over the running jobs",
                                value=running)
        yield from (best, trials, trainings, hits, budget, *policy.values())


class SearchCounters:
    """What the job runner counts as its jobs' proposals finish (process lifetime)."""

    def __init__(self, registry: CollectorRegistry, max_started: int = MAX_STARTED) -> None:
        self.proposals = Counter("nas_search_proposals", "Architectures proposed, every job",
                                 registry=registry)
        self.trainings = Counter("nas_search_trainings", "Children trained (not cache hits)",
                                 registry=registry)
        self.cache_hits = Counter("nas_search_cache_hits",
                                  "Proposals answered by the evaluation cache (free)",
                                  registry=registry)
        self.rewards = Histogram("nas_search_reward", "Rewards of succeeded proposals",
                                 buckets=REWARD_BUCKETS, registry=registry)
        trials = Counter("nas_search_trials", "Proposals finished, by status",
                         ["status"], registry=registry)
        self.trials = {s: trials.labels(s) for s in ("succeeded", "failed")}
        duration = Histogram("nas_search_trial_duration_seconds",
                             "Training time of a child, from its start to its result",
                             ["status"], buckets=DURATION_BUCKETS, registry=registry)
        self.duration = {s: duration.labels(s) for s in ("succeeded", "failed")}
        self._started: OrderedDict[str, float] = OrderedDict()  # oldest start first
        self._max_started = max_started
        self._lock = threading.Lock()

    def started(self, trial_id: str) -> None:
        """A trial began (its training, or its cache lookup)."""
        with self._lock:
            self._started[trial_id] = time.monotonic()
            self._started.move_to_end(trial_id)
            if len(self._started) > self._max_started:
                self._started.popitem(last=False)

    def finished(self, trial_id: str, status: str, reward: float, cached: bool) -> None:
        """A proposal's result: counted, its reward and its training's duration recorded."""
        with self._lock:
            began = self._started.pop(trial_id, None)
        status = status if status in self.trials else "failed"
        self.proposals.inc()
        self.trials[status].inc()
        if cached:
            self.cache_hits.inc()
        else:
            self.trainings.inc()
            if began is not None:
                self.duration[status].observe(time.monotonic() - began)
        if status == "succeeded":
            self.rewards.observe(reward)


_INSTALLED: weakref.WeakKeyDictionary[CollectorRegistry, SearchCounters] = \
    weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def install(registry: CollectorRegistry, store: JobStore) -> SearchCounters:
    """Register the search metrics of ``store`` on ``registry`` once (a second runner on the
    same registry shares the counters; the collector reads the first runner's store)."""
    with _LOCK:
        counters = _INSTALLED.get(registry)
        if counters is None:
            registry.register(SearchCollector(store))
            counters = _INSTALLED[registry] = SearchCounters(registry)
        return counters
