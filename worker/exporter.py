"""A worker node's exporter: ``python -m worker.exporter --port 9200``, started with the Ray node
in every worker container (docker-compose.yml's ``ray-worker-cpu`` and ``ray-worker-gpu``), so
that GPU metrics come from the machines that have the GPUs; Prometheus finds every replica by
the compose service's name (``dns_sd_configs``).

Exports this node's GPUs (``nas_worker_gpu_*``, one series per GPU: NVML through
``nvidia-ml-py`` when installed, else ``torch.cuda``) when it has any, and the exporter's own
process metrics (``process_*``) always: on a CPU node GPU series are absent, never a fake zero.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from protos.signals import StopOnSignal

log = logging.getLogger(__name__)


def _nvml() -> Any | None:
    """NVML's bindings, initialised; None without ``nvidia-ml-py`` or a driver."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return pynvml
    except Exception as exc:  # no package, no driver, no device: nothing to say
        log.debug("no NVML: %s", exc)
        return None


def gpu_stats(nvml: Any | None = None) -> dict[int, tuple[float, float]]:
    """Each GPU's (utilisation over the last sample period as a ratio in [0, 1], memory used in
    bytes); empty on a node without GPUs."""
    if nvml is not None:
        out = {}
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            used = float(nvml.nvmlDeviceGetMemoryInfo(handle).used)
            out[index] = (nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0, used)
        return out
    if not os.path.exists("/dev/nvidiactl"):  # no NVIDIA driver here: no torch import either
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    try:
        return {i: (float(torch.cuda.utilization(i)) / 100.0,
                    float(torch.cuda.device_memory_used(i)))
                for i in range(torch.cuda.device_count())}
    except (ImportError, ModuleNotFoundError, RuntimeError, AttributeError) as exc:
        log.debug("no GPU utilisation: %s", exc)  # torch without NVML bindings
        return {}


class GpuCollector(Collector):
    """This node's GPUs at scrape time (nothing on a node without GPUs)."""

    def __init__(self) -> None:
        self.nvml = _nvml()

    def collect(self) -> Iterator[Metric]:
        """``nas_worker_gpu_utilization_ratio`` and ``nas_worker_gpu_memory_used_bytes``."""
        stats = gpu_stats(self.nvml)
        if not stats:
            return
        util = GaugeMetricFamily("nas_worker_gpu_utilization_ratio", "Time a kernel ran on "
                                 "each GPU over the last sample period (NVML), 0-1",
                                 labels=["gpu"])
        memory = GaugeMetricFamily("nas_worker_gpu_memory_used_bytes", "Memory used on each "
                                   "GPU (NVML)", labels=["gpu"])
        for index, (ratio, used) in stats.items():
            util.add_metric([str(index)], ratio)
            memory.add_metric([str(index)], used)
        yield util
        yield memory


def serve(port: int, host: str = "0.0.0.0") -> str:
    """Serve this node's metrics on ``host:port`` (0: a free port) for as long as the process
    lives; the scrape URL."""
    registry = CollectorRegistry()
    registry.register(GpuCollector())
    ProcessCollector(registry=registry)
    server, _ = start_http_server(port, addr=host, registry=registry)
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    return f"http://{shown}:{server.server_port}/metrics"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or Ctrl-C; a bad or busy port exits 2 with one line."""
    p = argparse.ArgumentParser(prog="python -m worker.exporter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=9200, help="serve /metrics here (0: a free "
                   "port; default 9200)")
    p.add_argument("--host", default="0.0.0.0", help="interface (default 0.0.0.0)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"worker.exporter: error: --port: must be in [0, 65535], got {args.port}",
              file=sys.stderr)
        return 2
    with StopOnSignal() as stop:
        try:
            url = serve(args.port, args.host)
        except OSError as exc:
            print(f"worker.exporter: error: --port: {exc}", file=sys.stderr)
            return 2
        print(f"node exporter metrics {url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
