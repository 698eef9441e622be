"""Chaos: faults during a search lose nothing.

The cluster runs as real processes on 127.0.0.1: a ``redis-server`` of our own (AOF on,
``appendfsync always``) holding the job store and the shards' checkpoints, S parameter-server
shards (``nas serve paramserver``), the search service (``nas serve search --paramservers``) and,
for the worker fault, its private local Ray. A job is created in the Redis job store (its spec
sets ``simulate_seconds``, which ``SubmitSearch`` does not expose) and the service runs it as it
runs every PENDING job it finds at start. The job: REINFORCE on NB201 with the table evaluator,
each lookup sleeping ``--simulate-seconds`` like a training, K controller replicas.

One clean run, then one faulted run per fault kind with the same seed; the faults are drawn with
``--seed`` (``--kills`` per kind, at times in ``--window`` of the clean run's duration):

- ``shard``: SIGKILL a parameter-server shard, restart it on its port (it restores its Redis
  checkpoint);
- ``service``: SIGKILL the search service, restart it on the same store. The K controller
  replicas are threads of the service: this is also what killing a replica means here (one
  replica cannot die alone; they all die and are rebuilt, the policy kept on the shards);
- ``redis``: SIGKILL redis-server, restart it from its AOF on the same port;
- ``worker``: SIGKILL the Ray worker process training a child. Table lookups never reach Ray
  (only ``evaluator: train`` children do), so this kind runs its own clean and faulted pair with
  children trained for real on a slice of Fashion-MNIST by ``--workers`` Ray workers.

Per run, from the job's journal in Redis: the job's end state, results lost (a trial the job
accepted that never got a result and was not trained again after a resume, or ended failed),
trainings against the budget, architectures trained twice, trials retried (re-queued after a
service restart, extra worker attempts), the run time, and the best architecture.

    python -m bench.chaos            # full: ~10 min on 2 cores, writes BENCHMARKS.md
    python -m bench.chaos --quick --no-write --faults service,shard --together
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.report import background_load, machine, write_section
from bench.soak import free_port
from controller.config import SearchConfig
from controller.jobs.redis_store import RedisJobStore

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("worker", "shard", "service", "redis")
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
START_TIMEOUT_S = 120.0
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Proc:
    """One started process, its log, the port it listens on (kept across restarts)."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    port: int = 0

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL (its own process group: what it started dies with it) and reap."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.popen is None or self.popen.poll() is not None:
            self.kill()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(20)
        self.kill()


