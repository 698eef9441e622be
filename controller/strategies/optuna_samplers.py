"""Strategies from the field's own libraries: Optuna's TPE and Gaussian-process samplers.

Users of Katib and NNI expect Bayesian optimisation next to RL. These strategies ask Optuna
for one categorical parameter per decision of the space (the decision's name, the choice's
index) and tell it each result, through Optuna's ask/tell interface on an in-memory study, so
they run in the same loop as every other strategy: the same evaluation cache (a repeated
proposal is a free hit the sampler is told about), the same budget accounting, the service and
its resume (``resume`` tells a new study every finished trial of the job).

- ``tpe``: ``optuna.samplers.TPESampler`` (Bergstra et al. 2011), multivariate (Falkner et al.
  2018: a joint density over the decisions, not one per decision), after 10 random startup
  trials.
- ``gp``: ``optuna.samplers.GPSampler``, Bayesian optimisation with a Gaussian process
  (Matern 5/2, ARD) and log expected improvement; it refits the GP on every trial, so each
  proposal costs O(n^3) in the trials so far: for budgets of hundreds, not tens of thousands.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Trial, TrialResult

SAMPLERS = ("tpe", "gp")
STARTUP_TRIALS = 10


def _sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          n_startup_trials=STARTUP_TRIALS)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    raise ValueError(f"sampler: {name!r} is not one of {', '.join(SAMPLERS)}")


class OptunaStrategy(Strategy):
    """An Optuna sampler over the space's decisions (``sampler``: tpe or gp)."""

    def __init__(self, space: SearchSpace, sampler: str, seed: int = 0, job_id: str = "") -> None:
        import optuna

        super().__init__(space, job_id)
        self.name = sampler
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        self.study = optuna.create_study(direction="maximize", sampler=_sampler(sampler, seed))
        self._distributions: dict[str, Any] = {d.name: optuna.distributions.CategoricalDistribution(
            list(range(d.num_choices))) for d in space.decisions}
        self._asked: dict[str, Any] = {}
        self._lock = threading.Lock()  # a study is told from the search's evaluation threads

    def suggest(self, n: int = 1) -> list[Trial]:
        trials = []
        with self._lock:
            for _ in range(n):
                asked = self.study.ask(self._distributions)
                actions = [int(asked.params[d.name]) for d in self.space.decisions]
                trial = self._new_trial(self.space.decode(actions), actions)
                self._asked[trial.trial_id] = asked
                trials.append(trial)
        return trials

    def report(self, trial_id: str, result: TrialResult) -> None:
        self._take(trial_id, result)
        with self._lock:
            self.study.tell(self._asked.pop(trial_id), result.reward)

    def resume(self, history: Iterable[tuple[Sequence[int], float]]) -> None:
        """Tell the study what an earlier run of the job evaluated (actions, reward)."""
        import optuna

        with self._lock:
            for actions, reward in history:
                params = {d.name: int(a) for d, a in zip(self.space.decisions, actions,
                                                         strict=True)}
                self.study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=self._distributions, value=float(reward)))
