"""Prometheus metrics of controller replicas (``nas_replica_*``; labelled by replica index
only, never by job, trial or replica id). One registry per process, shared by its replicas."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STALENESS_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ReplicaMetrics:
    """One replica's labelled metrics."""

    pushes: Counter
    rejected: Counter
    push_seconds: Histogram
    pull_seconds: Histogram
    staleness: Histogram


class ReplicaMetricsServer:
    """The metric families of this process, optionally served on ``/metrics``."""

    def __init__(self, port: int | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._pushes = Counter("nas_replica_pushes", "Gradient pushes accepted by the shards",
                               ["replica"], registry=r)
        self._rejected = Counter("nas_replica_pushes_rejected_stale",
                                 "Pushes the shards rejected as too stale", ["replica"],
                                 registry=r)
        self._push = Histogram("nas_replica_push_seconds", "Push latency (all shards)",
                               ["replica"], buckets=LATENCY_BUCKETS, registry=r)
        self._pull = Histogram("nas_replica_pull_seconds", "Pull latency (all shards)",
                               ["replica"], buckets=LATENCY_BUCKETS, registry=r)
        self._staleness = Histogram("nas_replica_staleness_versions",
                                    "Updates by other replicas between a pull and the push",
                                    ["replica"], buckets=STALENESS_BUCKETS, registry=r)
        self.port: int | None = None
        if port is not None:
            server, _ = start_http_server(port, addr="127.0.0.1", registry=r)
            self.port = int(server.server_port)

    def replica(self, index: int) -> ReplicaMetrics:
        """The metrics of replica ``index``."""
        label = {"replica": str(index)}
        return ReplicaMetrics(self._pushes.labels(**label), self._rejected.labels(**label),
                              self._push.labels(**label), self._pull.labels(**label),
                              self._staleness.labels(**label))