def launch(proc: Proc, env: dict[str, str]) -> int:
    """Start ``proc`` in its own session, appending to its log; the log's size before."""
    offset = proc.log.stat().st_size if proc.log.exists() else 0
    with proc.log.open("ab") as out:
        proc.popen = subprocess.Popen(proc.argv, cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
    return offset


def start(proc: Proc, env: dict[str, str], ready: str, offset: int | None = None
          ) -> re.Match[str]:
    """Start ``proc`` (unless ``offset`` says it was launched) and wait for the ``ready`` line
    in its log."""
    if offset is None:
        offset = launch(proc, env)
    assert proc.popen is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = proc.log.read_bytes()[offset:].decode(errors="replace")
        found = re.search(ready, text)
        if found:
            return found
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{proc.name} did not start:\n{proc.log.read_text()[-3000:]}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Cluster:
    """redis-server (AOF), S shards and the search service, each restartable on its port."""

    def __init__(self, run_dir: Path, shards: int, workers: int, heartbeat_timeout: float
                 ) -> None:
        self.run_dir = run_dir
        self.workers = workers
        self.heartbeat_timeout = heartbeat_timeout
        (run_dir / "logs").mkdir(parents=True)
        (run_dir / "redis").mkdir()
        # the shards and the service share one cluster token, in the environment
        self.env = {**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1",
                    "NAS_CLUSTER_TOKEN": secrets.token_urlsafe(32)}
        home = Path(self.env.get("HOME", ""))
        if not (home / "ray_bootstrap_config.yaml").is_file():  # never a real Ray cluster
            home = run_dir / "home"
            home.mkdir()
            (home / "ray_bootstrap_config.yaml").write_text("{}\n")
            self.env["HOME"] = str(home)
        self.prefix = "chaos"
        self.redis = Proc("redis", [], run_dir / "logs" / "redis.log", port=free_port())
        self.redis.argv = [shutil.which("redis-server") or "redis-server", "--port",
                           str(self.redis.port), "--bind", "127.0.0.1", "--appendonly", "yes",
                           "--appendfsync", "always", "--save", "", "--dir",
                           str(run_dir / "redis")]
        self.url = f"redis://127.0.0.1:{self.redis.port}/0"
        nas = [sys.executable, "-m", "nas", "serve"]
        self.shards = [Proc(f"shard{i}", [*nas, "paramserver", "--shard", str(i),
                                          "--num-shards", str(shards), "--redis", self.url,
                                          "--redis-prefix", self.prefix, "--port"],
                            run_dir / "logs" / f"shard{i}.log") for i in range(shards)]
        self.service = Proc("service", [], run_dir / "logs" / "service.log")
        self.restarts: dict[str, int] = {}

    def start_redis(self) -> None:
        start(self.redis, self.env, r"[Rr]eady to accept connections")

    def start_shards(self, indices: list[int]) -> None:
        """Start these shards at once (each on its port, 0 the first time), wait for each."""
        launched = [(i, Proc(self.shards[i].name, [*self.shards[i].argv,
                                                   str(self.shards[i].port)],
                             self.shards[i].log)) for i in indices]
        offsets = [launch(proc, self.env) for _, proc in launched]
        for (i, proc), offset in zip(launched, offsets, strict=True):
            found = start(proc, self.env, r"listening on \S+:(\d+)", offset)
            self.shards[i].port, self.shards[i].popen = int(found.group(1)), proc.popen
            self.restarts[proc.name] = self.restarts.get(proc.name, -1) + 1

    def start_service(self) -> None:
        s = self.service
        s.argv = [sys.executable, "-m", "nas", "serve", "search", "--port", str(s.port),
                  "--redis", self.url, "--redis-prefix", self.prefix, "--work-dir",
                  str(self.run_dir / "work"), "--paramservers",
                  ",".join(f"127.0.0.1:{p.port}" for p in self.shards)]
        ready = r"search service listening on \S+:(\d+)"
        if self.workers:
            s.argv += ["--workers", str(self.workers), "--heartbeat-timeout",
                       str(self.heartbeat_timeout)]
            ready = r"search service listening on \S+:(\d+)(?s:.*)workers report to"
        s.port = int(start(s, self.env, ready).group(1))
        self.restarts["service"] = self.restarts.get("service", -1) + 1

    def up(self) -> None:
        self.start_redis()
        self.restarts["redis"] = 0
        self.start_shards(list(range(len(self.shards))))

    def down(self) -> None:
        for proc in [self.service, *self.shards, self.redis]:
            proc.stop()


@dataclass
class Fault:
    kind: str
    at: float  # seconds after the job started
    done_at: float | None = None
    detail: str = ""


@dataclass
class RunResult:
    name: str
    state: str = ""
    reason: str = ""
    seconds: float = 0.0  # from the job's first child to its end
    trainings: int = 0
    budget: int = 0
    accepted: int = 0
    lost: list[str] = field(default_factory=list)
    trained_twice: int = 0
    requeued: int = 0
    extra_attempts: int = 0
    best_reward: float = 0.0
    best_arch: str = ""
    faults: list[Fault] = field(default_factory=list)
    wedged: bool = False

    @property
    def retried(self) -> int:
        return self.requeued + self.extra_attempts


# how long the job store waits for Redis to come back (its default)
REDIS_RETRY_S = float(inspect.signature(RedisJobStore).parameters["retry_for"].default)


def table_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {"space": "nb201", "strategy": "reinforce", "evaluator": "nb201",
            "dataset": "cifar10", "budget": args.budget, "seed": args.seed,
            "simulate_seconds": args.simulate_seconds, "replicas": args.replicas,
            "children": args.children}


def train_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {"space": "nb201", "strategy": "reinforce", "evaluator": "train",
            "dataset": "fashion-mnist", "train_subset": 256, "val_subset": 128, "cells": 1,
            "filters": 4, "epochs": 1, "batch_size": 32, "device": "cpu",
            "budget": args.train_budget, "seed": args.seed, "children": 2}


def journal_report(store: RedisJobStore, job_id: str, result: RunResult) -> None:
    """Fill ``result`` from the job's raw journal (the folded view drops resumed trials)."""
    view = store.get(job_id)
    entries = store.journal(job_id)
    started: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["op"] == "trial":
            started.setdefault(e["trial"]["trial_id"], str(e["trial"]["arch"]))
        elif e["op"] == "result":
            results.setdefault(e["trial_id"], e["result"])
    order = list(started)
    succeeded_after: dict[str, set[int]] = {}
    for n, trial_id in enumerate(order):
        if results.get(trial_id, {}).get("status") == "succeeded":
            succeeded_after.setdefault(started[trial_id], set()).add(n)
    for n, trial_id in enumerate(order):
        res = results.get(trial_id)
        if res is None:  # accepted, no result: lost unless its architecture trained later
            if not any(m > n for m in succeeded_after.get(started[trial_id], ())):
                result.lost.append(trial_id)
        elif res.get("status") != "succeeded":
            result.lost.append(trial_id)
    trained = [r.get("cache_key") for r in results.values()
               if r.get("status") == "succeeded" and not r.get("cached")]
    result.state, result.reason = view.state, view.reason
    result.accepted = len(started)
    result.trainings = len(trained)
    result.trained_twice = len(trained) - len(set(trained))
    result.budget = int(view.spec["budget"])
    result.requeued = sum(1 for t in started if re.search(r"-q\d+$", t))
    result.extra_attempts = int(sum(max(0.0, float(r.get("metrics", {}).get("attempts", 1)) - 1)
                                    for r in results.values()))
    best = max((r for r in results.values() if r.get("status") == "succeeded"),
               key=lambda r: float(r.get("reward", 0.0)), default=None)
    if best is not None:
        result.best_reward, result.best_arch = float(best["reward"]), str(best["arch"])


def ray_worker_busy(service: Proc) -> int | None:
    """A Ray worker process (below the service) running a child's task, if any: its title is
    the task's name (``ray::trial ID attempt N``, worker.scheduler). Ray's own agents
    (``ray::DashboardAgent``...) are not workers: killing one takes the whole Ray node down."""
    if service.popen is None:
        return None
    for pid in descendants(service.popen.pid):
        if cmdline(pid).startswith("ray::trial "):
            return pid
    return None


def inject(cluster: Cluster, fault: Fault, rng: random.Random, down_s: float) -> None:
    """Do one fault and recover from it (what a supervisor would do)."""
    if fault.kind == "shard":
        i = rng.randrange(len(cluster.shards))
        cluster.shards[i].kill()
        time.sleep(down_s)
        cluster.start_shards([i])
        fault.detail = f"shard{i} SIGKILLed, restarted on port {cluster.shards[i].port}"
    elif fault.kind == "service":
        cluster.service.kill()
        time.sleep(down_s)
        cluster.start_service()
        fault.detail = f"service SIGKILLed, restarted on port {cluster.service.port}"
    elif fault.kind == "redis":
        cluster.redis.kill()
        time.sleep(down_s)
        cluster.start_redis()
        cluster.restarts["redis"] += 1
        fault.detail = "redis-server SIGKILLed, restarted from its AOF"
    elif fault.kind == "worker":
        deadline = time.monotonic() + 30.0
        pid = ray_worker_busy(cluster.service)
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.1)
            pid = ray_worker_busy(cluster.service)
        if pid is None:
            fault.detail = "no busy Ray worker process found in 30 s: not injected"
            return
        name = cmdline(pid).strip()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        fault.detail = f"Ray worker {pid} ({name}) SIGKILLed"


