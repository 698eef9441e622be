"""Controller replicas in replica-host processes (``nas serve replica``): a real `nas search`
with its replicas on two hosts, one SIGKILLed mid-job; and the host's gRPC contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import serve_search_process

from controller.config import build_config
from controller.distributed.host import settings_json
from controller.distributed.host_service import serve_replica_host
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.shards import ShardProcesses
from controller.factory import build_reinforce, build_space
from controller.service.client import SearchClient
from protos import codec
from protos.cluster_auth import ClusterAuth, generate_token
from protos.types import LayoutSpec
from protos.v1 import common_pb2 as pb
from protos.v1 import replica_pb2 as rp
from protos.v1 import replica_pb2_grpc as rp_grpc
from protos.v1 import search_pb2 as sp

ROOT = Path(__file__).resolve().parents[1]


def _shard_version(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return max((float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("nas_ps_version{")), default=0.0)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def test_a_sigkilled_replica_host_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL of one of two replica hosts mid-job: the service finishes the children of its
    replicas, restarts the host, starts its replicas again there (new incarnations) with the
    results they had not pushed; the job trains exactly its budget, every architecture once,
    and no push is applied twice."""
    out, budget = tmp_path / "run", 160
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "search", "--space", "nb201", "--evaluator", "synthetic",
         "--budget", str(budget), "--shards", "2", "--replicas", "4", "--replica-hosts", "2",
         "--children", "4", "--simulate-seconds", "0.1", "--seed", "3", "--out", str(out),
         "--quiet"], cwd=ROOT, env=dict(os.environ), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        cluster = _wait_for(out / "cluster.json", proc)
        victim = cluster["processes"]["replica-host0"]
        metrics = cluster["metrics"]["shard0"]
        deadline = time.monotonic() + 120
        while _shard_version(metrics) < 6:  # the policy has been updated: mid-job
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        at_kill = _shard_version(metrics)
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    doc = json.loads((out / "result.json").read_text())
    layout = doc["layout"]
    assert layout["restarts"].get("replica-host0", 0) >= 1  # the host was restarted
    assert doc["trainings"] == budget  # every accepted result counted, none twice
    trained = [h for h in doc["history"] if not h["cached"]]
    assert len(trained) == budget and len({h["arch"] for h in trained}) == budget
    ids = [h["trial_id"] for h in doc["history"]]
    assert len(ids) == len(set(ids))
    # the host's replicas came back as new incarnations and went on proposing
    assert any(".i1-" in i for i in ids if i.startswith(("search-r0", "search-r2")))
    reports = layout["replica_reports"]
    pushes = sum(r["pushes"] for r in reports.values())
    assert sum(r["duplicates"] for r in reports.values()) == 0
    versions = layout["shard_versions"]
    assert versions[0] == versions[1] > at_kill  # the policy went on learning after the kill
    # every update the shards applied was counted by a replica, except at most one push per
    # replica of the killed host whose reply died with it: none was applied twice
    assert pushes <= versions[0] <= pushes + 2


@pytest.fixture
def host() -> Iterator[tuple[rp_grpc.ReplicaHostStub, ShardProcesses, LayoutSpec, dict]]:
    """A replica host on loopback, one real shard with a job's policy registered."""
    shards = ShardProcesses(Path(os.environ.get("TMPDIR", "/tmp")) / "replica-host-test")
    served, state = serve_replica_host(auth=ClusterAuth(shards.token))
    try:
        settings = {"space": "nb201", "evaluator": "synthetic", "children": 2, "seed": 0}
        cfg = build_config(settings)
        policy = build_reinforce(build_space(cfg), cfg).policy
        flat = np.concatenate([p.detach().numpy().ravel() for p in policy.parameters()])
        address = shards.start_shard(0, 1, "redis://127.0.0.1:6379/0", "replica-host-test")
        layout = LayoutSpec(layout_id=f"job-{os.getpid()}-{time.monotonic_ns()}",
                            total_size=flat.size, num_shards=1, checkpoint_every=0)
        ShardedParameterClient([address], layout, auth=shards.auth).register(
            flat.astype(np.float32))
        channel = ClusterAuth(shards.token).channel(served.address)
        stub = rp_grpc.ReplicaHostStub(channel)
        stub.BeginJob(rp.BeginJobRequest(job_id="j", settings_json=settings_json(settings),
                                         layout=codec.layout_to_proto(layout),
                                         shard_addresses=[address]), timeout=30)
        yield stub, shards, layout, settings
        channel.close()
    finally:
        state.close()
        served.stop(None)
        shards.stop()


