"""One controller replica: pull the policy from the shards, sample m children, evaluate them
(cache first, budget shared with the other replicas), push the gradient of exactly those
children's actions, repeat. Started by the local launcher, one process per replica:

    python -m controller.distributed.replica --redis URL --job JOB_ID --index I
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import asdict
from types import FrameType

import redis
import torch

from controller.config import build_config
from controller.distributed.metrics import ReplicaMetricsServer
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.remote import RemoteUpdater
from controller.distributed.state import JobState, RedisCache
from controller.factory import build_evaluator, build_reinforce, build_space
from controller.objectives import RewardShaper
from controller.policy.lstm import LSTMPolicy
from controller.search import run_search
from protos.types import LayoutSpec, UpdatePolicy


def layout_from_json(doc: dict[str, object]) -> LayoutSpec:
    """A LayoutSpec from the job spec's JSON form."""
    fields = dict(doc)
    fields["policy"] = UpdatePolicy(fields["policy"])
    return LayoutSpec(**fields)  # type: ignore[arg-type]


def layout_to_json(layout: LayoutSpec) -> dict[str, object]:
    """The job spec's JSON form of a layout."""
    doc = asdict(layout)
    doc["policy"] = layout.policy.value
    return doc


def run_replica(redis_url: str, job_id: str, index: int, prefix: str = "nas",
                metrics: ReplicaMetricsServer | None = None) -> dict[str, object]:
    """Run replica ``index`` of a job until the shared budget is spent; return its statistics."""
    torch.set_num_threads(1)
    client_redis = redis.Redis.from_url(redis_url)
    state = JobState(client_redis, job_id, prefix)
    spec = state.read_spec()
    cfg = build_config(spec["config"])
    layout = layout_from_json(spec["layout"])
    space = build_space(cfg)
    evaluator = build_evaluator(cfg)
    client = ShardedParameterClient(spec["shards"], layout)
    replica_id = f"{job_id}-r{index}"
    updaters: list[RemoteUpdater] = []

    def make_updater(policy: LSTMPolicy) -> RemoteUpdater:
        updaters.append(RemoteUpdater(list(policy.parameters()), client, replica_id,
                                      metrics=metrics.replica(index) if metrics else None))
        return updaters[0]

    strategy = build_reinforce(space, cfg, seed=cfg.seed + 7919 * (index + 1),
                               updater=make_updater)
    strategy.job_id = replica_id
    outcome = run_search(space, strategy, evaluator, cfg.budget, cache=RedisCache(client_redis,
                                                                                   prefix),
                         failure_reward=cfg.failure_reward,
                         max_idle_proposals=cfg.max_idle_proposals, report_test=False,
                         claim=state.claimer(cfg.budget), on_entry=state.append,
                         parallel=cfg.parallel, shaper=RewardShaper.from_settings(cfg.objectives))
    stats = updaters[0].stats
    report = {"trainings": outcome.trainings, "cache_hits": outcome.cache_hits,
              "pushes": stats.pushes, "rejected_stale": stats.rejected_stale,
              "duplicates": stats.duplicates, "staleness": stats.staleness,
              "push_seconds": stats.push_seconds, "pull_seconds": stats.pull_seconds,
              "stopped_reason": outcome.stopped_reason}
    state.report_replica(replica_id, report)
    client.close()
    return report


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a replica process (``--count`` replicas as threads)."""
    p = argparse.ArgumentParser(prog="python -m controller.distributed.replica",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", required=True, help="Redis URL holding the job spec")
    p.add_argument("--job", required=True, help="job id")
    p.add_argument("--index", type=int, required=True, help="first replica index (0..K-1)")
    p.add_argument("--count", type=int, default=1, help="replicas in this process (1)")
    p.add_argument("--prefix", default="nas", help="Redis key prefix (nas)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics on this port (0: any)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    metrics = ReplicaMetricsServer(args.metrics_port)
    last = args.index + args.count - 1
    line = f"replicas {args.index}..{last} running"
    if metrics.port is not None:
        line += f" metrics http://127.0.0.1:{metrics.port}/metrics"
    print(line, flush=True)
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            report = run_replica(args.redis, args.job, index, args.prefix, metrics)
            print(json.dumps({k: v for k, v in report.items() if not isinstance(v, list)}),
                  flush=True)
        except BaseException as exc:  # reported below; the process exits non-zero
            errors.append(exc)
            raise

    threads = [threading.Thread(target=one, args=(i,), daemon=True)
               for i in range(args.index, args.index + args.count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
