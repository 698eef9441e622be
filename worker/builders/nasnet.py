"""The NASNet stacking for the nasnet and enas-micro spaces, with an optional auxiliary head."""

from __future__ import annotations

import torch
from torch import nn

from protos.types import Architecture
from worker.builders.base import ChildNet, ModelSpec
from worker.builders.cells import Cell, parse_cell

STEM_MULTIPLIER = 3  # the stem has 3F channels, as in DARTS' CIFAR network


class AuxHead(nn.Sequential):
    """The DARTS/NASNet CIFAR auxiliary classifier.

    DARTS pools an 8x8 map with a 5x5/3 average pool to 2x2; an adaptive pool to 2x2 gives the
    same size for 8x8 (CIFAR) and also works for 7x7 (Fashion-MNIST) maps.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
            nn.Flatten(),
            nn.Linear(768, num_classes),
        )


class CellNet(ChildNet):
    """Stem, then N normal cells, reduction, N normal, reduction, N normal; pool + linear.

    Each reduction cell doubles the channels per state. The auxiliary head (when
    ``spec.aux_head``) reads the output of the second reduction cell (the 2/3 point).
    """

    def __init__(self, arch: Architecture, spec: ModelSpec) -> None:
        super().__init__(spec)
        normal = parse_cell([n for n in arch.nodes if n.cell == "normal"], "normal")
        reduce = parse_cell([n for n in arch.nodes if n.cell == "reduction"], "reduction")
        c = spec.filters
        c_stem = STEM_MULTIPLIER * c
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p, reduction_prev = c_stem, c_stem, False
        cells: list[Cell] = []
        self.aux_index, c_aux = -1, c_p
        for stage in range(3):
            for k in range(spec.cells + (1 if stage > 0 else 0)):
                reduction = stage > 0 and k == 0
                c = 2 * c if reduction else c
                cell = Cell(reduce if reduction else normal, c_pp, c_p, c, reduction,
                            reduction_prev, spec.drop_path)
                cells.append(cell)
                c_pp, c_p, reduction_prev = c_p, cell.out_channels, reduction
                if stage == 2 and reduction:
                    self.aux_index, c_aux = len(cells) - 1, c_p
        self.cells = nn.ModuleList(cells)
        if spec.aux_head:
            self.aux_head = AuxHead(c_aux, spec.num_classes)
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, spec.num_classes)

    def _run(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1)
            if with_aux and i == self.aux_index and self.aux_head is not None:
                aux = self.aux_head(s1)
        logits = self.classifier(self.pool(self.relu(s1)).flatten(1))
        return logits, aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, num_classes); never runs the auxiliary head."""
        return self._run(x, with_aux=False)[0]

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and, in training mode with ``spec.aux_head``, the auxiliary logits."""
        return self._run(x, with_aux=self.training)


def build_cell_net(arch: Architecture, spec: ModelSpec) -> ChildNet:
    """The NASNet-stacked network of a nasnet or enas-micro architecture."""
    cells = {n.cell for n in arch.nodes}
    if cells != {"normal", "reduction"}:
        raise ValueError(f"{arch.space} nodes: cells must be 'normal' and 'reduction', "
                         f"got {sorted(cells)}")
    return CellNet(arch, spec)
