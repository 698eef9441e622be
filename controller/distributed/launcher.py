"""The local layout of a distributed search: a private Redis (unless one is given), S shard
processes and K replica processes on loopback; shards that die are restarted on their port
(restoring their Redis checkpoint), replicas that crash are restarted; then result.json."""

from __future__ import annotations

import json
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import redis
from torch import nn

from controller.config import SearchConfig
from controller.distributed.processes import (
    Child,
    ProcessError,
    python_module,
    spawn,
    start_private_redis,
    stop,
    wait_for_line,
)
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.replica import layout_to_json
from controller.distributed.state import JobState
from controller.evaluators.base import Evaluator
from controller.factory import build_reinforce
from controller.search import HistoryEntry, SearchOutcome
from controller.spaces import SearchSpace
from protos.types import LayoutSpec, UpdatePolicy

SHARD_READY = r"listening on (\S+:\d+)(?: metrics (\S+))?"
REPLICAS_READY = r"running(?: metrics (\S+))?"
MAX_RESTARTS = 5


@dataclass
class Cluster:
    """Every process this launcher started, stopped together."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)
    shards: list[Child] = field(default_factory=list)
    shard_addresses: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # process name -> /metrics URL

    def start_shard(self, index: int, num_shards: int, redis_url: str, prefix: str,
                    port: int = 0) -> str:
        """Start shard ``index`` and return its address once it listens."""
        child = spawn(f"shard{index}", python_module(
            "paramserver", "--shard", str(index), "--num-shards", str(num_shards), "--port",
            str(port), "--redis", redis_url, "--redis-prefix", prefix, "--metrics-port", "0"),
            self.log_dir)
        self.children.append(child)
        ready = wait_for_line(child, SHARD_READY)
        address = ready.group(1)
        if ready.group(2):
            self.metrics[child.name] = ready.group(2)
        if index < len(self.shards):
            self.shards[index], self.shard_addresses[index] = child, address
        else:
            self.shards.append(child)
            self.shard_addresses.append(address)
        return address

    def start_replicas(self, first: int, count: int, redis_url: str, job_id: str) -> Child:
        """Start a process running replicas first..first+count-1 (as threads)."""
        child = spawn(f"replicas{first}", python_module(
            "controller.distributed.replica", "--redis", redis_url, "--job", job_id, "--index",
            str(first), "--count", str(count), "--metrics-port", "0"), self.log_dir)
        self.children.append(child)
        ready = wait_for_line(child, REPLICAS_READY, timeout=120)
        if ready.group(1):
            self.metrics[child.name] = ready.group(1)
        return child

    def describe(self) -> dict[str, Any]:
        """Every process with its pid, and every endpoint (written to cluster.json)."""
        return {"processes": {c.name: c.proc.pid for c in self.children},
                "shards": self.shard_addresses, "metrics": self.metrics}

    def revive_shards(self, num_shards: int, redis_url: str, prefix: str) -> None:
        """Restart any shard that died, on the same port, from its checkpoint."""
        for index, child in enumerate(self.shards):
            if child.alive():
                continue
            self._count_restart(child)
            port = int(self.shard_addresses[index].rsplit(":", 1)[1])
            self.start_shard(index, num_shards, redis_url, prefix, port)

    def _count_restart(self, child: Child) -> None:
        self.restarts[child.name] = self.restarts.get(child.name, 0) + 1
        if self.restarts[child.name] > MAX_RESTARTS:
            raise ProcessError(f"{child.name} died {MAX_RESTARTS} times:\n{child.tail()}")

    def stop(self) -> None:
        """Stop everything (replicas first, then shards, then Redis)."""
        stop([c for c in reversed(self.children) if c.name.startswith("replicas")])
        stop([c for c in self.children if c.name.startswith("shard")])
        stop([c for c in self.children if c.name == "redis"])


def layout_for(cfg: SearchConfig, job_id: str, size: int, lr: float,
               betas: tuple[float, float], num_shards: int | None = None) -> LayoutSpec:
    """The parameter-server layout of a job's policy (``num_shards``: default ``cfg.shards``)."""
    return LayoutSpec(layout_id=job_id, total_size=size,
                      num_shards=cfg.shards if num_shards is None else num_shards,
                      policy=UpdatePolicy(cfg.update_policy), staleness=cfg.staleness,
                      sync_pushes=cfg.sync_pushes or cfg.replicas, learning_rate=lr,
                      beta1=betas[0], beta2=betas[1], checkpoint_every=cfg.checkpoint_every)


