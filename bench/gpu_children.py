"""How fast can one GPU train NASNet-search children? Eager fp32, bf16 + channels_last, several
children packed on the GPU, and CUDA graphs, side by side in one run.

The child: the nasnet cell space at search size (default NASNet-A's cells, N=2 cells per stage,
F=32 initial filters), 3x32x32 inputs, 10 classes, batch 128, trained on synthetic CIFAR-shaped
data that lies on the device (32 batches, reshuffled on the device after each pass, gathered per
step as worker.trainer does) with the worker's optimizer: TrainRecipe's defaults (SGD, Nesterov
momentum 0.9, lr 0.05 held constant, weight decay 3e-4, gradient clipping at norm 5).

Rows (on CUDA; the packed eager rows use bf16 + channels_last, the CPU runs them in fp32):

  eager fp32                    the naive single-child rate, the baseline of "x naive"
  eager bf16 + channels_last    what worker.trainer does on CUDA
  k processes, eager            k children trained at once by k spawned processes
  CUDA graph                    the whole step (forward, loss, backward, clipping, SGD) captured
                                once under bf16 autocast and replayed; when capture fails, the
                                row shows why and the other graph rows are skipped (the eager
                                rows stand: the fallback)
  k processes, CUDA graph       both
  S streams, CUDA graph         S children in one process, each replaying on its own stream

Each row runs in freshly spawned processes. Each process builds its children, runs --warmup
steps, waits at a barrier with the others, times --steps steps per child, then keeps training
until every process has finished its timed steps, so every timed window lies inside the common
window in which all of the row's children train. A row's images/s is the sum of its processes'
rates. Processes share the GPU by time-slicing unless NVIDIA MPS already runs (this script
starts none and leaves the GPU's settings alone).

Conventions. FLOPs per training image = 3 x forward MACs x 2 FLOP/MAC (backward ~ 2 x forward;
MACs of the conv and linear layers, as ChildNet.flops counts them). MFU = images/s x FLOPs per
image / peak, against --peak-tflops (dense bf16; default the H200's 989 TFLOP/s) for bf16 rows
and --peak-tflops-fp32 (default the H200's 67 TFLOP/s) for fp32 rows (cuDNN's default TF32
convolutions stay on). children/h = images/s x 3600 / (--epochs x --train-images): training steps
only, no validation or start-up; the default recipe is NASNet's search split (45,000 training
images) for TrainRecipe's default 10 epochs. Target (issue 5): >= 4x the naive rate and >= 10%
MFU. The fastest row wins; the worker uses the winner by default on GPUs.

    python -m bench.gpu_children                                  # full run: 3-5 min on an H200
    python -m bench.gpu_children --device cpu --smoke --no-write  # tiny run without CUDA (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from multiprocessing.queues import SimpleQueue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing
from torch import nn

from bench.report import machine, write_section
from controller.spaces import create_space
from worker.builders import ChildNet, ModelSpec, build_model
from worker.trainer_recipe import TrainRecipe

NASNET_A = ("normal:sep_conv_5x5~1+sep_conv_3x3~0,sep_conv_5x5~0+sep_conv_3x3~0,"
            "avg_pool_3x3~1+identity~0,avg_pool_3x3~0+avg_pool_3x3~0,sep_conv_3x3~1+identity~1;"
            "reduction:sep_conv_5x5~1+sep_conv_7x7~0,max_pool_3x3~1+sep_conv_7x7~0,"
            "avg_pool_3x3~1+sep_conv_5x5~0,identity~3+avg_pool_3x3~2,sep_conv_3x3~2+max_pool_3x3~1")
"""NASNet-A's normal and reduction cells (Zoph et al. 2018; DARTS' ``NASNet`` genotype)."""

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
POOL_BATCHES = 32  # synthetic training images per child: POOL_BATCHES x batch size
GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch's docs do
BARRIER_TIMEOUT_S = 600.0
SPEED_TARGET = 4.0  # x the naive single-child rate
MFU_TARGET = 0.10
RECIPE = TrainRecipe()  # the worker's optimizer settings


@dataclass(frozen=True)
class Preset:
    """The size and length of a run: the full GPU run or the tiny smoke run."""

    filters: int
    cells: int
    batch_size: int
    steps: int
    warmup: int
    ks: tuple[int, ...]
    streams: int


FULL = Preset(filters=32, cells=2, batch_size=128, steps=200, warmup=20, ks=(1, 2, 4, 8),
              streams=4)
SMOKE = Preset(filters=8, cells=1, batch_size=16, steps=3, warmup=2, ks=(1, 2), streams=2)


@dataclass(frozen=True)
class Config:
    """One row: precision, CUDA graph or eager, and how its children are packed.

    ``bf16`` means bf16 autocast with channels_last model and inputs; ``streams`` > 1 trains
    that many children in each process, each on its own CUDA stream.
    """

    name: str
    bf16: bool
    graph: bool
    processes: int = 1
    streams: int = 1

    @property
    def children(self) -> int:
        """Children trained at once."""
        return self.processes * self.streams

    @property
    def needs_cuda(self) -> bool:
        """Whether the row can only run on CUDA."""
        return self.bf16 or self.graph or self.streams > 1

    @property
    def precision(self) -> str:
        """The precision column."""
        return "bf16 + CL" if self.bf16 else "fp32"


@dataclass(frozen=True)
class Job:
    """What every spawned process of a row is told."""

    config: Config
    arch: str
    cells: int
    filters: int
    batch_size: int
    steps: int
    warmup: int
    device: str
    seed: int


@dataclass(frozen=True)
class Row:
    """A row's outcome: ``status`` is "ok" (``images_per_s`` set), "skipped" or "failed"."""

    config: Config
    status: str
    images_per_s: float = 0.0
    note: str = ""
    device_name: str = ""


