"""Prometheus metrics of one shard server, on its own registry (several servers may share a
process in tests). Every metric carries only a ``shard`` label: never a layout or replica id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from paramserver.shard import PushResult
from protos.errors import FailedPreconditionError, InvalidArgumentError

STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


class ShardMetrics:
    """The ``nas_ps_*`` metrics of shard ``shard``, registered on ``self.registry``."""

    def __init__(self, shard: int) -> None:
        self.registry = CollectorRegistry()
        label = {"shard": str(shard)}

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["shard"], registry=self.registry).labels(**label)

        def histogram(name: str, doc: str,
                      buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS) -> Histogram:
            return Histogram(name, doc, ["shard"], registry=self.registry,
                             buckets=buckets).labels(**label)

        self.pushes = counter("nas_ps_pushes_total", "Pushes accepted (applied or pending)")
        self.scaled = counter("nas_ps_pushes_scaled_total",
                              "Async pushes staler than K applied with a scaled-down learning "
                              "rate (staleness rule scale)")
        rejected = Counter("nas_ps_push_rejected_total", "Pushes rejected, by reason",
                           ["shard", "reason"], registry=self.registry)
        self.rejected_stale = rejected.labels(reason="stale", **label)
        self.rejected_invalid = rejected.labels(reason="invalid", **label)
        self.duplicates = counter("nas_ps_push_duplicates_total",
                                  "Pushes already seen (replica id, seq): nothing changed")
        self.checkpoints = counter("nas_ps_checkpoints_total", "Layout checkpoints written")
        self.version = Gauge("nas_ps_version", "Latest version applied on this shard", ["shard"],
                             registry=self.registry).labels(**label)
        self.staleness = histogram("nas_ps_staleness_versions",
                                   "version - base_version of accepted async pushes",
                                   buckets=STALENESS_BUCKETS)
        self.push_seconds = histogram("nas_ps_push_seconds", "Push handling time")
        self.pull_seconds = histogram("nas_ps_pull_seconds",
                                      "Pull handling time, including min_version waits")

    def record_push(self, result: PushResult) -> None:
        """Count an accepted or duplicate push."""
        if result.duplicate:
            self.duplicates.inc()
            return
        self.pushes.inc()
        if result.staleness is not None:
            self.staleness.observe(result.staleness)
        if result.lr_scale < 1.0:
            self.scaled.inc()
        if result.applied:
            self.version.set(result.version)

    @contextmanager
    def time_push(self) -> Iterator[None]:
        """Time a push and count it as rejected when it raises (invalid or stale)."""
        begin = time.perf_counter()
        try:
            yield
        except InvalidArgumentError:
            self.rejected_invalid.inc()
            raise
        except FailedPreconditionError:
            self.rejected_stale.inc()
            raise
        finally:
            self.push_seconds.observe(time.perf_counter() - begin)