def _distributions(reports: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Percentiles over all replicas of staleness (versions) and push/pull latency (ms)."""
    out = {}
    for key, name, scale in (("staleness", "staleness_versions", 1.0),
                             ("push_seconds", "push_ms", 1000.0),
                             ("pull_seconds", "pull_ms", 1000.0)):
        values = np.array([v for r in reports for v in r.get(key, [])], dtype=float) * scale
        if values.size:
            out[name] = {f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 99)}
            out[name]["max"] = float(values.max())
            out[name]["count"] = float(values.size)
    return out


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


ProgressFn = Callable[[int], None]


def run_local_cluster(cfg: SearchConfig, space: SearchSpace, evaluator: Evaluator,
                      progress: ProgressFn | None = None) -> tuple[SearchOutcome, dict[str, Any]]:
    """Run the search as shard and replica processes; the outcome and a layout report."""
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    out = Path(str(cfg.out))
    cluster = Cluster(out / "logs")
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    start = time.perf_counter()
    try:
        redis_url = cfg.redis
        if redis_url is None:
            child, redis_url = start_private_redis(Path(tempfile.mkdtemp(prefix="nas-redis-")),
                                                   cluster.log_dir)
            cluster.children.append(child)
        prefix = f"nas:{job_id}"
        for i in range(cfg.shards):
            cluster.start_shard(i, cfg.shards, redis_url, prefix)
        strategy = build_reinforce(space, cfg)  # the seeded initial policy every replica starts
        learner = strategy.learner.config
        initial = nn.utils.parameters_to_vector(strategy.policy.parameters()).detach().numpy()
        layout = layout_for(cfg, job_id, initial.size, learner.learning_rate, learner.adam_betas)
        client = ShardedParameterClient(cluster.shard_addresses, layout)
        client.register(initial.astype(np.float32))
        state = JobState(redis.Redis.from_url(redis_url), job_id)
        state.write_spec({"config": {k: v for k, v in vars(cfg).items()},
                          "layout": layout_to_json(layout), "shards": cluster.shard_addresses})
        per = cfg.replicas_per_process
        replicas = [cluster.start_replicas(first, min(per, cfg.replicas - first), redis_url,
                                           job_id) for first in range(0, cfg.replicas, per)]
        (out / "cluster.json").write_text(json.dumps(cluster.describe(), indent=1) + "\n")
        while any(r.alive() for r in replicas):
            cluster.revive_shards(cfg.shards, redis_url, prefix)
            for i, replica in enumerate(replicas):
                if not replica.alive() and replica.proc.returncode != 0:
                    cluster._count_restart(replica)
                    replicas[i] = spawn(replica.name, replica.args, cluster.log_dir)
                    cluster.children.append(replicas[i])
                    (out / "cluster.json").write_text(json.dumps(cluster.describe()) + "\n")
            if progress is not None:
                progress(min(cfg.budget, state.trainings()))
            time.sleep(0.2)
        outcome = SearchOutcome(budget=cfg.budget)
        for doc in state.history():
            outcome.add(HistoryEntry.from_json(doc))
        statuses = client.status()
        replica_reports = state.replica_reports()
        report: dict[str, Any] = {"job_id": job_id, "shards": cfg.shards, "replicas": cfg.replicas,
                  "children": strategy.batch_size,
                  "layout": layout_to_json(layout), "shard_addresses": cluster.shard_addresses,
                  "shard_versions": [int(s.version) for s in statuses],
                  "restarts": cluster.restarts, "metrics": cluster.metrics,
                  "replica_reports": {k: {n: v for n, v in r.items() if not isinstance(v, list)}
                                      for k, r in replica_reports.items()},
                  **_distributions(list(replica_reports.values()))}
        client.close()
    finally:
        cluster.stop()
        signal.signal(signal.SIGTERM, previous)
    reasons = {str(r.get("stopped_reason")) for r in replica_reports.values()}
    outcome.stopped_reason = "budget" if outcome.trainings >= cfg.budget or reasons == {
        "budget"} else ",".join(sorted(reasons))
    if outcome.best is not None:
        outcome.best_test_accuracy = evaluator.test_accuracy(
            space.from_string(outcome.best.trained_arch))
    outcome.wall_seconds = time.perf_counter() - start
    return outcome, report