def job_state(store: RedisJobStore, job_id: str) -> str:
    try:
        return store.get(job_id).state
    except redis.RedisError:
        return "UNKNOWN"  # Redis down (the redis fault): ask again


def run(name: str, spec: dict[str, Any], args: argparse.Namespace, workers: int,
        faults: list[Fault], rng: random.Random, base: Path) -> RunResult:
    """One search on a fresh cluster, with ``faults`` injected; its report."""
    say(f"{name}: starting the cluster")
    cluster = Cluster(base / name, args.shards, workers, args.heartbeat_timeout)
    result = RunResult(name, faults=faults)
    try:
        cluster.up()
        client = redis.Redis(host="127.0.0.1", port=cluster.redis.port, socket_timeout=10)
        store = RedisJobStore(client, cluster.prefix)
        job_id = f"chaos-{name}"
        store.create(job_id, "chaos", "default", spec)
        cluster.start_service()
        deadline = time.monotonic() + args.run_timeout
        while not store.get(job_id).started and time.monotonic() < deadline:
            time.sleep(0.05)  # the clock starts at the first child: the service is up
        began = time.monotonic()
        say(f"{name}: job {job_id} running (budget {spec['budget']})")
        pending = sorted(faults, key=lambda f: f.at)
        deadline = began + args.run_timeout
        last_note = began
        while time.monotonic() < deadline:
            state = job_state(store, job_id)
            if state in ENDED:
                break
            now = time.monotonic() - began
            if pending and now >= pending[0].at:
                fault = pending.pop(0)
                say(f"{name}: t={now:.1f}s fault {fault.kind}")
                inject(cluster, fault, rng, args.down_seconds)
                fault.done_at = time.monotonic() - began
                say(f"{name}:   {fault.detail} (recovered at t={fault.done_at:.1f}s)")
            if time.monotonic() - last_note > 10:
                last_note = time.monotonic()
                with contextlib.suppress(redis.RedisError):
                    done = store.get(job_id).trainings
                    say(f"{name}: t={now:.0f}s {done}/{spec['budget']} trainings")
            time.sleep(0.05)
        else:
            result.wedged = True
        result.seconds = time.monotonic() - began
        for fault in pending:
            fault.detail = "not injected: the job had ended"
        # a fresh store: this process's cached view may predate a Redis restart
        journal_report(RedisJobStore(client, cluster.prefix), job_id, result)
        client.close()
    finally:
        cluster.down()
    say(f"{name}: {result.state} in {result.seconds:.1f}s, {result.trainings}/{result.budget} "
        f"trainings, lost {len(result.lost)}, retried {result.retried}, best "
        f"{result.best_reward:.4f}")
    return result


