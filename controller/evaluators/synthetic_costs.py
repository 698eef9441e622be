"""Plausible, deterministic child costs from an architecture's choices (the synthetic
evaluator's params, FLOPs and latency; nothing is built or measured).

Every choice costs ``a * C^2 + b * C`` parameters and ``(a * C^2 + m * C) * H * W``
multiply-accumulates at width C on an H x W map, summed over a nominal network: NAS-Bench-201's
skeleton (3 stages of N=5 cells, C = 16/32/64 on 32x32/16x16/8x8 maps) plus its stem, reductions
and classifier. On nb201 that is exactly what ``worker.measure.NB201Costs`` counts on CIFAR
(73,306 params / 7.78 M FLOPs for the empty cell, 1,531,546 / 220.1 M for the all-3x3 cell);
other spaces get the same scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from controller.spaces.base import Decision

STAGES = ((16, 32 * 32), (32, 16 * 16), (64, 8 * 8))  # (C, H*W) of the nominal network
CELLS_PER_STAGE = 5
BASE_PARAMS = 73_306.0  # NB201's network with empty cells: stem, reductions, classifier
BASE_FLOPS = 7_783_040.0
LATENCY_BASE_MS = 1.0
MACS_PER_MS = 1e7  # a nominal 10 GMAC/s device: latency_ms = base + flops / MACS_PER_MS


@dataclass(frozen=True)
class ChoiceCost:
    """A choice's cost at width C: params a*C^2 + b*C; MACs (a*C^2 + m*C) per map position."""

    a: float = 0.0
    b: float = 0.0
    m: float = 0.0

    def __post_init__(self) -> None:
        if min(self.a, self.b, self.m) < 0:
            raise ValueError(f"cost: coefficients must be >= 0, got {self}")

    @property
    def params(self) -> float:
        """Parameters summed over the nominal network's cells."""
        return CELLS_PER_STAGE * sum(self.a * c * c + self.b * c for c, _ in STAGES)

    @property
    def flops(self) -> float:
        """Multiply-accumulates of one forward pass over the nominal network's cells."""
        return CELLS_PER_STAGE * sum((self.a * c * c + self.m * c) * hw for c, hw in STAGES)


FREE = ChoiceCost()


def _sep_conv(k: int) -> ChoiceCost:  # NASNet's: twice (depthwise k x k, pointwise 1x1, BN)
    return ChoiceCost(a=2, b=2 * (k * k + 2), m=2 * k * k)


# op name -> its cost; ReLU-conv-BN convs carry BN's 2C parameters. FLOPs count convolutions
# and linear layers only, as the trained children's do: pools and activations are free, as is
# any name not here (none, identity, skip_connect, combines, activations, input indices).
OP_COSTS: dict[str, ChoiceCost] = {
    "nor_conv_1x1": ChoiceCost(a=1, b=2), "nor_conv_3x3": ChoiceCost(a=9, b=2),
    "conv_1x1": ChoiceCost(a=1, b=2), "conv_3x3": ChoiceCost(a=9, b=2),
    "conv_1x3_3x1": ChoiceCost(a=6, b=2), "conv_1x7_7x1": ChoiceCost(a=14, b=2),
    "sep_conv_3x3": _sep_conv(3), "sep_conv_5x5": _sep_conv(5), "sep_conv_7x7": _sep_conv(7),
    "dil_conv_3x3": ChoiceCost(a=1, b=11, m=9),
}

# decision kind -> the cost of one of its choices (numeric kinds: Zoph & Le's macro layers)
KIND_COSTS: dict[str, Callable[[str], ChoiceCost]] = {
    "filter_height": lambda k: ChoiceCost(a=1.5 * int(k), b=2),  # height x width ~ k x k
    "filter_width": lambda k: ChoiceCost(a=1.5 * int(k)),
    "filters": lambda f: ChoiceCost(a=9 * int(f) / 36),  # a 3x3 conv, width relative to 36
    "skip": lambda s: ChoiceCost(a=9 * int(s)),  # one more input to a 3x3 conv
}


def choice_cost(decision: Decision, choice: str) -> ChoiceCost:
    """The cost of ``choice`` for ``decision``: by its kind, else by the op's name."""
    by_kind = KIND_COSTS.get(decision.kind)
    return by_kind(choice) if by_kind else OP_COSTS.get(choice, FREE)


@dataclass(frozen=True)
class CostTable:
    """Per decision, per choice: (params, flops) of the nominal network; summed per child."""

    params: tuple[tuple[float, ...], ...]
    flops: tuple[tuple[float, ...], ...]

    @classmethod
    def of(cls, decisions: Sequence[Decision]) -> CostTable:
        """The table of a space's decisions."""
        costs = [[choice_cost(d, c) for c in d.choices] for d in decisions]
        return cls(tuple(tuple(c.params for c in row) for row in costs),
                   tuple(tuple(c.flops for c in row) for row in costs))

    def metrics(self, actions: Sequence[int]) -> dict[str, float]:
        """params, flops and latency_ms of the child these actions describe."""
        params = BASE_PARAMS + sum(row[a] for row, a in zip(self.params, actions, strict=True))
        flops = BASE_FLOPS + sum(row[a] for row, a in zip(self.flops, actions, strict=True))
        return {"params": params, "flops": flops,
                "latency_ms": round(LATENCY_BASE_MS + flops / MACS_PER_MS, 4)}
