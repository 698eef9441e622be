"""One conformance suite for every JobStore backend (in memory, and Redis on 127.0.0.1)."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import redis

from controller.jobs.records import (
    ENDED,
    MOVES,
    JobSummary,
    TrialRecord,
    TrialState,
    event_count,
    finished_record,
    started_record,
)
from controller.jobs.redis_store import RedisJobStore
from controller.jobs.store import CompactedError, InMemoryJobStore, JobStore, all_jobs
from controller.pareto import pareto_front
from protos.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)

if TYPE_CHECKING:
    from conftest import OwnRedis

REDIS_URL = "redis://127.0.0.1:6379/0"
SPEC = {"space": "nb201", "budget": 10, "recipe": {"epochs": 1}}
Factory = Callable[[int | None], JobStore]  # journal_keep -> a fresh store


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """Fresh stores of one backend (Redis ones under a prefix of their own, deleted after)."""
    if request.param == "memory":
        yield lambda keep: InMemoryJobStore(journal_keep=keep)
        return
    client = redis.Redis.from_url(REDIS_URL)
    prefixes: list[str] = []

    def make(keep: int | None) -> JobStore:
        prefixes.append(f"test-{uuid.uuid4().hex[:8]}")
        return RedisJobStore(client, prefixes[-1], journal_keep=keep)

    yield make
    for prefix in prefixes:
        for key in client.scan_iter(f"{prefix}:*", count=1000):
            client.delete(key)
    client.close()


@pytest.fixture
def store(make_store: Factory) -> JobStore:
    return make_store(None)


def every_trial(store: JobStore, job_id: str, status: str | None = None,
                limit: int = 3) -> list[TrialRecord]:
    """All of a job's trials, read in pages of ``limit``."""
    out: list[TrialRecord] = []
    after: int | None = -1
    while after is not None:
        page, after = store.trials(job_id, status, after, limit)
        out.extend(page)
    return out


def test_create_get_list_and_errors_name_the_job(store: JobStore) -> None:
    # Arrange / Act
    made = store.create("j1", "alice", "lab", SPEC)
    store.create("j2", "bob", "other", SPEC)
    # Assert
    assert made.state == "PENDING" and made.spec == SPEC and made.owner == "alice"
    assert [v.job_id for v in store.jobs()[0]] == ["j2", "j1"]  # newest first
    assert [v.job_id for v in store.jobs(tenant="other")[0]] == ["j2"]
    with pytest.raises(AlreadyExistsError, match="j1"):
        store.create("j1", "mallory", "lab", {})
    with pytest.raises(NotFoundError, match="nope"):
        store.get("nope")
    with pytest.raises(NotFoundError):
        store.finish_trial("nope", "t1", {"status": "failed"})
    with pytest.raises(NotFoundError, match="nope"):
        store.trials("nope")
    with pytest.raises(NotFoundError, match="t9"):
        store.trial("j1", "t9")
    assert store.get("j1").owner == "alice"  # the refused create changed nothing


def test_values_are_passed_by_value(store: JobStore) -> None:
    spec = {"budget": 10, "nested": {"epochs": 1}}
    view = store.create("j", "alice", "lab", spec)
    spec["nested"]["epochs"] = 99  # type: ignore[index]
    view.spec["budget"] = 0
    store.start_trial("j", {"trial_id": "t1", "arch": "a"})
    store.finish_trial("j", "t1", {"status": "succeeded", "reward": 0.5, "arch": "a",
                                   "metrics": {"params": 3.0}})
    store.get("j").running["x"] = "y"
    store.trial("j", "t1").metrics["params"] = 99.0  # type: ignore[index]
    again = store.get("j")
    assert again.spec == {"budget": 10, "nested": {"epochs": 1}} and again.running == {}
    assert store.trial("j", "t1").metrics == {"params": 3.0}


