"""The PPO controller (NASNet): the clipped objective, learning on a toy reward, and the same
paths REINFORCE runs on: the CLI, the search service, shards and replicas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from controller.policy.lstm import PolicyConfig
from controller.policy.ppo import PPOConfig, PPOLearner, clipped_surrogate
from controller.policy.reinforce import ReinforceConfig, ReinforceLearner, ScoredTrial
from controller.service.client import SearchClient
from controller.spaces import create_space
from controller.strategies.reinforce import ReinforceStrategy
from protos.errors import InvalidArgumentError
from protos.types import TrialResult, TrialStatus
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

ROOT = Path(__file__).resolve().parents[1]
BEST_OP = 3  # toy reward: 1 when the first NB201 edge takes op index 3, else 0


def _nas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


def test_clipped_surrogate_has_no_gradient_where_the_ratio_left_the_clip_range() -> None:
    # Arrange: ratios 1.1 (inside), 1.5 and 0.5 (outside), advantages chosen so that the
    # 1.5/+1 and 0.5/-1 trials are clipped, while 0.5/+1 keeps the smaller unclipped term.
    old = torch.zeros(4, dtype=torch.float64)
    ratios = torch.tensor([1.1, 1.5, 0.5, 0.5], dtype=torch.float64)
    new = ratios.log().requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    # Act
    loss = clipped_surrogate(new, old, adv, clip=0.2)
    loss.backward()
    # Assert: loss = -mean(1.1, 1.2, -0.8, 0.5); d/d(new_i) = -r_i * A_i / 4 where unclipped.
    assert float(loss.detach()) == pytest.approx(-(1.1 + 1.2 - 0.8 + 0.5) / 4)
    assert new.grad is not None
    assert new.grad.tolist() == pytest.approx([-1.1 / 4, 0.0, 0.0, -0.5 / 4])


def _toy_strategy(epochs: int = 4) -> ReinforceStrategy:
    return ReinforceStrategy(create_space("nb201"), seed=0, batch_size=20,
                             policy=PolicyConfig(layers=1, units=32),
                             learner=PPOConfig(learning_rate=0.02, entropy_weight=1e-5,
                                               epochs=epochs))


def _p_best(strategy: ReinforceStrategy) -> float:
    actions = torch.zeros(1, len(strategy.space.decisions), dtype=torch.long)
    actions[0, 0] = BEST_OP
    with torch.no_grad():
        return float(strategy.policy.log_prob(actions).log_probs[0, 0].exp())


@pytest.mark.usefixtures("one_thread")
def test_ppo_raises_the_probability_of_the_rewarded_action_on_a_bandit() -> None:
    # Arrange: a bandit on the first decision of the NB201 space (5 ops: 0.2 at the start).
    strategy = _toy_strategy()
    assert isinstance(strategy.learner, PPOLearner)
    before = _p_best(strategy)
    # Act: 10 batches of 20 architectures, 4 PPO epochs each.
    for _ in range(10):
        for trial in strategy.suggest(20):
            reward = 1.0 if trial.actions[0] == BEST_OP else 0.0
            strategy.report(trial.trial_id, TrialResult(trial.trial_id, TrialStatus.SUCCEEDED,
                                                        reward))
    # Assert
    assert strategy.learner.version == 10 * 4  # one applied gradient per epoch
    assert before == pytest.approx(0.2, abs=0.05)
    assert _p_best(strategy) > 0.6


def test_the_old_log_prob_is_the_one_recorded_at_sampling_and_is_required() -> None:
    # Arrange
    strategy = _toy_strategy(epochs=1)
    trial = strategy.suggest(1)[0]
    recorded = strategy._drawn[trial.trial_id][1]
    result = TrialResult(trial.trial_id, TrialStatus.SUCCEEDED, 0.5)
    # Act
    rescored = strategy.policy.log_prob(torch.tensor([trial.actions])).log_probs.sum().detach()
    # Assert: the recorded value is the sampled sequence's log-prob, and PPO refuses a trial
    # without one rather than recomputing it from parameters that may have moved since.
    assert recorded == pytest.approx(float(rescored), abs=1e-5)
    with pytest.raises(ValueError, match="log-prob"):
        strategy.learner.update([ScoredTrial(trial, result)])


def test_the_first_ppo_step_is_the_reinforce_gradient_where_nothing_moved() -> None:
    # Arrange: a batch sampled from the policy as it is now (every ratio is 1).
    strategy = _toy_strategy(epochs=1)
    batch = []
    for i, trial in enumerate(strategy.suggest(6)):
        result = TrialResult(trial.trial_id, TrialStatus.SUCCEEDED, 0.1 * i)
        batch.append(ScoredTrial(trial, result, strategy._drawn[trial.trial_id][1]))
    reinforce = ReinforceLearner(strategy.policy, ReinforceConfig(learning_rate=0.02))
    ppo = PPOLearner(strategy.policy, PPOConfig(learning_rate=0.02, entropy_weight=0.0))
    # Act
    ppo_grads, _ = ppo.gradient(batch)
    reinforce_grads, _ = reinforce.gradient(batch)
    # Assert: d(r * A) = r * A * d(log p), and r = 1: the clip only matters once p has moved.
    for a, b in zip(ppo_grads, reinforce_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in ppo_grads)


def test_nas_search_with_the_ppo_controller_on_nb201(tmp_path: Path,
                                                     nb201_table: dict[str, tuple[float, float]]
                                                     ) -> None:
    # Arrange: the 90th percentile of the table's rewards (CIFAR-10 12-epoch validation).
    rewards = sorted(r for r, _ in nb201_table.values())
    p90 = rewards[int(0.9 * len(rewards))]
    # Act
    proc = _nas("search", "--space", "nb201", "--controller", "ppo", "--budget", "60",
                "--seed", "0", "--quiet", "--out", str(tmp_path))
    # Assert: 60 trainings in batches of 20 give at least 2 updates of 4 epochs; 60 samples of
    # a policy no worse than uniform reach the table's top 10% (uniform: p = 1 - 0.9^60).
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 60 and doc["config"]["controller"] == "ppo"
    assert [p["update"] for p in doc["policy"]][:2] == [4, 8]
    assert doc["best"]["reward"] >= p90


@pytest.mark.parametrize(("flags", "field"), [
    (["--controller", "ppo", "--ppo-clip", "1.5"], "ppo_clip: must be in (0, 1)"),
    (["--controller", "ppo", "--ppo-epochs", "0"], "ppo_epochs: must be >= 1"),
    (["--ppo-epochs", "2"], "ppo_epochs: only the ppo controller"),
])
def test_bad_ppo_flags_exit_2_naming_the_flag(tmp_path: Path, flags: list[str],
                                              field: str) -> None:
    # Act
    proc = _nas("search", "--budget", "2", "--out", str(tmp_path), *flags)
    # Assert
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and field in proc.stderr, proc.stderr


def _ppo_spec(budget: int, **controller: float) -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="reinforce",
                         controller=sp.ControllerSpec(preset="ppo", **controller),
                         evaluation=sp.EvaluationSpec(evaluator="nb201"), budget=budget, seed=1)


def test_a_ppo_job_through_the_service_succeeds(client: SearchClient, nb201_csv: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))
    # Act
    job = client.wait(client.submit(_ppo_spec(40, children=10, ppo_epochs=2)), 120)
    # Assert
    assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 40
    assert job.spec.controller.preset == "ppo" and job.spec.controller.ppo_epochs == 2
    assert 0.5 < job.best_reward <= 1
    with pytest.raises(InvalidArgumentError, match=r"spec\.controller\.ppo_clip"):
        client.submit(_ppo_spec(10, ppo_clip=1.5))


def test_ppo_on_two_shards_and_two_replicas_pushes_one_gradient_per_epoch(
        tmp_path: Path, nb201_csv: Path) -> None:
    # Act
    proc = _nas("search", "--space", "nb201", "--controller", "ppo", "--budget", "40",
                "--children", "5", "--ppo-epochs", "2", "--shards", "2", "--replicas", "2",
                "--nb201-csv", str(nb201_csv), "--quiet", "--out", str(tmp_path))
    # Assert: every update of 5 children is 2 pushes, and the shards applied all of them.
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 40
    reports = doc["layout"]["replica_reports"].values()
    pushes = [r["pushes"] for r in reports]
    assert len(pushes) == 2 and all(p > 0 and p % 2 == 0 for p in pushes)
    assert doc["layout"]["shard_versions"] == [sum(pushes)] * 2
