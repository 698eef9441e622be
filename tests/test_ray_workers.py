"""Children trained by real Ray tasks (a local Ray, 2 CPUs) on a slice of Fashion-MNIST, with
results reported over real gRPC: parallel children, a SIGKILLed worker process, a worker that
stops heartbeating, replayed reports, early stopping, and the `nas` entry points."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.early_stopping import EarlyStopper, SuccessiveHalving
from controller.spaces import create_space
from controller.trials.board import TrialBoard, TrialOutcome
from controller.trials.servicer import RunningTrialReport, serve_trial_reports
from nas.cluster import ClusterOptions, ServiceCluster
from protos.cluster_auth import TOKEN_ENV, ClusterAuth
from protos.types import Resources, SearchSpaceSpec, Trial, TrialStatus, Workload
from worker.reporting import TrialReporter
from worker.scheduler import RAY_LOOPBACK_ENV, InfeasibleResources, RayScheduler
from worker.service import WorkerService
from worker.trainer import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]
GOOD = ("|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|"
        "skip_connect~2|")
SPACE = create_space(SearchSpaceSpec("nb201"))
RECIPE = dataclasses.asdict(TrainRecipe(epochs=1, batch_size=32, learning_rate=0.1, seed=0,
                                      device="cpu"))
MODEL = {"cells": 1, "filters": 4, "drop_path": 0.0, "aux_head": False}
AUTH = ClusterAuth("test-ray-workers-token")  # the TrialReport servers require it
WAIT_S = 180.0  # every wait on Ray is bounded


def _ray_env(home: Path) -> dict[str, str]:
    """Loopback-only Ray settings (DEVELOPERS.md), for this process and subprocesses."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")
    # Ray's token loader keeps the first token this process read (an earlier module's Ray,
    # under the old HOME): the new HOME must hold the same one, or the GCS started below finds
    # none and aborts
    token = Path(os.environ.get("HOME", "/")) / ".ray" / "auth_token"
    if token.is_file() and not (home / ".ray" / "auth_token").exists():
        (home / ".ray").mkdir(exist_ok=True)
        shutil.copy(token, home / ".ray" / "auth_token")
    return {**RAY_LOOPBACK_ENV, "HOME": str(home)}


