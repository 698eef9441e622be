"""Start a shard server: gRPC on a (possibly ephemeral) port, optionally ``/metrics`` over HTTP."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import ProcessCollector, start_http_server

from paramserver.checkpoint import CheckpointStore
from paramserver.servicer import ParameterServerServicer
from paramserver.shard import warm_up
from protos.metrics_interceptor import for_registry
from protos.rpc import CHANNEL_OPTIONS, DecodeGuard
from protos.v1 import paramserver_pb2_grpc as ps_grpc


@dataclass
class RunningShard:
    """A started shard server: where it listens, and how to stop it."""

    shard: int
    num_shards: int
    host: str
    port: int
    servicer: ParameterServerServicer
    server: grpc.Server
    metrics_port: int | None = None
    _metrics_http: WSGIServer | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` for a client channel."""
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 2.0) -> None:
        """Checkpoint every layout, then stop serving (waiting up to ``grace`` seconds for
        calls in flight) and close the metrics endpoint. Safe to call twice."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.servicer.registry.close()
        self.server.stop(grace).wait()
        self.servicer.checkpoint_all()  # after in-flight pushes finished: nothing is lost
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the gRPC server stops (True) or ``timeout`` passes (False)."""
        return self.server.wait_for_termination(timeout)


def serve(shard: int, num_shards: int, store: CheckpointStore, host: str = "127.0.0.1",
          port: int = 0, metrics_port: int | None = None, max_workers: int = 16) -> RunningShard:
    """Restore this shard's layouts from ``store`` and start serving on ``host:port`` (0: a
    free port, reported in ``RunningShard.port``); with ``metrics_port`` (0: a free port) also
    serve Prometheus text at ``http://host:metrics_port/metrics``."""
    warm_up()  # before serving: the first registration must not wait for torch's imports
    servicer = ParameterServerServicer(shard, num_shards, store)
    registry = servicer.metrics.registry
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, memory
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix=f"ps{shard}"),
                         options=CHANNEL_OPTIONS,
                         interceptors=[for_registry(registry).interceptor(), DecodeGuard()])
    ps_grpc.add_ParameterServerServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    running = RunningShard(shard, num_shards, host, bound, servicer, server)
    if metrics_port is not None:
        try:
            http, _ = start_http_server(metrics_port, addr=host,
                                        registry=servicer.metrics.registry)
        except OSError:
            server.stop(None)
            raise
        running.metrics_port = int(http.server_port)
        running._metrics_http = http
    return running
