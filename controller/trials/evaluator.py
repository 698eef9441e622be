"""An evaluator that hands each trial to the worker services through the trial board.

``evaluate_trial`` queues the trial, waits for its one result (however many attempts it took),
and turns it into an Evaluation; a FAILED result becomes EvaluationFailed (the search gives it
the failure reward); one failed because the workers were lost for good (the board is
``broken``) fails the job with the reason: EvaluatorError. Cache key, description and test
accuracy come from ``local``, the in-process evaluator of the same data and recipe, so results
are shared with in-process runs.
"""

from __future__ import annotations

import itertools

from controller.evaluators.base import Evaluation, EvaluationFailed, Evaluator, EvaluatorError
from controller.trials.board import TrialBoard
from protos.errors import FailedPreconditionError
from protos.types import Architecture, Resources, Trial, TrialStatus, Workload


class DispatchEvaluator(Evaluator):
    """Trials trained by workers, reported back over gRPC to ``board``'s service."""

    def __init__(self, board: TrialBoard, workload: Workload, resources: Resources,
                 local: Evaluator, group: str = "") -> None:
        self.board = board
        self.group = group  # the job's tenant: workers are shared fairly between groups
        self.workload = workload
        self.resources = resources
        self.local = local
        self.name = local.name
        self._ids = itertools.count(1)

    @property
    def cache_key(self) -> str:
        return self.local.cache_key

    def evaluate(self, arch: Architecture) -> Evaluation:
        return self.evaluate_trial(Trial(f"direct{next(self._ids):06d}", arch, (), ""))

    def evaluate_trial(self, trial: Trial) -> Evaluation:
        try:
            outcome = self.board.submit(trial, self.workload, self.resources,
                                        group=self.group).wait()
        except FailedPreconditionError:
            if self.board.broken:  # the workers are lost for good: the job fails with why
                raise EvaluatorError(f"workers: {self.board.broken}") from None
            raise
        assert outcome is not None  # wait() without a timeout returns only with an outcome
        result = outcome.result
        attempts = f" ({outcome.attempts} attempts)" if outcome.attempts > 1 else ""
        if result.status is TrialStatus.FAILED and self.board.broken:
            raise EvaluatorError(f"workers: {self.board.broken}")
        if result.status is TrialStatus.FAILED:
            raise EvaluationFailed(result.error + attempts)
        metrics = dict(result.metrics)
        metrics["attempts"] = float(outcome.attempts)
        max_epochs = metrics.get("max_epochs", 0.0)
        cost = 1.0
        if outcome.stopped_at_epoch is not None and max_epochs > 0:
            metrics["stopped_at_epoch"] = float(outcome.stopped_at_epoch)
            cost = metrics.get("epochs", max_epochs) / max_epochs
        return Evaluation(result.reward, metrics, dict(outcome.artifacts), cost=cost)

    def test_accuracy(self, arch: Architecture) -> float | None:
        return self.local.test_accuracy(arch)

    def describe(self) -> dict[str, object]:
        return {**self.local.describe(), "workers": "ray",
                "resources": {"num_cpus": self.resources.num_cpus,
                              "num_gpus": self.resources.num_gpus}}
