"""The candidate ops of every space, by name: ``OPS[name](channels, stride, affine)``.

NASNet's 13 ops (ENAS's 5 are a subset) and NAS-Bench-201's 5. Each op maps (B, C, H, W) to
(B, C, ceil(H / stride), ceil(W / stride)); convs follow the ReLU-Conv-BN order of NASNet/DARTS.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from worker.layers import (
    DilConv,
    FactorizedConvBN,
    ReLUConvBN,
    SepConv,
    Zero,
    avg_pool,
    identity,
    max_pool,
)

OpFactory = Callable[[int, int, bool], nn.Module]
"""Builds an op from (channels, stride, affine)."""

OPS: dict[str, OpFactory] = {
    # NASNet (Zoph et al. 2018), in the order of the paper's op list.
    "identity": identity,
    "conv_1x7_7x1": lambda c, s, affine: FactorizedConvBN(c, c, 7, s, affine),
    "avg_pool_3x3": lambda c, s, affine: avg_pool(3, s),
    "max_pool_5x5": lambda c, s, affine: max_pool(5, s),
    "conv_1x1": lambda c, s, affine: ReLUConvBN(c, c, 1, s, affine),
    "sep_conv_3x3": lambda c, s, affine: SepConv(c, c, 3, s, affine),
    "sep_conv_7x7": lambda c, s, affine: SepConv(c, c, 7, s, affine),
    "conv_1x3_3x1": lambda c, s, affine: FactorizedConvBN(c, c, 3, s, affine),
    "dil_conv_3x3": lambda c, s, affine: DilConv(c, c, 3, s, 2, affine),
    "max_pool_3x3": lambda c, s, affine: max_pool(3, s),
    "max_pool_7x7": lambda c, s, affine: max_pool(7, s),
    "conv_3x3": lambda c, s, affine: ReLUConvBN(c, c, 3, s, affine),
    "sep_conv_5x5": lambda c, s, affine: SepConv(c, c, 5, s, affine),
    # NAS-Bench-201 (Dong & Yang 2020); its avg_pool_3x3 is the one above.
    "none": lambda c, s, affine: Zero(s),
    "skip_connect": identity,
    "nor_conv_1x1": lambda c, s, affine: ReLUConvBN(c, c, 1, s, affine),
    "nor_conv_3x3": lambda c, s, affine: ReLUConvBN(c, c, 3, s, affine),
}
OP_NAMES = tuple(OPS)


def create_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """Build op ``name`` for ``channels`` channels; an unknown name raises KeyError listing OPS."""
    try:
        factory = OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(OP_NAMES)}") from None
    if channels < 1 or stride not in (1, 2):
        raise ValueError(f"op {name!r}: channels must be >= 1 and stride 1 or 2, "
                         f"got channels={channels}, stride={stride}")
    return factory(channels, stride, affine)
