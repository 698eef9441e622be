"""`nas plot`: a job of a real search service on a free loopback port and a `nas search` run
directory drawn as PNGs, with real searches on the NB201 table; each PNG decoded and checked to
be a drawing, not a blank page."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import pytest

from controller.jobs.store import InMemoryJobStore
from controller.service.client import SearchClient
from controller.service.runner import JobRunner
from controller.service.servicer import serve_search
from controller.spaces import create_space
from nas.cli import main as nas
from nas.cluster import job_runner
from nas.plot_command import record_from_job
from protos.errors import NotFoundError
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

WAIT_S = 120.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("rewards.png", "entropy.png", "pareto.png", "best-cell.png")


@dataclass
class Server:
    client: SearchClient
    store: InMemoryJobStore
    runner: JobRunner
    address: str


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A real search server on a free port, jobs in memory (the CLI needs an endpoint)."""
    store = InMemoryJobStore()
    runner = job_runner(store, tmp_path / "work", max_running=1)
    running = serve_search(store, runner)
    try:
        with SearchClient(running.address) as client:
            yield Server(client, store, runner, running.address)
    finally:
        running.stop()


def nb201_spec(budget: int, strategy: str = "reinforce") -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy=strategy,
                         evaluation=sp.EvaluationSpec(evaluator="nb201"), budget=budget)


