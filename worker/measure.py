"""A child's cost: parameters, FLOPs and measured latency, for multi-objective search.

FLOPs are counted with forward hooks (``ChildNet.flops``: multiply-accumulates of every Conv2d
and Linear in one forward pass of one image at the dataset's input size). Latency is measured,
not modelled: the median of ``repeats`` batch-1 forward passes after ``warmup`` passes, on the
device the child is evaluated on (``latency_device``: the CUDA index, -1 for the CPU).

The NB201 table has no costs, so ``nb201_costs`` builds the cell's network at the benchmark's
sizes (C=16, N=5) and counts it, once per architecture: a few tens of milliseconds each on a
CPU core, so a 100-training table search costs a few seconds more.
"""

from __future__ import annotations

import statistics
import threading
import time

import torch

from protos.types import Architecture
from worker.builders import ChildNet, ModelSpec, build_model

# dataset -> (classes, image side) of NAS-Bench-201's networks (ImageNet16-120 is 16x16)
NB201_DATASETS = {"cifar10": (10, 32), "cifar100": (100, 32), "imagenet16": (120, 16)}
NB201_CELLS, NB201_FILTERS = 5, 16
LATENCY_WARMUP, LATENCY_REPEATS = 5, 20


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
    """The costs of NB201 cells at the benchmark's network size for one dataset, each counted
    once (thread-safe); latency only when asked for (it is measured on the CPU)."""

    def __init__(self, dataset: str, latency: bool = False) -> None:
        if dataset not in NB201_DATASETS:
            raise ValueError(f"dataset: {dataset!r} is not one of {', '.join(NB201_DATASETS)}")
        classes, side = NB201_DATASETS[dataset]
        self.spec = ModelSpec(in_channels=3, num_classes=classes, cells=NB201_CELLS,
                              filters=NB201_FILTERS)
        self.input_size = (side, side)
        self.latency = latency
        self._known: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, arch: Architecture) -> dict[str, float]:
        """``params``, ``flops`` (and ``latency_ms``, ``latency_device``) of ``arch``'s net."""
        key = repr([(n.op, tuple(n.inputs), sorted(n.attrs.items())) for n in arch.nodes])
        with self._lock:
            known = self._known.get(key)
        if known is None:
            with torch.no_grad():
                model = build_model(arch, self.spec)
            known = child_costs(model, self.input_size, "cpu", self.latency)
            with self._lock:
                known = self._known.setdefault(key, known)
        return dict(known)
