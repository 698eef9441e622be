"""Cell spaces: NASNet (13 ops, add/concat combine) and ENAS micro (5 ops, add).

A cell has two inputs (state 0 = h_{i-1}, state 1 = h_i) and B blocks; block b picks two states
from [0, 2 + b), an op for each and a combine, and its output is state 2 + b. Loose ends (block
outputs no block reads) are concatenated into the cell output. There is a normal and a
reduction cell; decisions run normal cell first, per block: input_a, input_b, op_a, op_b[, combine].
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from controller.spaces.base import Decision, InvalidArchitecture, SearchSpace
from protos.types import Architecture, Node, SearchSpaceSpec

NASNET_OPS = (
    "identity", "conv_1x7_7x1", "avg_pool_3x3", "max_pool_5x5", "conv_1x1", "sep_conv_3x3",
    "sep_conv_7x7", "conv_1x3_3x1", "dil_conv_3x3", "max_pool_3x3", "max_pool_7x7", "conv_3x3",
    "sep_conv_5x5",
)
ENAS_OPS = ("identity", "sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3")
CELLS = ("normal", "reduction")
_COMBINE_SYMBOL = {"add": "+", "concat": "&"}
_BLOCK = re.compile(r"^([a-z0-9_]+)~(\d+)([+&])([a-z0-9_]+)~(\d+)$")


class CellSpace(SearchSpace):
    """A NASNet-style two-cell space with ``num_blocks`` blocks per cell."""

    def __init__(self, name: str, ops: Sequence[str], combines: Sequence[str],
                 num_blocks: int = 5) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.name = name
        self.ops = tuple(ops)
        self.combines = tuple(combines)
        self.num_blocks = num_blocks
        decisions = []
        for cell in CELLS:
            for b in range(num_blocks):
                states = tuple(str(s) for s in range(2 + b))
                prefix = f"{cell}.block{b}"
                decisions += [Decision(f"{prefix}.input_a", "input", states),
                              Decision(f"{prefix}.input_b", "input", states),
                              Decision(f"{prefix}.op_a", "op", self.ops),
                              Decision(f"{prefix}.op_b", "op", self.ops)]
                if len(self.combines) > 1:
                    decisions.append(Decision(f"{prefix}.combine", "combine", self.combines))
        self._decisions = tuple(decisions)
        self._per_block = 5 if len(self.combines) > 1 else 4

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return self._decisions

    @property
    def spec(self) -> SearchSpaceSpec:
        return SearchSpaceSpec(name=self.name, num_blocks=self.num_blocks)

    def decode(self, actions: Sequence[int]) -> Architecture:
        actions = self.check_actions(actions)
        nodes: list[Node] = []
        k = 0
        for cell in CELLS:
            for b in range(self.num_blocks):
                ia, ib, oa, ob = actions[k:k + 4]
                combine = self.combines[actions[k + 4] if self._per_block == 5 else 0]
                k += self._per_block
                nodes += [Node("branch", self.ops[oa], (ia,), cell),
                          Node("branch", self.ops[ob], (ib,), cell),
                          Node("combine", combine, (3 * b, 3 * b + 1), cell)]
        return Architecture(space=self.name, nodes=tuple(nodes))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        if arch.space != self.name:
            raise InvalidArchitecture(f"space: expected {self.name!r}, got {arch.space!r}")
        want = 2 * 3 * self.num_blocks
        if len(arch.nodes) != want:
            raise InvalidArchitecture(f"nodes: {self.name} with B={self.num_blocks} has {want} "
                                      f"nodes, got {len(arch.nodes)}")
        actions: list[int] = []
        for i in range(0, want, 3):
            a, b, c = arch.nodes[i:i + 3]
            block = (i // 3) % self.num_blocks
            cell = CELLS[i // (3 * self.num_blocks)]
            for j, n in enumerate((a, b)):
                if n.type != "branch" or n.cell != cell or len(n.inputs) != 1:
                    raise InvalidArchitecture(f"nodes[{i + j}]: expected a {cell} branch node")
                if not 0 <= n.inputs[0] < 2 + block:
                    raise InvalidArchitecture(
                        f"nodes[{i + j}].inputs: block {block} can read states 0..{1 + block}")
                if n.op not in self.ops:
                    raise InvalidArchitecture(f"nodes[{i + j}].op: {n.op!r} is not an op of "
                                              f"{self.name}: {', '.join(self.ops)}")
            if c.type != "combine" or c.cell != cell or c.inputs != (3 * block, 3 * block + 1):
                raise InvalidArchitecture(f"nodes[{i + 2}]: expected the combine of block {block}")
            if c.op not in self.combines:
                raise InvalidArchitecture(f"nodes[{i + 2}].op: {c.op!r} is not one of "
                                          f"{', '.join(self.combines)}")
            actions += [a.inputs[0], b.inputs[0], self.ops.index(a.op), self.ops.index(b.op)]
            if self._per_block == 5:
                actions.append(self.combines.index(c.op))
        return tuple(actions)

    def _cell_blocks(self, arch: Architecture, cell: str) -> list[tuple[Node, Node, Node]]:
        nodes = [n for n in arch.nodes if n.cell == cell]
        return [(nodes[i], nodes[i + 1], nodes[i + 2]) for i in range(0, len(nodes), 3)]

    def canonical_form(self, arch: Architecture) -> str:
        """Per cell, the output as an expression tree with commutative combines sorted.

        Identity passes its input through; blocks are named by what they compute, so reordering
        blocks or swapping the two branches of a block does not change the form.
        """
        self.encode(arch)
        forms = []
        for cell in CELLS:
            exprs = ["h0", "h1"]
            used: set[int] = set()
            for a, b, c in self._cell_blocks(arch, cell):
                branches = []
                for n in (a, b):
                    used.add(n.inputs[0])
                    src = exprs[n.inputs[0]]
                    branches.append(src if n.op == "identity" else f"{n.op}({src})")
                exprs.append(f"{c.op}({','.join(sorted(branches))})")
            loose = sorted(exprs[s] for s in range(2, len(exprs)) if s not in used)
            forms.append(f"{cell}:concat({','.join(loose)})")
        return ";".join(forms)

    def to_string(self, arch: Architecture) -> str:
        """e.g. ``normal:sep_conv_3x3~1+identity~0,...;reduction:...`` (``&`` marks concat)."""
        self.encode(arch)
        parts = []
        for cell in CELLS:
            blocks = [f"{a.op}~{a.inputs[0]}{_COMBINE_SYMBOL[c.op]}{b.op}~{b.inputs[0]}"
                      for a, b, c in self._cell_blocks(arch, cell)]
            parts.append(f"{cell}:{','.join(blocks)}")
        return ";".join(parts)

    def from_string(self, text: str) -> Architecture:
        cells = text.strip().split(";")
        if len(cells) != 2:
            raise InvalidArchitecture("arch: expected 'normal:...;reduction:...'")
        nodes: list[Node] = []
        for cell, part in zip(CELLS, cells, strict=True):
            label, _, body = part.partition(":")
            if label != cell:
                raise InvalidArchitecture(f"arch: expected the {cell} cell, got {label!r}")
            blocks = body.split(",")
            if len(blocks) != self.num_blocks:
                raise InvalidArchitecture(
                    f"arch: {cell} cell needs {self.num_blocks} blocks, got {len(blocks)}")
            for b, block in enumerate(blocks):
                m = _BLOCK.match(block)
                if not m:
                    raise InvalidArchitecture(
                        f"arch: block {block!r} is not like 'sep_conv_3x3~1+identity~0'")
                combine = "add" if m.group(3) == "+" else "concat"
                nodes += [Node("branch", m.group(1), (int(m.group(2)),), cell),
                          Node("branch", m.group(4), (int(m.group(5)),), cell),
                          Node("combine", combine, (3 * b, 3 * b + 1), cell)]
        arch = Architecture(space=self.name, nodes=tuple(nodes))
        self.encode(arch)
        return arch


def nasnet(num_blocks: int = 5) -> CellSpace:
    """NASNet's space: 13 ops, add or concat combine, B blocks (default 5)."""
    return CellSpace("nasnet", NASNET_OPS, ("add", "concat"), num_blocks)


def enas_micro(num_blocks: int = 5) -> CellSpace:
    """ENAS's micro space: 5 ops, blocks combined by addition."""
    return CellSpace("enas-micro", ENAS_OPS, ("add",), num_blocks)
