"""Where the policy's parameters live and how a gradient changes them.

``LocalAdam`` keeps them in this process (the in-process search). A replica of the distributed
layout uses an updater that pushes the gradient to parameter-server shards and pulls the new
values back (``controller.distributed.remote``); the learner does not know the difference.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
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

    def snapshot(self) -> dict[str, Any] | None:
        """What a job's checkpoint must keep of the parameters; None (the default) when they
        live, and are checkpointed, elsewhere (the parameter servers)."""
        return None

    def load(self, doc: Mapping[str, Any]) -> None:  # noqa: B027
        """Take up a ``snapshot``; nothing by default."""


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

    def snapshot(self) -> dict[str, Any]:
        """The parameters, Adam's moments and step, and the version (a job's checkpoint: JSON,
        the vectors as base64 float32, a fixed size for a given policy)."""
        doc: dict[str, Any] = {"version": self.version, "params": _encode(self.params)}
        state = [self.optimizer.state.get(p, {}) for p in self.params]
        if all("exp_avg" in s for s in state):  # after the first step
            doc["step"] = float(state[0]["step"])
            for name in ("exp_avg", "exp_avg_sq"):
                doc[name] = _encode([s[name] for s in state])
        return doc

    def load(self, doc: Mapping[str, Any]) -> None:
        """Take up a ``snapshot`` of a policy of the same shape."""
        values = _decode(doc["params"])
        moments = {name: _decode(doc[name]) for name in ("exp_avg", "exp_avg_sq") if name in doc}
        at = 0
        for param in self.params:
            size = param.numel()
            with torch.no_grad():  # into its own storage: views of one flat buffer are
                param.copy_(values[at:at + size].view_as(param))  # aligned differently and
            # their matrix products round differently, so the run would not go on identically
            if moments:
                self.optimizer.state[param] = {
                    "step": torch.tensor(float(doc["step"])),
                    **{name: vector[at:at + size].view_as(param).clone()
                       for name, vector in moments.items()}}
            at += size
        self.version = int(doc["version"])


def _encode(tensors: Sequence[Tensor]) -> str:
    flat = nn.utils.parameters_to_vector([t.detach() for t in tensors])
    return base64.b64encode(flat.numpy().astype(np.float32).tobytes()).decode("ascii")


def _decode(text: str) -> Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.float32).copy())
