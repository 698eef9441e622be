"""Weight-sharing supernets (ENAS, Pham et al. 2018): every architecture of a space is a path
through one network, so a sampled child is evaluated with the shared weights, not trained.

- ``CellSupernet`` (enas-micro, nasnet): NASNet stacking; each block slot holds one module per op
  (and, in reduction cells, a stride-2 copy for reading the cell inputs), shared by every
  architecture that picks that op there. A cell's loose ends go through ENAS's output 1x1 conv,
  whose weight columns are gathered for the loose ends the architecture has, so every cell
  outputs C channels whatever its architecture.
- ``NB201Supernet``: the NAS-Bench-201 skeleton with the 5 ops on each of a cell's 6 edges.
- ``MacroSupernet`` (Zoph & Le's macro space): per layer one 7x7 convolution of 64 output
  channels, input columns laid out per possible source layer; a layer uses the centre
  ``filter_height x filter_width`` window, its first ``filters`` output channels and the input
  columns of the sources it reads (the slicing of once-for-all supernets). The classifier's
  columns are laid out per layer the same way.

Batch normalisation in shared paths has no affine parameters and always uses the batch's
statistics (a running mean over many different paths describes none of them), as in ENAS and
DARTS; scoring a child therefore runs the supernet in training mode without gradients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from protos.types import Architecture
from worker.builders.base import ModelSpec
from worker.builders.nasnet import STEM_MULTIPLIER
from worker.builders.nb201 import NUM_NODES, nb201_skeleton
from worker.layers import FactorizedReduce, ReLUConvBN
from worker.ops import create_op


class Supernet(nn.Module, ABC):
    """``forward(x, arch)``: logits of ``arch``'s path through the shared weights."""

    @abstractmethod
    def forward(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        """Logits of shape (B, num_classes) for the child ``arch``."""

    @abstractmethod
    def path_parameters(self, arch: Architecture) -> int:
        """How many shared values the child ``arch`` uses (its parameter count)."""


def _batch_norm(x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, None, None, training=True)


# --- cells (enas-micro, nasnet) ---------------------------------------------------------------


class _SharedCell(nn.Module):
    """Every op at every block slot; a forward pass runs the ones ``blocks`` picks."""

    def __init__(self, ops: Sequence[str], combines: Sequence[str], num_blocks: int,
                 c_prev_prev: int, c_prev: int, channels: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0: nn.Module = (FactorizedReduce(c_prev_prev, channels, affine=False)
                                if reduction_prev else
                                ReLUConvBN(c_prev_prev, channels, 1, affine=False))
        self.pre1 = ReLUConvBN(c_prev, channels, 1, affine=False)
        strides = (1, 2) if reduction else (1,)
        self.slots = nn.ModuleList(
            nn.ModuleDict({f"{op}@{s}": create_op(op, channels, s, affine=False)
                           for op in ops for s in strides})
            for _ in range(2 * num_blocks))
        self.concat = nn.ModuleList(ReLUConvBN(2 * channels, channels, 1, affine=False)
                                    for _ in range(num_blocks)) if "concat" in combines \
            else None
        self.out_weight = nn.Parameter(torch.empty(channels, num_blocks * channels, 1, 1))
        nn.init.kaiming_normal_(self.out_weight)
        self.channels = channels

    def op(self, block: int, slot: int, op: str, stride: int) -> nn.Module:
        """The shared module of ``op`` at one of a block's two slots."""
        ops = self.slots[2 * block + slot]
        assert isinstance(ops, nn.ModuleDict)
        return ops[f"{op}@{stride}"]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor,
                blocks: Sequence[tuple[str, int, str, int, str]]) -> torch.Tensor:
        """The cell output (C channels) of the blocks (op_a, input_a, op_b, input_b, combine)."""
        states = [self.pre0(s0), self.pre1(s1)]
        for b, (op_a, in_a, op_b, in_b, combine) in enumerate(blocks):
            outs = []
            for slot, (op, state) in enumerate(((op_a, in_a), (op_b, in_b))):
                stride = 2 if self.reduction and state < 2 else 1
                outs.append(self.op(b, slot, op, stride)(states[state]))
            if combine == "concat" and self.concat is not None:
                states.append(self.concat[b](torch.cat(outs, dim=1)))
            else:
                states.append(outs[0] + outs[1])
        read = {s for block in blocks for s in (block[1], block[3])}
        loose = [k for k in range(len(blocks)) if 2 + k not in read]
        c = self.channels
        columns = torch.cat([torch.arange(k * c, (k + 1) * c) for k in loose])
        weight = self.out_weight.index_select(1, columns.to(self.out_weight.device))
        out = F.conv2d(F.relu(torch.cat([states[2 + k] for k in loose], dim=1)), weight)
        return _batch_norm(out)


def cell_blocks(arch: Architecture, cell: str) -> list[tuple[str, int, str, int, str]]:
    """(op_a, input_a, op_b, input_b, combine) of each block of one cell of ``arch``."""
    nodes = [n for n in arch.nodes if n.cell == cell]
    blocks = []
    for node in nodes:
        if node.type == "combine":
            a, b = (nodes[i] for i in node.inputs)
            blocks.append((a.op, a.inputs[0], b.op, b.inputs[0], node.op))
    return blocks


class CellSupernet(Supernet):
    """NASNet stacking (stem 3F, N normal cells, reduction, N, reduction, N) over shared cells."""

    def __init__(self, spec: ModelSpec, ops: Sequence[str], combines: Sequence[str],
                 num_blocks: int) -> None:
        super().__init__()
        c = spec.filters
        c_stem = STEM_MULTIPLIER * c
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, c_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_stem))
        c_pp, c_p, reduction_prev = c_stem, c_stem, False
        cells = []
        for stage in range(3):
            for k in range(spec.cells + (1 if stage > 0 else 0)):
                reduction = stage > 0 and k == 0
                c = 2 * c if reduction else c
                cells.append(_SharedCell(ops, combines, num_blocks, c_pp, c_p, c, reduction,
                                         reduction_prev))
                c_pp, c_p, reduction_prev = c_p, c, reduction
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(c_p, spec.num_classes)

    def forward(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        normal, reduce = cell_blocks(arch, "normal"), cell_blocks(arch, "reduction")
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            assert isinstance(cell, _SharedCell)
            s0, s1 = s1, cell(s0, s1, reduce if cell.reduction else normal)
        return self.classifier(F.adaptive_avg_pool2d(F.relu(s1), 1).flatten(1))

    def path_parameters(self, arch: Architecture) -> int:
        normal, reduce = cell_blocks(arch, "normal"), cell_blocks(arch, "reduction")
        total = sum(p.numel() for p in self.stem.parameters()) + \
            sum(p.numel() for p in self.classifier.parameters())
        for cell in self.cells:
            assert isinstance(cell, _SharedCell)
            blocks = reduce if cell.reduction else normal
            total += sum(p.numel() for m in (cell.pre0, cell.pre1) for p in m.parameters())
            for b, (op_a, in_a, op_b, in_b, combine) in enumerate(blocks):
                for slot, (op, state) in enumerate(((op_a, in_a), (op_b, in_b))):
                    stride = 2 if cell.reduction and state < 2 else 1
                    total += sum(p.numel() for p in cell.op(b, slot, op, stride).parameters())
                if combine == "concat" and cell.concat is not None:
                    total += sum(p.numel() for p in cell.concat[b].parameters())
            read = {s for block in blocks for s in (block[1], block[3])}
            loose = sum(1 for k in range(len(blocks)) if 2 + k not in read)
            total += cell.channels * cell.channels * loose
        return total


# --- NAS-Bench-201 ----------------------------------------------------------------------------


class _SharedNB201Cell(nn.Module):
    def __init__(self, ops: Sequence[str], channels: int) -> None:
        super().__init__()
        self.edges = nn.ModuleDict({
            f"{to}<-{src}": nn.ModuleDict({op: create_op(op, channels, 1, affine=False)
                                           for op in ops})
            for to in range(1, NUM_NODES) for src in range(to)})

    def forward(self, x: torch.Tensor, ops: dict[tuple[int, int], str]) -> torch.Tensor:
        nodes = [x]
        for to in range(1, NUM_NODES):
            total: torch.Tensor | None = None
            for src in range(to):
                edge = self.edges[f"{to}<-{src}"]
                assert isinstance(edge, nn.ModuleDict)
                term = edge[ops[(to, src)]](nodes[src])
                total = term if total is None else total + term
            assert total is not None
            nodes.append(total)
        return nodes[-1]


def nb201_edges(arch: Architecture) -> dict[tuple[int, int], str]:
    """The op on each edge (to, src) of an NB201 cell."""
    return {(int(n.attrs["to"]), n.inputs[0]): n.op for n in arch.nodes}


class NB201Supernet(Supernet):
    """NAS-Bench-201's skeleton (stem, 3 stages of N cells, residual reductions)."""

    def __init__(self, spec: ModelSpec, ops: Sequence[str]) -> None:
        super().__init__()
        self.stem, layers, c = nb201_skeleton(spec, lambda channels: _SharedNB201Cell(ops,
                                                                                      channels))
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(c, spec.num_classes)

    def forward(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        ops = nb201_edges(arch)
        out = self.stem(x)
        for layer in self.layers:
            out = layer(out, ops) if isinstance(layer, _SharedNB201Cell) else layer(out)
        out = self.lastact(out)
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def path_parameters(self, arch: Architecture) -> int:
        ops = nb201_edges(arch)
        total = 0
        for name, p in self.named_parameters():
            parts = name.split(".")
            if "edges" in parts:
                at = parts.index("edges")
                to, src = (int(v) for v in parts[at + 1].split("<-"))
                if parts[at + 2] != ops[(to, src)]:
                    continue
            total += p.numel()
        return total


# --- Zoph & Le macro --------------------------------------------------------------------------


def _pool_to(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.avg_pool2d(x, factor, stride=factor, ceil_mode=True) if factor > 1 else x


class MacroSupernet(Supernet):
    """Zoph & Le's conv stack with every layer's filters cut from one shared 7x7x64 kernel."""

    def __init__(self, spec: ModelSpec, num_layers: int, max_kernel: int = 7,
                 max_filters: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(spec.in_channels, spec.filters, 3, padding=1,
                                            bias=False), nn.BatchNorm2d(spec.filters))
        self.max_kernel, self.max_filters = max_kernel, max_filters
        # input column blocks of layer i: the stem, then layers 0..i-1 (max_filters each)
        self.widths = [spec.filters] + [max_filters] * num_layers
        self.weights = nn.ParameterList()
        for i in range(num_layers):
            weight = torch.empty(max_filters, sum(self.widths[:i + 1]), max_kernel, max_kernel)
            nn.init.kaiming_normal_(weight)
            self.weights.append(nn.Parameter(weight))
        self.classifier_weight = nn.Parameter(torch.empty(spec.num_classes,
                                                          max_filters * num_layers))
        nn.init.kaiming_uniform_(self.classifier_weight, a=5 ** 0.5)
        self.classifier_bias = nn.Parameter(torch.zeros(spec.num_classes))

    def _columns(self, sources: Sequence[int], channels: Sequence[int]) -> torch.Tensor:
        starts = [sum(self.widths[:s]) for s in sources]
        return torch.cat([torch.arange(a, a + channels[s]) for a, s in zip(starts, sources,
                                                                           strict=True)])

    def _gather(self, tensors: list[torch.Tensor], scales: list[int],
                sources: Sequence[int]) -> torch.Tensor:
        target = max(scales[s] for s in sources)
        parts = [_pool_to(tensors[s], target // scales[s]) for s in sources]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, x: torch.Tensor, arch: Architecture) -> torch.Tensor:
        tensors, scales, channels = [self.stem(x)], [1], [self.widths[0]]
        k = self.max_kernel
        for i, node in enumerate(arch.nodes):
            a = node.attrs
            sources = [1 + j for j in node.inputs] or [0]
            fh, fw, nf, stride = a["filter_height"], a["filter_width"], a["filters"], \
                a.get("stride", 1)
            cols = self._columns(sources, channels).to(x.device)
            weight = self.weights[i][:nf].index_select(1, cols)
            top, left = (k - fh) // 2, (k - fw) // 2
            weight = weight[:, :, top:top + fh, left:left + fw]
            inp = F.relu(self._gather(tensors, scales, sources))
            out = F.conv2d(inp, weight, stride=stride, padding=(fh // 2, fw // 2))
            tensors.append(_batch_norm(out))
            scales.append(max(scales[s] for s in sources) * stride)
            channels.append(nf)
        read = {j for node in arch.nodes for j in node.inputs}
        loose = [1 + i for i in range(len(arch.nodes)) if i not in read]
        pooled = torch.cat([F.adaptive_avg_pool2d(F.relu(tensors[s]), 1).flatten(1)
                            for s in loose], dim=1)
        cols = torch.cat([torch.arange((s - 1) * self.max_filters,
                                       (s - 1) * self.max_filters + channels[s])
                          for s in loose]).to(x.device)
        return F.linear(pooled, self.classifier_weight.index_select(1, cols),
                        self.classifier_bias)

    def path_parameters(self, arch: Architecture) -> int:
        channels = [self.widths[0]] + [int(n.attrs["filters"]) for n in arch.nodes]
        total = sum(p.numel() for p in self.stem.parameters()) + self.classifier_bias.numel()
        for node in arch.nodes:
            a = node.attrs
            c_in = sum(channels[1 + j] for j in node.inputs) if node.inputs else channels[0]
            total += int(a["filters"]) * c_in * int(a["filter_height"]) * int(a["filter_width"])
        read = {j for node in arch.nodes for j in node.inputs}
        total += self.classifier_bias.numel() * sum(
            channels[1 + i] for i in range(len(arch.nodes)) if i not in read)
        return total