def test_state_moves_and_ended_jobs_stay_ended(store: JobStore) -> None:
    store.create("j", "alice", "lab", SPEC)
    assert store.set_state("j", "RUNNING").state == "RUNNING"
    assert store.set_state("j", "RUNNING").state == "RUNNING"  # idempotent
    done = store.set_state("j", "SUCCEEDED", "budget spent")
    assert (done.state, done.reason) == ("SUCCEEDED", "budget spent")
    with pytest.raises(FailedPreconditionError, match="SUCCEEDED"):
        store.set_state("j", "RUNNING")
    with pytest.raises(ValueError, match="state"):
        store.set_state("j", "PAUSED")
    store.create("k", "alice", "lab", SPEC)
    assert store.set_state("k", "CANCELLED").state == "CANCELLED"
    assert [v.job_id for v in store.jobs(state="CANCELLED")[0]] == ["k"]
    assert store.count_jobs() == {"PENDING": 0, "RUNNING": 0, "SUCCEEDED": 1, "FAILED": 0,
                                  "CANCELLED": 1}


def test_a_trial_result_is_recorded_once(store: JobStore) -> None:
    store.create("j", "alice", "lab", SPEC)
    assert store.start_trial("j", {"trial_id": "t1", "arch": "a"})
    assert not store.start_trial("j", {"trial_id": "t1", "arch": "other"})
    assert store.finish_trial("j", "t1", {"status": "succeeded", "reward": 0.9})
    assert not store.finish_trial("j", "t1", {"status": "failed", "error": "late attempt"})
    assert not store.start_trial("j", {"trial_id": "t1", "arch": "again"})
    trial = store.trial("j", "t1")
    assert trial.status is TrialState.SUCCEEDED and trial.reward == 0.9 and trial.arch == "a"
    with pytest.raises(ValueError, match=r"result\.status"):
        store.finish_trial("j", "t2", {"status": "running"})


def test_trials_are_paged_and_filtered_in_start_order(store: JobStore) -> None:
    store.create("j", "alice", "lab", SPEC)
    for i in range(7):
        store.start_trial("j", {"trial_id": f"t{i}"})
    for i in (5, 1, 3):  # finished out of order: listed in start order
        store.finish_trial("j", f"t{i}", {"status": "succeeded", "reward": i / 10})
    page, nxt = store.trials("j", limit=3)
    assert [t.trial_id for t in page] == ["t0", "t1", "t2"] and nxt == 2
    page, nxt = store.trials("j", after=5, limit=3)
    assert [t.trial_id for t in page] == ["t6"] and nxt is None
    done, _ = store.trials("j", status="succeeded")
    assert [t.trial_id for t in done] == ["t1", "t3", "t5"]
    assert [t.trial_id for t in every_trial(store, "j", "running", limit=2)] == [
        "t0", "t2", "t4", "t6"]
    with pytest.raises(ValueError, match="status"):
        store.trials("j", status="lost")


def test_jobs_are_paged_newest_first_by_tenant_and_state(store: JobStore) -> None:
    # Arrange: 7 jobs of two tenants, some running
    for i in range(7):
        store.create(f"j{i}", "u", "a" if i % 2 else "b", {"budget": i + 1})
        if i % 3 == 0:
            store.set_state(f"j{i}", "RUNNING")
    # Act
    first, before = store.jobs(limit=3)
    second, after_second = store.jobs(limit=3, before=before)
    last, after_last = store.jobs(limit=3, before=after_second)
    # Assert
    assert [j.job_id for j in first + second + last] == [f"j{i}" for i in range(6, -1, -1)]
    assert after_last is None
    assert [j.job_id for j in all_jobs(store, tenant="b", state="RUNNING", page=1)] == [
        "j6", "j0"]
    assert [j.job_id for j in all_jobs(store, tenant="a")] == ["j5", "j3", "j1"]
    assert store.jobs(tenant="nobody") == ([], None)
    store.set_state("j6", "SUCCEEDED")
    assert [j.job_id for j in all_jobs(store, state="RUNNING")] == ["j3", "j0"]


