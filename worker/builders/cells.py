"""The NASNet / ENAS-micro cell: B blocks over two input states, loose ends concatenated.

State 0 is h_{i-1} (the cell two back), state 1 is h_i (the previous cell), state 2 + b is the
output of block b. Each block applies one op to each of two states and combines the results;
in a reduction cell ops that read states 0 and 1 use stride 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from protos.types import Node
from worker.builders.drop_path import ScheduledDropPath
from worker.layers import FactorizedReduce, ReLUConvBN
from worker.ops import create_op


class AddCombine(nn.Module):
    """Combine two branches by addition."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a + b``."""
        return a + b


class ConcatCombine(nn.Module):
    """Concatenate two C-channel branches, then ReLU-Conv1x1-BN back to C channels.

    The projection keeps every state at C channels, so any later op can read it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.project = ReLUConvBN(2 * channels, channels, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The projected channel concatenation of ``a`` and ``b``."""
        return self.project(torch.cat([a, b], dim=1))


COMBINES: dict[str, Callable[[int], nn.Module]] = {
    "add": lambda channels: AddCombine(),
    "concat": ConcatCombine,
}


@dataclass(frozen=True)
class BlockSpec:
    """One block of a cell: ``combine(op_a(state input_a), op_b(state input_b))``."""

    op_a: str
    input_a: int
    op_b: str
    input_b: int
    combine: str


def parse_cell(nodes: Sequence[Node], cell: str) -> list[BlockSpec]:
    """The blocks of one cell from its nodes (combine inputs are positions in ``nodes``).

    Raises ValueError naming the bad node when the nodes are not a well-formed cell.
    """
    blocks: list[BlockSpec] = []
    for pos, node in enumerate(nodes):
        if node.type == "branch":
            continue
        where = f"{cell} cell nodes[{pos}]"
        if node.type != "combine" or node.op not in COMBINES or len(node.inputs) != 2:
            raise ValueError(f"{where}: expected a branch or a combine of {tuple(COMBINES)} "
                             f"with two inputs, got {node.type!r} {node.op!r}")
        branches = []
        for i in node.inputs:
            if not 0 <= i < len(nodes) or nodes[i].type != "branch" or len(nodes[i].inputs) != 1:
                raise ValueError(f"{where}: input {i} is not a branch node of the cell")
            state = nodes[i].inputs[0]
            if not 0 <= state < 2 + len(blocks):
                raise ValueError(f"{where}: block {len(blocks)} cannot read state {state}")
            branches.append((nodes[i].op, state))
        (op_a, in_a), (op_b, in_b) = branches
        blocks.append(BlockSpec(op_a, in_a, op_b, in_b, node.op))
    if not blocks:
        raise ValueError(f"{cell} cell: no combine node")
    return blocks


class Branch(nn.Sequential):
    """An op followed by ScheduledDropPath (not after a plain identity, as in NASNet/DARTS)."""

    def __init__(self, op: str, channels: int, stride: int, drop_path: float) -> None:
        module = create_op(op, channels, stride)
        drop = nn.Identity() if isinstance(module, nn.Identity) else ScheduledDropPath(drop_path)
        super().__init__(module, drop)


class Block(nn.Module):
    """Two branches and their combine."""

    def __init__(self, spec: BlockSpec, channels: int, reduction: bool, drop_path: float) -> None:
        super().__init__()
        stride_a = 2 if reduction and spec.input_a < 2 else 1
        stride_b = 2 if reduction and spec.input_b < 2 else 1
        self.branch_a = Branch(spec.op_a, channels, stride_a, drop_path)
        self.branch_b = Branch(spec.op_b, channels, stride_b, drop_path)
        self.combine = COMBINES[spec.combine](channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The block output from its two input states."""
        return self.combine(self.branch_a(a), self.branch_b(b))


class Cell(nn.Module):
    """A normal or reduction cell with ``channels`` channels per state.

    Inputs are preprocessed to ``channels`` by a 1x1 ReLU-Conv-BN, or by FactorizedReduce for
    h_{i-1} when the previous cell was a reduction cell (so h_{i-1} is twice as large). The
    output concatenates the loose ends: ``out_channels = len(loose) * channels``.
    """

    def __init__(self, blocks: Sequence[BlockSpec], c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool, drop_path: float) -> None:
        super().__init__()
        self.pre0: nn.Module = (FactorizedReduce(c_prev_prev, channels) if reduction_prev
                                else ReLUConvBN(c_prev_prev, channels, 1))
        self.pre1 = ReLUConvBN(c_prev, channels, 1)
        self.inputs = [(b.input_a, b.input_b) for b in blocks]
        self.blocks = nn.ModuleList(Block(b, channels, reduction, drop_path) for b in blocks)
        read = {state for pair in self.inputs for state in pair}
        self.loose = [2 + k for k in range(len(blocks)) if 2 + k not in read]
        self.out_channels = len(self.loose) * channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """The cell output from h_{i-1} (``s0``) and h_i (``s1``)."""
        states = [self.pre0(s0), self.pre1(s1)]
        for (a, b), block in zip(self.inputs, self.blocks, strict=True):
            states.append(block(states[a], states[b]))
        return torch.cat([states[i] for i in self.loose], dim=1)
