"""The NAS-Bench-201 network: stem, 3 stages of N cells, residual reduction blocks between."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from protos.types import Architecture
from worker.builders.base import ChildNet, ModelSpec
from worker.layers import ReLUConvBN
from worker.ops import create_op

NUM_NODES = 4


class ResidualReduction(nn.Module):
    """NAS-Bench-201's ResNet basic block between stages: stride 2, channels doubled.

    The shortcut average-pools (2x2, stride 2, ceil mode so odd sizes match the 3x3 convs) and
    projects with a 1x1 conv, as in the benchmark.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, stride=1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2, ceil_mode=True),
                                      nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the spatial size of ``x`` and change its channels."""
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Cell(nn.Module):
    """A 4-node cell: node 0 is the input, node j sums op(node i) over its edges i -> j."""

    def __init__(self, arch: Architecture, channels: int) -> None:
        super().__init__()
        self.edges = [(int(n.attrs["to"]), n.inputs[0]) for n in arch.nodes]
        self.ops = nn.ModuleList(create_op(n.op, channels, 1) for n in arch.nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last node's value."""
        nodes = [x]
        for to in range(1, NUM_NODES):
            terms = [op(nodes[src]) for (dst, src), op in zip(self.edges, self.ops, strict=True)
                     if dst == to]
            total = terms[0]
            for term in terms[1:]:
                total = total + term
            nodes.append(total)
        return nodes[-1]


def nb201_skeleton(spec: ModelSpec, cell: Callable[[int], nn.Module]
                   ) -> tuple[nn.Module, list[nn.Module], int]:
    """The stem, the layers (3 stages of ``spec.cells`` cells of ``cell(channels)``, a
    residual reduction before stages 2 and 3) and the last stage's channels."""
    c = spec.filters
    stem = nn.Sequential(nn.Conv2d(spec.in_channels, c, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c))
    layers: list[nn.Module] = []
    for stage in range(3):
        if stage > 0:
            layers.append(ResidualReduction(c, 2 * c))
            c *= 2
        layers += [cell(c) for _ in range(spec.cells)]
    return stem, layers, c


class NB201Net(ChildNet):
    """The NAS-Bench-201 skeleton (TinyNetwork) with one cell repeated in every stage."""

    def __init__(self, arch: Architecture, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.stem, layers, c = nb201_skeleton(spec, lambda channels: NB201Cell(arch, channels))
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, num_classes)."""
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.pool(out).flatten(1))


def check_nb201(arch: Architecture) -> None:
    """Raise ValueError unless ``arch`` has one edge node per NB201 edge (to > src)."""
    want = {(to, src) for to in range(1, NUM_NODES) for src in range(to)}
    got = []
    for i, n in enumerate(arch.nodes):
        if n.type != "edge" or len(n.inputs) != 1 or "to" not in n.attrs:
            raise ValueError(f"nb201 nodes[{i}]: expected an edge node with one input and 'to'")
        got.append((int(n.attrs["to"]), n.inputs[0]))
    if sorted(got) != sorted(want):
        raise ValueError(f"nb201 nodes: expected the {len(want)} edges {sorted(want)}, got {got}")


def build_nb201(arch: Architecture, spec: ModelSpec) -> ChildNet:
    """The NAS-Bench-201 network of ``arch`` (drop_path and aux_head do not apply)."""
    check_nb201(arch)
    return NB201Net(arch, spec)
