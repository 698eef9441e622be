"""The one definition of the cluster: every service, its command, ports, health probe and
dependencies. ``compose`` renders it as ``docker-compose.yml`` (fixed ports, service names as
hosts) and ``local`` runs it as processes on 127.0.0.1 (``nas up``, free ports), so the two
cannot drift: both ask a ``Target`` the few things that differ (where a service listens, how
another reaches it, where its files live)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

GRPC, METRICS, TRIALS, HTTP, REDIS, RAY = "grpc", "metrics", "trials", "http", "redis", "ray"
REDIS_PREFIX = "nas"
SHARD_PREFIX = f"{REDIS_PREFIX}:ps"  # what the service's own shards use, so checkpoints match


class Target(Protocol):
    """What differs between compose and local processes; everything else is the topology's."""

    host: str  # the interface servers bind: 0.0.0.0 in a container, 127.0.0.1 locally

    def port(self, service: str, name: str) -> int:
        """The port ``service`` binds for ``name`` (0 locally: a free one, reported back)."""

    def address(self, service: str, name: str) -> str:
        """``host:port`` at which other services reach ``service``'s ``name`` port."""

    def path(self, name: str) -> str:
        """Where a file or folder of the cluster lives (``work``, ``prometheus.yml``, ...)."""

    def redis_url(self) -> str:
        """The cluster Redis, without its password."""

    def hostname(self, service: str) -> str:
        """The name other services reach ``service`` by."""

    @property
    def ray_address(self) -> str | None:
        """The Ray cluster's GCS, or None for the search service's private local Ray."""


@dataclass(frozen=True)
class Probe:
    """How a service's health is checked; compose's healthcheck and ``nas up`` use the same.

    ``kind``: ``grpc`` (the standard gRPC health service), ``metrics`` (``/metrics`` answers
    Prometheus text), ``redis`` (PING with the password), ``http`` (GET ``path`` answers 200),
    ``ray`` (the Ray GCS answers)."""

    kind: str
    port: str
    path: str = ""


@dataclass(frozen=True)
class Service:
    """One service of the cluster.

    ``program`` runs ``args(target)``: ``nas`` (this project's CLI), or another program
    (``redis-server``, ``prometheus``, ``ray``; grafana has none). ``ports`` are the container
    ports by name; ``ready`` maps a port name to the regex of the log line holding the bound
    ``host:port`` (locally ports are free ones, read back from the log). ``local`` is None when
    ``nas up`` runs the service, else why it does not."""

    name: str
    program: str
    image: str
    ports: dict[str, int]
    args: Callable[[Target], list[str]]
    probe: Probe
    depends_on: tuple[str, ...] = ()
    ready: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    local: str | None = None
    published: tuple[str, ...] = ()  # ports compose maps to the host (the user's entry points)
    joins_ray: bool = False  # in compose, joins the Ray cluster as a node (a Ray driver must)
    scalable: bool = False  # compose may run many replicas (Prometheus finds them by DNS)
    profile: str = ""  # compose starts it only with ``--profile PROFILE`` (opt-in)
    exporter: bool = False  # runs ``python -m worker.exporter`` on its METRICS port beside it


NAS_IMAGE, NAS_CUDA_IMAGE = "nas-service:cpu", "nas-service:cuda"
CPU_WORKER, GPU_WORKER, GPU_PROFILE = "ray-worker-cpu", "ray-worker-gpu", "gpu"
EXPORTER_PORT = 9200  # every worker container's node exporter (GPU or process metrics)
REDIS_IMAGE = "redis:7-alpine"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.0"
GRAFANA_IMAGE = "grafana/grafana-oss:11.1.0"

# compose-style variables: compose interpolates them, ``nas up`` substitutes its own values
PASSWORD = "${NAS_REDIS_PASSWORD:?set NAS_REDIS_PASSWORD (README: Cluster)}"
PASSWORD_ENV = "NAS_REDIS_PASSWORD"
# the cluster token every internal RPC carries (shards, TrialReport); in the environment only
TOKEN = "${NAS_CLUSTER_TOKEN:?set NAS_CLUSTER_TOKEN (README: Cluster)}"
TOKEN_ENV = "NAS_CLUSTER_TOKEN"

SHARD_READY = r"listening on (\S+:\d+)"
SHARD_METRICS_READY = r"listening on \S+ metrics https?://(\S+:\d+)/metrics"