def test_tenant_usage_counts_open_budgets_and_ended_trainings(store: JobStore) -> None:
    store.create("j", "u", "lab", {"budget": 10})
    store.create("k", "u", "lab", {"budget": 4})
    assert store.tenant_usage("lab") == (14, 0)
    for i in range(3):
        store.start_trial("j", {"trial_id": f"t{i}", "arch": "a"})
    store.finish_trial("j", "t0", {"status": "succeeded", "reward": 0.1})
    store.finish_trial("j", "t1", {"status": "succeeded", "reward": 0.1, "cached": True})
    store.set_state("j", "CANCELLED")
    assert store.tenant_usage("lab") == (4, 1)  # the cache hit was free
    store.finish_trial("j", "t2", {"status": "failed", "error": "late"})  # after the end
    assert store.tenant_usage("lab") == (4, 2) and store.tenant_usage("other") == (0, 0)


def test_best_and_pareto_read_their_indexes(store: JobStore) -> None:
    # Arrange: four architectures; b trained twice over (a cache hit and a twin)
    store.create("j", "u", "lab", SPEC)
    rows = [("t0", "a", 0.5, 10.0, False), ("t1", "b", 0.7, 30.0, False),
            ("t2", "b", 0.7, 30.0, True), ("t3", "c", 0.7, 5.0, False),
            ("t4", "d", 0.6, 50.0, False), ("t5", "e", 0.1, 1.0, False)]
    for trial_id, arch, reward, params, cached in rows:
        store.start_trial("j", {"trial_id": trial_id, "arch": arch})
        store.finish_trial("j", trial_id, {"status": "succeeded", "reward": reward,
                                           "cached": cached, "arch": arch,
                                           "metrics": {"params": params,
                                                       "flops": 100 - params}})
    store.start_trial("j", {"trial_id": "t6", "arch": "f"})
    store.finish_trial("j", "t6", {"status": "failed", "error": "nan"})
    # Act / Assert: ties by reward go to the earlier trial; b once
    assert [t.trial_id for t in store.best("j", 10)] == ["t1", "t3", "t4", "t0", "t5"]
    assert [t.trial_id for t in store.best("j", 2)] == ["t1", "t3"]
    assert [t.trial_id for t in store.pareto("j", ["params"])] == ["t3", "t5"]
    assert [t.trial_id for t in store.pareto("j", [])] == ["t3", "t5"]  # params by default
    assert [t.trial_id for t in store.pareto("j", ["flops", "params"])] == [
        "t1", "t3", "t4", "t0", "t5"]
    with pytest.raises(InvalidArgumentError, match=r"objectives\[0\]"):
        store.pareto("j", ["weight"])
    with pytest.raises(FailedPreconditionError, match="latency_ms"):
        store.pareto("j", ["latency_ms"])


def test_the_cache_index_keeps_the_first_training_of_each_key(store: JobStore) -> None:
    store.create("j", "u", "lab", SPEC)
    for trial_id, reward, cached in (("t0", 0.5, False), ("t1", 0.9, False),
                                     ("t2", 0.5, True)):
        store.start_trial("j", {"trial_id": trial_id, "arch": "a"})
        store.finish_trial("j", trial_id, {
            "status": "succeeded", "reward": reward, "cached": cached, "cache_key": "k|a",
            "metrics": {"accuracy": reward * 2, "params": 3.0}, "arch": "a"})
    assert store.cached("k|a") == {"reward": 1.0, "arch": "a",  # unshaped: the accuracy
                                   "metrics": {"params": 3.0}, "artifacts": {}}
    assert store.cached("k|b") is None


