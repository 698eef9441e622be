"""The topology rendered for Docker Compose: ``docker-compose.yml`` and the Prometheus
configuration it mounts (``deploy/prometheus/prometheus.yml``). Both files are committed; a
test regenerates them and fails on any difference (``nas deploy compose --write``)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from nas.deploy.topology import (
    CPU_WORKER,
    GPU_WORKER,
    METRICS,
    NAS_CUDA_IMAGE,
    NAS_IMAGE,
    PASSWORD_ENV,
    RAY,
    RAY_OBJECT_STORE,
    Probe,
    Service,
    prometheus_config,
    services,
)

COMPOSE_FILE = "docker-compose.yml"
PROMETHEUS_FILE = "deploy/prometheus/prometheus.yml"
HEADER = ("# Generated from nas/deploy/topology.py by `nas deploy compose --write "
          "--shards {shards} --workers {workers}`:\n# do not edit by hand (a test regenerates "
          "it and fails on drift). Set NAS_REDIS_PASSWORD first (README: Cluster).\n")
PATHS = {"work": "/app/runs/service", "prometheus.yml": "/etc/prometheus/prometheus.yml",
         "prometheus-data": "/prometheus", "redis-data": "/data"}
DOCKERFILES = {NAS_IMAGE: "deploy/Dockerfile", NAS_CUDA_IMAGE: "deploy/Dockerfile.cuda"}
# what the images are built from: a base image and where torch comes from (a requirement, or a
# wheel copied into deploy/wheels/, as `make compose-test` does, with an empty index)
BUILD_ARGS = {
    NAS_IMAGE: {"BASE_IMAGE": "${NAS_BASE_IMAGE:-python:3.12-slim-bookworm}",
                "TORCH_SOURCE": "${NAS_TORCH_SOURCE:-torch==2.13.0}",
                "TORCH_INDEX": "${NAS_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"},
    NAS_CUDA_IMAGE: {
        "TORCH_SOURCE": "${NAS_CUDA_TORCH_SOURCE:-torch==2.13.0}",
        "TORCH_INDEX": "${NAS_CUDA_TORCH_INDEX-https://download.pytorch.org/whl/cu126}"},
}
VOLUMES = {
    "redis": ["redis-data:/data"],
    "ray-head": ["runs:/app/runs"],
    CPU_WORKER: ["runs:/app/runs"],  # children's weights go where the search service reads
    GPU_WORKER: ["runs:/app/runs"],
    "search": ["runs:/app/runs", "${NAS_DATA_DIR:-../shared/data}:/app/data:ro"],
    "prometheus": [f"./{PROMETHEUS_FILE}:/etc/prometheus/prometheus.yml:ro",
                   "prometheus-data:/prometheus"],
    "grafana": ["./deploy/grafana/provisioning:/etc/grafana/provisioning:ro",
                "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro",
                "grafana-data:/var/lib/grafana"],
}
GPU_RESERVATION = {"resources": {"reservations": {"devices": [
    {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}
# Ray 2.6x authenticates its nodes with a shared token (on by default from 2.61): every Ray
# container sets the same one, from $NAS_RAY_TOKEN, and no usage stats leave the cluster
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": "${NAS_RAY_TOKEN:?set NAS_RAY_TOKEN (README: Cluster)}"}


class ComposeTarget:
    """Containers: services bind 0.0.0.0 on their fixed ports and reach each other by name."""

    host = "0.0.0.0"  # inside a container: other containers must reach it
    ray_address: str | None

    def __init__(self, cluster: list[Service]) -> None:
        self._ports = {s.name: s.ports for s in cluster}
        self.ray_address = (f"ray-head:{self._ports['ray-head'][RAY]}"
                            if "ray-head" in self._ports else None)

    def port(self, service: str, name: str) -> int:
        """The service's fixed container port."""
        return self._ports[service][name]

    def address(self, service: str, name: str) -> str:
        """``service:port`` on the compose network."""
        return f"{service}:{self.port(service, name)}"

    def hostname(self, service: str) -> str:
        """The service's name on the compose network."""
        return service

    def path(self, name: str) -> str:
        """Container paths (volumes in ``VOLUMES``)."""
        return PATHS[name]

    def redis_url(self) -> str:
        """The compose Redis, database 0."""
        return f"redis://{self.address('redis', 'redis')}/0"


def healthcheck(service: Service, target: ComposeTarget) -> dict[str, Any]:
    """The compose healthcheck running the topology's probe inside the container."""
    probe: Probe = service.probe
    local = f"127.0.0.1:{target.port(service.name, probe.port)}" if probe.port in service.ports \
        else ""
    test: list[str]
    if probe.kind == "redis":
        # the password in redis-cli's environment (REDISCLI_AUTH), not on its command line
        test = ["CMD-SHELL", f'REDISCLI_AUTH="$${PASSWORD_ENV}" redis-cli ping | grep -q PONG']
    elif probe.kind == "grpc":
        test = ["CMD", "python", "-m", "nas.deploy.probe", "grpc", local]
    elif probe.kind == "metrics":
        test = ["CMD", "python", "-m", "nas.deploy.probe", "metrics",
                f"http://{local}/metrics"]
    elif probe.kind == "http":
        test = ["CMD", "wget", "-q", "-O", "/dev/null", f"http://{local}{probe.path}"]
    else:  # ray: the head's GCS answers
        test = ["CMD", "ray", "health-check", "--address", str(target.ray_address)]
    return {"test": test, "interval": "5s", "timeout": "5s", "retries": 30,
            "start_period": "10s"}


