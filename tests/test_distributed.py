"""The distributed layout against real shard processes, a real Redis and real replica
processes: exact gradients through the shards, idempotent pushes, bounded staleness, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from torch import nn

from controller.distributed.metrics import ReplicaMetricsServer
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.remote import RemoteUpdater
from controller.distributed.shards import ShardProcesses
from controller.evaluators.nb201 import NB201Evaluator
from controller.policy import LSTMPolicy, ReinforceLearner, ScoredTrial
from controller.policy.reinforce import ReinforceConfig
from controller.spaces.nb201 import NB201Space
from controller.strategies.reinforce import ReinforceStrategy
from paramserver.adam import Adam
from protos.errors import FailedPreconditionError
from protos.types import LayoutSpec, StalenessRule, TrialResult, TrialStatus, UpdatePolicy

REDIS_URL = "redis://127.0.0.1:6379/0"
Table = dict[str, tuple[float, float]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ShardProcesses, str]]:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    c = ShardProcesses(tmp_path / "logs")
    yield c, prefix
    c.stop()
    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{prefix}:*"):
        r.delete(key)


def _shards(c: ShardProcesses, prefix: str, n: int) -> list[str]:
    return [c.start_shard(i, n, REDIS_URL, prefix) for i in range(n)]


def _layout(size: int, shards: int, **kw: object) -> LayoutSpec:
    return LayoutSpec(layout_id=f"l-{uuid.uuid4().hex[:6]}", total_size=size, num_shards=shards,
                      **kw)  # type: ignore[arg-type]


def test_sync_shards_equal_an_in_process_adam_run(cluster: tuple[ShardProcesses, str],
                                                  nb201_table: Table) -> None:
    # Arrange: S=3 real shard processes, sync updates, one replica with m=4 children.
    c, prefix = cluster
    space = NB201Space()
    config = ReinforceConfig(learning_rate=0.01, entropy_weight=0.01)
    # (sampling with replacement: every update takes exactly the batch the test keeps)
    strategy = ReinforceStrategy(space, seed=5, batch_size=4, learner=config,
                                 with_replacement=True)
    initial = nn.utils.parameters_to_vector(strategy.policy.parameters()).detach().numpy()
    layout = _layout(initial.size, 3, policy=UpdatePolicy.SYNC, sync_pushes=1,
                     learning_rate=0.01)
    client = ShardedParameterClient(_shards(c, prefix, 3), layout, auth=c.auth)
    client.register(initial)
    remote = ReinforceStrategy(space, seed=5, batch_size=4, learner=config,
                               updater=lambda p: RemoteUpdater(list(p.parameters()), client, "r0"),
                               with_replacement=True)
    batches: list[list[ScoredTrial]] = []
    evaluator = NB201Evaluator(table=nb201_table)
    # Act: 20 updates through the shards, keeping every scored batch.
    for _ in range(20):
        trials = remote.suggest(4)
        batch = []
        for t in trials:
            result = TrialResult(t.trial_id, TrialStatus.SUCCEEDED,
                                 evaluator.evaluate(t.architecture).reward)
            batch.append(ScoredTrial(t, result))
            remote.report(t.trial_id, result)
        batches.append(batch)
    # ... and the same batches through an in-process Adam from the same initial policy.
    reference = LSTMPolicy(space.decisions, strategy.policy.config, seed=5)
    learner = ReinforceLearner(reference, config)
    for batch in batches:
        learner.update(batch)
    # Assert
    values, versions = client.pull()
    assert versions == [20, 20, 20]
    expected = nn.utils.parameters_to_vector(reference.parameters()).detach().numpy()
    np.testing.assert_allclose(values, expected, atol=1e-6, rtol=0)
    assert remote.learner.version == 20
    client.close()


def test_a_replayed_push_is_applied_once(cluster: tuple[ShardProcesses, str]) -> None:
    c, prefix = cluster
    layout = _layout(10, 2, learning_rate=0.1)
    client = ShardedParameterClient(_shards(c, prefix, 2), layout, auth=c.auth)
    client.register(np.zeros(10, dtype=np.float32))
    grad = np.ones(10, dtype=np.float32)
    first = client.push("r0", 1, [0, 0], grad)
    replay = client.push("r0", 1, [0, 0], grad)  # the same (replica, seq): a lost ack's retry
    values, versions = client.pull()
    assert first.applied == (True, True) and replay.duplicate == (True, True)
    assert versions == [1, 1]
    np.testing.assert_allclose(values, -0.1, rtol=1e-5)  # one Adam step of size lr
    assert [s.duplicates for s in client.status()] == [1, 1]
    client.close()


def test_a_lagging_replica_is_rejected_and_recovers_by_re_pulling(
        cluster: tuple[ShardProcesses, str]) -> None:
    # Arrange: async, the reject rule with staleness bound 2; replica A pulls, B pushes three
    # updates.
    c, prefix = cluster
    layout = _layout(6, 2, staleness=2, learning_rate=0.1, staleness_rule=StalenessRule.REJECT)
    client = ShardedParameterClient(_shards(c, prefix, 2), layout, auth=c.auth)
    client.register(np.zeros(6, dtype=np.float32))
    params_a = [nn.Parameter(torch.zeros(6))]
    a = RemoteUpdater(params_a, client, "A")
    b = RemoteUpdater([nn.Parameter(torch.zeros(6))], client, "B")
    for _ in range(3):
        b.apply([torch.ones(6)])
    # Act
    version_after_rejection = a.apply([torch.ones(6)])
    # Assert: rejected as 3 > 2 versions stale, then A holds the current values.
    assert a.stats.rejected_stale == 1 and a.stats.pushes == 0
    assert version_after_rejection == 3 and a.base_versions == [3, 3]
    values, _ = client.pull()
    assert torch.equal(params_a[0].detach(), torch.from_numpy(values))
    with pytest.raises(FailedPreconditionError, match="stale"):
        client.push("C", 1, [0, 0], np.ones(6, dtype=np.float32))
    assert a.apply([torch.ones(6)]) == 4  # fresh again: accepted
    assert a.stats.pushes == 1
    client.close()


def test_a_lagging_replica_is_applied_at_a_scaled_rate_by_default(
        cluster: tuple[ShardProcesses, str]) -> None:
    # Arrange: the default (scale) rule, K = 1; replica A pulls, B pushes three updates.
    c, prefix = cluster
    layout = _layout(6, 2, staleness=2, learning_rate=0.1)
    client = ShardedParameterClient(_shards(c, prefix, 2), layout, auth=c.auth)
    client.register(np.zeros(6, dtype=np.float32))
    a = RemoteUpdater([nn.Parameter(torch.zeros(6))], client, "A")
    b = RemoteUpdater([nn.Parameter(torch.zeros(6))], client, "B")
    for _ in range(3):
        b.apply([torch.ones(6)])
    # Act: A's gradient is 3 versions stale, past tau = 2
    version = a.apply([torch.full((6,), 2.0)])
    # Assert: applied, at the learning rate times K / 3; nothing rejected
    assert (a.stats.pushes, a.stats.rejected_stale, a.stats.staleness, version) == (1, 0, [3], 4)
    param, adam = np.zeros(6, dtype=np.float32), Adam(6, 0.1)
    for _ in range(3):
        adam.step(param, np.ones(6, dtype=np.float32))
    adam.step(param, np.full(6, 2.0, dtype=np.float32), lr=0.1 / 3)
    np.testing.assert_array_equal(client.pull()[0], param)
    assert [s.rejected_stale for s in client.status()] == [0, 0]
    client.close()


def test_replica_metrics_are_served(cluster: tuple[ShardProcesses, str]) -> None:
    c, prefix = cluster
    layout = _layout(4, 1)
    client = ShardedParameterClient(_shards(c, prefix, 1), layout, auth=c.auth)
    client.register(np.zeros(4, dtype=np.float32))
    server = ReplicaMetricsServer(port=0)
    updater = RemoteUpdater([nn.Parameter(torch.zeros(4))], client, "r", metrics=server.replica(3))
    updater.apply([torch.ones(4)])
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
    assert b'nas_replica_pushes_total{replica="3"} 1.0' in text
    assert b"nas_replica_push_seconds_bucket" in text
    shard_metrics = urllib.request.urlopen(c.metrics["shard0"], timeout=5).read()
    assert b"nas_ps_pushes_total" in shard_metrics
    client.close()


def _search(out: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nas", "search", "--space", "nb201",
                             "--evaluator", "nb201", "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(path: Path, proc: subprocess.Popen[bytes],
              timeout: float = 180) -> dict[str, object]:
    """The cluster description once the search has started every process (a loaded machine
    may take long to start 2 shards and 2 replicas, each importing torch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        if proc.poll() is not None:
            output = proc.stdout.read().decode()[-3000:] if proc.stdout else ""
            raise AssertionError(f"the search exited ({proc.returncode}) before writing "
                                 f"{path}:\n{output}")
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def test_killed_shard_restarts_from_its_checkpoint_and_the_search_completes(
        tmp_path: Path, nb201_csv: Path) -> None:
    # Arrange: S=2, K=2, each lookup takes 40 ms so the search runs for a few seconds; Zoph &
    # Le's slow controller keeps exploring (the default preset may settle on cached cells
    # before 80 trainings, ending the search as converged).
    proc = _search(tmp_path, "--budget", "80", "--shards", "2", "--replicas", "2",
                   "--controller", "zoph-le", "--simulate-seconds", "0.04",
                   "--checkpoint-every", "2", "--nb201-csv", str(nb201_csv))
    cluster = _wait_for(tmp_path / "cluster.json", proc)
    time.sleep(1.5)
    # Act
    os.kill(int(cluster["processes"]["shard1"]), signal.SIGKILL)  # type: ignore[index]
    out, _ = proc.communicate(timeout=240)
    # Assert
    assert proc.returncode == 0, out.decode()[-2000:]
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 80
    assert doc["layout"]["restarts"] == {"shard1": 1}
    trained = [h for h in doc["history"] if not h["cached"]]
    assert len(trained) == 80 and len({h["trial_id"] for h in doc["history"]}) == \
        len(doc["history"])
    reports = doc["layout"]["replica_reports"].values()
    assert sum(r["trainings"] for r in reports) == 80


def test_sigterm_stops_every_process(tmp_path: Path, nb201_csv: Path) -> None:
    proc = _search(tmp_path, "--budget", "500", "--shards", "2", "--replicas", "2",
                   "--simulate-seconds", "0.05", "--nb201-csv", str(nb201_csv))
    cluster = _wait_for(tmp_path / "cluster.json", proc)
    pids = [int(p) for p in cluster["processes"].values()]  # type: ignore[attr-defined]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.1)
    assert alive == [], f"orphans: {alive}"
    assert proc.returncode != 0


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
