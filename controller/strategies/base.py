"""The strategy contract: ``suggest`` trials, ``report`` their results by trial id."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from controller.spaces.base import SearchSpace
from protos.types import Architecture, Trial, TrialResult


class UnknownTrial(KeyError):
    """A report for a trial this strategy never issued (or already received)."""


class Strategy(ABC):
    """Proposes architectures and learns from their results.

    Contract: every trial returned by ``suggest`` carries the actions that encode its architecture;
    ``report`` must be called at most once per trial id, with that trial's own result (raises
    UnknownTrial otherwise). Strategies never see test accuracies.
    """

    name: str = ""
    batch_size: int = 1  # how many trials it likes to hand out at once

    def __init__(self, space: SearchSpace, job_id: str = "") -> None:
        self.space = space
        self.job_id = job_id
        self._counter = 0
        self._pending: dict[str, Trial] = {}

    def _new_trial(self, arch: Architecture, actions: Sequence[int] | None = None,
                   policy_version: int = 0) -> Trial:
        self._counter += 1
        prefix = f"{self.job_id}-" if self.job_id else ""
        trial = Trial(trial_id=f"{prefix}t{self._counter:06d}", architecture=arch,
                      actions=tuple(actions) if actions is not None else self.space.encode(arch),
                      arch_hash=self.space.canonical_hash(arch), policy_version=policy_version,
                      job_id=self.job_id)
        self._pending[trial.trial_id] = trial
        return trial

    def _take(self, trial_id: str, result: TrialResult) -> Trial:
        if result.trial_id != trial_id:
            raise UnknownTrial(f"result for {result.trial_id!r} reported as {trial_id!r}")
        try:
            return self._pending.pop(trial_id)
        except KeyError:
            raise UnknownTrial(f"trial {trial_id!r} was not issued by this strategy or was "
                               "already reported") from None

    @abstractmethod
    def suggest(self, n: int = 1) -> list[Trial]:
        """Up to ``n`` new trials."""

    @abstractmethod
    def report(self, trial_id: str, result: TrialResult) -> None:
        """Learn from the result of a trial this strategy issued."""

    def stats(self) -> dict[str, float]:
        """Numbers worth showing while the search runs (policy entropy, baseline, ...)."""
        return {}

    def checkpoint(self) -> dict[str, Any] | None:
        """What a resumed run needs to learn on where this one is (a bounded JSON document,
        kept by the job store with each policy note); None: nothing beyond ``resume``'s
        history (the default)."""
        return None

    def restore(self, checkpoint: Mapping[str, Any]) -> None:  # noqa: B027
        """Take up what ``checkpoint()`` returned in an earlier run. Nothing by default."""

    def prepare(self, stop: Callable[[], bool],  # noqa: B027
                note: Callable[[str, dict[str, Any]], None]) -> None:
        """Work before the first proposal, journalled through ``note(kind, doc)`` (a ``policy``
        note per policy update); ``stop()`` cuts it short. Nothing by default; ENAS trains its
        supernet and controller here."""

    def resume(self, history: Iterable[tuple[Sequence[int], float]]) -> None:  # noqa: B027
        """Take up a job an earlier run started: ``history`` is what it evaluated (actions,
        reward), in the order the trials started. By default nothing is kept from it (the
        evaluation cache still makes its architectures free)."""
