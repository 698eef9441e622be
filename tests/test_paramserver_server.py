"""The shard server over real gRPC on loopback (in-memory and real Redis checkpoints), and
``python -m paramserver`` as a real process: readiness line, SIGTERM, SIGKILL + restore, --help."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from conftest import assert_unparsable_requests_are_invalid_argument

from paramserver.checkpoint import InMemoryCheckpointStore, RedisCheckpointStore
from paramserver.server import RunningShard, serve
from paramserver.shard import ShardState
from protos import codec
from protos.cluster_auth import TOKEN_ENV, ClusterAuth
from protos.rpc import CHANNEL_OPTIONS
from protos.types import LayoutSpec, StalenessRule
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import paramserver_pb2_grpc as ps_grpc

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = LayoutSpec("policy", 10, 2, staleness=1, learning_rate=0.1, checkpoint_every=1,
                    staleness_rule=StalenessRule.REJECT)
INITIAL = np.linspace(-1, 1, 10, dtype=np.float32)
REDIS_URL = "redis://127.0.0.1:6379/0"
TOKEN = "test-paramserver-token"  # the shard processes require it ($NAS_CLUSTER_TOKEN)
AUTH = ClusterAuth(TOKEN)
READY = re.compile(r"^paramserver shard (\d+)/(\d+) listening on ([\d.]+):(\d+)"
                   r"(?: metrics http://[\d.]+:(\d+)/metrics)?$")


def delete_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def register(stub: ps_grpc.ParameterServerStub, layout: LayoutSpec = LAYOUT, shard: int = 1,
             initial: np.ndarray = INITIAL[5:]) -> ps.RegisterLayoutResponse:
    start, _ = layout.shard_range(shard)
    return stub.RegisterLayout(ps.RegisterLayoutRequest(
        layout=codec.layout_to_proto(layout), shard=shard,
        initial=codec.tensor_to_proto(start, initial)), timeout=10)


def push(stub: ps_grpc.ParameterServerStub, seq: int, base: int, gradient: np.ndarray,
         replica: str = "r0") -> ps.PushResponse:
    return stub.Push(ps.PushRequest(layout_id="policy", replica_id=replica, seq=seq,
                                    base_version=base,
                                    gradient=codec.tensor_to_proto(5, gradient)), timeout=10)


def pull(stub: ps_grpc.ParameterServerStub, min_version: int = 0,
         timeout: float = 10) -> tuple[int, np.ndarray]:
    reply = stub.Pull(ps.PullRequest(layout_id="policy", min_version=min_version),
                      timeout=timeout)
    return reply.version, codec.tensor_from_proto(reply.values)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


Served = tuple[RunningShard, ps_grpc.ParameterServerStub]


@pytest.fixture(params=["memory", "redis"])
def shard1(request: pytest.FixtureRequest) -> Iterator[Served]:
    prefix = f"test-{uuid.uuid4().hex}"
    store = InMemoryCheckpointStore() if request.param == "memory" else RedisCheckpointStore(
        REDIS_URL, prefix=prefix)
    running = serve(1, 2, store, metrics_port=0, max_workers=4)
    channel = grpc.insecure_channel(running.address, options=CHANNEL_OPTIONS)
    yield running, ps_grpc.ParameterServerStub(channel)
    channel.close()
    running.stop(grace=1)
    delete_prefix(prefix)


def test_register_is_idempotent_and_checks_the_layout(shard1: Served) -> None:
    _, stub = shard1
    assert (register(stub).version, register(stub).created) == (0, False)
    conflicting = LayoutSpec("policy", 10, 2, staleness=1, learning_rate=0.5)
    assert code_of(lambda: register(stub, conflicting)) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: register(stub, shard=0, initial=INITIAL[:5])) == \
        grpc.StatusCode.INVALID_ARGUMENT
    other = LayoutSpec("other", 10, 2)
    assert code_of(lambda: register(stub, other, initial=INITIAL[:4])) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert register(stub, other).created


def test_errors_map_to_status_codes(shard1: Served) -> None:
    running, stub = shard1
    assert code_of(lambda: pull(stub)) == grpc.StatusCode.NOT_FOUND
    register(stub)
    wrong_dtype = ps.Tensor(start=5, length=5, dtype="float64", data=b"\0" * 40)
    bad = ps.PushRequest(layout_id="policy", replica_id="r", seq=0, gradient=wrong_dtype)
    assert code_of(lambda: stub.Push(bad, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: push(stub, 0, 0, np.ones(4, np.float32))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    for seq in range(2):
        push(stub, seq, seq, np.ones(5, np.float32))
    with pytest.raises(grpc.RpcError) as info:
        push(stub, 9, 0, np.ones(5, np.float32))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stale push" in str(info.value.details())
    status = stub.ShardStatus(ps.ShardStatusRequest(layout_id="policy"), timeout=10)
    assert (status.start, status.length, status.version, status.pushes, status.rejected_stale) \
        == (5, 5, 2, 2, 1)
    text = scrape(running)
    assert 'nas_ps_pushes_total{shard="1"} 2.0' in text
    assert 'nas_ps_push_rejected_total{reason="invalid",shard="1"} 2.0' in text
    assert 'nas_ps_push_rejected_total{reason="stale",shard="1"} 1.0' in text
    assert 'nas_ps_version{shard="1"} 2.0' in text


def test_the_scale_rule_applies_a_stale_push_and_rejects_one_from_the_future(
        shard1: Served) -> None:
    running, stub = shard1
    scale = LayoutSpec("policy", 10, 2, staleness=1, learning_rate=0.1, replicas=2)
    register(stub, scale)
    for seq in range(5):
        push(stub, seq, seq, np.ones(5, np.float32))
    stale = push(stub, 0, 0, np.ones(5, np.float32), replica="slow")  # 5 behind, K = 2
    assert (stale.applied, stale.version) == (True, 6)
    assert code_of(lambda: push(stub, 1, 7, np.ones(5, np.float32), replica="slow")) == \
        grpc.StatusCode.FAILED_PRECONDITION
    status = stub.ShardStatus(ps.ShardStatusRequest(layout_id="policy"), timeout=10)
    assert (status.version, status.pushes, status.rejected_stale) == (6, 6, 1)
    assert codec.layout_from_proto(status.layout) == scale
    assert 'nas_ps_pushes_scaled_total{shard="1"} 1.0' in scrape(running)


def test_registering_again_with_another_rule_keeps_the_values_and_changes_the_rule(
        shard1: Served) -> None:
    # a job resumed with another rule or K, or from a checkpoint older than the rule
    _, stub = shard1
    register(stub)
    push(stub, 1, 0, np.ones(5, np.float32))
    before = stub.Pull(ps.PullRequest(layout_id="policy"), timeout=10)
    reject = replace(LAYOUT, staleness_rule=StalenessRule.REJECT, replicas=4, staleness=0)
    assert (register(stub, reject).version, register(stub, reject).created) == (1, False)
    after = stub.Pull(ps.PullRequest(layout_id="policy"), timeout=10)
    assert after.values.data == before.values.data
    assert code_of(lambda: push(stub, 2, 0, np.ones(5, np.float32))) == \
        grpc.StatusCode.FAILED_PRECONDITION  # one version behind, bound 0: rejected
    status = stub.ShardStatus(ps.ShardStatusRequest(layout_id="policy"), timeout=10)
    assert codec.layout_from_proto(status.layout) == reject


def test_a_layout_without_a_rule_or_replicas_is_scale_with_one(shard1: Served) -> None:
    # what an older client sends; a rule the server does not know names the field
    _, stub = shard1
    old = codec.layout_to_proto(LAYOUT)
    old.ClearField("staleness_rule")
    old.ClearField("replicas")
    stub.RegisterLayout(ps.RegisterLayoutRequest(
        layout=old, shard=1, initial=codec.tensor_to_proto(5, INITIAL[5:])), timeout=10)
    status = stub.ShardStatus(ps.ShardStatusRequest(layout_id="policy"), timeout=10)
    assert (status.layout.staleness_rule, status.layout.replicas) == \
        (ps.STALENESS_RULE_SCALE, 1)
    old.staleness_rule = 7  # type: ignore[assignment]
    old.layout_id = "other"
    with pytest.raises(grpc.RpcError) as info:
        stub.RegisterLayout(ps.RegisterLayoutRequest(
            layout=old, shard=1, initial=codec.tensor_to_proto(5, INITIAL[5:])), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "layout.staleness_rule" in str(info.value.details())


def test_a_request_that_does_not_parse_is_invalid_argument(shard1: Served) -> None:
    running, stub = shard1
    register(stub)
    assert_unparsable_requests_are_invalid_argument(
        running.address, "ParameterServer", ("Push", "Pull", "RegisterLayout", "ShardStatus"),
        (b"\xff\xff\xff", b"\x0a\x06pol", b"\x0a\x02\xff\xfe"))
    assert pull(stub)[0] == 0  # still serving


def test_an_error_quoting_a_huge_layout_id_keeps_its_status(shard1: Served) -> None:
    # found by bench.load's fuzzer: NOT_FOUND quoting a 20 kB layout id passed the client's
    # 16 KiB metadata limit, so the caller saw RESOURCE_EXHAUSTED instead
    _, stub = shard1
    with pytest.raises(grpc.RpcError) as info:
        stub.ShardStatus(ps.ShardStatusRequest(layout_id="x" * 20_000), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "characters cut" in str(info.value.details())


def scrape(running: RunningShard) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def test_pull_waits_for_min_version(shard1: Served) -> None:
    _, stub = shard1
    register(stub)
    assert code_of(lambda: pull(stub, min_version=1, timeout=0.3)) == \
        grpc.StatusCode.DEADLINE_EXCEEDED
    got: list[tuple[int, np.ndarray]] = []
    waiter = threading.Thread(target=lambda: got.append(pull(stub, min_version=1)))
    waiter.start()
    push(stub, 0, 0, np.ones(5, np.float32))
    waiter.join(timeout=10)
    assert got and got[0][0] == 1 and not np.allclose(got[0][1], INITIAL[5:])


def start_process(prefix: str, log: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "paramserver", "--shard", "1", "--num-shards", "2", "--port", "0",
         "--redis", REDIS_URL, "--redis-prefix", prefix, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log.open("ab"), text=True,
        env={**os.environ, TOKEN_ENV: TOKEN})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()))  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout=30)
    match = READY.match(lines[0].strip()) if lines else None
    if match is None:
        proc.kill()
        pytest.fail(f"no readiness line: {lines}\n{log.read_text()}")
    return proc, f"{match.group(3)}:{match.group(4)}"


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    delete_prefix(name)


def test_sigterm_checkpoints_and_exits_0(prefix: str, tmp_path: Path) -> None:
    layout = LayoutSpec("policy", 10, 2, checkpoint_every=0)
    proc, address = start_process(prefix, tmp_path / "ps.log", "--metrics-port", "0")
    with AUTH.channel(address) as channel:
        stub = ps_grpc.ParameterServerStub(channel)
        register(stub, layout)
        push(stub, 0, 0, np.ones(5, np.float32))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    blob = redis.Redis.from_url(REDIS_URL).hget(f"{prefix}:ps:shard:1of2", "policy")
    assert isinstance(blob, bytes) and ShardState.from_bytes(blob).version == 1


def test_sigkill_then_restart_restores_exactly(prefix: str, tmp_path: Path) -> None:
    # Arrange: a replayed reference of the same pushes
    reference = ShardState(LAYOUT, 1, INITIAL[5:])
    grads = [np.random.default_rng(s).standard_normal(5).astype(np.float32) for s in range(4)]
    proc, address = start_process(prefix, tmp_path / "ps.log")
    with AUTH.channel(address) as channel:
        stub = ps_grpc.ParameterServerStub(channel)
        register(stub)
        for seq in range(3):
            push(stub, seq, seq, grads[seq])
            reference.push("r0", seq, seq, 5, grads[seq])
        before = pull(stub)
    # Act
    proc.kill()
    proc.wait(timeout=30)
    proc, address = start_process(prefix, tmp_path / "ps.log")
    try:
        with AUTH.channel(address) as channel:
            stub = ps_grpc.ParameterServerStub(channel)
            after = pull(stub)
            again = register(stub)
            duplicate = push(stub, 2, 3, grads[3])
            push(stub, 3, 3, grads[3])
            reference.push("r0", 3, 3, 5, grads[3])
            final = pull(stub)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # Assert
    assert after[0] == before[0] == 3
    np.testing.assert_array_equal(after[1], before[1])
    assert (again.created, again.version, duplicate.duplicate) == (False, 3, True)
    assert final[0] == 4
    np.testing.assert_array_equal(final[1], reference.pull(0, 0)[1])


def test_help_and_bad_arguments() -> None:
    run = [sys.executable, "-m", "paramserver"]
    shown = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=30)
    assert shown.returncode == 0 and "--num-shards" in shown.stdout
    bad = subprocess.run([*run, "--shard", "2", "--num-shards", "2", "--port", "0", "--redis",
                          REDIS_URL], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--shard" in bad.stderr
    down = subprocess.run([*run, "--shard", "0", "--num-shards", "1", "--port", "0", "--redis",
                           "redis://127.0.0.1:1/0"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**os.environ, TOKEN_ENV: TOKEN})
    assert down.returncode == 2 and "cannot reach Redis" in down.stderr
    assert "Traceback" not in down.stderr