def _redis_command(args: list[str]) -> list[str]:
    """redis-server with its password in a config file the container writes from its
    environment (mode 0600, outside the data volume), so no command line holds it."""
    at = args.index("--requirepass")
    rest = args[:at] + args[at + 2:]
    return ["sh", "-c", f"umask 077 && printf 'requirepass \"%s\"\\n' \"$${PASSWORD_ENV}\" "
                        f"> /tmp/redis-auth.conf && exec redis-server /tmp/redis-auth.conf "
                        f"{shlex.join(rest)}"]


def _command(service: Service, target: ComposeTarget) -> list[str] | None:
    args = service.args(target)
    if not service.program:
        return None
    if service.program == "prometheus":  # the image's entrypoint is prometheus
        return args
    if service.program == "redis-server":
        return _redis_command(args)
    argv = [service.program, *args]
    if service.exporter:  # the node's exporter lives as long as the container
        port = target.port(service.name, METRICS)
        return ["sh", "-c", f"python -m worker.exporter --port {port} & exec {shlex.join(argv)}"]
    if service.joins_ray and target.ray_address:  # a Ray driver must run on a Ray node
        return ["sh", "-c", f"ray start --address={target.ray_address} --num-cpus=0 "
                            f"--num-gpus=0 {' '.join(RAY_OBJECT_STORE)} --disable-usage-stats "
                            f"&& exec {shlex.join(argv)}"]
    return argv


def compose_service(service: Service, target: ComposeTarget,
                    builds: bool = True) -> dict[str, Any]:
    """One service's compose entry; ``builds``: it builds its image (one service per image
    does, the others use the image it built)."""
    entry: dict[str, Any] = {"image": service.image}
    if service.profile:
        entry["profiles"] = [service.profile]
    if service.image in DOCKERFILES and builds:
        entry["build"] = {"context": ".", "dockerfile": DOCKERFILES[service.image],
                          "args": BUILD_ARGS[service.image]}
    command = _command(service, target)
    if command is not None:
        entry["command"] = command
    env = dict(service.env)
    if service.image in DOCKERFILES:
        env |= RAY_ENV | ({"NAS_DATA_DIR": "/app/data"} if service.name == "search" else {})
    if service.name == "grafana":
        env["GF_SECURITY_ADMIN_PASSWORD"] = "${GRAFANA_ADMIN_PASSWORD:-admin}"
    if env:
        entry["environment"] = env
    if service.published:
        entry["ports"] = [f"{service.ports[p]}:{service.ports[p]}" for p in service.published]
    if service.name in VOLUMES:
        entry["volumes"] = VOLUMES[service.name]
    if service.program == "ray" or service.joins_ray:
        entry["shm_size"] = "2gb"  # Ray's object store lives in /dev/shm
    if service.image == NAS_CUDA_IMAGE:
        entry["deploy"] = GPU_RESERVATION
    entry["healthcheck"] = healthcheck(service, target)
    if service.depends_on:
        entry["depends_on"] = {d: {"condition": "service_healthy"} for d in service.depends_on}
    entry["restart"] = "unless-stopped"
    return entry


def render_compose(shards: int = 2, workers: int = 4) -> str:
    """``docker-compose.yml`` for ``shards`` parameter servers and Ray workers training
    ``workers`` children at once ($NAS_WORKERS overrides it at ``docker compose up``)."""
    cluster = services(shards, workers)
    target = ComposeTarget(cluster)
    builders: dict[str, str] = {}  # image -> the first service using it, which builds it
    for s in cluster:
        builders.setdefault(s.image, s.name)
    doc = {"services": {s.name: compose_service(s, target, builders[s.image] == s.name)
                        for s in cluster},
           "volumes": {"redis-data": {}, "runs": {}, "prometheus-data": {},
                       "grafana-data": {}}}
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    return HEADER.format(shards=shards, workers=workers) + body


def render_prometheus(shards: int = 2, workers: int = 4) -> str:
    """The Prometheus configuration compose mounts: every service's metrics endpoint."""
    cluster = services(shards, workers)
    body = yaml.safe_dump(prometheus_config(cluster, ComposeTarget(cluster)), sort_keys=False)
    return (f"# Generated with {COMPOSE_FILE} from nas/deploy/topology.py; do not edit "
            f"by hand.\n{body}")


def write(root: Path, shards: int = 2, workers: int = 4) -> list[Path]:
    """Write both files under ``root`` (the repository); the paths written."""
    out = [(root / COMPOSE_FILE, render_compose(shards, workers)),
           (root / PROMETHEUS_FILE, render_prometheus(shards, workers))]
    for path, text in out:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return [path for path, _ in out]
