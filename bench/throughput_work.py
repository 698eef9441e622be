"""The work of one trial in bench.throughput, for every system. Light imports only (no torch):
Ray's workers, Tune's actors and Optuna's processes import this module to run a trial."""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Any

from controller.evaluators.nb201 import default_csv, load_table
from controller.spaces.nb201 import OPS, NB201Space

DATASET = "cifar10"
LOOKUP_PREFIX = "nb201-lookup:"


@functools.lru_cache(maxsize=2)
def table(dataset: str = DATASET) -> dict[str, tuple[float, float]]:
    """The NB201 table, loaded once per process (Ray worker, Tune actor, Optuna worker)."""
    return load_table(default_csv(), dataset)


def lookup(actions: list[int], dataset: str = DATASET) -> float:
    """The work of one trial in every system: the table's reward of the cell ``actions``."""
    space = NB201Space()
    return table(dataset)[space.to_string(space.decode(actions))][0]


def lookup_attempt(task_bytes: bytes, controller: str, auth: Any = None) -> dict[str, Any]:
    """A Ray task: one attempt of one trial, as ``worker.task.run_attempt`` runs it (start and
    result reported to the controller over gRPC with ``auth``'s cluster token), with a table
    lookup as its work."""
    from protos import codec
    from protos.types import TrialResult, TrialStatus
    from protos.v1 import worker_pb2 as wk
    from worker.reporting import shared_reporter

    began = time.perf_counter()
    task = wk.TrialTask.FromString(task_bytes)
    trial = codec.trial_from_proto(task.trial)
    dataset = codec.workload_from_proto(task.workload).dataset.removeprefix(LOOKUP_PREFIX)
    tid, attempt = trial.trial_id, trial.attempt
    worker = f"{socket.gethostname()}:{os.getpid()}"
    reporter = shared_reporter(controller, auth)  # as run_attempt: one channel per process
    if reporter.start(tid, attempt, worker, "cpu").superseded:
        return {"trial_id": tid, "attempt": attempt, "outcome": "superseded", "worker": worker,
                "seconds": time.perf_counter() - began}
    space = NB201Space()
    reward = lookup(list(space.encode(trial.architecture)), dataset)
    reporter.result(tid, attempt, TrialResult(tid, TrialStatus.SUCCEEDED, reward,
                                              {"max_epochs": 0.0}), {})
    return {"trial_id": tid, "attempt": attempt, "outcome": "reported", "worker": worker,
            "seconds": time.perf_counter() - began}


def tune_trainable(config: dict[str, Any]) -> None:
    """Tune's trial: the same lookup, its reward reported once."""
    from ray import tune

    tune.report({"reward": lookup([OPS.index(config[f"e{i}"]) for i in range(6)])})


def optuna_worker(path: str, study_name: str, n_trials: int, seed: int, sampler: str,
                   ready: Any, go: Any, counter: Any) -> None:
    """A worker process: ``study.optimize`` on the shared journal, ``n_trials`` of them."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    table()  # loaded before the start, as the other systems' processes cache it
    storage = JournalStorage(JournalFileBackend(path))
    chosen = optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" \
        else optuna.samplers.RandomSampler(seed=seed)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=chosen)
    choices = list(range(len(OPS)))

    def objective(trial: optuna.Trial) -> float:
        return lookup([int(trial.suggest_categorical(f"e{i}", choices)) for i in range(6)])

    def count(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with counter.get_lock():
            counter.value += 1

    ready.release()
    go.wait()
    study.optimize(objective, n_trials=n_trials, callbacks=[count])
