"""The worker node's exporter (``python -m worker.exporter``), as every worker container runs it:
a real process serving Prometheus text, GPU series exactly where a GPU is."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from ports import free_port
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]


def _exporter(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "worker.exporter", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_exporter_serves_process_metrics_and_gpu_series_only_where_a_gpu_is() -> None:
    # Arrange
    proc = _exporter("--port", "0", "--host", "127.0.0.1")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"node exporter metrics (http://127\.0\.0\.1:\d+/metrics)", line)
        assert url, line + (proc.stderr.read() if proc.stderr else "")
        # Act
        with urllib.request.urlopen(url.group(1), timeout=30) as reply:
            text = reply.read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
    # Assert
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    # NVML (nvidia-ml-py, which the CUDA image installs; torch.cuda reads GPUs through it too)
    gpu = os.path.exists("/dev/nvidiactl") and importlib.util.find_spec("pynvml") is not None
    if gpu:
        assert {"nas_worker_gpu_utilization_ratio", "nas_worker_gpu_memory_used_bytes"} <= names
    else:  # absent, never a fake zero
        assert not any(n.startswith("nas_worker_gpu_") for n in names), names
    assert proc.returncode == 0  # SIGTERM: a clean stop


def test_a_bad_or_busy_port_exits_2_with_one_line() -> None:
    busy = free_port()
    holder = _exporter("--port", str(busy), "--host", "127.0.0.1")
    try:
        assert holder.stdout is not None and "metrics" in holder.stdout.readline()
        for port, word in (("70000", "must be in [0, 65535]"), (str(busy), "--port")):
            done = subprocess.run([sys.executable, "-m", "worker.exporter", "--port", port,
                                   "--host", "127.0.0.1"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 2, (port, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1 and word in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        holder.terminate()
        holder.wait(30)