@pytest.fixture(scope="module")
def ray_local(fashion_mnist_installed: Path) -> Iterator[None]:
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="nas-rt-"))
    saved = {k: os.environ.get(k) for k in ("HOME", *RAY_LOOPBACK_ENV)}
    os.environ.update(_ray_env(tmp / "home"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(tmp / "ray"),
             _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Rig:
    """Board + TrialReport server + Ray scheduler + worker service, all real."""

    board: TrialBoard
    server: RunningTrialReport
    scheduler: RayScheduler
    service: WorkerService
    weights: Path

    def workload(self, **recipe: Any) -> Workload:
        return Workload("fashion-mnist", MODEL, {**RECIPE, **recipe},
                        str(self.weights), train_subset=512, val_subset=256)

    def submit(self, trial_id: str, arch: str = GOOD, **recipe: Any) -> Any:
        trial = Trial(trial_id, SPACE.from_string(arch), (), "")
        return self.board.submit(trial, self.workload(**recipe), Resources(1.0, 0.0))

    def wait_started(self, trial_id: str, attempt: int = 1) -> int:
        """The pid of the process running ``trial_id``'s attempt, once it reported its start."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            current, worker = self.board.attempt(trial_id)
            if current == attempt and worker:
                return int(worker.rsplit(":", 1)[1])
            time.sleep(0.05)
        raise AssertionError(f"{trial_id} attempt {attempt} never started")


def _wait(handle: Any) -> TrialOutcome:
    outcome = handle.wait(WAIT_S)
    assert outcome is not None, "no result within the deadline"
    return outcome


@pytest.fixture
def rig(ray_local: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    options = getattr(request, "param", {})
    stopper: EarlyStopper | None = options.get("stopper")
    board = TrialBoard(max_attempts=3, heartbeat_seconds=0.5,
                       heartbeat_timeout=options.get("heartbeat_timeout", 30.0),
                       start_timeout=120.0, stopper=stopper)
    server = serve_trial_reports(board, auth=AUTH)  # as the service runs it: with a token
    scheduler = RayScheduler()
    service = WorkerService(scheduler, server.address, poll_seconds=0.2, auth=AUTH).start()
    try:
        yield Rig(board, server, scheduler, service, tmp_path / "weights")
    finally:
        board.close()
        service.stop()
        for trial_id, attempt in scheduler.running():
            scheduler.cancel(trial_id, attempt)
        scheduler.wait(10)
        server.stop()


def test_two_children_train_in_parallel_and_report_over_grpc(rig: Rig) -> None:
    handles = [rig.submit("a"), rig.submit("b")]
    outcomes = [_wait(h) for h in handles]
    assert all(o.result.status is TrialStatus.SUCCEEDED for o in outcomes)
    assert all(0 < o.result.reward <= 1 for o in outcomes)
    assert len({o.worker for o in outcomes}) == 2  # two processes
    a, b = outcomes
    assert a.started_at is not None and b.started_at is not None
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # overlapping
    assert all(Path(o.artifacts["weights"]).is_file() for o in outcomes)
    # A replayed result (an acknowledgement lost on the way back) changes nothing.
    reporter = TrialReporter(rig.server.address, auth=AUTH)
    try:
        replay = reporter.result("a", 1, a.result, a.artifacts)
    finally:
        reporter.close()
    assert replay.duplicate and not replay.accepted
    assert rig.board.counters.succeeded == 2 and rig.board.counters.duplicates == 1


def test_a_sigkilled_worker_process_is_retried_and_no_trial_is_lost(rig: Rig) -> None:
    handles = {t: rig.submit(t, epochs=3) for t in ("k", "x", "y")}
    pid = rig.wait_started("k")
    os.kill(pid, signal.SIGKILL)
    outcomes = {t: _wait(h) for t, h in handles.items()}
    assert all(o.result.status is TrialStatus.SUCCEEDED for o in outcomes.values())
    killed = outcomes["k"]
    assert killed.attempts == 2 and len(killed.lost) == 1
    assert killed.worker != f"{os.uname().nodename}:{pid}"
    assert rig.board.counters.retried_lost == 1
    # exactly one result per trial: three accepted, none counted twice
    assert rig.board.counters.succeeded == 3 and rig.board.counters.failed == 0


@pytest.mark.parametrize("rig", [{"heartbeat_timeout": 3.0}], indirect=True)
def test_a_worker_that_stops_heartbeating_is_timed_out_and_retried(rig: Rig) -> None:
    handle = rig.submit("frozen", epochs=3)
    pid = rig.wait_started("frozen")
    os.kill(pid, signal.SIGSTOP)  # alive but silent
    try:
        outcome = _wait(handle)
    finally:
        with contextlib.suppress(ProcessLookupError):  # Ray's cancel may have killed it
            os.kill(pid, signal.SIGKILL)
    assert outcome.result.status is TrialStatus.SUCCEEDED
    assert outcome.attempts == 2 and "no heartbeat" in outcome.lost[0]
    assert rig.board.counters.retried_timeout == 1


@pytest.mark.parametrize(
    "rig", [{"stopper": SuccessiveHalving(max_epochs=3, grace_epochs=1, eta=2)}], indirect=True)
def test_early_stopping_stops_the_child_that_learns_badly(rig: Rig) -> None:
    # A reference child trains all 3 epochs and sets the rungs (after 1 and 2 epochs).
    first = _wait(rig.submit("ref", epochs=3))
    assert first.result.metrics["epochs"] == 3 and first.stopped_at_epoch is None
    # The same child again (deterministic on the CPU: the same accuracies, never below the
    # cutoff) and one whose learning rate is too small to learn anything.
    same, slow = rig.submit("same", epochs=3), rig.submit("slow", epochs=3, learning_rate=1e-6)
    kept, stopped = _wait(same), _wait(slow)
    assert kept.stopped_at_epoch is None and kept.result.metrics["epochs"] == 3
    assert kept.result.reward == first.result.reward
    assert stopped.stopped_at_epoch == 1
    assert stopped.result.metrics["epochs"] == 1  # the worker really stopped training
    assert stopped.result.metrics["stopped_early"] == 1
    assert rig.board.counters.stopped_early == 1


def test_a_child_that_fails_by_itself_is_reported_failed_and_not_retried(rig: Rig) -> None:
    outcome = _wait(rig.submit("nan", learning_rate=1e30))
    assert outcome.result.status is TrialStatus.FAILED
    assert "non-finite" in outcome.result.error and outcome.attempts == 1


def test_an_infeasible_request_fails_fast_with_the_fix(ray_local: None) -> None:
    scheduler = RayScheduler()
    with pytest.raises(InfeasibleResources, match=r"num_gpus=1.*--gpus-per-child"):
        scheduler.check_feasible(Resources(1.0, 1.0))
    assert scheduler.capacity(Resources(1.0, 0.0)) == 2
    assert scheduler.capacity(Resources(0.5, 0.0)) == 4


def test_an_infeasible_trial_fails_at_once_instead_of_hanging(rig: Rig) -> None:
    trial = Trial("big", SPACE.from_string(GOOD), (), "")
    outcome = _wait(rig.board.submit(trial, rig.workload(), Resources(1.0, 2.0)))
    assert outcome.result.status is TrialStatus.FAILED and outcome.attempts == 1
    assert "no node of the Ray cluster" in outcome.result.error


def _unknown_dataset(rig: Rig) -> Workload:
    """A workload whose attempts end at once (the dataset is unknown: a FAILED result)."""
    return dataclasses.replace(rig.workload(), dataset="no-such-dataset")


def test_short_attempts_are_prefetched_and_long_ones_are_not(rig: Rig) -> None:
    # Arrange: "short" is under 0.3 s here; a service prefetches only once each of its last 8
    # attempts was short, so none yet
    rig.service.prefetch_below_s = 0.3
    assert not rig.service.prefetching()
    # Act 1: attempts that end at once (a few ms; rounds of 8 until 8 in a row were short,
    # should a loaded machine slow one down)
    for round_ in range(5):
        quick = [rig.board.submit(Trial(f"quick{round_}-{i}", SPACE.from_string(GOOD), (), ""),
                                  _unknown_dataset(rig), Resources(1.0, 0.0)) for i in range(8)]
        assert all(_wait(h).result.status is TrialStatus.FAILED for h in quick)
        deadline = time.monotonic() + 5.0  # the loop collects the last ones after their results
        while not rig.service.prefetching() and time.monotonic() < deadline:
            time.sleep(0.05)
        if rig.service.prefetching():
            break
    # Assert 1: now each slot gets one more attempt queued behind its running one
    assert rig.service.prefetching()
    slots = rig.service.slots()
    longer = dataclasses.replace(rig.workload(), train_subset=4096)  # seconds each
    busy = [rig.board.submit(Trial(f"busy{i}", SPACE.from_string(GOOD), (), ""), longer,
                             Resources(1.0, 0.0)) for i in range(slots)]
    for i in range(slots):
        rig.wait_started(f"busy{i}")
    queued = [rig.board.submit(Trial(f"next{i}", SPACE.from_string(GOOD), (), ""),
                               _unknown_dataset(rig), Resources(1.0, 0.0))
              for i in range(slots + 2)]
    deadline = time.monotonic() + 10.0
    while rig.board.running() < 2 * slots and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rig.board.running() == 2 * slots  # the trainings, and one leased behind each
    assert rig.board.queued() == 2  # no more than that: the rest wait on the board
    # Act 2 / Assert 2: every trial still ends, each once; the trainings turn prefetching off
    assert all(_wait(h).result.status is TrialStatus.SUCCEEDED for h in busy)
    assert all(_wait(h).result.status is TrialStatus.FAILED for h in queued)
    assert rig.board.counters.duplicates == 0 and rig.board.counters.retried_lost == 0
    deadline = time.monotonic() + WAIT_S
    while rig.service.prefetching() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not rig.service.prefetching()  # a training is among the last 8 attempts again


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, **_ray_env(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}


def test_nas_search_with_two_workers_trains_children_through_ray(tmp_path: Path,
                                                                fashion_mnist_installed: Path
                                                                ) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nas", "search", "--space", "nb201", "--evaluator",
           "train", "--budget", "3", "--epochs", "2", "--train-subset", "512", "--val-subset",
           "256", "--filters", "4", "--workers", "2", "--early-stopping", "median",
           "--median-min-trials", "1", "--metrics-port", "0", "--quiet", "--out", str(out)]
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metrics: http://127.0.0.1:" in proc.stderr
    doc = json.loads((out / "result.json").read_text())
    assert doc["workers"]["succeeded"] == doc["trainings"] >= 3
    assert doc["budget_charged"] <= 3
    assert doc["best"]["test_accuracy"] is not None
    for entry in doc["history"]:
        assert entry["metrics"]["attempts"] == 1
        assert Path(entry["artifacts"]["weights"]).is_file()


def test_nas_search_refuses_workers_without_training(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "nas", "search", "--evaluator", "nb201",
                           "--workers", "2", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "workers:" in proc.stderr and "Traceback" not in proc.stderr


def test_nas_serve_worker_trains_a_controllers_trials_and_stops_cleanly(
        tmp_path: Path, fashion_mnist_installed: Path) -> None:
    board = TrialBoard(heartbeat_seconds=0.5, heartbeat_timeout=60.0)
    server = serve_trial_reports(board, auth=AUTH)  # the worker and its Ray tasks: the token
    proc = subprocess.Popen([sys.executable, "-m", "nas", "serve", "worker",
                             "--controller", server.address, "--num-cpus", "2"],
                            env={**_env(tmp_path), TOKEN_ENV: AUTH.token or ""}, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        workload = Workload("fashion-mnist", MODEL, RECIPE,
                            str(tmp_path / "w"), train_subset=512, val_subset=256)
        handles = [board.submit(Trial(f"s{i}", SPACE.from_string(GOOD), (), ""), workload,
                                Resources()) for i in range(2)]
        outcomes = [h.wait(WAIT_S) for h in handles]
        assert all(o is not None and o.result.status is TrialStatus.SUCCEEDED
                   for o in outcomes)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        board.close()
        server.stop()
    assert proc.returncode == 0, output[-3000:]
    assert "worker service stopped" in output
    # no orphans: nothing of its process group (Ray's processes included) is left
    time.sleep(1.0)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)



def test_orchestration_benchmark_runs(ray_local: None, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    from bench import orchestration

    code = orchestration.main(["--children", "4", "--workers", "2", "--epochs", "1",
                               "--train-subset", "256", "--no-write"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| dispatch (submit -> worker started) |" in out and "of a 60 s child" in out


def test_the_service_clusters_forget_job_reaches_the_workers_board(ray_local: None,
                                                                   tmp_path: Path) -> None:
    # Arrange: a job's trial no node can run fails at once, without training
    cluster = ServiceCluster(ClusterOptions(workers=1, log_dir=tmp_path / "logs"))
    try:
        assert cluster.workers is not None
        board = cluster.workers.board
        workload = Workload("fashion-mnist", MODEL, RECIPE, str(tmp_path / "w"))
        outcome = _wait(board.submit(Trial("job-z-t1", SPACE.from_string(GOOD), (), "",
                                           job_id="job-z"), workload, Resources(1.0, 64.0)))
        # Act
        forgotten = cluster.forget_job("job-z")
        sizes = board.sizes()
    finally:
        cluster.close()
    # Assert
    assert outcome.result.status is TrialStatus.FAILED and forgotten == 1
    assert (sizes.records, sizes.tombstones, sizes.jobs) == (0, 0, 0)
    assert ServiceCluster(ClusterOptions(log_dir=tmp_path / "logs")).forget_job("job-z") == 0