def test_concurrent_writers_lose_nothing_and_record_each_result_once(store: JobStore) -> None:
    store.create("j", "alice", "lab", SPEC)
    wins: list[bool] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        for i in range(10):
            store.start_trial("j", {"trial_id": f"w{w}-{i}"})
            store.finish_trial("j", f"w{w}-{i}", {"status": "succeeded", "reward": 0.5})
        # every writer also races for the same trial's result
        won = store.finish_trial("j", "shared", {"status": "succeeded", "reward": w / 10})
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert store.get("j").succeeded == 61 and len(every_trial(store, "j", limit=50)) == 61
    assert wins.count(True) == 1


def test_a_restarted_redis_store_reads_the_same_job() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    try:
        store = RedisJobStore(client, prefix)
        store.create("j", "alice", "lab", SPEC)
        store.set_state("j", "RUNNING")
        for i in range(11):
            store.start_trial("j", {"trial_id": f"t{i}"})
            store.finish_trial("j", f"t{i}", {"status": "succeeded", "reward": i / 100})
        restarted = RedisJobStore(redis.Redis.from_url(REDIS_URL), prefix)
        assert restarted.get("j") == store.get("j")
        assert every_trial(restarted, "j") == every_trial(store, "j")
        assert [v.job_id for v in restarted.jobs(state="RUNNING")[0]] == ["j"]
    finally:
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


def test_journal_reads_from_an_offset_and_waits_for_the_next_entry(store: JobStore) -> None:
    # Arrange
    store.create("j", "alice", "lab", SPEC)
    store.start_trial("j", {"trial_id": "t1", "arch": "a"})
    # Act
    everything = store.journal("j")
    later = store.journal("j", offset=1)
    timer = threading.Timer(0.3, store.set_state, ("j", "RUNNING"))
    timer.start()
    started = time.monotonic()
    waited = store.journal("j", offset=2, wait=10.0)
    waited_s = time.monotonic() - started
    # Assert
    assert [e["op"] for e in everything] == ["create", "trial"] and later == everything[1:]
    assert [e["op"] for e in waited] == ["state"] and 0.2 < waited_s < 5.0
    assert store.journal("j", offset=3, wait=0.2) == []  # nothing new: empty after the wait
    assert store.journal("j", offset=0, limit=2) == everything
    assert [e["op"] for e in store.journal("j", offset=1, limit=1)] == ["trial"]
    everything[0]["job"]["owner"] = "mallory"  # passed by value
    assert store.journal("j")[0]["job"]["owner"] == "alice"
    with pytest.raises(NotFoundError, match="nope"):
        store.journal("nope")


def test_notes_keep_the_last_of_each_kind_and_a_resume_drops_running_trials(
        store: JobStore) -> None:
    # Arrange
    store.create("j", "alice", "lab", SPEC)
    store.start_trial("j", {"trial_id": "t1", "arch": "a"})
    store.start_trial("j", {"trial_id": "t2", "arch": "b"})
    store.finish_trial("j", "t1", {"status": "succeeded", "reward": 0.5})
    # Act
    store.note("j", "policy", {"entropy": 2.0, "policy_version": 1.0})
    store.note("j", "policy", {"entropy": 1.5, "policy_version": 2.0})
    store.note("j", "resumed", {"lost": ["t2"]})
    # Assert
    view = store.get("j")
    assert view.notes["policy"] == {"entropy": 1.5, "policy_version": 2.0}
    assert view.policy_version == 2
    assert [t.trial_id for t in every_trial(store, "j")] == ["t1"]  # t2 died with the service
    resumed = store.journal("j", offset=4)
    assert [e.get("kind") for e in resumed] == ["policy", "policy", "resumed"]
    assert resumed[-1]["lost"] == {"t2": "b"}  # stamped: what the watchers see as lost
    with pytest.raises(ValueError, match="kind"):
        store.note("j", "gossip", {})


