"""ENAS on this machine: what a weight-sharing search costs and finds, and how well shared
weights rank cells.

1. Search: ``nas search --strategy enas`` on enas-micro and macro (Fashion-MNIST slices): the
   supernet phase's cost in CPU-hours, the derived child trained from scratch (budget 1,
   ENAS's protocol), against a child drawn at random and trained the same way
   (``--strategy random --budget 1``), per seed.
2. Ranking: an NB201 supernet trained on Fashion-MNIST (one cell sampled uniformly per
   minibatch, so every op trains equally), then ``--cells`` cells drawn at random from the
   15,625 scored on the validation split with the shared weights. Kendall tau against the
   table's CIFAR-10 12-epoch validation accuracy (the search reward) and 200-epoch test
   accuracy; since the supernet sees Fashion-MNIST, not CIFAR-10, the same tau is given for a
   subset of those cells trained stand-alone on the same Fashion-MNIST slice, which is the most
   a Fashion-MNIST proxy can reach.

    python -m bench.enas
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bench.report import ROOT, background_load, machine, write_section
from controller.evaluators.nb201 import default_csv, load_table
from controller.spaces import create_space
from controller.strategies.surrogate import kendall_tau
from nas.wiring import build_supernet
from protos.types import SearchSpaceSpec
from worker.builders import ModelSpec, build_model
from worker.datasets import load_dataset
from worker.trainer import TrainRecipe, train
from worker.weight_sharing import SharedRecipe, SharedTrainer

SPACES = {"enas-micro": ["--space", "enas-micro", "--num-blocks", "5"],
          "macro": ["--space", "macro", "--num-layers", "4", "--predict-strides"]}
QUICK_SPACES = {"enas-micro": ["--space", "enas-micro", "--num-blocks", "2"],
                "macro": ["--space", "macro", "--num-layers", "2", "--predict-strides"]}


def _search(strategy: str, space_flags: list[str], seed: int, sizes: dict[str, int],
            out: Path) -> dict[str, Any]:
    """One ``nas search`` run as a user runs it; its result.json and wall time."""
    cmd = [sys.executable, "-m", "nas", "search", "--strategy", strategy, *space_flags,
           "--evaluator", "train", "--dataset", "fashion-mnist", "--budget", "1",
           "--seed", str(seed), "--train-subset", str(sizes["train"]),
           "--val-subset", str(sizes["val"]), "--filters", "8", "--cells", "1",
           "--epochs", str(sizes["child_epochs"]), "--quiet", "--out", str(out)]
    if strategy == "enas":
        cmd += ["--enas-epochs", str(sizes["enas_epochs"]),
                "--controller-steps", str(sizes["controller_steps"]),
                "--derive-samples", str(sizes["derive"])]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    doc: dict[str, Any] = json.loads((out / "result.json").read_text())
    doc["_wall"] = time.perf_counter() - started
    return doc


def search_rows(spaces: dict[str, list[str]], seeds: int, sizes: dict[str, int],
                bar: tqdm) -> list[dict[str, Any]]:
    """Per space and seed: the ENAS run and a random child trained the same way."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for space, flags in spaces.items():
            for seed in range(seeds):
                enas = _search("enas", flags, seed, sizes, Path(tmp) / f"{space}-{seed}-enas")
                bar.update()
                rand = _search("random", flags, seed, sizes, Path(tmp) / f"{space}-{seed}-rnd")
                bar.update()
                e = enas["enas"]
                rows.append({
                    "space": space, "seed": seed, "search_seconds": e["search_seconds"],
                    "cpu_hours": e.get("cpu_hours", 0.0), "threads": e["threads"],
                    "derived": len(e["derived"]), "score": e["derived"][0]["score"],
                    "controller_reward": [x["controller_reward"] for x in e["epochs"]],
                    "enas_val": enas["best"]["reward"], "enas_test": enas["best"]["test_accuracy"],
                    "random_val": rand["best"]["reward"],
                    "random_test": rand["best"]["test_accuracy"],
                    "enas_wall": enas["_wall"], "arch": enas["best"]["arch"]})
    return rows


