"""Multi-objective search: children's costs, the MnasNet reward, the Pareto front, and both
through `nas search`, the search service (in-process and a real server) and `nas best`."""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path

import pytest
from conftest import stored_trials

from controller.config import ConfigError, build_config
from controller.evaluators.base import EvaluatorError
from controller.factory import build_space
from controller.jobs.store import InMemoryJobStore
from controller.objectives import Objective, RewardShaper, parse_objective, shaped_reward
from controller.pareto import non_dominated, pareto_front
from controller.search import run_search
from controller.service.client import SearchClient
from controller.service.servicer import SearchServicer, serve_search
from controller.spaces.nb201 import NB201Space
from nas.cli import main
from nas.cluster import job_runner
from nas.wiring import build_evaluator, build_strategy
from protos.errors import FailedPreconditionError, InvalidArgumentError
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from worker.builders import ModelSpec, build_model
from worker.measure import NB201Costs, child_costs

WAIT_S = 120.0
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_CONV3 = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|"
             "nor_conv_3x3~2|")


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


# --- costs -------------------------------------------------------------------------------------

def test_params_and_flops_of_a_small_nb201_net_match_a_hand_count(one_thread: None) -> None:
    # Arrange: the NB201 skeleton at C=4, N=1 on 8x8 RGB images, 10 classes
    spec = ModelSpec(in_channels=3, num_classes=10, cells=1, filters=4)
    space = NB201Space()
    # Act
    empty = child_costs(build_model(space.from_string(ALL_NONE), spec), (8, 8), "cpu")
    conv = child_costs(build_model(space.from_string(ALL_CONV3), spec), (8, 8), "cpu",
                       latency=False)
    # Assert. Params: stem conv 3*4*9 + BN 2*4; reduction 4->8: 3x3 s2 conv 4*8*9 + BN 16,
    # 3x3 conv 8*8*9 + BN 16, 1x1 shortcut 4*8; reduction 8->16 likewise; last BN 2*16;
    # classifier 16*10 + 10.
    assert empty["params"] == (108 + 8) + (288 + 16 + 576 + 16 + 32) + \
        (1152 + 32 + 2304 + 32 + 128) + 32 + 170 == 4894
    # MACs: each conv's output elements times its kernel volume (8x8 -> 4x4 -> 2x2).
    assert empty["flops"] == 64 * 4 * 27 + (16 * 8 * 36 + 16 * 8 * 72 + 16 * 8 * 4) + \
        (4 * 16 * 72 + 4 * 16 * 144 + 4 * 16 * 8) + 16 * 10 == 35744
    # Six 3x3 ReLUConvBN edges per cell: 9C^2 + 2C params each, HW*C*9C MACs (= 9216 at each of
    # the three stages here).
    assert conv["params"] - empty["params"] == 6 * sum(9 * c * c + 2 * c for c in (4, 8, 16))
    assert conv["flops"] - empty["flops"] == 3 * 6 * 9216
    assert empty["latency_ms"] > 0 and empty["latency_device"] == -1.0
    assert "latency_ms" not in conv


def test_nb201_costs_are_the_benchmark_networks_counts() -> None:
    # Arrange
    space = NB201Space()
    costs = NB201Costs("cifar10")
    # Act
    empty, conv = costs(space.from_string(ALL_NONE)), costs(space.from_string(ALL_CONV3))
    # Assert: NAS-Bench-201 reports 0.0733 M params / 7.78 MFLOPs for the empty cell and
    # 1.5315 M / 220.1 MFLOPs for the all-3x3 cell; the difference is 6 edges x 5 cells x
    # (9C^2 + 2C) over the stages' C = 16, 32, 64.
    assert (empty["params"], empty["flops"]) == (73306, 7783040)
    assert (conv["params"], conv["flops"]) == (1531546, 220119680)
    assert conv["params"] - empty["params"] == 30 * sum(9 * c * c + 2 * c for c in (16, 32, 64))
    by_op = {op: costs(space.from_string(ALL_NONE.replace("none", op)))["params"]
             for op in ("none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1",
                        "nor_conv_3x3")}
    assert by_op["none"] == by_op["skip_connect"] == by_op["avg_pool_3x3"] \
        < by_op["nor_conv_1x1"] < by_op["nor_conv_3x3"]
    # 100 classes: a wider classifier only; ImageNet16-120's 16x16 images: a quarter of the
    # stages' MACs (the classifier aside)
    assert NB201Costs("cifar100")(space.from_string(ALL_NONE))["params"] == 73306 + 64 * 90 + 90
    small = NB201Costs("imagenet16")(space.from_string(ALL_CONV3))
    assert small["flops"] - 64 * 120 == (conv["flops"] - 640) // 4


