"""The search service: one client suite against the in-process servicer and a real server on a
free loopback port, with real searches on the NB201 table and the Redis job store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
import redis
import torch
from conftest import serve_search_process, stored_trials
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controller.jobs.redis_store import RedisJobStore
from controller.jobs.store import InMemoryJobStore, TrialState
from controller.service.client import SearchClient
from controller.service.servicer import RunningSearchService, SearchServicer, serve_search
from nas.cluster import job_runner
from protos.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

WAIT_S = 120.0
REDIS_URL = "redis://127.0.0.1:6379/0"
ROOT = Path(__file__).resolve().parents[1]


def nb201_spec(budget: int = 20, seed: int = 0, dataset: str = "") -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="reinforce",
                         evaluation=sp.EvaluationSpec(evaluator="nb201", dataset=dataset),
                         budget=budget, seed=seed)


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


def test_a_submitted_job_runs_to_success_and_its_trials_are_listed(client: SearchClient
                                                                   ) -> None:
    # Act
    job_id = client.submit(nb201_spec(budget=20))
    job = client.wait(job_id, WAIT_S)
    # Assert
    assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 20
    assert 0.5 < job.best_reward <= 1 and job.best_arch.startswith("|")
    assert job.spec.budget == 20 and job.spec.evaluation.evaluator == "nb201"
    trials = list(client.trials(job_id, page_size=7))
    assert len({t.trial_id for t in trials}) == len(trials) >= 20
    # repeats (hits of cells the job had: isomorphic twins) are counted, not listed
    assert len(trials) == job.trainings + job.cache_hits - job.repeats
    assert sum(1 for t in trials if not t.cached) == 20
    succeeded = list(client.trials(job_id, status="succeeded"))
    assert len(succeeded) == len(trials)
    assert [j.job_id for j in client.list()] == [job_id]
    assert [j.job_id for j in client.list("SUCCEEDED")] == [job_id]


def test_the_cache_is_shared_across_jobs(client: SearchClient) -> None:
    first_id = client.submit(nb201_spec(budget=10))
    first = client.wait(first_id, WAIT_S)
    proposed_first = [t.arch for t in client.trials(first_id)]
    # The same search again: it proposes what the first job trained, now free cache hits
    # (counted and visible); its own budget then buys architectures not seen before.
    second_id = client.submit(nb201_spec(budget=10))
    second = client.wait(second_id, WAIT_S)
    second_trials = list(client.trials(second_id))
    assert first.trainings == second.trainings == 10
    replayed = second_trials[:len(proposed_first)]
    assert [t.arch for t in replayed] == proposed_first and all(t.cached for t in replayed)
    assert second.best_reward >= first.best_reward


def test_two_concurrent_jobs_never_train_one_architecture_twice(tmp_path: Path) -> None:
    # Arrange: two jobs running at once that propose the same architectures in the same order
    # (random search, one seed); each lookup takes 50 ms, like a training, so they overlap.
    store = InMemoryJobStore()
    runner = job_runner(store, tmp_path, max_running=2)
    settings = {"space": "nb201", "strategy": "random", "evaluator": "nb201", "budget": 10,
                "seed": 7, "simulate_seconds": 0.05}
    for job_id in ("a", "b"):
        store.create(job_id, "test", "default", settings)
    # Act
    for job_id in ("a", "b"):
        runner.start(job_id)
    assert runner.wait("a", WAIT_S) and runner.wait("b", WAIT_S)
    # Assert: each job spent its budget on trainings of its own; the other's were free hits,
    # also while they were still training (the second waits for the first's result)
    jobs = [store.get(job_id) for job_id in ("a", "b")]
    trials = [t for job_id in ("a", "b") for t in stored_trials(store, job_id).values()]
    trained = [t.cache_key for t in trials if not t.cached]
    hits = [t for t in trials if t.cached]
    assert all(v.state == "SUCCEEDED" for v in jobs)
    assert len(trained) == 20 and len(set(trained)) == 20
    assert len(hits) >= 10  # the same proposals: what one trained the other got for free
    runner.close()


def test_cancel_stops_a_running_job_and_an_ended_job_cannot_be_cancelled(
        client: SearchClient) -> None:
    job_id = client.submit(nb201_spec(budget=5000))
    cancelled = client.cancel(job_id, "changed my mind")
    assert cancelled.state == sp.JOB_STATE_CANCELLED and cancelled.reason == "changed my mind"
    job = client.wait(job_id, WAIT_S)
    assert job.state == sp.JOB_STATE_CANCELLED and job.trainings < 5000
    with pytest.raises(FailedPreconditionError, match="CANCELLED"):
        client.cancel(job_id)


@pytest.mark.parametrize(("spec", "field"), [
    (nb201_spec(budget=0), "spec.budget"),
    (nb201_spec(seed=-1), "spec.seed"),
    (sp.SearchSpec(space=pb.SearchSpaceSpec(name="nasnet"), budget=5,
                   evaluation=sp.EvaluationSpec(evaluator="nb201")), "spec.space.name"),
    (sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="annealing", budget=5),
     "spec.strategy"),
    (sp.SearchSpec(budget=5, controller=sp.ControllerSpec(learning_rate=-1.0)),
     "spec.controller.learning_rate"),
    (nb201_spec(dataset="mnist"), "spec.evaluation.dataset"),
    # found by bench.load's fuzzer: accepted, they made threads and batches by the billion
    (sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), budget=5,
                   execution=sp.ExecutionSpec(replicas=2**31 - 1)), "spec.execution.replicas"),
    (sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), budget=5,
                   execution=sp.ExecutionSpec(parallel=2**31 - 1)), "spec.execution.parallel"),
    (sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), budget=5,
                   controller=sp.ControllerSpec(children=2**31 - 1)),
     "spec.controller.children"),
    (sp.SearchSpec(budget=5, evaluation=sp.EvaluationSpec(evaluator="qa")),
     "spec.evaluation.evaluator"),
    (sp.SearchSpec(budget=5, execution=sp.ExecutionSpec(device="gpu")),
     "spec.execution.device"),
    (sp.SearchSpec(budget=5, execution=sp.ExecutionSpec(staleness_rule="drop")),
     "spec.execution.staleness_rule"),
])
def test_a_bad_spec_is_invalid_argument_naming_the_field(client: SearchClient,
                                                         spec: sp.SearchSpec,
                                                         field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.")):
        client.submit(spec)
    assert client.list() == []  # nothing stored


def test_cuda_is_refused_at_submit_by_a_service_without_it(client: SearchClient) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: there is nothing to refuse")
    spec = sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), budget=2,
                         evaluation=sp.EvaluationSpec(evaluator="train"),
                         execution=sp.ExecutionSpec(device="cuda"))
    with pytest.raises(FailedPreconditionError, match=r"spec\.execution\.device: 'cuda' asks "
                                                      r"for CUDA"):
        client.submit(spec)
    assert client.list() == []  # nothing stored


def test_jobs_are_listed_newest_first_a_page_at_a_time(client: SearchClient) -> None:
    # Arrange: five finished jobs
    ids = [client.submit(nb201_spec(budget=1, seed=n)) for n in range(5)]
    for job_id in ids:
        client.wait(job_id, WAIT_S)
    client.cancel(last := client.submit(nb201_spec(budget=5000)))
    # Act
    first, token = client.list_page(page_size=2)
    second, token2 = client.list_page(page_size=2, page_token=token)
    # Assert
    assert [j.job_id for j in first + second] == [last, *ids[::-1][:3]]
    assert [j.job_id for j in client.list(page_size=2)] == [last, *ids[::-1]]
    assert [j.job_id for j in client.list(limit=3)] == [last, *ids[::-1][:2]]
    assert [j.job_id for j in client.list("SUCCEEDED", page_size=4)] == ids[::-1]
    assert [j.job_id for j in client.list("CANCELLED", tenant="default")] == [last]
    assert client.list(tenant="other") == []
    with pytest.raises(InvalidArgumentError, match="page_token"):
        client.list_page(page_token="x")
    with pytest.raises(InvalidArgumentError, match="page_size"):
        client.list_page(page_size=5000)
    assert token2


def test_bad_requests_and_unknown_jobs(client: SearchClient) -> None:
    with pytest.raises(NotFoundError, match="job-nope"):
        client.get("job-nope")
    with pytest.raises(InvalidArgumentError, match="job_id"):
        client.get("")
    job_id = client.submit(nb201_spec(budget=3))
    client.wait(job_id, WAIT_S)
    with pytest.raises(InvalidArgumentError, match="status"):
        list(client.trials(job_id, status="lost"))
    with pytest.raises(InvalidArgumentError, match="page_size"):
        list(client.trials(job_id, page_size=5000))


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", nb201_spec().SerializeToString()[:5],
                                     b"\x0a\x03\xff\xfe\xfd"])  # random, cut, bad UTF-8
def test_a_request_that_does_not_parse_is_invalid_argument(tmp_path: Path,
                                                           payload: bytes) -> None:
    # found by bench.load's fuzzer: grpc answered INTERNAL "Exception deserializing request!"
    store = InMemoryJobStore()
    running = serve_search(store, job_runner(store, tmp_path))
    try:
        with grpc.insecure_channel(running.address) as channel:
            for method, call in (("SubmitSearch", channel.unary_unary),
                                 ("WatchSearch", channel.unary_stream)):
                with pytest.raises(grpc.RpcError) as caught:
                    list(call(f"/nas.v1.SearchService/{method}")(payload, timeout=10)) \
                        if method == "WatchSearch" else call(
                            f"/nas.v1.SearchService/{method}")(payload, timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "request: not a valid nas.v1." in caught.value.details()
            assert SearchClient(running.address).list() == []  # still serving
    finally:
        running.stop()


def test_an_error_quoting_a_huge_field_keeps_its_status(tmp_path: Path) -> None:
    # found by bench.load's fuzzer: NOT_FOUND quoting a 20 kB job id passed the client's 16 KiB
    # metadata limit, so the caller saw RESOURCE_EXHAUSTED "Stream removed" instead
    store = InMemoryJobStore()
    running = serve_search(store, job_runner(store, tmp_path))
    try:
        with SearchClient(running.address) as remote:
            with pytest.raises(NotFoundError, match="characters cut") as caught:
                remote.get("x" * 20_000)
            assert len(str(caught.value)) <= 1000
            with pytest.raises(InvalidArgumentError, match="status"):
                list(remote.trials("job-nope", status="\u00e9" * 20_000))
    finally:
        running.stop()


def test_health_and_reflection_are_served(tmp_path: Path) -> None:
    store = InMemoryJobStore()
    running: RunningSearchService = serve_search(store, job_runner(store, tmp_path))
    try:
        with grpc.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="nas.v1.SearchService"), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert "nas.v1.SearchService" in names
    finally:
        running.stop()


def test_jobs_in_redis_outlive_the_service(tmp_path: Path) -> None:
    client_redis = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    try:
        store = RedisJobStore(client_redis, prefix)
        running = serve_search(store, job_runner(store, tmp_path))
        with SearchClient(running.address) as client:
            job_id = client.submit(nb201_spec(budget=10))
            done = client.wait(job_id, WAIT_S)
        running.stop()
        # a new service on the same Redis sees the finished job and its trials
        again = RedisJobStore(redis.Redis.from_url(REDIS_URL), prefix)
        with SearchClient(SearchServicer(again, job_runner(again, tmp_path))) as client:
            job = client.get(job_id)
            assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == done.trainings == 10
            assert len(list(client.trials(job_id))) == len(stored_trials(again, job_id)) >= 10
    finally:
        for key in client_redis.scan_iter(f"{prefix}:*"):
            client_redis.delete(key)
        client_redis.close()


def _nas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


def test_the_cli_submits_watches_and_lists_jobs_of_a_served_service(tmp_path: Path,
                                                                    nb201_csv: Path) -> None:
    env = {**os.environ, "NAS_NB201_CSV": str(nb201_csv)}
    server = subprocess.Popen([sys.executable, "-m", "nas", "serve", "search", "--port",
                               "0", "--work-dir", str(tmp_path / "work")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("search service listening on 127.0.0.1:"), line
        endpoint = line.split()[-1]
        spec = tmp_path / "spec.yaml"
        spec.write_text("space: nb201\nevaluator: nb201\nbudget: 12\nseed: 1\n")
        submitted = _nas("submit", str(spec), "--endpoint", endpoint)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + WAIT_S
        state = ""
        while state != "SUCCEEDED" and time.monotonic() < deadline:
            shown = _nas("status", job_id, "--endpoint", endpoint)
            assert shown.returncode == 0, shown.stderr
            state = shown.stdout.splitlines()[0]
            time.sleep(0.2)
        assert state == "SUCCEEDED" and "trainings 12/12" in shown.stdout
        listed = _nas("list", "--endpoint", endpoint)
        assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
        rows = _nas("trials", job_id, "--status", "succeeded", "--endpoint", endpoint)
        assert rows.returncode == 0 and len(rows.stdout.splitlines()) >= 13
        top = _nas("best", job_id, "--top", "3", "--endpoint", endpoint)
        assert top.returncode == 0 and len(top.stdout.splitlines()) == 3
        ended = _nas("cancel", job_id, "--endpoint", endpoint)
        assert ended.returncode == 2 and "has ended" in ended.stderr
        bad = tmp_path / "bad.yaml"
        bad.write_text("space: nb201\nbudget: 0\n")
        refused = _nas("submit", str(bad), "--endpoint", endpoint)
        assert refused.returncode == 2 and "budget" in refused.stderr
        assert "Traceback" not in refused.stderr
        unknown = _nas("status", "job-nope", "--endpoint", endpoint)
        assert unknown.returncode == 2 and "job-nope" in unknown.stderr
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    away = _nas("status", "job-x", "--endpoint", endpoint)
    assert away.returncode == 1 and "nas serve search" in away.stderr



def test_a_sigkilled_service_resumes_its_job_and_never_retrains(tmp_path: Path,
                                                                nb201_csv: Path) -> None:
    env = {**os.environ, "NAS_NB201_CSV": str(nb201_csv)}
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    db = redis.Redis.from_url(REDIS_URL)
    first, endpoint = serve_search_process(tmp_path / "work", REDIS_URL, prefix, env=env)
    second: subprocess.Popen[str] | None = None
    try:
        spec = nb201_spec(budget=2500)
        spec.strategy = "random"
        with SearchClient(endpoint) as client:
            job_id = client.submit(spec)
            deadline = time.monotonic() + WAIT_S
            while client.get(job_id).trainings < 300 and time.monotonic() < deadline:
                time.sleep(0.05)
        first.kill()  # SIGKILL mid-job
        first.wait(30)
        store = RedisJobStore(db, prefix)
        before = store.get(job_id)
        assert before.state == "RUNNING"
        finished_before = {k: t for k, t in stored_trials(store, job_id).items()
                           if t.status is TrialState.SUCCEEDED}
        assert 300 <= len(finished_before) < 2500
        second, endpoint = serve_search_process(tmp_path / "work", REDIS_URL, prefix, env=env)
        with SearchClient(endpoint) as client:
            job = client.wait(job_id, WAIT_S)
        assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 2500
        after = stored_trials(RedisJobStore(redis.Redis.from_url(REDIS_URL), prefix), job_id)
        for trial_id, trial in finished_before.items():  # finished trials were kept as they were
            assert after[trial_id] == trial
        trained = [t.cache_key for t in after.values() if not t.cached]
        assert len(trained) == 2500 and len(set(trained)) == 2500  # nothing trained twice
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()


def test_get_best_returns_the_top_k_distinct_architectures(client: SearchClient) -> None:
    job_id = client.submit(nb201_spec(budget=15))
    job = client.wait(job_id, WAIT_S)
    best = client.best(job_id, top_k=5)
    rewards = [t.reward for t in best]
    assert len(best) == 5 and rewards == sorted(rewards, reverse=True)
    assert best[0].reward == job.best_reward
    assert len({t.arch for t in best}) == 5
    trained = sorted((t.reward for t in client.trials(job_id, status="succeeded")),
                     reverse=True)
    assert rewards[0] == trained[0]
    assert [t.trial_id for t in client.best(job_id)] == [best[0].trial_id]
    with pytest.raises(InvalidArgumentError, match="top_k"):
        client.best(job_id, top_k=1000)


@pytest.mark.parametrize("strategy", ["tpe", "gp", "evolution", "reinforce"])
def test_a_job_resumed_by_a_new_runner_takes_up_its_strategy_s_history(
        tmp_path: Path, strategy: str) -> None:
    # Arrange: a job stopped mid-way (its service closed: the job stays RUNNING)
    store = InMemoryJobStore()
    first = job_runner(store, tmp_path)
    store.create("j", "test", "default", {"space": "nb201", "strategy": strategy,
                                          "evaluator": "nb201", "budget": 30, "seed": 3,
                                          "simulate_seconds": 0.02})
    first.start("j")
    deadline = time.monotonic() + WAIT_S
    while store.get("j").trainings < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.close()
    stopped = store.get("j")
    assert stopped.state == "RUNNING" and 12 <= stopped.trainings < 30
    # Act: a new runner over the same store (a restarted service)
    again = job_runner(store, tmp_path)
    assert again.resume() == ["j"]
    assert again.wait("j", WAIT_S)
    # Assert: the budget spent exactly, nothing trained twice
    done = store.get("j")
    assert done.state == "SUCCEEDED" and done.trainings == 30, done.reason
    trained = [t.cache_key for t in stored_trials(store, "j").values() if not t.cached]
    assert len(trained) == len(set(trained)) == 30
    again.close()


def test_strategies_take_up_a_history() -> None:
    from controller.spaces.nb201 import NB201Space
    from controller.strategies.evolution import EvolutionStrategy
    from controller.strategies.optuna_samplers import OptunaStrategy
    from controller.strategies.reinforce import ReinforceStrategy

    space = NB201Space()
    history = [((i % 5, 0, 1, 2, 3, 4), i / 20) for i in range(15)]
    tpe = OptunaStrategy(space, "tpe", seed=0)
    tpe.resume(history)
    assert len(tpe.study.trials) == 15 and tpe.study.best_value == 14 / 20
    evolution = EvolutionStrategy(space, seed=0, population=10)
    evolution.resume(history)
    assert [r for _, r in evolution.population] == [i / 20 for i in range(5, 15)]
    reinforce = ReinforceStrategy(space, seed=0, candidates=8)
    reinforce.resume(history)
    assert reinforce.novelty is not None and len(reinforce.novelty) == 5
    assert reinforce.ranker is not None and len(reinforce.ranker) == 15
    drawn = {tuple(t.actions) for t in reinforce.suggest(20)}
    assert not drawn & {a for a, _ in history}  # never again what the earlier run drew


def test_ended_jobs_leave_nothing_in_the_service_s_memory(tmp_path: Path) -> None:
    # Arrange: a Redis-backed runner, three jobs of which one is cancelled
    db = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    store = RedisJobStore(db, prefix)
    runner = job_runner(store, tmp_path)
    try:
        for n in range(3):
            store.create(f"j{n}", "test", "default", {"space": "nb201", "evaluator": "nb201",
                                                     "budget": 200 if n == 2 else 5,
                                                     "seed": n, "simulate_seconds": 0.01})
            runner.start(f"j{n}")
        runner.cancel("j2")
        # Act
        assert all(runner.wait(f"j{n}", WAIT_S) for n in range(3))
        # Assert: no thread, cancel flag, result or per-job lock of theirs is left
        assert [store.get(f"j{n}").state for n in range(3)] == ["SUCCEEDED", "SUCCEEDED",
                                                                 "CANCELLED"]
        assert runner._cancel == {} and runner._done == {} and runner.results == {}
        assert store._writers == {}
    finally:
        runner.close()
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()
