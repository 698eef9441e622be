"""The evaluators and strategies that run the worker's code, wired into the controller's
parts: children trained by the worker's trainer (``train``, char-LM ``text``), NB201 lookups
with the worker's params/FLOPs counts, ENAS's supernet, and bundles of trained children.
``PARTS`` is what every job of this process is built from."""

from __future__ import annotations

from pathlib import Path

import torch

from controller.config import ENAS_SPACES, ConfigError, SearchConfig
from controller.evaluators.base import Evaluator
from controller.evaluators.measured import MeasuredEvaluator
from controller.evaluators.nb201 import NB201Evaluator
from controller.factory import CONTROLLER_PARTS, build_reinforce
from controller.objectives import parse_objective
from controller.parts import Parts
from controller.spaces import SearchSpace
from controller.spaces.cell import CellSpace
from controller.spaces.macro import MacroSpace
from controller.spaces.nb201 import OPS as NB201_OPS
from controller.spaces.nb201 import NB201Space
from controller.strategies.base import Strategy
from controller.strategies.enas import EnasStrategy, SharedWeights
from nas.bundle import write_bundles
from nas.local_training import TrainEvaluator
from nas.text_training import TextLMEvaluator
from worker.builders import ModelSpec
from worker.datasets import load_dataset
from worker.measure import NB201Costs
from worker.supernet import CellSupernet, MacroSupernet, NB201Supernet, Supernet
from worker.text_lm import LMRecipe
from worker.trainer import TrainRecipe
from worker.trainer_recipe import resolve_device
from worker.weight_sharing import SharedRecipe, SharedTrainer


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


PARTS: Parts = CONTROLLER_PARTS.extended(
    evaluators={"nb201": _nb201_evaluator, "train": _train_evaluator},
    strategies={"enas": build_enas}, bundles=write_bundles)


def build_strategy(space: SearchSpace, cfg: SearchConfig) -> Strategy:
    """The strategy the config names."""
    return PARTS.strategy(space, cfg)


def build_evaluator(cfg: SearchConfig) -> Evaluator:
    """The evaluator the config names; raises EvaluatorError when its data is missing."""
    return PARTS.evaluator(cfg)
