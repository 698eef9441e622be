"""ENAS (Pham et al. 2018): the controller learns on children evaluated with shared weights.

``search_supernet`` alternates, per epoch, one pass of shared-weight training (each minibatch
trains the child the controller samples for it) with ``controller_steps`` REINFORCE steps, each
rewarded by a sampled child's accuracy on a validation minibatch under the shared weights. It
then derives: ``derive_samples`` children are sampled from the trained policy and scored on the
same validation data; the best-scored comes first.

As a strategy, ENAS then proposes the derived children in that order: each trial is the child
trained from scratch by the job's evaluator, so ``budget`` counts from-scratch trainings (1:
ENAS's protocol, the single best-scored child). The supernet phase's wall time is the search
cost, reported in CPU- or GPU-hours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from controller.strategies.reinforce import ReinforceStrategy
from protos.types import Architecture, Trial, TrialResult, TrialStatus


class EpochStats(Protocol):
    """What one pass of shared-weight training reports."""

    loss: float
    accuracy: float
    seconds: float


class SharedWeights(Protocol):
    """A supernet with its trainer (``worker.weight_sharing.SharedTrainer``)."""

    seconds: float

    def train_epoch(self, sample: Callable[[], Architecture]) -> EpochStats:
        """One pass over the training data, ``sample()`` choosing each minibatch's child."""

    def score(self, arch: Architecture, batches: int = 1) -> float:
        """Accuracy of ``arch`` on the next validation minibatch(es)."""

    def score_all(self, arch: Architecture) -> float:
        """Accuracy of ``arch`` on the whole validation split."""

    def describe(self) -> dict[str, object]:
        """Device and sizes."""


@dataclass
class Derived:
    """A child sampled from the trained policy and its shared-weight score."""

    arch: str
    score: float


@dataclass
class SupernetReport:
    """The supernet phase: per-epoch numbers, the derived ranking and the cost."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    derived: list[Derived] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    threads: int = 1
    stopped: bool = False

    @property
    def device_hours(self) -> float:
        """Wall time x devices used: CPU cores (torch threads) or 1 GPU."""
        return self.seconds * (self.threads if self.device == "cpu" else 1) / 3600

    def to_json(self) -> dict[str, Any]:
        """result.json's ``enas`` section."""
        unit = "cpu_hours" if self.device == "cpu" else "gpu_hours"
        return {"epochs": self.epochs, "search_seconds": round(self.seconds, 2),
                "device": self.device, "threads": self.threads,
                unit: round(self.device_hours, 5),
                "derived": [{"arch": d.arch, "score": d.score} for d in self.derived],
                "stopped": self.stopped}


class EnasStrategy(Strategy):
    """Weight-sharing search, then the derived children one by one (best-scored first)."""

    name = "enas"

    def __init__(self, space: SearchSpace, controller: ReinforceStrategy,
                 make_shared: Callable[[], SharedWeights], epochs: int = 10,
                 controller_steps: int = 20, derive_samples: int = 16, job_id: str = "") -> None:
        for name, value in (("enas_epochs", epochs), ("controller_steps", controller_steps),
                            ("derive_samples", derive_samples)):
            if value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")
        super().__init__(space, job_id)
        self.controller = controller
        self.make_shared = make_shared
        self.epochs, self.controller_steps = epochs, controller_steps
        self.derive_samples = derive_samples
        self.report_: SupernetReport | None = None
        self.shared: SharedWeights | None = None
        self._queue: list[Derived] = []

    def _sample(self) -> Architecture:
        out = self.controller.policy.sample(1, generator=self.controller.generator)
        return self.space.decode(out.actions[0].tolist())

    def prepare(self, stop: Callable[[], bool],
                note: Callable[[str, dict[str, Any]], None]) -> None:
        """The supernet phase: each epoch's statistics as a ``policy`` note, then the report
        as a ``supernet`` note."""
        report = self.search_supernet(stop=stop, on_epoch=lambda stats: note("policy", stats))
        note("supernet", report.to_json())

    def search_supernet(self, stop: Callable[[], bool] = lambda: False,
                        on_epoch: Callable[[dict[str, float]], None] | None = None
                        ) -> SupernetReport:
        """Train the shared weights and the controller, then derive (once; later calls return
        the same report). ``stop()`` ends the search after the current epoch."""
        if self.report_ is not None:
            return self.report_
        started = time.perf_counter()
        shared = self.shared = self.make_shared()
        info = shared.describe()
        report = SupernetReport(device=str(info.get("device", "cpu")),
                                threads=int(str(info.get("threads", 1))))
        for epoch in range(1, self.epochs + 1):
            if stop():
                report.stopped = True
                break
            trained = shared.train_epoch(self._sample)
            rewards = []
            for _ in range(self.controller_steps):
                trial = self.controller.suggest(1)[0]
                reward = shared.score(trial.architecture)
                rewards.append(reward)
                self.controller.report(trial.trial_id, TrialResult(trial.trial_id,
                                                                  TrialStatus.SUCCEEDED, reward))
            stats = {"enas_epoch": float(epoch), "enas_epochs": float(self.epochs),
                     "shared_loss": trained.loss, "shared_accuracy": trained.accuracy,
                     "controller_reward": sum(rewards) / len(rewards),
                     "epoch_seconds": trained.seconds,
                     "policy_version": float(epoch),
                     **{k: v for k, v in self.controller.stats().items()
                        if k != "policy_version"}}
            report.epochs.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
        seen: dict[str, Derived] = {}
        for _ in range(self.derive_samples):
            arch = self._sample()
            key = self.space.canonical_hash(arch)
            if key not in seen:
                seen[key] = Derived(self.space.to_string(arch), shared.score_all(arch))
        report.derived = sorted(seen.values(), key=lambda d: -d.score)
        report.seconds = time.perf_counter() - started
        self.report_ = report
        self._queue = list(report.derived)
        return report

    def suggest(self, n: int = 1) -> list[Trial]:
        """The derived children in score order (after them, fresh samples of the policy)."""
        self.search_supernet()
        trials = []
        for _ in range(n):
            arch = self.space.from_string(self._queue.pop(0).arch) if self._queue \
                else self._sample()
            trials.append(self._new_trial(arch))
        return trials

    def report(self, trial_id: str, result: TrialResult) -> None:
        """From-scratch results teach the controller nothing more (the search is over)."""
        self._take(trial_id, result)

    def stats(self) -> dict[str, float]:
        if self.report_ is None or not self.report_.epochs:
            return {}
        return dict(self.report_.epochs[-1])
