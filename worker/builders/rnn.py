"""Recurrent cells of the rnn-cell and enas-rnn spaces and the character-level language model.

A cell maps (x_t, (h_{t-1}, c_{t-1})) to (h_t, (h_t, c_t)); enas-rnn carries c_t = h_t unused.
The leaves' and nodes' input projections are batched into one Linear each, so a step costs two
matmuls plus elementwise work: fast enough to train children on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from protos.types import Architecture

State = tuple[torch.Tensor, torch.Tensor]
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}
COMBINES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "mult": torch.mul,
}


def _step(op: str) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                            Callable[[torch.Tensor], torch.Tensor]]:
    combine, _, activation = op.partition(".")
    if combine not in COMBINES or activation not in ACTIVATIONS:
        raise ValueError(f"rnn-cell op {op!r}: expected COMBINE.ACTIVATION, COMBINE in "
                         f"{tuple(COMBINES)}, ACTIVATION in {tuple(ACTIVATIONS)}")
    return COMBINES[combine], ACTIVATIONS[activation]


class TreeCell(nn.Module):
    """Zoph & Le's tree cell: leaf i = step_i(W_i x, U_i h); node = step(left, right); c_{t-1}
    is injected into one node's output, another node's output is c_t, the root's is h_t."""

    def __init__(self, arch: Architecture, hidden: int) -> None:
        super().__init__()
        tree = [n for n in arch.nodes if n.type == "tree"]
        inject = next(n for n in arch.nodes if n.type == "inject")
        cell = next(n for n in arch.nodes if n.type == "cell")
        self.leaves = sum(1 for n in tree if not n.inputs)
        self.hidden = hidden
        self.steps = [_step(n.op) for n in tree]
        self.inputs = [n.inputs for n in tree]
        self.inject_step, self.inject_at = _step(inject.op), inject.inputs[0]
        self.cell_at = cell.inputs[0]
        self.w_x = nn.Linear(hidden, self.leaves * hidden)
        self.w_h = nn.Linear(hidden, self.leaves * hidden, bias=False)

    def forward(self, x: torch.Tensor, state: State) -> State:
        """(h_t, c_t) from x_t and (h_{t-1}, c_{t-1})."""
        h_prev, c_prev = state
        xs = self.w_x(x).chunk(self.leaves, dim=-1)
        hs = self.w_h(h_prev).chunk(self.leaves, dim=-1)
        outs: list[torch.Tensor] = []
        c_t = c_prev
        for i, ((combine, act), inputs) in enumerate(zip(self.steps, self.inputs, strict=True)):
            a, b = (xs[i], hs[i]) if not inputs else (outs[inputs[0]], outs[inputs[1]])
            out = act(combine(a, b))
            if i == self.inject_at:
                out = self.inject_step[1](self.inject_step[0](out, c_prev))
            if i == self.cell_at:
                c_t = out
            outs.append(out)
        return outs[-1], c_t


class ENASCell(nn.Module):
    """The ENAS recurrent DAG: highway steps h_i = s * act(W_i h_j) + (1 - s) * h_j with gate
    s = sigmoid(W'_i h_j); node 0 reads x_t and h_{t-1}; h_t = the mean of the loose ends."""

    def __init__(self, arch: Architecture, hidden: int) -> None:
        super().__init__()
        self.acts = [ACTIVATIONS[n.op] for n in arch.nodes]
        self.inputs = [n.inputs[0] if n.inputs else -1 for n in arch.nodes]
        read = {j for j in self.inputs if j >= 0}
        self.loose = [i for i in range(len(arch.nodes)) if i not in read]
        self.w_x = nn.Linear(hidden, 2 * hidden)
        self.w_h = nn.Linear(hidden, 2 * hidden, bias=False)
        self.w_nodes = nn.ModuleList(nn.Linear(hidden, 2 * hidden, bias=False)
                                     for _ in arch.nodes[1:])

    def forward(self, x: torch.Tensor, state: State) -> State:
        """(h_t, h_t) from x_t and (h_{t-1}, unused)."""
        h_prev = state[0]
        value, gate = (self.w_x(x) + self.w_h(h_prev)).chunk(2, dim=-1)
        outs = [_highway(self.acts[0], value, gate, h_prev)]
        for i, layer in enumerate(self.w_nodes, start=1):
            h_in = outs[self.inputs[i]]
            value, gate = layer(h_in).chunk(2, dim=-1)
            outs.append(_highway(self.acts[i], value, gate, h_in))
        h_t = torch.stack([outs[i] for i in self.loose]).mean(0)
        return h_t, h_t


def _highway(act: Callable[[torch.Tensor], torch.Tensor], value: torch.Tensor,
             gate: torch.Tensor, carry: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(gate)
    return s * act(value) + (1 - s) * carry


CELLS: dict[str, Callable[[Architecture, int], nn.Module]] = {
    "rnn-cell": TreeCell, "enas-rnn": ENASCell,
}


class CharLM(nn.Module):
    """Embedding -> the searched cell unrolled over the sequence -> a softmax over characters."""

    def __init__(self, arch: Architecture, vocab: int, hidden: int) -> None:
        super().__init__()
        if arch.space not in CELLS:
            raise KeyError(f"no recurrent cell for space {arch.space!r}; known: "
                           f"{', '.join(CELLS)}")
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, hidden)
        self.cell = CELLS[arch.space](arch, hidden)
        self.decoder = nn.Linear(hidden, vocab)

    def init_state(self, batch: int, device: torch.device) -> State:
        """Zero (h, c) for ``batch`` streams."""
        zero = torch.zeros(batch, self.hidden, device=device)
        return zero, zero

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Logits (B, T, vocab) for tokens (B, T), and the state after the last step."""
        steps = []
        for x in self.embed(tokens).unbind(1):
            state = self.cell(x, state)
            steps.append(state[0])
        return self.decoder(torch.stack(steps, 1)), state


def build_char_lm(arch: Architecture, vocab: int, hidden: int) -> CharLM:
    """The language model of a recurrent-cell architecture (KeyError for other spaces)."""
    if vocab < 2 or hidden < 1:
        raise ValueError(f"char LM: vocab must be >= 2 and hidden >= 1, got {vocab}, {hidden}")
    return CharLM(arch, vocab, hidden)