def test_nb201_costs_summed_per_edge_equal_a_full_build_of_each_cell() -> None:
    space, costs, rng = NB201Space(), NB201Costs("cifar10", latency=True), random.Random(7)
    for _ in range(4):
        arch = space.decode([rng.randrange(5) for _ in range(6)])
        full = child_costs(costs.build(arch), (32, 32), "cpu", latency=False)
        got = costs(arch)
        assert (got["params"], got["flops"]) == (full["params"], full["flops"])
        assert got["latency_ms"] > 0 and costs(arch)["latency_ms"] == got["latency_ms"]


# --- the reward --------------------------------------------------------------------------------

def test_soft_and_hard_rewards_follow_mnasnet() -> None:
    soft, hard = Objective("latency_ms", 20.0), Objective("params", 1e6, hard=True)
    assert (soft.weight, hard.weight) == (-0.07, -1.0)
    # soft: the same exponent on both sides of the target
    assert shaped_reward(0.9, {"latency_ms": 40.0}, [soft]) == pytest.approx(0.9 * 2 ** -0.07)
    assert shaped_reward(0.9, {"latency_ms": 10.0}, [soft]) == pytest.approx(0.9 * 0.5 ** -0.07)
    assert shaped_reward(0.9, {"latency_ms": 20.0}, [soft]) == pytest.approx(0.9)
    # hard: free under the target, (value/target)^-1 over it
    assert shaped_reward(0.9, {"params": 5e5}, [hard]) == 0.9
    assert shaped_reward(0.9, {"params": 2e6}, [hard]) == pytest.approx(0.45)
    # several objectives multiply
    both = shaped_reward(0.9, {"latency_ms": 40.0, "params": 2e6}, [soft, hard])
    assert both == pytest.approx(0.9 * 2 ** -0.07 * 0.5)
    reward, metrics = RewardShaper([hard])(0.9, {"params": 2e6})
    assert reward == pytest.approx(0.45) and metrics == {"params": 2e6, "accuracy": 0.9}
    with pytest.raises(EvaluatorError, match="latency_ms: not measured"):
        shaped_reward(0.9, {"params": 1.0}, [soft])


@pytest.mark.parametrize(("text", "expected"), [
    ("latency_ms:target=20:w=-0.07", Objective("latency_ms", 20.0, -0.07)),
    ("params:target=1e6:hard", Objective("params", 1e6, -1.0, hard=True)),
    ("flops:target=3e8:weight=-0.5:hard", Objective("flops", 3e8, -0.5, hard=True)),
])
def test_objective_flags_parse(text: str, expected: Objective) -> None:
    assert parse_objective(text) == expected
    assert parse_objective(str(expected)) == expected  # the canonical form reads back


@pytest.mark.parametrize(("value", "message"), [
    (["speed:target=1"], r"objectives\[0\] \(--objective speed:target=1\): metric: 'speed'"),
    (["params"], r"objectives\[0\] .*target: missing"),
    (["params:target=0"], r"target: must be a finite number > 0"),
    (["params:target=abc"], r"target: expected a number, got 'abc'"),
    (["params:target=1:w=0.5"], r"weight: must be a finite number < 0"),
    (["params:target=1:soft"], r"cannot read 'soft'"),
    (["params:target=1", "params:target=2"], r"objectives\[1\] .*a second objective on params"),
    ([{"metric": "flops", "target": "big"}], r"target: expected a number"),
])
def test_bad_objectives_are_config_errors_naming_the_entry(value: list[object],
                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"objectives": value})


# --- the Pareto front --------------------------------------------------------------------------

def _trial(arch: str, accuracy: float, params: float, flops: float = 1.0,
           same_as: str | None = None) -> dict[str, object]:
    doc: dict[str, object] = {"trial_id": f"t-{arch}-{accuracy}", "arch": arch,
                              "reward": accuracy, "metrics": {"params": params, "flops": flops}}
    if same_as:
        doc["same_as"] = same_as
    return doc