def test_a_lost_trial_stays_owed_until_its_requeued_trial_starts(store: JobStore) -> None:
    # Arrange: a service resumes the job (t2 and t3 were in flight), re-queues t2, and is
    # killed before it re-queues t3 (found by bench.chaos: killed twice in a row, the second
    # time mid-resume, the old code forgot t3 and its result was lost)
    store.create("j", "alice", "lab", SPEC)
    for trial_id, arch in (("t1", "a"), ("t2", "b"), ("t3", "c")):
        store.start_trial("j", {"trial_id": trial_id, "arch": arch})
    store.finish_trial("j", "t1", {"status": "succeeded", "reward": 0.5})
    assert store.get("j").requeue_owed() == {"t2": "b", "t3": "c"}
    store.note("j", "resumed", {"lost": ["t2", "t3"]})
    store.start_trial("j", {"trial_id": "j-x5-q1", "arch": "b", "requeues": "t2"})
    # Act: the next resume asks what it owes
    owed = store.get("j").requeue_owed()
    # Assert: t3 (never re-queued) and the re-queued t2 that never finished
    assert owed == {"t3": "c", "j-x5-q1": "b"}
    store.note("j", "resumed", {"lost": list(owed)})
    store.start_trial("j", {"trial_id": "j-x7-q1", "arch": "c", "requeues": "t3"})
    store.start_trial("j", {"trial_id": "j-x7-q2", "arch": "b", "requeues": "j-x5-q1"})
    store.finish_trial("j", "j-x7-q1", {"status": "succeeded", "reward": 0.6})
    store.finish_trial("j", "j-x7-q2", {"status": "succeeded", "reward": 0.7})
    view = store.get("j")
    assert view.requeue_owed() == {} and view.requeue == {}
    assert [t.trial_id for t in every_trial(store, "j")] == ["t1", "j-x7-q1", "j-x7-q2"]


# -- the property: the summary and indexes kept incrementally are the journal's fold --------

def random_job(store: JobStore, job_id: str, rng: random.Random, steps: int) -> None:
    """Drive one job through ``steps`` random writes, legal and not (replays, late results,
    results of unknown trials, resumes, re-queues, state moves)."""
    store.create(job_id, "u", rng.choice(["a", "b"]), {"budget": rng.randint(1, 50)})
    archs = [f"arch{i}" for i in range(8)]
    # a trained architecture always has the same result (as the cache makes it)
    rewards = {a: rng.choice([0.1, 0.5, 0.5, 0.7, 0.9]) for a in archs}
    costs = {a: {m: float(rng.randint(1, 4)) for m in ("params", "flops")
                 if rng.random() < 0.8} for a in archs}
    made = 0
    for _ in range(steps):
        summary = store.get(job_id)
        roll = rng.random()
        if roll < 0.35:
            made += 1
            trial: dict[str, Any] = {"trial_id": f"t{made}", "arch": rng.choice(archs)}
            if summary.requeue and rng.random() < 0.5:
                trial["requeues"] = rng.choice(sorted(summary.requeue))
            store.start_trial(job_id, trial)
        elif roll < 0.75:
            known = sorted(summary.running) or [f"t{rng.randint(0, made + 1)}"]
            trial_id = rng.choice(known) if rng.random() < 0.85 else f"t{rng.randint(0, made)}"
            arch = summary.running.get(trial_id, rng.choice(archs))
            succeeded = rng.random() < 0.8
            trained = rng.choice(archs) if rng.random() < 0.2 else arch
            result: dict[str, Any] = {
                "status": "succeeded" if succeeded else "failed", "arch": arch,
                "reward": rewards[trained] if succeeded else 0.0,
                "cached": rng.random() < 0.3, "cache_key": f"k|{trained}",
                "metrics": dict(costs[trained]) if succeeded else {}}
            if trained != arch:
                result["same_as"] = trained
            if succeeded and rng.random() < 0.1:
                result["metrics"].update(stopped_at_epoch=1.0, epochs=1.0, max_epochs=4.0)
            store.finish_trial(job_id, trial_id, result)
        elif roll < 0.85:
            store.note(job_id, "policy", {"entropy": rng.random(), "policy_version": made})
        elif roll < 0.9:
            store.note(job_id, "resumed", {"lost": sorted(summary.running)})
        else:
            moves = sorted(MOVES.get(summary.state, set()))
            if moves and rng.random() < 0.3:
                store.set_state(job_id, rng.choice(moves), "random")