def test_a_replica_learns_from_results_its_predecessor_proposed(host) -> None:
    """Results of trials another incarnation proposed are adopted, taken once even when the
    report is sent twice (a retry after a lost reply), and every m of them push an update."""
    stub, _, _, _ = host
    stub.OpenReplica(rp.OpenReplicaRequest(job_id="j", replica_id="r0", index=0), timeout=30)
    proposals = stub.Suggest(rp.SuggestRequest(job_id="j", replica_id="r0", n=2),
                             timeout=30).proposals
    assert len(proposals) == 2 and all(len(p.actions) == 6 for p in proposals)
    stub.OpenReplica(rp.OpenReplicaRequest(job_id="j", replica_id="r0.i1", index=0,
                                           incarnation=1), timeout=30)

    def report(p: rp.Proposal, reward: float) -> rp.ReplicaReportResponse:
        return stub.Report(rp.ReplicaReportRequest(
            job_id="j", replica_id="r0.i1", trial_id=p.trial_id, actions=list(p.actions),
            reward=reward), timeout=30)

    first = report(proposals[0], 0.5)
    assert not first.updated
    assert not report(proposals[0], 0.5).updated  # the same result again: taken once
    second = report(proposals[1], 0.7)
    assert second.updated and len(second.pushes) == 1 and second.pushes[0].applied
    assert json.loads(second.checkpoint_json)["learner"]
    assert second.stats["policy_version"] == 1.0


