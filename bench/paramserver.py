"""Parameter-server benchmarks, each measured side by side in one run:

1. push + pull latency of one shard against a bare gRPC echo of the same bytes;
2. push throughput against the number of shards S and of concurrent replicas K;
3. the paper's scale (``bench.paper_scale``): 12,800 trainings with S=20, K=100, m=8 beside
   K=1 (several seeds: the noise) and K=10 on the synthetic evaluator, children simulated:
   learning curve per training, distance to the known optimum, pushes applied, staleness,
   push/pull latency, CPU and memory per process.

    python -m bench.paramserver            # all three (about 20 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
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

from bench import paper_scale as scale
from bench.plots import OUT
from bench.report import load_during_run, machine, write_section
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.shards import ShardProcesses
from protos.rpc import CHANNEL_OPTIONS
from protos.types import LayoutSpec

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


SHARD_RSS_TARGET_MIB = 120e6 / 2**20  # 120 MB
SHARD_START_TARGET_S = 1.0


def footprint(log_dir: Path, prefix: str, starts: int) -> list[tuple[float, float]]:
    """(seconds from spawn to listening, resident MiB after registering the policy and 20
    pushes and pulls) of ``starts`` fresh shard processes, one after another."""
    out = []
    for i in range(starts):
        cluster = ShardProcesses(log_dir / f"footprint{i}")
        try:
            t0 = time.perf_counter()
            address = cluster.start_shard(0, 1, REDIS, prefix)
            started = time.perf_counter() - t0
            layout = LayoutSpec(layout_id=f"fp-{uuid.uuid4().hex[:6]}", total_size=POLICY_SIZE,
                                num_shards=1, checkpoint_every=0)
            client = ShardedParameterClient([address], layout, auth=cluster.auth)
            client.register(np.zeros(POLICY_SIZE, dtype=np.float32))
            versions = [0]
            for seq in range(1, 21):
                client.push("bench", seq, versions, np.full(POLICY_SIZE, 1e-3, np.float32))
                _, versions = client.pull()
            client.close()
            read = scale._read(cluster.shards[0].proc.pid)
            out.append((started, read[1] if read else 0.0))
        finally:
            cluster.stop()
    return out


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


REDIS = "redis://127.0.0.1:6379/0"


def redis_version() -> str:
    """The version of the Redis server the benchmark used (INFO server)."""
    try:
        return str(redis.Redis.from_url(REDIS).info("server")["redis_version"])
    except (redis.RedisError, KeyError):
        return "(version unknown)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.paramserver", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency-n", type=int, default=1000, help="push+pull round trips (1000)")
    p.add_argument("--shard-starts", type=int, default=5,
                   help="shard processes started one by one for start-up time and RSS (5)")
    p.add_argument("--tp-seconds", type=float, default=4.0, help="per throughput point (4)")
    p.add_argument("--tp-shards", default="1,2,4", help="throughput: shard counts (1,2,4)")
    p.add_argument("--tp-replicas", default="1,4,16", help="throughput: replica counts")
    p.add_argument("--trainings", type=int, default=12800,
                   help="paper scale: trainings per run (12800, the paper's)")
    p.add_argument("--block", type=int, default=800,
                   help="paper scale: trainings per point of the learning curve (800)")
    p.add_argument("--seeds", type=int, default=5,
                   help="paper scale: K=1 seeds, the reference spread (5; >= 2 to judge)")
    p.add_argument("--child-seconds", type=float, default=0.02,
                   help="paper scale: simulated duration of one child (0.02)")
    p.add_argument("--shards", type=int, default=20, help="paper scale: S (20)")
    p.add_argument("--replicas", type=int, default=100, help="paper scale: K (100)")
    p.add_argument("--mid-replicas", type=int, default=10,
                   help="paper scale: K of the middle row, on the same S (10; 0: none)")
    p.add_argument("--hosts", type=int, default=4,
                   help="paper scale: a row with the K replicas in P replica-host processes "
                        "(4; 0 or 1: none)")
    p.add_argument("--no-reject", action="store_true",
                   help="paper scale: skip the row of the rejecting rule at S, K")
    p.add_argument("--no-paper", action="store_true", help="skip the paper scale")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


def paper_scale(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Every run of the paper-scale rows, in order, each on its row's own Redis database."""
    results = []
    rows = scale.layouts(args.shards, args.replicas, args.mid_replicas, args.seeds,
                         reject=not args.no_reject, hosts=args.hosts)
    for i, layout in enumerate(rows):
        for seed in layout.seeds:
            print(f"paper scale: {layout.name}, seed {seed} ...", file=sys.stderr, flush=True)
            results.append(scale.run(layout, seed, tmp / f"row{i}-seed{seed}", args.trainings,
                                     args.block, args.child_seconds,
                                     f"{REDIS.rsplit('/', 1)[0]}/{15 - i}"))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the BENCHMARKS.md section and the learning-curve plot."""
    args = _parser().parse_args(argv)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp) / "logs"
        cluster = ShardProcesses(logs)
        try:
            lat = latency(cluster, prefix, args.latency_n)
        finally:
            cluster.stop()
        shards = footprint(logs, prefix, args.shard_starts)
        shard_counts = [int(s) for s in args.tp_shards.split(",")]
        replica_counts = [int(k) for k in args.tp_replicas.split(",")]
        tp = {(s, k): throughput(logs, prefix, s, k, args.tp_seconds)
              for s in shard_counts for k in replica_counts}
        paper = [] if args.no_paper else paper_scale(args, Path(tmp))
        body = render(lat, tp, paper, args, time.time() - started, redis_version(),
                      Path(tmp) if args.no_write else OUT, shards)
    print(body)
    if not args.no_write:
        if paper:  # every run's numbers, curves included (not committed)
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / "paramserver-scale.json").write_text(json.dumps(paper, indent=1) + "\n")
        write_section("paramserver", body)
    return 0


def command(args: argparse.Namespace) -> str:
    """The flags of this run that set the paper scale."""
    if args.no_paper:
        return "--no-paper"
    flags = (f"--trainings {args.trainings} --block {args.block} --seeds {args.seeds} "
             f"--child-seconds {args.child_seconds} --shards {args.shards} --replicas "
             f"{args.replicas} --mid-replicas {args.mid_replicas} --hosts {args.hosts}")
    return flags + (" --no-reject" if args.no_reject else "")


def render(lat: dict[str, dict[str, float]], tp: dict[tuple[int, int], float],
           paper: list[dict[str, Any]], args: argparse.Namespace, wall: float,
           redis_server: str = "(version unknown)", plot_dir: Path = OUT,
           shards: list[tuple[float, float]] | None = None) -> str:
    """The markdown section."""
    ratio = lat["paramserver"]["p50"] / lat["echo"]["p50"]
    ks = sorted({k for _, k in tp})
    lines = ["## Parameter servers", "",
             f"Command: `python -m bench.paramserver {command(args)}` ({wall / 60:.1f} min on "
             f"{machine()}; {load_during_run()}; shards are real processes on loopback, the "
             "paper-scale replicas threads of the `nas search` process (its embedded search "
             "service) unless the row names replica hosts (`--replica-hosts P`: P `nas serve "
             f"replica` processes); Redis {redis_server} on 127.0.0.1, each paper-scale run on "
             "an emptied database).", "", *footprint_lines(shards or []),
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
        lines += scale.section(paper, args.trainings, args.block, args.child_seconds,
                               plot_dir)
    return "\n".join(lines)


def footprint_lines(shards: list[tuple[float, float]]) -> list[str]:
    """The shard's start-up time and memory, with their verdicts."""
    if not shards:
        return []
    start = max(t for t, _ in shards)
    rss = max(r for _, r in shards)
    return [f"### One shard process ({len(shards)} started one after another)", "",
            "| measure | median | max | target | verdict |", "|---|---|---|---|---|",
            f"| start-up: spawn to listening, s | {np.median([t for t, _ in shards]):.2f} | "
            f"{start:.2f} | <= {SHARD_START_TARGET_S:g} s | "
            f"**{'met' if start <= SHARD_START_TARGET_S else 'not met'}** |",
            f"| RSS after registering the policy and 20 push + pull, MiB | "
            f"{np.median([r for _, r in shards]):.0f} | {rss:.0f} | <= 120 MB "
            f"({SHARD_RSS_TARGET_MIB:.0f} MiB) | "
            f"**{'met' if rss <= SHARD_RSS_TARGET_MIB else 'not met'}** |", "",
            "A shard imports no torch (Adam in numpy, `paramserver/adam.py`; "
            "`tests/test_shard_processes.py` checks that no shard maps libtorch).", ""]


if __name__ == "__main__":
    sys.exit(main())
