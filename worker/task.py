"""One attempt at one trial, as run inside a worker process (a Ray task calls ``run_attempt``).

start -> heartbeats (a thread) -> train with per-epoch progress reports (the controller may answer
"stop": early stopping) -> the result, reported until acknowledged. A child that fails by itself
is reported FAILED with the reason; an attempt the controller says is superseded is abandoned
without a result. Torch uses as many threads as the task was given CPUs.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from protos import codec
from protos.cluster_auth import ClusterAuth
from protos.types import Architecture, TrialResult, TrialStatus, Workload
from protos.v1 import worker_pb2 as wk
from worker.builders import ModelSpec
from worker.child import ChildFailed, train_child
from worker.datasets import DatasetError, DatasetSplits, load_dataset
from worker.reporting import TrialReporter, shared_reporter
from worker.trainer import TrainRecipe
from worker.trainer_recipe import resolve_device


@dataclass(frozen=True)
class AttemptSummary:
    """What the task returns to its scheduler (the result itself went to the controller)."""

    trial_id: str
    attempt: int
    outcome: str  # "reported" | "superseded"
    worker: str


@functools.lru_cache(maxsize=2)
def _splits(dataset: str, data_dir: str | None, seed: int, train_subset: int | None,
            val_subset: int | None) -> DatasetSplits:
    """The dataset, loaded once per worker process (Ray reuses its processes)."""
    return load_dataset(dataset, data_dir, seed=seed, train_subset=train_subset,
                        val_subset=val_subset)


def load_workload_data(w: Workload) -> DatasetSplits:
    """The workload's splits (cached in this process)."""
    return _splits(w.dataset, w.data_dir, w.data_seed, w.train_subset, w.val_subset)


class _Heartbeat:
    """Reports every ``interval`` seconds until stopped; remembers a "superseded" answer."""

    def __init__(self, reporter: TrialReporter, trial_id: str, attempt: int,
                 interval: float) -> None:
        self.reporter, self.trial_id, self.attempt = reporter, trial_id, attempt
        self.interval = interval
        self.superseded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}",
                                        daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ack = self.reporter.heartbeat(self.trial_id, self.attempt)
            except Exception:  # the controller is away: keep training; the next beat retries
                continue
            if ack.superseded:
                self.superseded.set()
                return


def run_attempt(task: wk.TrialTask, controller: str,
                auth: ClusterAuth | None = None) -> AttemptSummary:
    """Train ``task``'s child and report to the controller at ``controller`` (host:port), with
    ``auth``'s cluster token."""
    trial = codec.trial_from_proto(task.trial)
    workload = codec.workload_from_proto(task.workload)
    threads = max(1, int(task.resources.num_cpus))
    torch.set_num_threads(threads)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    reporter = shared_reporter(controller, auth)
    tid, attempt = trial.trial_id, trial.attempt
    if reporter.start(tid, attempt, worker, _device(workload)).superseded:
        return AttemptSummary(tid, attempt, "superseded", worker)
    with _Heartbeat(reporter, tid, attempt, task.heartbeat_seconds or 5.0) as beat:
        result, artifacts = _train(trial.architecture, workload, reporter, tid, attempt, beat)
    if result is None:
        return AttemptSummary(tid, attempt, "superseded", worker)
    reporter.result(tid, attempt, result, artifacts)
    return AttemptSummary(tid, attempt, "reported", worker)


def _device(workload: Workload) -> str:
    try:
        return str(resolve_device(str(workload.recipe.get("device", "auto"))))
    except RuntimeError as exc:  # CUDA asked for where there is none: training will say so
        return f"unavailable ({exc})"


def _train(arch: Architecture, workload: Workload, reporter: TrialReporter, tid: str,
           attempt: int, beat: _Heartbeat) -> tuple[TrialResult | None, dict[str, str]]:
    """(result, artifacts), or (None, {}) when the attempt was superseded meanwhile."""
    stopped: list[str] = []

    def progress(epoch: int, loss: float, accuracy: float) -> bool:
        ack = reporter.progress(tid, attempt, epoch + 1, loss, accuracy)
        if ack.superseded:
            beat.superseded.set()
        elif ack.stop:
            stopped.append(ack.reason)
        return bool(ack.stop or ack.superseded or beat.superseded.is_set())

    try:
        recipe = TrainRecipe(**dict(workload.recipe))  # type: ignore[arg-type]
        splits = load_workload_data(workload)
        spec = ModelSpec(in_channels=splits.in_channels, num_classes=splits.num_classes,
                         **dict(workload.model))  # type: ignore[arg-type]
        child = train_child(arch, splits, spec, recipe, Path(workload.weights_dir), progress)
    except (ChildFailed, DatasetError, ValueError, TypeError) as exc:
        if beat.superseded.is_set():
            return None, {}
        return TrialResult(tid, TrialStatus.FAILED, 0.0, error=str(exc)), {}
    if beat.superseded.is_set():
        return None, {}
    metrics = dict(child.metrics)
    metrics["max_epochs"] = float(recipe.epochs)
    if stopped:
        metrics["stopped_early"] = 1.0
    return (TrialResult(tid, TrialStatus.SUCCEEDED, child.reward, metrics),
            {"weights": str(child.weights), **({"stopped": stopped[0]} if stopped else {})})

