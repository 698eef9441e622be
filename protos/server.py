"""Start every gRPC server of ours the same way: one call binds (with an error that says what to
fix), adds the standard health service and reflection, times calls on a Prometheus registry,
guards decoding, and returns a handle that stops gracefully.

    served = start_server({service_name(sp, "SearchService"): lambda s: add(servicer, s)},
                          host, port, registry=registry, interceptors=[AuthInterceptor(tokens)],
                          credentials=tls.credentials() if tls else None)
    ...
    served.stop(grace=1.0)

Interceptors run in this order: the metrics interceptor (when ``registry`` is given, so calls
refused by the caller's interceptors are counted too), the caller's ``interceptors`` (e.g.
authentication), then :class:`protos.rpc.DecodeGuard`.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from protos.metrics_interceptor import for_registry
from protos.rpc import CHANNEL_OPTIONS, DecodeGuard

Register = Callable[[grpc.Server], None]
# gRPC turns SO_REUSEPORT on by default: a second server on a port another one of ours holds would
# then start without an error and take half its connections. Off, the bind fails instead.
NO_PORT_SHARING = ("grpc.so_reuseport", 0)


class BindError(OSError):
    """A server could not listen on ``host:port``; the message says why and what to do."""


def service_name(module: ModuleType, service: str) -> str:
    """The full name of ``service`` defined in a generated ``*_pb2`` module, e.g.
    ``service_name(search_pb2, "SearchService") == "nas.v1.SearchService"``."""
    return str(module.DESCRIPTOR.services_by_name[service].full_name)


@dataclass
class RunningServer:
    """A started gRPC server: where it listens, its health service, and how to stop it."""

    server: grpc.Server
    host: str
    port: int
    health: health.HealthServicer

    @property
    def address(self) -> str:
        """``host:port`` for a client channel."""
        return _address(self.host, self.port)

    def stop(self, grace: float | None = 1.0) -> None:
        """Report NOT_SERVING to health watchers, refuse new calls, give calls in flight
        ``grace`` seconds (None: cancel them now) and wait until the server has stopped."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (True) or ``timeout`` passes (False)."""
        return self.server.wait_for_termination(timeout)


class ServedBy:
    """``server``, ``host``, ``port`` and ``address`` of the ``served`` server, for the handle
    of a service that wraps one (a dataclass with a ``served: RunningServer`` field)."""

    served: RunningServer

    @property
    def server(self) -> grpc.Server:
        """The gRPC server."""
        return self.served.server

    @property
    def host(self) -> str:
        """The address it listens on."""
        return self.served.host

    @property
    def port(self) -> int:
        """The port it listens on (the real one when started with 0)."""
        return self.served.port

    @property
    def address(self) -> str:
        """``host:port`` for a client channel."""
        return self.served.address


def start_server(services: Mapping[str, Register], host: str = "127.0.0.1", port: int = 0, *,
                 credentials: grpc.ServerCredentials | None = None,
                 interceptors: Sequence[grpc.ServerInterceptor] = (),
                 registry: CollectorRegistry | None = None, max_workers: int = 16,
                 thread_name_prefix: str = "grpc",
                 options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS,
                 max_concurrent_rpcs: int | None = None) -> RunningServer:
    """Serve ``services`` (full service name -> a function adding its servicer to a server) on
    ``host:port`` (0: a free port, in the handle's ``port``), with the standard health service
    (every name and ``""`` SERVING once started) and reflection for all of them.

    ``credentials``: serve TLS only (``grpc.ssl_server_credentials``); ``registry``: time every
    call as ``nas_rpc_server_*`` there; ``interceptors``: run after the metrics one and before
    the decode guard; calls beyond ``max_concurrent_rpcs`` get RESOURCE_EXHAUSTED. A port that
    cannot be bound raises :class:`BindError` (an ``OSError``) naming ``host:port`` and the
    cause; nothing is left running then."""
    if not 0 <= port <= 65535:  # gRPC would silently listen on some other port
        raise BindError(f"cannot listen on {_address(host, port)}: the port must be in "
                        f"[0, 65535] (0 picks a free one)")
    chain = [*([for_registry(registry).interceptor()] if registry is not None else []),
             *interceptors, DecodeGuard()]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix=thread_name_prefix),
                         interceptors=chain, options=[*options, NO_PORT_SHARING],
                         maximum_concurrent_rpcs=max_concurrent_rpcs)
    for register in services.values():
        register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                        server)
    address = _address(host, port)
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError:  # grpc's "Failed to bind to address": no cause given
        bound = 0
    if bound == 0:
        server.stop(None)
        raise BindError(f"cannot listen on {address}: {_why_not(host, port)}")
    server.start()
    for name in (*services, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, host, bound, health_servicer)


def _address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _why_not(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, found by trying it with a plain socket."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return (f"cannot resolve host {host!r} ({exc.strerror}); use an address of this "
                f"machine, e.g. 127.0.0.1, or 0.0.0.0 for all interfaces")
    failure: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
                return "gRPC refused the address (set GRPC_VERBOSITY=debug to see why)"
            except OSError as exc:
                failure = exc
    if failure is not None and failure.errno == errno.EADDRINUSE:
        return (f"port {port} is already in use (stop the process that holds it, e.g. see "
                f"`ss -ltnp 'sport = :{port}'`, or choose another port; 0 picks a free one)")
    if failure is not None and failure.errno == errno.EADDRNOTAVAIL:
        return (f"{host!r} is not an address of this machine; use one of its interfaces' "
                f"addresses, 127.0.0.1, or 0.0.0.0 for all interfaces")
    if failure is not None and failure.errno == errno.EACCES:
        return (f"permission denied for port {port} (ports below 1024 need privileges); "
                f"choose a port >= 1024")
    return str(failure.strerror if failure is not None else "no address to bind")
