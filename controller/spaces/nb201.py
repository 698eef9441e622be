"""NAS-Bench-201: a 4-node cell, 6 edges, 5 ops; string form as the benchmark's ``arch_str``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from controller.spaces.base import Decision, InvalidArchitecture, SearchSpace
from protos.types import Architecture, Node, SearchSpaceSpec

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_NODES = 4
# (target, source) of each edge, in the order of the arch_str: |1<-0|+|2<-0|2<-1|+|3<-0|3<-1|3<-2|
EDGES = tuple((to, src) for to in range(1, NUM_NODES) for src in range(to))
_ARCH_STR = re.compile(r"^\|(?:[a-z0-9_]+~\d\|)+(?:\+\|(?:[a-z0-9_]+~\d\|)+)*$")


class NB201Space(SearchSpace):
    """The NAS-Bench-201 cell space: 5**6 = 15,625 cells."""

    name = "nb201"

    def __init__(self) -> None:
        self._decisions = tuple(
            Decision(name=f"edge{to}<-{src}", kind="op", choices=OPS) for to, src in EDGES)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return self._decisions

    @property
    def spec(self) -> SearchSpaceSpec:
        return SearchSpaceSpec(name=self.name)

    def decode(self, actions: Sequence[int]) -> Architecture:
        actions = self.check_actions(actions)
        nodes = tuple(Node(type="edge", op=OPS[a], inputs=(src,), attrs={"to": to})
                      for a, (to, src) in zip(actions, EDGES, strict=True))
        return Architecture(space=self.name, nodes=nodes)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        if arch.space != self.name:
            raise InvalidArchitecture(f"space: expected {self.name!r}, got {arch.space!r}")
        if len(arch.nodes) != len(EDGES):
            raise InvalidArchitecture(f"nodes: nb201 has {len(EDGES)} edges, got {len(arch.nodes)}")
        actions = []
        for i, (node, (to, src)) in enumerate(zip(arch.nodes, EDGES, strict=True)):
            if node.type != "edge" or node.inputs != (src,) or dict(node.attrs) != {"to": to}:
                raise InvalidArchitecture(f"nodes[{i}]: expected edge {src}->{to}")
            if node.op not in OPS:
                raise InvalidArchitecture(f"nodes[{i}].op: {node.op!r} is not one of {OPS}")
            actions.append(OPS.index(node.op))
        return tuple(actions)

    def canonical_form(self, arch: Architecture) -> str:
        """NAS-Bench-201's isomorphism key (``to_unique_str(consider_zero=True)``).

        skip_connect passes its input's expression through, "none" (or any op on a zero input) is
        zero, and each node's terms are sorted. 15,625 cells collapse to 6,466 classes, the same
        partition as the benchmark's ``unique_str`` column (checked by the tests).
        """
        exprs = {0: "0"}
        for to in range(1, NUM_NODES):
            terms = []
            for node in arch.nodes:
                if node.attrs["to"] != to:
                    continue
                src = exprs[node.inputs[0]]
                if node.op == "none" or src == "#":
                    terms.append("#")
                elif node.op == "skip_connect":
                    terms.append(src)
                else:
                    terms.append(f"({src})@{node.op}")
            exprs[to] = "+".join(sorted(terms))
        return exprs[NUM_NODES - 1]

    def to_string(self, arch: Architecture) -> str:
        self.encode(arch)
        parts = []
        for to in range(1, NUM_NODES):
            edges = [n for n in arch.nodes if n.attrs["to"] == to]
            parts.append("|" + "".join(f"{n.op}~{n.inputs[0]}|" for n in edges))
        return "+".join(parts)

    def from_string(self, text: str) -> Architecture:
        text = text.strip()
        if not _ARCH_STR.match(text):
            raise InvalidArchitecture(
                f"arch: {text!r} is not an NB201 arch_str like "
                "'|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'")
        actions = []
        for to, group in enumerate(text.split("+"), start=1):
            items = [item for item in group.split("|") if item]
            if len(items) != to:
                raise InvalidArchitecture(f"arch: node {to} needs {to} edges, got {len(items)}")
            for src, item in enumerate(items):
                op, _, idx = item.partition("~")
                if int(idx) != src:
                    raise InvalidArchitecture(
                        f"arch: edge {item!r} of node {to} must read node {src}")
                if op not in OPS:
                    raise InvalidArchitecture(f"arch: op {op!r} is not one of {', '.join(OPS)}")
                actions.append(OPS.index(op))
        if len(actions) != len(EDGES):
            raise InvalidArchitecture(f"arch: needs {NUM_NODES - 1} nodes separated by '+'")
        return self.decode(actions)
