"""Start a shard server: gRPC on a (possibly ephemeral) port, optionally ``/metrics`` over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import ProcessCollector, start_http_server

from paramserver.checkpoint import CheckpointStore
from paramserver.servicer import ParameterServerServicer
from protos.server import RunningServer, ServedBy, service_name, start_server
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import paramserver_pb2_grpc as ps_grpc


@dataclass
class RunningShard(ServedBy):
    """A started shard server: where it listens, and how to stop it."""

    shard: int
    num_shards: int
    servicer: ParameterServerServicer
    served: RunningServer
    metrics_port: int | None = None
    _metrics_http: WSGIServer | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stop(self, grace: float | None = 2.0) -> None:
        """Checkpoint every layout, then stop serving (waiting up to ``grace`` seconds for
        calls in flight) and close the metrics endpoint. Safe to call twice."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self.servicer.registry.close()
        self.served.stop(grace)
        self.servicer.checkpoint_all()  # after in-flight pushes finished: nothing is lost
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the gRPC server stops (True) or ``timeout`` passes (False)."""
        return self.served.wait(timeout)


def serve(shard: int, num_shards: int, store: CheckpointStore, host: str = "127.0.0.1",
          port: int = 0, metrics_port: int | None = None, max_workers: int = 16, *,
          credentials: grpc.ServerCredentials | None = None,
          interceptors: Sequence[grpc.ServerInterceptor] = ()) -> RunningShard:
    """Restore this shard's layouts from ``store`` and start serving on ``host:port`` (0: a
    free port, reported in ``RunningShard.port``), with health and reflection; with
    ``metrics_port`` (0: a free port) also serve Prometheus text at
    ``http://host:metrics_port/metrics``. ``credentials``: serve TLS only; ``interceptors``:
    e.g. authentication, run before the decode guard. A port that cannot be bound raises
    :class:`protos.server.BindError` (an ``OSError``)."""
    servicer = ParameterServerServicer(shard, num_shards, store)
    registry = servicer.metrics.registry
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, memory
    served = start_server(
        {service_name(ps, "ParameterServer"):
         lambda server: ps_grpc.add_ParameterServerServicer_to_server(servicer, server)},
        host, port, credentials=credentials, interceptors=interceptors, registry=registry,
        max_workers=max_workers, thread_name_prefix=f"ps{shard}")
    running = RunningShard(shard, num_shards, servicer, served)
    if metrics_port is not None:
        try:
            http, _ = start_http_server(metrics_port, addr=host,
                                        registry=servicer.metrics.registry)
        except OSError:
            served.stop(None)
            raise
        running.metrics_port = int(http.server_port)
        running._metrics_http = http
    return running
