"""Scale in trials and time: one long job and a store of many jobs through ``nas serve search``.

A real ``nas serve search`` process over a private Redis, with S=4 parameter-server shards,
runs one REINFORCE job of K=4 replicas with Zoph & Le's controller (m=8) on the synthetic
evaluator (``--evaluator synthetic``: a seeded reward landscape, microseconds a child) over the
nasnet space, then many small finished jobs (random search, 2 trainings each, each on a
landscape of its own) are submitted to the same service. At each checkpoint
(trainings of the long job; then jobs in the store) the script measures, from a client over
gRPC and HTTP like any user's:

- the time per proposal of the long job around the checkpoint (wall clock, 4 replicas);
- p50/p99 of GetSearch, one page of ListSearches (100 jobs), one page of ListTrials (100
  trials from the middle of the long job's history), WatchSearch from the start (time to the
  first event) and one scrape of the service's /metrics;
- the service's RSS and Redis's ``used_memory``.

Verdicts are computed against the targets: every p99 at the last training checkpoint within
1.5x its value at the first; ListSearches p99 <= 50 ms with the most jobs; service RSS growth
<= 100 MB from the first to the last training checkpoint; and ``make search-nb201`` (100
trainings of the NAS-Bench-201 table, the default controller, a fresh process) <= 10 s.

    python -m bench.soak                 # 20,000 trainings, 10,000 jobs (about half an hour)
    python -m bench.soak --quick         # 1,000 trainings, 300 jobs, BENCHMARKS.md untouched
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import redis
from tqdm import tqdm

from bench.report import ROOT, background_load, machine, write_section
from controller.distributed.processes import redis_server_binary
from controller.presets import CONTROLLER_PRESETS
from controller.service.client import SearchClient
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

REPLICAS = 4  # the long job's controller replicas
PAGE = 100  # jobs or trials per ListSearches / ListTrials page
PROBES = ("GetSearch", "ListSearches", "ListTrials", "WatchSearch", "scrape")
ENDED = {sp.JOB_STATE_SUCCEEDED, sp.JOB_STATE_FAILED, sp.JOB_STATE_CANCELLED}


@dataclass
class Point:
    """What was measured at one checkpoint."""

    label: str
    at: int  # trainings of the long job, or jobs in the store
    ms_per_proposal: float | None = None
    latencies: dict[str, list[float]] = field(default_factory=dict)  # probe -> ms
    rss_mb: float = 0.0
    redis_mb: float = 0.0

    def p(self, probe: str, q: float) -> float:
        """The ``q``-th percentile of a probe, in ms."""
        return float(np.percentile(self.latencies[probe], q))


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_redis(tmp: Path) -> Iterator[tuple[str, redis.Redis]]:
    """A redis-server of the benchmark's own (nothing saved), its URL and a client."""
    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def service(tmp: Path, redis_url: str, shards: int) -> Iterator[tuple[subprocess.Popen[bytes],
                                                                     str, str]]:
    """``nas serve search`` in its own process: it, its gRPC address and its metrics URL."""
    log = tmp / "service.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nas", "serve", "search", "--port", "0",
             "--redis", redis_url, "--shards", str(shards), "--metrics-port", "0",
             "--work-dir", str(tmp / "work"), "--max-running", "2"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        address = metrics = ""
        while not (address and metrics):
            text = log.read_text(errors="replace")
            found = re.search(r"listening on (\S+)", text)
            scrape = re.search(r"^metrics (http://\S+/metrics)$", text, re.M)
            address = found.group(1) if found else ""
            metrics = scrape.group(1) if scrape else ""
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start:\n{text[-3000:]}")
            time.sleep(0.1)
        yield proc, address, metrics
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    """A process's resident memory, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    """``n`` calls of ``fn``, each in ms."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
    return out


def first_event(client: SearchClient, job_id: str) -> None:
    """Open a watch from the start and read its first event."""
    stream = client.watch(job_id)
    next(stream)
    stream.close()


