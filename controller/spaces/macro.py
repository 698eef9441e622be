"""The Zoph & Le (2017) CNN space: per layer a filter shape, a filter count, an optional stride,
and skip connections chosen by anchor-point attention over all earlier layers.

A layer that reads no earlier layer reads the image; layers no other layer reads are concatenated
into the classifier's input (as in the paper).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from controller.spaces.base import Decision, InvalidArchitecture, SearchSpace
from protos.types import Architecture, Node, SearchSpaceSpec

FILTER_SIZES = (1, 3, 5, 7)
FILTER_COUNTS = (24, 36, 48, 64)
STRIDES = (1, 2)
_LAYER = re.compile(r"^(\d+)x(\d+)x(\d+)(?:/(\d+))?(?:<(\d+(?:,\d+)*))?$")


class MacroSpace(SearchSpace):
    """``num_layers`` conv layers; with ``predict_strides`` each layer also picks a stride."""

    name = "macro"

    def __init__(self, num_layers: int = 6, predict_strides: bool = False) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.predict_strides = predict_strides
        decisions = []
        for i in range(num_layers):
            config = [Decision(f"layer{i}.filter_height", "filter_height",
                               tuple(map(str, FILTER_SIZES))),
                      Decision(f"layer{i}.filter_width", "filter_width",
                               tuple(map(str, FILTER_SIZES))),
                      Decision(f"layer{i}.filters", "filters", tuple(map(str, FILTER_COUNTS)))]
            if predict_strides:
                config.append(Decision(f"layer{i}.stride", "stride", tuple(map(str, STRIDES))))
            last = config[-1]
            config[-1] = Decision(last.name, last.kind, last.choices, sets_anchor=i)
            decisions += config
            decisions += [Decision(f"layer{i}.skip{j}", "skip", ("0", "1"), skip=(i, j))
                          for j in range(i)]
        self._decisions = tuple(decisions)

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return self._decisions

    @property
    def spec(self) -> SearchSpaceSpec:
        return SearchSpaceSpec(name=self.name, num_layers=self.num_layers,
                               predict_strides=self.predict_strides)

    def decode(self, actions: Sequence[int]) -> Architecture:
        actions = self.check_actions(actions)
        nodes = []
        k = 0
        for i in range(self.num_layers):
            fh, fw, nf = actions[k:k + 3]
            k += 3
            stride = 1
            if self.predict_strides:
                stride = STRIDES[actions[k]]
                k += 1
            inputs = tuple(j for j in range(i) if actions[k + j] == 1)
            k += i
            nodes.append(Node("layer", "conv", inputs, attrs={
                "filter_height": FILTER_SIZES[fh], "filter_width": FILTER_SIZES[fw],
                "filters": FILTER_COUNTS[nf], "stride": stride}))
        return Architecture(space=self.name, nodes=tuple(nodes))

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        if arch.space != self.name:
            raise InvalidArchitecture(f"space: expected {self.name!r}, got {arch.space!r}")
        if len(arch.nodes) != self.num_layers:
            raise InvalidArchitecture(
                f"nodes: macro has {self.num_layers} layers, got {len(arch.nodes)}")
        actions: list[int] = []
        for i, n in enumerate(arch.nodes):
            if n.type != "layer" or n.op != "conv":
                raise InvalidArchitecture(f"nodes[{i}]: expected a conv layer")
            attrs = dict(n.attrs)
            for key, allowed in (("filter_height", FILTER_SIZES), ("filter_width", FILTER_SIZES),
                                 ("filters", FILTER_COUNTS)):
                if attrs.get(key) not in allowed:
                    raise InvalidArchitecture(
                        f"nodes[{i}].attrs.{key}: {attrs.get(key)} is not one of {allowed}")
                actions.append(allowed.index(attrs[key]))
            stride = attrs.get("stride", 1)
            if self.predict_strides:
                if stride not in STRIDES:
                    raise InvalidArchitecture(
                        f"nodes[{i}].attrs.stride: {stride} is not one of {STRIDES}")
                actions.append(STRIDES.index(stride))
            elif stride != 1:
                raise InvalidArchitecture(
                    f"nodes[{i}].attrs.stride: strides are fixed to 1 unless predict_strides")
            if list(n.inputs) != sorted(set(n.inputs)) or any(not 0 <= j < i for j in n.inputs):
                raise InvalidArchitecture(
                    f"nodes[{i}].inputs: must be sorted distinct earlier layers in [0, {i})")
            actions += [int(j in n.inputs) for j in range(i)]
        return tuple(actions)

    def canonical_form(self, arch: Architecture) -> str:
        """The string form: the layer list has no symmetries (inputs are kept sorted)."""
        return self.to_string(arch)

    def to_string(self, arch: Architecture) -> str:
        """e.g. ``3x3x36;5x1x24<0;7x7x64/2<0,1`` (height x width x filters, /stride, <inputs)."""
        self.encode(arch)
        layers = []
        for n in arch.nodes:
            a = n.attrs
            text = f"{a['filter_height']}x{a['filter_width']}x{a['filters']}"
            if self.predict_strides:
                text += f"/{a['stride']}"
            if n.inputs:
                text += "<" + ",".join(map(str, n.inputs))
            layers.append(text)
        return ";".join(layers)

    def from_string(self, text: str) -> Architecture:
        nodes = []
        for i, part in enumerate(text.strip().split(";")):
            m = _LAYER.match(part)
            if not m:
                raise InvalidArchitecture(f"arch: layer {i} {part!r} is not like '3x5x36/2<0,1'")
            inputs = tuple(int(j) for j in m.group(5).split(",")) if m.group(5) else ()
            nodes.append(Node("layer", "conv", inputs, attrs={
                "filter_height": int(m.group(1)), "filter_width": int(m.group(2)),
                "filters": int(m.group(3)), "stride": int(m.group(4) or 1)}))
        arch = Architecture(space=self.name, nodes=tuple(nodes))
        self.encode(arch)
        return arch
