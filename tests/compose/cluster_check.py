"""The compose cluster for real (`make compose-test`, after deploy/compose-test.sh has started a
Docker engine and built the images): `docker compose up --wait` of every service but Grafana and
the GPU workers (two CPU Ray workers, the head offering no CPU, so children train on the
workers), then, through the published ports and the real CLI: a training job, a table job, every
Prometheus target up (each worker replica found by DNS), every dashboard panel's query answered
with data, a SIGKILL of the search container mid-job (the job resumes and SUCCEEDS with an exact
summary, nothing trained twice), `down`/`up` (jobs kept) and `down -v`.

Not collected by the normal suite (its name is not test_*.py): it needs the engine. The tests
run in file order (`-p no:randomly`), each a step of one scenario on one cluster.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "nas-compose-test"
LOGS = ROOT / "runs" / "compose-test" / "compose.log"  # the services' last lines, kept
ENDPOINT, PROMETHEUS = "127.0.0.1:50070", "http://127.0.0.1:9090"
CPU_WORKERS = 2
GPU_ONLY = {"nas_worker_gpu_utilization_ratio", "nas_worker_gpu_memory_used_bytes"}
TRAIN_SPEC = """\
space: enas-micro
strategy: reinforce
evaluator: train
dataset: fashion-mnist
budget: {budget}
epochs: 1
train_subset: 256
val_subset: 128
filters: 4
batch_size: 64
seed: {seed}
"""
TABLE_SPEC = """\
space: nb201
strategy: reinforce
evaluator: nb201
dataset: cifar10
budget: 30
seed: 3
"""
# keeps RUNNING through the panel check, training new cells (a latency objective makes each new
# cell cost a measured build) with two replicas pushing to the shards
BUSY_SPEC = """\
space: nb201
strategy: reinforce
controller: zoph-le
children: 2
evaluator: nb201
dataset: cifar10
budget: 2000
replicas: 2
seed: 11
objectives:
  - latency_ms:target=50
"""


@dataclass
class Cluster:
    """The running compose project: its environment and the jobs the steps submitted."""

    env: dict[str, str]
    tmp: Path
    jobs: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600) -> str:
        """``docker compose -p PROJECT ARGS``; its output (AssertionError if it failed)."""
        done = subprocess.run(["docker", "compose", "-p", PROJECT, *args], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"docker compose {' '.join(args)}:\n{done.stderr[-4000:]}"
        return done.stdout

    def up(self) -> None:
        """Every service but Grafana and the GPU workers, healthy (``--wait``). The Ray nodes
        first: the head offers no CPU here, and the search service refuses to start on a Ray
        cluster where no node fits a child."""
        scale = ("--scale", f"ray-worker-cpu={CPU_WORKERS}")
        self.compose("up", "-d", "--wait", *scale, *SERVICES[:-2])
        deadline = time.monotonic() + 120
        while (cpus := self.ray_cpus()) < CPU_WORKERS:
            assert time.monotonic() < deadline, f"Ray workers did not join: {cpus} CPUs"
            time.sleep(2)
        self.compose("up", "-d", "--wait", *scale, *SERVICES)

    def ray_cpus(self) -> float:
        """The CPUs of the Ray cluster, as its head sees them."""
        out = self.compose("exec", "-T", "ray-head", "python", "-c", "import ray; ray.init("
                           "address='auto', logging_level='ERROR'); "
                           "print(ray.cluster_resources().get('CPU', 0))")
        return float(out.strip().splitlines()[-1])

    def nas(self, *args: str) -> str:
        """The real CLI against the published search endpoint; its output."""
        done = subprocess.run([sys.executable, "-m", "nas", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"nas {' '.join(args)}: {done.stderr}"
        return done.stdout

    def submit(self, name: str, spec: str) -> str:
        path = self.tmp / f"{name}.yaml"
        path.write_text(spec)
        self.jobs[name] = self.nas("submit", str(path)).strip().splitlines()[-1]
        return self.jobs[name]

    def status(self, name: str) -> tuple[str, int, int, int, str]:
        """(state, trainings, budget, cache hits, reason) from ``nas status``."""
        lines = self.nas("status", self.jobs[name]).splitlines()
        m = re.search(r"trainings (\d+)/(\d+), running \d+, cache hits (\d+)", lines[1])
        assert m, lines
        reason = lines[-1].strip() if len(lines) > 2 and "best reward" not in lines[-1] else ""
        return lines[0], int(m[1]), int(m[2]), int(m[3]), reason

    def wait(self, name: str, until: str = "SUCCEEDED", trainings: int = 0,
             timeout: float = 600) -> tuple[str, int, int, int, str]:
        """Poll ``nas status`` until the job is in state ``until`` (or, with ``trainings``,
        RUNNING with at least that many)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(name)
            if (st[0] == until and not trainings) or (trainings and st[1] >= trainings):
                return st
            assert st[0] in ("PENDING", "RUNNING"), f"{name}: {st}"
            assert time.monotonic() < deadline, f"{name} after {timeout} s: {st}"
            time.sleep(2)