def shard_name(index: int) -> str:
    """The service name of parameter-server shard ``index`` (one service per shard: each
    needs its own ``--shard`` index and a stable address)."""
    return f"paramserver-{index}"


def _redis(t: Target) -> list[str]:
    return ["--appendonly", "yes", "--requirepass", PASSWORD, "--save", "",
            "--dir", t.path("redis-data"), *_redis_listen(t)]


def _redis_listen(t: Target) -> list[str]:
    port = t.port("redis", REDIS)
    if port:
        return ["--port", str(port), "--bind", t.host]
    return ["--port", "0", "--unixsocket", t.path("redis.sock"), "--unixsocketperm", "700"]


def _shard(index: int, shards: int) -> Callable[[Target], list[str]]:
    def args(t: Target) -> list[str]:
        name = shard_name(index)
        return ["serve", "paramserver", "--shard", str(index), "--num-shards", str(shards),
                "--host", t.host, "--port", str(t.port(name, GRPC)),
                "--metrics-port", str(t.port(name, METRICS)),
                "--redis", t.redis_url(),  # its password: $NAS_REDIS_PASSWORD (Service.env)
                "--redis-prefix", SHARD_PREFIX]
    return args


def _search(shards: int, workers: int) -> Callable[[Target], list[str]]:
    def args(t: Target) -> list[str]:
        # the password and the cluster token come from the environment (Service.env), not
        # the command line
        argv = ["serve", "search", "--host", t.host, "--port", str(t.port("search", GRPC)),
                "--redis", t.redis_url(), "--redis-prefix", REDIS_PREFIX,
                "--work-dir", t.path("work"),
                "--paramservers", ",".join(t.address(shard_name(i), GRPC)
                                           for i in range(shards)),
                "--metrics-port", str(t.port("search", METRICS))]
        if workers:
            argv += ["--workers", f"${{NAS_WORKERS:-{workers}}}",
                     "--trial-host", t.hostname("search"),
                     "--trial-port", str(t.port("search", TRIALS))]
            if t.ray_address:
                argv += ["--ray-address", t.ray_address]
        return argv
    return args


def _prometheus(t: Target) -> list[str]:
    return [f"--config.file={t.path('prometheus.yml')}",
            f"--storage.tsdb.path={t.path('prometheus-data')}",
            f"--web.listen-address={t.host}:{t.port('prometheus', HTTP)}"]


# every Ray node's object store fits its 2 GB of shared memory (compose's shm_size): a larger
# one (Ray's default: 30% of the host's memory) makes Ray fall back to /tmp
RAY_OBJECT_STORE = ["--object-store-memory", "${NAS_RAY_OBJECT_STORE_BYTES:-1500000000}"]


def _ray_head(t: Target) -> list[str]:
    return ["start", "--head", "--port", str(t.port("ray-head", RAY)), "--num-cpus",
            "${RAY_HEAD_CPUS:-2}", *RAY_OBJECT_STORE, "--include-dashboard", "false",
            "--disable-usage-stats", "--block"]


def _ray_worker(t: Target) -> list[str]:
    return ["start", "--address", t.address("ray-head", RAY), *RAY_OBJECT_STORE,
            "--disable-usage-stats", "--block"]


