"""Character-level language modelling for the recurrent-cell spaces: corpus, training, reward.

The corpus is split once: validation is its held-out tail, training the text before it. The
child trains with truncated BPTT (the state carried across windows, gradients cut at each);
reward = c / perplexity^2 (Zoph & Le, c = 80), clipped to [0, 1] like every other reward here.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from protos.types import Architecture
from worker.builders.rnn import CharLM, build_char_lm

REWARD_C = 80.0
DEFAULT_CORPUS = "text/tinyshakespeare.txt"


def default_corpus() -> Path:
    """``$NAS_DATA_DIR/text/tinyshakespeare.txt`` (default ../shared/data beside the project)."""
    root = os.environ.get("NAS_DATA_DIR") or str(
        Path(__file__).resolve().parents[2] / "shared" / "data")
    return Path(root) / DEFAULT_CORPUS


def perplexity_reward(perplexity: float, c: float = REWARD_C) -> float:
    """Zoph & Le's reward c / perplexity^2, clipped to [0, 1] (0 for a non-finite perplexity)."""
    if not math.isfinite(perplexity) or perplexity <= 0:
        return 0.0
    return min(1.0, c / perplexity ** 2)


@dataclass(frozen=True)
class Corpus:
    """A text as character ids: the vocabulary and the train / validation splits."""

    name: str
    vocab: str
    train: torch.Tensor
    val: torch.Tensor


def load_corpus(path: str | Path | None, train_subset: int | None = None,
                val_subset: int | None = None) -> Corpus:
    """Read ``path`` (default: tinyshakespeare); validation = the last ``val_subset`` characters
    (default 10% of the text), training = the first ``train_subset`` characters before them
    (default all). Raises ValueError naming ``corpus``, ``train_subset`` or ``val_subset``."""
    file = Path(path) if path else default_corpus()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"corpus: cannot read {file} ({exc}); pass --corpus PATH "
                         "(a UTF-8 text file) or set NAS_DATA_DIR") from None
    n_val = val_subset or len(text) // 10
    if n_val < 2 or n_val >= len(text) - 1:
        raise ValueError(f"val_subset: {n_val} characters of a {len(text)}-character corpus "
                         "leaves no training text (or no validation)")
    head = text[:-n_val]
    if train_subset is not None:
        if train_subset < 2:
            raise ValueError(f"train_subset: need >= 2 characters, got {train_subset}")
        head = head[:train_subset]
    vocab = "".join(sorted(set(text)))
    index = {ch: i for i, ch in enumerate(vocab)}

    def ids(s: str) -> torch.Tensor:
        return torch.tensor([index[ch] for ch in s], dtype=torch.long)

    return Corpus(file.name, vocab, ids(head), ids(text[-n_val:]))


@dataclass(frozen=True)
class LMRecipe:
    """How a child language model trains: ``steps`` Adam steps of ``batch_size`` streams x
    ``bptt`` characters, gradient norm clipped to ``clip``; reward = min(1, reward_c / ppl^2)."""

    steps: int = 200
    bptt: int = 32
    batch_size: int = 32
    hidden: int = 64
    learning_rate: float = 3e-3
    clip: float = 0.25
    seed: int = 0
    reward_c: float = REWARD_C

    def __post_init__(self) -> None:
        for name in ("steps", "bptt", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 0 < self.reward_c < math.inf:
            raise ValueError(f"reward_c: must be a finite number > 0, got {self.reward_c}")


def _streams(ids: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, length) parallel streams of consecutive text (at least one character each)."""
    batch = max(1, min(batch, (len(ids) - 1) // 2))
    length = len(ids) // batch
    return ids[:batch * length].view(batch, length)


def val_perplexity(model: CharLM, ids: torch.Tensor, bptt: int, batch: int = 16) -> float:
    """exp(mean cross-entropy) of next-character prediction over ``ids``."""
    data = _streams(ids, batch)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        state = model.init_state(data.size(0), data.device)
        for start in range(0, data.size(1) - 1, bptt):
            x = data[:, start:start + bptt]
            y = data[:, start + 1:start + 1 + bptt]
            logits, state = model(x[:, :y.size(1)], state)
            total += float(loss_fn(logits.reshape(-1, logits.size(-1)), y.reshape(-1)))
            count += y.numel()
    return math.exp(total / max(count, 1)) if total / max(count, 1) < 50 else math.inf


@dataclass(frozen=True)
class LMResult:
    """A trained child: its model, validation perplexity, reward and training time."""

    model: CharLM
    val_perplexity: float
    reward: float
    train_seconds: float


def train_char_lm(arch: Architecture, corpus: Corpus, recipe: LMRecipe) -> LMResult:
    """Build and train the language model of ``arch``; a NaN loss raises FloatingPointError."""
    torch.manual_seed(recipe.seed)
    model = build_char_lm(arch, len(corpus.vocab), recipe.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    data = _streams(corpus.train, recipe.batch_size)
    loss_fn = nn.CrossEntropyLoss()
    begin = time.perf_counter()
    model.train()
    state = model.init_state(data.size(0), data.device)
    start = 0
    for _ in range(recipe.steps):
        if start + 2 > data.size(1):
            start, state = 0, model.init_state(data.size(0), data.device)
        x = data[:, start:start + recipe.bptt]
        y = data[:, start + 1:start + 1 + recipe.bptt]
        x = x[:, :y.size(1)]
        state = (state[0].detach(), state[1].detach())
        logits, state = model(x, state)
        loss = loss_fn(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at window {start}")
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        start += recipe.bptt
    seconds = time.perf_counter() - begin
    ppl = val_perplexity(model, corpus.val, recipe.bptt)
    return LMResult(model, ppl, perplexity_reward(ppl, recipe.reward_c), seconds)