def probe(client: SearchClient, metrics_url: str, job_id: str, trials_token: str,
          watch_job: str, n: int) -> dict[str, list[float]]:
    """Every probe ``n`` times."""
    def trials_page() -> None:
        client._call("ListTrials", sp.ListTrialsRequest(job_id=job_id, page_size=PAGE,
                                                        page_token=trials_token))

    def scrape() -> None:
        with urllib.request.urlopen(metrics_url, timeout=30) as reply:
            reply.read()

    return {"GetSearch": timed(lambda: client.get(job_id), n),
            "ListSearches": timed(lambda: client.list_page(page_size=PAGE), n),
            "ListTrials": timed(trials_page, n),
            "WatchSearch": timed(lambda: first_event(client, watch_job), n),
            "scrape": timed(scrape, n)}


def long_spec(trainings: int) -> sp.SearchSpec:
    """The long job, Zoph & Le's: REINFORCE with their controller (the zoph-le preset: m=8
    children per update, no ranking), K=4 replicas, synthetic children over nasnet."""
    return sp.SearchSpec(
        name="soak", space=pb.SearchSpaceSpec(name="nasnet"), strategy="reinforce",
        controller=sp.ControllerSpec(preset="zoph-le"),
        evaluation=sp.EvaluationSpec(evaluator="synthetic", landscape_seed=0),
        budget=trainings, seed=0, execution=sp.ExecutionSpec(replicas=REPLICAS))


def small_spec(n: int) -> sp.SearchSpec:
    """One of the many small jobs: random search, 2 trainings on a synthetic landscape of
    nb201's of its own (one shared landscape would be trained out after ~3,200 jobs: nb201
    has 6,466 distinct cells and the cache is shared, so every later job would propose
    nothing but cache hits)."""
    return sp.SearchSpec(name=f"small-{n}", space=pb.SearchSpaceSpec(name="nb201"),
                         strategy="random", budget=2, seed=n,
                         evaluation=sp.EvaluationSpec(evaluator="synthetic", landscape_seed=n))


