"""``nas export`` (bundles of the best architectures of a run) and ``nas train-final``
(retrain a bundle's architecture larger and report its test accuracy: the NASNet transfer step)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from controller.config import TRAIN_DATASETS, ConfigError
from controller.service.connect import add_connection
from controller.spaces import create_space
from nas.bundle import BundleError, export_run, load_bundle, save_torchscript
from protos.types import SearchSpaceSpec
from worker.builders import ModelSpec, build_model
from worker.datasets import DatasetError, load_dataset
from worker.trainer import TrainRecipe, evaluate, train


def add_parsers(sub: Any) -> None:
    """Register ``export`` and ``train-final``."""
    p = sub.add_parser("export", help="package the best architectures of a search run or job",
                       description="Write one bundle per top architecture of a `nas search` run: "
                       "architecture.json, genotype.txt, cell.png and, for trained children, "
                       "weights.pt, model.ts (TorchScript; model.onnx when onnx is installed) "
                       "and recipe.json. RUN that is not a directory is a job id of the search "
                       "service at --endpoint: its bundles are built there and written to --to.")
    p.add_argument("run", type=Path, help="the --out directory of `nas search`, or a job id")
    p.add_argument("--top", type=int, default=1, help="how many architectures (1)")
    p.add_argument("--to", type=Path, default=None,
                   help="output directory (RUN/bundles; required for a job)")
    add_connection(p)
    p.set_defaults(func=run_export)
    p = sub.add_parser("train-final", help="retrain a bundle's architecture at a larger size",
                       description="Retrain the bundle's architecture from scratch with N cells "
                       "per stage and F initial filters on the full training split, then report "
                       "test accuracy (NASNet's 'N @ F'). Writes BUNDLE/final-N@F/.")
    p.add_argument("bundle", type=Path, help="a directory written by `nas export`")
    p.add_argument("--cells", type=int, default=2, help="cells per stage, N (2)")
    p.add_argument("--filters", type=int, default=16, help="initial filters, F (16)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (10)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate, cosine (0.1)")
    p.add_argument("--drop-path", type=float, default=0.0, help="max drop-path probability")
    p.add_argument("--dataset", choices=TRAIN_DATASETS, help="default: the bundle's")
    p.add_argument("--data-dir", help="dataset directory")
    p.add_argument("--train-subset", type=int, help="train on this many images (all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train_final)


def run_export(args: argparse.Namespace) -> int:
    """Execute ``nas export``."""
    if args.top < 1:
        raise ConfigError(f"top: must be >= 1, got {args.top}")
    if not args.run.is_dir():  # a job id: the search service exports it
        from nas.watch_command import export_job

        return export_job(args)
    bundles = export_run(args.run, args.to or args.run / "bundles", args.top)
    for path in bundles:
        files = ", ".join(sorted(p.name for p in path.iterdir()))
        print(f"wrote {path}: {files}")
    return 0


def run_train_final(args: argparse.Namespace) -> int:
    """Execute ``nas train-final``."""
    arch_doc, recipe_doc = load_bundle(args.bundle)
    dataset = args.dataset or recipe_doc.get("dataset")
    if dataset is None:
        raise BundleError("dataset: the bundle has no recipe.json (an nb201 run); pass --dataset")
    space = create_space(SearchSpaceSpec(**arch_doc["space"]))
    arch = space.from_string(arch_doc["arch"])
    try:
        splits = load_dataset(dataset, args.data_dir, seed=args.seed,
                              train_subset=args.train_subset)
        spec = ModelSpec(in_channels=splits.in_channels, num_classes=splits.num_classes,
                         cells=args.cells, filters=args.filters, drop_path=args.drop_path)
        recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, seed=args.seed, device=args.device)
    except DatasetError as exc:
        raise BundleError(str(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    model = build_model(arch, spec)
    bar = tqdm(total=args.epochs, unit="epoch", disable=args.quiet, desc="train-final")

    def progress(epoch: int, loss: float, val: float) -> None:
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.4f}", refresh=False)
        bar.update(1)

    try:
        report = train(model, splits, recipe, progress)
    finally:
        bar.close()
    test = evaluate(model, splits.test_images, splits.test_labels, 2 * args.batch_size,
                    next(model.parameters()).device)
    out = args.bundle / f"final-{args.cells}@{args.filters}"
    out.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    import torch

    torch.save(model.state_dict(), out / "weights.pt")
    save_torchscript(model, out / "model.ts", (1, spec.in_channels, splits.image_size,
                                                splits.image_size))
    doc = {"arch": arch_doc["arch"], "cells": args.cells, "filters": args.filters,
           "params": model.num_params(), "flops": model.flops((splits.image_size,) * 2),
           "val_accuracies": list(report.val_accuracies), "test_accuracy": test,
           "train_seconds": report.train_seconds, "dataset": dataset,
           "train_images": len(splits.train_labels), "mean": list(splits.mean),
           "std": list(splits.std), "recipe": vars(recipe)}
    (out / "report.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{args.cells} @ {args.filters}: {model.num_params():,} parameters, "
          f"val {report.final_val_accuracy:.2%}, test accuracy {test:.2%} "
          f"({report.train_seconds:.0f} s)\n  wrote {out}")
    return 0
