"""End-to-end trials per second of our full stack against Ray Tune and Optuna, in one run.

Every system runs the same number of trials N, and the work of each trial is the same: one
NAS-Bench-201 table lookup (CIFAR-10, 12-epoch validation accuracy). What is measured is
therefore each system's own per-trial overhead.

- ours: one job through the search service's own parts, as ``nas serve search`` runs a
  submitted job: a ``JobRunner`` over the Redis job store (every trial journalled in Redis), S
  parameter-server shard processes (checkpointing to the same Redis), K REINFORCE controller
  replicas (threads) that pull the LSTM policy from the shards and push a gradient after every
  m children, and the Ray worker pool: each trial is queued on the trial board, leased over
  gRPC by the worker service, run as a Ray task that reports its start and its result back over
  gRPC. The Ray task's body is this module's ``lookup_attempt`` (the table lookup) in place of
  ``worker.task.run_attempt``'s training (the same start and result RPCs; no heartbeat thread:
  a lookup ends long before the first 5 s beat). Timed from the job's submission to its end
  (shards, Redis and Ray already up; Ray's worker processes start inside the timing).
  N counts trainings: proposals the evaluation cache already answered are extra (reported).
- Ray Tune: a ``tune.Tuner`` of a function trainable doing the lookup, random search
  (``tune.choice`` over the 6 edges, Tune's default BasicVariantGenerator), num_samples=N,
  max_concurrent_trials = the workers, 1 CPU per trial, on a local Ray with as many CPUs as
  our workers; actors reused between trials and Tune's per-trial file loggers off
  (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1): its leanest setting. Timed around ``tuner.fit()``
  (ray.init before it).
- Optuna: a JournalStorage file shared by as many worker processes as our workers, each
  running ``study.optimize`` on the lookup (RandomSampler by default, ``--optuna-sampler
  tpe`` for TPE), N trials in all. Timed from releasing the started processes to the last
  trial's end.

    python -m bench.throughput              # N=400 each (a few minutes on 2 cores)
    python -m bench.throughput --quick      # N=40 each
"""

from __future__ import annotations

import argparse
import itertools
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench import throughput_work as work
from bench.report import background_load, machine, write_section
from controller.config import SearchConfig
from controller.evaluators.base import Evaluator
from controller.spaces.nb201 import OPS
from controller.trials.evaluator import DispatchEvaluator
from protos.types import Workload
from worker.scheduler import RAY_LOOPBACK_ENV
from worker.trainer_recipe import TrainRecipe

DATASET = work.DATASET
LOOKUP_PREFIX = work.LOOKUP_PREFIX
Result = dict[str, Any]


def _advance(bar: tqdm[Any], done: int) -> None:
    """Move the progress bar to ``done`` (only when it moved: no redraws while idle)."""
    done = min(done, int(bar.total or done))
    if done > bar.n:
        bar.update(done - bar.n)


# --- ours ----------------------------------------------------------------------------------