def test_a_withdrawn_proposal_with_a_known_reward_is_a_free_lesson(host) -> None:
    """A proposal another host's replica made first is withdrawn by the service: with its
    reward known it rides along in the replica's next update (as an isomorphic twin does);
    unknown, it is dropped."""
    stub, _, _, _ = host
    stub.OpenReplica(rp.OpenReplicaRequest(job_id="j", replica_id="r0", index=0), timeout=30)
    first, second, third, fourth = stub.Suggest(
        rp.SuggestRequest(job_id="j", replica_id="r0", n=4), timeout=30).proposals
    dropped = stub.Withdraw(rp.WithdrawRequest(job_id="j", replica_id="r0",
                                               trial_id=first.trial_id), timeout=30)
    lesson = stub.Withdraw(rp.WithdrawRequest(job_id="j", replica_id="r0",
                                              trial_id=second.trial_id, known=True,
                                              reward=0.8), timeout=30)
    assert not dropped.updated and not lesson.updated and lesson.stats == {}
    results = [stub.Report(rp.ReplicaReportRequest(
        job_id="j", replica_id="r0", trial_id=p.trial_id, actions=list(p.actions),
        reward=0.6), timeout=30) for p in (third, fourth)]
    assert [r.updated for r in results] == [False, True]  # m = 2 results, the lesson with them
    assert results[1].stats["free_twins"] == 1.0
    with pytest.raises(grpc.RpcError) as info:  # a withdrawn proposal takes no result
        stub.Report(rp.ReplicaReportRequest(
            job_id="j", replica_id="r0", trial_id=first.trial_id, reward=0.5), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "actions" in str(info.value.details())


def test_bad_requests_name_the_field(host) -> None:
    stub, _, layout, _ = host
    cases = [
        (lambda: stub.Suggest(rp.SuggestRequest(job_id="j", replica_id="r9", n=1)),
         grpc.StatusCode.NOT_FOUND, "replica_id"),
        (lambda: stub.Suggest(rp.SuggestRequest(job_id="nope", replica_id="r0", n=1)),
         grpc.StatusCode.NOT_FOUND, "job_id"),
        (lambda: stub.BeginJob(rp.BeginJobRequest(job_id="k", settings_json="{",
                                                  layout=codec.layout_to_proto(layout))),
         grpc.StatusCode.INVALID_ARGUMENT, "settings_json"),
        (lambda: stub.BeginJob(rp.BeginJobRequest(
            job_id="k", settings_json='{"strategy": "random"}',
            layout=codec.layout_to_proto(layout))),
         grpc.StatusCode.INVALID_ARGUMENT, "settings_json"),
        (lambda: stub.OpenReplica(rp.OpenReplicaRequest(job_id="j", replica_id="")),
         grpc.StatusCode.INVALID_ARGUMENT, "replica_id"),
    ]
    stub.OpenReplica(rp.OpenReplicaRequest(job_id="j", replica_id="r0"), timeout=30)
    cases.append((lambda: stub.Suggest(rp.SuggestRequest(job_id="j", replica_id="r0", n=0)),
                  grpc.StatusCode.INVALID_ARGUMENT, "n:"))
    for call, code, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code, info.value.details()
        assert field in str(info.value.details())


def test_the_host_requires_the_cluster_token() -> None:
    served, state = serve_replica_host(auth=ClusterAuth(generate_token()))
    try:
        with grpc.insecure_channel(served.address) as channel, \
                pytest.raises(grpc.RpcError) as info:
            rp_grpc.ReplicaHostStub(channel).Suggest(
                rp.SuggestRequest(job_id="j", replica_id="r0", n=1), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        state.close()
        served.stop(None)


@pytest.mark.parametrize("args, field", [
    (["search", "--replica-hosts", "2", "--space", "nb201", "--evaluator", "synthetic"],
     "replica_hosts"),
    (["search", "--replica-hosts", "0"], "replica_hosts"),
    (["serve", "replica"], "--cluster-token-file"),
])
def test_cli_errors_are_one_line(args: list[str], field: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NAS_CLUSTER_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "nas", *args, "--out" if args[0] == "search"
                           else "--grace", str(tmp_path) if args[0] == "search" else "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], done.stderr


def test_a_service_runs_its_replicas_on_running_replica_hosts(tmp_path: Path) -> None:
    """`nas serve replica` processes started by hand (as on other machines), given to
    `nas serve search --replica-host-addresses` with the cluster token: a job with two
    replicas runs one on each and succeeds."""
    token = generate_token()
    env = {**os.environ, "NAS_CLUSTER_TOKEN": token}
    hosts = [subprocess.Popen([sys.executable, "-m", "nas", "serve", "replica", "--port", "0"],
                              cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for _ in range(2)]
    service = None
    try:
        addresses = []
        for proc in hosts:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("replica host listening on "), line
            addresses.append(line.split()[-1])
        service, endpoint = serve_search_process(
            tmp_path / "work", "redis://127.0.0.1:6379/0", f"test-{os.getpid()}",
            ["--shards", "1", "--replica-host-addresses", ",".join(addresses)], env=env)
        spec = sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="reinforce",
                             evaluation=sp.EvaluationSpec(evaluator="synthetic"),
                             execution=sp.ExecutionSpec(replicas=2), budget=24, seed=1)
        with SearchClient(endpoint) as client:
            job = client.wait(client.submit(spec), 120)
            trials = list(client.trials(job.job_id))
        assert job.state == sp.JOB_STATE_SUCCEEDED, job.reason
        assert {t.trial_id.split("-t")[0].rsplit("-", 1)[1] for t in trials} == {"r0", "r1"}
    finally:
        for proc in [*([service] if service else []), *hosts]:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    for index, proc in enumerate(hosts):  # each host ran one of the replicas
        assert proc.stdout is not None
        assert f"replica {job.job_id}-r{index} of job {job.job_id} started" in proc.stdout.read()
