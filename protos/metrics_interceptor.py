"""RPC latency and outcome of every gRPC server we run, as Prometheus metrics.

One server interceptor, registered beside the others where each server is built (the search
service, the TrialReport service, the parameter-server shards). Labels are bounded by the
services' definitions: ``service`` (e.g. ``nas.v1.SearchService``), ``method`` and the final
status ``code`` (``OK``, ``NOT_FOUND``, ...). Calls to methods a server does not implement are
not recorded (their names come from the caller: unbounded).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

# 100 us .. 60 s: lease long-polls (up to 10 s) and WatchSearch streams run long
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Behavior = Callable[[Any, Any], Any]


class RpcMetrics:
    """``nas_rpc_server_handling_seconds{service,method}`` and
    ``nas_rpc_server_handled_total{service,method,code}`` on ``registry``. Use ``for_registry``
    so that several servers of one process (one registry) share the families."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram("nas_rpc_server_handling_seconds",
                                 "Time from a call's start to its last response, by method",
                                 ["service", "method"], buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self.handled = Counter("nas_rpc_server_handled", "Calls completed, by status code",
                               ["service", "method", "code"], registry=registry)

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        """Record one finished call."""
        self.seconds.labels(service, method).observe(seconds)
        self.handled.labels(service, method, code).inc()

    def interceptor(self) -> MetricsInterceptor:
        """A server interceptor recording into these metrics."""
        return MetricsInterceptor(self)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, RpcMetrics] = \
    weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def for_registry(registry: CollectorRegistry) -> RpcMetrics:
    """The RPC metrics of ``registry``, created on first use (a registry refuses a family
    registered twice, and a process may run several servers on one registry)."""
    with _LOCK:
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = RpcMetrics(registry)
        return metrics


def _code(context: Any, default: grpc.StatusCode) -> str:
    """The status the call ended with: what the method set (abort, set_code), else ``default``."""
    code = getattr(context, "code", lambda: None)()
    return (code if isinstance(code, grpc.StatusCode) else default).name


class MetricsInterceptor(grpc.ServerInterceptor):
    """Times every call and counts it by final status code. Put it first in the server's
    interceptors so that calls refused by later ones (authentication) are counted too."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:  # UNIMPLEMENTED: the method name is the caller's, unbounded
            return handler
        service, _, method = str(handler_call_details.method).lstrip("/").rpartition("/")
        for kind, factory in _KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                streams = handler.response_streaming
                wrap = self._timed_stream if streams else self._timed
                return factory(wrap(service, method, behavior), handler.request_deserializer,
                               handler.response_serializer)
        return handler

    def _timed(self, service: str, method: str, behavior: Behavior) -> Behavior:
        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            begin = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN  # an exception the method did not map
            try:
                response = behavior(request, context)
                code = grpc.StatusCode.OK
                return response
            finally:
                self.metrics.observe(service, method, _code(context, code),
                                     time.perf_counter() - begin)

        return timed

    def _timed_stream(self, service: str, method: str, behavior: Behavior) -> Behavior:
        def timed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            begin = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                yield from behavior(request, context)
                code = grpc.StatusCode.OK
            except GeneratorExit:  # the client went away mid-stream
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                self.metrics.observe(service, method, _code(context, code),
                                     time.perf_counter() - begin)

        return timed


_KINDS: list[tuple[str, Callable[..., grpc.RpcMethodHandler]]] = [
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
]
