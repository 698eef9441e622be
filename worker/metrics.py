"""Prometheus metrics of a worker service (``nas_worker_*``), read at scrape time.

No per-trial or per-worker labels: one worker service per process, and Prometheus's
``instance`` label tells them apart. GPU utilisation is exported only where a GPU and NVML are
present (``torch.cuda.utilization``); on a CPU machine the series is absent, never a fake zero.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.service import WorkerService

log = logging.getLogger(__name__)


def gpu_utilization() -> dict[int, float]:
    """Each visible GPU's utilisation over the last sample period, as a ratio in [0, 1]; empty
    without CUDA or NVML (``nvidia-ml-py``)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    out: dict[int, float] = {}
    try:
        for index in range(torch.cuda.device_count()):
            out[index] = float(torch.cuda.utilization(index)) / 100.0
    except (ImportError, ModuleNotFoundError, RuntimeError) as exc:  # no NVML: nothing to say
        log.debug("no GPU utilisation: %s", exc)
        return {}
    return out


class WorkerCollector(Collector):
    """Busy and total slots of ``service``, the attempts it reported lost, and (``gpus``)
    the utilisation of this machine's GPUs."""

    def __init__(self, service: WorkerService, gpus: bool = True) -> None:
        self.service = service
        self.gpus = gpus

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
        if not self.gpus:
            return
        utilization = gpu_utilization()
        if utilization:
            family = GaugeMetricFamily("nas_worker_gpu_utilization_ratio",
                                       "Time a kernel ran on each GPU over the last sample "
                                       "period (NVML), 0-1", labels=["gpu"])
            for index, ratio in utilization.items():
                family.add_metric([str(index)], ratio)
            yield family


def serve_metrics(service: WorkerService, port: int, host: str = "0.0.0.0") -> str:
    """Serve the service's and this process's metrics on ``host:port`` (0: a free port) for
    as long as the process lives; the scrape URL."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(service))
    ProcessCollector(registry=registry)
    server, _ = start_http_server(port, addr=host, registry=registry)
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    return f"http://{shown}:{server.server_port}/metrics"
