"""A ParameterUpdater whose parameters live on parameter-server shards: ``apply`` pushes the
gradient (stamped with the replica id, a sequence number and the versions it was computed
from) and pulls the current values back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from controller.distributed.metrics import ReplicaMetrics
from controller.distributed.ps_client import ShardedParameterClient
from controller.policy.updaters import ParameterUpdater
from protos.errors import DeadlineExceededError, FailedPreconditionError
from protos.types import UpdatePolicy


@dataclass
class ReplicaStats:
    """What one replica saw of the shards."""

    pushes: int = 0
    rejected_stale: int = 0
    duplicates: int = 0
    staleness: list[int] = field(default_factory=list)  # other updates between pull and push
    push_seconds: list[float] = field(default_factory=list)
    pull_seconds: list[float] = field(default_factory=list)


class RemoteUpdater(ParameterUpdater):
    """Pushes to and pulls from the shards of ``client``'s layout."""

    def __init__(self, params: Sequence[nn.Parameter], client: ShardedParameterClient,
                 replica_id: str, sync_wait: float = 30.0,
                 metrics: ReplicaMetrics | None = None) -> None:
        self.params = list(params)
        self.client = client
        self.replica_id = replica_id
        self.sync = client.layout.policy is UpdatePolicy.SYNC
        self.sync_wait = sync_wait
        self.seq = 0
        self.base_versions = [0] * client.layout.num_shards
        self.stats = ReplicaStats()
        self.metrics = metrics
        self.version = 0
        self.refresh()

    def refresh(self, min_versions: Sequence[int] | None = None) -> int:
        """Pull the current values into the policy; return the version."""
        start = time.perf_counter()
        try:
            values, versions = self.client.pull(min_versions)
        except DeadlineExceededError:  # a sync round other replicas never completed
            values, versions = self.client.pull()
        self.stats.pull_seconds.append(time.perf_counter() - start)
        if self.metrics is not None:
            self.metrics.pull_seconds.observe(self.stats.pull_seconds[-1])
        nn.utils.vector_to_parameters(torch.from_numpy(values), self.params)
        self.base_versions = versions
        self.version = max(self.version, min(versions))
        return self.version

    def apply(self, grads: Sequence[Tensor]) -> int:
        flat = nn.utils.parameters_to_vector([g.detach() for g in grads]).numpy()
        self.seq += 1
        start = time.perf_counter()
        wait_for: list[int] | None = None
        try:
            outcome = self.client.push(self.replica_id, self.seq, self.base_versions, flat)
        except FailedPreconditionError:
            self.stats.rejected_stale += 1  # too stale: drop it and re-pull
            if self.metrics is not None:
                self.metrics.rejected.inc()
        else:
            self.stats.pushes += 1
            self.stats.duplicates += sum(outcome.duplicate)
            self.stats.push_seconds.append(time.perf_counter() - start)
            # updates by other replicas between our pull and our push, on the worst shard
            behind = [v - 1 - b for v, b, applied in zip(outcome.versions, self.base_versions,
                                                         outcome.applied, strict=True) if applied]
            self.stats.staleness.append(max(behind, default=0))
            if self.metrics is not None:
                self.metrics.pushes.inc()
                self.metrics.push_seconds.observe(self.stats.push_seconds[-1])
                self.metrics.staleness.observe(self.stats.staleness[-1])
            if self.sync:
                wait_for = [b + 1 for b in self.base_versions]
        return self.refresh(wait_for)
