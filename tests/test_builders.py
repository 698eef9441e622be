"""Child-network builders: every space builds, trains a step, counts params/FLOPs, traces."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from controller.spaces import create_space
from protos.types import Architecture, Node, SearchSpaceSpec
from worker.builders import ChildNet, ModelSpec, ScheduledDropPath, build_model

SPACES = {
    "nb201": SearchSpaceSpec("nb201"),
    "nasnet": SearchSpaceSpec("nasnet"),
    "enas-micro": SearchSpaceSpec("enas-micro"),
    "macro": SearchSpaceSpec("macro"),
    "macro-strided": SearchSpaceSpec("macro", num_layers=4, predict_strides=True),
}
INPUTS = {"fmnist": (1, 28), "cifar": (3, 32)}  # (channels, height = width)
NASNET_ARCH = ("normal:sep_conv_3x3~1+identity~0,conv_1x7_7x1~2&max_pool_3x3~1;"
               "reduction:avg_pool_3x3~0+dil_conv_3x3~1,sep_conv_5x5~2&identity~0")


pytestmark = pytest.mark.usefixtures("one_thread")


def sample(space: str, seed: int) -> Architecture:
    return create_space(SPACES[space]).sample_random(random.Random(seed))


def tiny(in_channels: int = 3, **kwargs: Any) -> ModelSpec:
    fields: dict[str, Any] = {"num_classes": 10, "cells": 1, "filters": 8, **kwargs}
    return ModelSpec(in_channels=in_channels, **fields)


def nasnet_net(**kwargs: Any) -> ChildNet:
    arch = create_space(SearchSpaceSpec("nasnet", num_blocks=2)).from_string(NASNET_ARCH)
    return build_model(arch, tiny(**kwargs))


@pytest.mark.parametrize("data", INPUTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("space", SPACES)
def test_forward_backward(space: str, seed: int, data: str) -> None:
    # Arrange
    torch.manual_seed(seed)
    channels, size = INPUTS[data]
    model = build_model(sample(space, seed), tiny(channels, drop_path=0.2, aux_head=True))
    model.set_progress(0.5)
    # Act
    logits, aux = model.forward_with_aux(torch.randn(2, channels, size, size))
    loss = logits.square().mean() + (aux.square().mean() if aux is not None else 0.0)
    loss.backward()
    # Assert
    assert logits.shape == (2, 10)
    assert not torch.isnan(logits).any()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def nb201_arch(ops: list[str]) -> Architecture:
    edges = [(to, src) for to in range(1, 4) for src in range(to)]
    return Architecture("nb201", tuple(Node("edge", op, (src,), attrs={"to": to})
                                       for op, (to, src) in zip(ops, edges, strict=True)))


def conv_bn(c_in: int, c_out: int, k: int = 3) -> int:
    return c_in * c_out * k * k + 2 * c_out  # bias-free conv + BN (weight, bias)


@pytest.mark.parametrize("convs", [0, 1])
def test_nb201_param_count_by_hand(convs: int) -> None:
    # A cell of skip/none edges (+ `convs` nor_conv_3x3 edges), F=8, N=1, 1 -> 10 classes.
    ops = ["skip_connect", "none", "skip_connect", "none", "none", "skip_connect"]
    ops[:convs] = ["nor_conv_3x3"] * convs
    model = build_model(nb201_arch(ops), tiny(1))
    stem = conv_bn(1, 8)
    cells = sum(convs * conv_bn(c, c) for c in (8, 16, 32))  # one cell per stage
    # Residual reduction: conv_a (3x3, stride 2), conv_b (3x3), shortcut 1x1 conv (no BN).
    reductions = sum(conv_bn(c, 2 * c) + conv_bn(2 * c, 2 * c) + c * 2 * c for c in (8, 16))
    head = 2 * 32 + (32 * 10 + 10)  # last BN, then linear
    assert model.num_params() == stem + cells + reductions + head


def test_macro_param_count_and_flops_by_hand() -> None:
    # Stem 3x3 conv 3 -> F=8 (+BN), one 5x3 conv layer 8 -> 36 (+BN), linear 36 -> 10.
    layer = Node("layer", "conv", (), attrs={"filter_height": 5, "filter_width": 3,
                                              "filters": 36, "stride": 1})
    model = build_model(Architecture("macro", (layer,)), tiny(3))
    assert model.num_params() == conv_bn(3, 8) + (8 * 36 * 5 * 3 + 2 * 36) + (36 * 10 + 10)
    # MACs at 16x16: both convs keep the size; the linear layer is 36 x 10.
    assert model.flops((16, 16)) == 16 * 16 * (8 * 3 * 9 + 36 * 8 * 15) + 36 * 10


def test_cell_net_param_count_by_hand() -> None:
    # enas-micro, one block per cell: identity~0 + identity~1 (add); F=8, N=1, 3 -> 10 classes.
    arch = create_space(SearchSpaceSpec("enas-micro", num_blocks=1)).from_string(
        "normal:identity~0+identity~1;reduction:identity~0+identity~1")
    model = build_model(arch, tiny(3))
    stem = conv_bn(3, 24)  # 3F channels
    # (C_{i-1}, C_i, C, reduction) per cell: one loose end, so each cell outputs C channels.
    cells = [(24, 24, 8, False), (24, 8, 16, True), (8, 16, 16, False),
             (16, 16, 32, True), (16, 32, 32, False)]
    # Both preprocessings (1x1 ReLU-Conv-BN, or FactorizedReduce's two halves) cost c_in*C + 2C;
    # in a reduction cell each identity on state 0/1 is a FactorizedReduce(C, C).
    total = sum(conv_bn(cpp, c, 1) + conv_bn(cp, c, 1) + (2 * conv_bn(c, c, 1) if red else 0)
                for cpp, cp, c, red in cells)
    assert model.num_params() == stem + total + 32 * 10 + 10


def test_flops_grow_with_width_and_resolution() -> None:
    arch = sample("nb201", 0)
    small = build_model(arch, tiny(3)).flops((16, 16))
    assert 0 < small < build_model(arch, tiny(3, filters=16)).flops((16, 16))
    assert small < build_model(arch, tiny(3)).flops((32, 32))
    assert 0 < nasnet_net().flops((8, 8)) < nasnet_net(filters=16).flops((8, 8))


def test_flops_leaves_training_mode_alone() -> None:
    model = nasnet_net()
    model.flops((8, 8))
    assert model.training


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_drop_path_probability_follows_progress(progress: float) -> None:
    model = nasnet_net(drop_path=0.3)
    model.set_progress(progress)
    drops = [m for m in model.modules() if isinstance(m, ScheduledDropPath)]
    assert drops
    assert model.drop_prob == pytest.approx(0.3 * progress)
    assert all(m.drop_prob == pytest.approx(0.3 * progress) for m in drops)


def test_drop_path_zeroes_whole_samples_and_rescales() -> None:
    torch.manual_seed(0)
    drop = ScheduledDropPath(0.5)
    drop.set_progress(1.0)
    out = drop(torch.ones(4000, 2, 1, 1))
    kept = out[:, 0].flatten() != 0
    assert torch.equal(out[:, 0], out[:, 1])  # one decision per sample
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.allclose(out[kept], torch.full_like(out[kept], 2.0))


def test_drop_path_is_off_in_eval_mode() -> None:
    model = nasnet_net(drop_path=0.5)
    model.set_progress(1.0)
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    outs = [model(x) for _ in range(3)]
    assert not all(torch.equal(outs[0], o) for o in outs[1:])


def test_aux_head_only_in_training() -> None:
    model = nasnet_net(aux_head=True)
    x = torch.randn(2, 3, 32, 32)
    logits, aux = model.forward_with_aux(x)
    assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)
    assert model.num_params(include_aux=True) > model.num_params()
    model.eval()
    assert model.forward_with_aux(x)[1] is None
    assert model(x).shape == (2, 10)
    assert nasnet_net().forward_with_aux(x)[1] is None


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("space", SPACES)
def test_trace_matches_module(space: str) -> None:
    torch.manual_seed(0)
    model = build_model(sample(space, 0), tiny(3, drop_path=0.2, aux_head=True)).eval()
    x, y = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    traced = torch.jit.trace(model, x)
    assert torch.allclose(traced(x), model(x), atol=1e-5)
    assert torch.allclose(traced(y), model(y), atol=1e-5)


@pytest.mark.parametrize("space", ["nb201", "nasnet", "macro-strided"])
def test_export_matches_module(space: str) -> None:
    # torch.jit.trace is deprecated in torch 2.13; torch.export is its successor.
    torch.manual_seed(0)
    model = build_model(sample(space, 1), tiny(3, aux_head=True)).eval()
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


def test_unknown_space_names_itself() -> None:
    with pytest.raises(KeyError, match="pnas") as info:
        build_model(Architecture("pnas", ()), tiny())
    assert "nb201" in str(info.value)


@pytest.mark.parametrize("field, value", [
    ("in_channels", 0), ("num_classes", 1), ("cells", 0), ("filters", -1),
    ("drop_path", 1.0), ("drop_path", -0.1), ("aux_head", 1)])
def test_model_spec_is_validated(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ModelSpec(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("arch, match", [
    (Architecture("nb201", (Node("edge", "none", (0,), attrs={"to": 1}),)), "edges"),
    (Architecture("macro", (Node("layer", "conv", (0,), attrs={
        "filter_height": 3, "filter_width": 3, "filters": 24}),)), "inputs"),
    (Architecture("macro", (Node("layer", "conv", (), attrs={
        "filter_height": 4, "filter_width": 3, "filters": 24}),)), "filter_height"),
    (Architecture("nasnet", (Node("branch", "identity", (0,), "normal"),
                             Node("branch", "identity", (5,), "normal"),
                             Node("combine", "add", (0, 1), "normal"),
                             Node("branch", "identity", (0,), "reduction"),
                             Node("branch", "identity", (1,), "reduction"),
                             Node("combine", "add", (0, 1), "reduction"))), "state 5"),
])
def test_malformed_architecture_is_rejected(arch: Architecture, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(arch, tiny())
