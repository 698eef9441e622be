"""The Zoph & Le (2017) macro network: a stack of conv layers with learned skip connections.

Layer i reads the channel concatenation of its input layers (the stem output when it has none).
Inputs of different spatial sizes are brought to the smallest one by average pooling (k = s =
the size ratio, ceil mode), which matches the ceil(H / stride) sizes of the strided convs. The
layers no other layer reads are concatenated the same way, then ReLU, global pool and linear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from protos.types import Architecture, Node
from worker.builders.base import ChildNet, ModelSpec
from worker.layers import ReLUConvBN

LayerFactory = Callable[[int, int, int, int, int], nn.Module]
"""Builds a layer from (c_in, c_out, filter_height, filter_width, stride)."""

LAYERS: dict[str, LayerFactory] = {
    "conv": lambda c_in, c_out, fh, fw, stride: ReLUConvBN(c_in, c_out, (fh, fw), stride),
}


def _resize(factor: int) -> nn.Module:
    return nn.AvgPool2d(factor, stride=factor, ceil_mode=True) if factor > 1 else nn.Identity()


class Gather(nn.Module):
    """Concatenate chosen tensors along channels after pooling each to the smallest size."""

    def __init__(self, sources: Sequence[int], scales: Sequence[int]) -> None:
        super().__init__()
        self.sources = list(sources)
        target = max(scales[s] for s in self.sources)
        self.resize = nn.ModuleList(_resize(target // scales[s]) for s in self.sources)

    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The concatenation of ``tensors[s]`` for every source ``s``."""
        parts = [resize(tensors[s]) for s, resize in zip(self.sources, self.resize, strict=True)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class MacroNet(ChildNet):
    """Stem (3x3 conv + BN to ``spec.filters``), the layers of ``arch``, pool + linear.

    Tensor 0 is the stem output and tensor 1 + i is layer i's output.
    """

    def __init__(self, arch: Architecture, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, spec.filters, 3, padding=1, bias=False),
            nn.BatchNorm2d(spec.filters))
        channels, scales = [spec.filters], [1]
        gathers, layers = [], []
        for node in arch.nodes:
            a = node.attrs
            sources = [1 + j for j in node.inputs] or [0]
            gathers.append(Gather(sources, scales))
            c_in = sum(channels[s] for s in sources)
            layers.append(LAYERS[node.op](c_in, a["filters"], a["filter_height"],
                                          a["filter_width"], a.get("stride", 1)))
            channels.append(a["filters"])
            scales.append(max(scales[s] for s in sources) * a.get("stride", 1))
        self.gathers = nn.ModuleList(gathers)
        self.layers = nn.ModuleList(layers)
        read = {j for node in arch.nodes for j in node.inputs}
        loose = [1 + i for i in range(len(arch.nodes)) if i not in read]
        self.head = Gather(loose, scales)
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(sum(channels[s] for s in loose), spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, num_classes)."""
        tensors = [self.stem(x)]
        for gather, layer in zip(self.gathers, self.layers, strict=True):
            tensors.append(layer(gather(tensors)))
        out = self.relu(self.head(tensors))
        return self.classifier(self.pool(out).flatten(1))


def check_layer(i: int, node: Node) -> None:
    """Raise ValueError unless ``node`` is a well-formed layer ``i`` of a macro net."""
    where = f"macro nodes[{i}]"
    if node.type != "layer" or node.op not in LAYERS:
        raise ValueError(f"{where}: expected a layer with op in {tuple(LAYERS)}, "
                         f"got {node.type!r} {node.op!r}")
    a = node.attrs
    for key in ("filter_height", "filter_width"):
        if a.get(key, 0) < 1 or a[key] % 2 == 0:
            raise ValueError(f"{where}.attrs.{key}: must be an odd size >= 1, got {a.get(key)}")
    if a.get("filters", 0) < 1:
        raise ValueError(f"{where}.attrs.filters: must be >= 1, got {a.get('filters')}")
    if a.get("stride", 1) not in (1, 2):
        raise ValueError(f"{where}.attrs.stride: must be 1 or 2, got {a.get('stride')}")
    if len(set(node.inputs)) != len(node.inputs) or any(not 0 <= j < i for j in node.inputs):
        raise ValueError(f"{where}.inputs: must be distinct earlier layers, got {node.inputs}")


def build_macro(arch: Architecture, spec: ModelSpec) -> ChildNet:
    """The macro network of ``arch`` (spec.cells, drop_path and aux_head do not apply)."""
    if not arch.nodes:
        raise ValueError("macro nodes: need at least one layer")
    for i, node in enumerate(arch.nodes):
        check_layer(i, node)
    return MacroNet(arch, spec)
