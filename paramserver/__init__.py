"""Parameter-server shards: an even range of the flattened policy vector per shard, Adam state,
versions, a staleness rule (scale a stale push's learning rate, or reject it) and idempotent
pushes. Nothing here imports torch: a shard process stays small and starts fast.

- ``shard``: :class:`ShardState`, the pure update rules of one shard of one layout; ``adam``:
  torch's Adam in numpy.
- ``snapshot``: the checkpoint blob format; ``checkpoint``: :class:`CheckpointStore` backends.
- ``registry``: the layouts one server holds, with periodic checkpoints; ``metrics``.
- ``servicer`` / ``server`` / ``__main__``: the gRPC adapter and the process entry point (the
  only modules that import grpc or ``protos.v1``).
"""
