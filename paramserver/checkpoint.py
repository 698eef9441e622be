"""Where shards keep their checkpoints: an ABC with one contract and its backends."""

from __future__ import annotations

import abc
import threading

import redis


class CheckpointStore(abc.ABC):
    """Checkpoint blobs of parameter-server shards, keyed by (layout_id, shard, num_shards).

    Contract (every backend passes ``tests/test_checkpoint_store.py``):

    - ``save`` is atomic and replaces: a later ``load_all`` sees either the previous blob or the
      new one, never a mix, and at most one blob per key.
    - Blobs are opaque bytes, returned byte-for-byte; values are passed by value (changing a
      returned dict changes nothing stored).
    - Keys with a different ``shard`` or ``num_shards`` never see each other's blobs: a layout
      re-sharded over another ``num_shards`` starts from scratch.
    - ``delete`` of a missing key is a no-op.
    - Backend failures (e.g. an unreachable server) raise the backend's own exception.
    """

    @abc.abstractmethod
    def save(self, layout_id: str, shard: int, num_shards: int, data: bytes) -> None:
        """Store ``data`` as the checkpoint of ``layout_id`` on this shard, replacing any."""

    @abc.abstractmethod
    def load_all(self, shard: int, num_shards: int) -> dict[str, bytes]:
        """Every checkpoint of this shard: layout_id -> blob (empty when none)."""

    @abc.abstractmethod
    def delete(self, layout_id: str, shard: int, num_shards: int) -> None:
        """Remove the checkpoint of ``layout_id`` on this shard, if any."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections; the store is not used afterwards."""


class InMemoryCheckpointStore(CheckpointStore):
    """A process-local store (tests, single-process runs); lost when the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[tuple[int, int], dict[str, bytes]] = {}

    def save(self, layout_id: str, shard: int, num_shards: int, data: bytes) -> None:
        """See :meth:`CheckpointStore.save`."""
        with self._lock:
            self._blobs.setdefault((shard, num_shards), {})[layout_id] = bytes(data)

    def load_all(self, shard: int, num_shards: int) -> dict[str, bytes]:
        """See :meth:`CheckpointStore.load_all`."""
        with self._lock:
            return dict(self._blobs.get((shard, num_shards), {}))

    def delete(self, layout_id: str, shard: int, num_shards: int) -> None:
        """See :meth:`CheckpointStore.delete`."""
        with self._lock:
            self._blobs.get((shard, num_shards), {}).pop(layout_id, None)


class RedisCheckpointStore(CheckpointStore):
    """One Redis hash per shard, ``{prefix}:ps:shard:{shard}of{num_shards}``, field = layout id,
    value = blob; HSET replaces one field atomically."""

    def __init__(self, url: str, prefix: str = "nas", timeout_s: float = 5.0,
                 password: str | None = None) -> None:
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s,
                                           **({"password": password} if password else {}))

    def key(self, shard: int, num_shards: int) -> str:
        """The Redis key holding this shard's checkpoints."""
        return f"{self.prefix}:ps:shard:{shard}of{num_shards}"

    def ping(self) -> None:
        """Raise ``redis.RedisError`` when the server cannot be reached."""
        self._redis.ping()

    def save(self, layout_id: str, shard: int, num_shards: int, data: bytes) -> None:
        """See :meth:`CheckpointStore.save`."""
        self._redis.hset(self.key(shard, num_shards), layout_id, bytes(data))

    def load_all(self, shard: int, num_shards: int) -> dict[str, bytes]:
        """See :meth:`CheckpointStore.load_all`."""
        raw: dict[bytes, bytes] = self._redis.hgetall(self.key(shard, num_shards))  # type: ignore[assignment]
        return {field.decode(): bytes(blob) for field, blob in raw.items()}

    def delete(self, layout_id: str, shard: int, num_shards: int) -> None:
        """See :meth:`CheckpointStore.delete`."""
        self._redis.hdel(self.key(shard, num_shards), layout_id)

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