def draw_faults(kinds: list[str], kills: int, window: tuple[float, float], span: float,
                rng: random.Random) -> list[Fault]:
    lo, hi = window
    return [Fault(kind, round(rng.uniform(lo, hi) * span, 2)) for kind in kinds
            for _ in range(kills)]


LABELS = {"shard": "shard (SIGKILL, restart)",
          "service": "search service = its K controller replicas (SIGKILL, restart)",
          "redis": "Redis (SIGKILL, restart from AOF)",
          "worker": "Ray worker process (SIGKILL)"}


def compare_best(r: RunResult, cleans: list[RunResult]) -> str:
    """The faulted run's best against the clean runs' bests (they vary with K > 1 replicas)."""
    rewards = sorted(c.best_reward for c in cleans)
    spread = f"{rewards[0]:.4f}" if len(set(rewards)) == 1 else \
        f"{rewards[0]:.4f}-{rewards[-1]:.4f}"
    if r.best_arch in {c.best_arch for c in cleans}:
        verdict = "equal to a clean run's"
    elif rewards[0] <= r.best_reward <= rewards[-1]:
        verdict = "within the clean runs'"
    else:
        verdict = "higher than the clean" if r.best_reward > rewards[-1] else \
            "lower than the clean"
    return f"{verdict}: {r.best_reward:.4f} (clean {spread})"


