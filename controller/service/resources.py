"""What the search service's jobs run on, as the job runner sees it: parameter-server shards
for a job's policy, workers for its children, and the process's metrics registry.

The composition root provides it (``nas.cluster.ServiceCluster`` starts or dials the shards
and a Ray worker pool); the controller only uses this interface, so it imports neither the
worker nor the parameter server.
"""

from __future__ import annotations

from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry

from controller.config import SearchConfig
from controller.distributed.metrics import ReplicaMetricsServer
from controller.distributed.ps_client import ShardedParameterClient
from controller.evaluators.base import Evaluator
from protos.types import LayoutSpec


class JobCluster(Protocol):
    """Shards and workers shared by a service's jobs."""

    registry: CollectorRegistry              # the service's metrics
    replica_metrics: ReplicaMetricsServer    # the replicas' pushes, pulls and staleness
    addresses: list[str]                     # the parameter-server shards (none: in-process)
    replica_hosts: list[str]                 # replica hosts (none: replicas are threads here)

    @property
    def has_paramservers(self) -> bool:
        """Whether jobs' policies live on parameter servers."""

    @property
    def worker_slots(self) -> int:
        """Children the workers train at once (0: the job's thread trains them)."""

    def check_job(self, cfg: SearchConfig) -> None:
        """ConfigError naming a setting the job asks for that this cluster cannot give."""

    def evaluator(self, cfg: SearchConfig, local: Evaluator, tenant: str = "") -> Evaluator:
        """The job's evaluator: ``local``, or its children handed to the workers."""

    def parameter_client(self, layout: LayoutSpec) -> ShardedParameterClient:
        """A client of the shards for one job's layout."""

    def host_channel(self, address: str) -> grpc.Channel:
        """A channel to a replica host, carrying the cluster token."""

    def forget_job(self, job_id: str) -> int:
        """A job ended: drop what the workers keep of its trials; how many."""
