"""Train one child network on in-memory splits with plain PyTorch, on the CPU or CUDA.

On CUDA the data is moved to the device once and batches are sliced there; the model and
inputs use channels_last and the forward pass runs under bf16 autocast. On the CPU it is
plain fp32, and a run is deterministic for a recipe's seed.

Optional model hooks, found by attribute lookup:
- ``set_progress(p: float)``: called at the start of each epoch with p = epoch / epochs.
- ``forward_with_aux(x) -> (logits, aux_logits | None)``: used for training batches; the
  auxiliary loss is added with ``aux_weight``. Evaluation always calls ``model(x)``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from worker.datasets import DatasetSplits
from worker.trainer_recipe import (
    TrainingFailed,
    TrainRecipe,
    TrainReport,
    compute_reward,
    cosine_lr,
    resolve_device,
)

__all__ = ["ProgressCallback", "TrainRecipe", "TrainReport", "TrainingFailed", "evaluate",
           "train"]

# (epoch, train_loss, val_accuracy) -> True to stop training after this epoch
ProgressCallback = Callable[[int, float, float], bool | None]


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _memory_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _hook(model: nn.Module, name: str) -> Callable[..., Any] | None:
    hook = getattr(model, name, None)
    return hook if callable(hook) else None


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             device: torch.device | str) -> float:
    """Top-1 accuracy in [0, 1] of ``model(images)`` against ``labels``, in eval mode.

    Batches are moved to ``device`` unless already there; the model's train/eval mode is
    restored afterwards.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"images/labels: want equal non-zero lengths, got {len(images)} and "
                         f"{len(labels)}")
    device = torch.device(device)
    fmt = _memory_format(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        with torch.inference_mode(), _autocast(device):
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(device, memory_format=fmt)
                target = labels[start:start + batch_size].to(device)
                correct += (model(batch).argmax(dim=1) == target).sum()
    finally:
        model.train(was_training)
    return correct.item() / len(images)


def _batches(count: int, batch_size: int) -> list[tuple[int, int]]:
    bounds = [(s, min(s + batch_size, count)) for s in range(0, count, batch_size)]
    # A last batch of one image would break BatchNorm in training mode.
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds.pop()
    return bounds


class _EpochRunner:
    """Runs training epochs over data that already lies on the device."""

    def __init__(self, model: nn.Module, recipe: TrainRecipe, images: torch.Tensor,
                 labels: torch.Tensor, device: torch.device) -> None:
        self.model, self.recipe, self.images, self.labels = model, recipe, images, labels
        self.device = device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=recipe.learning_rate,
                                         momentum=0.9, nesterov=True,
                                         weight_decay=recipe.weight_decay)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.forward_with_aux = _hook(model, "forward_with_aux")
        self.batches = _batches(len(images), recipe.batch_size)
        self.shuffle = torch.Generator().manual_seed(recipe.seed)

    def _loss(self, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.forward_with_aux is None:
            return self.loss_fn(self.model(batch), target)
        logits, aux_logits = self.forward_with_aux(batch)
        loss = self.loss_fn(logits, target)
        if aux_logits is not None:
            loss = loss + self.recipe.aux_weight * self.loss_fn(aux_logits, target)
        return loss

    def _set_lr(self, epoch: int, step: int) -> None:
        recipe, steps = self.recipe, len(self.batches)
        if recipe.lr_schedule == "cosine-step":
            lr = cosine_lr(recipe.learning_rate, epoch * steps + step, recipe.epochs * steps)
        else:
            lr = cosine_lr(recipe.learning_rate, epoch, recipe.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def run_epoch(self, epoch: int) -> float:
        """One pass over the shuffled training data; the mean loss (aux term included)."""
        self.model.train()
        order = torch.randperm(len(self.images), generator=self.shuffle).to(self.device)
        total = torch.zeros((), device=self.device)
        seen = 0
        for step, (start, stop) in enumerate(self.batches):
            self._set_lr(epoch, step)
            rows = order[start:stop]
            batch = self.images[rows].contiguous(memory_format=_memory_format(self.device))
            with _autocast(self.device):
                loss = self._loss(batch, self.labels[rows])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
            self.optimizer.step()
            total += loss.detach().float() * (stop - start)
            seen += stop - start
        # One host sync an epoch: a NaN spreads to every later loss, so the sum shows it.
        mean = total.item() / seen
        if not math.isfinite(mean):
            raise TrainingFailed(f"non-finite training loss ({mean}) in epoch {epoch + 1} of "
                                 f"{self.recipe.epochs}")
        return mean


def _fit(model: nn.Module, splits: DatasetSplits, recipe: TrainRecipe, device: torch.device,
         progress_cb: ProgressCallback | None) -> tuple[list[float], list[float]]:
    fmt = _memory_format(device)
    set_progress = _hook(model, "set_progress")
    model.to(device)
    if device.type == "cuda":  # torch's stubs omit Module.to's memory_format keyword
        model.to(memory_format=fmt)  # type: ignore[call-overload]
    val_images = splits.val_images.to(device, memory_format=fmt)
    val_labels = splits.val_labels.to(device)
    runner = _EpochRunner(model, recipe, splits.train_images.to(device, memory_format=fmt),
                          splits.train_labels.to(device), device)
    losses: list[float] = []
    accuracies: list[float] = []
    for epoch in range(recipe.epochs):
        if set_progress is not None:
            set_progress(epoch / recipe.epochs)
        losses.append(runner.run_epoch(epoch))
        accuracies.append(evaluate(model, val_images, val_labels, 2 * recipe.batch_size, device))
        if progress_cb is not None and progress_cb(epoch, losses[-1], accuracies[-1]):
            break  # stopped early: the report covers the epochs trained
    return losses, accuracies


def train(model: nn.Module, splits: DatasetSplits, recipe: TrainRecipe,
          progress_cb: ProgressCallback | None = None) -> TrainReport:
    """Train ``model`` on ``splits.train_*`` and report per-epoch validation accuracy.

    ``progress_cb(epoch, train_loss, val_acc)`` is called after each epoch (epoch counts
    from 0); when it returns True training stops there (early stopping), and the report and
    reward cover the epochs trained. Seeds torch's global RNG with ``recipe.seed`` (dropout and
    the like) and shuffles with its own generator. Leaves the model on the recipe's device.
    Raises TrainingFailed on a non-finite loss, CUDA out of memory, or CUDA asked for where
    there is none.
    """
    if len(splits.train_images) < 2:
        raise ValueError(f"splits: need at least 2 training images, got "
                         f"{len(splits.train_images)}")
    try:
        device = resolve_device(recipe.device)
    except RuntimeError as exc:
        raise TrainingFailed(str(exc)) from exc
    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    oom: str | None = None
    try:
        losses, accuracies = _fit(model, splits, recipe, device, progress_cb)
    except torch.OutOfMemoryError as exc:
        oom = str(exc).splitlines()[0] if str(exc) else "no details"
    if oom is not None:
        # Raised outside the handler: the failed frames (data, optimizer state) are freed.
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrainingFailed(f"CUDA out of memory (batch_size {recipe.batch_size}): {oom}")
    return TrainReport(
        train_losses=tuple(losses), val_accuracies=tuple(accuracies),
        final_val_accuracy=accuracies[-1],
        reward=compute_reward(accuracies, recipe.reward, recipe.cube_reward),
        train_seconds=time.perf_counter() - started, epochs_trained=len(losses),
        device=str(device))
