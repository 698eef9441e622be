"""What the trainer is told (TrainRecipe) and what it reports (TrainReport), plus the pure
helpers behind them: the reward and the cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

REWARDS = ("last", "max5")
LR_SCHEDULES = ("cosine-step", "cosine-epoch")


class TrainingFailed(RuntimeError):
    """Training could not finish (a non-finite loss, out of memory); the message says why."""


@dataclass(frozen=True)
class TrainRecipe:
    """How to train one child network: SGD with Nesterov momentum 0.9 and a cosine schedule.

    ``lr_schedule`` "cosine-step" anneals the learning rate to zero over all steps,
    "cosine-epoch" holds it within an epoch. ``grad_clip`` None disables clipping. ``reward``
    "last" is the last epoch's validation accuracy, "max5" the best of the last five (Zoph &
    Le); ``cube_reward`` cubes it. ``aux_weight`` scales the auxiliary head's loss when the
    model has ``forward_with_aux``. ``device`` "auto" is CUDA when available, else the CPU.
    """

    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 0.05
    weight_decay: float = 3e-4
    label_smoothing: float = 0.0
    lr_schedule: str = "cosine-step"
    grad_clip: float | None = 5.0
    reward: str = "last"
    cube_reward: bool = False
    seed: int = 0
    aux_weight: float = 0.4
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")
        for name in ("learning_rate", "weight_decay", "label_smoothing", "aux_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
        if self.learning_rate == 0:
            raise ValueError("learning_rate: must be > 0, got 0")
        if self.label_smoothing >= 1:
            raise ValueError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip)
                                               and self.grad_clip > 0):
            raise ValueError(f"grad_clip: must be > 0 or None, got {self.grad_clip}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: must be one of {LR_SCHEDULES}, "
                             f"got {self.lr_schedule!r}")
        if self.reward not in REWARDS:
            raise ValueError(f"reward: must be one of {REWARDS}, got {self.reward!r}")
        if self.device != "auto" and _device_type(self.device) not in ("cpu", "cuda"):
            raise ValueError(f"device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class TrainReport:
    """Per-epoch mean train loss and validation accuracy, the final accuracy and the reward."""

    train_losses: tuple[float, ...]
    val_accuracies: tuple[float, ...]
    final_val_accuracy: float
    reward: float
    train_seconds: float
    epochs_trained: int
    device: str


def compute_reward(val_accuracies: Sequence[float], reward: str, cube: bool) -> float:
    """The reward from per-epoch validation accuracies: "last" or "max5", cubed if ``cube``."""
    if not val_accuracies:
        raise ValueError("val_accuracies: need at least one epoch")
    if reward == "last":
        value = val_accuracies[-1]
    elif reward == "max5":
        value = max(val_accuracies[-5:])
    else:
        raise ValueError(f"reward: must be one of {REWARDS}, got {reward!r}")
    return value**3 if cube else value


def cosine_lr(base_lr: float, done: int, total: int) -> float:
    """Cosine annealing from ``base_lr`` (done = 0) to zero (done = total)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * done / total))


def _device_type(device: str) -> str | None:
    try:
        return torch.device(device).type
    except RuntimeError:
        return None


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else is parsed by torch.device.

    Raises RuntimeError for an unparsable name or CUDA asked for where it is unavailable.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parsed = torch.device(device)
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{device!r} asked for but CUDA is not available")
    return parsed