def configs(cuda: bool, ks: Sequence[int], streams: int) -> list[Config]:
    """The rows of a run, in table order; k = 1 of ``ks`` is the single-child rows."""
    packed = [k for k in ks if k > 1]
    rows = [Config("eager fp32 (naive)", bf16=False, graph=False),
            Config("eager bf16 + channels_last", bf16=True, graph=False)]
    rows += [Config(f"{k} processes, eager", bf16=cuda, graph=False, processes=k)
             for k in packed]
    rows.append(Config("CUDA graph", bf16=True, graph=True))
    rows += [Config(f"{k} processes, CUDA graph", bf16=True, graph=True, processes=k)
             for k in packed]
    if streams > 1:
        rows.append(Config(f"{streams} streams in 1 process, CUDA graph", bf16=True, graph=True,
                           streams=streams))
    return rows


def child_spec(cells: int, filters: int) -> ModelSpec:
    """The ModelSpec of the benchmarked child (CIFAR-shaped)."""
    return ModelSpec(in_channels=IMAGE_SHAPE[0], num_classes=NUM_CLASSES, cells=cells,
                     filters=filters)


def build_child(arch: str, cells: int, filters: int) -> ChildNet:
    """The child network of a nasnet architecture string."""
    return build_model(create_space("nasnet").from_string(arch), child_spec(cells, filters))


def resolve_arch(text: str) -> str:
    """``nasnet-a``, ``sample:SEED`` (a seeded uniform sample of the nasnet space) or an
    architecture string, as the nasnet space's string form; ValueError when malformed."""
    space = create_space("nasnet")
    if text == "nasnet-a":
        return NASNET_A
    if text.startswith("sample:"):
        return space.to_string(space.sample_random(random.Random(int(text[len("sample:"):]))))
    return space.to_string(space.from_string(text))


@dataclass
class _Captured:
    """A captured training step: fill ``x`` and ``y``, replay, read ``loss``."""

    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    y: torch.Tensor
    loss: torch.Tensor

    def run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Copy the batch into the static inputs and replay the step; the step's loss."""
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss


