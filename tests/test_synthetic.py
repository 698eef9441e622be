"""The synthetic evaluator: a seeded reward landscape with a planted optimum over every space,
through the evaluator, the ``nas search`` CLI and the search service."""

from __future__ import annotations

import itertools
import json
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller.config import build_config
from controller.evaluators.synthetic import TEST_OFFSET, SyntheticEvaluator
from controller.factory import build_space
from controller.search import run_search
from controller.service.client import SearchClient
from controller.spaces import SPACE_NAMES, SearchSpace, create_space
from nas.wiring import build_evaluator, build_strategy
from protos.errors import InvalidArgumentError
from protos.types import SearchSpaceSpec
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

ROOT = Path(__file__).resolve().parents[1]
METRICS = {"params", "flops", "latency_ms", "train_seconds"}


def nas(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``nas`` CLI of this checkout in a subprocess."""
    return subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def random_rewards(evaluator: SyntheticEvaluator, space: SearchSpace, n: int,
                   seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [evaluator.evaluate(space.sample_random(rng)).reward for _ in range(n)]


def test_one_landscape_seed_gives_the_same_rewards_and_another_seed_another_landscape() -> None:
    # Arrange
    space = create_space("nasnet")
    # Act
    first = random_rewards(SyntheticEvaluator(space, landscape_seed=0), space, 50)
    again = random_rewards(SyntheticEvaluator(create_space("nasnet"), landscape_seed=0), space, 50)
    other = SyntheticEvaluator(space, landscape_seed=1)
    # Assert
    assert first == again
    assert sum(a != b for a, b in zip(first, random_rewards(other, space, 50), strict=True)) == 50
    assert other.optimum().arch != SyntheticEvaluator(space, 0).optimum().arch


def test_the_planted_optimum_is_the_best_of_all_15625_nb201_cells() -> None:
    # Arrange
    space = create_space("nb201")
    evaluator = SyntheticEvaluator(space, landscape_seed=4)
    # Act
    rewards = {actions: evaluator.evaluate(space.decode(actions)).reward
               for actions in itertools.product(range(5), repeat=6)}
    # Assert
    best = max(rewards, key=rewards.__getitem__)
    assert space.decode(best) == evaluator.optimum().arch
    assert rewards[best] == evaluator.optimum().reward == pytest.approx(0.95)
    assert sorted(rewards.values())[-2] < rewards[best]  # the only one
    assert all(0 < r < 1 for r in rewards.values())
    assert statistics.fmean(rewards.values()) < 0.75  # random cells far below it


@pytest.mark.parametrize("name", ["nasnet", "macro", "enas-micro", "rnn-cell"])
def test_random_architectures_stay_well_below_the_optimum(name: str) -> None:
    # Arrange
    space = create_space(name)
    evaluator = SyntheticEvaluator(space, landscape_seed=2)
    # Act
    rewards = sorted(random_rewards(evaluator, space, 2000, seed=9))
    # Assert
    assert all(0 < r < evaluator.optimum().reward for r in rewards)
    assert 0.65 < statistics.fmean(rewards) < 0.75
    assert rewards[-1] < 0.93 and rewards[int(0.99 * len(rewards))] - rewards[20] > 0.15


@pytest.mark.parametrize("name", SPACE_NAMES)
def test_every_space_scores_like_a_trained_child(name: str) -> None:
    # Arrange
    space = create_space(name)
    evaluator = SyntheticEvaluator(space, landscape_seed=1)
    archs = [space.sample_random(random.Random(s)) for s in range(20)]
    # Act
    results = [evaluator.evaluate(arch) for arch in archs]
    best = evaluator.optimum()
    info = json.loads(json.dumps(evaluator.describe()))
    # Assert
    for arch, result in zip(archs, results, strict=True):
        assert 0 < result.reward < best.reward and set(result.metrics) == METRICS
        assert result.metrics["params"] > 0 and result.metrics["flops"] > 0
        accuracy = evaluator.test_accuracy(arch)
        assert accuracy is not None and abs(accuracy - result.reward) <= TEST_OFFSET
    assert evaluator.evaluate(space.from_string(best.arch_string)).reward == best.reward
    assert info["optimum"] == {"arch": best.arch_string, "reward": best.reward,
                               "test_accuracy": evaluator.test_accuracy(best.arch)}
    assert info["dataset"] == "synthetic" and info["landscape_seed"] == 1
    assert info["random_reward"]["max"] < best.reward


def test_costs_on_nb201_are_what_the_nb201_evaluator_reports() -> None:
    # Arrange: the benchmark's network, built and counted (CIFAR-10 size)
    from worker.measure import NB201Costs

    space = create_space("nb201")
    counted = NB201Costs("cifar10")
    evaluator = SyntheticEvaluator(space)
    cells = [space.sample_random(random.Random(s)) for s in range(5)]
    # Act
    modelled = [evaluator.evaluate(arch).metrics for arch in cells]
    # Assert
    for arch, metrics in zip(cells, modelled, strict=True):
        assert {k: metrics[k] for k in ("params", "flops")} == counted(arch)


def test_the_cache_key_names_the_evaluator_the_space_and_the_landscape() -> None:
    # Arrange
    def key(space: str, seed: int, blocks: int | None = None) -> str:
        return SyntheticEvaluator(create_space(SearchSpaceSpec(space, blocks)), seed).cache_key
    # Act
    keys = [key("nasnet", 0), key("nasnet", 1), key("nasnet", 0, 4), key("enas-micro", 0)]
    # Assert
    assert keys[0] == key("nasnet", 0, 5) == "synthetic:nasnet:blocks=5:landscape0"
    assert len(set(keys)) == len(keys)


def test_simulate_seconds_makes_each_evaluation_take_that_long() -> None:
    # Arrange
    space = create_space("macro")
    evaluator = SyntheticEvaluator(space, simulate_seconds=0.05)
    arch = space.sample_random(random.Random(0))
    # Act
    start = time.perf_counter()
    result = evaluator.evaluate(arch)
    elapsed = time.perf_counter() - start
    # Assert
    assert elapsed >= 0.05 and result.metrics["train_seconds"] == 0.05
    assert result.reward == SyntheticEvaluator(space).evaluate(arch).reward


def test_reinforce_learns_on_the_landscape(one_thread: None) -> None:
    # Arrange: m = 8 children per update (the default m = 1 spends seconds per update here)
    cfg = build_config({"evaluator": "synthetic", "space": "nasnet", "strategy": "reinforce",
                        "children": 8, "budget": 300, "seed": 0})
    space = build_space(cfg)
    # Act
    outcome = run_search(space, build_strategy(space, cfg), build_evaluator(cfg), cfg.budget)
    # Assert
    rewards = [h.reward for h in outcome.history if not h.cached]
    assert len(rewards) == 300
    assert statistics.fmean(rewards[-100:]) > statistics.fmean(rewards[:100]) + 0.03


def test_nas_search_writes_the_optimum_into_result_json(tmp_path: Path) -> None:
    # Act
    proc = nas("search", "--evaluator", "synthetic", "--space", "nasnet", "--budget", "50",
               "--landscape-seed", "5", "--out", str(tmp_path), "--quiet")
    # Assert
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    optimum = SyntheticEvaluator(create_space("nasnet"), landscape_seed=5).optimum()
    assert doc["evaluator"]["optimum"]["arch"] == optimum.arch_string
    assert doc["evaluator"]["optimum"]["reward"] == optimum.reward
    assert doc["trainings"] == 50 and doc["config"]["landscape_seed"] == 5
    assert doc["best"]["reward"] < optimum.reward and doc["best"]["test_accuracy"] is not None
    assert all(set(h["metrics"]) == METRICS for h in doc["history"])
    assert "(synthetic:synthetic)" in proc.stdout


def test_the_readme_example_runs(tmp_path: Path) -> None:
    # Arrange: the command of the README's synthetic section, a smaller budget
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### A benchmark instrument: `--evaluator synthetic`")[1]
    command = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert command is not None
    args = shlex.split(command.group(1).replace("\\\n", " "))
    assert args[:2] == ["nas", "search"] and "synthetic" in args
    # Act
    proc = nas(*args[1:], "--budget", "60", "--out", str(tmp_path), "--quiet")
    # Assert
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 60 and doc["evaluator"]["optimum"]["reward"] > doc["best"]["reward"]


@pytest.mark.parametrize(("args", "message"), [
    (["--landscape-seed", "-1"], "landscape_seed: must be >= 0, got -1"),
    (["--dataset", "cifar10"], "dataset: 'cifar10' is not one of synthetic"),
    (["--workers", "2"], "workers: Ray workers train children (--evaluator train); the "
                         "synthetic evaluator trains nothing"),
    (["--evaluator", "train", "--simulate-seconds", "1"],
     "simulate_seconds: only the nb201 and synthetic evaluators simulate a training time"),
])
def test_bad_synthetic_settings_exit_2_naming_the_setting(args: list[str], message: str,
                                                           tmp_path: Path) -> None:
    # Act
    proc = nas("search", "--evaluator", "synthetic", "--space", "nasnet", *args,
               "--out", str(tmp_path), "--quiet")
    # Assert
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def synthetic_spec(**evaluation: Any) -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nasnet"), strategy="reinforce",
                         evaluation=sp.EvaluationSpec(evaluator="synthetic", **evaluation),
                         budget=40, seed=1)


def test_a_synthetic_job_runs_to_success_through_the_service(client: SearchClient) -> None:
    # Act
    job_id = client.submit(synthetic_spec(landscape_seed=3))
    job = client.wait(job_id, 120.0)
    # Assert
    optimum = SyntheticEvaluator(create_space("nasnet"), landscape_seed=3).optimum()
    assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 40
    assert 0.5 < job.best_reward < optimum.reward and job.best_arch.startswith("normal:")
    assert job.spec.evaluation.evaluator == "synthetic"
    assert job.spec.evaluation.landscape_seed == 3


@pytest.mark.parametrize(("evaluation", "field"), [
    ({"landscape_seed": -1}, "spec.evaluation.landscape_seed: must be >= 0"),
    ({"dataset": "cifar10"}, "spec.evaluation.dataset: 'cifar10' is not one of synthetic"),
])
def test_a_bad_synthetic_spec_is_invalid_argument(client: SearchClient,
                                                  evaluation: dict[str, Any],
                                                  field: str) -> None:
    # Act / Assert
    with pytest.raises(InvalidArgumentError, match=re.escape(field)):
        client.submit(synthetic_spec(**evaluation))
    assert client.list() == []
