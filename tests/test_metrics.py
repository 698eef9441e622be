"""The RPC metrics interceptor on a real gRPC server, and the search metrics against the job
store they read."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from controller.jobs.store import InMemoryJobStore
from controller.service.auth import TokenTable
from controller.service.client import SearchClient
from controller.service.search_metrics import SearchCollector, SearchCounters
from controller.service.servicer import serve_search
from nas.cluster import job_runner
from protos.errors import NotFoundError, UnauthenticatedError

SEARCH = "nas.v1.SearchService"


def _handled(registry: CollectorRegistry, method: str, code: str) -> float:
    value = registry.get_sample_value("nas_rpc_server_handled_total",
                                      {"service": SEARCH, "method": method, "code": code})
    return 0.0 if value is None else value


def test_the_interceptor_counts_calls_by_status_code_and_times_them(tmp_path: Path) -> None:
    # Arrange: a real server on a free port, one token known
    store = InMemoryJobStore()
    runner = job_runner(store, tmp_path)
    registry = runner.cluster.registry
    tokens = TokenTable.parse(["t0k:reader"], "test")
    running = serve_search(store, runner, tokens=tokens)
    try:
        # Act
        with SearchClient(running.address, token="t0k") as client:
            assert client.list() == []
            for _ in range(2):
                with pytest.raises(NotFoundError):
                    client.get("job-missing")
            with pytest.raises(NotFoundError):  # a stream refused before its first message
                list(client.watch("job-missing"))
        with SearchClient(running.address, token="wrong") as client, \
                pytest.raises(UnauthenticatedError):
            client.list()
    finally:
        running.stop()
    # Assert: the code each call ended with, refusals by the auth interceptor included
    assert _handled(registry, "ListSearches", "OK") == 1
    assert _handled(registry, "GetSearch", "NOT_FOUND") == 2
    assert _handled(registry, "GetSearch", "OK") == 0
    assert _handled(registry, "WatchSearch", "NOT_FOUND") == 1
    assert _handled(registry, "ListSearches", "UNAUTHENTICATED") == 1
    count = registry.get_sample_value("nas_rpc_server_handling_seconds_count",
                                      {"service": SEARCH, "method": "GetSearch"})
    seconds = registry.get_sample_value("nas_rpc_server_handling_seconds_sum",
                                        {"service": SEARCH, "method": "GetSearch"})
    assert count == 2 and seconds is not None and 0 < seconds < 5


def test_the_search_collector_reports_what_the_store_holds() -> None:
    # Arrange: a running REINFORCE job with trials and a policy note, a running job without a
    # policy, a pending and an ended job
    store = InMemoryJobStore()
    registry = CollectorRegistry()
    registry.register(SearchCollector(store))
    for job_id in ("job-a", "job-b", "job-c", "job-d"):
        store.create(job_id, "me", "default", {"budget": 10})
    for job_id in ("job-a", "job-b", "job-d"):
        store.set_state(job_id, "RUNNING")
    store.set_state("job-d", "SUCCEEDED")
    for n, (reward, cached) in enumerate([(0.7, False), (0.9, False), (0.9, True)]):
        store.start_trial("job-a", {"trial_id": f"t{n}", "arch": "x"})
        store.finish_trial("job-a", f"t{n}", {"status": "succeeded", "reward": reward,
                                              "cached": cached})
    store.start_trial("job-a", {"trial_id": "t3", "arch": "y"})
    store.finish_trial("job-a", "t3", {"status": "failed", "reward": 0.0, "cached": False})
    store.start_trial("job-a", {"trial_id": "t4", "arch": "z"})
    store.note("job-a", "policy", {"entropy": 7.5, "baseline": 0.4, "mean_reward": 0.8,
                                   "policy_version": 3.0})

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    # Act / Assert: jobs by state
    assert [value("nas_search_jobs", state=s) for s in
            ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")] == [1, 2, 1, 0, 0]
    # the running job's progress, as its view says
    view = store.get("job-a")
    best = view.best.reward if view.best else None
    assert value("nas_search_job_best_reward", job_id="job-a") == best == 0.9
    assert value("nas_search_job_trials", job_id="job-a", status="succeeded") == 3
    assert value("nas_search_job_trials", job_id="job-a", status="failed") == 1
    assert value("nas_search_job_trials", job_id="job-a", status="running") == 1
    assert value("nas_search_trials_running") == 1
    assert value("nas_search_job_trainings_total", job_id="job-a") == 3  # failed included
    assert value("nas_search_job_cache_hits_total", job_id="job-a") == 1
    assert value("nas_search_job_budget", job_id="job-a") == 10
    assert value("nas_search_policy_entropy", job_id="job-a") == 7.5
    assert value("nas_search_policy_baseline", job_id="job-a") == 0.4
    assert value("nas_search_policy_version", job_id="job-a") == 3
    # no policy, no reward: no series rather than zeros; jobs not running: no series at all
    assert value("nas_search_policy_entropy", job_id="job-b") is None
    assert value("nas_search_job_best_reward", job_id="job-b") is None
    assert value("nas_search_job_trials", job_id="job-b", status="running") == 0
    for ended in ("job-c", "job-d"):
        assert value("nas_search_job_budget", job_id=ended) is None


def test_the_counters_count_proposals_hits_rewards_and_training_time() -> None:
    # Arrange
    registry = CollectorRegistry()
    counters = SearchCounters(registry)
    # Act
    for trial_id in ("a", "b", "c"):
        counters.started(trial_id)
    counters.finished("a", "succeeded", 0.82, cached=False)
    counters.finished("b", "succeeded", 0.82, cached=True)
    counters.finished("c", "failed", 0.0, cached=False)
    # Assert
    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("nas_search_proposals_total") == 3
    assert value("nas_search_trainings_total") == 2
    assert value("nas_search_cache_hits_total") == 1
    assert value("nas_search_trials_total", status="failed") == 1
    assert value("nas_search_reward_count") == 2
    assert value("nas_search_reward_bucket", le="0.8") == 0
    assert value("nas_search_reward_bucket", le="0.85") == 2
    assert value("nas_search_trial_duration_seconds_count", status="succeeded") == 1  # not hits
    assert value("nas_search_trial_duration_seconds_count", status="failed") == 1


def test_the_counters_remember_a_bounded_number_of_unfinished_starts() -> None:
    # Arrange: trials of cancelled jobs start and never finish
    registry = CollectorRegistry()
    counters = SearchCounters(registry, max_started=3)
    # Act
    for trial_id in ("gone1", "gone2", "a", "b", "c"):
        counters.started(trial_id)
    counters.finished("gone1", "succeeded", 0.5, cached=False)
    counters.finished("c", "succeeded", 0.5, cached=False)
    # Assert: the oldest starts were dropped (no duration), the recent one timed
    assert registry.get_sample_value("nas_search_trial_duration_seconds_count",
                                     {"status": "succeeded"}) == 1
    assert registry.get_sample_value("nas_search_proposals_total") == 2
