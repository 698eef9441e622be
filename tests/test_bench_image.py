"""The production images carry no benchmarks: the Dockerfiles copy no `bench/` (and the build
context leaves it out), and nothing in the images or the compose file runs bench code."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "deploy").glob("Dockerfile*"))


def ignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` (relative to the context) out of the context."""
    patterns = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    out = False
    for pattern in patterns:  # later patterns win; "!" re-includes
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        parts = Path(path).parts
        if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            out = not negate
    return out


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [(m.group(1).upper(), m.group(2)) for line in text.splitlines()
            if (m := re.match(r"\s*([A-Za-z]+)\s+(.*)", line)) and not line.lstrip()
            .startswith("#")]


def test_there_are_dockerfiles() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.cuda"]


def test_the_build_context_leaves_bench_out() -> None:
    # Assert
    assert ignored("bench") and ignored("bench/throughput.py") and ignored("BENCHMARKS.md")
    assert not any(ignored(p) for p in ("controller", "worker", "paramserver", "protos",
                                        "pyproject.toml", "README.md"))


def test_no_dockerfile_copies_or_runs_bench_code() -> None:
    for dockerfile in DOCKERFILES:
        for op, args in instructions(dockerfile):
            if op in ("COPY", "ADD"):
                if "--from=" in args:
                    continue  # from another stage, not the context
                sources = [a for a in args.split() if not a.startswith("--")][:-1]
                for source in sources:
                    name = source.strip("./") or "."
                    # the whole context is fine only while .dockerignore drops bench/
                    ok = ignored("bench") if name == "." else not name.startswith("bench")
                    assert ok, f"{dockerfile.name}: {op} {args}"
            assert not re.search(r"\bbench\b", args), f"{dockerfile.name}: {op} {args}"


def test_no_compose_service_runs_bench_code() -> None:
    # Arrange
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    # Assert
    for name, service in services.items():
        for key in ("command", "entrypoint"):
            value = service.get(key) or []
            words = value.split() if isinstance(value, str) else [str(v) for v in value]
            assert not any(re.search(r"\bbench\b", w) for w in words), f"{name}: {key} {value}"
