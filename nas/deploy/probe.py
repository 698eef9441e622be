"""Health probes of the cluster's services, the same for compose and ``nas up``: compose runs
``python -m nas.deploy.probe KIND TARGET`` as a healthcheck (exit 0: healthy), ``nas up``
calls ``healthy`` before it says the cluster is up. Light on purpose: no torch import."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

PROBE_TIMEOUT_S = 3.0


class ProbeFailed(RuntimeError):
    """A service is not (yet) healthy; the message says what answered."""


def grpc_serving(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """The standard gRPC health service at ``address`` says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the typeshed stub lacks its methods
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            raise ProbeFailed(f"{address}: gRPC health: {exc.code().name}") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise ProbeFailed(f"{address}: gRPC health: {reply.status}")


def http_text(url: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """GET ``url``: the body of a 200 answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return str(reply.read().decode(errors="replace"))
    except (urllib.error.URLError, OSError) as exc:
        raise ProbeFailed(f"{url}: {exc}") from None


def metrics_text(url: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """``url`` answers Prometheus text (``# HELP`` / ``# TYPE`` lines)."""
    text = http_text(url, timeout)
    if "# TYPE " not in text:
        raise ProbeFailed(f"{url}: not Prometheus text: {text[:80]!r}")
    return text


def redis_pong(url: str, password: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Redis at ``url`` answers PING with ``password``."""
    import redis

    client = redis.Redis.from_url(url, password=password, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ProbeFailed(f"{url}: {exc}") from None
    finally:
        client.close()


def healthy(kind: str, target: str, password: str | None = None) -> None:
    """Probe ``target`` as ``kind`` (grpc, metrics, http, redis); ProbeFailed if unhealthy."""
    if kind == "grpc":
        grpc_serving(target)
    elif kind == "metrics":
        metrics_text(target)
    elif kind == "http":
        http_text(target)
    elif kind == "redis":
        redis_pong(target, password)
    else:
        raise ValueError(f"probe kind: {kind!r} is not one of grpc, metrics, http, redis")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nas.deploy.probe KIND TARGET``: 0 healthy, 1 not, 2 bad usage."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("grpc", "metrics", "http"):
        print("usage: python -m nas.deploy.probe grpc|metrics|http TARGET",
              file=sys.stderr)
        return 2
    try:
        healthy(args[0], args[1])
    except ProbeFailed as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
