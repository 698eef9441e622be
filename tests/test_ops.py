"""The op registry: every op, stride 1 and 2, forward + backward, shapes, no NaN."""

from __future__ import annotations

import pytest
import torch

from controller.spaces.cell import ENAS_OPS, NASNET_OPS
from controller.spaces.nb201 import OPS as NB201_OPS
from worker.ops import OP_NAMES, OPS, create_op

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_forward_backward(name: str, stride: int) -> None:
    # Arrange
    torch.manual_seed(0)
    op = create_op(name, 8, stride)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    # Act
    out = op(x)
    out.square().sum().backward()
    # Assert
    assert out.shape == (2, 8, 16 // stride, 16 // stride)
    assert not torch.isnan(out).any()
    assert x.grad is not None and not torch.isnan(x.grad).any()
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{name}: no grad for {pname}"


@pytest.mark.parametrize("name", OP_NAMES)
def test_stride_2_on_odd_size_gives_ceil(name: str) -> None:
    # 7x7 maps occur in Fashion-MNIST nets (28 -> 14 -> 7): every op must agree on ceil(7/2).
    out = create_op(name, 6, 2)(torch.randn(2, 6, 7, 7))
    assert out.shape == (2, 6, 4, 4)


def test_every_op_of_every_space_is_registered() -> None:
    for ops in (NASNET_OPS, ENAS_OPS, NB201_OPS):
        assert set(ops) <= set(OPS)


def test_none_is_zero_and_skip_is_identity_at_stride_1() -> None:
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(create_op("none", 4, 1)(x), torch.zeros_like(x))
    assert torch.equal(create_op("skip_connect", 4, 1)(x), x)
    assert torch.equal(create_op("identity", 4, 1)(x), x)


def test_affine_false_has_no_batchnorm_parameters() -> None:
    assert sum(p.numel() for p in create_op("nor_conv_1x1", 4, 1, affine=False).parameters()) \
        == 4 * 4  # just the 1x1 conv weight


def test_unknown_op_names_itself_and_the_known_ops() -> None:
    with pytest.raises(KeyError, match="conv_9x9") as info:
        create_op("conv_9x9", 8, 1)
    assert "sep_conv_3x3" in str(info.value) and "nor_conv_3x3" in str(info.value)


def test_bad_stride_is_rejected() -> None:
    with pytest.raises(ValueError, match="stride"):
        create_op("conv_3x3", 8, 3)
