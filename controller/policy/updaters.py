"""Where the policy's parameters live and how a gradient changes them.

``LocalAdam`` keeps them in this process (the in-process search). A replica of the distributed
layout uses an updater that pushes the gradient to parameter-server shards and pulls the new
values back (``controller.distributed.remote``); the learner does not know the difference.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn


class ParameterUpdater(ABC):
    """Contract: ``apply(grads)`` takes one gradient tensor per policy parameter (in
    ``policy.parameters()`` order); when it returns, the policy's parameters hold the current
    values of the store, and ``version`` (the store's version after the call) is returned.
    ``version`` never decreases."""

    version: int = 0

    @abstractmethod
    def apply(self, grads: Sequence[Tensor]) -> int:
        """Apply (or send) a gradient and refresh the local parameters; return the version."""


class LocalAdam(ParameterUpdater):
    """Adam on the policy's own parameters."""

    def __init__(self, params: Iterable[nn.Parameter], learning_rate: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.optimizer = torch.optim.Adam(self.params, lr=learning_rate, betas=betas, eps=eps)
        self.version = 0

    def apply(self, grads: Sequence[Tensor]) -> int:
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g.detach().clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        return self.version
