"""Local parameter-server shard processes on loopback (with a private Redis for their
checkpoints unless one is given); a shard that dies is restarted on its port, restoring its
Redis checkpoint. The search service's cluster (``nas.cluster``) starts them.

Secrets travel in the shards' environment, never on their command lines: the cluster token
(``$NAS_CLUSTER_TOKEN``, a fresh random one unless given) and the Redis password
(``$NAS_REDIS_PASSWORD``, taken out of a URL that carries one)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.config import SearchConfig
from controller.distributed.processes import (
    Child,
    count_restart,
    python_module,
    spawn,
    start_ready,
    stop,
)
from protos.cluster_auth import INSECURE_FLAG, TOKEN_ENV, ClusterAuth, generate_token
from protos.types import LayoutSpec, StalenessRule, UpdatePolicy

SHARD_READY = r"listening on (\S+:\d+)(?: metrics (\S+))?"
MAX_RESTARTS = 5
PASSWORD_ENV = "NAS_REDIS_PASSWORD"


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password (``redis://:PW@host`` or ``?password=PW``), and the
    password (None: it had none, and ``url`` is returned as it is)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    password = next((v for k, v in query if k == "password"), None)
    netloc = parts.netloc
    if parts.password is not None:
        password = urllib.parse.unquote(parts.password)
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{parts.username}@{host}" if parts.username else host
    if password is None:
        return url, None
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "password"])
    return f"{parts.scheme}://{netloc}{parts.path}{'?' + rest if rest else ''}", password or None


@dataclass
class ShardProcesses:
    """The shard processes (and a private redis-server) started here, stopped together.
    ``token``: the cluster token they require (None: none, ``--insecure-no-token``);
    ``redis_password``: of their Redis, when its URL has none; ``on_spawn``: called with each
    shard process as soon as it is started, before it is ready (tests kill it there)."""

    log_dir: Path
    token: str | None = field(default_factory=generate_token, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    children: list[Child] = field(default_factory=list)
    shards: list[Child] = field(default_factory=list)
    shard_addresses: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)  # process name -> /metrics URL
    on_spawn: Callable[[Child], None] | None = field(default=None, repr=False)

    def start_shard(self, index: int, num_shards: int, redis_url: str, prefix: str,
                    port: int = 0) -> str:
        """Start shard ``index`` and return its address once it listens. One that dies before
        it is ready is started again, like one that dies later: on the same ``port``, counted
        in ``restarts``, ProcessError after MAX_RESTARTS. One still not ready after a minute:
        ProcessError."""
        child, ready = start_ready(
            lambda: self._spawn_shard(index, num_shards, redis_url, prefix, port), SHARD_READY,
            self.restarts, MAX_RESTARTS)
        address = ready.group(1)
        if ready.group(2):
            self.metrics[child.name] = ready.group(2)
        if index < len(self.shards):
            self.shards[index], self.shard_addresses[index] = child, address
        else:
            self.shards.append(child)
            self.shard_addresses.append(address)
        return address

    def _spawn_shard(self, index: int, num_shards: int, redis_url: str, prefix: str,
                     port: int) -> Child:
        old = self.metrics.get(f"shard{index}")  # a revived shard keeps its scrape target
        metrics_port = old.rsplit(":", 1)[1].split("/")[0] if old and port else "0"
        url, password = split_password(redis_url)
        password = password or self.redis_password
        env = {**({TOKEN_ENV: self.token} if self.token else {}),
               **({PASSWORD_ENV: password} if password else {})}
        child = spawn(f"shard{index}", python_module(
            "paramserver", "--shard", str(index), "--num-shards", str(num_shards), "--port",
            str(port), "--redis", url, "--redis-prefix", prefix, "--metrics-port",
            metrics_port, *([] if self.token else [INSECURE_FLAG])), self.log_dir, env)
        self.children.append(child)
        if self.on_spawn is not None:
            self.on_spawn(child)
        return child

    @property
    def auth(self) -> ClusterAuth:
        """What a client of these shards calls them with."""
        return ClusterAuth(self.token)

    def revive_shards(self, num_shards: int, redis_url: str, prefix: str) -> None:
        """Restart any shard that died, on the same port, from its checkpoint."""
        for index, child in enumerate(self.shards):
            if child.alive():
                continue
            count_restart(child, self.restarts, MAX_RESTARTS)
            port = int(self.shard_addresses[index].rsplit(":", 1)[1])
            self.start_shard(index, num_shards, redis_url, prefix, port)

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
                      beta1=betas[0], beta2=betas[1], checkpoint_every=cfg.checkpoint_every,
                      staleness_rule=StalenessRule(cfg.staleness_rule), replicas=cfg.replicas)