def ranking(sizes: dict[str, int], cells: int, standalone: int, seed: int,
            bar: tqdm) -> dict[str, Any]:
    """Kendall tau of NB201 supernet scores (and stand-alone training) against the table."""
    torch.manual_seed(seed)
    space = create_space(SearchSpaceSpec("nb201"))
    table = load_table(default_csv(), "cifar10")
    splits = load_dataset("fashion-mnist", seed=seed, train_subset=sizes["rank_train"],
                          val_subset=sizes["rank_val"])
    spec = ModelSpec(in_channels=1, num_classes=10, cells=1, filters=8)
    recipe = SharedRecipe(epochs=sizes["supernet_epochs"], batch_size=64, learning_rate=0.1,
                          seed=seed, device="cpu")
    trainer = SharedTrainer(build_supernet(space, spec), splits, recipe)
    rng = random.Random(seed)
    started = time.perf_counter()
    for _ in range(recipe.epochs):
        trainer.train_epoch(lambda: space.sample_random(rng))
        bar.update()
    train_seconds = time.perf_counter() - started
    names = rng.sample(sorted(table), cells)
    scores = []
    for name in names:
        scores.append(trainer.score_all(space.from_string(name)))
    bar.update()
    reward = [table[n][0] for n in names]
    test = [table[n][1] for n in names]
    alone = []
    child_recipe = TrainRecipe(epochs=sizes["child_epochs"], batch_size=64, learning_rate=0.1,
                               seed=seed, device="cpu")
    for name in names[:standalone]:
        torch.manual_seed(seed)
        report = train(build_model(space.from_string(name), spec), splits, child_recipe)
        alone.append(report.val_accuracies[-1])
        bar.update()
    sub = slice(0, standalone)
    return {"cells": cells, "standalone": standalone, "train_seconds": train_seconds,
            "tau_reward": kendall_tau(scores, reward), "tau_test": kendall_tau(scores, test),
            "tau_sub_supernet": kendall_tau(scores[sub], reward[sub]),
            "tau_sub_alone": kendall_tau(alone, reward[sub]),
            "tau_supernet_alone": kendall_tau(scores[sub], alone),
            "best_by_supernet": test[scores.index(max(scores))],  # ties: the first drawn
            "best_in_sample": max(test), "mean_in_sample": sum(test) / len(test)}


def render(rows: list[dict[str, Any]], rank: dict[str, Any], sizes: dict[str, int],
           spaces: dict[str, list[str]], command: str, minutes: float) -> str:
    lines = [
        "## ENAS: weight-sharing search cost and shared-weight ranking", "",
        f"Machine: {machine()}; {background_load()}. Command: `{command}` "
        f"({minutes:.0f} min).", "",
        f"### Search (Fashion-MNIST: {sizes['train']} training / {sizes['val']} validation "
        f"images, F=8, N=1; supernet {sizes['enas_epochs']} passes x "
        f"{sizes['controller_steps']} controller steps, {sizes['derive']} children derived; "
        f"children from scratch {sizes['child_epochs']} epoch(s))", "",
        "Spaces: " + "; ".join(f"`{' '.join(flags)}`" for flags in spaces.values()) + ".", "",
        "| space | seed | supernet phase | search cost | best shared-weight score | "
        "ENAS child val / test | random child val / test |",
        "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['space']} | {r['seed']} | {r['search_seconds']:.0f} s | "
            f"{r['cpu_hours']:.4f} CPU-h ({r['threads']} threads) | {r['score']:.3f} | "
            f"{r['enas_val']:.3f} / {r['enas_test']:.3f} | "
            f"{r['random_val']:.3f} / {r['random_test']:.3f} |")
    for space in spaces:
        mine = [r for r in rows if r["space"] == space]
        if mine:
            wins = sum(r["enas_test"] > r["random_test"] for r in mine)
            lines.append("")
            lines.append(f"{space}: the derived child beat the random child on test accuracy "
                         f"in {wins} of {len(mine)} seeds; controller reward per pass (seed 0): "
                         + ", ".join(f"{v:.3f}" for v in mine[0]["controller_reward"]) + ".")
    lines += [
        "", f"### Ranking NB201 cells with shared weights ({rank['cells']} random cells; "
        f"supernet F=8, N=1, {sizes['supernet_epochs']} passes over {sizes['rank_train']} "
        f"Fashion-MNIST images, {rank['train_seconds']:.0f} s; scored on "
        f"{sizes['rank_val']}; stand-alone children {sizes['child_epochs']} epoch(s) on the "
        "same images)", "",
        "| ranking | against | Kendall tau |", "|---|---|---|",
        f"| supernet score, {rank['cells']} cells | CIFAR-10 12-epoch validation (the reward) "
        f"| {rank['tau_reward']:+.3f} |",
        f"| supernet score, {rank['cells']} cells | CIFAR-10 200-epoch test | "
        f"{rank['tau_test']:+.3f} |",
        f"| supernet score, first {rank['standalone']} | CIFAR-10 12-epoch validation | "
        f"{rank['tau_sub_supernet']:+.3f} |",
        f"| stand-alone Fashion-MNIST training, same {rank['standalone']} | CIFAR-10 12-epoch "
        f"validation | {rank['tau_sub_alone']:+.3f} |",
        f"| supernet score, same {rank['standalone']} | their stand-alone Fashion-MNIST "
        f"accuracy | {rank['tau_supernet_alone']:+.3f} |", "",
        f"The cell the supernet ranks first has CIFAR-10 test accuracy "
        f"{100 * rank['best_by_supernet']:.2f}% (best of the sample "
        f"{100 * rank['best_in_sample']:.2f}%, sample mean {100 * rank['mean_in_sample']:.2f}%). "
        "The supernet trains on Fashion-MNIST (no CIFAR-10 images on this machine); the "
        "stand-alone row bounds what a Fashion-MNIST proxy can say about the CIFAR-10 table.",
        "", reading(rank)]
    return "\n".join(lines)


