"""What the search service's jobs run on: parameter-server shards and Ray workers.

Part of the composition root. ``ServiceCluster`` owns (or is told about) S parameter-server
shards and a pool of Ray workers, shared by every job of the service:

- a REINFORCE job runs K controller replicas (threads of the service) that pull the policy from
  the shards and push their gradients to them; the layout id is the job id, so after a restart
  of the service the policy is whatever the shards hold, or restored from their Redis
  checkpoint when the shards restarted too;
- a job that trains children (``evaluator: train``) hands them to the Ray workers through the
  trial board, whose ``TrialReport`` server the workers (``nas serve worker``) report to.

Without shards a job runs one replica with an in-process policy; without workers children are
trained by the job's thread, one at a time.

Every internal RPC carries the cluster token (``protos.cluster_auth``): the one the options give
(``$NAS_CLUSTER_TOKEN``), else a random one generated here, handed to the shard processes in
their environment and to the Ray tasks with each attempt.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
import torch
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

from controller.config import ConfigError, SearchConfig
from controller.distributed.hosts import ReplicaHostProcesses
from controller.distributed.metrics import ReplicaMetricsServer
from controller.distributed.processes import start_private_redis
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.shards import ShardProcesses
from controller.early_stopping import EarlyStopper, create_stopper
from controller.evaluators.base import Evaluator
from controller.jobs.store import JobStore
from controller.service.runner import JobRunner
from controller.trials.servicer import TrialMetrics
from nas.local_training import TrainEvaluator
from nas.ray_training import RayWorkerPool
from nas.wiring import PARTS
from protos.cluster_auth import ClusterAuth, generate_token
from protos.types import LayoutSpec
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import paramserver_pb2_grpc as ps_grpc

log = logging.getLogger(__name__)


@dataclass
class ClusterOptions:
    """``nas serve search``'s cluster flags."""

    shards: int = 0                       # start this many local shard processes
    paramservers: list[str] = field(default_factory=list)  # or use these running shards
    replica_hosts: int = 0                # start this many replica-host processes (0, 1: none)
    replica_host_addresses: list[str] = field(default_factory=list)  # or use these running
    redis_url: str | None = None          # shards' checkpoints (None: a private redis-server)
    workers: int = 0                      # children trained at once on Ray (0: no Ray)
    ray_address: str | None = None
    cpus_per_child: float = 1.0
    gpus_per_child: float | None = None
    max_attempts: int = 3
    heartbeat_seconds: float = 5.0
    heartbeat_timeout: float = 60.0
    report_port: int = 0                  # the TrialReport server's port (0: a free one)
    report_host: str = "127.0.0.1"        # ... its interface, the name workers dial it by
    redis_prefix: str = "nas"             # shards checkpoint under {redis_prefix}:ps
    stopper: EarlyStopper | None = None   # early stopping of the workers' children
    metrics_port: int | None = None       # serve /metrics here (0: a free port)
    metrics_host: str = "127.0.0.1"       # ... on this interface (0.0.0.0 in a container)
    log_dir: Path = Path("runs/service/logs")
    auth: ClusterAuth | None = None       # the cluster token and TLS (None: a random token)
    redis_password: str | None = field(default=None, repr=False)  # of redis_url

    @classmethod
    def for_search(cls, cfg: SearchConfig, log_dir: Path, redis_prefix: str) -> ClusterOptions:
        """The cluster ``nas search`` embeds for ``cfg``: S local shards when the layout is
        distributed, a local Ray (or ``cfg.ray_address``) with ``cfg.workers`` slots."""
        return cls(shards=cfg.shards if cfg.distributed else 0, redis_url=cfg.redis,
                   replica_hosts=cfg.replica_hosts if cfg.distributed else 0,
                   workers=cfg.workers, ray_address=cfg.ray_address,
                   cpus_per_child=cfg.cpus_per_child, gpus_per_child=cfg.gpus_per_child,
                   max_attempts=cfg.max_attempts, heartbeat_seconds=cfg.heartbeat_seconds,
                   heartbeat_timeout=cfg.heartbeat_timeout, redis_prefix=redis_prefix,
                   stopper=create_stopper(cfg.early_stopping, cfg.epochs, cfg.grace_epochs,
                                          cfg.asha_eta, cfg.median_min_trials)
                   if cfg.workers else None,
                   metrics_port=cfg.metrics_port, log_dir=log_dir)

    def check(self) -> None:
        """ConfigError naming the flag of an impossible combination."""
        if self.shards < 0 or self.workers < 0 or self.replica_hosts < 0:
            raise ConfigError("shards/workers/replica_hosts: must be >= 0")
        if self.shards and self.paramservers:
            raise ConfigError("paramservers: give --shards S (started here) or --paramservers "
                              "HOST:PORT,... (running), not both")
        if self.replica_hosts > 1 and self.replica_host_addresses:
            raise ConfigError("replica_host_addresses: give --replica-hosts P (started here) or "
                              "--replica-host-addresses HOST:PORT,... (running), not both")
        if (self.replica_hosts > 1 or self.replica_host_addresses) and not (
                self.shards or self.paramservers):
            raise ConfigError("replica_hosts: replicas on replica hosts share their policy on "
                              "parameter servers; add --shards S or --paramservers")
        if self.ray_address and not self.workers:
            raise ConfigError("workers: with --ray-address, say how many children to train at "
                              "once (--workers N)")


