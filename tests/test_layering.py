"""Layering rules from DESIGN.md: algorithm code never imports grpc or the generated code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALGORITHM_CODE = ["controller/spaces", "controller/policy", "controller/strategies",
                  "controller/evaluators", "controller/search.py", "controller/cache.py",
                  "worker/builders", "worker/ops.py", "worker/layers.py", "worker/child.py",
                  "worker/datasets.py", "worker/datasets_base.py",
                  "worker/datasets_cifar10.py", "worker/datasets_fashion_mnist.py",
                  "worker/trainer.py", "worker/trainer_recipe.py", "controller/early_stopping.py",
                  "controller/trials/board.py", "controller/trials/evaluator.py",
                  "controller/trials/queues.py",
                  "paramserver/shard.py", "paramserver/snapshot.py",
                  "paramserver/checkpoint.py", "paramserver/registry.py",
                  "paramserver/metrics.py"]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("where", ALGORITHM_CODE)
def test_algorithm_code_does_not_import_grpc_or_generated_code(where: str) -> None:
    target = ROOT / where
    files = [target] if target.is_file() else sorted(target.rglob("*.py"))
    assert files, f"nothing to check under {where}"
    for path in files:
        bad = {n for n in _imports(path) if n.split(".")[0] == "grpc" or n.startswith("protos.v1")
               or n == "protos.codec"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_services_do_not_import_each_other() -> None:
    for package, others in (("worker", ("controller", "paramserver")),
                            ("paramserver", ("controller", "worker"))):
        for path in (ROOT / package).rglob("*.py"):
            bad = {n for n in _imports(path) if n.split(".")[0] in others}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


# The composition root: the `nas` command and what it wires together (the local layout runs the
# worker's trainer in-process). Nothing else in the controller may import another service.
COMPOSITION_ROOT = {"cli.py", "factory.py", "local_training.py", "ray_training.py", "bundle.py",
                    "bundle_command.py", "text_training.py"}


def test_only_the_composition_root_imports_other_services() -> None:
    for path in (ROOT / "controller").rglob("*.py"):
        if path.parent == ROOT / "controller" and path.name in COMPOSITION_ROOT:
            continue
        bad = {n for n in _imports(path) if n.split(".")[0] in ("worker", "paramserver")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
