"""Training a supernet's shared weights, one sampled child per minibatch, and scoring children
with them (ENAS, Pham et al. 2018).

The shared weights use ENAS's child recipe: SGD with Nesterov momentum 0.9, a cosine learning
rate over all the minibatches of the search, weight decay, gradient norm clipped at 5. Children
are scored on validation minibatches taken in turn (``score``), or on the whole validation split
(``score_all``), with the same batch-statistics normalisation as in training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from protos.types import Architecture
from worker.datasets import DatasetSplits
from worker.supernet import Supernet
from worker.trainer_recipe import TrainingFailed, cosine_lr, resolve_device


@dataclass(frozen=True)
class SharedRecipe:
    """How the shared weights train: ``epochs`` passes over the training split."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate: must be a finite number > 0, got "
                             f"{self.learning_rate}")


@dataclass
class EpochReport:
    """One pass of shared-weight training."""

    epoch: int
    loss: float
    accuracy: float  # on the training minibatches, each under its own sampled child
    seconds: float


class SharedTrainer:
    """Owns a supernet, its optimizer and the data (moved to the device once)."""

    def __init__(self, supernet: Supernet, splits: DatasetSplits, recipe: SharedRecipe) -> None:
        self.device = resolve_device(recipe.device)
        self.supernet = supernet.to(self.device)
        self.recipe = recipe
        self.train_images = splits.train_images.to(self.device)
        self.train_labels = splits.train_labels.to(self.device)
        self.val_images = splits.val_images.to(self.device)
        self.val_labels = splits.val_labels.to(self.device)
        self.optimizer = torch.optim.SGD(supernet.parameters(), lr=recipe.learning_rate,
                                         momentum=0.9, nesterov=True,
                                         weight_decay=recipe.weight_decay)
        self.loss_fn = nn.CrossEntropyLoss()
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.steps_per_epoch = math.ceil(len(self.train_images) / recipe.batch_size)
        self.step = 0
        self.epoch = 0
        self._val_at = 0
        self.seconds = 0.0  # wall time spent training and scoring

    def train_epoch(self, sample: Callable[[], Architecture]) -> EpochReport:
        """One pass over the shuffled training split; ``sample()`` picks each minibatch's child."""
        started = time.perf_counter()
        self.supernet.train()
        order = torch.randperm(len(self.train_images), generator=self.generator).to(self.device)
        total_loss, correct, seen = 0.0, 0, 0
        total_steps = self.recipe.epochs * self.steps_per_epoch
        for start in range(0, len(order), self.recipe.batch_size):
            rows = order[start:start + self.recipe.batch_size]
            lr = cosine_lr(self.recipe.learning_rate, min(self.step, total_steps), total_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            logits = self.supernet(self.train_images[rows], sample())
            loss = self.loss_fn(logits, self.train_labels[rows])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.supernet.parameters(), self.recipe.grad_clip)
            self.optimizer.step()
            self.step += 1
            total_loss += float(loss.detach()) * len(rows)
            correct += int((logits.argmax(1) == self.train_labels[rows]).sum())
            seen += len(rows)
        mean = total_loss / max(seen, 1)
        if not math.isfinite(mean):
            raise TrainingFailed(f"non-finite shared-weight loss ({mean}) in epoch "
                                 f"{self.epoch + 1}")
        self.epoch += 1
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        return EpochReport(self.epoch, mean, correct / max(seen, 1), elapsed)

    @torch.no_grad()
    def score(self, arch: Architecture, batches: int = 1) -> float:
        """Accuracy of ``arch`` on the next ``batches`` validation minibatches (in turn)."""
        started = time.perf_counter()
        correct, seen = 0, 0
        size = self.recipe.batch_size
        for _ in range(batches):
            if self._val_at >= len(self.val_images):
                self._val_at = 0
            images = self.val_images[self._val_at:self._val_at + size]
            labels = self.val_labels[self._val_at:self._val_at + size]
            self._val_at += size
            correct += int((self.supernet(images, arch).argmax(1) == labels).sum())
            seen += len(labels)
        self.seconds += time.perf_counter() - started
        return correct / max(seen, 1)

    @torch.no_grad()
    def score_all(self, arch: Architecture, batch_size: int = 500) -> float:
        """Accuracy of ``arch`` on the whole validation split."""
        started = time.perf_counter()
        correct = 0
        for start in range(0, len(self.val_images), batch_size):
            images = self.val_images[start:start + batch_size]
            labels = self.val_labels[start:start + batch_size]
            correct += int((self.supernet(images, arch).argmax(1) == labels).sum())
        self.seconds += time.perf_counter() - started
        return correct / max(len(self.val_images), 1)

    def describe(self) -> dict[str, object]:
        """Device, threads and sizes, for the search-cost report."""
        return {"device": self.device.type,
                "threads": torch.get_num_threads() if self.device.type == "cpu" else 1,
                "train_images": len(self.train_images), "val_images": len(self.val_images),
                "parameters": sum(p.numel() for p in self.supernet.parameters())}
