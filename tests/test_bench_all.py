"""`python -m bench all` knows every benchmark and runs them as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.__main__ import BENCHES, LOGS

ROOT = Path(__file__).resolve().parents[1]
NOT_BENCHMARKS = {"__init__", "__main__", "report", "readme", "plots", "baselines",
                  "throughput_work", "paper_scale"}


def test_every_benchmark_module_is_in_the_suite() -> None:
    modules = {p.stem for p in (ROOT / "bench").glob("*.py")} - NOT_BENCHMARKS
    assert modules == {b.name for b in BENCHES}


def test_bench_all_quick_runs_the_chosen_benchmark_and_reports_it() -> None:
    # Act: the parameter-server benchmark at tiny sizes, through the suite's runner (its only
    # run in the tests; the other benchmarks' quick runs have tests of their own)
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick",
                           "--only", "paramserver"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    # Assert: it ran in its own process, its output kept in the log, BENCHMARKS.md untouched
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("paramserver") and "ok" in proc.stdout
    log = (LOGS / "paramserver-quick.log").read_text()
    assert log.startswith("$ python -m bench.paramserver --latency-n 5")
    assert "bare gRPC echo of the same bytes" in log and "| S=1 |" in log


def test_an_unknown_benchmark_is_refused_with_the_known_ones() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--only", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown benchmark(s) nope; known:" in proc.stderr
