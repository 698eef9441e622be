"""The LSTM controller of Zoph & Le (2017) / NASNet / ENAS, over any space's decision sequence.

Each decision is one LSTM step: the input is the embedding of the previous action (a learned start
vector first), the output goes through the head of the decision's kind, sliced to its number of
choices. Skip decisions (macro space) take no step: P(j -> i) = sigmoid(v^T tanh(W_prev h_j +
W_curr h_i)) over the anchor states; after a layer's skips, the next input is the mean of the chosen
anchors (ENAS). The same code samples and scores given actions, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from controller.policy.novelty import NoveltyIndex
from controller.spaces.base import Decision


@dataclass(frozen=True)
class PolicyConfig:
    """Shape of the controller LSTM and how its logits are shaped."""

    layers: int = 2
    units: int = 35
    embedding: int | None = None  # None: same as units
    tanh_constant: float | None = None  # logits -> C * tanh(logits) (ENAS)
    temperature: float | None = None  # logits / T, before tanh (ENAS)
    init_range: float = 0.08

    def __post_init__(self) -> None:
        if self.layers < 1 or self.units < 1:
            raise ValueError("policy layers and units must be >= 1")
        if self.embedding is not None and self.embedding < 1:
            raise ValueError("policy embedding must be >= 1")
        for name in ("tanh_constant", "temperature"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"policy {name} must be > 0")
        if self.init_range <= 0:
            raise ValueError("policy init_range must be > 0")


# Paper presets (DESIGN.md): Zoph & Le 2x35, uniform init +-0.08; ENAS 1x100, tanh 2.5, T=5.
PRESETS: dict[str, PolicyConfig] = {
    "zoph-le": PolicyConfig(layers=2, units=35, init_range=0.08),
    "enas": PolicyConfig(layers=1, units=100, tanh_constant=2.5, temperature=5.0, init_range=0.1),
}


Masks = dict[int, tuple[int, ...]]  # decision index -> choices given probability zero


@dataclass(frozen=True)
class PolicyOutput:
    """Per-decision results for a batch: ``actions``, ``log_probs`` and ``entropies`` are (B, T),
    under the distribution each row was drawn from (its ``masks``); ``dead`` rows reached a
    decision whose every choice was masked (their actions are not to be used)."""

    actions: Tensor
    log_probs: Tensor
    entropies: Tensor
    masks: tuple[Masks, ...] = ()
    dead: tuple[bool, ...] = ()


class LSTMPolicy(nn.Module):
    """An autoregressive policy over a fixed decision sequence."""

    def __init__(self, decisions: Sequence[Decision], config: PolicyConfig | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.decisions = tuple(decisions)
        if not self.decisions:
            raise ValueError("a policy needs at least one decision")
        self.config = config or PolicyConfig()
        units = self.config.units
        emb = self.config.embedding or units
        sizes: dict[str, int] = {}
        for d in self.decisions:
            if d.skip is None:
                sizes[d.kind] = max(sizes.get(d.kind, 0), d.num_choices)
        self.start = nn.Parameter(torch.zeros(1, emb))
        self.embeddings = nn.ModuleDict({k: nn.Embedding(n, emb) for k, n in sizes.items()})
        self.heads = nn.ModuleDict({k: nn.Linear(units, n) for k, n in sizes.items()})
        self.cells = nn.ModuleList(
            [nn.LSTMCell(emb if i == 0 else units, units) for i in range(self.config.layers)])
        self.has_skips = any(d.skip is not None for d in self.decisions)
        if self.has_skips:
            self.w_prev = nn.Linear(units, units, bias=False)
            self.w_curr = nn.Linear(units, units, bias=False)
            self.v = nn.Linear(units, 1, bias=False)
            self.anchor_in: nn.Module = (nn.Identity() if emb == units
                                         else nn.Linear(units, emb, bias=False))
        generator = torch.Generator().manual_seed(seed)
        r = self.config.init_range
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-r, r, generator=generator)

    def _shape(self, logits: Tensor) -> Tensor:
        if self.config.temperature is not None:
            logits = logits / self.config.temperature
        if self.config.tanh_constant is not None:
            logits = self.config.tanh_constant * torch.tanh(logits)
        return logits

    def _blocked(self, t: int, d: Decision, rows: list[tuple[int, ...]] | None,
                 novelty: NoveltyIndex | None, masks: Sequence[Masks] | None,
                 recorded: list[Masks]) -> Tensor | None:
        """The choices of decision ``t`` each row may not take (None: none anywhere): those
        the novelty index finds exhausted after the row's prefix, or the recorded masks."""
        if novelty is not None and rows is not None and novelty.tracks(t + 1):
            for r, prefix in enumerate(rows):
                full = novelty.full(prefix)
                if full:
                    recorded[r][t] = full
            source: Sequence[Masks] = recorded
        elif masks is not None:
            source = masks
        else:
            return None
        hits = [(r, c) for r, m in enumerate(source) for c in m.get(t, ())]
        if not hits:
            return None
        blocked = torch.zeros(len(source), d.num_choices, dtype=torch.bool)
        for r, c in hits:
            blocked[r, c] = True
        return blocked

    def _choose(self, logits: Tensor, blocked: Tensor | None, dead: list[bool],
                given: Tensor | None, generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """One decision for every row: the choice (``given``, or drawn), its log-probability
        and the distribution's entropy, with ``blocked`` choices masked out (a row with every
        choice blocked is a dead end: marked in ``dead`` and left unmasked)."""
        shaped = self._shape(logits)
        if blocked is not None:
            stuck = blocked.all(dim=1)  # a dead end: nothing left to draw after this prefix
            for r in stuck.nonzero().flatten().tolist():
                dead[r] = True
            blocked = blocked & ~stuck.unsqueeze(1)
            shaped = shaped.masked_fill(blocked, float("-inf"))
        logp_all = torch.log_softmax(shaped, dim=1)
        probs = logp_all.exp()
        a = torch.multinomial(probs, 1, generator=generator).squeeze(1) if given is None \
            else given
        # a masked choice has p = 0 and log p = -inf: 0 in the entropy, and no 0 * inf in its
        # gradient
        safe = logp_all if blocked is None else logp_all.masked_fill(blocked, 0.0)
        return a, logp_all.gather(1, a.unsqueeze(1)).squeeze(1), -(probs * safe).sum(dim=1)

    def _run(self, batch: int, actions: Tensor | None,
             generator: torch.Generator | None, novelty: NoveltyIndex | None = None,
             masks: Sequence[Masks] | None = None) -> PolicyOutput:
        units = self.config.units
        x = self.start.expand(batch, -1)
        zeros = self.start.new_zeros(batch, units)
        state = [(zeros, zeros) for _ in self.cells]
        anchors: dict[int, Tensor] = {}
        keys: dict[int, Tensor] = {}
        queries: dict[int, Tensor] = {}
        skip_sum: Tensor | None = None
        skip_count: Tensor | None = None
        taken, log_probs, entropies = [], [], []
        recorded: list[Masks] = [{} for _ in range(batch)]
        rows: list[tuple[int, ...]] | None = [() for _ in range(batch)] \
            if novelty is not None else None
        dead = [False] * batch
        for t, d in enumerate(self.decisions):
            if d.skip is None:
                if skip_sum is not None and skip_count is not None:
                    x = self.anchor_in(skip_sum / (1.0 + skip_count))
                    skip_sum = skip_count = None
                inp = x
                for i, cell in enumerate(self.cells):
                    state[i] = cell(inp, state[i])
                    inp = state[i][0]
                logits = self.heads[d.kind](inp)[:, : d.num_choices]
                if d.sets_anchor >= 0:
                    anchors[d.sets_anchor] = inp
                    keys[d.sets_anchor] = self.w_prev(inp)
            else:
                i, j = d.skip
                if i not in queries:
                    queries[i] = self.w_curr(anchors[i])
                logit = self.v(torch.tanh(keys[j] + queries[i]))
                logits = torch.cat([torch.zeros_like(logit), logit], dim=1)
            blocked = self._blocked(t, d, rows, novelty, masks, recorded)
            a, log_prob, entropy = self._choose(logits, blocked, dead,
                                                actions[:, t] if actions is not None else None,
                                                generator)
            taken.append(a)
            log_probs.append(log_prob)
            entropies.append(entropy)
            if rows is not None:
                rows = [(*p, c) for p, c in zip(rows, a.tolist(), strict=True)]
            if d.skip is None:
                x = self.embeddings[d.kind](a)
            else:
                chosen = a.to(anchors[d.skip[1]].dtype).unsqueeze(1)
                contrib = chosen * anchors[d.skip[1]]
                skip_sum = contrib if skip_sum is None else skip_sum + contrib
                skip_count = chosen if skip_count is None else skip_count + chosen
        return PolicyOutput(torch.stack(taken, 1), torch.stack(log_probs, 1),
                            torch.stack(entropies, 1),
                            tuple(recorded) if novelty is not None else tuple(masks or ()),
                            tuple(dead))

    @torch.no_grad()
    def sample(self, batch: int = 1, generator: torch.Generator | None = None,
               novelty: NoveltyIndex | None = None) -> PolicyOutput:
        """Sample ``batch`` action sequences with their per-decision log-probs and entropies;
        with ``novelty``, without replacement: no choice whose every completion the index
        holds (the masks applied are returned with the sequences)."""
        return self._run(batch, None, generator, novelty)

    def log_prob(self, actions: Tensor, masks: Sequence[Masks] | None = None) -> PolicyOutput:
        """Score given action sequences (B, T), differentiably; ``masks`` (one per row): the
        choices each row's distribution excluded when it was sampled."""
        if actions.dim() != 2 or actions.shape[1] != len(self.decisions):
            raise ValueError(f"actions must be (batch, {len(self.decisions)}), "
                             f"got {tuple(actions.shape)}")
        limits = torch.tensor([d.num_choices for d in self.decisions])
        if bool((actions < 0).any()) or bool((actions >= limits).any()):
            raise ValueError("actions out of range for the policy's decisions")
        if masks is not None and len(masks) != actions.shape[0]:
            raise ValueError(f"masks: one per row, got {len(masks)} for {actions.shape[0]}")
        return self._run(actions.shape[0], actions.long(), None, masks=masks)