class ServiceCluster:
    """Shards and workers shared by the service's jobs; ``close`` stops what it started."""

    def __init__(self, options: ClusterOptions) -> None:
        options.check()
        self.options = options
        given = options.auth or ClusterAuth(None)
        self.token_generated = not given.token
        # the token every internal call carries; the CA (TLS) for running shards and workers
        self.auth = given if given.token else replace(given, token=generate_token())
        self._processes = ShardProcesses(options.log_dir, token=self.auth.token,
                                         redis_password=options.redis_password)
        self._hosts = ReplicaHostProcesses(options.log_dir, token=self.auth.token)
        self.replica_hosts = list(options.replica_host_addresses)
        self._redis_url = options.redis_url
        self._prefix = f"{options.redis_prefix}:ps"
        self.addresses = list(options.paramservers)
        self.workers: RayWorkerPool | None = None
        self._http: WSGIServer | None = None
        self.metrics_url: str | None = None
        # this process's metrics: the replicas' pushes and staleness, the workers' trials
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory
        self.replica_metrics = ReplicaMetricsServer(registry=self.registry)
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        try:
            if options.shards:
                self._start_shards(options.shards)
            if options.replica_hosts > 1:
                self.replica_hosts = self._hosts.start(options.replica_hosts)
            if options.shards or options.replica_hosts > 1:
                self._monitor = threading.Thread(target=self._revive, name="process-monitor",
                                                 daemon=True)
                self._monitor.start()
            if options.workers:
                self.workers = RayWorkerPool(
                    options.workers, options.ray_address, options.cpus_per_child,
                    options.gpus_per_child, options.max_attempts, options.heartbeat_seconds,
                    options.heartbeat_timeout, options.stopper,
                    report_host=options.report_host, report_port=options.report_port,
                    registry=self.registry, auth=self.auth)
                self.registry.register(TrialMetrics(self.workers.board))
            if options.metrics_port is not None:
                self._http, _ = start_http_server(options.metrics_port,
                                                  addr=options.metrics_host,
                                                  registry=self.registry)
                self.metrics_url = f"http://127.0.0.1:{self._http.server_port}/metrics"
        except BaseException:
            self.close()
            raise

    def _start_shards(self, count: int) -> None:
        if self._redis_url is None:
            child, self._redis_url = start_private_redis(
                Path(tempfile.mkdtemp(prefix="nas-redis-")), self.options.log_dir)
            self._processes.children.append(child)
        for index in range(count):
            self._processes.start_shard(index, count, self._redis_url, self._prefix)
        self.addresses = list(self._processes.shard_addresses)

    def _revive(self) -> None:
        """Restart a shard that died, on its port, from its checkpoint; and a replica host
        (its replicas are taken up again by the jobs that ran them)."""
        shards, hosts = bool(self.options.shards), self.options.replica_hosts > 1
        while (shards or hosts) and not self._stop.wait(0.5):
            try:
                if shards:
                    self._processes.revive_shards(self.options.shards, str(self._redis_url),
                                                  self._prefix)
            except Exception:  # given up on a shard: its jobs' pushes fail and say so
                log.exception("a parameter-server shard cannot be restarted")
                shards = False
            try:
                for name in self._hosts.revive() if hosts else []:
                    log.warning("%s died and was restarted", name)
            except Exception:  # given up: its replicas' calls fail and their jobs say so
                log.exception("a replica host cannot be restarted")
                hosts = False

    @property
    def worker_slots(self) -> int:
        """Children the workers train at once (0: the job's thread trains them)."""
        return self.options.workers

    @property
    def has_paramservers(self) -> bool:
        """Whether jobs' policies live on parameter servers."""
        return bool(self.addresses)

    @property
    def _shard_auth(self) -> ClusterAuth:
        """How the shards are called: shards started here on loopback in plaintext, running
        ones (--paramservers) over TLS when the options give a CA."""
        return ClusterAuth(self.auth.token) if self.options.shards else self.auth.for_clients()

    def host_channel(self, address: str) -> grpc.Channel:
        """A channel to a replica host: plaintext with the token to one started here, as
        the options say (TLS with a CA) to a running one."""
        auth = ClusterAuth(self.auth.token) if self.options.replica_hosts > 1 else \
            self.auth.for_clients()
        return auth.channel(address)

    def parameter_client(self, layout: LayoutSpec) -> ShardedParameterClient:
        """A client of the shards for one job's layout."""
        return ShardedParameterClient(self.addresses, layout, auth=self._shard_auth)

    def shard_status(self, job_id: str) -> list[ps.ShardStatusResponse]:
        """Each shard's status of a job's policy (its version: updates applied)."""
        statuses = []
        for address in self.addresses:
            with self._shard_auth.channel(address) as channel:
                statuses.append(ps_grpc.ParameterServerStub(channel).ShardStatus(
                    ps.ShardStatusRequest(layout_id=job_id), timeout=10.0))
        return statuses

    def evaluator(self, cfg: SearchConfig, local: Evaluator, tenant: str = "") -> Evaluator:
        """The job's evaluator: its children trained by the Ray workers when there are any
        (shared fairly between tenants)."""
        if self.workers is not None and isinstance(local, TrainEvaluator):
            return self.workers.dispatcher(local, tenant)
        return local

    def forget_job(self, job_id: str) -> int:
        """A job ended: the workers' trial board drops its trials' records and tombstones
        (reports of them are then NOT_FOUND); how many trials (0 without workers)."""
        return self.workers.forget_job(job_id) if self.workers is not None else 0

    def check_job(self, cfg: SearchConfig) -> None:
        """ConfigError naming the setting a job asks for that this service cannot give."""
        if cfg.replicas > 1 and not self.has_paramservers:
            raise ConfigError(f"replicas: {cfg.replicas} controller replicas share their policy "
                              f"through parameter servers, and this service has none (start it "
                              f"with --shards S, or submit with replicas 1)")
        if cfg.evaluator == "train" and cfg.device.startswith("cuda"):
            if self.workers is not None and not self.workers.resources.num_gpus:
                raise ConfigError(f"device: {cfg.device!r} asks for CUDA, and this service's "
                                  f"workers give children no GPU (its Ray cluster has none); "
                                  f"submit with device auto or cpu")
            if self.workers is None and not torch.cuda.is_available():
                raise ConfigError(f"device: {cfg.device!r} asks for CUDA, and this service "
                                  f"trains children on a machine without it; submit with "
                                  f"device auto or cpu")

    def describe(self) -> dict[str, object]:
        """Endpoints, for the start-up banner and tests."""
        return {"paramservers": self.addresses, "replica_hosts": self.replica_hosts,
                "trial_reports": self.workers.report_address if self.workers else None,
                "workers": self.options.workers}

    def close(self) -> None:
        """Stop the workers and the shard processes this cluster started."""
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self.workers is not None:
            self.workers.close()
        self._hosts.stop()
        self._processes.stop()

    @property
    def hosts(self) -> ReplicaHostProcesses:
        """The replica-host processes this cluster started."""
        return self._hosts

    @property
    def processes(self) -> ShardProcesses:
        """The processes this cluster started (shards, a private redis-server)."""
        return self._processes


def job_runner(store: JobStore, work_dir: Path, max_running: int = 2,
               cluster: ServiceCluster | None = None, keep_results: bool = False) -> JobRunner:
    """A job runner built from this process's parts (``nas.wiring.PARTS``) on ``cluster``
    (default: no shards and no workers: one in-process policy, children trained by the job's
    thread)."""
    return JobRunner(store, work_dir, max_running,
                     cluster=cluster if cluster is not None else ServiceCluster(ClusterOptions()),
                     parts=PARTS, keep_results=keep_results)
