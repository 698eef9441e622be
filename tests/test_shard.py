"""ShardState: Adam equality under sharding, staleness rules, de-duplication, sync rounds,
snapshots."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from paramserver.adam import Adam
from paramserver.metrics import ShardMetrics
from paramserver.shard import ShardState
from protos.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from protos.types import LayoutSpec, StalenessRule, UpdatePolicy


def make_shard(policy: UpdatePolicy = UpdatePolicy.ASYNC, staleness: int = 2,
               sync_pushes: int = 1, size: int = 10, seed: int = 0,
               rule: StalenessRule = StalenessRule.SCALE, replicas: int = 1) -> ShardState:
    layout = LayoutSpec("policy", size, 1, policy=policy, staleness=staleness,
                        sync_pushes=sync_pushes, learning_rate=0.01, staleness_rule=rule,
                        replicas=replicas)
    initial = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    return ShardState(layout, 0, initial)


def grad(size: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


def test_sharded_adam_equals_torch_adam_on_the_whole_vector() -> None:
    # Arrange
    layout = LayoutSpec("policy", 101, 3, staleness=0, learning_rate=0.05, beta1=0.8,
                        beta2=0.99, eps=1e-6)
    rng = np.random.default_rng(7)
    initial = rng.standard_normal(101).astype(np.float32)
    shards = []
    for i in range(3):
        start, length = layout.shard_range(i)
        shards.append(ShardState(layout, i, initial[start:start + length]))
    whole = torch.nn.Parameter(torch.tensor(initial))
    adam = torch.optim.Adam([whole], lr=0.05, betas=(0.8, 0.99), eps=1e-6)
    # Act
    for step in range(20):
        gradient = rng.standard_normal(101).astype(np.float32)
        for shard in shards:
            result = shard.push("r0", step, step, shard.start,
                                gradient[shard.start:shard.start + shard.length])
            assert result.applied and result.version == step + 1
        whole.grad = torch.tensor(gradient)
        adam.step()
    # Assert
    assert [s.length for s in shards] == [33, 34, 34]
    got = np.concatenate([s.pull(0, 0)[1] for s in shards])
    np.testing.assert_allclose(got, whole.detach().numpy(), atol=1e-6, rtol=0)


def test_the_reject_rule_accepts_staleness_up_to_tau_and_rejects_beyond() -> None:
    shard = make_shard(staleness=2, rule=StalenessRule.REJECT)
    for seq in range(3):
        shard.push("a", seq, shard.version, 0, grad())
    assert shard.version == 3
    # base 1 is exactly tau = 2 behind: accepted
    result = shard.push("b", 0, 1, 0, grad())
    assert (result.version, result.applied, result.staleness) == (4, True, 2)
    # base 1 is now 3 behind: rejected, nothing changes
    before = shard.pull(0, 0)[1]
    with pytest.raises(FailedPreconditionError, match=r"stale push: base_version 1 is 3 "
                       r"versions behind version 4 \(staleness bound 2\); re-pull"):
        shard.push("b", 1, 1, 0, grad())
    np.testing.assert_array_equal(shard.pull(0, 0)[1], before)
    stats = shard.stats()
    assert (stats.version, stats.pushes, stats.rejected_stale) == (4, 4, 1)
    # the rejected seq was not remembered: the same seq after a re-pull is accepted
    assert shard.push("b", 1, 4, 0, grad()).applied


def test_the_scale_rule_applies_a_push_50_versions_stale_at_lr_times_k_over_50() -> None:
    # Arrange: K = 4 replicas, tau = 2 (the reject rule's bound: not used by scale)
    shard = make_shard(staleness=2, replicas=4, rule=StalenessRule.SCALE)
    param = np.random.default_rng(0).standard_normal(10).astype(np.float32)
    reference = Adam(10, 0.01)
    fresh = []
    for seq in range(50):
        fresh.append(shard.push("a", seq, shard.version, 0, grad(seed=seq)))
        reference.step(param, grad(seed=seq))
    # Act
    stale = shard.push("b", 0, 0, 0, grad(seed=99))
    within_k = shard.push("c", 0, shard.version - 4, 0, grad(seed=98))
    # Assert: the stale one applied at 0.01 * 4 / 50, one exactly K behind at the full rate
    assert all(r.applied and r.lr_scale == 1.0 and r.staleness == 0 for r in fresh)
    assert (stale.applied, stale.version, stale.staleness, stale.lr_scale) == (True, 51, 50,
                                                                               4 / 50)
    reference.step(param, grad(seed=99), lr=0.01 * 4 / 50)
    assert (within_k.applied, within_k.staleness, within_k.lr_scale) == (True, 4, 1.0)
    reference.step(param, grad(seed=98), lr=0.01)
    np.testing.assert_array_equal(shard.pull(0, 0)[1], param)
    assert shard.stats().rejected_stale == 0 and shard.stats().pushes == 52


def test_a_scaled_push_is_counted_in_the_shard_metrics() -> None:
    shard, metrics = make_shard(replicas=1), ShardMetrics(0)
    for seq in range(3):
        metrics.record_push(shard.push("a", seq, shard.version, 0, grad()))
    metrics.record_push(shard.push("b", 0, 0, 0, grad()))  # 3 behind, K = 1: lr / 3
    metrics.record_push(shard.push("c", 0, 3, 0, grad()))  # 1 behind: the full rate
    assert metrics.registry.get_sample_value("nas_ps_pushes_scaled_total",
                                             {"shard": "0"}) == 1.0
    assert metrics.registry.get_sample_value("nas_ps_pushes_total", {"shard": "0"}) == 5.0


@pytest.mark.parametrize("rule", list(StalenessRule))
def test_base_version_ahead_of_the_shard_is_rejected(rule: StalenessRule) -> None:
    shard = make_shard(rule=rule)
    with pytest.raises(FailedPreconditionError, match=r"ahead of version 0.*re-pull"):
        shard.push("a", 0, 5, 0, grad())
    assert shard.stats().rejected_stale == 1 and shard.version == 0


def test_duplicate_push_is_applied_once() -> None:
    shard = make_shard()
    first = shard.push("a", 7, 0, 0, grad())
    values = shard.pull(0, 0)[1]
    again = shard.push("a", 7, 1, 0, grad(seed=9))
    older = shard.push("a", 3, 1, 0, grad(seed=9))
    assert (first.version, first.applied, first.duplicate) == (1, True, False)
    assert (again.version, again.applied, again.duplicate) == (1, False, True)
    assert older.duplicate
    np.testing.assert_array_equal(shard.pull(0, 0)[1], values)
    assert shard.stats().duplicates == 2 and shard.stats().pushes == 1
    assert shard.push("b", 7, 1, 0, grad()).applied  # another replica's seq 7 is new


def test_sync_averages_pushes_into_one_version_step() -> None:
    # Arrange
    shard = make_shard(UpdatePolicy.SYNC, sync_pushes=3)
    reference = make_shard(UpdatePolicy.ASYNC)
    grads = [grad(seed=s) for s in (1, 2, 3)]
    # Act
    results = [shard.push(f"r{i}", 0, 0, 0, g) for i, g in enumerate(grads)]
    mean = (np.sum(np.stack(grads).astype(np.float64), axis=0) / 3).astype(np.float32)
    reference.push("ref", 0, 0, 0, mean)
    # Assert
    assert [(r.version, r.applied) for r in results] == [(0, False), (0, False), (1, True)]
    np.testing.assert_allclose(shard.pull(0, 0)[1], reference.pull(0, 0)[1], atol=1e-6)
    with pytest.raises(FailedPreconditionError, match=r"not the current version 1.*re-pull"):
        shard.push("r0", 1, 0, 0, grad())
    assert shard.stats().rejected_stale == 1


@pytest.mark.parametrize(("start", "gradient", "field"), [
    (1, grad(), "gradient.start"),
    (0, grad(size=9), "gradient.length"),
    (0, np.full(10, np.nan, dtype=np.float32), "gradient.data: non-finite values"),
    (0, np.full(10, np.inf, dtype=np.float32), "gradient.data: non-finite values"),
])
def test_invalid_gradient_names_the_field(start: int, gradient: np.ndarray, field: str) -> None:
    shard = make_shard()
    with pytest.raises(InvalidArgumentError, match=field):
        shard.push("a", 0, 0, start, gradient)
    assert shard.version == 0 and shard.stats().pushes == 0


def test_pull_ranges() -> None:
    layout = LayoutSpec("policy", 10, 2)
    shard = ShardState(layout, 1, np.arange(5, dtype=np.float32))
    assert shard.pull(6, 2)[1].tolist() == [1.0, 2.0]
    assert shard.pull(0, 0)[1].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    for start, length in ((4, 2), (8, 3), (5, -1)):
        with pytest.raises(InvalidArgumentError, match=r"start|length"):
            shard.pull(start, length)


def test_wait_for_version_wakes_on_push() -> None:
    shard = make_shard()
    assert not shard.wait_for_version(1, timeout=0.05)
    timer = threading.Timer(0.1, lambda: shard.push("a", 0, 0, 0, grad()))
    timer.start()
    try:
        assert shard.wait_for_version(1, timeout=10)
    finally:
        timer.join()


@pytest.mark.parametrize("policy", [UpdatePolicy.ASYNC, UpdatePolicy.SYNC])
def test_snapshot_round_trip_continues_identically(policy: UpdatePolicy) -> None:
    # Arrange: some updates, a duplicate-table entry and (sync) a pending push
    shard = make_shard(policy, sync_pushes=2, rule=StalenessRule.REJECT, replicas=3)
    for seq in range(5):
        shard.push("a", seq, shard.version, 0, grad(seed=seq))
        shard.push("b", seq, shard.version, 0, grad(seed=seq + 10))
    shard.push("a", 5, shard.version, 0, grad(seed=42))
    # Act
    restored = ShardState.from_bytes(shard.to_bytes())
    # Assert: same state, same duplicate handling, same next update
    assert restored.layout == shard.layout and restored.stats() == shard.stats()
    np.testing.assert_array_equal(restored.pull(0, 0)[1], shard.pull(0, 0)[1])
    for state in (shard, restored):
        assert state.push("a", 5, state.version, 0, grad()).duplicate
        state.push("b", 99, state.version, 0, grad(seed=77))
    assert restored.stats() == shard.stats()
    np.testing.assert_array_equal(restored.pull(0, 0)[1], shard.pull(0, 0)[1])


def test_from_bytes_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a shard checkpoint"):
        ShardState.from_bytes(b"not a checkpoint")


def test_concurrent_pushes_are_each_applied_once() -> None:
    shard = make_shard(staleness=1000)

    def replica(name: str) -> None:
        for seq in range(25):
            shard.push(name, seq, shard.version, 0, grad(seed=seq))
            shard.push(name, seq, shard.version, 0, grad(seed=seq))  # a retry: duplicate

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    stats = shard.stats()
    assert (stats.version, stats.pushes, stats.duplicates) == (100, 100, 100)


def test_close_wakes_waiters_with_unavailable() -> None:
    shard = make_shard()
    errors: list[Exception] = []

    def wait() -> None:
        try:
            shard.wait_for_version(1, timeout=30)
        except UnavailableError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    shard.close()
    waiter.join(timeout=10)
    assert not waiter.is_alive() and errors