def folded(entries: list[dict[str, Any]]
           ) -> tuple[JobSummary, dict[str, TrialRecord], list[str]]:
    """The summary and trial records recomputed from a whole journal (checking each stamp),
    and the trials in the order they finished."""
    summary = JobSummary.created(entries[0], 0)
    records: dict[str, TrialRecord] = {}
    finished: list[str] = []
    for entry in entries[1:]:
        assert entry["seq"] == summary.events
        op = entry["op"]
        if op == "trial":
            records[entry["trial"]["trial_id"]] = started_record(entry["trial"],
                                                                 summary.started, entry["at"])
        elif op == "result":
            assert bool(entry.get("best")) == summary.is_new_best(entry)
            trial_id = entry["trial_id"]
            start = records.get(trial_id, TrialRecord(trial_id, summary.started,
                                                      started_at=entry["at"]))
            records[trial_id] = finished_record(start, entry["result"], entry["at"])
            finished.append(trial_id)
        elif op == "note" and entry["kind"] == "resumed":
            assert entry["lost"] == summary.running
            for trial_id in summary.running:
                records.pop(trial_id, None)
        summary.apply(entry)
    return summary, records, finished


def expected_best(records: list[TrialRecord]) -> list[str]:
    """One trial per trained architecture, the first to succeed; best reward first."""
    first: dict[str, TrialRecord] = {}
    for r in records:
        if r.status is TrialState.SUCCEEDED:
            first.setdefault(r.trained_arch, r)
    return [r.trial_id for r in sorted(first.values(), key=lambda r: (-r.reward, r.index))]


@pytest.mark.parametrize("seed", range(6))
def test_the_incremental_summary_and_indexes_equal_the_journal_s_fold(
        make_store: Factory, seed: int) -> None:
    # Arrange: random jobs in one store
    rng = random.Random(seed)
    store = make_store(None)
    for n in range(3):
        random_job(store, f"job{n}", rng, 120)
    for n in range(3):
        job_id = f"job{n}"
        # Act
        summary, records, finished = folded(store.journal(job_id))
        by_finish = [records[t] for t in finished]
        # Assert: the summary, every trial and each index are what the fold says
        kept = store.get(job_id)
        assert kept == replace(summary, number=kept.number)
        in_order = sorted(records.values(), key=lambda r: r.index)
        assert every_trial(store, job_id) == in_order
        for status in TrialState:
            assert every_trial(store, job_id, status.value, limit=5) == [
                r for r in in_order if r.status is status]
        assert [t.trial_id for t in store.best(job_id, 100)] == expected_best(by_finish)
        for metrics in (["params"], ["flops"], ["params", "flops"]):
            if not summary.succeeded:
                continue
            want = pareto_front([{**r.history_json(), "status": r.status.value,
                                  "index": r.index} for r in by_finish], metrics)
            want.sort(key=lambda t: (-t["metrics"].get("accuracy", t["reward"]),
                                     *(t["metrics"][m] for m in metrics), t["index"]))
            assert [t.trial_id for t in store.pareto(job_id, metrics)] == [
                t["trial_id"] for t in want]
    views = [store.get(f"job{n}") for n in range(3)]
    for state in ("PENDING", "RUNNING", *ENDED):
        assert store.count_jobs()[state] == sum(v.state == state for v in views)
    for tenant in ("a", "b"):
        mine = [v for v in views if v.tenant == tenant]
        assert store.tenant_usage(tenant)[0] == sum(v.budget for v in mine
                                                    if v.state not in ENDED)


