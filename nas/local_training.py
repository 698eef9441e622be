"""The ``train`` evaluator: children built and trained for real, in this process.

Part of the composition root (with ``nas.cli`` and ``controller.factory``): the one place in
the controller that uses the worker package, as the local layout of what Ray workers do in a
cluster. Each trained child's weights are kept so the best can be tested and exported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from controller.evaluators.base import Evaluation, EvaluationFailed, Evaluator, EvaluatorError
from protos.types import Architecture
from worker.builders import ChildNet, ModelSpec, build_model
from worker.child import ChildFailed, arch_key, train_child
from worker.datasets import DatasetError, DatasetSplits, load_dataset
from worker.trainer import TrainRecipe, evaluate
from worker.trainer_recipe import resolve_device


class TrainEvaluator(Evaluator):
    """Builds the child with ``spec``, trains it with ``recipe`` on ``splits``; reward = the
    recipe's reward (validation accuracy). The test split is used only by ``test_accuracy``."""

    name = "train"

    def __init__(self, splits: DatasetSplits, spec: ModelSpec, recipe: TrainRecipe,
                 weights_dir: Path, data_dir: str | None = None, train_subset: int | None = None,
                 val_subset: int | None = None, data_seed: int = 0) -> None:
        self.splits = splits
        # where the splits came from, so a worker can load the same ones
        self.data_dir, self.data_seed = data_dir, data_seed
        self.train_subset, self.val_subset = train_subset, val_subset
        self.spec = spec
        self.recipe = recipe
        self.weights_dir = weights_dir
        self.device = resolve_device(recipe.device)
        weights_dir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_data(cls, dataset: str, data_dir: str | None, seed: int, train_subset: int | None,
                  val_subset: int | None, spec_args: Mapping[str, object], recipe: TrainRecipe,
                  weights_dir: Path) -> TrainEvaluator:
        """Load the dataset (EvaluatorError when it is missing) and size the children for it."""
        try:
            splits = load_dataset(dataset, data_dir, seed=seed, train_subset=train_subset,
                                  val_subset=val_subset)
        except DatasetError as exc:
            raise EvaluatorError(str(exc)) from None
        except ValueError as exc:
            raise EvaluatorError(f"dataset: {exc}") from None
        spec = ModelSpec(in_channels=splits.in_channels, num_classes=splits.num_classes,
                         **spec_args)  # type: ignore[arg-type]
        return cls(splits, spec, recipe, weights_dir, data_dir, train_subset, val_subset, seed)

    @property
    def cache_key(self) -> str:
        s = self.splits
        recipe = {k: v for k, v in vars(self.recipe).items() if k != "device"}
        ident = json.dumps([s.name, len(s.train_labels), len(s.val_labels),
                            int(s.train_indices.sum()), vars(self.spec), recipe], sort_keys=True)
        return f"train:{s.name}:{hashlib.sha256(ident.encode()).hexdigest()[:12]}"

    def build(self, arch: Architecture) -> ChildNet:
        """The untrained child network of ``arch``."""
        return build_model(arch, self.spec)

    def evaluate(self, arch: Architecture) -> Evaluation:
        try:
            child = train_child(arch, self.splits, self.spec, self.recipe, self.weights_dir)
        except ChildFailed as exc:
            raise EvaluationFailed(str(exc)) from None
        return Evaluation(reward=child.reward, metrics=child.metrics,
                          artifacts={"weights": str(child.weights)})

    def load_trained(self, arch: Architecture) -> ChildNet:
        """The child of ``arch`` with the weights its evaluation saved."""
        model = self.build(arch)
        state = torch.load(self.weights_dir / f"{arch_key(arch)}.pt", weights_only=True)
        model.load_state_dict(state)
        return model.eval()

    def test_accuracy(self, arch: Architecture) -> float | None:
        model = self.load_trained(arch)
        return evaluate(model.to(self.device), self.splits.test_images, self.splits.test_labels,
                        batch_size=2 * self.recipe.batch_size, device=self.device)

    def describe(self) -> dict[str, object]:
        """The recipe, the child size and the normalisation the exported bundle needs."""
        s = self.splits
        return {"name": self.name, "cache_key": self.cache_key, "dataset": s.name,
                "image_size": s.image_size, "train_images": len(s.train_labels),
                "val_images": len(s.val_labels), "test_images": len(s.test_labels),
                "mean": list(s.mean), "std": list(s.std), "model": vars(self.spec),
                "recipe": vars(self.recipe)}