def run_ours(args: argparse.Namespace, tmp: Path) -> Result:
    """One REINFORCE job of N trainings on the service's shards, replicas and Ray workers."""
    import ray
    import redis

    from controller.jobs.redis_store import RedisJobStore
    from controller.jobs.store import InMemoryJobStore, JobStore
    from nas.cluster import ClusterOptions, ServiceCluster, job_runner

    class LookupCluster(ServiceCluster):
        """The service's cluster, whose workers look NB201 rewards up instead of training."""

        def evaluator(self, cfg: SearchConfig, local: Evaluator, tenant: str = "") -> Evaluator:
            assert self.workers is not None
            # the wire's full workload (what a training job sends); the lookup reads only
            # its dataset
            workload = Workload(dataset=f"{LOOKUP_PREFIX}{cfg.dataset}",
                                model={"cells": 1, "filters": 8, "drop_path": 0.0,
                                       "aux_head": False},
                                recipe=dict(vars(TrainRecipe(epochs=1, device="cpu"))),
                                weights_dir=str(tmp / "weights"))
            return DispatchEvaluator(self.workers.board, workload, self.workers.resources,
                                     local, tenant)

    prefix = f"bench-tput-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(args.redis)
    client.ping()
    setup = time.perf_counter()
    cluster = LookupCluster(ClusterOptions(shards=args.shards, redis_url=args.redis,
                                           workers=args.workers, redis_prefix=prefix,
                                           log_dir=tmp / "logs"))
    runner: Any = None
    try:
        pool = cluster.workers
        assert pool is not None and pool.scheduler is not None
        # the Ray task body: a lookup in place of training (see the module docstring)
        pool.scheduler._remote = ray.remote(max_retries=0, retry_exceptions=False)(
            work.lookup_attempt)
        store: JobStore = RedisJobStore(client, prefix=prefix) if args.job_store == "redis" \
            else InMemoryJobStore()
        runner = job_runner(store, tmp / "jobs", max_running=1, cluster=cluster)
        setup = time.perf_counter() - setup
        spec = {"space": "nb201", "evaluator": "nb201", "dataset": DATASET,
                "budget": args.trials, "seed": args.seed, "shards": args.shards,
                "replicas": args.replicas, "children": args.children,
                "parallel": args.children, "out": str(tmp / "job")}
        board = pool.board
        outcomes: list[Any] = []
        board.on_outcome = outcomes.append  # per-trial timestamps (submitted/started/finished)
        with tqdm(total=args.trials, desc="ours", unit="trial", leave=False) as bar:
            start, board_start = time.perf_counter(), time.monotonic()  # board: monotonic
            store.create("tput", "bench", "bench", spec)
            runner.start("tput")
            deadline = start + args.timeout
            while not runner.wait("tput", 0.25):
                _advance(bar, board.counters.succeeded)
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"ours: the job ran past {args.timeout:.0f} s")
            seconds = time.perf_counter() - start
            _advance(bar, board.counters.succeeded)
        view = store.get("tput")
        if view.state != "SUCCEEDED":
            raise RuntimeError(f"ours: the job ended {view.state}: {view.reason}")
        trained, cached = view.trainings - view.failed, view.cache_hits
        best = view.best.reward if view.best is not None else 0.0
        versions = [int(s.version) for s in cluster.shard_status("tput")]
        return {**_timings(outcomes, board_start), "trials": trained, "seconds": seconds,
                "setup": setup, "cache_hits": cached,
                "best": best, "policy_updates": min(versions) if versions else 0,
                "leased": board.counters.leased, "failed": board.counters.failed}
    finally:
        if runner is not None:
            runner.close(timeout=5.0)
        cluster.close()
        if runner is not None:
            runner.close(timeout=10.0)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _timings(outcomes: list[Any], start: float) -> Result:
    """Where a trial's time went on the trial board: queued (submitted -> its Ray task
    reported its start) and in the task (start -> result accepted); and the first result's
    delay after the submission (Ray's worker processes starting)."""
    import numpy as np

    done = [o for o in outcomes if o.started_at is not None]
    if not done:
        return {}
    queued = np.array([(o.started_at or 0.0) - o.submitted_at for o in done]) * 1e3
    task = np.array([o.finished_at - (o.started_at or 0.0) for o in done]) * 1e3
    first = min(o.finished_at for o in done) - start
    # a worker process's turnaround: its result accepted -> its next trial started, when that
    # trial was already waiting (the cost of handing a free slot its next trial)
    gaps: list[float] = []
    by_worker: dict[str, list[Any]] = {}
    for o in sorted(done, key=lambda o: o.started_at or 0.0):
        by_worker.setdefault(o.worker, []).append(o)
    for runs in by_worker.values():
        gaps += [(b.started_at or 0.0) - a.finished_at for a, b in itertools.pairwise(runs)
                 if b.submitted_at < a.finished_at]
    return {"queued_ms_p50": float(np.median(queued)), "task_ms_p50": float(np.median(task)),
            "first_result_s": first, "slot_turnaround_ms_p50":
                float(np.median(gaps) * 1e3) if gaps else float("nan"),
            "steady_rate": _steady([o.finished_at for o in done])}


