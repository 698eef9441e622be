"""What every child network shares: its size options (ModelSpec) and the ChildNet interface."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from worker.builders.drop_path import ScheduledDropPath


@dataclass(frozen=True)
class ModelSpec:
    """How big to build a child network, for any space.

    in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR).
    num_classes: classifier outputs.
    cells: N, cells per stage (nb201, nasnet, enas-micro; macro ignores it).
    filters: F, the first stage's channels (macro: the stem's channels).
    drop_path: the largest ScheduledDropPath probability, reached at progress 1 (cell spaces).
    aux_head: add an auxiliary classifier at 2/3 depth (cell spaces; others ignore it).
    """

    in_channels: int = 3
    num_classes: int = 10
    cells: int = 5
    filters: int = 16
    drop_path: float = 0.0
    aux_head: bool = False

    def __post_init__(self) -> None:
        for name in ("in_channels", "cells", "filters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelSpec.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"ModelSpec.num_classes must be an int >= 2, got {self.num_classes!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"ModelSpec.drop_path must be in [0, 1), got {self.drop_path!r}")
        if not isinstance(self.aux_head, bool):
            raise ValueError(f"ModelSpec.aux_head must be a bool, got {self.aux_head!r}")


class ChildNet(nn.Module):
    """A built child network: ``forward(x)`` gives logits of shape (B, num_classes).

    ``forward_with_aux(x)`` gives ``(logits, aux_logits)``; ``aux_logits`` is None unless the
    net has an auxiliary head and is in training mode. Subclasses implement ``forward`` and, when
    they have an auxiliary head, ``forward_with_aux``; the head lives in ``self.aux_head``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.progress = 0.0
        self.aux_head: nn.Module | None = None

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, in training mode with an auxiliary head, the auxiliary logits."""
        return self(x), None

    @property
    def drop_prob(self) -> float:
        """The current ScheduledDropPath probability: ``spec.drop_path * progress``."""
        return self.spec.drop_path * self.progress

    def set_progress(self, progress: float) -> None:
        """Tell every ScheduledDropPath how far training is (e.g. epoch / epochs, in [0, 1])."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.progress = float(progress)
        for module in self.modules():
            if isinstance(module, ScheduledDropPath):
                module.set_progress(progress)

    def num_params(self, include_aux: bool = False) -> int:
        """Parameter count, without the auxiliary head unless ``include_aux``."""
        return sum(p.numel() for name, p in self.named_parameters()
                   if include_aux or not name.startswith("aux_head."))

    def flops(self, input_size: tuple[int, int]) -> int:
        """Multiply-accumulates of all Conv2d and Linear layers for one (H, W) image.

        Counted with forward hooks on one eval-mode forward pass of a zero image (batch 1); the
        auxiliary head is not run in eval mode, so it is not counted.
        """
        total = 0

        def count(module: nn.Module, inputs: tuple[torch.Tensor, ...],
                  output: torch.Tensor) -> None:
            nonlocal total
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                total += output.numel() * kh * kw * (module.in_channels // module.groups)
            elif isinstance(module, nn.Linear):
                total += output.numel() * module.in_features

        hooks = [m.register_forward_hook(count) for m in self.modules()
                 if isinstance(m, nn.Conv2d | nn.Linear)]
        was_training = self.training
        param = next(self.parameters())
        image = torch.zeros((1, self.spec.in_channels, *input_size), dtype=param.dtype,
                            device=param.device)
        try:
            self.eval()
            with torch.no_grad():
                self(image)
        finally:
            self.train(was_training)
            for hook in hooks:
                hook.remove()
        return total
