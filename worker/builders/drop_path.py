"""ScheduledDropPath (NASNet): drop a whole path per sample, with a probability that grows."""

from __future__ import annotations

import torch
from torch import nn


class ScheduledDropPath(nn.Module):
    """Zero the path for each sample with probability ``max_prob * progress`` while training.

    Kept samples are scaled by 1 / (1 - p) so the expectation is unchanged; in eval mode (or at
    p = 0) the input passes through untouched. ``progress`` in [0, 1] is set by the owning
    ChildNet's ``set_progress`` (the trainer calls it once per epoch with epoch / epochs).
    """

    def __init__(self, max_prob: float) -> None:
        super().__init__()
        if not 0.0 <= max_prob < 1.0:
            raise ValueError(f"ScheduledDropPath.max_prob must be in [0, 1), got {max_prob}")
        self.max_prob = max_prob
        self.progress = 0.0

    @property
    def drop_prob(self) -> float:
        """The drop probability now: ``max_prob * progress``."""
        return self.max_prob * self.progress

    def set_progress(self, progress: float) -> None:
        """Set how far training is, in [0, 1]."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.progress = float(progress)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop (zero) whole samples of ``x`` with probability ``drop_prob`` in training."""
        p = self.drop_prob
        if not self.training or p <= 0.0:
            return x
        keep = 1.0 - p
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"max_prob={self.max_prob}, progress={self.progress}"