@pytest.mark.parametrize("seed", range(3))
def test_a_compacted_journal_keeps_its_tail_and_the_base_summary(make_store: Factory,
                                                                  seed: int) -> None:
    # Arrange: the same random job in a store that keeps everything and one that compacts
    full, compacting = make_store(None), make_store(8)
    random_job(full, "j", random.Random(seed), 150)
    random_job(compacting, "j", random.Random(seed), 150)
    # Act
    summary = compacting.get("j")
    base = compacting.base_summary("j")
    tail = compacting.journal("j", summary.base)
    # Assert: what remains is the last entries; base + tail is the summary; nothing else lost
    assert summary.base > 0 and base is not None and base.length == summary.base
    assert 8 <= len(tail) < 16 and summary.length == summary.base + len(tail)
    everything = full.journal("j")
    strip = ("at", "job")
    assert [{k: v for k, v in e.items() if k not in strip} for e in tail] == [
        {k: v for k, v in e.items() if k not in strip} for e in everything[summary.base:]]
    for entry in tail:
        base.apply(entry)
    assert replace(base, base=summary.base, updated_at=summary.updated_at,
                   created_at=summary.created_at) == replace(
        summary, updated_at=summary.updated_at)
    assert [t.trial_id for t in every_trial(compacting, "j")] == [
        t.trial_id for t in every_trial(full, "j")]
    with pytest.raises(CompactedError) as compacted:
        compacting.journal("j", 0)
    assert compacted.value.base == summary.base
    assert compacting.seek("j", 0) == summary.base  # a watch from the start begins at the base


def test_seek_finds_the_entry_of_an_event_number(store: JobStore) -> None:
    store.create("j", "u", "lab", SPEC)
    store.note("j", "evaluator", {"name": "x"})  # no event
    store.start_trial("j", {"trial_id": "t1", "arch": "a"})
    store.finish_trial("j", "t1", {"status": "succeeded", "reward": 0.5})  # two: a new best
    store.start_trial("j", {"trial_id": "t2", "arch": "b"})
    entries = store.journal("j")
    assert [event_count(e) for e in entries] == [1, 0, 1, 2, 1]
    # events: 1 create, 2 t1 started, 3-4 t1 finished + best, 5 t2 started
    assert [store.seek("j", after) for after in range(6)] == [0, 2, 3, 3, 4, 5]


def test_a_redis_store_waits_for_its_redis_restarting_from_its_aof(own_redis: OwnRedis
                                                                    ) -> None:
    # found by bench.chaos: a SIGKILLed Redis made the job's next journal write raise, then the
    # write of FAILED too, so the job stayed RUNNING with nothing running it (wedged)
    port = own_redis.port
    first = own_redis.start()
    restart = threading.Timer(1.0, own_redis.start)
    try:
        # a client made as the service makes it (from_url: no retries of redis-py's own)
        store = RedisJobStore(redis.Redis.from_url(f"redis://127.0.0.1:{port}/0"), "chaos",
                              journal_keep=3)
        store.create("j", "alice", "lab", SPEC)
        store.set_state("j", "RUNNING")
        store.start_trial("j", {"trial_id": "t0"})
        first.kill()
        first.wait(10)
        restart.start()
        # Act: written while Redis is down; each waits for the restarted one
        assert store.finish_trial("j", "t0", {"status": "succeeded", "reward": 0.5})
        assert store.start_trial("j", {"trial_id": "t1"})
        restart.join(30)
        assert store.finish_trial("j", "t1", {"status": "succeeded", "reward": 0.6})
        # Assert: nothing lost or doubled, as a fresh reader of the AOF-restored Redis sees it
        fresh = RedisJobStore(redis.Redis(port=port), "chaos")
        view = fresh.get("j")
        assert view.state == "RUNNING" and view.length == 6 and view.succeeded == 2
        assert {t.trial_id: t.status for t in every_trial(fresh, "j")} == {
            "t0": TrialState.SUCCEEDED, "t1": TrialState.SUCCEEDED}
    finally:
        restart.cancel()  # a failed test must not leave the restarted server behind
        if restart.is_alive():
            restart.join(40)