def test_the_pareto_front_of_a_hand_made_set() -> None:
    trials = [_trial("a", 0.90, 300), _trial("b", 0.85, 100), _trial("c", 0.80, 200),  # c: b
              _trial("d", 0.90, 400),  # dominated by a (same accuracy, larger)
              _trial("e", 0.85, 100),  # ties with b on both counts: neither dominates
              _trial("a2", 0.90, 300, same_as="a"),  # a's isomorphic twin: a again
              {**_trial("f", 0.99, 1), "status": "failed"}]
    front = pareto_front(trials)
    assert [t["arch"] for t in front] == ["a", "b", "e"]
    # three dimensions: c's fewer FLOPs now keep it
    trials[2]["metrics"] = {"params": 200, "flops": 0.5}
    assert [t["arch"] for t in pareto_front(trials, ["params", "flops"])] == ["a", "b", "e", "c"]
    assert [t["arch"] for t in pareto_front([_trial("x", 0.5, 10)])] == ["x"]
    assert pareto_front([]) == []
    with pytest.raises(ValueError, match="'speed' is not one of"):
        pareto_front(trials, ["speed"])


def test_the_2d_sweep_agrees_with_the_pairwise_test() -> None:
    rng = random.Random(3)
    for _ in range(50):
        points = [(rng.randrange(6), rng.randrange(6)) for _ in range(rng.randrange(1, 30))]
        pairwise = [i for i, p in enumerate(points)
                    if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points)]
        assert non_dominated(points) == pairwise


# --- searches ----------------------------------------------------------------------------------

def _mean_params(strategy: str, objectives: list[str]) -> tuple[float, float]:
    cfg = build_config({"strategy": strategy, "budget": 40 if strategy == "evolution" else 30,
                        "seed": 0, "objectives": objectives, "max_idle_proposals": 200})
    space = build_space(cfg)
    outcome = run_search(space, build_strategy(space, cfg), build_evaluator(cfg), cfg.budget,
                         report_test=False, max_idle_proposals=cfg.max_idle_proposals,
                         shaper=RewardShaper.from_settings(cfg.objectives))
    trained = [h for h in outcome.history if not h.cached]
    for h in trained:  # the raw accuracy is kept beside the shaped reward
        accuracy = h.metrics.get("accuracy", h.reward)
        assert h.reward == pytest.approx(shaped_reward(
            accuracy, h.metrics, [parse_objective(o) for o in cfg.objectives]))
    return (statistics.mean(h.metrics["params"] for h in trained),
            statistics.mean(h.metrics.get("accuracy", h.reward) for h in trained))


@pytest.mark.parametrize("strategy", ["evolution", "reinforce"])
def test_a_params_objective_finds_smaller_models_than_accuracy_alone(strategy: str) -> None:
    plain_params, plain_accuracy = _mean_params(strategy, [])
    small_params, small_accuracy = _mean_params(strategy, ["params:target=3e5"])
    assert small_params < 0.85 * plain_params
    assert small_accuracy < plain_accuracy  # the trade it made


def test_nas_search_with_objectives_writes_the_pareto_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    code = main(["search", "--strategy", "evolution", "--budget", "15", "--seed", "1", "--quiet",
                 "--out", str(tmp_path),
                 "--objective", "params:target=4e5:w=-0.2", "--objective", "flops:target=6e7"])
    # Assert
    assert code == 0
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["config"]["objectives"] == ["params:target=400000:w=-0.2",
                                           "flops:target=60000000:w=-0.07"]
    front = doc["pareto"]["front"]
    assert doc["pareto"]["metrics"] == ["params", "flops"] and front
    trained = [h for h in doc["history"] if not h["cached"]]
    assert all({"params", "flops", "accuracy"} <= set(h["metrics"]) for h in trained)
    points = [(h["metrics"]["accuracy"], h["metrics"]["params"], h["metrics"]["flops"])
              for h in trained]
    for f in front:  # nothing trained beats a front member on all three counts
        assert not any(a >= f["accuracy"] and p <= f["params"] and fl <= f["flops"]
                       and (a, p, fl) != (f["accuracy"], f["params"], f["flops"])
                       for a, p, fl in points)
    assert "Pareto front:" in capsys.readouterr().out
    # a bad flag: exit 2, one line naming it
    assert main(["search", "--objective", "params:target=-3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nas search: error: objectives[0] (--objective params:target=-3): target: "
                   "must be a finite number > 0, got -3.0"]


# --- the service -------------------------------------------------------------------------------

def nb201_spec(budget: int, *objectives: sp.Objective) -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="evolution",
                         evaluation=sp.EvaluationSpec(evaluator="nb201"), budget=budget,
                         objectives=list(objectives))


