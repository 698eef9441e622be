"""Parameter-server benchmarks, each measured side by side in one run:

1. push + pull latency of one shard against a bare gRPC echo of the same bytes;
2. push throughput against the number of shards S and of concurrent replicas K;
3. the paper's layout (S=20, K=100, m=8) on the NB201 table with simulated child durations,
   against K=1: throughput, staleness, push latency, CPU and memory, learning curve.

    python -m bench.paramserver            # all three (about 10 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import redis

from bench.report import machine, write_section
from controller.config import SearchConfig
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.shards import ShardProcesses
from protos.rpc import CHANNEL_OPTIONS
from protos.types import LayoutSpec

STALENESS = SearchConfig.staleness  # the default bound of `nas search`
POLICY_SIZE = 20550  # the 2x35 LSTM policy over the NB201 space


def _echo_server() -> tuple[grpc.Server, str]:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def small(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"\x08\x01"  # a reply the size of PushResponse

    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Small": grpc.unary_unary_rpc_method_handler(small)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99))}


def latency(cluster: ShardProcesses, prefix: str, n: int) -> dict[str, dict[str, float]]:
    """Push + pull of the policy vector on one shard vs an echo of the same bytes."""
    layout = LayoutSpec(layout_id=f"lat-{uuid.uuid4().hex[:6]}", total_size=POLICY_SIZE,
                        num_shards=1, checkpoint_every=0)
    client = ShardedParameterClient([cluster.start_shard(0, 1, REDIS, prefix)], layout,
                                    auth=cluster.auth)
    client.register(np.zeros(POLICY_SIZE, dtype=np.float32))
    server, address = _echo_server()
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    small: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.Echo/Small")
    echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/bench.Echo/Echo")
    grad = np.random.default_rng(0).normal(size=POLICY_SIZE).astype(np.float32) * 1e-3
    payload = grad.tobytes() + b"\x00" * 40  # the same bytes as a PushRequest
    ps_times, echo_times = [], []
    versions = [0]
    for i in range(n + 20):
        t0 = time.perf_counter()
        outcome = client.push("bench", i + 1, versions, grad)
        _, versions = client.pull()
        t1 = time.perf_counter()
        small(payload, timeout=10)
        echo(b"\x00" * 16, timeout=10)  # the pull: a small request ...
        echo(payload, timeout=10)  # ... and the vector back (echoed)
        t2 = time.perf_counter()
        assert outcome.applied[0]
        if i >= 20:  # warm-up
            ps_times.append(t1 - t0)
            echo_times.append(t2 - t1)
    channel.close()
    server.stop(0)
    client.close()
    return {"paramserver": _percentiles(ps_times), "echo": _percentiles(echo_times)}


def throughput(log_dir: Path, prefix: str, shards: int, replicas: int,
               seconds: float) -> float:
    """Pushes (each followed by a pull) per second with ``replicas`` concurrent clients."""
    cluster = ShardProcesses(log_dir)
    try:
        for i in range(shards):
            cluster.start_shard(i, shards, REDIS, prefix)
        return _throughput(cluster, shards, replicas, seconds)
    finally:
        cluster.stop()


def _throughput(cluster: ShardProcesses, shards: int, replicas: int, seconds: float) -> float:
    layout = LayoutSpec(layout_id=f"tp-{uuid.uuid4().hex[:6]}", total_size=POLICY_SIZE,
                        num_shards=shards, staleness=10**6, checkpoint_every=0)
    addresses = cluster.shard_addresses[:shards]
    ShardedParameterClient(addresses, layout, auth=cluster.auth).register(
        np.zeros(POLICY_SIZE, dtype=np.float32))
    count = [0] * replicas
    stop = time.monotonic() + seconds

    def replica(k: int) -> None:
        client = ShardedParameterClient(addresses, layout, auth=cluster.auth)
        grad = np.full(POLICY_SIZE, 1e-3, dtype=np.float32)
        _, versions = client.pull()
        while time.monotonic() < stop:
            client.push(f"r{k}", count[k] + 1, versions, grad)
            _, versions = client.pull()
            count[k] += 1
        client.close()

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(count) / seconds


def _sample(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds, resident MiB) summed over the live processes among ``pids``."""
    cpu, rss = 0.0, 0.0
    tick = 100.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(stat[11]) + int(stat[12])) / tick
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
        except (OSError, IndexError):
            continue
    return cpu, rss