def _steady(ends: list[float]) -> float:
    """Trials per second from the first trial's end to the last's: the rate once every
    process has started (the table loaded, Ray's workers or Tune's actors up)."""
    if len(ends) < 2 or max(ends) <= min(ends):
        return float("nan")
    return (len(ends) - 1) / (max(ends) - min(ends))


# --- Ray Tune --------------------------------------------------------------------------------


def run_tune(args: argparse.Namespace, tmp: Path) -> Result:
    """A Tuner of N random-search trials, ``workers`` at once on a local Ray."""
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    # without its per-trial result files (off above, Tune's leanest setting) the ResultGrid
    # warns once per trial that it found none: expected here, and N lines of noise
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    setup = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False,
             _temp_dir=str(tmp / "ray-tune"), _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        setup = time.perf_counter() - setup
        bar = tqdm(total=args.trials, desc="ray tune", unit="trial", leave=False)

        class Progress(tune.Callback):
            """Counts the trials that completed with a reward (the per-trial result files
            that ResultGrid reads are off) and when; nothing of it is pickled with the
            Tuner's state (the bar writes to a stream)."""

            def __init__(self, bar: tqdm[Any]) -> None:
                self.bar = bar
                self.rewards: list[float] = []
                self.ends: list[float] = []

            def __getstate__(self) -> dict[str, Any]:
                return {}

            def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                                  **info: Any) -> None:
                if (trial.last_result or {}).get("reward") is not None:
                    self.rewards.append(float(trial.last_result["reward"]))
                    self.ends.append(time.perf_counter())
                    self.bar.update(1)

        progress = Progress(bar)
        tuner = tune.Tuner(
            tune.with_resources(work.tune_trainable, {"cpu": 1}),
            param_space={f"e{i}": tune.choice(list(OPS)) for i in range(6)},
            tune_config=tune.TuneConfig(num_samples=args.trials, metric="reward", mode="max",
                                        reuse_actors=True,
                                        max_concurrent_trials=args.workers),
            run_config=tune.RunConfig(name="tput", storage_path=str(tmp / "tune"), verbose=0,
                                      callbacks=[progress]))
        done: list[Any] = []
        fit = threading.Thread(target=lambda: done.append(tuner.fit()), daemon=True)
        start = time.perf_counter()
        fit.start()
        fit.join(args.timeout)
        seconds = time.perf_counter() - start
        bar.close()
        if fit.is_alive():
            raise TimeoutError(f"ray tune: tuner.fit() ran past {args.timeout:.0f} s")
        errors = sum(1 for r in done[0] if r.error is not None and
                     not isinstance(r.error, FileNotFoundError))  # no result files: expected
        rewards, ends = progress.rewards, progress.ends
        return {"trials": len(rewards), "seconds": seconds, "setup": setup, "failed": errors,
                "best": max(rewards, default=0.0),
                "first_result_s": min(ends) - start if ends else float("nan"),
                "steady_rate": _steady(ends)}
    finally:
        ray.shutdown()


# --- Optuna ----------------------------------------------------------------------------------