def test_get_best_returns_the_pareto_front(client: SearchClient) -> None:
    # Arrange
    job_id = client.submit(nb201_spec(20, sp.Objective(metric="params", target=3e5)))
    job = client.wait(job_id, WAIT_S)
    assert job.state == sp.JOB_STATE_SUCCEEDED, job.reason
    assert job.spec.objectives[0] == sp.Objective(metric="params", target=3e5, weight=-0.07)
    trials = [t for t in client.trials(job_id) if t.status == "succeeded"]
    # Act
    front = client.best(job_id, pareto=True)
    both = client.best(job_id, pareto=True, objectives=["params", "flops"])
    # Assert: shaped rewards, raw accuracy kept; the front is non-dominated and covers the rest
    for t in trials:
        factor = (t.metrics["params"] / 3e5) ** -0.07
        assert t.reward == pytest.approx(t.metrics["accuracy"] * factor)
    assert front and len({t.arch for t in front}) == len(front)
    accuracies = [t.metrics["accuracy"] for t in front]
    assert accuracies == sorted(accuracies, reverse=True)
    for t in trials:
        beaten = [f for f in front if f.metrics["accuracy"] >= t.metrics["accuracy"]
                  and f.metrics["params"] <= t.metrics["params"]]
        assert beaten  # every trial is on the front or behind a member of it
        assert not any(o.metrics["accuracy"] >= f.metrics["accuracy"] and o.metrics["params"]
                       <= f.metrics["params"] and (o.metrics["accuracy"], o.metrics["params"])
                       != (f.metrics["accuracy"], f.metrics["params"])
                       for o in trials for f in front)
    assert len(both) >= len(front)  # one more dimension never shrinks the front
    assert len(client.best(job_id, 1, pareto=True)) == 1
    with pytest.raises(InvalidArgumentError, match=r"objectives\[0\]: 'speed'"):
        client.best(job_id, pareto=True, objectives=["speed"])
    with pytest.raises(FailedPreconditionError, match="latency_ms"):
        client.best(job_id, pareto=True, objectives=["latency_ms"])


@pytest.mark.parametrize(("objectives", "field"), [
    ([sp.Objective(metric="params", target=0)], "spec.objectives[0].target"),
    ([sp.Objective(metric="speed", target=1)], "spec.objectives[0].metric"),
    ([sp.Objective(metric="flops", target=1, weight=0.5)], "spec.objectives[0].weight"),
    ([sp.Objective(metric="params", target=math.inf)], "spec.objectives[0].target"),
    ([sp.Objective(metric="params", target=1), sp.Objective(metric="params", target=2)],
     "spec.objectives[1].metric"),
])
def test_a_bad_objective_is_invalid_argument_naming_the_field(
        client: SearchClient, objectives: list[sp.Objective], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field.replace(".", r"\.").replace(
            "[", r"\[").replace("]", r"\]")):
        client.submit(nb201_spec(5, *objectives))
    assert client.list() == []