class _Child:
    """One child network with its optimizer and synthetic training data, on one device."""

    def __init__(self, job: Job, index: int, device: torch.device) -> None:
        config = job.config
        self.device, self.batch_size = device, job.batch_size
        self.fmt = torch.channels_last if config.bf16 else torch.contiguous_format
        torch.manual_seed(job.seed + index)
        self.model = build_child(job.arch, job.cells, job.filters).to(device)
        if config.bf16:  # torch's stubs omit Module.to's memory_format keyword
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.gen = torch.Generator(device=device).manual_seed(job.seed + index)
        count = POOL_BATCHES * job.batch_size
        self.images = torch.randn((count, *IMAGE_SHAPE), generator=self.gen,
                                  device=device).contiguous(memory_format=self.fmt)
        self.labels = torch.randint(0, NUM_CLASSES, (count,), generator=self.gen, device=device)
        self.order = torch.randperm(count, generator=self.gen, device=device)
        self.cursor = 0
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=RECIPE.learning_rate,
                                         momentum=0.9, nesterov=True,
                                         weight_decay=RECIPE.weight_decay)
        self.loss_fn = nn.CrossEntropyLoss()
        # Autocast's weight cache must be off inside a CUDA graph capture.
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
            (lambda: torch.autocast("cuda", dtype=torch.bfloat16,
                                    cache_enabled=not config.graph))
            if config.bf16 else contextlib.nullcontext)
        self.stream = torch.cuda.Stream(device) if config.streams > 1 else None
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0
        self.captured = self._capture() if config.graph else None

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor == POOL_BATCHES:
            self.order = torch.randperm(len(self.labels), generator=self.gen, device=self.device)
            self.cursor = 0
        rows = self.order[self.cursor * self.batch_size:(self.cursor + 1) * self.batch_size]
        self.cursor += 1
        return self.images[rows].contiguous(memory_format=self.fmt), self.labels[rows]

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.loss_fn(self.model(x), y)
        loss.backward()
        if RECIPE.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), RECIPE.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def _capture(self) -> _Captured:
        x, y = self._next_batch()
        x, y = x.clone(), y.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # creates the momentum buffers, warms cuDNN up
            for _ in range(GRAPH_WARMUP_STEPS):
                self._train_step(x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = self._train_step(x, y)
        except Exception as exc:
            raise RuntimeError(f"CUDA graph capture failed: {_first_line(exc)}") from exc
        return _Captured(graph, x, y, loss)

    def step(self) -> None:
        """One training step on the next batch, on this child's stream when it has one."""
        context = (torch.cuda.stream(self.stream) if self.stream is not None
                   else contextlib.nullcontext())
        with context:
            x, y = self._next_batch()
            loss = self._train_step(x, y) if self.captured is None else self.captured.run(x, y)
            self.loss_sum += loss.float()
        self.steps += 1

    def mean_loss(self) -> float:
        """The mean training loss over all steps so far (synchronizes)."""
        return self.loss_sum.item() / max(self.steps, 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no details'}"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _process_main(rank: int, job: Job, barrier: Barrier, done: Synchronized[int],
                   results: SimpleQueue[dict[str, Any]]) -> None:
    """One spawned process of a row: warm up, time ``job.steps`` rounds, report to ``results``.

    After its timed window a process keeps training until ``done`` counts every process, so
    the others' windows see full contention. Errors are reported, not raised, and break the
    barrier so that no process waits for a failed one.
    """
    config, device = job.config, torch.device(job.device)
    # One host thread a process: CUDA rows need no more, and on the CPU a busy machine's
    # intra-op threads fighting for the cores make small steps many times slower.
    torch.set_num_threads(1)
    counted = False
    try:
        children = [_Child(job, rank * config.streams + i, device) for i in range(config.streams)]
        _synchronize(device)  # the children's streams read tensors made on the default stream
        for _ in range(job.warmup):
            for child in children:
                child.step()
        _synchronize(device)
        barrier.wait(BARRIER_TIMEOUT_S)
        start = time.perf_counter()
        for _ in range(job.steps):
            for child in children:
                child.step()
        _synchronize(device)
        seconds = time.perf_counter() - start
        with done.get_lock():
            done.value += 1
        counted = True
        while done.value < config.processes:
            for child in children:
                child.step()
            _synchronize(device)
        losses = [child.mean_loss() for child in children]
        if not all(math.isfinite(loss) for loss in losses):
            raise RuntimeError(f"non-finite training loss: {losses}")
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        results.put({"images": job.steps * config.streams * job.batch_size,
                     "seconds": seconds, "device": name})
    except Exception as exc:
        barrier.abort()
        if not counted:
            with done.get_lock():
                done.value += 1
        results.put({"error": _first_line(exc)})


def measure(job: Job, ctx: SpawnContext) -> Row:
    """Run one row in ``job.config.processes`` spawned processes; its aggregated rate."""
    config = job.config
    barrier = ctx.Barrier(config.processes)
    done: Synchronized[int] = ctx.Value("i", 0)
    results: SimpleQueue[dict[str, Any]] = ctx.SimpleQueue()
    try:
        torch.multiprocessing.spawn(_process_main, args=(job, barrier, done, results),
                                    nprocs=config.processes, join=True)
    except Exception as exc:  # a process died without reporting (e.g. killed, segfault)
        return Row(config, "failed", note=_first_line(exc))
    outcomes = [results.get() for _ in range(config.processes)]
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:  # the root cause, not the broken barrier it left the others
        causes = [e for e in errors if not e.startswith("BrokenBarrierError")]
        return Row(config, "failed", note=(causes or errors)[0])
    rate = sum(o["images"] / o["seconds"] for o in outcomes)
    return Row(config, "ok", images_per_s=rate, device_name=outcomes[0]["device"])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_children", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    full = FULL
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="where the children train; on cpu the bf16, CUDA-graph and stream rows "
                        "are skipped (default cuda)")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny run for CI: F={SMOKE.filters}, N={SMOKE.cells}, batch "
                        f"{SMOKE.batch_size}, {SMOKE.warmup}+{SMOKE.steps} steps, k in "
                        f"{','.join(map(str, SMOKE.ks))}, {SMOKE.streams} streams; implies "
                        "--no-write; flags given explicitly still win")
    p.add_argument("--arch", default="nasnet-a",
                   help="the child's cells: nasnet-a, sample:SEED (a seeded uniform sample of "
                        "the nasnet space) or a nasnet architecture string (default nasnet-a)")
    p.add_argument("--filters", type=int, help=f"F, initial filters (default {full.filters})")
    p.add_argument("--cells", type=int, help=f"N, cells per stage (default {full.cells})")
    p.add_argument("--batch-size", type=int, help=f"per child (default {full.batch_size})")
    p.add_argument("--warmup", type=int,
                   help=f"untimed steps per child before the window (default {full.warmup}; "
                        f"graph rows also run {GRAPH_WARMUP_STEPS} eager steps before capture)")
    p.add_argument("--steps", type=int, help=f"timed steps per child (default {full.steps})")
    p.add_argument("--ks", help="children packed as separate processes, comma-separated; k=1 "
                                f"is the single-child rows (default "
                                f"{','.join(map(str, full.ks))})")
    p.add_argument("--streams", type=int,
                   help=f"children on separate CUDA streams in one process for the streams "
                        f"row; < 2 drops the row (default {full.streams})")
    p.add_argument("--epochs", type=int, default=10,
                   help="epochs per child for children/h (default 10, TrainRecipe's default)")
    p.add_argument("--train-images", type=int, default=45000,
                   help="training images per epoch for children/h (default 45,000: CIFAR-10's "
                        "50,000 less NASNet's 5,000 validation images)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="peak for the MFU of bf16 rows (default 989, H200 dense bf16)")
    p.add_argument("--peak-tflops-fp32", type=float, default=67.0,
                   help="peak for the MFU of fp32 rows (default 67, H200 fp32)")
    p.add_argument("--seed", type=int, default=0, help="weights and synthetic data (default 0)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    p.add_argument("--no-write", action="store_true",
                   help="print only; do not write the gpu-children section of BENCHMARKS.md")
    return p


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, Preset]:
    p = _parser()
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    try:
        ks = (tuple(int(k) for k in args.ks.split(",")) if args.ks is not None else base.ks)
        args.arch = resolve_arch(args.arch)
    except ValueError as exc:
        p.error(f"--ks/--arch: {exc}")
    preset = Preset(
        filters=base.filters if args.filters is None else args.filters,
        cells=base.cells if args.cells is None else args.cells,
        batch_size=base.batch_size if args.batch_size is None else args.batch_size,
        steps=base.steps if args.steps is None else args.steps,
        warmup=base.warmup if args.warmup is None else args.warmup,
        ks=ks, streams=base.streams if args.streams is None else args.streams)
    for name in ("filters", "cells", "batch_size", "steps"):
        if getattr(preset, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(preset, name)}")
    if preset.batch_size < 2:
        p.error("--batch-size: must be >= 2 (BatchNorm in training mode)")
    if preset.warmup < 0 or not ks or min(ks) < 1:
        p.error("--warmup must be >= 0 and every --ks entry >= 1")
    if min(args.epochs, args.train_images) < 1 or min(args.peak_tflops,
                                                       args.peak_tflops_fp32) <= 0:
        p.error("--epochs and --train-images must be >= 1, the peaks > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here; use --device cpu --smoke")
    return args, preset


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| configuration | precision | children | images/s | x naive | MFU | children/h "
             "| note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            cells = [f"{r['images_per_s']:,.0f}",
                     "-" if r["x_naive"] is None else f"{r['x_naive']:.2f}x",
                     f"{100 * r['mfu']:.2f}%", f"{r['children_per_hour']:,.1f}"]
        else:
            cells = ["-"] * 4
        note = " ".join(n for n in (r["note"], "**winner**" if r["winner"] else "") if n)
        lines.append(f"| {r['config']} | {r['precision']} | {r['children']} | "
                     f"{' | '.join(cells)} | {note} |")
    return lines


