"""The gRPC adapter of a shard server: decode, call :class:`ShardRegistry`, encode."""

from __future__ import annotations

import grpc

from paramserver.checkpoint import CheckpointStore
from paramserver.metrics import ShardMetrics
from paramserver.registry import ShardRegistry
from protos import codec
from protos.errors import DeadlineExceededError
from protos.rpc import servicer_method
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import paramserver_pb2_grpc as ps_grpc

MAX_PULL_WAIT_S = 30.0


class ParameterServerServicer(ps_grpc.ParameterServerServicer):
    """Serves shard ``shard`` of ``num_shards`` of every registered layout; restores the
    layouts checkpointed for this shard in ``store`` on construction."""

    def __init__(self, shard: int, num_shards: int, store: CheckpointStore,
                 metrics: ShardMetrics | None = None) -> None:
        self.registry = ShardRegistry(shard, num_shards, store, metrics)
        self.metrics = self.registry.metrics

    def checkpoint_all(self) -> None:
        """Checkpoint every layout (shutdown)."""
        self.registry.checkpoint_all()

    @servicer_method
    def RegisterLayout(self, request: ps.RegisterLayoutRequest,
                       context: grpc.ServicerContext) -> ps.RegisterLayoutResponse:
        """Register a layout on this shard (idempotent for an identical layout)."""
        layout = codec.layout_from_proto(request.layout)
        initial = codec.tensor_from_proto(request.initial, "initial")
        version, created = self.registry.register(layout, request.shard, request.initial.start,
                                                  initial)
        return ps.RegisterLayoutResponse(version=version, created=created)

    @servicer_method
    def Pull(self, request: ps.PullRequest, context: grpc.ServicerContext) -> ps.PullResponse:
        """Read a range, after waiting (within the deadline, at most 30 s) for min_version."""
        with self.metrics.pull_seconds.time():
            state = self.registry.get(request.layout_id)
            if request.min_version > 0:
                remaining = context.time_remaining()
                timeout = MAX_PULL_WAIT_S if remaining is None else min(remaining,
                                                                        MAX_PULL_WAIT_S)
                if not state.wait_for_version(request.min_version, timeout):
                    raise DeadlineExceededError(
                        f"version {state.version} has not reached min_version "
                        f"{request.min_version} within {timeout:.1f} s")
            version, values = state.pull(request.start, request.length)
            start = request.start if request.length else state.start
            return ps.PullResponse(version=version, values=codec.tensor_to_proto(start, values))

    @servicer_method
    def Push(self, request: ps.PushRequest, context: grpc.ServicerContext) -> ps.PushResponse:
        """Apply (or accumulate) a gradient of this shard's range; idempotent by (replica, seq)."""
        with self.metrics.time_push():
            gradient = codec.tensor_from_proto(request.gradient, "gradient")
            result = self.registry.push(request.layout_id, request.replica_id, request.seq,
                                        request.base_version, request.gradient.start, gradient)
        return ps.PushResponse(version=result.version, applied=result.applied,
                               duplicate=result.duplicate)

    @servicer_method
    def ShardStatus(self, request: ps.ShardStatusRequest,
                    context: grpc.ServicerContext) -> ps.ShardStatusResponse:
        """A layout's range, version and push counters on this shard."""
        state = self.registry.get(request.layout_id)
        stats = state.stats()
        return ps.ShardStatusResponse(
            layout=codec.layout_to_proto(state.layout), shard=state.shard, start=state.start,
            length=state.length, version=stats.version, pushes=stats.pushes,
            rejected_stale=stats.rejected_stale, duplicates=stats.duplicates)
