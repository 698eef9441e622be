"""The deployment: docker-compose.yml and prometheus.yml generated from the one topology (drift,
offline validation with Debian's docker-compose and promtool), and `nas up` / `nas down` running
the same topology as real local processes with a job submitted through the printed endpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from conftest import cmdlines, descendants
from ports import free_port

from controller.service.client import SearchClient
from nas.deploy.compose import (
    COMPOSE_FILE,
    PROMETHEUS_FILE,
    render_compose,
    render_prometheus,
)
from nas.deploy.local import UpError, expand, start_time
from nas.deploy.probe import metrics_text
from nas.deploy.topology import PROMETHEUS_IMAGE, REDIS_IMAGE, services

ROOT = Path(__file__).resolve().parents[1]
UP_TIMEOUT_S = 150.0
JOB_TIMEOUT_S = 90.0
SPEC = """\
space: nb201
strategy: reinforce
evaluator: nb201
dataset: cifar10
budget: 8
seed: 4
replicas: 2
"""


def _nas(*args: str, env: dict[str, str] | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_committed_compose_and_prometheus_files_are_generated_from_the_topology() -> None:
    # Arrange / Act
    compose, prometheus = render_compose(), render_prometheus()
    # Assert: regenerate with `nas deploy compose --write` after changing the topology
    assert (ROOT / COMPOSE_FILE).read_text() == compose, "docker-compose.yml drifted"
    assert (ROOT / PROMETHEUS_FILE).read_text() == prometheus, "prometheus.yml drifted"
    doc = yaml.safe_load(compose)["services"]
    assert list(doc) == [s.name for s in services()]
    redis_command = doc["redis"]["command"]
    assert redis_command[:2] == ["sh", "-c"] and "--appendonly yes" in redis_command[2]
    assert "requirepass" in redis_command[2] and "--requirepass" not in redis_command[2]
    for name, entry in doc.items():
        assert entry["healthcheck"]["test"], name
        for dep, cond in entry.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, (name, dep)
    search = " ".join(doc["search"]["command"])
    assert "--paramservers paramserver-0:50051,paramserver-1:50051" in search
    assert "--metrics-port 9108" in search and "--ray-address ray-head:6379" in search
    scraped = yaml.safe_load(prometheus)["scrape_configs"]
    assert {j["job_name"]: j["static_configs"][0]["targets"] for j in scraped[:-1]} == {
        "paramserver": ["paramserver-0:9100", "paramserver-1:9100"],
        "search": ["search:9108"], "prometheus": ["prometheus:9090"]}


def test_gpu_workers_are_opt_in_and_every_worker_container_exports_its_node() -> None:
    # Arrange / Act
    doc = yaml.safe_load(render_compose())["services"]
    scraped = yaml.safe_load(render_prometheus())["scrape_configs"]
    # Assert: the GPU worker (Dockerfile.cuda) only with --profile gpu; a CPU worker by default
    gpu, cpu = doc["ray-worker-gpu"], doc["ray-worker-cpu"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in cpu
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in cpu and cpu["image"] == "nas-service:cpu"
    assert [n for n, e in doc.items() if e.get("profiles")] == ["ray-worker-gpu"]
    # each image is built by one service only, from build arguments (base image, torch)
    builders = {e["image"]: n for n, e in doc.items() if "build" in e}
    assert builders == {"nas-service:cpu": "ray-head", "nas-service:cuda": "ray-worker-gpu"}
    assert set(doc["ray-head"]["build"]["args"]) == {"BASE_IMAGE", "TORCH_SOURCE",
                                                     "TORCH_INDEX"}
    # the node exporter runs beside the Ray node; Prometheus finds every replica by DNS
    for entry in (gpu, cpu):
        assert entry["command"][:2] == ["sh", "-c"]
        assert entry["command"][2].startswith("python -m worker.exporter --port 9200 & exec "
                                              "ray start --address ray-head:6379")
    worker = scraped[-1]
    assert worker == {"job_name": "worker", "dns_sd_configs": [
        {"names": [name], "type": "A", "port": 9200, "refresh_interval": "15s"}
        for name in ("ray-worker-cpu", "ray-worker-gpu")]}
    # every Ray node has shared memory for its object store, the search service's too
    assert all(doc[n]["shm_size"] == "2gb" for n in ("ray-head", "ray-worker-cpu",
                                                      "ray-worker-gpu", "search"))


def test_the_compose_test_builds_stand_ins_under_the_compose_files_image_names() -> None:
    script = (ROOT / "deploy" / "compose-test.sh").read_text()
    images = {e["image"] for e in yaml.safe_load(render_compose())["services"].values()}
    assert {REDIS_IMAGE, PROMETHEUS_IMAGE} <= images
    assert f"standin {REDIS_IMAGE} redis" in script
    assert f"standin {PROMETHEUS_IMAGE} prometheus" in script
    assert "make compose-test" in (ROOT / ".ci" / "run").read_text()


def test_compose_file_validates_offline_and_needs_the_redis_password() -> None:
    # Arrange
    env = {**os.environ, "NAS_REDIS_PASSWORD": "0123abcd", "NAS_RAY_TOKEN": "4567ef",
           "NAS_CLUSTER_TOKEN": "89abcdef"}
    env.pop("NAS_DATA_DIR", None)
    # Act
    ok = subprocess.run(["docker-compose", "-f", COMPOSE_FILE, "config", "-q"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=60)
    profiles = subprocess.run(["docker-compose", "-f", COMPOSE_FILE, "config", "--profiles"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    env.pop("NAS_REDIS_PASSWORD")
    refused = subprocess.run(["docker-compose", "-f", COMPOSE_FILE, "config", "-q"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=60)
    # Assert
    assert ok.returncode == 0, ok.stderr
    # one opt-in profile (the GPU workers: test above); without it `up` builds no CUDA image
    assert profiles.stdout.split() == ["gpu"], profiles.stdout + profiles.stderr
    assert refused.returncode != 0
    assert "set NAS_REDIS_PASSWORD" in refused.stderr
    env.update(NAS_REDIS_PASSWORD="0123abcd")
    env.pop("NAS_RAY_TOKEN")
    no_token = subprocess.run(["docker-compose", "-f", COMPOSE_FILE, "config", "-q"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
    assert no_token.returncode != 0 and "set NAS_RAY_TOKEN" in no_token.stderr
    env.update(NAS_RAY_TOKEN="4567ef")
    env.pop("NAS_CLUSTER_TOKEN")
    no_cluster_token = subprocess.run(["docker-compose", "-f", COMPOSE_FILE, "config", "-q"],
                                      cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=60)
    assert no_cluster_token.returncode != 0
    assert "set NAS_CLUSTER_TOKEN" in no_cluster_token.stderr


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    checked = subprocess.run(["promtool", "check", "config", PROMETHEUS_FILE], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_topology_variables_are_substituted_as_compose_does() -> None:
    values = {"NAS_REDIS_PASSWORD": "pw"}
    assert expand("a=${NAS_REDIS_PASSWORD:?set it}", values) == "a=pw"
    assert expand("${NAS_WORKERS:-4}", values) == "4"
    with pytest.raises(UpError, match=r"\$NAS_WORKERS: not set \(set it\)"):
        expand("${NAS_WORKERS:?set it}", {})


def test_bad_flags_exit_2_with_one_line(tmp_path: Path) -> None:
    for args, flag in ((["up", "--shards", "0", "--dir", str(tmp_path)], "--shards"),
                       (["up", "--workers", "-1", "--dir", str(tmp_path)], "--workers"),
                       (["down", "--dir", str(tmp_path)], "--dir"),
                       (["deploy", "compose", "--shards", "0"], "--shards")):
        done = _nas(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and flag in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def _read_until_up(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("cluster up"):
            return lines
    raise AssertionError(f"nas up did not come up: {lines}\n{proc.stderr and proc.stderr.read()}")


def _prometheus_up(url: str, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # a scrape every 2 s
        with urllib.request.urlopen(f"{url}/api/v1/query?query=up", timeout=5) as reply:
            result = json.loads(reply.read())["data"]["result"]
        if len(result) == expected and all(r["value"][1] == "1" for r in result):
            break
        time.sleep(0.5)
    return result


def test_nas_up_runs_the_topology_a_job_and_nas_down_stops_every_process(
        tmp_path: Path, nb201_csv: Path) -> None:
    # Arrange: a relative --dir, as the README writes it
    run = tmp_path / "runs" / "cluster"
    env = {**os.environ, "NAS_NB201_CSV": str(nb201_csv),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get(
               "PYTHONPATH")])])}
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    up = subprocess.Popen([sys.executable, "-m", "nas", "up", "--shards", "2",
                           "--workers", "0", "--dir", "runs/cluster", "--prometheus"],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    try:
        # Act
        lines = _read_until_up(up)
        text = "\n".join(lines)
        endpoint = re.search(r"^export NAS_ENDPOINT=(\S+)$", text, re.M)
        metrics = re.findall(r"http://127\.0\.0\.1:\d+/metrics", text)
        prometheus = re.search(r"^prometheus\s+http (http://127\.0\.0\.1:\d+)$", text, re.M)
        assert endpoint and prometheus, text
        cluster = json.loads((run / "cluster.json").read_text())
        commands = cmdlines(descendants(up.pid))
        again = _nas("up", "--dir", str(run), env=env)
        submitted = _nas("submit", str(spec), "--endpoint", endpoint.group(1), env=env)
        assert submitted.returncode == 0, submitted.stderr
        job = submitted.stdout.strip().splitlines()[-1]
        with SearchClient(endpoint.group(1)) as client:
            client.wait(job, JOB_TIMEOUT_S)
        status = _nas("status", job, "--endpoint", endpoint.group(1), env=env)
        scraped = _prometheus_up(prometheus.group(1), len(metrics))
        bodies = {url: metrics_text(url) for url in metrics}
    finally:
        down = _nas("down", "--dir", str(run), env=env)
        up.wait(60)
    # Assert: the local processes are the topology's (Ray and Grafana are compose-only)
    assert set(cluster["services"]) | set(cluster["skipped"]) == {s.name for s in
                                                                  services(2, 0)}
    assert set(cluster["skipped"]) == {"grafana"}
    secrets = (cluster["redis_password"], cluster["cluster_token"])
    assert len(commands) >= 5 and not [c for c in commands if any(s in c for s in secrets)]
    assert len(metrics) == 3  # two shards and the search service
    assert again.returncode == 2 and "--dir: a cluster already runs" in again.stderr
    assert status.stdout.startswith("SUCCEEDED\n  trainings 8/8"), status.stdout + status.stderr
    assert all("nas_ps_" in body for url, body in bodies.items()
               if url in cluster["services"]["paramserver-0"]["endpoints"].values())
    assert all("# TYPE" in body for body in bodies.values())
    assert sorted(r["metric"]["instance"] for r in scraped) == sorted(
        u.removeprefix("http://").removesuffix("/metrics") for u in metrics)
    assert down.returncode == 0, down.stderr
    assert up.returncode == 0
    pids = [cluster["pid"], *(s["pid"] for s in cluster["services"].values())]
    assert all(start_time(pid) == "" for pid in pids), "orphans left"
    assert not (run / "cluster.json").exists()


def test_the_compose_redis_reads_its_password_from_the_environment_not_its_command_line(
        tmp_path: Path) -> None:
    """The compose file's redis command, run for real (paths and port moved to this test's):
    the server asks for the password from $NAS_REDIS_PASSWORD and no command line holds it."""
    command = yaml.safe_load(render_compose())["services"]["redis"]["command"]
    port, password = free_port(), "pw-only-in-the-environment"
    script = (command[2].replace("$$", "$").replace("/tmp/redis-auth.conf",
                                                    str(tmp_path / "auth.conf"))
              .replace("--dir /data", f"--dir {tmp_path}")
              .replace("--port 6379 --bind 0.0.0.0", f"--port {port} --bind 127.0.0.1"))
    proc = subprocess.Popen(["sh", "-c", script], env={**os.environ,
                                                       "NAS_REDIS_PASSWORD": password})
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=5)
        for _ in range(100):
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).get("x")
        assert (tmp_path / "auth.conf").stat().st_mode & 0o077 == 0
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"redis-server" in cmdline and password.encode() not in cmdline
    finally:
        proc.terminate()
        proc.wait(timeout=10)
