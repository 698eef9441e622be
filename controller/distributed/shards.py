"""Local parameter-server shard processes on loopback (with a private Redis for their
checkpoints unless one is given); a shard that dies is restarted on its port, restoring its
Redis checkpoint. The search service's cluster (``nas.cluster``) starts them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.config import SearchConfig
from controller.distributed.processes import (
    Child,
    ProcessError,
    python_module,
    spawn,
    stop,
    wait_for_line,
)
from protos.types import LayoutSpec, UpdatePolicy

SHARD_READY = r"listening on (\S+:\d+)(?: metrics (\S+))?"
MAX_RESTARTS = 5


@dataclass
class ShardProcesses:
    """The shard processes (and a private redis-server) started here, stopped together."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)
    shards: list[Child] = field(default_factory=list)
    shard_addresses: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # process name -> /metrics URL

    def start_shard(self, index: int, num_shards: int, redis_url: str, prefix: str,
                    port: int = 0) -> str:
        """Start shard ``index`` and return its address once it listens."""
        old = self.metrics.get(f"shard{index}")  # a revived shard keeps its scrape target
        metrics_port = old.rsplit(":", 1)[1].split("/")[0] if old and port else "0"
        child = spawn(f"shard{index}", python_module(
            "paramserver", "--shard", str(index), "--num-shards", str(num_shards), "--port",
            str(port), "--redis", redis_url, "--redis-prefix", prefix, "--metrics-port",
            metrics_port), self.log_dir)
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
        """Stop everything (shards first, then Redis)."""
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
