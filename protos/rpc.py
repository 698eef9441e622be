"""gRPC helpers shared by servers and clients: errors to statuses and back, channel options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from protos.errors import ERRORS_BY_STATUS, NasError, status_name

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
R = TypeVar("R")


def servicer_method(fn: Callable[..., R]) -> Callable[..., R]:
    """Wrap a servicer method: a NasError becomes its status code with the error's message."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return fn(self, request, context)
        except NasError as exc:
            context.abort(grpc.StatusCode[status_name(exc)], str(exc))
            raise  # unreachable: abort raises

    return wrapper


def error_from_rpc(exc: grpc.RpcError) -> Exception:
    """The domain error a failed call stands for (the RpcError itself when unmapped)."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    cls = ERRORS_BY_STATUS.get(code.name) if code is not None else None
    if cls is None:
        return exc
    details = exc.details() if isinstance(exc, grpc.Call) else ""
    return cls(details or code.name if code else "")
