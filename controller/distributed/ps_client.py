"""A client for S parameter-server shards: splits and merges the flat vector by shard range,
with deadlines and retries on UNAVAILABLE (pushes are idempotent by replica id and sequence)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from protos import codec
from protos.cluster_auth import ClusterAuth, open_channel
from protos.rpc import call_with_retry
from protos.types import LayoutSpec
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import paramserver_pb2_grpc as ps_grpc

T = TypeVar("T")


@dataclass(frozen=True)
class PushOutcome:
    """What the shards said about one push: versions after it, and per-shard flags."""

    versions: tuple[int, ...]
    applied: tuple[bool, ...]
    duplicate: tuple[bool, ...]


class ShardedParameterClient:
    """Talks to every shard of one layout. ``addresses[i]`` serves shard i; ``auth``: the
    cluster token every call carries (and the CA of the shards' TLS)."""

    def __init__(self, addresses: Sequence[str], layout: LayoutSpec, timeout: float = 30.0,
                 retry_for: float = 60.0, auth: ClusterAuth | None = None) -> None:
        if len(addresses) != layout.num_shards:
            raise ValueError(f"addresses: {len(addresses)} given for {layout.num_shards} shards")
        self.layout = layout
        self.timeout = timeout
        self.retry_for = retry_for
        self.ranges = [layout.shard_range(i) for i in range(layout.num_shards)]
        self._channels = [open_channel(a, auth) for a in addresses]
        self._stubs = [ps_grpc.ParameterServerStub(c) for c in self._channels]
        self._pool = ThreadPoolExecutor(max_workers=max(1, layout.num_shards))
        self._closed = threading.Event()

    def close(self) -> None:
        """Close the channels; calls in flight fail at once instead of retrying."""
        self._closed.set()
        self._pool.shutdown(wait=False)
        for channel in self._channels:
            channel.close()

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one RPC, retrying UNAVAILABLE (a shard restarting) for retry_for s."""
        return call_with_retry(fn, self.retry_for, give_up=self._closed.is_set)

    def _each(self, fn: Callable[[int], T]) -> list[T]:
        if self.layout.num_shards == 1:  # no thread hand-off for a single shard
            return [self._call(lambda: fn(0))]
        return list(self._pool.map(lambda i: self._call(lambda: fn(i)),
                                   range(self.layout.num_shards)))

    def register(self, initial: np.ndarray) -> list[int]:
        """Register the layout on every shard with its initial values; the shards' versions
        (non-zero when a shard already had it, e.g. restored from a checkpoint)."""
        layout = codec.layout_to_proto(self.layout)

        def one(i: int) -> int:
            start, length = self.ranges[i]
            request = ps.RegisterLayoutRequest(layout=layout, shard=i, initial=codec.
                                               tensor_to_proto(start, initial[start:start +
                                                                                length]))
            # once per job, while freshly started shards may still be warming up
            return int(self._stubs[i].RegisterLayout(request, timeout=4 * self.timeout).version)

        return self._each(one)

    def pull(self, min_versions: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
        """The whole vector and each shard's version (waiting for ``min_versions``)."""
        mins = list(min_versions) if min_versions is not None else [0] * self.layout.num_shards
        lid = self.layout.layout_id

        def one(i: int) -> tuple[int, np.ndarray]:
            reply = self._stubs[i].Pull(ps.PullRequest(layout_id=lid, min_version=mins[i]),
                                        timeout=self.timeout)
            return int(reply.version), codec.tensor_from_proto(reply.values, "values")

        parts = self._each(one)
        return np.concatenate([v for _, v in parts]), [ver for ver, _ in parts]

    def push(self, replica_id: str, seq: int, base_versions: Sequence[int],
             gradient: np.ndarray) -> PushOutcome:
        """Push each shard its slice. A stale push raises FailedPreconditionError (re-pull);
        a retried push that was already applied comes back with ``duplicate``."""
        lid = self.layout.layout_id

        def one(i: int) -> ps.PushResponse:
            start, length = self.ranges[i]
            request = ps.PushRequest(layout_id=lid, replica_id=replica_id, seq=seq,
                                     base_version=base_versions[i],
                                     gradient=codec.tensor_to_proto(
                                         start, gradient[start:start + length]))
            return self._stubs[i].Push(request, timeout=self.timeout)

        replies = self._each(one)
        return PushOutcome(tuple(int(r.version) for r in replies),
                           tuple(r.applied for r in replies), tuple(r.duplicate for r in replies))

    def status(self) -> list[ps.ShardStatusResponse]:
        """Every shard's status."""
        lid = self.layout.layout_id
        return self._each(lambda i: self._stubs[i].ShardStatus(
            ps.ShardStatusRequest(layout_id=lid), timeout=self.timeout))
