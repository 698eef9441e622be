"""SearchSpec messages to and from the settings of a SearchConfig, validated once.

A bad spec becomes INVALID_ARGUMENT naming the field as the wire spells it
(``spec.controller.learning_rate``), never a config name the client has not seen.
"""

from __future__ import annotations

from typing import Any

from controller.config import ConfigError, SearchConfig, build_config
from controller.service.objectives_spec import (
    check_objectives,
    objectives_settings,
    objectives_to_proto,
)
from protos.errors import InvalidArgumentError
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from protos.v1 import worker_pb2 as wk

# config field -> where the spec carries it
WIRE_NAMES = {
    "space": "spec.space.name", "num_blocks": "spec.space.num_blocks",
    "num_layers": "spec.space.num_layers", "predict_strides": "spec.space.predict_strides",
    "strategy": "spec.strategy", "controller": "spec.controller.preset",
    "children": "spec.controller.children", "controller_lr": "spec.controller.learning_rate",
    "entropy_weight": "spec.controller.entropy_weight",
    "baseline_decay": "spec.controller.baseline_decay",
    "reward_transform": "spec.controller.reward_transform",
    "ppo_clip": "spec.controller.ppo_clip", "ppo_epochs": "spec.controller.ppo_epochs",
    "candidates": "spec.controller.candidates",
    "evaluator": "spec.evaluation.evaluator", "dataset": "spec.evaluation.dataset",
    "train_subset": "spec.evaluation.train_subset", "val_subset": "spec.evaluation.val_subset",
    "failure_reward": "spec.evaluation.failure_reward", "cells": "spec.evaluation.model.cells",
    "filters": "spec.evaluation.model.filters",
    "drop_path": "spec.evaluation.model.drop_path",
    "aux_head": "spec.evaluation.model.aux_head", "epochs": "spec.evaluation.recipe.epochs",
    "batch_size": "spec.evaluation.recipe.batch_size",
    "lr": "spec.evaluation.recipe.learning_rate",
    "weight_decay": "spec.evaluation.recipe.weight_decay",
    "label_smoothing": "spec.evaluation.recipe.label_smoothing",
    "reward": "spec.evaluation.recipe.reward",
    "cube_reward": "spec.evaluation.recipe.cube_reward",
    "device": "spec.execution.device", "budget": "spec.budget", "seed": "spec.seed",
    "replicas": "spec.execution.replicas", "parallel": "spec.execution.parallel",
    "staleness": "spec.execution.staleness",
    "population": "spec.strategy_options.population",
    "tournament": "spec.strategy_options.tournament", "beam": "spec.strategy_options.beam",
    "surrogate": "spec.strategy_options.surrogate",
    "enas_epochs": "spec.strategy_options.enas_epochs",
    "controller_steps": "spec.strategy_options.controller_steps",
    "derive_samples": "spec.strategy_options.derive_samples",
    "objectives": "spec.objectives", "corpus": "spec.evaluation.corpus",
    "lm_steps": "spec.evaluation.lm_steps", "lm_hidden": "spec.evaluation.lm_hidden",
    "bptt": "spec.evaluation.bptt", "reward_c": "spec.evaluation.reward_c",
    "landscape_seed": "spec.evaluation.landscape_seed",
    "simulate_seconds": "spec.evaluation.simulate_seconds",
}
MAX_BUDGET = 100_000
# A job turns these into threads and batch sizes of this service: each needs a bound, or one
# submit (replicas 2**31-1: a list of two billion replica threads) exhausts the service.
MAX_REPLICAS = 256       # spec.execution.replicas: controller replica threads
MAX_PARALLEL = 256       # spec.execution.parallel: children evaluated at once
MAX_CHILDREN = 1024      # spec.controller.children: m, children sampled per policy update
MAX_CANDIDATES = 1024    # spec.controller.candidates: draws ranked per proposal