def run_rows(args: argparse.Namespace, preset: Preset) -> list[Row]:
    """Measure every row in table order (CUDA-only rows skipped on the CPU), printing each."""
    cuda = args.device == "cuda"
    ctx = torch.multiprocessing.get_context("spawn")
    rows: list[Row] = []
    capture_failed = False
    for config in configs(cuda, preset.ks, preset.streams):
        if config.needs_cuda and not cuda:
            rows.append(Row(config, "skipped", note="skipped: no CUDA"))
            continue
        if config.graph and capture_failed:
            rows.append(Row(config, "skipped", note="skipped: CUDA graph capture failed"))
            continue
        t0 = time.time()
        row = measure(Job(config, args.arch, preset.cells, preset.filters, preset.batch_size,
                          preset.steps, preset.warmup, args.device, args.seed), ctx)
        rows.append(row)
        outcome = f"{row.images_per_s:,.0f} images/s" if row.status == "ok" else row.note
        print(f"  {config.name}: {outcome} ({time.time() - t0:.0f} s)", flush=True)
        if config.graph and "CUDA graph capture failed" in row.note:
            capture_failed = True
            print("  -> falling back: the remaining CUDA-graph rows are skipped and the eager "
                  "rows stand", flush=True)
    return rows


def summarize(rows: list[Row], flops_per_image: int,
              args: argparse.Namespace) -> list[dict[str, Any]]:
    """The table rows: images/s, x the naive (first) row, MFU, children/h; the fastest
    measured row has ``winner`` True."""
    naive = rows[0].images_per_s if rows[0].status == "ok" else None
    table: list[dict[str, Any]] = []
    for row in rows:
        c = row.config
        peak = (args.peak_tflops if c.bf16 else args.peak_tflops_fp32) * 1e12
        entry: dict[str, Any] = {
            "config": c.name, "precision": c.precision, "children": c.children,
            "processes": c.processes, "streams": c.streams, "graph": c.graph,
            "status": row.status, "note": row.note, "images_per_s": None, "x_naive": None,
            "mfu": None, "children_per_hour": None, "winner": False}
        if row.status == "ok":
            entry.update(
                images_per_s=row.images_per_s,
                x_naive=None if naive is None else row.images_per_s / naive,
                mfu=row.images_per_s * flops_per_image / peak,
                children_per_hour=row.images_per_s * 3600 / (args.epochs * args.train_images))
        table.append(entry)
    measured = [e for e in table if e["status"] == "ok"]
    if measured:
        max(measured, key=lambda e: e["images_per_s"])["winner"] = True
    return table


