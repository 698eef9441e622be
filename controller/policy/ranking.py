"""The controller's samples ranked by a surrogate before one is trained (PNAS, BANANAS).

PNAS (Liu et al. 2018) trains only the candidates a learned predictor ranks highest; BANANAS
(White et al. 2021) and Bayesian optimisation in general pick among candidates by an
acquisition function of a surrogate with uncertainty. Here the candidates come from the LSTM
policy (drawn without replacement, so all are new), and the surrogate is a Gaussian process on
the architectures' decisions with the overlap kernel of categorical Bayesian optimisation
(k(a, b) = exp(-w * (decisions where a and b differ) / decisions); e.g. CASMOPOLITAN, Wan et
al. 2021): the candidate with the highest expected improvement is trained. The policy still
learns from every result (REINFORCE on the trained child), so it keeps proposing where good
architectures are, and the surrogate picks the most promising of its proposals; both together
need far fewer trainings to find good cells than either alone.

Rewards are modelled as their rank among the rewards seen (robust to failed children at 0 and
to the scale of any dataset). The GP sees at most ``window`` results (the best half and the
most recent half), so a proposal costs the same at the 20,000th training as at the 100th: the
matrix of decisions two results share is kept up to date as results arrive (one row each), and
a Cholesky factorisation of at most 256 x 256 is redone once per result; the kernel width and
noise are chosen by marginal likelihood from a small grid every ``refit`` results.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr

WIDTHS = (0.5, 1.0, 2.0, 4.0, 8.0)  # kernel widths w (per fraction of decisions differing)
NOISES = (1e-3, 1e-2, 1e-1)  # noise variance, on the rank scale's unit variance


class OverlapGP:
    """A GP over action sequences with the overlap kernel; rewards modelled by rank."""

    def __init__(self, steps: int, window: int = 256, refit: int = 10) -> None:
        if steps < 1 or window < 2 or refit < 1:
            raise ValueError("OverlapGP needs steps >= 1, window >= 2, refit >= 1")
        self.steps = steps
        self.window = window
        self.refit = refit
        self.width, self.noise = 2.0, 1e-2
        self._xs = np.zeros((0, steps), dtype=np.int64)
        self._ys: list[float] = []
        self._same = np.zeros((0, 0), dtype=np.int64)  # decisions each pair of results shares
        self._fitted: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self._since_refit = refit  # the first fit chooses the width and noise
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ys)

    def observe(self, actions: Sequence[int], reward: float) -> None:
        """One more result."""
        x = np.asarray(actions, dtype=np.int64)
        if x.shape != (self.steps,):
            raise ValueError(f"actions: expected {self.steps} decisions, got {x.shape}")
        with self._lock:
            row = (self._xs == x).sum(axis=1)
            n = len(self._ys)
            same = np.empty((n + 1, n + 1), dtype=np.int64)
            same[:n, :n], same[n, :n], same[:n, n], same[n, n] = self._same, row, row, self.steps
            self._same, self._xs = same, np.vstack([self._xs, x])
            self._ys.append(float(reward))
            if len(self._ys) > self.window:
                self._trim()
            self._fitted = None
            self._since_refit += 1

    def _trim(self) -> None:
        """Keep the window: the most recent half and the best of the rest."""
        n, half = len(self._ys), self.window // 2
        older = sorted(range(n - half), key=lambda i: -self._ys[i])[: self.window - half]
        keep = np.asarray(sorted(older) + list(range(n - half, n)))
        self._xs, self._same = self._xs[keep], self._same[np.ix_(keep, keep)]
        self._ys = [self._ys[i] for i in keep]

    def _targets(self) -> np.ndarray:
        """The window's rewards as centred ranks (unit variance)."""
        ys = np.asarray(self._ys)
        ranks = (np.argsort(np.argsort(ys, kind="stable"), kind="stable") + 0.5) / len(ys)
        return (ranks - 0.5) * math.sqrt(12.0)

    def _kernel(self, same: np.ndarray, width: float) -> np.ndarray:
        """The overlap kernel of a matrix of shared-decision counts."""
        return np.exp(-width * (self.steps - same) / self.steps)

    def _fit(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        xs, ys = self._xs, self._targets()
        if self._since_refit >= self.refit:
            self.width, self.noise = self._select(ys)
            self._since_refit = 0
        gram = self._kernel(self._same, self.width) + self.noise * np.eye(len(ys))
        chol = np.linalg.cholesky(gram)
        alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, ys))
        return xs, chol, alpha, float(ys.max())

    def _select(self, ys: np.ndarray) -> tuple[float, float]:
        """The width and noise of the grid with the highest marginal likelihood."""
        best, choice = -math.inf, (self.width, self.noise)
        for width in WIDTHS:
            base = self._kernel(self._same, width)
            for noise in NOISES:
                try:
                    chol = np.linalg.cholesky(base + noise * np.eye(len(ys)))
                except np.linalg.LinAlgError:
                    continue
                alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, ys))
                ll = -0.5 * float(ys @ alpha) - float(np.log(np.diag(chol)).sum())
                if ll > best:
                    best, choice = ll, (width, noise)
        return choice

    def expected_improvement(self, candidates: Sequence[Sequence[int]]) -> np.ndarray:
        """EI of each candidate over the best rank seen (higher is better)."""
        with self._lock:
            if self._fitted is None:
                self._fitted = self._fit()
            xs, chol, alpha, best = self._fitted
            cands = np.asarray(candidates, dtype=np.int64)
            cross = self._kernel((cands[:, None, :] == xs[None, :, :]).sum(axis=2), self.width)
            mean = cross @ alpha
            v = np.linalg.solve(chol, cross.T)
            var = np.maximum(1.0 + self.noise - (v * v).sum(axis=0), 1e-12)
        sd = np.sqrt(var)
        z = (mean - best) / sd
        return np.asarray(sd * (z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)))
