"""Prometheus metrics of a worker service (``nas_worker_*``), read at scrape time.

No per-trial or per-worker labels: one worker service per process, and Prometheus's
``instance`` label tells them apart. GPU metrics come from the machine that has the GPUs:
``worker.exporter`` in every worker container, and ``nas serve worker --metrics-port`` (a worker
service on a GPU machine) adds the same collector; the search service, which runs a worker
service but no GPU, exports none.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.exporter import GpuCollector
from worker.service import WorkerService


class WorkerCollector(Collector):
    """Busy and total slots of ``service`` and the attempts it reported lost."""

    def __init__(self, service: WorkerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        """The service's state as Prometheus families."""
        running, slots = len(self.service.scheduler.running()), self.service.slots()
        yield GaugeMetricFamily("nas_worker_slots_busy", "Children training here now",
                                value=min(running, slots))
        yield GaugeMetricFamily("nas_worker_slots", "Children this worker may train at once "
                                "(its cluster's capacity, capped by --slots)",
                                value=slots)
        yield GaugeMetricFamily("nas_worker_attempts_prefetched", "Short attempts queued "
                                "here behind a running one (prefetched)",
                                value=max(0, running - slots))
        yield CounterMetricFamily("nas_worker_attempts_lost", "Attempts whose process died, "
                                  "reported to the controller for a retry",
                                  value=self.service.lost_reported)


def serve_metrics(service: WorkerService, port: int, host: str = "0.0.0.0") -> str:
    """Serve the service's and this process's metrics on ``host:port`` (0: a free port) for
    as long as the process lives; the scrape URL."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(service))
    registry.register(GpuCollector())  # this machine's GPUs, if any
    ProcessCollector(registry=registry)
    server, _ = start_http_server(port, addr=host, registry=registry)
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    return f"http://{shown}:{server.server_port}/metrics"
