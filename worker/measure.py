"""A child's cost: parameters, FLOPs and measured latency, for multi-objective search.

FLOPs are counted with forward hooks (``ChildNet.flops``: multiply-accumulates of every Conv2d
and Linear in one forward pass of one image at the dataset's input size). Latency is measured,
not modelled: the median of ``repeats`` batch-1 forward passes after ``warmup`` passes, on the
device the child is evaluated on (``latency_device``: the CUDA index, -1 for the CPU).

The NB201 table has no costs, so ``NB201Costs`` counts the cell's network as built at the
benchmark's sizes (C=16, N=5; 32x32 CIFAR, 16x16 ImageNet16-120 images).
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time

import torch

from protos.types import Architecture, Node
from worker.builders import ChildNet, ModelSpec, build_model

# dataset -> (classes, image side) of NAS-Bench-201's networks (ImageNet16-120 is 16x16)
NB201_DATASETS = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet16": (120, 16)}
NB201_CELLS, NB201_FILTERS = 5, 16
LATENCY_WARMUP, LATENCY_REPEATS = 5, 20
# nb201 measures a network per new cell only for latency objectives; fewer passes keep that to
# about 0.3 s a cell on an idle CPU core (a trained child's measurement is small beside its
# training, so it keeps the defaults)
NB201_LATENCY_WARMUP, NB201_LATENCY_REPEATS = 2, 9


def latency_ms(model: ChildNet, input_size: tuple[int, int], device: torch.device | str,
               warmup: int = LATENCY_WARMUP, repeats: int = LATENCY_REPEATS) -> float:
    """Median milliseconds of a batch-1 forward pass of ``model`` on ``device`` (eval mode,
    no autograd, fp32); the model is left on ``device`` in its previous mode."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup}, {repeats}")
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    image = torch.zeros((1, model.spec.in_channels, *input_size), device=device)
    times: list[float] = []
    try:
        with torch.inference_mode():
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(image)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return statistics.median(times)


def device_index(device: torch.device | str) -> float:
    """``latency_device`` as a metric (metrics are numbers): the CUDA index, -1 for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return -1.0
    return float(device.index if device.index is not None else torch.cuda.current_device())


def child_costs(model: ChildNet, input_size: tuple[int, int], device: torch.device | str,
                latency: bool = True) -> dict[str, float]:
    """``params``, ``flops`` and (with ``latency``) ``latency_ms`` and ``latency_device`` of a
    built child; FLOPs are counted on the model's current device."""
    costs = {"params": float(model.num_params()), "flops": float(model.flops(input_size))}
    if latency:
        costs["latency_ms"] = latency_ms(model, input_size, device)
        costs["latency_device"] = device_index(device)
    return costs


class NB201Costs:
    """Params and FLOPs of NB201 cells at the benchmark's network size for one dataset (and,
    when asked, the CPU latency of each cell's network, measured once per cell). Thread-safe.

    Every node of an NB201 cell has the same channels and image size, so each edge costs what
    its op costs wherever it sits: a network's count is the skeleton's (the all-``none`` cell)
    plus one sixth of what the all-``op`` cell adds, per edge. Those few networks are built and
    counted with ``worker.builders.nb201`` once (the tests check the sum against a full build
    of each cell); a cell then costs a sum, not a build, which a 100-training search cannot
    notice even on a busy machine, where one build and count takes 100 ms or more.
    """

    def __init__(self, dataset: str, latency: bool = False) -> None:
        if dataset not in NB201_DATASETS:
            raise ValueError(f"dataset: {dataset!r} is not one of {', '.join(NB201_DATASETS)}")
        classes, side = NB201_DATASETS[dataset]
        self.spec = ModelSpec(in_channels=3, num_classes=classes, cells=NB201_CELLS,
                              filters=NB201_FILTERS)
        self.input_size = (side, side)
        self.latency = latency
        self._uniform: dict[str, dict[str, float]] = {}  # op -> costs of the all-op cell's net
        self._latency: dict[tuple[Node, ...], float] = {}
        self._lock = threading.Lock()

    def build(self, arch: Architecture) -> ChildNet:
        """The benchmark-size network of ``arch``."""
        with torch.no_grad():
            return build_model(arch, self.spec)

    def _uniform_costs(self, arch: Architecture, op: str) -> dict[str, float]:
        with self._lock:
            known = self._uniform.get(op)
        if known is None:
            nodes = tuple(dataclasses.replace(n, op=op) for n in arch.nodes)
            known = child_costs(self.build(Architecture(arch.space, nodes)), self.input_size,
                                "cpu", latency=False)
            with self._lock:
                known = self._uniform.setdefault(op, known)
        return known

    def __call__(self, arch: Architecture) -> dict[str, float]:
        """``params``, ``flops`` (and ``latency_ms``, ``latency_device``) of ``arch``'s net."""
        edges = len(arch.nodes)
        skeleton = self._uniform_costs(arch, "none")
        costs = {}
        for name in ("params", "flops"):
            per_edge = sum(self._uniform_costs(arch, n.op)[name] - skeleton[name]
                           for n in arch.nodes)
            costs[name] = skeleton[name] + round(per_edge / edges)
        if self.latency:
            with self._lock:
                known = self._latency.get(arch.nodes)
            if known is None:
                known = latency_ms(self.build(arch), self.input_size, "cpu",
                                   NB201_LATENCY_WARMUP, NB201_LATENCY_REPEATS)
                with self._lock:
                    known = self._latency.setdefault(arch.nodes, known)
            costs["latency_ms"], costs["latency_device"] = known, -1.0
        return costs