def soak_trainings(args: argparse.Namespace, client: SearchClient, proc: subprocess.Popen[bytes],
                   metrics_url: str, db: redis.Redis) -> tuple[str, list[Point], float]:
    """Run the long job, measuring at each training checkpoint; its id, the points and Redis's
    memory before it started (MB)."""
    before = float(db.info("memory")["used_memory"]) / 2**20
    job_id = client.submit(long_spec(args.trainings))
    points: list[Point] = []
    samples: list[tuple[float, int]] = []  # (time, proposals finished)
    todo = list(args.checkpoints)
    with tqdm(total=args.trainings, unit="training", desc="long job") as bar:
        while True:
            job = client.get(job_id)
            samples.append((time.perf_counter(), job.trainings + job.cache_hits))
            bar.update(job.trainings - bar.n)
            if todo and job.trainings >= todo[0]:
                at = todo.pop(0)
                window = [s for s in samples if s[0] >= samples[-1][0] - args.window]
                (t0, p0), (t1, p1) = window[0], window[-1]
                point = Point(f"{at:,} trainings", at,
                              1000 * (t1 - t0) / (p1 - p0) if p1 > p0 else None)
                middle = str(max(job.trainings // 2, 0))
                point.latencies = probe(client, metrics_url, job_id, middle, job_id, args.n)
                point.rss_mb = rss_mb(proc.pid)
                point.redis_mb = float(db.info("memory")["used_memory"]) / 2**20
                points.append(point)
                samples = samples[-1:]
            if job.state in ENDED:
                if job.state != sp.JOB_STATE_SUCCEEDED:
                    raise RuntimeError(f"the long job ended {job.state}: {job.reason}")
                break
            time.sleep(0.25)
    return job_id, points, before


def soak_jobs(args: argparse.Namespace, client: SearchClient, proc: subprocess.Popen[bytes],
              metrics_url: str, db: redis.Redis, long_job: str) -> list[Point]:
    """Fill the store with small finished jobs, measuring at each job checkpoint."""
    points: list[Point] = []
    stored = 1  # the long job
    todo = list(args.job_checkpoints)
    with tqdm(total=todo[-1], unit="job", desc="small jobs") as bar:
        while todo:
            wave = [client.submit(small_spec(stored + i))
                    for i in range(min(args.wave, todo[0] - stored))]
            for job_id in wave:
                client.wait(job_id, timeout=600, poll=0.05)
            stored += len(wave)
            bar.update(len(wave))
            if stored >= todo[0]:
                at = todo.pop(0)
                point = Point(f"{at:,} jobs", at)
                point.latencies = probe(client, metrics_url, wave[-1], "0", wave[-1], args.n)
                point.latencies["ListTrials"] = probe_trials(client, long_job, args.n)
                point.rss_mb = rss_mb(proc.pid)
                point.redis_mb = float(db.info("memory")["used_memory"]) / 2**20
                points.append(point)
    return points


def probe_trials(client: SearchClient, job_id: str, n: int) -> list[float]:
    """A page of the long job's trials from the middle of its history, ``n`` times (ms)."""
    middle = str(client.get(job_id).trainings // 2)
    return timed(lambda: client._call("ListTrials", sp.ListTrialsRequest(
        job_id=job_id, page_size=PAGE, page_token=middle)), n)


def quickstart_seconds(tmp: Path) -> float:
    """Wall time of ``make search-nb201``'s command in a fresh process (start-up included)."""
    command = [sys.executable, "-m", "nas", "search", "--space", "nb201", "--strategy",
               "reinforce", "--evaluator", "nb201", "--dataset", "cifar10", "--budget", "100",
               "--seed", "0", "--out", str(tmp / "nb201"), "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def verdicts(train: list[Point], jobs: list[Point], quickstart: float
             ) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each target of the soak."""
    first, last = train[0], train[-1]
    out = [("`make search-nb201` (100 trainings, default controller, a fresh process) <= 10 s",
            f"{quickstart:.1f} s", quickstart <= 10.0)]
    for name in PROBES:
        ratio = last.p(name, 99) / max(first.p(name, 99), 1e-9)
        out.append((f"{name} p99 at {last.label} within 1.5x of {first.label}",
                    f"{last.p(name, 99):.1f} ms / {first.p(name, 99):.1f} ms = {ratio:.2f}x",
                    ratio <= 1.5))
    if jobs:
        most = jobs[-1]
        out.append((f"ListSearches page p99 <= 50 ms with {most.label}",
                    f"{most.p('ListSearches', 99):.1f} ms", most.p("ListSearches", 99) <= 50))
    growth = last.rss_mb - first.rss_mb
    out.append((f"service RSS growth <= 100 MB from {first.label} to {last.label}",
                f"{first.rss_mb:.0f} -> {last.rss_mb:.0f} MB (+{growth:.0f})", growth <= 100))
    return out


def table(points: list[Point]) -> list[str]:
    """The measured rows."""
    head = ("| checkpoint | ms / proposal | " + " | ".join(f"{p} p50 / p99 ms" for p in PROBES)
            + " | service RSS MB | Redis used_memory MB |")
    rows = [head, "|" + "---|" * (4 + len(PROBES))]
    for pt in points:
        rate = f"{pt.ms_per_proposal:.2f}" if pt.ms_per_proposal is not None else "-"
        cells = " | ".join(f"{pt.p(p, 50):.1f} / {pt.p(p, 99):.1f}" for p in PROBES)
        rows.append(f"| {pt.label} | {rate} | {cells} | {pt.rss_mb:.0f} | {pt.redis_mb:.1f} |")
    return rows


def report(args: argparse.Namespace, train: list[Point], jobs: list[Point], redis_before: float,
           seconds: float, command: str, quickstart: float) -> str:
    """The BENCHMARKS.md section."""
    last = train[-1]
    per_trial = (last.redis_mb - redis_before) * 2**20 / max(last.at, 1)
    lines = [
        f"## Soak: a {args.trainings:,}-training job and {args.job_checkpoints[-1]:,} stored "
        "jobs",
        "",
        f"`{command}` on {machine()}; {background_load()}; {seconds / 60:.1f} min in all.",
        "",
        f"One `nas serve search` process over a private Redis, S={args.shards} shards: a "
        f"REINFORCE job (K={REPLICAS} replicas, Zoph & Le's controller: the zoph-le preset, "
        f"m={CONTROLLER_PRESETS['zoph-le'].children}) of "
        f"{args.trainings:,} trainings on the synthetic evaluator over nasnet, then small "
        f"finished jobs (random search, 2 trainings each, each on a landscape of its own) up "
        f"to {args.job_checkpoints[-1]:,} jobs in the store. At each checkpoint each probe "
        f"ran {args.n} times from a gRPC client (ListSearches: one page "
        f"of {PAGE} jobs; ListTrials: one page of {PAGE} trials from the middle of the long job; "
        f"WatchSearch: a watch from the start until its first event; scrape: GET /metrics of "
        f"the service). ms / proposal: wall clock per finished proposal of the long job over "
        f"the {args.window:g} s before the checkpoint ({REPLICAS} replicas sharing the "
        "machine).",
        "",
        *table(train + jobs),
        "",
        f"Redis memory per trial of the long job: {per_trial:,.0f} bytes (used_memory growth "
        f"over its {last.at:,} trainings, summaries, trial records, indexes and the compacted "
        f"journal's kept tail included).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(f"| {t} | {m} | {'met' if ok else 'NOT met'} |" for t, m, ok in
          verdicts(train, jobs, quickstart)),
    ]
    return "\n".join(lines)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1,000 trainings and 300 jobs (implies --no-write)")
    p.add_argument("--trainings", type=int, help="trainings of the long job (20000)")
    p.add_argument("--jobs", type=int, help="jobs in the store at the end (10000)")
    p.add_argument("--shards", type=int, default=4, help="parameter-server shards (4)")
    p.add_argument("--n", type=int, help="calls of each probe per checkpoint (50)")
    p.add_argument("--wave", type=int, default=50, help="small jobs submitted at once (50)")
    p.add_argument("--window", type=float, default=10.0,
                   help="seconds of the long job before a checkpoint its rate is taken over")
    p.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    args.trainings = args.trainings or (1000 if args.quick else 20_000)
    args.jobs = args.jobs or (300 if args.quick else 10_000)
    args.n = args.n or (10 if args.quick else 50)
    args.checkpoints = sorted({min(c, args.trainings) for c in (
        (100, 500, 1000) if args.quick else (1000, 5000, 10_000, 20_000))})
    args.job_checkpoints = sorted({min(c, args.jobs) for c in (
        (30, 100, 300) if args.quick else (100, 1000, 10_000))})
    command = "python -m bench.soak" + (" --quick" if args.quick else "")
    signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the service and Redis it started
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nas-soak-") as tmp_name:
        tmp = Path(tmp_name)
        quickstart = quickstart_seconds(tmp)  # first, on the quiet machine
        with private_redis(tmp) as (url, db), \
                service(tmp, url, args.shards) as (proc, address, metrics_url), \
                SearchClient(address, timeout=120) as client:
            long_job, train, redis_before = soak_trainings(args, client, proc, metrics_url, db)
            jobs = soak_jobs(args, client, proc, metrics_url, db, long_job)
    text = report(args, train, jobs, redis_before, time.perf_counter() - started, command,
                  quickstart)
    print(text)
    if not (args.quick or args.no_write):
        write_section("soak", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
