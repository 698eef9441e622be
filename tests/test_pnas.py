"""PNAS: block expansion, the surrogate ensemble, Kendall tau, and whole searches on the NB201
table through the CLI and the search service."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from controller.evaluators.nb201 import NB201Evaluator
from controller.search import run_search
from controller.service.client import SearchClient
from controller.spaces import create_space
from controller.strategies.pnas import PNASStrategy
from controller.strategies.pnas_layouts import PNAS_OPS
from controller.strategies.surrogate import SurrogateEnsemble, kendall_tau
from protos.errors import InvalidArgumentError
from protos.types import SearchSpaceSpec, TrialResult, TrialStatus
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from worker.builders import ModelSpec, build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


def test_expansion_gives_exactly_the_cells_one_block_larger() -> None:
    # Arrange: the 1-block cell nor_conv_3x3(x); node 2 has 2 incoming edges of 5 ops each
    space = create_space("nb201")
    pnas = PNASStrategy(space, beam=4, surrogate="mlp")
    parent = ((3,),)
    # Act
    bigger = pnas.expand([parent])
    # Assert: every child keeps the parent's block and adds node 2; node 3 still copies node 2
    assert all(len(c) == 2 and c[0] == parent[0] and len(c[1]) == 2 for c in bigger)
    arch = space.to_string(space.decode(pnas.cell_actions(bigger[0])))
    assert arch.startswith("|nor_conv_3x3~0|+") and arch.endswith("|none~0|none~1|skip_connect~2|")
    # ... and they are the 25 ways to decide node 2, one per isomorphism class
    every = [space.canonical_hash(space.decode(pnas.cell_actions((parent[0], (a, b)))))
             for a, b in itertools.product(range(5), repeat=2)]
    got = [space.canonical_hash(space.decode(pnas.cell_actions(c))) for c in bigger]
    assert len(got) == len(set(got)) and set(got) == set(every)
    # the 1-block cells are op(x): five of them, none trained twice
    assert sorted(space.to_string(t.architecture) for t in pnas.suggest(5))[0] == \
        "|avg_pool_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|"


@pytest.mark.parametrize("kind", ["lstm", "mlp"])
def test_the_surrogate_ensemble_ranks_held_out_cells(kind: str, one_thread: None) -> None:
    # Arrange: a reward that is the mean of per-token values, cells of 1..6 tokens (NB201's
    # 6 edges x 5 ops would be 30 tokens; 20 keep 100 cells informative)
    rng = random.Random(1)
    value = [rng.gauss(0, 1) for _ in range(21)]

    def cell() -> list[int]:
        return [rng.randint(1, 20) for _ in range(rng.randint(1, 6))]

    train, held_out = [cell() for _ in range(100)], [cell() for _ in range(40)]

    def reward(c: list[int]) -> float:
        return sum(value[t] for t in c) / len(c)

    surrogate = SurrogateEnsemble(20, kind, seed=0)
    # Act
    surrogate.fit(train, [reward(c) for c in train])
    predicted = surrogate.predict(held_out)
    # Assert: 5 members, each trained on 4/5 of the cells, rank unseen cells well
    assert len(surrogate.models) == 5
    assert kendall_tau(predicted, [reward(c) for c in held_out]) > 0.5


def test_kendall_tau_on_hand_examples() -> None:
    # 7 concordant, 3 discordant pairs of 10
    assert kendall_tau([1, 2, 3, 4, 5], [3, 1, 2, 5, 4]) == pytest.approx(0.4)
    # tau-b with ties (scipy.stats.kendalltau's default): 4 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError, match="length"):
        kendall_tau([1, 2], [1])


def test_progressive_steps_train_the_surrogates_top_k(nb201_csv: Path, one_thread: None
                                                      ) -> None:
    # Arrange
    space = create_space("nb201")
    pnas = PNASStrategy(space, beam=3, surrogate="mlp", seed=0)
    # Act: 5 one-block cells, then 3 + 3; then the next-ranked 3-block cells
    outcome = run_search(space, pnas, NB201Evaluator("cifar10", nb201_csv), 14,
                         report_test=False)
    # Assert
    assert [(s.blocks, s.trained) for s in pnas.steps] == [(1, 5), (2, 3), (3, 3)]
    assert pnas.steps[1].candidates > 3 and pnas.steps[2].candidates > 3
    for step in pnas.steps[1:]:
        assert step.predicted == sorted(step.predicted, reverse=True)  # the top of the ranking
        assert step.kendall_tau is not None and -1 <= step.kendall_tau <= 1
    assert outcome.trainings == 14 and len(pnas.data) == 14
    assert pnas.steps[2].best_reward is not None and pnas.steps[0].best_reward is not None
    assert pnas.stats()["policy_version"] == 3.0 and pnas.stats()["pnas_blocks"] == 3.0
    # a report of a trial it never issued is refused
    with pytest.raises(KeyError):
        pnas.report("nope", TrialResult("nope", TrialStatus.SUCCEEDED, 0.5))


def test_nas_search_pnas_writes_each_steps_kendall_tau(tmp_path: Path) -> None:
    # Act
    proc = subprocess.run(
        [sys.executable, "-m", "nas", "search", "--strategy", "pnas", "--beam", "3",
         "--surrogate", "mlp", "--budget", "11", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})  # tiny surrogates: threads only contend
    # Assert
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 11 and doc["config"]["beam"] == 3
    assert [(s["blocks"], s["trained"]) for s in doc["pnas"]] == [(1, 5), (2, 3), (3, 3)]
    assert doc["pnas"][0]["kendall_tau"] is None
    assert all(-1 <= s["kendall_tau"] <= 1 for s in doc["pnas"][1:])
    assert "pnas 3 block(s): trained 3 of" in proc.stdout and "Kendall tau" in proc.stdout


def test_nas_search_pnas_trains_real_pnas_cells(tmp_path: Path,
                                                fashion_mnist_installed: Path) -> None:
    # Act: two children of nasnet restricted to PNAS's ops, trained on a Fashion-MNIST slice
    proc = subprocess.run(
        [sys.executable, "-m", "nas", "search", "--space", "nasnet", "--num-blocks", "2",
         "--strategy", "pnas", "--evaluator", "train", "--budget", "2", "--train-subset", "256",
         "--val-subset", "128", "--quiet", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    # Assert: 1-block cells (block 1 passes block 0 on), the same cell twice; step 1 unfinished
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 2 and doc["pnas"] == []
    for entry in doc["history"]:
        normal, reduction = entry["arch"].split(";")
        assert normal.endswith(",identity~2+identity~2") and normal[6:] == reduction[9:]
        assert 0 < entry["reward"] <= 1 and entry["metrics"]["params"] > 0


@pytest.mark.parametrize(("flags", "field"), [
    (["--beam", "0"], "beam: must be >= 1"),
    (["--space", "macro", "--evaluator", "train"], "space: --strategy pnas runs on nb201"),
])
def test_bad_pnas_settings_exit_2_naming_the_field(flags: list[str], field: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "nas", "search", "--strategy", "pnas",
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and field in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_pnas_job_runs_through_the_service(client: SearchClient, one_thread: None) -> None:
    # Arrange: a beam of 8 and the MLP surrogate: 5 one-block cells, then 8 two-block ones
    spec = sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="pnas",
                         evaluation=sp.EvaluationSpec(evaluator="nb201"), budget=13, seed=0,
                         strategy_options=sp.StrategyOptions(beam=8, surrogate="mlp"))
    # Act
    job = client.wait(client.submit(spec), 120.0)
    # Assert: the best 1-block cell, nor_conv_3x3(x), scores 0.760; two blocks do better
    assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 13
    assert job.best_reward > 0.8 and job.spec.strategy == "pnas"
    assert job.spec.strategy_options.beam == 8
    assert job.spec.strategy_options.surrogate == "mlp"
    spec.strategy_options.beam = -1
    with pytest.raises(InvalidArgumentError, match=r"spec\.strategy_options\.beam"):
        client.submit(spec)


def test_cell_spaces_start_from_pnas_136_one_block_cells() -> None:
    # Arrange: nasnet restricted to PNAS's 8 ops, one cell used as normal and reduction
    space = create_space(SearchSpaceSpec("nasnet", num_blocks=3))
    # Act
    pnas = PNASStrategy(space, beam=2, surrogate="mlp")
    trials = pnas.suggest(136)
    # Assert: (2 inputs x 8 ops) choose 2 with repetition = 136, PNAS's |B_1|
    assert len(trials) == 136 and len({t.arch_hash for t in trials}) == 136
    for trial in trials:
        space.validate(trial.architecture)
        normal, reduction = space.to_string(trial.architecture).split(";")
        assert normal.partition(":")[2] == reduction.partition(":")[2]
        assert {n.op for n in trial.architecture.nodes if n.type == "branch"} <= \
            set(PNAS_OPS)
    # the undecided blocks pass the last decided one on
    assert normal.endswith(",identity~2+identity~2,identity~3+identity~3")


def test_cell_expansion_gives_every_way_to_add_a_block_once() -> None:
    # Arrange
    space = create_space(SearchSpaceSpec("nasnet", num_blocks=2))
    pnas = PNASStrategy(space, beam=4, surrogate="mlp", seed=1)
    parent = pnas._queue[0][0]
    # Act
    bigger = pnas.expand([parent])
    # Assert: a parent's children are the 3 x 3 x 8 x 8 ways to add block 1, once per class
    every = {space.canonical_hash(space.decode(pnas.cell_actions((parent[0], c))))
             for c in itertools.product(range(3), range(3), *[pnas.layout.allowed[2]] * 2)}
    got = [space.canonical_hash(space.decode(pnas.cell_actions(c))) for c in bigger]
    assert all(len(c) == 2 and c[0] == parent[0] for c in bigger)
    assert len(got) == len(set(got)) and set(got) == every and 200 < len(got) < 576


def test_a_cell_step_trains_the_surrogates_top_k(one_thread: None) -> None:
    # Arrange: enas-micro (5 of PNAS's ops: 55 one-block cells) and a synthetic reward, more
    # separable convs higher, reported for every cell it proposes
    space = create_space(SearchSpaceSpec("enas-micro", num_blocks=2))
    pnas = PNASStrategy(space, beam=4, surrogate="mlp", seed=1)

    def answer(n: int) -> None:
        for trial in pnas.suggest(n):
            arch = space.to_string(trial.architecture).split(";")[0]
            pnas.report(trial.trial_id, TrialResult(trial.trial_id, TrialStatus.SUCCEEDED,
                                                    0.5 + 0.1 * arch.count("sep_conv")))

    # Act
    answer(55)
    answer(4)
    # Assert: step 2 trained the surrogate's top 4 of every 1-block cell's expansions, which
    # use separable convs: at least 3 of their 4 ops (a random 2-block cell has 1.6)
    assert [(s.blocks, s.trained) for s in pnas.steps] == [(1, 55), (2, 4)]
    assert pnas.steps[1].candidates > 1000
    assert all(r >= 0.8 for r in pnas.steps[1].rewards)
    assert pnas.steps[1].kendall_tau is not None


def test_a_two_block_pnas_cell_builds_and_runs(one_thread: None) -> None:
    # Arrange
    space = create_space(SearchSpaceSpec("nasnet", num_blocks=3))
    pnas = PNASStrategy(space, beam=2, surrogate="mlp")
    ops = pnas.layout.allowed[2]
    cell = ((0, 1, ops[0], ops[-1]), (2, 0, ops[3], ops[4]))
    arch = space.decode(pnas.cell_actions(cell))
    # Act
    net = build_model(arch, ModelSpec(in_channels=1, num_classes=10, cells=1, filters=4))
    logits = net(torch.zeros(2, 1, 28, 28))
    # Assert
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
