"""The shape a newcomer can read (ARCHITECTURE.md): production files stay short (p90 <= 300
lines) and no function runs over 60 lines; a table of data is a module-level constant, not a
function, so it does not count."""

from __future__ import annotations

import ast
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("nas", "controller", "worker", "paramserver", "protos")
MAX_FUNCTION_LINES = 60
P90_FILE_LINES = 300


def _files() -> list[Path]:
    return sorted(p for wing in PRODUCTION for p in (ROOT / wing).rglob("*.py")
                  if "_pb2" not in p.name)


def test_p90_of_production_file_sizes_is_at_most_300_lines() -> None:
    sizes = sorted(len(p.read_text().splitlines()) for p in _files())
    p90 = sizes[math.ceil(0.9 * len(sizes)) - 1]
    assert len(sizes) > 50 and p90 <= P90_FILE_LINES, f"p90 {p90} lines over {len(sizes)} files"


def test_no_function_is_longer_than_60_lines() -> None:
    long = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                f"({lines} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)
