"""Builds the controller's parts of a search from a SearchConfig: its space, the strategies
that are controller code only, and the synthetic evaluator (registries, no if-chains in the
loop). ``nas.wiring`` adds the parts that run the worker's code (trained children, ENAS)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from controller.config import SearchConfig
from controller.evaluators.base import Evaluator
from controller.evaluators.synthetic import SyntheticEvaluator
from controller.parts import Parts
from controller.policy.lstm import LSTMPolicy
from controller.policy.novelty import NoveltyIndex
from controller.policy.ranking import OverlapGP
from controller.policy.reinforce import ReinforceConfig
from controller.policy.updaters import ParameterUpdater
from controller.presets import CONTROLLER_PRESETS
from controller.spaces import SearchSpace, create_space
from controller.strategies.base import Strategy
from controller.strategies.evolution import EvolutionStrategy
from controller.strategies.optuna_samplers import OptunaStrategy
from controller.strategies.pnas import PNASStrategy
from controller.strategies.random_search import RandomStrategy
from controller.strategies.reinforce import ReinforceStrategy
from protos.types import SearchSpaceSpec


def build_space(cfg: SearchConfig) -> SearchSpace:
    """The search space the config names, with its size options."""
    return create_space(SearchSpaceSpec(cfg.space, cfg.num_blocks, cfg.num_layers,
                                        cfg.predict_strides))


def learner_config(cfg: SearchConfig) -> ReinforceConfig:
    """The controller preset's learning rule with the config's overrides."""
    overrides: dict[str, Any] = {k: v for k, v in (("learning_rate", cfg.controller_lr),
                                   ("entropy_weight", cfg.entropy_weight),
                                   ("baseline_decay", cfg.baseline_decay),
                                   ("reward_transform", cfg.reward_transform),
                                   ("clip", cfg.ppo_clip), ("epochs", cfg.ppo_epochs))
                                   if v is not None}
    return dataclasses.replace(CONTROLLER_PRESETS[cfg.controller].learner, **overrides)


def build_reinforce(space: SearchSpace, cfg: SearchConfig, seed: int | None = None,
                    updater: Callable[[LSTMPolicy], ParameterUpdater] | None = None,
                    novelty: NoveltyIndex | None = None, ranker: OverlapGP | None = None,
                    with_replacement: bool = False) -> ReinforceStrategy:
    """The REINFORCE strategy of a config (sampling ``seed``, parameters kept by ``updater``;
    the sequences already drawn in ``novelty`` and the surrogate ranking the draws in
    ``ranker``, both shared by a job's replicas)."""
    preset = CONTROLLER_PRESETS[cfg.controller]
    return ReinforceStrategy(space, seed=cfg.seed if seed is None else seed,
                             batch_size=cfg.children or preset.children, policy=preset.policy,
                             learner=learner_config(cfg), updater=updater, novelty=novelty,
                             with_replacement=with_replacement,
                             candidates=candidates_of(cfg), ranker=ranker)


def candidates_of(cfg: SearchConfig) -> int:
    """Draws ranked per proposal: the config's, else its controller preset's."""
    if cfg.candidates is not None:
        return cfg.candidates
    return CONTROLLER_PRESETS[cfg.controller].candidates


STRATEGY_FACTORIES: dict[str, Callable[[SearchSpace, SearchConfig], Strategy]] = {
    "reinforce": lambda space, cfg: build_reinforce(space, cfg),
    "random": lambda space, cfg: RandomStrategy(space, seed=cfg.seed),
    "evolution": lambda space, cfg: EvolutionStrategy(space, seed=cfg.seed,
                                                      population=cfg.population,
                                                      sample=cfg.tournament),
    "pnas": lambda space, cfg: PNASStrategy(space, seed=cfg.seed, beam=cfg.beam,
                                            surrogate=cfg.surrogate),
    "tpe": lambda space, cfg: OptunaStrategy(space, "tpe", seed=cfg.seed),
    "gp": lambda space, cfg: OptunaStrategy(space, "gp", seed=cfg.seed),
}


def _synthetic_evaluator(cfg: SearchConfig) -> Evaluator:
    """A seeded reward landscape over the job's space with a known optimum: no training."""
    return SyntheticEvaluator(build_space(cfg), cfg.landscape_seed, cfg.simulate_seconds)


EVALUATOR_FACTORIES: dict[str, Callable[[SearchConfig], Evaluator]] = {
    "synthetic": _synthetic_evaluator,
}

# the parts of a search that are controller code only
CONTROLLER_PARTS = Parts(EVALUATOR_FACTORIES, STRATEGY_FACTORIES)
