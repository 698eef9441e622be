"""gRPC helpers shared by servers and clients: errors to statuses and back, channel options."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from protos.errors import ERRORS_BY_STATUS, NasError, UnavailableError, status_name

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# A status's details travel as grpc-message trailing metadata, percent-encoded; a client drops a
# call whose metadata passes 16 KiB and reports RESOURCE_EXHAUSTED instead of the real status.
# An error quoting a huge request field (a 20 kB job id) must not get there: 1000 characters,
# at most 9 kB encoded, is plenty for the field's name and the start of its value.
MAX_DETAILS = 1000
R = TypeVar("R")


def details(exc: Exception) -> str:
    """An error's message as status details, cut to MAX_DETAILS characters."""
    text = str(exc)
    if len(text) <= MAX_DETAILS:
        return text
    return f"{text[:MAX_DETAILS - 40]}... ({len(text) - MAX_DETAILS + 40} characters cut)"


def servicer_method(fn: Callable[..., R]) -> Callable[..., R]:
    """Wrap a servicer method: a NasError becomes its status code with the error's message."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return fn(self, request, context)
        except NasError as exc:
            context.abort(grpc.StatusCode[status_name(exc)], details(exc))
            raise  # unreachable: abort raises

    return wrapper


def servicer_stream(fn: Callable[..., Iterator[R]]) -> Callable[..., Iterator[R]]:
    """``servicer_method`` for a server-streaming method (a generator): a NasError raised while
    streaming ends the stream with its status code (before the first message if raised there)."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[R]:
        try:
            yield from fn(self, request, context)
        except NasError as exc:
            context.abort(grpc.StatusCode[status_name(exc)], details(exc))
            raise  # unreachable: abort raises

    return wrapper


class _Undecodable:
    """A request whose bytes did not parse as the method's message (and why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class DecodeGuard(grpc.ServerInterceptor):
    """A request that does not parse as its method's message (random bytes, a truncated or
    corrupted encoding, invalid UTF-8 in a string field) gets INVALID_ARGUMENT naming the
    message, instead of grpc's INTERNAL "Exception deserializing request!". Put it last in a
    server's interceptors: the others pass its lenient deserializer on."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        descriptor = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
        name = getattr(descriptor, "full_name", str(handler_call_details.method))

        def lenient(data: bytes) -> Any:
            try:
                return decode(data)
            except (DecodeError, ValueError) as exc:
                return _Undecodable(str(exc) or type(exc).__name__)

        kind = "unary_stream" if handler.response_streaming else "unary_unary"
        behavior = getattr(handler, kind)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"request: not a valid {name} message ({request.reason})")
            return behavior(request, context)

        factory = (grpc.unary_stream_rpc_method_handler if handler.response_streaming
                   else grpc.unary_unary_rpc_method_handler)
        return factory(guarded, lenient, handler.response_serializer)


def error_from_rpc(exc: grpc.RpcError) -> Exception:
    """The domain error a failed call stands for (the RpcError itself when unmapped)."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    cls = ERRORS_BY_STATUS.get(code.name) if code is not None else None
    if cls is None:
        return exc
    details = exc.details() if isinstance(exc, grpc.Call) else ""
    return cls(details or code.name if code else "")


def call_with_retry(fn: Callable[[], R], retry_for: float,
                    retry_on: tuple[type[Exception], ...] = (UnavailableError,),
                    give_up: Callable[[], bool] | None = None) -> R:
    """Run one RPC, retrying the errors in ``retry_on`` (a server restarting) with exponential
    backoff for up to ``retry_for`` seconds, or until ``give_up()`` (the caller is closing);
    other failures raise their domain error. Only for idempotent calls."""
    deadline = time.monotonic() + retry_for
    delay = 0.05
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            err = error_from_rpc(exc)
            if not isinstance(err, retry_on) or time.monotonic() > deadline or \
                    (give_up is not None and give_up()):
                raise err from None
        time.sleep(delay)
        delay = min(1.0, delay * 2)
