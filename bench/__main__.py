"""Run every benchmark: ``python -m bench all`` regenerates BENCHMARKS.md, bench/out/ and the
README's benchmarks block (``bench.readme``).

    python -m bench all              # the full suite (hours on 2 cores; each section names
                                     # its own command and machine)
    python -m bench all --quick      # every benchmark at tiny sizes, BENCHMARKS.md untouched
    python -m bench all --only nb201,enas
    python -m bench list

Each benchmark runs as its own process (``python -m bench.NAME``), its output kept in
``bench/out/logs/NAME.log``; a failing one does not stop the rest, and the exit status is 1
when any failed. The GPU benchmark (``bench.gpu_children``) runs only with ``--gpu``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bench.readme import refresh
from bench.report import ROOT

LOGS = ROOT / "bench" / "out" / "logs"


@dataclass(frozen=True)
class Bench:
    """One benchmark module, its full-mode and quick-mode arguments."""

    name: str
    what: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    gpu: bool = False


BENCHES = (
    Bench("nb201", "search quality on NAS-Bench-201 (CIFAR-10, CIFAR-100, ImageNet16-120) "
          "for random, REA, ours, logits-REINFORCE, Optuna TPE; ours through the full stack",
          ("--seeds", "30", "--datasets", "cifar10,cifar100,imagenet16", "--stack-seeds", "5"),
          ("--seeds", "2", "--budgets", "10,20", "--workers", "1", "--stack-seeds", "1",
           "--plot-dir", "/tmp/nas-bench-quick")),
    Bench("fashion", "the searched cell against a matched ResNet on Fashion-MNIST", (),
          ("--budget", "2", "--search-subset", "1000", "--final-epochs", "1",
           "--final-subset", "1000")),
    Bench("paramserver", "push/pull latency, push throughput, the paper's S=20 K=100 m=8 "
          "layout", (),
          ("--latency-n", "5", "--tp-seconds", "0.3", "--tp-shards", "1", "--tp-replicas", "2",
           "--shard-starts", "1", "--no-paper")),
    Bench("orchestration", "Ray worker dispatch and reporting overhead", (),
          ("--children", "4", "--workers", "2", "--epochs", "1", "--train-subset", "256")),
    Bench("load", "concurrent clients and a fuzzer against every RPC", (), ("--quick",)),
    Bench("systems", "a small real run of each seed system; PNAS vs REINFORCE", (),
          ("--quick",)),
    Bench("enas", "ENAS search cost; NB201 supernet Kendall tau against the table", (),
          ("--quick", "--seeds", "1", "--cells", "8", "--standalone", "3")),
    Bench("throughput", "end-to-end trials/s of the full stack against Ray Tune and Optuna",
          (), ("--quick",)),
    Bench("chaos", "workers, replicas, a shard, the search service and Redis killed during "
          "searches: results lost, retries, runtime, final best", (),
          ("--quick", "--faults", "service,shard", "--together", "--kills", "1", "--budget",
           "24", "--run-timeout", "60", "--down-seconds", "0.5", "--seed", "1")),
    Bench("soak", "a 20,000-training job and 10,000 stored jobs through nas serve search: "
          "per-call latencies, service RSS, Redis memory", (), ("--quick",)),
    Bench("gpu_children", "the CUDA path: bf16 autocast, channels_last, packing (GPU only)",
          (), ("--smoke",), gpu=True),
)


def log_path(bench: Bench, quick: bool) -> Path:
    """Where a benchmark's output goes."""
    return LOGS / f"{bench.name}{'-quick' if quick else ''}.log"


def run_all(benches: list[Bench], quick: bool) -> list[tuple[Bench, int, float]]:
    """Run each benchmark in its own process; (bench, exit status, seconds) for each."""
    LOGS.mkdir(parents=True, exist_ok=True)
    results = []
    with tqdm(benches, unit="benchmark", desc="bench all") as bar:
        for bench in bar:
            bar.set_postfix(running=bench.name)
            args = [*bench.quick, "--no-write"] if quick else list(bench.full)
            log = log_path(bench, quick)
            started = time.perf_counter()
            with log.open("w") as out:
                out.write(f"$ python -m bench.{bench.name} {' '.join(args)}\n")
                out.flush()
                code = subprocess.call([sys.executable, "-m", f"bench.{bench.name}", *args],
                                       cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                       env=os.environ.copy())
            results.append((bench, code, time.perf_counter() - started))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("all", help="run the benchmarks (full mode writes BENCHMARKS.md)")
    run.add_argument("--quick", action="store_true",
                     help="tiny sizes, BENCHMARKS.md untouched: checks that everything runs")
    run.add_argument("--only", help="comma-separated benchmark names (see `python -m bench "
                                    "list`)")
    run.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    run.add_argument("--gpu", action="store_true", help="also run the GPU benchmark")
    sub.add_parser("list", help="the benchmarks, what each measures, their full arguments")
    args = p.parse_args(argv)
    if args.command == "list":
        for b in BENCHES:
            print(f"{b.name:14} {b.what}\n{'':14} python -m bench.{b.name} {' '.join(b.full)}")
        return 0
    names = {b.name for b in BENCHES}
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else []
    skip = [n.strip() for n in args.skip.split(",") if n.strip()]
    unknown = sorted(set(only + skip) - names)
    if unknown:
        p.error(f"--only/--skip: unknown benchmark(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(names))}")
    chosen = [b for b in BENCHES if (b.name in only if only else not b.gpu or args.gpu)
              and b.name not in skip]
    results = run_all(chosen, args.quick)
    failed = [b.name for b, code, _ in results if code != 0]
    for bench, code, seconds in results:
        status = "ok" if code == 0 else f"FAILED (exit {code}; see {log_path(bench, args.quick)})"
        print(f"{bench.name:14} {seconds:7.1f} s  {status}")
    if not args.quick:
        refresh()  # each section's writer refreshed it too; this covers hand edits since
    if not args.quick and not failed:
        print("BENCHMARKS.md, bench/out/ and the README's benchmarks block regenerated")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