def table(clean: dict[str, list[RunResult]], faulted: list[tuple[str, RunResult]]) -> str:
    rows = ["| fault | kills done | job | results lost | trainings / budget | trained twice "
            "| trials retried | runtime faulted / clean | best: faulted vs clean |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, r in faulted:
        cleans = clean[key]
        injected = sum(1 for f in r.faults if f.done_at is not None and "not inj" not in
                       f.detail)
        name = " + ".join(LABELS.get(k, k) for k in r.name.split("+"))
        runtime = "/".join(f"{c.seconds:.1f}" for c in cleans)
        rows.append(f"| {name} | {injected}/{len(r.faults)} | {r.state}"
                    f"{' (wedged)' if r.wedged else ''} | {len(r.lost)} | "
                    f"{r.trainings} / {r.budget} | {r.trained_twice} | {r.retried} | "
                    f"{r.seconds:.1f} s / {runtime} s | {compare_best(r, cleans)} |")
    return "\n".join(rows)


def table_optimum() -> float | None:
    """The best validation accuracy the NB201 table holds (CIFAR-10), if it can be read."""
    from controller.evaluators.base import EvaluatorError
    from controller.evaluators.nb201 import default_csv, load_table
    try:
        return max(reward for reward, _ in load_table(default_csv(), "cifar10").values())
    except EvaluatorError:
        return None


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n\n")[0] + " A clean search "
        "on the real processes, then the same search (same seed) with seeded SIGKILLs of a "
        "worker, a shard, the search service (its controller replicas) and Redis; reports "
        "results lost, retries, run time and best architecture per fault kind, and writes the "
        "'chaos' section of BENCHMARKS.md. Exit status 1 when a result was lost or a job did "
        "not succeed.",
        formatter_class=_Help)
    parser.add_argument("--quick", action="store_true",
                        help="a small search (budget 40, 0.2 s per child), 1 kill per kind, "
                             "1 clean run")
    parser.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument("--seed", type=int, default=0, help="the search's and the faults' seed")
    parser.add_argument("--kills", type=int, default=None,
                        help="kills per fault kind (default: 1 quick, 2 full)")
    parser.add_argument("--faults", default=",".join(KINDS),
                        help=f"fault kinds, comma-separated, of {','.join(KINDS)}")
    parser.add_argument("--together", action="store_true",
                        help="all the table faults in one faulted run (not one run per kind)")
    parser.add_argument("--clean-runs", type=int, default=None,
                        help="clean table runs, to see whether the clean best reproduces "
                             "(default: 1 quick, 2 full)")
    parser.add_argument("--budget", type=int, default=None,
                        help="trainings of the table search (default: 40 quick, 120 full)")
    parser.add_argument("--train-budget", type=int, default=None,
                        help="trainings of the worker fault's real search (6 quick, 8 full)")
    parser.add_argument("--simulate-seconds", type=float, default=0.2,
                        help="each table lookup sleeps this long, like a child's training")
    parser.add_argument("--replicas", type=int, default=2, help="controller replicas K")
    parser.add_argument("--children", type=int, default=5,
                        help="children m per policy update of each replica")
    parser.add_argument("--shards", type=int, default=2, help="parameter-server shards S")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (worker fault)")
    parser.add_argument("--heartbeat-timeout", type=float, default=20.0,
                        help="seconds a silent Ray attempt lives (the service's flag)")
    parser.add_argument("--window", default="0.15,0.7",
                        help="kills fall in this fraction of the clean run's duration")
    parser.add_argument("--down-seconds", type=float, default=1.0,
                        help="how long a killed process stays down before its restart")
    parser.add_argument("--run-timeout", type=float, default=300.0,
                        help="a job not ended after this many seconds counts as wedged")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (logs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        parser.error(f"--faults: unknown {unknown}; choose from {','.join(KINDS)}")
    args.kills = args.kills if args.kills is not None else (1 if args.quick else 2)
    args.clean_runs = args.clean_runs or (1 if args.quick else 2)
    args.budget = args.budget or (40 if args.quick else 120)
    args.train_budget = args.train_budget or (6 if args.quick else 8)
    try:
        lo, hi = (float(x) for x in args.window.split(","))
    except ValueError:
        parser.error("--window: LO,HI")
    if not 0 <= lo < hi <= 1:
        parser.error("--window: LO,HI with 0 <= LO < HI <= 1")
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="nas-chaos-"))
    started = time.monotonic()
    say(f"run directories under {base}{' (kept)' if args.keep else ''}")
    clean: dict[str, list[RunResult]] = {}
    repeats: list[RunResult] = []
    faulted: list[tuple[str, RunResult]] = []
    try:
        table_kinds = [k for k in kinds if k != "worker"]
        if table_kinds:
            for n in range(args.clean_runs):
                repeats.append(run(f"clean{n + 1}" if args.clean_runs > 1 else "clean",
                                   table_spec(args), args, 0, [], rng, base))
            clean["table"] = repeats
            span = max(r.seconds for r in repeats)
            groups = [table_kinds] if args.together else [[k] for k in table_kinds]
            for group in groups:
                faults = draw_faults(group, args.kills, (lo, hi), span, rng)
                faulted.append(("table", run("+".join(group), table_spec(args), args, 0,
                                             faults, rng, base)))
        if "worker" in kinds:
            clean["train"] = [run("clean-train", train_spec(args), args, args.workers, [], rng,
                                  base)]
            faults = draw_faults(["worker"], args.kills, (lo, hi), clean["train"][0].seconds,
                                 rng)
            faulted.append(("train", run("worker", train_spec(args), args, args.workers,
                                         faults, rng, base)))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    report = table(clean, faulted)
    print(report)
    for line in fault_lines(faulted):
        print(line)
    if not args.no_write:
        write_section("chaos", section(args, argv, clean, repeats, faulted, report, minutes))
        say("wrote the chaos section of BENCHMARKS.md")
    everything = [r for runs in clean.values() for r in runs] + [r for _, r in faulted]
    lost = sum(len(r.lost) for r in everything)
    ok = lost == 0 and all(r.state == "SUCCEEDED" for r in everything)
    say(f"done in {minutes:.1f} min: {lost} results lost, "
        f"{'every job SUCCEEDED' if ok else 'NOT every job succeeded'}")
    return 0 if ok else 1


