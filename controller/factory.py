"""Builds the search's parts from a SearchConfig (registries, no if-chains in the loop).

Part of the composition root: it wires the worker's trainer in as the local ``train`` evaluator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from controller.config import ENAS_SPACES, ConfigError, SearchConfig
from controller.evaluators.base import Evaluator
from controller.evaluators.measured import MeasuredEvaluator
from controller.evaluators.nb201 import NB201Evaluator
from controller.evaluators.synthetic import SyntheticEvaluator
from controller.local_training import TrainEvaluator
from controller.objectives import parse_objective
from controller.policy.lstm import LSTMPolicy
from controller.policy.novelty import NoveltyIndex
from controller.policy.ranking import OverlapGP
from controller.policy.reinforce import ReinforceConfig
from controller.policy.updaters import ParameterUpdater
from controller.presets import CONTROLLER_PRESETS
from controller.spaces import SearchSpace, create_space
from controller.spaces.cell import CellSpace
from controller.spaces.macro import MacroSpace
from controller.spaces.nb201 import OPS as NB201_OPS
from controller.spaces.nb201 import NB201Space
from controller.strategies.base import Strategy
from controller.strategies.enas import EnasStrategy, SharedWeights
from controller.strategies.evolution import EvolutionStrategy
from controller.strategies.optuna_samplers import OptunaStrategy
from controller.strategies.pnas import PNASStrategy
from controller.strategies.random_search import RandomStrategy
from controller.strategies.reinforce import ReinforceStrategy
from controller.text_training import TextLMEvaluator
from protos.types import SearchSpaceSpec
from worker.builders import ModelSpec
from worker.datasets import load_dataset
from worker.measure import NB201Costs
from worker.supernet import CellSupernet, MacroSupernet, NB201Supernet, Supernet
from worker.text_lm import LMRecipe
from worker.trainer import TrainRecipe
from worker.trainer_recipe import resolve_device
from worker.weight_sharing import SharedRecipe, SharedTrainer


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
    "enas": lambda space, cfg: build_enas(space, cfg),
    "tpe": lambda space, cfg: OptunaStrategy(space, "tpe", seed=cfg.seed),
    "gp": lambda space, cfg: OptunaStrategy(space, "gp", seed=cfg.seed),
}


def build_supernet(space: SearchSpace, spec: ModelSpec) -> Supernet:
    """The weight-sharing supernet of a space (enas-micro, nasnet, macro, nb201)."""
    if isinstance(space, CellSpace):
        return CellSupernet(spec, space.ops, space.combines, space.num_blocks)
    if isinstance(space, MacroSpace):
        return MacroSupernet(spec, space.num_layers)
    if isinstance(space, NB201Space):
        return NB201Supernet(spec, NB201_OPS)
    raise ConfigError(f"space: --strategy enas shares weights on {', '.join(ENAS_SPACES)}, "
                      f"not {space.name!r}")


def build_enas(space: SearchSpace, cfg: SearchConfig) -> EnasStrategy:
    """ENAS: the job's controller preset (``enas`` unless another is named) and a supernet
    sized like the job's children, trained on the job's dataset (loaded when the search
    starts, not when the strategy is built)."""
    check_device(cfg.device)
    try:
        recipe = SharedRecipe(epochs=cfg.enas_epochs, batch_size=cfg.batch_size,
                              learning_rate=cfg.lr, weight_decay=cfg.weight_decay,
                              seed=cfg.seed, device=cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def make_shared() -> SharedWeights:
        splits = load_dataset(str(cfg.dataset), cfg.data_dir, seed=cfg.seed,
                              train_subset=cfg.train_subset, val_subset=cfg.val_subset)
        spec = ModelSpec(in_channels=splits.in_channels, num_classes=splits.num_classes,
                         cells=cfg.cells, filters=cfg.filters)
        torch.manual_seed(cfg.seed)
        return SharedTrainer(build_supernet(space, spec), splits, recipe)

    # its controller steps sample the children that train the shared weights: with replacement
    return EnasStrategy(space, build_reinforce(space, cfg, with_replacement=True), make_shared,
                        epochs=cfg.enas_epochs, controller_steps=cfg.controller_steps,
                        derive_samples=cfg.derive_samples)

def check_device(device: str) -> None:
    """ConfigError naming ``device`` when it asks for CUDA where this process has none (before
    any data is loaded or process started)."""
    try:
        resolve_device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: {exc}; use --device auto (CUDA when present) or cpu") \
            from None


def _train_evaluator(cfg: SearchConfig) -> Evaluator:
    if cfg.dataset == "text":
        return _text_evaluator(cfg)
    check_device(cfg.device)
    try:
        recipe = TrainRecipe(epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.lr,
                             weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing,
                             reward=cfg.reward, cube_reward=cfg.cube_reward, seed=cfg.seed,
                             device=cfg.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    spec_args = {"cells": cfg.cells, "filters": cfg.filters, "drop_path": cfg.drop_path,
                 "aux_head": cfg.aux_head}
    return TrainEvaluator.from_data(str(cfg.dataset), cfg.data_dir, cfg.seed, cfg.train_subset,
                                    cfg.val_subset, spec_args, recipe,
                                    Path(str(cfg.out)) / "children")


def _text_evaluator(cfg: SearchConfig) -> Evaluator:
    """Char-LM children of a recurrent-cell space on ``cfg.corpus``."""
    recipe = LMRecipe(steps=cfg.lm_steps, bptt=cfg.bptt, batch_size=cfg.batch_size,
                      hidden=cfg.lm_hidden, seed=cfg.seed, reward_c=cfg.reward_c)
    return TextLMEvaluator.from_corpus(cfg.corpus, cfg.train_subset, cfg.val_subset, recipe)


def _nb201_evaluator(cfg: SearchConfig) -> Evaluator:
    """Table lookups, with params and FLOPs of the cell's network at the benchmark's size (and
    its CPU latency when an objective needs it)."""
    table = NB201Evaluator(str(cfg.dataset), Path(cfg.nb201_csv) if cfg.nb201_csv else None,
                           simulate_seconds=cfg.simulate_seconds)
    latency = any(parse_objective(o).metric == "latency_ms" for o in cfg.objectives)
    return MeasuredEvaluator(table, NB201Costs(str(cfg.dataset), latency),
                             "latency" if latency else "")


def _synthetic_evaluator(cfg: SearchConfig) -> Evaluator:
    """A seeded reward landscape over the job's space with a known optimum: no training."""
    return SyntheticEvaluator(build_space(cfg), cfg.landscape_seed, cfg.simulate_seconds)


EVALUATOR_FACTORIES: dict[str, Callable[[SearchConfig], Evaluator]] = {
    "nb201": _nb201_evaluator,
    "train": _train_evaluator,
    "synthetic": _synthetic_evaluator,
}


def build_strategy(space: SearchSpace, cfg: SearchConfig) -> Strategy:
    """The strategy the config names."""
    return STRATEGY_FACTORIES[cfg.strategy](space, cfg)


def build_evaluator(cfg: SearchConfig) -> Evaluator:
    """The evaluator the config names; raises EvaluatorError when its data is missing."""
    return EVALUATOR_FACTORIES[cfg.evaluator](cfg)