def assert_drawn(path: Path) -> None:
    """A PNG file whose pixels are not all one colour."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 200, pixels.shape
    assert float(pixels.var()) > 0, f"{path} is blank"


def test_nas_plot_job_writes_the_four_plots(server: Server, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    job_id = server.client.submit(nb201_spec(budget=15))
    assert server.client.wait(job_id, WAIT_S).state == sp.JOB_STATE_SUCCEEDED
    # Act
    code = nas(["plot", job_id, "--to", str(tmp_path / "plots"), "--endpoint",
                server.address])
    out = capsys.readouterr().out
    # Assert
    assert code == 0 and "note:" not in out
    assert out.splitlines() == [f"wrote {tmp_path / 'plots' / name}" for name in PLOTS]
    for name in PLOTS:
        assert_drawn(tmp_path / "plots" / name)


def test_a_job_s_record_is_its_trials_policy_updates_and_best(client: SearchClient) -> None:
    # Arrange
    job_id = client.submit(nb201_spec(budget=12))
    job = client.wait(job_id, WAIT_S)
    # Act
    record = record_from_job(client, job_id)
    # Assert: every finished trial once (cache hits included), one policy point per update
    listed = {t.trial_id: t for t in client.trials(job_id)}
    assert sorted(t["trial_id"] for t in record.trials) == sorted(listed)
    assert all(t["reward"] == listed[t["trial_id"]].reward and
               t["cached"] == listed[t["trial_id"]].cached for t in record.trials)
    assert sum(not t["cached"] for t in record.trials) == 12
    updates = [p["update"] for p in record.policy]
    # m=1: one update per proposal, repeats (counted, not listed) included
    assert updates == list(range(1, len(listed) + job.repeats + 1))
    assert all(0 < p["entropy"] < 20 and math.isfinite(p["baseline"]) for p in record.policy)
    assert record.best_arch is not None and record.best_arch.space == "nb201"
    assert record.strategy == "reinforce"
    with pytest.raises(NotFoundError, match="job-nope"):
        record_from_job(client, "job-nope")
    assert job.best_arch  # the best cell drawn is the job's best
    assert create_space("nb201").to_string(record.best_arch) == job.best_arch


def test_a_running_job_is_plotted_as_far_as_it_has_got(server: Server, tmp_path: Path) -> None:
    # Arrange: a job whose lookups take 50 ms each, like trainings, so it is still running
    server.store.create("slow", "test", "default",
                        {"space": "nb201", "strategy": "reinforce", "evaluator": "nb201",
                         "budget": 2000, "seed": 1, "simulate_seconds": 0.05})
    server.runner.start("slow")
    deadline = time.monotonic() + WAIT_S
    while server.store.get("slow").started < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    # Act
    started = time.monotonic()
    record = record_from_job(server.client, "slow")
    took = time.monotonic() - started
    code = nas(["plot", "slow", "--to", str(tmp_path / "p"), "--endpoint", server.address])
    # Assert: it returned without following the job to its end
    assert server.client.get("slow").state == sp.JOB_STATE_RUNNING
    assert took < 10 and len(record.trials) >= 5 and record.policy
    assert code == 0 and all((tmp_path / "p" / name).is_file() for name in PLOTS)
    server.client.cancel("slow", "test over")
    server.client.wait("slow", WAIT_S)


def test_nas_plot_run_dir_of_a_search_with_a_params_objective(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    run = tmp_path / "run"
    assert nas(["search", "--space", "nb201", "--evaluator", "nb201", "--budget", "25",
                "--objective", "params:target=3e5", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    # Act
    code = nas(["plot", str(run)])
    out = capsys.readouterr().out
    code_flops = nas(["plot", str(run / "result.json"), "--to", str(tmp_path / "flops"),
                      "--metric", "flops"])
    # Assert: result.json recorded the policy; the plots default to RUN_DIR/plots
    doc = json.loads((run / "result.json").read_text())
    proposals = len(doc["history"]) + doc["repeats"]  # m=1: one update per proposal
    assert [p["update"] for p in doc["policy"]] == list(range(1, proposals + 1))
    assert code == 0 and out.splitlines() == [f"wrote {run / 'plots' / n}" for n in PLOTS]
    for name in PLOTS:
        assert_drawn(run / "plots" / name)
    assert code_flops == 0 and (tmp_path / "flops" / "pareto.png").is_file()
    assert (tmp_path / "flops" / "pareto.png").read_bytes() != \
        (run / "plots" / "pareto.png").read_bytes()
    # a result.json written before `nas search` recorded the policy: said, not drawn empty
    old = tmp_path / "old"
    old.mkdir()
    (old / "result.json").write_text(json.dumps({k: v for k, v in doc.items()
                                                 if k != "policy"}))
    capsys.readouterr()
    assert nas(["plot", str(old)]) == 0
    assert "note: entropy.png skipped: this result.json has no policy statistics" in \
        capsys.readouterr().out


def test_a_random_search_gets_no_entropy_plot_and_a_missing_metric_no_pareto(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    run = tmp_path / "run"
    assert nas(["search", "--strategy", "random", "--budget", "8", "--out", str(run),
                "--quiet"]) == 0
    capsys.readouterr()
    # Act
    code = nas(["plot", str(run), "--to", str(tmp_path / "p"), "--metric", "latency_ms"])
    out = capsys.readouterr().out
    # Assert
    assert code == 0
    assert "note: entropy.png skipped: strategy 'random' has no policy to plot" in out
    assert "note: pareto.png skipped: no trained trial has the metric 'latency_ms'" in out
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["best-cell.png",
                                                                 "rewards.png"]
    assert json.loads((run / "result.json").read_text())["policy"] == []


def test_bad_input_exits_2_with_one_line_naming_it(server: Server, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    empty = tmp_path / "empty"
    empty.mkdir()
    # Act
    unknown = nas(["plot", "job-nope", "--to", str(tmp_path / "p"), "--endpoint",
                   server.address])
    err_unknown = capsys.readouterr().err
    no_result = nas(["plot", str(empty)])
    err_no_result = capsys.readouterr().err
    no_to = nas(["plot", "job-nope", "--endpoint", server.address])
    err_no_to = capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_metric:
        nas(["plot", str(empty), "--metric", "watts"])
    err_metric = capsys.readouterr().err
    # Assert
    assert unknown == 2 and "job_id: no job 'job-nope'" in err_unknown
    assert no_result == 2 and f"{empty / 'result.json'} not found" in err_no_result
    assert no_to == 2 and "--to" in err_no_to
    assert bad_metric.value.code == 2 and "--metric" in err_metric and "watts" in err_metric
    for err in (err_unknown, err_no_result, err_no_to):
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_help_explains_each_plot(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        nas(["plot", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    for words in ("rewards.png", "best reward so far", "entropy.png", "baseline",
                  "pareto.png", "Pareto front", "best-cell.png", "--endpoint", "--metric",
                  "RUN_DIR/plots"):
        assert words in out, words
