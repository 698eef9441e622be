"""ENAS: weight-sharing supernets for enas-micro, nasnet, macro and nb201; shared-weight training
on real Fashion-MNIST; the controller learning on shared-weight rewards; deriving and training
the child from scratch through the CLI and the search service."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from controller.config import build_config
from controller.factory import build_space
from controller.service.client import SearchClient
from controller.spaces import create_space
from controller.strategies.enas import EnasStrategy
from nas.wiring import build_strategy, build_supernet
from protos.errors import InvalidArgumentError
from protos.types import SearchSpaceSpec
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from protos.v1 import worker_pb2 as wk
from worker.builders import ModelSpec, build_model
from worker.datasets import load_dataset
from worker.supernet import NB201Supernet
from worker.weight_sharing import SharedRecipe, SharedTrainer

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(in_channels=1, num_classes=10, cells=1, filters=4)
SPACES = [SearchSpaceSpec("enas-micro", num_blocks=3), SearchSpaceSpec("nasnet", num_blocks=2),
          SearchSpaceSpec("macro", num_layers=3, predict_strides=True), SearchSpaceSpec("nb201")]


def _supernet(spec: SearchSpaceSpec):  # type: ignore[no-untyped-def]
    space = create_space(spec)
    torch.manual_seed(0)
    return space, build_supernet(space, SPEC)


@pytest.mark.parametrize("spec", SPACES, ids=lambda s: s.name)
def test_every_child_of_the_space_is_a_path_through_one_supernet(spec: SearchSpaceSpec,
                                                                 one_thread: None) -> None:
    # Arrange
    space, net = _supernet(spec)
    rng = random.Random(0)
    images = torch.randn(4, 1, 28, 28)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(6):
        arch = space.sample_random(rng)
        # Act
        logits = net(images, arch)
        # Assert: logits for every child, and no child adds weights of its own
        assert logits.shape == (4, 10) and torch.isfinite(logits).all()
        assert 0 < net.path_parameters(arch) < sum(p.numel() for p in net.parameters())
    assert net.state_dict().keys() == before.keys()


@pytest.mark.parametrize("spec", SPACES, ids=lambda s: s.name)
def test_a_childs_loss_trains_only_the_weights_on_its_path(spec: SearchSpaceSpec,
                                                           one_thread: None) -> None:
    # Arrange
    space, net = _supernet(spec)
    arch = space.sample_random(random.Random(1))
    # Act
    torch.nn.functional.cross_entropy(net(torch.randn(4, 1, 28, 28), arch),
                                      torch.arange(4)).backward()
    # Assert: the weights with a gradient are exactly the child's (sliced tensors count the
    # values the child reads: those have a gradient, the others of the tensor stay at zero)
    touched = sum(int((p.grad != 0).sum()) for p in net.parameters() if p.grad is not None)
    assert touched < sum(p.numel() for p in net.parameters())  # the others' stay put
    assert 0.9 * net.path_parameters(arch) <= touched <= net.path_parameters(arch)


def test_macro_paths_are_the_size_of_the_child_they_stand_for() -> None:
    # Arrange: Zoph & Le's layers, each cut from the shared 7x7x64 kernel of its layer
    space, net = _supernet(SearchSpaceSpec("macro", num_layers=4, predict_strides=True))
    rng = random.Random(2)
    for _ in range(5):
        arch = space.sample_random(rng)
        child = build_model(arch, SPEC)
        # the standalone child also has a BatchNorm scale and shift per output channel
        affine = sum(2 * int(n.attrs["filters"]) for n in arch.nodes)
        # Assert
        assert net.path_parameters(arch) == child.num_params() - affine


def test_nb201_edges_share_one_module_per_op_across_children() -> None:
    # Arrange: two cells that share the op of edge 0 -> 1 and differ on node 2
    space, net = _supernet(SearchSpaceSpec("nb201"))
    a = space.from_string("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|"
                          "skip_connect~2|")
    b = space.from_string("|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|none~1|"
                          "skip_connect~2|")
    assert isinstance(net, NB201Supernet)
    conv = net.layers[0].edges["1<-0"]["nor_conv_3x3"]  # type: ignore[index]
    weight = conv[1].weight
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    images = torch.randn(8, 1, 28, 28)
    # Act: one step on child a
    before = weight.detach().clone()
    torch.nn.functional.cross_entropy(net(images, a), torch.arange(8) % 10).backward()
    optimizer.step()
    # Assert: child b reads the weight child a just trained
    assert not torch.equal(before, weight)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(images, b), torch.arange(8) % 10).backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0


def test_shared_weights_learn_fashion_mnist(fashion_mnist_installed: Path,
                                            one_thread: None) -> None:
    # Arrange: the NB201 supernet, a uniformly sampled cell per minibatch
    splits = load_dataset("fashion-mnist", seed=0, train_subset=2048, val_subset=512)
    space = create_space(SearchSpaceSpec("nb201"))
    torch.manual_seed(0)
    net = build_supernet(space, ModelSpec(in_channels=1, num_classes=10, cells=1, filters=8))
    trainer = SharedTrainer(net, splits, SharedRecipe(epochs=3, batch_size=64,
                                                      learning_rate=0.1, seed=0, device="cpu"))
    rng = random.Random(0)
    good = space.from_string("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+"
                             "|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
    # Act
    reports = [trainer.train_epoch(lambda: space.sample_random(rng)) for _ in range(3)]
    # Assert: the loss falls and a conv cell scores far above chance (10 classes), though
    # each edge's op trained on only a fifth of the 96 minibatches
    assert reports[-1].loss < reports[0].loss - 0.2
    assert trainer.score_all(good) > 0.3
    assert trainer.step == 3 * 32 and trainer.seconds > 0


def _tiny_enas(**extra: object) -> EnasStrategy:
    cfg = build_config({"strategy": "enas", "space": "enas-micro", "num_blocks": 2,
                        "evaluator": "train", "train_subset": 256, "val_subset": 128,
                        "filters": 4, "cells": 1, "enas_epochs": 2, "controller_steps": 5,
                        "derive_samples": 6, "device": "cpu", **extra})
    strategy = build_strategy(build_space(cfg), cfg)
    assert isinstance(strategy, EnasStrategy)
    return strategy


def test_enas_alternates_shared_training_with_controller_steps_then_derives(
        fashion_mnist_installed: Path, one_thread: None) -> None:
    # Arrange
    enas = _tiny_enas()
    epochs: list[dict[str, float]] = []
    # Act
    report = enas.search_supernet(on_epoch=epochs.append)
    # Assert: 2 passes, each followed by 5 controller updates (ENAS's m=1), then the ranking
    assert [e["enas_epoch"] for e in epochs] == [1.0, 2.0] and report.epochs == epochs
    assert enas.controller.learner.version == 2 * 5
    assert all(0 <= e["controller_reward"] <= 1 and e["shared_loss"] > 0 for e in epochs)
    scores = [d.score for d in report.derived]
    assert scores == sorted(scores, reverse=True) and 1 <= len(scores) <= 6
    assert len({d.arch for d in report.derived}) == len(scores)
    assert report.seconds > 0 and report.device_hours > 0
    # the derived children come first, best-scored first, then fresh samples of the policy
    trials = enas.suggest(len(scores) + 1)
    assert [enas.space.to_string(t.architecture) for t in trials[:-1]] == \
        [d.arch for d in report.derived]
    assert enas.search_supernet() is report  # the phase runs once


def test_a_stopped_supernet_phase_ends_after_the_current_epoch(
        fashion_mnist_installed: Path, one_thread: None) -> None:
    enas = _tiny_enas(enas_epochs=5)
    epochs: list[dict[str, float]] = []
    report = enas.search_supernet(stop=lambda: len(epochs) >= 1, on_epoch=epochs.append)
    assert report.stopped and len(report.epochs) == 1 and report.derived


def _run_cli(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nas", "search", "--strategy", "enas",
         "--evaluator", "train", "--train-subset", "256", "--val-subset", "128",
         "--filters", "4", "--cells", "1", "--enas-epochs", "2", "--controller-steps", "3",
         "--derive-samples", "4", "--quiet", "--out", str(tmp_path), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"})


# (enas-micro's CLI run is tests/test_bench_enas.py's; the service test below runs it too)
@pytest.mark.parametrize("space_flags", [["--space", "macro", "--num-layers", "2"]],
                         ids=["macro"])
def test_nas_search_enas_derives_and_trains_the_best_child_from_scratch(
        tmp_path: Path, fashion_mnist_installed: Path, space_flags: list[str]) -> None:
    # Act: budget 1, ENAS's protocol: the single best-scored derived child trains from scratch
    proc = _run_cli(tmp_path, *space_flags, "--budget", "1")
    # Assert
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    enas = doc["enas"]
    assert [e["enas_epoch"] for e in enas["epochs"]] == [1.0, 2.0]
    assert enas["cpu_hours"] > 0 and enas["device"] == "cpu" and enas["search_seconds"] > 0
    assert doc["trainings"] == 1 and doc["best"]["arch"] == enas["derived"][0]["arch"]
    assert 0 < doc["best"]["reward"] <= 1 and doc["best"]["test_accuracy"] is not None
    assert doc["config"]["controller"] == "enas"  # ENAS's own controller by default
    assert len(doc["policy"]) == 2  # one policy note per supernet epoch
    assert "search cost:" in proc.stdout and "cpu-hours" in proc.stdout


@pytest.mark.parametrize(("flags", "field"), [
    (["--evaluator", "nb201"], "evaluator: --strategy enas trains a supernet"),
    (["--space", "rnn-cell", "--dataset", "text"], "space: --strategy enas shares weights on"),
    (["--derive-samples", "-1"], "derive_samples: must be >= 1"),
])
def test_bad_enas_settings_exit_2_naming_the_field(flags: list[str], field: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "nas", "search", "--strategy", "enas",
                           "--evaluator", "train", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and field in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _enas_spec(epochs: int = 2) -> sp.SearchSpec:
    return sp.SearchSpec(
        space=pb.SearchSpaceSpec(name="enas-micro", num_blocks=2), strategy="enas", budget=2,
        evaluation=sp.EvaluationSpec(evaluator="train", dataset="fashion-mnist",
                                     train_subset=256, val_subset=128,
                                     model=wk.ChildSize(cells=1, filters=4),
                                     recipe=wk.TrainingRecipe(epochs=1, batch_size=64,
                                                              learning_rate=0.1,
                                                              reward="last", device="cpu")),
        strategy_options=sp.StrategyOptions(enas_epochs=epochs, controller_steps=3,
                                            derive_samples=4))


def test_an_enas_job_runs_through_the_service(client: SearchClient,
                                              fashion_mnist_installed: Path,
                                              one_thread: None) -> None:
    # Act
    job = client.wait(client.submit(_enas_spec()), 240.0)
    # Assert: the supernet phase, then the two best-scored children trained from scratch
    assert job.state == sp.JOB_STATE_SUCCEEDED, job.reason
    assert job.trainings == 2 and 0 < job.best_reward <= 1
    assert job.spec.strategy_options.enas_epochs == 2
    assert len(list(client.trials(job.job_id))) == 2
    # a watcher saw each supernet epoch as a policy event before the trainings
    kinds = [e.WhichOneof("kind") for e in client.watch(job.job_id)]
    assert kinds.count("policy") == 2
    assert kinds.index("policy") < kinds.index("trial_started")
    create_space(SearchSpaceSpec("enas-micro", num_blocks=2)).from_string(job.best_arch)
    with pytest.raises(InvalidArgumentError,
                       match=r"spec\.strategy_options\.enas_epochs: must be >= 1"):
        client.submit(_enas_spec(epochs=-1))
