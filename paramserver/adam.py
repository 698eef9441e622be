"""Adam in numpy, float32: the algorithm of ``torch.optim.Adam`` (``foreach=False``, no
weight decay, amsgrad or maximize), so a shard process needs no torch (its import is most of a
shard's memory and start-up time).

Each step takes its own learning rate (the shard scales it for stale pushes). The operations
and their order follow torch's single-tensor Adam, each rounded to float32 where torch rounds
(its CPU kernels fuse multiply-adds: so does :func:`_fma`). Only torch's float32 ``sqrt``
(MKL's, on x86) is off by an ulp now and then, so the parameters agree to a few float32 ulps
of their size, not bit for bit (``tests/test_numpy_adam.py``). Adam is elementwise: each shard
stepping its own range equals one Adam stepping the whole vector.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def _fma(a: np.ndarray | np.float32, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, as torch's vectorized CPU kernels compute it (a
    product of two float32 values is exact in float64)."""
    return (np.float64(a) * b.astype(np.float64) + c).astype(F32)


class Adam:
    """Adam state of ``size`` float32 parameters: the step count and both moments."""

    def __init__(self, size: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.step_count = 0
        self.exp_avg = np.zeros(size, dtype=F32)
        self.exp_avg_sq = np.zeros(size, dtype=F32)

    def step(self, param: np.ndarray, grad: np.ndarray, lr: float | None = None) -> None:
        """Update ``param`` (float32, in place) with ``grad``; ``lr``: this step's learning
        rate (None: the one given at construction)."""
        g = np.asarray(grad, dtype=F32)
        self.step_count += 1
        # exp_avg.lerp_(grad, 1 - beta1), as torch's lerp computes it
        weight = F32(1.0 - self.beta1)
        if abs(weight) < 0.5:
            self.exp_avg = _fma(weight, g - self.exp_avg, self.exp_avg)
        else:
            self.exp_avg = _fma(weight - F32(1.0), g - self.exp_avg, g)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        self.exp_avg_sq *= F32(self.beta2)
        self.exp_avg_sq = _fma(F32(1.0 - self.beta2) * g, g, self.exp_avg_sq)
        # the bias corrections and step size in double precision, as torch's Python floats
        bias_correction1 = 1.0 - self.beta1 ** self.step_count
        bias_correction2 = 1.0 - self.beta2 ** self.step_count
        step_size = (self.lr if lr is None else lr) / bias_correction1
        denom = np.sqrt(self.exp_avg_sq) / F32(math.sqrt(bias_correction2)) + F32(self.eps)
        param += (F32(-step_size) * self.exp_avg) / denom

    def state(self) -> tuple[float, np.ndarray, np.ndarray] | None:
        """(step, exp_avg, exp_avg_sq), copies, as torch's optimizer state holds them; None
        before the first step (torch has no state then)."""
        if self.step_count == 0:
            return None
        return float(self.step_count), self.exp_avg.copy(), self.exp_avg_sq.copy()

    def load(self, step: float, exp_avg: np.ndarray, exp_avg_sq: np.ndarray) -> None:
        """Restore what :meth:`state` returned (or torch's state of the same parameters)."""
        if exp_avg.shape != self.exp_avg.shape or exp_avg_sq.shape != self.exp_avg_sq.shape:
            raise ValueError(f"Adam state: moments of {self.exp_avg.size} values needed, got "
                             f"{exp_avg.size} and {exp_avg_sq.size}")
        self.step_count = int(step)
        self.exp_avg = np.array(exp_avg, dtype=F32)
        self.exp_avg_sq = np.array(exp_avg_sq, dtype=F32)
