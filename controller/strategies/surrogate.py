"""PNAS's accuracy predictor: an ensemble of 5 small models over a cell's tokens, plus Kendall tau.

A cell is a variable-length sequence of tokens (one per decided choice). The LSTM reads them in
order, as PNAS does; the MLP averages their embeddings (PNAS's cheaper alternative). Each
ensemble member trains on 4 of 5 folds of the trained cells, so their mean is less overfit to
the handful of cells a step trains; the prediction is the members' mean.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn

SURROGATES = ("lstm", "mlp")
ENSEMBLE = 5


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation (ties counted as scipy does); 0 with < 2 pairs."""
    if len(xs) != len(ys):
        raise ValueError("kendall_tau: xs and ys differ in length")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denom if denom else 0.0


class _Model(nn.Module):
    """Token embeddings, then an LSTM's last state or the embeddings' mean, then a linear head."""

    def __init__(self, vocab: int, kind: str, hidden: int = 32) -> None:
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(vocab + 1, hidden, padding_idx=0)  # 0 pads short cells
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True) if kind == "lstm" else None
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        if self.lstm is not None:
            out, _ = self.lstm(x)
            h = out[torch.arange(len(tokens)), lengths - 1]
        else:
            h = x.sum(1) / lengths.unsqueeze(1).float()
        return self.head(h).squeeze(1)


class SurrogateEnsemble:
    """Predicts a cell's reward from its tokens (ints in ``[1, vocab]``); ``fit`` retrains all."""

    def __init__(self, vocab: int, kind: str = "lstm", seed: int = 0, steps: int = 150,
                 lr: float = 0.01, hidden: int = 32, weight_decay: float = 0.1) -> None:
        if kind not in SURROGATES:
            raise ValueError(f"surrogate: {kind!r} is not one of {', '.join(SURROGATES)}")
        self.vocab, self.kind, self.steps, self.lr = vocab, kind, steps, lr
        self.hidden, self.weight_decay = hidden, weight_decay
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.models: list[_Model] = []
        self.mean, self.std = 0.0, 1.0

    @staticmethod
    def _batch(cells: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(c) for c in cells)
        tokens = torch.tensor([list(c) + [0] * (width - len(c)) for c in cells])
        return tokens, torch.tensor([len(c) for c in cells])

    def fit(self, cells: Sequence[Sequence[int]], rewards: Sequence[float]) -> None:
        """Train the 5 members, each on the cells outside its fold (all of them if < 5 cells)."""
        y = torch.tensor(list(rewards), dtype=torch.float32)
        self.mean, self.std = float(y.mean()), float(y.std()) if len(y) > 1 else 1.0
        self.std = self.std or 1.0
        target = (y - self.mean) / self.std  # ranking is what matters: a standard scale
        order = list(range(len(cells)))
        self.rng.shuffle(order)
        folds = [order[k::ENSEMBLE] for k in range(ENSEMBLE)]
        self.models = []
        for k in range(ENSEMBLE):
            held = set(folds[k]) if len(cells) >= ENSEMBLE else set()
            idx = [i for i in order if i not in held]
            seed = int(torch.randint(2**31, (1,), generator=self.generator))
            with torch.random.fork_rng(devices=[]):  # other searches' RNG stays untouched
                torch.manual_seed(seed)
                model = _Model(self.vocab, self.kind, self.hidden)
            opt = torch.optim.AdamW(model.parameters(), lr=self.lr,
                                    weight_decay=self.weight_decay)
            tokens, lengths = self._batch([cells[i] for i in idx])
            for _ in range(self.steps):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(tokens, lengths), target[idx])
                loss.backward()
                opt.step()
            self.models.append(model.eval())

    @torch.no_grad()
    def predict(self, cells: Sequence[Sequence[int]]) -> list[float]:
        """The ensemble's mean predicted reward of each cell (0.0 each before any ``fit``)."""
        if not self.models:
            return [0.0] * len(cells)
        out: list[float] = []
        for i in range(0, len(cells), 4096):  # a step ranks ~10^4 cells: bounded memory
            tokens, lengths = self._batch(cells[i:i + 4096])
            z = torch.stack([m(tokens, lengths) for m in self.models]).mean(0)
            out += [float(v) * self.std + self.mean for v in z]
        return out