def fault_lines(faulted: list[tuple[str, RunResult]]) -> list[str]:
    return [f"- {r.name}: at t={f.at:.1f} s: {f.detail}"
            + (f" (recovered at t={f.done_at:.1f} s)" if f.done_at is not None
               and "not inj" not in f.detail else "")
            for _, r in faulted for f in sorted(r.faults, key=lambda f: f.at)]


def section(args: argparse.Namespace, argv: list[str] | None,
            clean: dict[str, list[RunResult]],
            repeats: list[RunResult], faulted: list[tuple[str, RunResult]], report: str,
            minutes: float) -> str:
    command = "python -m bench.chaos" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    lines = ["## Chaos: faults during a search lose nothing", "",
             f"Machine: {machine()}; {background_load()}. Command: `{command}` "
             f"({minutes:.1f} min). Every process is real and on 127.0.0.1: a redis-server of "
             f"the benchmark's own with "
             f"`--appendonly yes --appendfsync always` (job store and shard checkpoints), "
             f"{args.shards} `nas serve paramserver` shards, `nas serve search --paramservers "
             f"...` and, for the worker row, its private local Ray with {args.workers} workers. "
             f"A killed process stays down {args.down_seconds} s, then is restarted on its "
             f"port (what a supervisor does); faults are drawn with seed {args.seed} in "
             f"{args.window} of the clean run's duration, {args.kills} per kind.", ""]
    if "table" in clean:
        optimum = table_optimum()
        bests = ", ".join(f"{r.best_reward:.4f}" for r in repeats)
        lines += [f"Table search: REINFORCE on NB201 (table evaluator, CIFAR-10 validation "
                  f"accuracy), budget {args.budget}, each lookup sleeping "
                  f"{args.simulate_seconds} s like a training, K={args.replicas} replicas x "
                  f"m={args.children}, seed {args.seed}. Clean runs: {len(repeats)}, bests "
                  f"{bests}" + (f" (the table's optimum: {optimum:.4f})" if optimum else "")
                  + f"; the first clean run's best architecture is "
                  f"`{clean['table'][0].best_arch}`."]
    if "train" in clean:
        c, train = clean["train"][0], train_spec(args)
        lines += ["", f"Worker search: table lookups never reach Ray, so the worker fault "
                  f"runs its own pair: {args.train_budget} NB201 children trained for real "
                  f"({train['epochs']} epoch(s) on a {train['train_subset']}-image "
                  f"Fashion-MNIST slice) by {args.workers} Ray workers, "
                  f"same seed; clean: best {c.best_reward:.4f}."]
    best_archs = {r.best_arch for r in repeats}
    if len(repeats) > 1 and len(best_archs) > 1:
        reproducible = (f" But with K={args.replicas} replicas the clean run itself does not "
                        f"reproduce its best ({len(repeats)} clean runs, {len(best_archs)} "
                        f"different bests above): the replicas' pushes interleave by thread "
                        f"timing, so every run samples differently after the first update. What is "
                        f"comparable is what the table shows: every trial accepted got its "
                        f"result, the budget was spent exactly, nothing trained twice, and "
                        f"where the faulted best falls against the clean runs' bests.")
    elif len(repeats) > 1 and args.replicas > 1:
        reproducible = (f" The {len(repeats)} clean runs reached the same best here, but with "
                        f"K={args.replicas} replicas that is not guaranteed: their pushes "
                        f"interleave by thread timing, so a run may sample differently after "
                        f"the first update. A faulted best that differs is therefore the "
                        f"fault's doing or timing; what the table guarantees is that every "
                        f"trial accepted got its result, the budget was spent exactly and "
                        f"nothing trained twice.")
    elif len(repeats) > 1:
        reproducible = (f" The clean run reproduced its best in {len(repeats)} runs, so a "
                        f"faulted best that differs is the fault's doing.")
    else:
        reproducible = ""
    lines += ["", report, "", "Faults injected:", "", *fault_lines(faulted), "",
              "How to read it:", "",
              "- *results lost*: trials the job accepted (journaled as started) that never got "
              "a result and whose architecture was not trained again after a resume, or that "
              "ended failed. *trials retried*: in-flight trials a restarted service re-queued "
              "(each trained once) plus extra Ray attempts of killed workers. *trained "
              "twice*: architectures the budget paid for more than once.",
              "- A controller replica is a thread of the search service, so one cannot be "
              "killed alone: SIGKILLing the service kills all K; the restarted service "
              "rebuilds them and pulls the policy the shards kept.",
              "- Why a faulted best can differ from the clean one without any result lost: "
              "a restarted service re-seeds the replicas' samplers (they start again from the "
              "seed, with the policy the shards kept) and trains its re-queued children first; "
              "a restarted shard restores its last checkpoint (every `checkpoint_every` = "
              f"{SearchConfig.checkpoint_every} updates) and drops the updates since. Either "
              "way the search then proposes other children than the clean run. A Redis "
              "restart and a killed worker change no state the search samples from (journal "
              "writes wait for Redis; the child is trained again, to the same accuracy), but "
              "they delay the replicas unevenly, and with K > 1 that alone can reorder their "
              "pushes." + reproducible,
              "- Found and fixed by this benchmark: a Redis SIGKILL wedged the job (the job "
              "store's next write raised, then so did the write of FAILED: the job stayed "
              "RUNNING with nothing running it) and failed it (a shard's checkpoint on "
              "RegisterLayout or on a push raised, the RPC failed with UNKNOWN). The job store "
              f"now waits up to {REDIS_RETRY_S:.0f} s for Redis; a failed checkpoint no longer "
              "fails the update that triggered it and is retried after the next one. And a "
              "service killed twice in a row, the second time while it resumed the job, lost "
              "a result: the first resume's note had dropped the in-flight trials from the job's "
              "view before it re-queued them all, so the second resume no longer knew of those "
              "not yet re-queued. The view now keeps each dropped trial as owed until a "
              "re-queued trial naming it starts."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
