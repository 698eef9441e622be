"""paramserver.adam.Adam (numpy, what every shard runs) against torch.optim.Adam, the optimizer
the shards ran before and the one the in-process (unsharded) updater still runs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from paramserver import snapshot
from paramserver.adam import Adam
from paramserver.shard import ShardState
from protos.types import LayoutSpec

SIZE = 4099  # not a multiple of any vector width: torch's scalar tail runs too


def _gradients(rng: np.random.Generator, steps: int) -> list[np.ndarray]:
    """Gradients of mixed scales: per value 1e-6 to 1e2, whole steps 100x larger or smaller,
    and some exact zeros."""
    scales = 10.0 ** rng.integers(-6, 3, size=SIZE)
    out = []
    for step in range(steps):
        g = rng.standard_normal(SIZE) * scales * (10.0 ** rng.choice([-2, 0, 0, 0, 2]))
        if step % 7 == 0:
            g[rng.integers(0, SIZE, 50)] = 0.0
        out.append(g.astype(np.float32))
    return out


def _run_both(lr: float, betas: tuple[float, float], eps: float, per_step_lr: bool,
              steps: int = 2000, seed: int = 0) -> tuple[np.ndarray, Adam, torch.optim.Adam,
                                                         torch.nn.Parameter]:
    rng = np.random.default_rng(seed)
    initial = rng.uniform(-0.1, 0.1, SIZE).astype(np.float32)  # the controllers' init range
    theirs = torch.nn.Parameter(torch.tensor(initial))
    torch_adam = torch.optim.Adam([theirs], lr=lr, betas=betas, eps=eps, foreach=False)
    ours, adam = initial.copy(), Adam(SIZE, lr, betas[0], betas[1], eps)
    for g in _gradients(rng, steps):
        step_lr = lr * float(rng.uniform(0.01, 1.0)) if per_step_lr else None
        if step_lr is not None:
            torch_adam.param_groups[0]["lr"] = step_lr
        theirs.grad = torch.from_numpy(g.copy())
        torch_adam.step()
        adam.step(ours, g, step_lr)
    return ours, adam, torch_adam, theirs


@pytest.mark.parametrize("per_step_lr", [False, True], ids=["fixed-lr", "per-step-lr"])
@pytest.mark.parametrize(("lr", "betas", "eps"), [
    (1e-3, (0.9, 0.999), 1e-8),   # torch's defaults
    (3.5e-4, (0.0, 0.999), 1e-8),  # Zoph & Le's controller: no first moment
    (1e-2, (0.5, 0.9), 1e-6),     # lerp's other branch (1 - beta1 >= 0.5)
    (5e-3, (0.8, 0.99), 1e-3),
])
def test_numpy_adam_equals_torch_adam_over_2000_steps(lr: float, betas: tuple[float, float],
                                                       eps: float, per_step_lr: bool) -> None:
    # Act
    ours, adam, torch_adam, theirs = _run_both(lr, betas, eps, per_step_lr)
    # Assert
    assert np.abs(ours - theirs.detach().numpy()).max() <= 1e-6
    state = torch_adam.state[theirs]
    saved = adam.state()
    assert saved is not None
    step, exp_avg, exp_avg_sq = saved
    assert step == float(state["step"]) == 2000.0
    np.testing.assert_allclose(exp_avg, state["exp_avg"].numpy(), rtol=1e-6, atol=0)
    np.testing.assert_allclose(exp_avg_sq, state["exp_avg_sq"].numpy(), rtol=1e-6, atol=0)


def test_a_large_learning_rate_differs_by_a_few_ulps_of_the_parameters() -> None:
    # at lr 0.1 the parameters wander to ~10: each rounding of p + update is then 1e-6 wide,
    # and torch's float32 sqrt (MKL's) is an ulp off now and then; the two stay that close
    ours, _, _, theirs = _run_both(0.1, (0.9, 0.999), 1e-8, per_step_lr=True)
    size = np.abs(ours).max()
    assert size > 1.0
    assert np.abs(ours - theirs.detach().numpy()).max() <= 16 * np.spacing(np.float32(size))


def test_no_state_before_the_first_step_and_a_state_loads_back() -> None:
    adam = Adam(3)
    assert adam.state() is None
    param = np.zeros(3, dtype=np.float32)
    adam.step(param, np.ones(3, dtype=np.float32))
    saved = adam.state()
    assert saved is not None and saved[0] == 1.0
    copy = Adam(3)
    copy.load(*saved)
    other = param.copy()
    adam.step(param, np.full(3, 2.0, dtype=np.float32))
    copy.step(other, np.full(3, 2.0, dtype=np.float32))
    np.testing.assert_array_equal(param, other)
    with pytest.raises(ValueError, match="moments of 3 values"):
        copy.load(1.0, np.zeros(4, dtype=np.float32), np.zeros(4, dtype=np.float32))


def _as_written_before(blob: bytes) -> bytes:
    """The same checkpoint as a shard wrote it before layouts had a staleness rule and
    replicas (and before shards ran numpy Adam)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays["header"].tobytes().decode())
    del header["layout"]["staleness_rule"], header["layout"]["replicas"]
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **arrays)
    return out.getvalue()


def test_a_checkpoint_of_torch_adam_state_restores_and_continues_like_torch() -> None:
    # Arrange: 30 steps of torch's Adam, saved as the torch-era shard saved them
    rng = np.random.default_rng(3)
    layout = LayoutSpec("policy", SIZE, 1, learning_rate=1e-3)
    initial = rng.uniform(-0.1, 0.1, SIZE).astype(np.float32)
    theirs = torch.nn.Parameter(torch.tensor(initial))
    torch_adam = torch.optim.Adam([theirs], lr=1e-3, foreach=False)
    grads = _gradients(rng, 60)
    for g in grads[:30]:
        theirs.grad = torch.from_numpy(g.copy())
        torch_adam.step()
    state = torch_adam.state[theirs]
    blob = snapshot.encode(snapshot.ShardSnapshot(
        layout=layout, shard=0, params=theirs.detach().numpy().copy(),
        adam=(float(state["step"]), state["exp_avg"].numpy().copy(),
              state["exp_avg_sq"].numpy().copy()),
        version=30, counters=(30, 0, 0), last_seq={"r": 29},
        pending_sum=np.zeros(SIZE), pending_count=0))
    # Act
    shard = ShardState.from_bytes(_as_written_before(blob))
    for seq, g in enumerate(grads[30:], start=30):
        assert shard.push("r", seq, shard.version, 0, g).applied
        theirs.grad = torch.from_numpy(g.copy())
        torch_adam.step()
    # Assert
    assert shard.layout == layout and shard.version == 60
    assert np.abs(shard.pull(0, 0)[1] - theirs.detach().numpy()).max() <= 1e-6
