"""Regenerate the Python code and type stubs for every ``.proto`` file in ``protos/v1``.

Run ``python -m protos.generate`` after editing a ``.proto``; the generated files are committed and
``tests/test_protos.py`` fails when they are stale. ``--check`` reports drift without writing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "v1"
ROOT = PROTO_DIR.parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        raise SystemExit(f"{name} not found: pip install -e '.[dev]' (mypy-protobuf provides it)")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Generate code for all protos into ``out_dir`` (mirroring ``protos/v1``); return the files."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *[str(p.relative_to(ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    gen_dir = out_dir / "protos" / "v1"
    return sorted(p for p in gen_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def _wanted(files: list[Path]) -> dict[str, bytes]:
    # protoc writes an empty *_pb2_grpc module for protos without services: skip those.
    out = {}
    for f in files:
        data = f.read_bytes()
        if f.name.endswith(("_pb2_grpc.py", "_pb2_grpc.pyi")) and b"Stub" not in data:
            continue
        out[f.name] = data
    return out


def drift() -> list[str]:
    """Names of generated files that differ from (or are missing beside) the committed ones."""
    with tempfile.TemporaryDirectory() as tmp:
        wanted = _wanted(generate(Path(tmp)))
    committed = {p.name for p in PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}
    stale = [n for n, data in wanted.items() if not (PROTO_DIR / n).exists()
             or (PROTO_DIR / n).read_bytes() != data]
    return sorted(stale + sorted(committed - set(wanted)))


def main() -> int:
    """Regenerate (default) or check (``--check``) the committed generated code."""
    parser = argparse.ArgumentParser(prog="python -m protos.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1")
    args = parser.parse_args()
    if args.check:
        stale = drift()
        for name in stale:
            print(f"stale: protos/v1/{name}")
        return 1 if stale else 0
    with tempfile.TemporaryDirectory() as tmp:
        wanted = _wanted(generate(Path(tmp)))
    for old in PROTO_DIR.iterdir():
        if old.name.endswith(GENERATED_SUFFIXES) and old.name not in wanted:
            old.unlink()
    for name, data in wanted.items():
        (PROTO_DIR / name).write_bytes(data)
        print(f"wrote protos/v1/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
