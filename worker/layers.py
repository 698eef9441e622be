"""Building blocks of the candidate ops (after DARTS' ``operations.py`` and NAS-Bench-201).

Every block maps (B, C_in, H, W) to (B, C_out, ceil(H / stride), ceil(W / stride)): convolutions
use 'same' padding, and FactorizedReduce pads odd inputs so its two halves line up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ReLUConvBN(nn.Sequential):
    """ReLU, a (kh x kw) convolution without bias, then BatchNorm."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 affine: bool = True) -> None:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, (kh, kw), stride=stride, padding=(kh // 2, kw // 2),
                      bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class FactorizedConvBN(nn.Sequential):
    """NASNet's "1xk then kx1" conv: ReLU, 1xk conv, kx1 conv, BatchNorm (stride split in two)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, (1, k), stride=(1, stride), padding=(0, k // 2), bias=False),
            nn.Conv2d(c_in, c_out, (k, 1), stride=(stride, 1), padding=(k // 2, 0), bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, dilated depthwise kxk conv, pointwise 1x1 conv, BatchNorm (DARTS ``DilConv``)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, dilation: int,
                 affine: bool = True) -> None:
        padding = dilation * (k - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, k, stride=stride, padding=padding, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """The DARTS/NASNet separable conv: two stacked (ReLU, depthwise, pointwise, BN) units.

    Only the first depthwise conv is strided.
    """

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, affine: bool = True) -> None:
        super().__init__(
            DilConv(c_in, c_in, k, stride, dilation=1, affine=affine),
            DilConv(c_in, c_out, k, 1, dilation=1, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halve H and W with two offset 1x1 stride-2 convs, concatenated, then BatchNorm.

    Odd inputs are zero-padded on the bottom/right first, so the output is ceil(H/2) x ceil(W/2)
    like every other stride-2 op.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reduce ``x`` to half its spatial size."""
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class Zero(nn.Module):
    """NAS-Bench-201's "none": zeros shaped like the (strided) input."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zeros of shape (B, C, ceil(H / stride), ceil(W / stride))."""
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def avg_pool(k: int, stride: int) -> nn.Module:
    """A kxk average pool with 'same' padding that ignores the padding in its averages."""
    return nn.AvgPool2d(k, stride=stride, padding=k // 2, count_include_pad=False)


def max_pool(k: int, stride: int) -> nn.Module:
    """A kxk max pool with 'same' padding."""
    return nn.MaxPool2d(k, stride=stride, padding=k // 2)


def identity(channels: int, stride: int, affine: bool = True) -> nn.Module:
    """Identity at stride 1, FactorizedReduce at stride 2."""
    if stride == 1:
        return nn.Identity()
    return FactorizedReduce(channels, channels, affine=affine)