def reading(rank: dict[str, Any]) -> str:
    """The ranking's reading: shared weights against stand-alone training on the same images,
    both against the reward (the comparison decides the words)."""
    shared, alone = rank["tau_reward"], rank["tau_sub_alone"]
    taus = (f"(tau {shared:+.2f} against the reward, {rank['tau_test']:+.2f} against the "
            f"200-epoch test accuracy)")
    if shared < alone:
        head = (f"shared weights rank these cells weakly {taus} where stand-alone training on "
                f"the same images reaches {alone:+.2f}")
    else:
        head = (f"shared weights rank these cells {taus} at least as well as stand-alone "
                f"training on the same images ({alone:+.2f})")
    return (f"Reading: {head}; weight-sharing rankings are known to be weak (Sciuto et al. "
            "2019, Yu et al. 2020). ENAS still uses them only to pick which child to train "
            "from scratch.")


FULL = {"train": 2000, "val": 500, "enas_epochs": 4, "controller_steps": 20, "derive": 16,
        "child_epochs": 2, "supernet_epochs": 10, "rank_train": 5000, "rank_val": 1000}
QUICK = {"train": 128, "val": 64, "enas_epochs": 1, "controller_steps": 2, "derive": 2,
         "child_epochs": 1, "supernet_epochs": 1, "rank_train": 128, "rank_val": 64}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.enas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI): checks it runs")
    p.add_argument("--seeds", type=int, default=2, help="ENAS and random runs per space (2)")
    p.add_argument("--cells", type=int, default=100, help="NB201 cells ranked (100)")
    p.add_argument("--standalone", type=int, default=12,
                   help="of those, cells also trained stand-alone (12)")
    p.add_argument("--spaces", default=",".join(SPACES),
                   help=f"comma-separated spaces to search ({','.join(SPACES)})")
    p.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = p.parse_args(argv)
    for name in ("seeds", "cells", "standalone"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1")
    chosen = [s.strip() for s in args.spaces.split(",") if s.strip()]
    if not chosen or any(s not in SPACES for s in chosen):
        p.error(f"--spaces: choose from {', '.join(SPACES)}, got {args.spaces!r}")
    if args.standalone > args.cells:
        p.error("--standalone: must be <= --cells")
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(os.cpu_count() or 1)
    steps = 2 * len(chosen) * args.seeds + sizes["supernet_epochs"] + 1 + args.standalone
    started = time.perf_counter()
    with tqdm(total=steps, desc="bench.enas", unit="step") as bar:
        spaces = {k: v for k, v in (QUICK_SPACES if args.quick else SPACES).items()
                  if k in chosen}
        rows = search_rows(spaces, args.seeds, sizes, bar)
        rank = ranking(sizes, args.cells, args.standalone, 0, bar)
    command = "python -m bench.enas" + (" --quick" if args.quick else "") + \
        ("" if args.seeds == 2 else f" --seeds {args.seeds}") + \
        ("" if args.cells == 100 else f" --cells {args.cells}") + \
        ("" if args.standalone == 12 else f" --standalone {args.standalone}") + \
        ("" if len(chosen) == len(SPACES) else f" --spaces {','.join(chosen)}")
    text = render(rows, rank, sizes, spaces, command, (time.perf_counter() - started) / 60)
    print(text)
    if not args.no_write:
        write_section("enas", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