SERVICES = ["redis", "ray-head", "ray-worker-cpu", "paramserver-0", "paramserver-1",
            "search", "prometheus"]  # every service but Grafana and ray-worker-gpu


def _get(path: str, **query: str) -> Any:
    url = f"{PROMETHEUS}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    return answer["data"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {**os.environ, "NAS_REDIS_PASSWORD": secrets.token_hex(16),
           "NAS_RAY_TOKEN": secrets.token_hex(16), "NAS_CLUSTER_TOKEN": secrets.token_hex(16),
           "RAY_HEAD_CPUS": "0",  # children train on the CPU workers only
           "NAS_WORKERS": "2", "NAS_ENDPOINT": ENDPOINT}
    running = Cluster(env, tmp_path_factory.mktemp("compose"))
    assert os.path.isfile(Path(env.get("NAS_DATA_DIR", "")) / "nb201" / "nb201_merged.csv"), \
        "set NAS_DATA_DIR to the folder holding nb201/nb201_merged.csv (the table job's)"
    started = time.monotonic()
    try:
        running.up()
        print(f"\ncompose up --wait: {time.monotonic() - started:.0f} s", flush=True)
        yield running
    finally:
        LOGS.parent.mkdir(parents=True, exist_ok=True)
        with LOGS.open("w") as log:
            subprocess.run(["docker", "compose", "-p", PROJECT, "logs", "--no-color",
                            "--tail", "300"], cwd=ROOT, env=env, timeout=120, stdout=log,
                           stderr=subprocess.STDOUT)
        print(f"compose logs: {LOGS}")
        running.compose("down", "-v", "--remove-orphans")


def test_jobs_train_on_the_clusters_ray_and_read_the_table(cluster: Cluster) -> None:
    # Arrange / Act: a training job (children trained by Ray tasks on the CPU workers: the
    # head and the search service's node offer no CPU), a table job, a long-running job
    cluster.submit("train", TRAIN_SPEC.format(budget=6, seed=5))
    cluster.submit("table", TABLE_SPEC)
    cluster.submit("busy", BUSY_SPEC)
    table = cluster.wait("table", timeout=300)
    train = cluster.wait("train", timeout=600)
    # Assert
    assert table[:3] == ("SUCCEEDED", 30, 30), table
    assert train[:3] == ("SUCCEEDED", 6, 6), train
    # without --profile gpu nothing built or started the CUDA worker
    cuda = subprocess.run(["docker", "image", "inspect", "nas-service:cuda"], env=cluster.env,
                          capture_output=True, timeout=60)
    gpu = subprocess.run(["docker", "ps", "-aq", "--filter",
                          "label=com.docker.compose.service=ray-worker-gpu"], env=cluster.env,
                         capture_output=True, text=True, timeout=60)
    assert cuda.returncode != 0 and gpu.returncode == 0 and not gpu.stdout.strip()
    trained, _ = _succeeded(cluster, "train")
    assert len(trained) == 6 and len(set(trained)) == 6, trained


def test_every_prometheus_target_is_up_each_worker_replica_included(cluster: Cluster) -> None:
    deadline = time.monotonic() + 90
    while True:
        targets = _get("/api/v1/targets")["activeTargets"]
        jobs = sorted(t["labels"]["job"] for t in targets)
        down = [(t["scrapeUrl"], t["lastError"]) for t in targets if t["health"] != "up"]
        if not down and jobs.count("worker") == CPU_WORKERS:
            break
        assert time.monotonic() < deadline, f"targets {jobs}, not up: {down}"
        time.sleep(2)
    assert jobs == sorted(["paramserver"] * 2 + ["prometheus", "search"]
                          + ["worker"] * CPU_WORKERS), jobs
    workers = _get("/api/v1/query", query='up{job="worker"} == 1')["result"]
    assert len({r["metric"]["instance"] for r in workers}) == CPU_WORKERS
    # every Ray node (the search service's too) keeps its object store in shared memory
    logs = cluster.compose("logs", "--no-color", "ray-head", "ray-worker-cpu", "search")
    assert "Ray runtime started" in logs and "instead of /dev/shm" not in logs


