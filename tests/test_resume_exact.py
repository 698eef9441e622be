"""Resume is exact (issue 19): a REINFORCE job's learner state (EMA baseline, the rank
transform's rewards, the advantage scale, and without shards the policy and Adam's state) is
checkpointed with each policy note and taken up by a resumed run; the re-queued trials of a dead
service train concurrently; a resumed job's reason counts the whole job.

Real parts: the job stores on the test Redis (127.0.0.1:6379) and in memory, real ``nas serve
search`` processes (with and without parameter-server shards) SIGKILLed mid-job, the NB201
table evaluator."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from conftest import serve_search_process, stored_trials

from controller.jobs.redis_store import RedisJobStore
from controller.jobs.store import InMemoryJobStore, JobStore
from controller.policy.reinforce import ScoredTrial
from controller.policy.reward_stats import RewardStats
from controller.presets import CONTROLLER_PRESETS
from controller.service.client import SearchClient
from controller.spaces.nb201 import NB201Space
from controller.strategies.reinforce import ReinforceStrategy
from nas.cluster import job_runner
from protos.errors import NotFoundError
from protos.types import TrialResult, TrialStatus
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 120.0


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    if request.param == "memory":
        yield InMemoryJobStore()
        return
    db = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield RedisJobStore(db, prefix)
    finally:
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()


def test_reward_stats_stay_bounded_and_a_restored_copy_goes_on_identically() -> None:
    rng = random.Random(0)
    stream = [rng.random() for _ in range(3000)]
    batches = [stream[i:i + 5] for i in range(0, len(stream), 5)]
    whole = RewardStats(0.95, capacity=256)
    for batch in batches[:300]:
        whole.advantages(whole.rank(batch), normalize=True)
    copy = RewardStats(0.95, capacity=256)
    copy.restore(json.loads(json.dumps(whole.state())))  # what the job store keeps
    for batch in batches[300:]:
        assert copy.rank(batch) == whole.rank(batch)
        mine, theirs = copy.advantages(batch, True), whole.advantages(batch, True)
        assert mine[0] == theirs[0] and torch.equal(mine[1], theirs[1])
    assert copy.state() == whole.state()
    # bounded: 256 of the 3000 rewards are kept, a uniform sample whose quantiles hold
    assert len(whole.seen) == 256 and whole.count == 3000
    assert abs(whole.rank([0.5])[0] - 0.5) < 0.1 and abs(whole.rank([0.9])[0] - 0.9) < 0.1
    exact = RewardStats(capacity=256)  # under the capacity: the exact quantile
    assert exact.rank([0.5]) == [0.5] and exact.rank([0.1, 0.9]) == [1 / 6, 5 / 6]


def test_a_checkpoint_is_replaced_with_its_policy_note_and_dropped_when_the_job_ends(
        store: JobStore) -> None:
    store.create("j", "test", "default", {"budget": 5})
    assert store.checkpoint("j") is None
    first = {"version": 1, "learner": {"baseline": 0.25, "count": 1, "seen": [0.25]}}
    store.note("j", "policy", {"policy_version": 1.0}, first)
    assert store.checkpoint("j") == first
    assert store.get("j").notes["policy"] == {"policy_version": 1.0}
    assert all("learner" not in json.dumps(e) for e in store.journal("j"))  # not journalled
    store.note("j", "evaluator", {"name": "nb201"})  # other notes leave it
    assert store.checkpoint("j") == first
    second = {"version": 2, "learner": {"baseline": 0.5, "count": 2, "seen": [0.25, 0.75]}}
    store.note("j", "policy", {"policy_version": 2.0}, second)
    assert store.checkpoint("j") == second
    store.set_state("j", "RUNNING")
    store.set_state("j", "SUCCEEDED", "budget")
    assert store.checkpoint("j") is None  # an ended job keeps none
    store.note("j", "policy", {"policy_version": 3.0}, second)
    assert store.checkpoint("j") is None
    with pytest.raises(NotFoundError, match="nope"):
        store.checkpoint("nope")


def _score(strategy: ReinforceStrategy, reward: float) -> ScoredTrial:
    trial = strategy.suggest(1)[0]
    return ScoredTrial(trial, TrialResult(trial.trial_id, TrialStatus.SUCCEEDED, reward), 0.0)


def test_an_in_process_controller_restored_from_its_checkpoint_learns_on_identically() -> None:
    space = NB201Space()
    preset = CONTROLLER_PRESETS["sample-efficient"]
    learned = ReinforceStrategy(space, seed=0, learner=preset.learner)
    for n in range(6):
        trial = learned.suggest(1)[0]
        learned.report(trial.trial_id, TrialResult(trial.trial_id, TrialStatus.SUCCEEDED,
                                                   0.5 + n / 30))
    doc = json.loads(json.dumps(learned.checkpoint()))
    restored = ReinforceStrategy(space, seed=5, learner=preset.learner)
    restored.restore(doc)
    fresh = ReinforceStrategy(space, seed=5, learner=preset.learner)
    assert restored.learner.version == learned.learner.version == 6
    assert restored.learner.stats.state() == learned.learner.stats.state()
    for a, b in zip(restored.policy.parameters(), learned.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    # the same batch moves both the same way (Adam's moments came back too), a fresh one not
    batch = [_score(learned, 0.9)]
    for strategy in (learned, restored, fresh):
        strategy.learner.update(batch)
    for a, b, c in zip(restored.policy.parameters(), learned.policy.parameters(),
                       fresh.policy.parameters(), strict=True):
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert restored.learner.stats.state() == learned.learner.stats.state()


def _lost_archs(space: NB201Space, n: int) -> list[str]:
    """``n`` architectures of different functions (no two are cache hits of each other)."""
    rng, found, seen = random.Random(1), [], set()
    while len(found) < n:
        arch = space.decode([rng.randrange(5) for _ in space.decisions])
        key = space.canonical_hash(arch)
        if key not in seen:
            seen.add(key)
            found.append(space.to_string(arch))
    return found


def test_requeued_trials_train_as_many_at_once_as_the_job_s_parallelism(
        tmp_path: Path) -> None:
    # Arrange: what a service killed with 6 trials in flight leaves in the store
    store = InMemoryJobStore()
    store.create("j", "test", "default", {"space": "nb201", "strategy": "random",
                                          "evaluator": "nb201", "budget": 6, "parallel": 3,
                                          "simulate_seconds": 1.0})
    store.set_state("j", "RUNNING")
    lost = _lost_archs(NB201Space(), 6)
    for n, arch in enumerate(lost):
        store.start_trial("j", {"trial_id": f"j-{n}", "arch": arch})
    runner = job_runner(store, tmp_path)
    try:
        # Act
        assert runner.resume() == ["j"] and runner.wait("j", WAIT_S)
    finally:
        runner.close()
    # Assert: 6 trainings of 1 s, 3 at once: two rounds, not six
    done = store.get("j")
    assert done.state == "SUCCEEDED" and done.trainings == 6, done.reason
    assert done.reason == "budget: 6 trainings, 0 cache hits, 6 distinct architectures"
    requeued = [t for t in stored_trials(store, "j").values() if t.requeues]
    assert sorted(t.requeues for t in requeued) == [f"j-{n}" for n in range(6)]
    assert sorted(t.arch for t in requeued) == sorted(lost)
    span = max(t.finished_at for t in requeued) - min(t.started_at for t in requeued)
    assert 2.0 <= span < 3.5, span  # one at a time: 6 s



def _policy_notes(store: JobStore, job_id: str, offset: int) -> list[dict[str, float]]:
    return [e["data"] for e in store.journal(job_id, offset)
            if e["op"] == "note" and e["kind"] == "policy"]


LAYOUTS = {"in-process": [], "shards": ["--shards", "2"],
           # the replicas on two replica-host processes, which die with the service
           "replica-hosts": ["--shards", "2", "--replica-hosts", "2"]}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_sigkilled_service_resumes_the_learner_where_it_was(tmp_path: Path,
                                                              layout: str) -> None:
    db = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore(db, prefix)
    extra = LAYOUTS[layout]
    first, endpoint = serve_search_process(tmp_path / "work", REDIS_URL, prefix, extra)
    second: subprocess.Popen[str] | None = None
    try:
        spec = sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="reinforce",
                             evaluation=sp.EvaluationSpec(evaluator="nb201",
                                                          simulate_seconds=0.25),
                             execution=sp.ExecutionSpec(
                                 parallel=4, replicas=2 if layout == "replica-hosts" else 1),
                             budget=40, seed=2)
        with SearchClient(endpoint) as client:
            job_id = client.submit(spec)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            view = store.get(job_id)
            if view.trainings >= 12 and view.running and "policy" in view.notes:
                break
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # mid-job, children in flight
        first.wait(30)
        before = store.get(job_id)
        saved = store.checkpoint(job_id)
        note = before.notes["policy"]
        assert before.state == "RUNNING" and 12 <= before.trainings < 40
        # the checkpoint was written with the last policy note, in the same write
        assert saved is not None and saved["version"] == note["policy_version"]
        assert saved["learner"]["count"] == note["rewards_seen"] > 0
        assert ("policy" in saved) == (layout == "in-process")  # else the shards keep it
        second, endpoint = serve_search_process(tmp_path / "work", REDIS_URL, prefix, extra)
        with SearchClient(endpoint) as client:
            job = client.wait(job_id, WAIT_S)
        done = store.get(job_id)
        assert job.state == sp.JOB_STATE_SUCCEEDED and done.trainings == 40, done.reason
        # the reason counts the whole job, not the resumed run's part
        assert done.reason == (f"budget: 40 trainings, {done.cache_hits + done.repeats} cache "
                               f"hits, {done.finished} distinct architectures")
        trials = stored_trials(store, job_id)
        trained = [t.cache_key for t in trials.values() if not t.cached]
        assert len(trained) == len(set(trained)) == 40  # nothing trained twice
        assert sorted(t.requeues for t in trials.values() if t.requeues) == sorted(
            before.running)  # each lost trial re-queued once
        # the learner went on from the checkpoint: the first update after the resume started
        # from its baseline and its rewards, and (in-process) its policy version
        after = _policy_notes(store, job_id, before.length)
        assert after, "no policy update after the resume"
        assert after[0]["baseline"] == saved["learner"]["baseline"]
        assert after[0]["rewards_seen"] > saved["learner"]["count"]
        assert after[0]["policy_version"] > saved["version"]
        if layout == "in-process":
            assert after[0]["policy_version"] == saved["version"] + 1
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()
