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


# What each wing may import (DESIGN.md, ARCHITECTURE.md): the services meet only in protos/;
# nas/ is the composition root that wires them together, and nothing imports it.
MAY_IMPORT = {"protos": {"protos"},
              "controller": {"controller", "protos"},
              "worker": {"worker", "protos"},
              "paramserver": {"paramserver", "protos"},
              "nas": {"nas", "controller", "worker", "paramserver", "protos"}}


def _module_graph() -> dict[str, set[str]]:
    """Every module of the wings and the project modules it imports (at any depth in its
    code: a function's local import counts), resolved to the module files that exist."""
    modules: dict[str, Path] = {}
    for wing in MAY_IMPORT:
        for path in (ROOT / wing).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for imported in _imports_of(path, package):
            while imported and imported not in modules:  # a name inside a module: the module
                imported = imported.rpartition(".")[0]
            if imported:
                found.add(imported)
                parent = imported.rpartition(".")[0]  # importing a.b.c runs a/__init__, a.b's
                while parent:
                    found.add(parent)
                    parent = parent.rpartition(".")[0]
        graph[name] = found & modules.keys()
    return graph


def _imports_of(path: Path, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _reached(graph: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """Every module ``start`` loads, each with the module that imports it (a path back)."""
    via: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        importer = todo.pop()
        for name in graph[importer]:
            if name not in via:
                via[name] = importer
                todo.append(name)
    return via


def test_no_wing_imports_what_it_may_not_even_through_another_module() -> None:
    graph = _module_graph()
    crossings = []
    for name in sorted(graph):
        wing = name.split(".")[0]
        via = _reached(graph, name)
        for reached in via:
            if reached.split(".")[0] not in MAY_IMPORT[wing]:
                chain = [reached]
                while via[chain[-1]] is not None:
                    chain.append(str(via[chain[-1]]))
                crossings.append(" <- ".join(chain))
                break
    assert not crossings, "imports across the wings:\n" + "\n".join(crossings)


def test_the_layering_check_sees_an_indirect_crossing() -> None:
    """The rule follows imports through other modules: a.py -> b.py -> worker is caught."""
    graph = {"controller.a": {"controller.b"}, "controller.b": {"worker.x"}, "worker.x": set()}
    via = _reached(graph, "controller.a")
    assert "worker.x" in via and via["worker.x"] == "controller.b"
    assert _module_graph()["nas.cli"] >= {"nas.search_command"}


def test_the_composition_root_is_the_only_package_that_imports_two_services() -> None:
    graph = _module_graph()
    for name, imported in graph.items():
        services = {m.split(".")[0] for m in imported} & {"controller", "worker",
                                                          "paramserver"}
        if len(services) > 1:
            assert name.startswith("nas"), f"{name} imports {sorted(services)}"
