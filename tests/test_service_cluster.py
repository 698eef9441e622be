"""The search service on its cluster: jobs whose K controller replicas share the policy through
real parameter-server shard processes, and whose children are trained by real Ray workers
(a local Ray, 2 CPUs) on a slice of Fashion-MNIST; a SIGKILLed service resumes the job with the
policy the shards kept, and never trains a finished child again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from conftest import stored_trials

from controller.jobs.redis_store import RedisJobStore
from controller.jobs.store import InMemoryJobStore, TrialState
from controller.service.client import SearchClient
from controller.service.servicer import serve_search
from nas.cluster import ClusterOptions, ServiceCluster, job_runner
from protos.errors import FailedPreconditionError
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from worker.scheduler import RAY_LOOPBACK_ENV

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT_S = 240.0
TRAIN_SPEC = """\
space: nb201
strategy: reinforce
children: 1
evaluator: train
dataset: fashion-mnist
train_subset: 256
val_subset: 128
cells: 1
filters: 4
epochs: 1
batch_size: 32
device: cpu
budget: {budget}
seed: 3
replicas: 2
"""


def nb201_spec(budget: int, replicas: int) -> sp.SearchSpec:
    # Zoph & Le's slow controller explores: the budget is spent before it settles on cached cells
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="reinforce",
                         controller=sp.ControllerSpec(preset="zoph-le"),
                         evaluation=sp.EvaluationSpec(evaluator="nb201", dataset="cifar10"),
                         budget=budget, seed=5, execution=sp.ExecutionSpec(replicas=replicas))


def test_replicas_share_the_policy_on_the_shards_and_need_them(
        tmp_path: Path, nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    db = redis.Redis.from_url(REDIS_URL)
    cluster = ServiceCluster(ClusterOptions(shards=2, redis_url=REDIS_URL, redis_prefix=prefix,
                                            log_dir=tmp_path / "logs"))
    store = InMemoryJobStore()
    running = serve_search(store, job_runner(store, tmp_path, 1, cluster))
    try:
        with SearchClient(running.address) as client:
            job = client.wait(client.submit(nb201_spec(budget=48, replicas=3)), WAIT_S)
            trials = list(client.trials(job.job_id))
        assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 48
        by_replica = {t.trial_id.rsplit("-", 2)[1] for t in trials}
        assert by_replica == {"r0", "r1", "r2"}  # three replicas proposed children
        # the shards hold the job's policy (layout id = job id), updated by the replicas' pushes
        versions = [int(s.version) for s in cluster.shard_status(job.job_id)]
        assert min(versions) >= 3, versions
        # a service without shards refuses K > 1 before anything runs
        bare = serve_search(store2 := InMemoryJobStore(), job_runner(store2, tmp_path))
        try:
            with SearchClient(bare.address) as client:
                try:
                    client.submit(nb201_spec(budget=4, replicas=2))
                except FailedPreconditionError as exc:
                    assert "spec.execution.replicas" in str(exc) and "--shards" in str(exc)
                else:
                    raise AssertionError("K=2 without parameter servers was accepted")
                assert client.list() == []  # nothing was stored
        finally:
            bare.stop()
    finally:
        running.stop()
        cluster.close()
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()


def _serve(tmp_path: Path, prefix: str, env: dict[str, str], log: Path
           ) -> tuple[subprocess.Popen[bytes], str]:
    """`nas serve search` with 2 shards and 2 Ray workers; its endpoint once it listens."""
    out = log.open("ab")
    start = log.stat().st_size
    proc = subprocess.Popen([sys.executable, "-m", "nas", "serve", "search", "--port", "0",
                             "--redis", REDIS_URL, "--redis-prefix", prefix, "--work-dir",
                             str(tmp_path / "work"), "--shards", "2", "--workers", "2",
                             "--heartbeat-timeout", "20"],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        text = log.read_bytes()[start:].decode(errors="replace")
        found = re.search(r"search service listening on (\S+)", text)
        if found and "workers report to" in text:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the service did not start:\n{log.read_text()[-3000:]}")


def _nas(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=ROOT, env=env,
                          text=True, capture_output=True, timeout=120)


def test_a_submitted_job_runs_on_shards_and_ray_workers_and_survives_a_sigkill(
        tmp_path: Path, fashion_mnist_installed: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")
    env = {**os.environ, **RAY_LOOPBACK_ENV, "HOME": str(home)}
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "service.log"
    log.touch()
    spec = tmp_path / "spec.yaml"
    spec.write_text(TRAIN_SPEC.format(budget=10))
    db = redis.Redis.from_url(REDIS_URL)
    first, endpoint = _serve(tmp_path, prefix, env, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        submitted = _nas("submit", str(spec), "--endpoint", endpoint, env=env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]
        store = RedisJobStore(db, prefix)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:  # wait for a few trainings (and pushes)
            if store.get(job_id).trainings >= 3:
                break
            time.sleep(0.05)
        first.kill()  # SIGKILL mid-job: its shards and Ray die with it
        first.wait(30)
        kept = RedisJobStore(redis.Redis.from_url(REDIS_URL), prefix)
        assert kept.get(job_id).state == "RUNNING"
        before = stored_trials(kept, job_id)
        finished = {k: t for k, t in before.items() if t.status is TrialState.SUCCEEDED}
        in_flight = {t.arch for t in before.values() if t.status is TrialState.RUNNING}
        assert 3 <= len(finished) < 10
        second, endpoint = _serve(tmp_path, prefix, env, log)
        waited = _nas("status", job_id, "--endpoint", endpoint, env=env)
        assert waited.returncode == 0
        with SearchClient(endpoint) as client:
            job = client.wait(job_id, WAIT_S)
        assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 10, job.reason
        after = stored_trials(RedisJobStore(redis.Redis.from_url(REDIS_URL), prefix), job_id)
        for trial_id, trial in finished.items():  # finished trials were kept as they were
            assert after[trial_id] == trial
        trained = [t.cache_key for t in after.values()
                   if t.status is TrialState.SUCCEEDED and not t.cached]
        assert len(trained) == 10 and len(set(trained)) == len(trained)  # none trained twice
        requeued = {t.arch for k, t in after.items() if "-q" in k}
        assert requeued == in_flight  # children in flight at the kill were trained again first
        text = log.read_text()
        resumed = re.search(rf"{job_id}: policy resumed from the parameter servers at version "
                            rf"(\d+)", text)
        assert resumed and int(resumed.group(1)) >= 1, text[-3000:]  # the policy was kept
        assert all("attempts" in t.metrics for t in after.values()
                   if not t.cached)  # every child went through the Ray workers
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for key in db.scan_iter(f"{prefix}:*"):
            db.delete(key)
        db.close()