def paper_layout(out: Path, shards: int, replicas: int, children: int,
                 budget: int, seconds: float, seed: int, db: int,
                 staleness: int = SearchConfig.staleness) -> dict[str, Any]:
    """One `nas search` of the given layout on the NB201 table with simulated durations, on
    Redis database ``db``, emptied first: the evaluation cache is shared by every job on a
    Redis, and earlier runs' results would be free cache hits."""
    redis_url = f"{REDIS.rsplit('/', 1)[0]}/{db}"
    redis.Redis.from_url(redis_url).flushdb()
    args = [sys.executable, "-m", "nas", "search", "--space", "nb201", "--evaluator",
            "nb201", "--budget", str(budget), "--seed", str(seed), "--children", str(children),
            "--parallel", str(children), "--simulate-seconds", str(seconds), "--shards",
            str(shards), "--replicas", str(replicas), "--redis", redis_url, "--staleness",
            str(staleness), "--out", str(out), "--quiet",
            # NB201 has 6,466 distinct cells: once the policies concentrate, replicas would
            # spin on free cache hits until each saw 2,000 in a row; every layout gets the same
            # allowance of idle proposals in all, split over its replicas
            "--max-idle-proposals", str(max(MIN_IDLE, IDLE_PROPOSALS // replicas))]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak_rss, cpu = 0.0, dict[int, float]()
    while proc.poll() is None:
        cluster = out / "cluster.json"
        if cluster.exists():
            pids = list(json.loads(cluster.read_text())["processes"].values())
            for pid in pids:
                c, _ = _sample([pid])
                cpu[pid] = max(cpu.get(pid, 0.0), c)
            peak_rss = max(peak_rss, _sample(pids)[1] + _sample([proc.pid])[1])
        time.sleep(0.5)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout.read().decode()[-3000:] if proc.stdout else "failed")
    doc = json.loads((out / "result.json").read_text())
    best, curve, trained = 0.0, [], 0
    for h in doc["history"]:
        trained += 0 if h["cached"] else 1
        best = max(best, h["reward"])
        curve.append((trained, best))
    layout = doc["layout"]
    return {"wall": wall, "trainings": doc["trainings"], "cache_hits": doc["cache_hits"],
            "best": doc["best"], "curve": curve, "cpu_seconds": sum(cpu.values()),
            "peak_rss_mib": peak_rss, "staleness": layout.get("staleness_versions", {}),
            "push_ms": layout.get("push_ms", {}), "pull_ms": layout.get("pull_ms", {}),
            "rejected_stale": sum(r["rejected_stale"] for r in
                                  layout["replica_reports"].values()),
            "pushes": sum(r["pushes"] for r in layout["replica_reports"].values())}


REDIS = "redis://127.0.0.1:6379/0"


def redis_version() -> str:
    """The version of the Redis server the benchmark used (INFO server)."""
    try:
        return str(redis.Redis.from_url(REDIS).info("server")["redis_version"])
    except (redis.RedisError, KeyError):
        return "(version unknown)"
IDLE_PROPOSALS = 2000
MIN_IDLE = 16


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the BENCHMARKS.md section and the learning-curve plot."""
    p = argparse.ArgumentParser(prog="python -m bench.paramserver", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-n", type=int, default=1000, help="push+pull round trips (1000)")
    p.add_argument("--tp-seconds", type=float, default=4.0, help="per throughput point (4)")
    p.add_argument("--budget", type=int, default=800,
                   help="paper layout: trainings (800: one child per concurrent slot of S=20, "
                        "K=100, m=8)")
    p.add_argument("--child-seconds", type=float, default=0.5,
                   help="paper layout: simulated duration of one child (0.5)")
    p.add_argument("--tp-shards", default="1,2,4", help="throughput: shard counts (1,2,4)")
    p.add_argument("--tp-replicas", default="1,4,16", help="throughput: replica counts")
    p.add_argument("--no-paper", action="store_true", help="skip the paper layout")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs"
        cluster = ShardProcesses(logs)
        try:
            lat = latency(cluster, prefix, args.latency_n)
        finally:
            cluster.stop()
        shard_counts = [int(s) for s in args.tp_shards.split(",")]
        replica_counts = [int(k) for k in args.tp_replicas.split(",")]
        tp = {(s, k): throughput(logs, prefix, s, k, args.tp_seconds)
              for s in shard_counts for k in replica_counts}
        paper = {} if args.no_paper else {
            "S=20, K=100, m=8": paper_layout(Path(tmp) / "paper", 20, 100, 8, args.budget,
                                            args.child_seconds, 0, db=14),
            # the paper bounded nothing: a bound at K lets every replica's push through
            "S=20, K=100, m=8, tau=100": paper_layout(Path(tmp) / "paper-tau", 20, 100, 8,
                                                     args.budget, args.child_seconds, 0, db=13,
                                                     staleness=100),
            "S=1, K=1, m=8": paper_layout(Path(tmp) / "k1", 1, 1, 8, args.budget,
                                         args.child_seconds, 0, db=15)}
    body = render(lat, tp, paper, args, time.time() - started, redis_version())
    print(body)
    if not args.no_write:
        write_section("paramserver", body)
    return 0


def render(lat: dict[str, dict[str, float]], tp: dict[tuple[int, int], float],
           paper: dict[str, dict[str, Any]], args: argparse.Namespace, wall: float,
           redis_server: str = "(version unknown)") -> str:
    """The markdown section."""
    ratio = lat["paramserver"]["p50"] / lat["echo"]["p50"]
    ks = sorted({k for _, k in tp})
    lines = ["## Parameter servers", "",
             f"Command: `python -m bench.paramserver --budget {args.budget} --child-seconds "
             f"{args.child_seconds}` ({wall / 60:.1f} min on {machine()}; shards are real "
             "processes on loopback, the paper layout's replicas threads of the `nas search` "
             f"process (its embedded search service); Redis {redis_server} on 127.0.0.1, each "
             "paper-layout run on its own emptied database).", "",
             f"### Push + pull latency, one shard, the {POLICY_SIZE:,}-value policy "
             f"({4 * POLICY_SIZE / 1024:.0f} KiB)", "",
             "| path | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|"]
    for name, label in (("paramserver", "push + pull (Adam, versions, dedup)"),
                        ("echo", "bare gRPC echo of the same bytes")):
        q = lat[name]
        lines.append(f"| {label} | {q['p50']:.2f} | {q['p90']:.2f} | {q['p99']:.2f} |")
    lines += ["", f"p50 ratio {ratio:.2f}x (target <= 1.5x: "
              f"**{'met' if ratio <= 1.5 else 'not met'}**).", "",
              "### Push throughput (push + pull per second, all replicas)", "",
              "| shards \\ replicas | " + " | ".join(f"K={k}" for k in ks) + " |",
              "|---" * (len(ks) + 1) + "|"]
    for s in sorted({s for s, _ in tp}):
        lines.append(f"| S={s} | " + " | ".join(f"{tp[(s, k)]:.0f}" for k in ks) + " |")
    if paper:
        lines += paper_table(paper, args)
    return "\n".join(lines)


def reading(paper: dict[str, dict[str, Any]]) -> str:
    """How to read the paper-layout rows: the pushes each applied and rejected, as measured."""
    counts = []
    for name, r in paper.items():
        tried = r["pushes"] + r["rejected_stale"]
        share = f" ({r['rejected_stale'] / tried:.0%} rejected)" if tried else ""
        counts.append(f"{name} {r['pushes']} / {r['rejected_stale']}{share}")
    return (f"Reading: a replica's push that is more than tau versions behind is rejected as "
            f"stale (the replica re-pulls; its gradient is dropped); tau = {STALENESS} (the "
            f"default) unless the layout names it. Pushes applied / rejected as stale: "
            + "; ".join(counts) + ". The paper bounded nothing. The layouts' shard processes "
            f"and replicas share this machine's {os.cpu_count()} cores; the replicas, threads "
            "of one process (the search runs through its embedded search service), also share "
            "one interpreter.")


def paper_table(paper: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The paper-layout rows and the learning-curve plot."""
    from bench.plots import plot_curves

    lines = ["", f"### The paper's layout on the NB201 table ({args.budget} trainings, each "
             f"child simulated as {args.child_seconds} s; m children of a replica run at once)",
             "", f"A search also stops when its replicas have proposed only cached "
             f"architectures {IDLE_PROPOSALS:,} times in a row in all ({IDLE_PROPOSALS:,} / K "
             f"each, at least {MIN_IDLE}): the policies have converged on what they trained.",
             "", "| layout | wall s | trainings/s | best reward | test acc | pushes | "
             "rejected stale | staleness p50/p90/max | push ms p50/p99 | CPU s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in paper.items():
        st, push = r["staleness"], r["push_ms"]
        lines.append(
            f"| {name} | {r['wall']:.0f} | {r['trainings'] / r['wall']:.1f} | "
            f"{r['best']['reward']:.4f} | {100 * r['best']['test_accuracy']:.2f} | "
            f"{r['pushes']} | {r['rejected_stale']} | "
            f"{st.get('p50', 0):.0f}/{st.get('p90', 0):.0f}/{st.get('max', 0):.0f} | "
            f"{push.get('p50', 0):.1f}/{push.get('p99', 0):.1f} | {r['cpu_seconds']:.0f} | "
            f"{r['peak_rss_mib']:.0f} |")
    lines += ["", reading(paper)]
    png = plot_curves({k: v["curve"] for k, v in paper.items()}, "paramserver-curve.png",
                      "Best reward found vs trainings (NB201 CIFAR-10)")
    lines += ["", f"![learning curve](bench/out/{png.name})"]
    return lines


if __name__ == "__main__":
    sys.exit(main())