def _panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc.get("panels", []):  # a collapsed row holds its panels
        yield panel
        yield from _panels(panel)


def _panel_queries() -> list[tuple[str, str]]:
    """(dashboard: panel, expr) of every panel target in deploy/grafana, read now."""
    out = []
    for path in sorted((ROOT / "deploy" / "grafana").rglob("*.json")):
        doc = json.loads(path.read_text())
        doc = doc.get("dashboard", doc)  # a dashboard, or an API envelope holding one
        for panel in _panels(doc):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"{path.name}: {panel.get('title', '')}", target["expr"]))
    return out


def test_every_dashboard_panel_query_returns_data(cluster: Cluster) -> None:
    # Arrange: the busy job is the drill-down's $job; rates need two scrapes (15 s apart)
    queries = [(where, expr.replace("$job", cluster.jobs["busy"])) for where, expr in
               _panel_queries()]
    assert len(queries) >= 30, queries
    gpu_panels = [(w, e) for w, e in queries if any(n in e for n in GPU_ONLY)]
    deadline = time.monotonic() + 150
    # Act: ask until every panel has data (a rate needs samples a minute apart)
    while True:
        empty = [where for where, expr in queries if (where, expr) not in gpu_panels
                 and all(r["value"][1] == "NaN"
                         for r in _get("/api/v1/query", query=expr)["result"])]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(5)
    # Assert: GPU panels are empty: no GPU worker runs here, and a CPU worker's exporter has
    # no GPU series (absent, never a fake zero)
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert gpu_panels, "no dashboard panel shows GPU metrics"
    for where, expr in gpu_panels:
        assert _get("/api/v1/query", query=expr)["result"] == [], where
    cluster.nas("cancel", cluster.jobs["busy"])


def _succeeded(cluster: Cluster, name: str) -> tuple[list[str], list[str]]:
    """The architectures of a job's succeeded trials: (trained, cache hits), from ``nas
    trials``'s columns TRIAL STATUS REWARD CACHED ARCH."""
    header, *rows = cluster.nas("trials", cluster.jobs[name], "--status",
                                "succeeded").splitlines()
    col = header.index("CACHED")
    arch = [(row[col:col + 6].strip() == "yes", row[col + 7:].strip()) for row in rows]
    return [a for hit, a in arch if not hit], [a for hit, a in arch if hit]


def test_a_sigkilled_search_container_resumes_its_job_exactly(cluster: Cluster) -> None:
    # Arrange: a training job mid-way
    cluster.submit("killed", TRAIN_SPEC.format(budget=6, seed=8))
    before = cluster.wait("killed", trainings=2, timeout=600)
    assert before[1] < 6, f"the job ended before the kill: {before}"
    # Act: SIGKILL the search container, then `up` again
    cid = cluster.compose("ps", "-q", "search").strip()
    subprocess.run(["docker", "kill", "--signal", "KILL", cid], env=cluster.env, check=True,
                   capture_output=True, timeout=60)
    cluster.up()
    state, trainings, budget, hits, reason = cluster.wait("killed", timeout=600)
    # Assert: the summary counts the whole job, before and after the kill, and no
    # architecture trained twice
    trained, cached = _succeeded(cluster, "killed")
    assert (state, trainings, budget) == ("SUCCEEDED", 6, 6)
    assert len(trained) == 6 and len(set(trained)) == 6, trained
    assert hits == len(cached), (hits, cached)
    assert reason == (f"budget: 6 trainings, {hits} cache hits, "
                      f"{len(set(trained + cached))} distinct architectures"), reason


def test_down_then_up_keeps_every_job(cluster: Cluster) -> None:
    cluster.compose("down")
    cluster.up()
    listed = cluster.nas("list")
    for name, job_id in cluster.jobs.items():
        assert job_id in listed, (name, listed)
    assert cluster.status("killed")[:3] == ("SUCCEEDED", 6, 6)
