"""Recurrent-cell spaces: Zoph & Le's (2017) tree cell and the ENAS (2018) recurrent DAG.

``rnn-cell`` (base 8): a full binary tree with 8 leaves (nodes 0-7), internal nodes 8-13 and the
root 14 (h_t). Leaf i combines W_i x_t and U_i h_{t-1}; an internal node combines its two
children; each node picks a combine {add, mult} and an activation. Then, as in the paper, the
"cell inject" (combine + activation applied to c_{t-1} and one node's output) and the "cell
indices": which non-root node's output becomes c_t and which receives c_{t-1}.

``enas-rnn``: node 0 = act(W x_t + U h_{t-1}); node i > 0 reads one earlier node and picks an
activation (an ENAS highway step); the cell output h_t is the mean of the loose ends.

Canonical form = string form: no symmetry (e.g. swapping an add node's children) is reduced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from controller.spaces.base import Decision, InvalidArchitecture, SearchSpace
from protos.types import Architecture, Node, SearchSpaceSpec

COMBINES = ("add", "mult")
TREE_ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
ENAS_ACTIVATIONS = ("tanh", "relu", "identity", "sigmoid")
TREE_LEAVES = 8
_STEP = re.compile(r"^(add|mult)\.([a-z]+)$")


def tree_children(node: int, leaves: int = TREE_LEAVES) -> tuple[int, int] | None:
    """The two children of a tree node (None for a leaf); nodes are numbered level by level."""
    if node < leaves:
        return None
    level_start, width = 0, leaves
    while node >= level_start + width:
        level_start, width = level_start + width, width // 2
    k = node - level_start
    prev_start = level_start - 2 * width
    return prev_start + 2 * k, prev_start + 2 * k + 1


class RNNTreeSpace(SearchSpace):
    """Zoph & Le's base-8 tree cell; decisions: per node combine + activation, then the cell
    inject's combine + activation, then the cell indices (c_t's node, the injected node)."""

    name = "rnn-cell"
    num_nodes = 2 * TREE_LEAVES - 1

    def __init__(self) -> None:
        decisions = []
        for i in range(self.num_nodes):
            decisions += [Decision(f"node{i}.combine", "combine", COMBINES),
                          Decision(f"node{i}.activation", "activation", TREE_ACTIVATIONS)]
        targets = tuple(str(i) for i in range(self.num_nodes - 1))
        decisions += [Decision("inject.combine", "combine", COMBINES),
                      Decision("inject.activation", "activation", TREE_ACTIVATIONS),
                      Decision("cell_index", "index", targets),
                      Decision("inject_index", "index", targets)]
        self._decisions = tuple(decisions)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return self._decisions

    @property
    def spec(self) -> SearchSpaceSpec:
        return SearchSpaceSpec(name=self.name)

    def decode(self, actions: Sequence[int]) -> Architecture:
        a = self.check_actions(actions)
        nodes = [Node("tree", f"{COMBINES[a[2 * i]]}.{TREE_ACTIVATIONS[a[2 * i + 1]]}",
                      tree_children(i) or ()) for i in range(self.num_nodes)]
        k = 2 * self.num_nodes
        nodes.append(Node("inject", f"{COMBINES[a[k]]}.{TREE_ACTIVATIONS[a[k + 1]]}",
                          (a[k + 3],)))
        nodes.append(Node("cell", "c_t", (a[k + 2],)))
        return Architecture(space=self.name, nodes=tuple(nodes))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        if arch.space != self.name:
            raise InvalidArchitecture(f"space: expected {self.name!r}, got {arch.space!r}")
        if len(arch.nodes) != self.num_nodes + 2:
            raise InvalidArchitecture(f"nodes: rnn-cell has {self.num_nodes} tree nodes, an "
                                      f"inject and a cell node, got {len(arch.nodes)} nodes")
        actions: list[int] = []
        for i, n in enumerate(arch.nodes[:self.num_nodes + 1]):
            kind = "tree" if i < self.num_nodes else "inject"
            if n.type != kind:
                raise InvalidArchitecture(f"nodes[{i}].type: expected {kind!r}, got {n.type!r}")
            actions += _step_actions(f"nodes[{i}].op", n.op, TREE_ACTIVATIONS)
            want = (tree_children(i) or ()) if kind == "tree" else n.inputs
            if n.inputs != want:
                raise InvalidArchitecture(f"nodes[{i}].inputs: expected {want}, got {n.inputs}")
        inject, cell = arch.nodes[self.num_nodes], arch.nodes[self.num_nodes + 1]
        if cell.type != "cell" or cell.op != "c_t":
            raise InvalidArchitecture(f"nodes[{self.num_nodes + 1}]: expected the c_t cell node")
        for where, n in ((self.num_nodes, inject), (self.num_nodes + 1, cell)):
            if len(n.inputs) != 1 or not 0 <= n.inputs[0] < self.num_nodes - 1:
                raise InvalidArchitecture(f"nodes[{where}].inputs: one non-root tree node in "
                                          f"[0, {self.num_nodes - 1}), got {n.inputs}")
        return (*actions, cell.inputs[0], inject.inputs[0])

    def canonical_form(self, arch: Architecture) -> str:
        return self.to_string(arch)

    def to_string(self, arch: Architecture) -> str:
        """e.g. ``add.tanh,...(15 nodes);inject=3:mult.relu;cell=9``."""
        self.encode(arch)
        tree = ",".join(n.op for n in arch.nodes[:self.num_nodes])
        inject, cell = arch.nodes[self.num_nodes], arch.nodes[self.num_nodes + 1]
        return f"{tree};inject={inject.inputs[0]}:{inject.op};cell={cell.inputs[0]}"

    def from_string(self, text: str) -> Architecture:
        m = re.fullmatch(r"([a-z.,]+);inject=(\d+):([a-z.]+);cell=(\d+)", text.strip())
        if not m:
            raise InvalidArchitecture(f"arch: {text!r} is not like "
                                      "'add.tanh,...;inject=3:mult.relu;cell=9'")
        tree = m.group(1).split(",")
        nodes = [Node("tree", op, tree_children(i) or ()) for i, op in enumerate(tree)]
        nodes += [Node("inject", m.group(3), (int(m.group(2)),)),
                  Node("cell", "c_t", (int(m.group(4)),))]
        arch = Architecture(space=self.name, nodes=tuple(nodes))
        self.encode(arch)
        return arch


def _step_actions(where: str, op: str, activations: tuple[str, ...]) -> list[int]:
    m = _STEP.match(op)
    if not m or m.group(2) not in activations:
        raise InvalidArchitecture(f"{where}: {op!r} is not COMBINE.ACTIVATION with COMBINE in "
                                  f"{COMBINES} and ACTIVATION in {activations}")
    return [COMBINES.index(m.group(1)), activations.index(m.group(2))]


class ENASRNNSpace(SearchSpace):
    """The ENAS recurrent cell with ``num_nodes`` nodes; decisions: node 0's activation, then
    per node i > 0 its input (an earlier node) and activation."""

    name = "enas-rnn"

    def __init__(self, num_nodes: int = 8) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes = num_nodes
        decisions = [Decision("node0.activation", "activation", ENAS_ACTIVATIONS)]
        for i in range(1, num_nodes):
            decisions += [Decision(f"node{i}.input", "input", tuple(map(str, range(i)))),
                          Decision(f"node{i}.activation", "activation", ENAS_ACTIVATIONS)]
        self._decisions = tuple(decisions)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return self._decisions

    @property
    def spec(self) -> SearchSpaceSpec:
        return SearchSpaceSpec(name=self.name, num_blocks=self.num_nodes)

    def decode(self, actions: Sequence[int]) -> Architecture:
        a = self.check_actions(actions)
        nodes = [Node("node", ENAS_ACTIVATIONS[a[0]])]
        nodes += [Node("node", ENAS_ACTIVATIONS[a[2 * i]], (a[2 * i - 1],))
                  for i in range(1, self.num_nodes)]
        return Architecture(space=self.name, nodes=tuple(nodes))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        if arch.space != self.name:
            raise InvalidArchitecture(f"space: expected {self.name!r}, got {arch.space!r}")
        if len(arch.nodes) != self.num_nodes:
            raise InvalidArchitecture(
                f"nodes: enas-rnn has {self.num_nodes} nodes, got {len(arch.nodes)}")
        actions: list[int] = []
        for i, n in enumerate(arch.nodes):
            if n.type != "node" or n.op not in ENAS_ACTIVATIONS:
                raise InvalidArchitecture(f"nodes[{i}]: expected a node with op in "
                                          f"{ENAS_ACTIVATIONS}, got {n.type!r} {n.op!r}")
            if i == 0:
                if n.inputs:
                    raise InvalidArchitecture(f"nodes[0].inputs: node 0 reads x_t and h_{{t-1}},"
                                              f" got {n.inputs}")
            elif len(n.inputs) != 1 or not 0 <= n.inputs[0] < i:
                raise InvalidArchitecture(
                    f"nodes[{i}].inputs: one earlier node in [0, {i}), got {n.inputs}")
            else:
                actions.append(n.inputs[0])
            actions.append(ENAS_ACTIVATIONS.index(n.op))
        return tuple(actions)

    def canonical_form(self, arch: Architecture) -> str:
        return self.to_string(arch)

    def to_string(self, arch: Architecture) -> str:
        """e.g. ``tanh;0:relu;0:identity;2:sigmoid`` (node 0, then INPUT:ACTIVATION per node)."""
        self.encode(arch)
        return ";".join(n.op if i == 0 else f"{n.inputs[0]}:{n.op}"
                        for i, n in enumerate(arch.nodes))

    def from_string(self, text: str) -> Architecture:
        nodes = []
        for i, part in enumerate(text.strip().split(";")):
            m = re.fullmatch(r"(?:(\d+):)?([a-z]+)", part)
            if not m or (m.group(1) is None) != (i == 0):
                raise InvalidArchitecture(f"arch: node {i} {part!r} is not like "
                                          f"{'tanh' if i == 0 else '0:relu'}")
            nodes.append(Node("node", m.group(2), (int(m.group(1)),) if m.group(1) else ()))
        arch = Architecture(space=self.name, nodes=tuple(nodes))
        self.encode(arch)
        return arch
