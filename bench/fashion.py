"""The best searched cell against a hand-designed baseline at equal parameter count, on
Fashion-MNIST with one training recipe.

1. Search: REINFORCE (sample-efficient preset) over the space with the real ``train`` evaluator
   (each child trained ``--search-epochs`` on ``--search-subset`` images).
2. Final: the best cell at ``--cells``/``--filters``, and a small ResNet (basic blocks, three
   stages) whose width is chosen to match the cell network's parameter count, both trained
   from scratch with the same recipe on the full training split; validation and test accuracy.

    python -m bench.fashion --budget 10 --final-epochs 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench.report import machine, write_section
from controller.presets import CONTROLLER_PRESETS
from controller.search import run_search
from controller.spaces import create_space
from controller.strategies.reinforce import ReinforceStrategy
from nas.local_training import TrainEvaluator
from worker.builders import ModelSpec, build_model
from worker.datasets import load_dataset
from worker.trainer import TrainRecipe, evaluate, train


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 conv-BN, identity or 1x1-projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short: nn.Module = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class SmallResNet(nn.Module):
    """Stem, then stages of widths w, 2w, 4w (stride 2 between), pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int, blocks: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU()]
        cin = width
        for stage in range(3):
            cout = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage and b == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def params(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters())


def matched_resnet(target: int, in_channels: int, num_classes: int) -> SmallResNet:
    """The SmallResNet whose parameter count is closest to ``target``."""
    best = min(range(2, 65), key=lambda w: abs(params(SmallResNet(in_channels, num_classes, w))
                                               - target))
    return SmallResNet(in_channels, num_classes, best)


def main(argv: list[str] | None = None) -> int:
    """Run the search, the two final trainings, and write the BENCHMARKS.md section."""
    p = argparse.ArgumentParser(prog="python -m bench.fashion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="nb201", help="search space (nb201)")
    p.add_argument("--budget", type=int, default=10, help="children trained in the search")
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--search-subset", type=int, default=10000)
    p.add_argument("--cells", type=int, default=1, help="final cells per stage")
    p.add_argument("--filters", type=int, default=16, help="final initial filters")
    p.add_argument("--final-epochs", type=int, default=3)
    p.add_argument("--final-subset", type=int, default=None, help="train images (all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    start = time.time()
    space = create_space(args.space)
    recipe = TrainRecipe(epochs=args.search_epochs, batch_size=64, learning_rate=0.1,
                         seed=args.seed, device="auto")
    with tempfile.TemporaryDirectory() as tmp:
        evaluator = TrainEvaluator.from_data("fashion-mnist", None, args.seed, args.search_subset,
                                             2000, {"cells": 1, "filters": 8}, recipe, Path(tmp))
        preset = CONTROLLER_PRESETS["sample-efficient"]
        strategy = ReinforceStrategy(space, args.seed, preset.children, preset.policy,
                                     preset.learner)
        outcome = run_search(space, strategy, evaluator, args.budget, report_test=False)
    search_seconds = time.time() - start
    assert outcome.best is not None
    arch = space.from_string(outcome.best.trained_arch)
    splits = load_dataset("fashion-mnist", seed=args.seed, train_subset=args.final_subset)
    final = TrainRecipe(epochs=args.final_epochs, batch_size=64, learning_rate=0.1,
                        seed=args.seed, device="auto")
    cell_net = build_model(arch, ModelSpec(splits.in_channels, splits.num_classes,
                                           cells=args.cells, filters=args.filters))
    baseline = matched_resnet(cell_net.num_params(), splits.in_channels, splits.num_classes)
    rows = []
    for name, model in (("searched cell", cell_net), ("hand-designed ResNet", baseline)):
        report = train(model, splits, final)
        test = evaluate(model, splits.test_images, splits.test_labels, 256,
                        next(model.parameters()).device)
        rows.append(f"| {name} | {params(model):,} | {100 * report.final_val_accuracy:.2f} | "
                    f"{100 * test:.2f} | {report.train_seconds:.0f} |")
    command = (f"python -m bench.fashion --space {args.space} --budget {args.budget} "
               f"--search-epochs {args.search_epochs} --search-subset {args.search_subset} "
               f"--cells {args.cells} --filters {args.filters} --final-epochs "
               f"{args.final_epochs} --seed {args.seed}")
    body = "\n".join([
        "## Fashion-MNIST: searched cell vs hand-designed baseline at equal parameters", "",
        f"Command: `{command}` ({(time.time() - start) / 60:.1f} min on {machine()}).", "",
        f"Search: REINFORCE over `{args.space}`, {args.budget} children trained "
        f"{args.search_epochs} epoch(s) on {args.search_subset} images "
        f"({search_seconds:.0f} s); best validation accuracy {outcome.best.reward:.2%} for "
        f"`{outcome.best.trained_arch}`. Final: both models trained from scratch with the same "
        f"recipe (SGD {final.learning_rate:g}, {final.lr_schedule}, batch {final.batch_size}, "
        f"{final.epochs} epochs, {len(splits.train_labels):,} training images; validation = "
        f"{len(splits.val_labels):,} held-out training images; test = the "
        f"{len(splits.test_labels):,} test images).",
        "", "| model | parameters | val acc (%) | test acc (%) | train s |",
        "|---|---|---|---|---|", *rows])
    print(body)
    if not args.no_write:
        write_section("fashion", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