def services(shards: int = 2, workers: int = 4) -> list[Service]:
    """The cluster: Redis, ``shards`` parameter servers, the search service, Prometheus and
    Grafana, plus a Ray head, scalable CPU Ray workers and (opt-in: the ``gpu`` profile)
    scalable GPU Ray workers when ``workers`` > 0, each worker with its node exporter; in start
    order (every service after what it depends on)."""
    if shards < 1:
        raise ValueError(f"shards: must be >= 1, got {shards}")
    if workers < 0:
        raise ValueError(f"workers: must be >= 0, got {workers}")
    no_ray = ("the search service starts a private local Ray with --workers W"
              if workers else "no Ray without workers")
    out = [Service("redis", "redis-server", REDIS_IMAGE, {REDIS: 6379}, _redis,
                   Probe("redis", REDIS), ready={"": r"[Rr]eady to accept connections"},
                   env={PASSWORD_ENV: PASSWORD})]
    if workers:
        out += [Service("ray-head", "ray", NAS_IMAGE, {RAY: 6379}, _ray_head, Probe("ray", RAY),
                        local=no_ray),
                *(Service(name, "ray", image, {METRICS: EXPORTER_PORT}, _ray_worker,
                          Probe("ray", RAY), depends_on=("ray-head",), local=no_ray,
                          scalable=True, profile=profile, exporter=True)
                  for name, image, profile in ((CPU_WORKER, NAS_IMAGE, ""),
                                               (GPU_WORKER, NAS_CUDA_IMAGE, GPU_PROFILE)))]
    out += [Service(shard_name(i), "nas", NAS_IMAGE, {GRPC: 50051, METRICS: 9100},
                    _shard(i, shards), Probe("metrics", METRICS), depends_on=("redis",),
                    ready={GRPC: SHARD_READY, METRICS: SHARD_METRICS_READY},
                    env={PASSWORD_ENV: PASSWORD, TOKEN_ENV: TOKEN})
            for i in range(shards)]
    search_ports = {GRPC: 50070, METRICS: 9108} | ({TRIALS: 50071} if workers else {})
    out += [Service("search", "nas", NAS_IMAGE, search_ports, _search(shards, workers),
                    Probe("grpc", GRPC),
                    depends_on=("redis", *(shard_name(i) for i in range(shards)),
                                *(("ray-head",) if workers else ())),
                    ready={GRPC: r"search service listening on (\S+:\d+)",
                           METRICS: r"^metrics https?://(\S+:\d+)/metrics"}
                    | ({TRIALS: r"workers report to (\S+:\d+)"} if workers else {}),
                    env={PASSWORD_ENV: PASSWORD, TOKEN_ENV: TOKEN}, published=(GRPC,),
                    joins_ray=bool(workers)),
            Service("prometheus", "prometheus", PROMETHEUS_IMAGE, {HTTP: 9090}, _prometheus,
                    Probe("http", HTTP, "/-/ready"),
                    depends_on=("search", *(shard_name(i) for i in range(shards))),
                    ready={HTTP: r'msg="Listening on" address=(\S+:\d+)'}, published=(HTTP,)),
            Service("grafana", "", GRAFANA_IMAGE, {HTTP: 3000}, lambda t: [],
                    Probe("http", HTTP, "/api/health"), depends_on=("prometheus",),
                    local="Grafana is not run locally; point one at the printed Prometheus URL",
                    published=(HTTP,))]
    return out


def metrics_targets(cluster: list[Service], t: Target,
                    self_scrape: bool = True) -> dict[str, list[str]]:
    """Prometheus scrape jobs: every service's metrics endpoint, grouped by kind of service
    (``paramserver``, ``search``), plus Prometheus itself when ``self_scrape``; scalable
    services are not here (``dns_targets``)."""
    jobs: dict[str, list[str]] = {}
    for s in cluster:
        if s.scalable:
            continue
        if METRICS in s.ports:
            jobs.setdefault(s.name.split("-")[0], []).append(t.address(s.name, METRICS))
        elif s.program == "prometheus" and self_scrape:
            jobs.setdefault("prometheus", []).append(t.address(s.name, HTTP))
    return jobs


def dns_targets(cluster: list[Service], t: Target) -> list[dict[str, object]]:
    """The ``worker`` job's DNS discovery: every replica of each scalable service with a
    metrics port (compose's DNS answers a service name with every replica's address), one
    discovery per service so that a service not running (an unused profile) hides no other."""
    return [{"names": [t.hostname(s.name)], "type": "A", "port": t.port(s.name, METRICS),
             "refresh_interval": "15s"}
            for s in cluster if s.scalable and METRICS in s.ports]


def prometheus_config(cluster: list[Service], t: Target, interval_s: int = 15,
                      self_scrape: bool = True) -> dict[str, object]:
    """The Prometheus configuration scraping every metrics endpoint of ``cluster``."""
    jobs = metrics_targets(cluster, t, self_scrape)
    scrape: list[dict[str, object]] = [
        {"job_name": job, "static_configs": [{"targets": targets}]}
        for job, targets in jobs.items()]
    if dns := dns_targets(cluster, t):
        scrape.append({"job_name": "worker", "dns_sd_configs": dns})
    return {"global": {"scrape_interval": f"{interval_s}s",
                       "evaluation_interval": f"{interval_s}s"},
            "scrape_configs": scrape}
