"""How a space's decisions form PNAS blocks, for the spaces PNAS runs on.

A ``BlockLayout`` lists each block's decisions in the order blocks are added, the actions they
may take, and what a decision holds while its block is undecided. A b-block cell must compute
what a PNAS cell of b blocks would, so undecided blocks only pass the last decided one on.

- nb201: a PNAS block makes a new hidden state from earlier ones, so a block is one of the 3
  nodes with all its incoming edges (5, 25, then 125 choices). Until node k is decided it
  copies node k-1 (edge k<-k-1 ``skip_connect``, its other edges ``none``): the 1-block cells
  are op(x). The table makes a test of the whole loop take seconds.
- nasnet / enas-micro: block b picks two inputs and two of PNAS's 8 ops (those the space has),
  combined by addition; the reduction cell copies the normal cell, as PNAS uses one cell for
  both. An undecided block adds identity(previous block) to itself, so the loose end is (2^k
  times) the last decided block; the next cell's ReLU-conv-BN preprocessing undoes the scale.
  With 8 ops the 1-block cells are PNAS's 136 (isomorphic ones once).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from controller.spaces.base import SearchSpace
from controller.spaces.cell import CellSpace
from controller.spaces.nb201 import EDGES, NUM_NODES, OPS

PNAS_OPS = ("sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "conv_1x7_7x1", "identity",
            "avg_pool_3x3", "max_pool_3x3", "dil_conv_3x3")
Prefix = tuple[tuple[int, ...], ...]  # the choices of the blocks decided so far


@dataclass(frozen=True)
class BlockLayout:
    """A space's decisions grouped into PNAS blocks (in the order they are added)."""

    groups: tuple[tuple[int, ...], ...]
    fill: tuple[int, ...]  # every decision's action while its block is undecided
    allowed: tuple[tuple[int, ...], ...]  # the actions each decision may take
    copies: tuple[tuple[int, int], ...] = ()  # (decision, the decision it always equals)

    def __post_init__(self) -> None:
        flat = [d for g in self.groups for d in g]
        if len(set(flat)) != len(flat) or not all(0 <= d < len(self.fill) for d in flat):
            raise ValueError("BlockLayout: each decision belongs to at most one block")
        if len(self.allowed) != len(self.fill):
            raise ValueError("BlockLayout: allowed needs an entry per decision")

    def choices(self, b: int) -> list[tuple[int, ...]]:
        """Every way to decide block ``b``."""
        return list(itertools.product(*(self.allowed[d] for d in self.groups[b])))

    def actions(self, prefix: Prefix) -> tuple[int, ...]:
        """The space's actions of a cell whose first ``len(prefix)`` blocks are decided."""
        actions = list(self.fill)
        for group, choice in zip(self.groups, prefix, strict=False):
            for d, c in zip(group, choice, strict=True):
                actions[d] = c
        for d, src in self.copies:
            actions[d] = actions[src]
        return tuple(actions)


def nb201_layout(space: SearchSpace) -> BlockLayout:
    """The 3 nodes, each with its incoming edges; an undecided node copies the one before."""
    groups = tuple(tuple(i for i, (to, _) in enumerate(EDGES) if to == node)
                   for node in range(1, NUM_NODES))
    fill = tuple(OPS.index("skip_connect" if src == to - 1 else "none") for to, src in EDGES)
    return BlockLayout(groups, fill, tuple(tuple(range(len(OPS))) for _ in EDGES))


def cell_layout(space: SearchSpace) -> BlockLayout:
    """Blocks of the normal cell (inputs and ops; add), the reduction cell a copy of it."""
    if not isinstance(space, CellSpace) or "add" not in space.combines:
        raise ValueError(f"space: {space.name!r} is not a cell space with an add combine")
    per_block = len(space.decisions) // (2 * space.num_blocks)
    ops = tuple(i for i, op in enumerate(space.ops) if op in PNAS_OPS)
    groups, fill, allowed = [], [], []
    for b in range(space.num_blocks):
        groups.append(tuple(per_block * b + k for k in range(4)))
        fill += [1 + b, 1 + b, space.ops.index("identity"), space.ops.index("identity")]
        allowed += [tuple(range(2 + b)), tuple(range(2 + b)), ops, ops]
        if per_block == 5:
            fill.append(space.combines.index("add"))
            allowed.append((space.combines.index("add"),))
    half = len(fill)
    copies = tuple((half + d, d) for d in range(half))
    return BlockLayout(tuple(groups), tuple(fill * 2), tuple(allowed * 2), copies)


LAYOUTS: dict[str, Callable[[SearchSpace], BlockLayout]] = {
    "nb201": nb201_layout, "nasnet": cell_layout, "enas-micro": cell_layout}
PNAS_SPACES = tuple(LAYOUTS)