def _optional(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def spec_settings(spec: sp.SearchSpec) -> dict[str, Any]:
    """The config settings a spec sets (defaults left out), without validating them."""
    c, e = spec.controller, spec.evaluation
    settings: dict[str, Any] = {
        "space": spec.space.name or None, "num_blocks": spec.space.num_blocks or None,
        "num_layers": spec.space.num_layers or None,
        "predict_strides": spec.space.predict_strides or None,
        "strategy": spec.strategy or None, "controller": c.preset or None,
        "children": _optional(c, "children"), "controller_lr": _optional(c, "learning_rate"),
        "entropy_weight": _optional(c, "entropy_weight"),
        "baseline_decay": _optional(c, "baseline_decay"),
        "ppo_clip": _optional(c, "ppo_clip"), "ppo_epochs": _optional(c, "ppo_epochs"),
        "candidates": _optional(c, "candidates"),
        "reward_transform": c.reward_transform or None, "evaluator": e.evaluator or None,
        "dataset": e.dataset or None, "train_subset": e.train_subset or None,
        "val_subset": e.val_subset or None, "failure_reward": e.failure_reward,
        "corpus": e.corpus or None, "lm_steps": e.lm_steps or None,
        "lm_hidden": e.lm_hidden or None, "bptt": e.bptt or None,
        "reward_c": e.reward_c or None, "landscape_seed": e.landscape_seed or None,
        "simulate_seconds": e.simulate_seconds or None,
        "device": spec.execution.device or None,
        "budget": spec.budget, "seed": spec.seed,
        "replicas": spec.execution.replicas or None, "parallel": spec.execution.parallel or None,
        "staleness": _optional(spec.execution, "staleness"),
        "population": spec.strategy_options.population or None,
        "tournament": spec.strategy_options.tournament or None,
        "beam": spec.strategy_options.beam or None,
        "surrogate": spec.strategy_options.surrogate or None,
        "enas_epochs": spec.strategy_options.enas_epochs or None,
        "controller_steps": spec.strategy_options.controller_steps or None,
        "derive_samples": spec.strategy_options.derive_samples or None,
        "objectives": objectives_settings(spec.objectives) or None}
    if e.HasField("model"):
        settings.update(cells=e.model.cells, filters=e.model.filters,
                        drop_path=e.model.drop_path, aux_head=e.model.aux_head)
    if e.HasField("recipe"):
        r = e.recipe
        settings.update(epochs=r.epochs, batch_size=r.batch_size, lr=r.learning_rate,
                        weight_decay=r.weight_decay, label_smoothing=r.label_smoothing,
                        reward=r.reward or "last", cube_reward=r.cube_reward)
        if r.device and spec.execution.device and r.device != spec.execution.device:
            raise InvalidArgumentError(f"spec.evaluation.recipe.device: {r.device!r} differs "
                                       f"from spec.execution.device {spec.execution.device!r}; "
                                       f"set spec.execution.device only")
        if settings["device"] is None:  # an older client names it in the recipe
            settings["device"] = r.device or None
        for name, default in (("lr_schedule", ""), ("aux_weight", 0.0), ("seed", 0)):
            if getattr(r, name) != default:
                raise InvalidArgumentError(f"spec.evaluation.recipe.{name}: not settable per "
                                           f"job (the recipe seed is spec.seed)")
    return {k: v for k, v in settings.items() if v is not None}


def spec_to_config(spec: sp.SearchSpec) -> SearchConfig:
    """Validate a spec into the config its job runs with."""
    if not 1 <= spec.budget <= MAX_BUDGET:
        raise InvalidArgumentError(f"spec.budget: must be in [1, {MAX_BUDGET}], got "
                                   f"{spec.budget}")
    if spec.seed < 0:
        raise InvalidArgumentError(f"spec.seed: must be >= 0, got {spec.seed}")
    for name, value, most in (
            ("spec.execution.replicas", spec.execution.replicas, MAX_REPLICAS),
            ("spec.execution.parallel", spec.execution.parallel, MAX_PARALLEL),
            ("spec.controller.children", spec.controller.children, MAX_CHILDREN),
            ("spec.controller.candidates", spec.controller.candidates, MAX_CANDIDATES)):
        if value > most:
            raise InvalidArgumentError(f"{name}: at most {most}, got {value}")
    check_objectives(spec.objectives)
    try:
        return build_config(spec_settings(spec))
    except ConfigError as exc:
        field, _, rest = str(exc).partition(":")
        raise InvalidArgumentError(f"{WIRE_NAMES.get(field, field)}:{rest}") from None


def spec_from_settings(settings: dict[str, Any]) -> sp.SearchSpec:
    """The spec a stored job was submitted with (the inverse of ``spec_settings``)."""
    s = settings
    controller = sp.ControllerSpec(preset=s.get("controller", ""),
                                   reward_transform=s.get("reward_transform", ""))
    for name, key in (("children", "children"), ("learning_rate", "controller_lr"),
                      ("entropy_weight", "entropy_weight"),
                      ("baseline_decay", "baseline_decay"), ("ppo_clip", "ppo_clip"),
                      ("ppo_epochs", "ppo_epochs"), ("candidates", "candidates")):
        if key in s:
            setattr(controller, name, s[key])
    evaluation = sp.EvaluationSpec(evaluator=s.get("evaluator", ""),
                                   dataset=s.get("dataset", ""),
                                   train_subset=s.get("train_subset", 0),
                                   val_subset=s.get("val_subset", 0),
                                   failure_reward=s.get("failure_reward", 0.0),
                                   corpus=s.get("corpus", ""), lm_steps=s.get("lm_steps", 0),
                                   lm_hidden=s.get("lm_hidden", 0), bptt=s.get("bptt", 0),
                                   reward_c=s.get("reward_c", 0.0),
                                   landscape_seed=s.get("landscape_seed", 0),
                                   simulate_seconds=s.get("simulate_seconds", 0.0))
    if "cells" in s:
        evaluation.model.CopyFrom(wk.ChildSize(cells=s["cells"], filters=s["filters"],
                                               drop_path=s["drop_path"],
                                               aux_head=s["aux_head"]))
    if "epochs" in s:
        evaluation.recipe.CopyFrom(wk.TrainingRecipe(
            epochs=s["epochs"], batch_size=s["batch_size"], learning_rate=s["lr"],
            weight_decay=s["weight_decay"], label_smoothing=s["label_smoothing"],
            reward=s["reward"], cube_reward=s["cube_reward"]))
    execution = sp.ExecutionSpec(replicas=s.get("replicas", 0), parallel=s.get("parallel", 0),
                                 device=s.get("device", ""))
    options = sp.StrategyOptions(population=s.get("population", 0),
                                 tournament=s.get("tournament", 0), beam=s.get("beam", 0),
                                 surrogate=s.get("surrogate", ""),
                                 enas_epochs=s.get("enas_epochs", 0),
                                 controller_steps=s.get("controller_steps", 0),
                                 derive_samples=s.get("derive_samples", 0))
    if "staleness" in s:
        execution.staleness = s["staleness"]
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name=s.get("space", ""),
                                                  num_blocks=s.get("num_blocks", 0),
                                                  num_layers=s.get("num_layers", 0),
                                                  predict_strides=s.get("predict_strides",
                                                                        False)),
                         strategy=s.get("strategy", ""), controller=controller,
                         evaluation=evaluation, budget=s["budget"], seed=s["seed"],
                         execution=execution, strategy_options=options,
                         objectives=objectives_to_proto(s.get("objectives", ())))
