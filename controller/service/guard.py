"""The gRPC side of authentication: a server interceptor that authorizes every SearchService
call before its method runs, and runs the method as the caller (``auth.caller()``).

Health and reflection are not intercepted: they stay open. The in-process client runs its calls
through ``call_as`` so both paths share the checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

from controller.service.auth import Identity, TokenTable, acting_as, authorize, bearer_token
from protos.errors import NasError, status_name
from protos.rpc import details
from protos.v1 import search_pb2 as sp

SERVICE = sp.DESCRIPTOR.services_by_name["SearchService"]
Behavior = Callable[[Any, Any], Any]


def call_as(identity: Identity, method: str, behavior: Behavior, request: Any,
            context: Any) -> Any:
    """``behavior(request, context)`` run as ``identity`` (a streamed answer is produced as
    that caller too)."""
    if SERVICE.methods_by_name[method].server_streaming:
        def stream() -> Iterator[Any]:
            with acting_as(identity):
                yield from behavior(request, context)

        return stream()
    with acting_as(identity):
        return behavior(request, context)


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the bearer token of every SearchService call against ``tokens`` (None: an open
    service, every caller admin of the default tenant)."""

    def __init__(self, tokens: TokenTable | None) -> None:
        self.tokens = tokens
        self._prefix = f"/{SERVICE.full_name}/"

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        name = str(handler_call_details.method)
        if handler is None or not name.startswith(self._prefix):
            return handler
        method = name.removeprefix(self._prefix)
        for kind, factory in _KINDS:
            behavior = getattr(handler, kind)
            if behavior is not None:
                return factory(self._guard(method, behavior), handler.request_deserializer,
                               handler.response_serializer)
        return handler

    def _guard(self, method: str, behavior: Behavior) -> Behavior:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                token = bearer_token(context.invocation_metadata())
                identity = authorize(self.tokens, method, token)
                return call_as(identity, method, behavior, request, context)
            except NasError as exc:
                context.abort(grpc.StatusCode[status_name(exc)], details(exc))

        return guarded


_KINDS: list[tuple[str, Callable[..., grpc.RpcMethodHandler]]] = [
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
]
