"""Train one child end to end: build it, train it, save its weights, measure it (params,
FLOPs by forward hooks, batch-1 latency on the training device: ``worker.measure``).

The one routine behind both the controller's in-process ``train`` evaluator and the Ray workers,
so a child trained either way gets the same reward, metrics and weights file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from protos.types import Architecture
from worker.builders import ChildNet, ModelSpec, build_model
from worker.datasets import DatasetSplits
from worker.measure import device_index, latency_ms
from worker.trainer import ProgressCallback, TrainingFailed, TrainRecipe, train
from worker.trainer_recipe import resolve_device


class ChildFailed(RuntimeError):
    """The child cannot be built or trained (bad op, NaN loss, out of memory): final, not
    worth retrying; the message says why."""


@dataclass(frozen=True)
class TrainedChild:
    """A trained child's reward, measurements and saved weights."""

    reward: float
    metrics: dict[str, float]
    weights: Path
    epochs_trained: int


def arch_key(arch: Architecture) -> str:
    """A file-name-safe digest of an architecture's nodes."""
    nodes = [[n.type, n.op, list(n.inputs), n.cell, dict(n.attrs)] for n in arch.nodes]
    return hashlib.sha256(json.dumps([arch.space, nodes]).encode()).hexdigest()[:16]


def build_child(arch: Architecture, spec: ModelSpec) -> ChildNet:
    """The untrained child; ChildFailed when the architecture cannot be built."""
    try:
        return build_model(arch, spec)
    except (KeyError, ValueError) as exc:
        raise ChildFailed(f"cannot build the child: {exc}") from None


def train_child(arch: Architecture, splits: DatasetSplits, spec: ModelSpec, recipe: TrainRecipe,
                weights_dir: Path, progress_cb: ProgressCallback | None = None) -> TrainedChild:
    """Build and train ``arch``; save its weights as ``weights_dir/<arch_key>.pt``.

    ``progress_cb`` may stop training early (see ``worker.trainer.train``); the metrics then say
    how many epochs were trained. Deterministic on the CPU for a recipe's seed. Frees the model
    (and cached CUDA memory) before returning.
    """
    # The initial weights come from the recipe's seed, not from whatever this process drew
    # before: the same child trains to the same result in any worker process.
    torch.manual_seed(recipe.seed)
    model = build_child(arch, spec)
    try:
        report = train(model, splits, recipe, progress_cb)
    except TrainingFailed as exc:
        raise ChildFailed(str(exc)) from None
    weights_dir.mkdir(parents=True, exist_ok=True)
    path = weights_dir / f"{arch_key(arch)}.pt"
    tmp = path.with_suffix(f".tmp{id(model)}")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    size = (splits.image_size, splits.image_size)
    device = resolve_device(recipe.device)  # where it was trained: latency is measured there
    latency = {"latency_ms": latency_ms(model, size, device),
               "latency_device": device_index(device)}
    metrics = {"val_accuracy": report.final_val_accuracy, "params": float(model.num_params()),
               "flops": float(model.cpu().flops(size)), "train_seconds": report.train_seconds,
               "epochs": float(report.epochs_trained), "train_loss": report.train_losses[-1],
               **latency}
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return TrainedChild(report.reward, metrics, path, report.epochs_trained)