def test_nas_submit_with_objectives_and_nas_best_pareto(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = InMemoryJobStore()
    running = serve_search(store, job_runner(store, tmp_path / "work"))
    endpoint = ["--endpoint", running.address]
    try:
        spec = tmp_path / "spec.yaml"
        spec.write_text("space: nb201\nevaluator: nb201\nstrategy: evolution\nbudget: 12\n"
                        "objectives:\n  - {metric: params, target: 300000, hard: true}\n"
                        "  - flops:target=4e7\n")
        assert main(["submit", str(spec), *endpoint]) == 0
        job_id = capsys.readouterr().out.strip().splitlines()[-1]
        with SearchClient(running.address) as client:
            job = client.wait(job_id, WAIT_S)
        assert job.state == sp.JOB_STATE_SUCCEEDED, job.reason
        assert [(o.metric, o.hard, o.weight) for o in job.spec.objectives] == [
            ("params", True, -1.0), ("flops", False, -0.07)]
        # Act
        assert main(["best", job_id, "--pareto", *endpoint]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert main(["best", job_id, "--pareto", "--metrics", "params,flops", *endpoint]) == 0
        wider = capsys.readouterr().out.strip().splitlines()
        # Assert: a header, then the front, best accuracy first; on a 2-D front a more accurate
        # member must be larger (else it would dominate the next one)
        assert lines[0].split() == ["ACCURACY", "PARAMS", "REWARD", "ARCH"]
        rows = [line.split() for line in lines[1:]]
        assert rows and all(r[3].startswith("|") for r in rows)
        assert [float(r[0]) for r in rows] == sorted((float(r[0]) for r in rows), reverse=True)
        assert [float(r[1]) for r in rows] == sorted((float(r[1]) for r in rows), reverse=True)
        assert wider[0].split() == ["ACCURACY", "PARAMS", "FLOPS", "REWARD", "ARCH"]
        assert len(wider) >= len(lines)
        assert main(["best", job_id, "--pareto", "--metrics", "speed", *endpoint]) == 2
        assert capsys.readouterr().err.strip() == (
            "nas best: error: --metrics: 'speed' is not one of params, flops, latency_ms")
        bad = tmp_path / "bad.yaml"
        bad.write_text("space: nb201\nbudget: 3\nobjectives: ['params:target=0']\n")
        assert main(["submit", str(bad), *endpoint]) == 2
        assert "objectives[0]" in capsys.readouterr().err
    finally:
        running.stop()


def test_trained_children_carry_their_costs_and_latency_shapes_the_reward(
        tmp_path: Path, fashion_mnist_installed: Path, one_thread: None) -> None:
    # Act: two real (tiny) trainings with a latency objective
    assert main(["search", "--space", "nb201", "--strategy", "random", "--evaluator", "train",
                 "--budget", "2", "--epochs", "1", "--train-subset", "256", "--val-subset",
                 "128", "--filters", "4", "--device", "cpu", "--quiet", "--out", str(tmp_path),
                 "--objective", "latency_ms:target=0.5:w=-0.1"]) == 0
    # Assert: measured on the built child, on the CPU it trained on
    doc = json.loads((tmp_path / "result.json").read_text())
    trained = [h for h in doc["history"] if not h["cached"]]
    assert len(trained) == 2
    for h in trained:
        m = h["metrics"]
        assert m["params"] > 0 and m["flops"] > m["params"]
        assert m["latency_ms"] > 0 and m["latency_device"] == -1.0
        assert m["accuracy"] == m["val_accuracy"]
        assert h["reward"] == pytest.approx(m["accuracy"] * (m["latency_ms"] / 0.5) ** -0.1)
    assert doc["pareto"]["metrics"] == ["latency_ms"] and doc["pareto"]["front"]


def test_a_restarted_service_caches_unshaped_results(tmp_path: Path) -> None:
    # Arrange: a job with a hard params objective runs to the end
    store = InMemoryJobStore()
    runner = job_runner(store, tmp_path)
    with SearchClient(SearchServicer(store, runner)) as client:
        job_id = client.submit(nb201_spec(8, sp.Objective(metric="params", target=1e5,
                                                          hard=True)))
        assert client.wait(job_id, WAIT_S).state == sp.JOB_STATE_SUCCEEDED
    runner.close()
    # Act: a restarted service reads the shared cache through to the store's
    again = job_runner(store, tmp_path)
    again.resume()
    # Assert: the cache holds accuracies, not this job's shaped rewards
    trained = [t for t in stored_trials(store, job_id).values() if not t.cached]
    shaped = [t for t in trained if t.reward < t.metrics["accuracy"]]
    assert shaped  # some children were over the target
    for trial in trained:
        hit = again.cache.get(trial.cache_key)
        assert hit is not None and hit.reward == trial.metrics["accuracy"]
        assert "accuracy" not in hit.metrics and hit.metrics["params"] > 0