def run_optuna(args: argparse.Namespace, tmp: Path) -> Result:
    """``workers`` processes sharing one JournalStorage file, N trials in all."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = str(tmp / "optuna.journal")
    setup = time.perf_counter()
    storage = JournalStorage(JournalFileBackend(path))
    optuna.create_study(study_name="tput", storage=storage, direction="maximize")
    ctx = mp.get_context("spawn")  # never fork a process holding gRPC and Ray threads
    ready, go, counter = ctx.Semaphore(0), ctx.Event(), ctx.Value("i", 0)
    shares = [args.trials // args.workers + (i < args.trials % args.workers)
              for i in range(args.workers)]
    procs = [ctx.Process(target=work.optuna_worker, args=(path, "tput", n, args.seed + i,
                                                      args.optuna_sampler, ready, go, counter),
                         daemon=True) for i, n in enumerate(shares)]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=args.timeout):
                raise TimeoutError("optuna: a worker process did not start")
        setup = time.perf_counter() - setup
        with tqdm(total=args.trials, desc="optuna", unit="trial", leave=False) as bar:
            start, release = time.perf_counter(), time.time()  # trials: wall-clock times
            go.set()
            deadline = start + args.timeout
            while any(p.is_alive() for p in procs):
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"optuna: ran past {args.timeout:.0f} s")
                _advance(bar, counter.value)
                for p in procs:
                    p.join(0.05)
            seconds = time.perf_counter() - start
            _advance(bar, counter.value)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"optuna: worker exit codes {[p.exitcode for p in procs]}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    study = optuna.load_study(study_name="tput", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ends = [t.datetime_complete.timestamp() for t in done if t.datetime_complete]
    return {"trials": len(done), "seconds": seconds, "setup": setup,
            "best": max((float(t.value or 0.0) for t in done), default=0.0),
            "first_result_s": min(ends) - release if ends else float("nan"),
            "steady_rate": _steady(ends)}


# --- main ------------------------------------------------------------------------------------

SYSTEMS: dict[str, Callable[[argparse.Namespace, Path], Result]] = {
    "ours": run_ours, "ray-tune": run_tune, "optuna": run_optuna}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N=40 trials each (unless --trials)")
    p.add_argument("--trials", type=int, default=None, help="trials N per system (400)")
    p.add_argument("--shards", type=int, default=2, help="ours: parameter-server shards S (2)")
    p.add_argument("--replicas", type=int, default=2, help="ours: controller replicas K (2)")
    p.add_argument("--children", type=int, default=8,
                   help="ours: children m per policy update, all in flight at once (8)")
    p.add_argument("--workers", type=int, default=2,
                   help="trials at once in every system: our Ray workers, Tune's "
                        "max_concurrent_trials, Optuna's processes (2)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"which to run, comma-separated ({','.join(SYSTEMS)})")
    p.add_argument("--optuna-sampler", choices=("random", "tpe"), default="random",
                   help="Optuna's sampler (random, like Tune's random search)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/12",
                   help="ours: the job store's and the shards' Redis (db 12 on loopback); "
                        "keys under a fresh prefix, deleted afterwards")
    p.add_argument("--job-store", choices=("redis", "memory"), default="redis",
                   help="ours: the job store, the service's Redis one (redis) or the in-memory "
                        "one of `nas search` (memory: to see what the journal costs)")
    p.add_argument("--seed", type=int, default=0, help="seed (0)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="give up on a system after this many seconds (600)")
    p.add_argument("--no-write", action="store_true", help="print only, no BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.trials is None:
        args.trials = 40 if args.quick else 400
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"--systems: unknown {', '.join(sorted(unknown))}; known: {', '.join(SYSTEMS)}")
    for name in ("trials", "shards", "replicas", "children", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Result]:
    """Run each system on N trials; print (and write) the section; the results by system."""
    args = parse(argv)
    for key, value in RAY_LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    work.table()  # fail early when the table is missing
    results: dict[str, Result] = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="nas-tput-") as tmp:
        for name in args.systems:
            (Path(tmp) / name).mkdir()
            results[name] = SYSTEMS[name](args, Path(tmp) / name)
            r = results[name]
            r["rate"] = r["trials"] / r["seconds"] if r["seconds"] > 0 else 0.0
            print(f"{name}: {r['trials']} trials in {r['seconds']:.2f} s = "
                  f"{r['rate']:.1f} trials/s", file=sys.stderr)
    body = render(args, results, time.time() - started, argv)
    print(body)
    if not args.no_write:
        write_section("throughput", body)
    return results


def command(args: argparse.Namespace, argv: list[str] | None) -> str:
    """The exact command of this run."""
    given = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python -m bench.throughput", *given])


def _learning(args: argparse.Namespace) -> str:
    """What the other systems learn between trials, by the samplers this run used."""
    random = [name for name in ("ray-tune", "optuna") if name in args.systems
              and (name == "ray-tune" or args.optuna_sampler == "random")]
    labels = {"ray-tune": "Ray Tune's", "optuna": "Optuna's"}
    parts = []
    if random:
        parts.append(" and ".join(labels[n] for n in random) + " random search "
                     + ("do" if len(random) > 1 else "does") + " no learning between trials.")
    if "optuna" in args.systems and args.optuna_sampler == "tpe":
        parts.append("Optuna's TPE refits its density models to the finished trials before "
                     "each proposal.")
    return " ".join(parts)


def render(args: argparse.Namespace, results: dict[str, Result], wall: float,
           argv: list[str] | None) -> str:
    """The markdown section."""
    lines = ["## Throughput against Ray Tune and Optuna", "",
             f"Command: `{command(args, argv)}` ({wall / 60:.1f} min in all on {machine()}; "
             f"{background_load()}; the ratios, measured in the same run, are what to read). "
             f"N = {args.trials} "
             f"trials per system, each one NAS-Bench-201 table lookup ({DATASET}, 12-epoch "
             f"validation accuracy), {args.workers} trials at once in every system.", "",
             "| system | what runs | trials | seconds | trials/s | first result s | "
             "steady trials/s | setup s (not timed) |",
             "|---|---|---|---|---|---|---|---|"]
    what = {
        "ours": f"REINFORCE job: {'Redis' if args.job_store == 'redis' else 'in-memory'} "
                f"job store, S={args.shards} shard processes, "
                f"K={args.replicas} replicas, m={args.children}, {args.workers} Ray workers "
                f"(trial board + gRPC lease/start/result)",
        "ray-tune": f"`tune.Tuner`, random search, max_concurrent_trials={args.workers}",
        "optuna": f"{args.workers} processes, JournalStorage file, "
                  f"{args.optuna_sampler} sampler"}
    for name, r in results.items():
        lines.append(f"| {name} | {what[name]} | {r['trials']} | {r['seconds']:.2f} | "
                     f"**{r['rate']:.1f}** | {r.get('first_result_s', float('nan')):.1f} | "
                     f"{r.get('steady_rate', float('nan')):.1f} | {r['setup']:.1f} |")
    ours = results.get("ours")
    if ours is not None:
        lines.append("")
        for name, label, target in (("ray-tune", "Ray Tune", 2.0), ("optuna", "Optuna", 1.0)):
            other = results.get(name)
            if other is not None and other["rate"] > 0:
                ratio = ours["rate"] / other["rate"]
                lines.append(f"- ours / {label}: **{ratio:.2f}x** (target >= {target:g}x: "
                             f"**{'met' if ratio >= target else 'NOT met'}**)")
        proposals = ours["trials"] + ours["cache_hits"]
        lines.append(f"- ours made {proposals} proposals for its {ours['trials']} trainings "
                     f"({ours['cache_hits']} answered by the evaluation cache, not counted as "
                     f"trials; its controller proposes each architecture once) and applied "
                     f"{ours['policy_updates']} policy updates per shard.")
        if "queued_ms_p50" in ours:
            lines.append(f"- ours, per trial (p50): queued on the trial board until its Ray "
                         f"task reported its start {ours['queued_ms_p50']:.0f} ms (up to "
                         f"K x m = {args.replicas * args.children} trials in flight for "
                         f"{args.workers} slots), in the task (start -> result accepted) "
                         f"{ours['task_ms_p50']:.1f} ms, a slot's turnaround (result "
                         f"accepted -> its next waiting trial started) "
                         f"{ours['slot_turnaround_ms_p50']:.0f} ms.")
        lines += ["", "Reading: on these zero-cost trials each system's own per-trial work is "
                  "all there is to measure. " + _learning(args) + " Ours samples every "
                  "proposal from the LSTM policy and updates it every m results (each replica "
                  "pushes a gradient to and pulls the policy from every shard) and journals "
                  "each trial in Redis (its start and its result)."]
    lines += ["", "What is timed: ours from the job's submission to its end (shards, Redis, "
              "Ray already up; Ray's worker processes start inside the timing); Ray Tune "
              "around `tuner.fit()` (after `ray.init`); Optuna from releasing the started "
              "worker processes to their last trial. See `bench/throughput.py`'s docstring "
              "for exactly what is in each path."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
    sys.exit(0)
