"""Export bundles: what a search found, packaged to run, retrain larger, and look at.

A bundle directory holds ``architecture.json`` (nodes, space, string form, reward, metrics),
``genotype.txt`` (the one-line string form), ``cell.png`` (a diagram) and, when the children were
trained (``--evaluator train``), ``weights.pt`` (the trained state dict), ``model.ts`` (TorchScript:
normalised images in, logits out), ``model.onnx`` (when ``onnx`` is installed) and
``recipe.json`` (dataset, normalisation, child size, training recipe).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from controller.config import ConfigError, SearchConfig, build_config
from controller.factory import build_space
from controller.service.export import BundleError, top_trained
from controller.spaces import SearchSpace
from nas.diagram import draw
from protos.types import Architecture
from worker.builders import ChildNet, ModelSpec, build_model


def read_run(run_dir: Path) -> tuple[dict[str, Any], SearchConfig, SearchSpace]:
    """result.json of a search run, its config and its search space."""
    path = run_dir / "result.json"
    if not path.is_file():
        raise BundleError(f"{path} not found: pass the --out directory of a `nas search` run")
    try:
        doc = json.loads(path.read_text())
        cfg = build_config(doc["config"])
    except (json.JSONDecodeError, KeyError, ConfigError) as exc:
        raise BundleError(f"{path}: not a result.json of `nas search` ({exc})") from None
    return doc, cfg, build_space(cfg)


def export_run(run_dir: Path, out: Path, top: int = 1) -> list[Path]:
    """Write one bundle per top architecture of a run under ``out``; return their paths."""
    doc, cfg, space = read_run(run_dir)
    if not top_trained(doc, 1):
        raise BundleError(f"{run_dir}: the run has no successfully trained architecture")
    return write_bundles(doc, cfg, space, out, top)


def write_bundles(doc: dict[str, Any], cfg: SearchConfig, space: SearchSpace, out: Path,
                  top: int) -> list[Path]:
    """The bundles of the top architectures of ``doc`` (``history`` and ``evaluator`` as in
    result.json: a run directory's, or a service job's trials) under ``out``."""
    chosen = top_trained(doc, top)
    evaluator = doc.get("evaluator", {})
    bundles = []
    for rank, entry in enumerate(chosen, start=1):
        arch = space.from_string(entry["arch"])
        bundle = out / f"{rank:02d}-{space.canonical_hash(arch)[:10]}"
        bundle.mkdir(parents=True, exist_ok=True)
        write_architecture(bundle, space, arch, entry, cfg)
        draw(arch, bundle / "cell.png")
        weights = entry.get("artifacts", {}).get("weights")
        if weights and evaluator.get("name") == "train":
            write_model(bundle, arch, evaluator, Path(weights))
        bundles.append(bundle)
    return bundles


def write_architecture(bundle: Path, space: SearchSpace, arch: Architecture,
                       entry: dict[str, Any], cfg: SearchConfig) -> None:
    """architecture.json and genotype.txt."""
    text = space.to_string(arch)
    doc = {"space": asdict(space.spec), "arch": text, "canonical_hash": space.canonical_hash(arch),
           "reward": entry["reward"], "metrics": entry.get("metrics", {}),
           "nodes": [{"type": n.type, "op": n.op, "inputs": list(n.inputs), "cell": n.cell,
                      "attrs": dict(n.attrs)} for n in arch.nodes],
           "search": {"strategy": cfg.strategy, "seed": cfg.seed, "evaluator": cfg.evaluator,
                      "dataset": cfg.dataset}}
    (bundle / "architecture.json").write_text(json.dumps(doc, indent=1) + "\n")
    (bundle / "genotype.txt").write_text(text + "\n")


def write_model(bundle: Path, arch: Architecture, evaluator: dict[str, Any],
                weights: Path) -> None:
    """weights.pt, model.ts (and model.onnx) and recipe.json for a trained child."""
    if not weights.is_file():
        raise BundleError(f"trained weights {weights} are missing: was the run directory moved?")
    spec = ModelSpec(**evaluator["model"])
    model = build_model(arch, spec)
    model.load_state_dict(torch.load(weights, weights_only=True))
    shutil.copyfile(weights, bundle / "weights.pt")
    side = int(evaluator.get("image_size", 28 if spec.in_channels == 1 else 32))
    save_torchscript(model.eval(), bundle / "model.ts", (1, spec.in_channels, side, side))
    recipe = {k: evaluator[k] for k in ("dataset", "mean", "std", "model", "recipe")}
    recipe["image_size"] = side
    (bundle / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    try:
        import onnx  # noqa: F401
    except ImportError:
        return
    torch.onnx.export(model, (torch.zeros(1, spec.in_channels, side, side),),
                      str(bundle / "model.onnx"))


def save_torchscript(model: ChildNet, path: Path, shape: tuple[int, ...]) -> None:
    """Trace an eval-mode child to TorchScript (its control flow is fixed by the architecture)."""
    example = torch.zeros(shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit.trace is deprecated in favour of torch.export
        traced = torch.jit.trace(model, example)
    traced.save(str(path))


def load_bundle(bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """architecture.json and recipe.json of a bundle (recipe empty if not trained)."""
    arch_path = bundle / "architecture.json"
    if not arch_path.is_file():
        raise BundleError(f"{arch_path} not found: pass a directory written by `nas export`")
    recipe_path = bundle / "recipe.json"
    recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else {}
    return json.loads(arch_path.read_text()), recipe