def verdict(table: list[dict[str, Any]]) -> str:
    """The winner against the issue's targets, as one line."""
    winner = next((e for e in table if e["winner"]), None)
    if winner is None:
        return "Winner: none (no row was measured)."
    if winner["x_naive"] is None:
        return (f"Winner: **{winner['config']}**, {winner['images_per_s']:,.0f} images/s; the "
                "naive row failed, so the targets cannot be judged.")
    naive = winner["images_per_s"] / winner["x_naive"]
    speed_met = winner["x_naive"] >= SPEED_TARGET
    mfu_met = winner["mfu"] >= MFU_TARGET
    return (f"Target (issue 5): >= {SPEED_TARGET:g}x the naive single-child rate (>= "
            f"{SPEED_TARGET * naive:,.0f} images/s) and >= {MFU_TARGET:.0%} MFU. Winner: "
            f"**{winner['config']}** ({winner['precision']}, "
            f"{winner['children']} {'child' if winner['children'] == 1 else 'children'}): "
            f"{winner['images_per_s']:,.0f} images/s = "
            f"{winner['x_naive']:.2f}x naive (**{'met' if speed_met else 'not met'}**), MFU "
            f"{100 * winner['mfu']:.2f}% (**{'met' if mfu_met else 'not met'}**), "
            f"{winner['children_per_hour']:,.1f} children/h.")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every row, print the table and the winner, write JSON and BENCHMARKS.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, preset = _parse(argv)
    started = time.time()
    model = build_child(args.arch, preset.cells, preset.filters)
    params, macs = model.num_params(), model.flops(IMAGE_SHAPE[1:])
    flops_per_image = 3 * macs * 2
    print(f"child: nasnet N={preset.cells} F={preset.filters}, {params:,} parameters, "
          f"{macs / 1e6:.1f} M forward MACs/image, {flops_per_image / 1e9:.3f} GFLOP per training "
          f"image (3 x MACs x 2), batch {preset.batch_size}, device {args.device}", flush=True)
    rows = run_rows(args, preset)
    table = summarize(rows, flops_per_image, args)
    winner = next((e["config"] for e in table if e["winner"]), None)
    device_name = next((r.device_name for r in rows if r.device_name), args.device)
    host = machine(gpu=False)
    command = "python -m bench.gpu_children" + (f" {shlex.join(argv)}" if argv else "")
    cells = "NASNet-A" if args.arch == NASNET_A else f"`{args.arch}`"
    body = "\n".join([
        "## GPU children: training throughput of NASNet-search children on one GPU", "",
        f"Command: `{command}` ({(time.time() - started) / 60:.1f} min on {device_name}; host "
        f"{host}; torch {torch.__version__}).", "",
        f"Child: nasnet space, cells {cells}, N={preset.cells}, F={preset.filters}, "
        f"{'x'.join(map(str, IMAGE_SHAPE))} input, {NUM_CLASSES} classes: {params:,} parameters, "
        f"{macs / 1e6:.1f} M forward MACs per image, {flops_per_image / 1e9:.3f} GFLOP per "
        f"training image (FLOPs = 3 x forward MACs x 2 FLOP/MAC; conv and linear layers). "
        f"Batch {preset.batch_size} per child on synthetic data on the device; SGD Nesterov 0.9, "
        f"lr {RECIPE.learning_rate:g}, weight decay {RECIPE.weight_decay:g}, clip "
        f"{RECIPE.grad_clip}. Each child: {preset.warmup} warm-up steps, then {preset.steps} "
        f"timed steps; packed rows sum their processes' rates over a common window. MFU against "
        f"{args.peak_tflops:g} TFLOP/s (bf16 rows) and {args.peak_tflops_fp32:g} TFLOP/s (fp32 "
        f"rows). children/h: {args.epochs} epochs x {args.train_images:,} images per child, "
        f"training steps only. Processes share the GPU by time-slicing (no MPS started).", "",
        *_table(table), "", verdict(table)])
    print()
    print(body)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": command, "device": device_name, "host": host,
            "torch": torch.__version__, "smoke": args.smoke,
            "model": {"space": "nasnet", "arch": args.arch, "cells": preset.cells,
                      "filters": preset.filters, "input": list(IMAGE_SHAPE),
                      "classes": NUM_CLASSES, "batch_size": preset.batch_size, "params": params,
                      "forward_macs_per_image": macs, "flops_per_train_image": flops_per_image,
                      "flop_convention": "3 x forward MACs x 2 FLOP/MAC"},
            "recipe": {"epochs": args.epochs, "train_images": args.train_images},
            "peak_tflops": {"bf16": args.peak_tflops, "fp32": args.peak_tflops_fp32},
            "warmup": preset.warmup, "steps": preset.steps, "rows": table, "winner": winner,
            "minutes": (time.time() - started) / 60}, indent=2) + "\n")
    if args.smoke or args.no_write:
        print("\n(BENCHMARKS.md not written: --smoke or --no-write)")
    else:
        write_section("gpu-children", body)
    return 1 if any(r.status == "failed" and not r.config.graph for r in rows) else 0

if __name__ == "__main__":
    sys.exit(main())
