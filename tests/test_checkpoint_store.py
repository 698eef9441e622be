"""The CheckpointStore contract, run by every backend (subclass ``CheckpointStoreContract``)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
import redis

from paramserver.checkpoint import CheckpointStore, InMemoryCheckpointStore, RedisCheckpointStore
from paramserver.registry import ShardRegistry
from protos.types import LayoutSpec

if TYPE_CHECKING:
    from conftest import OwnRedis

REDIS_URL = "redis://127.0.0.1:6379/0"


class CheckpointStoreContract:
    """Tests every backend passes; a subclass provides the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> Iterator[CheckpointStore]:
        raise NotImplementedError

    def test_empty_shard_loads_nothing(self, store: CheckpointStore) -> None:
        assert store.load_all(0, 2) == {}

    def test_save_then_load_returns_the_exact_bytes(self, store: CheckpointStore) -> None:
        blob = bytes(range(256)) * 3
        store.save("policy", 1, 2, blob)
        store.save("other", 1, 2, b"")
        assert store.load_all(1, 2) == {"policy": blob, "other": b""}

    def test_save_replaces(self, store: CheckpointStore) -> None:
        store.save("policy", 0, 1, b"old, longer blob")
        store.save("policy", 0, 1, b"new")
        assert store.load_all(0, 1) == {"policy": b"new"}

    def test_shards_and_shard_counts_are_isolated(self, store: CheckpointStore) -> None:
        store.save("policy", 0, 2, b"0of2")
        store.save("policy", 1, 2, b"1of2")
        store.save("policy", 0, 3, b"0of3")
        assert store.load_all(0, 2) == {"policy": b"0of2"}
        assert store.load_all(1, 2) == {"policy": b"1of2"}
        assert store.load_all(0, 3) == {"policy": b"0of3"}
        assert store.load_all(1, 3) == {}

    def test_delete_removes_one_layout_and_ignores_missing(self, store: CheckpointStore) -> None:
        store.save("a", 0, 1, b"a")
        store.save("b", 0, 1, b"b")
        store.delete("a", 0, 1)
        store.delete("a", 0, 1)
        store.delete("never-saved", 5, 6)
        assert store.load_all(0, 1) == {"b": b"b"}

    def test_results_are_passed_by_value(self, store: CheckpointStore) -> None:
        data = bytearray(b"abc")
        store.save("policy", 0, 1, bytes(data))
        data[0] = ord("z")
        loaded = store.load_all(0, 1)
        loaded["policy"] = b"changed"
        loaded["extra"] = b"x"
        assert store.load_all(0, 1) == {"policy": b"abc"}

    def test_concurrent_saves_leave_one_whole_blob(self, store: CheckpointStore) -> None:
        blobs = [bytes([i]) * 200_000 for i in range(8)]
        threads = [threading.Thread(target=store.save, args=("policy", 0, 1, b))
                   for b in blobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert store.load_all(0, 1)["policy"] in blobs


class TestInMemoryCheckpointStore(CheckpointStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[CheckpointStore]:
        yield InMemoryCheckpointStore()


def delete_prefix(prefix: str) -> None:
    """Remove every key under ``prefix:`` from the test Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class TestRedisCheckpointStore(CheckpointStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[CheckpointStore]:
        prefix = f"test-{uuid.uuid4().hex}"
        store = RedisCheckpointStore(REDIS_URL, prefix=prefix)
        yield store
        store.close()
        delete_prefix(prefix)

    def test_layout_is_one_hash_per_shard(self) -> None:
        prefix = f"test-{uuid.uuid4().hex}"
        store = RedisCheckpointStore(REDIS_URL, prefix=prefix)
        try:
            store.save("policy", 1, 4, b"blob")
            client = redis.Redis.from_url(REDIS_URL)
            assert client.hgetall(f"{prefix}:ps:shard:1of4") == {b"policy": b"blob"}
            client.close()
        finally:
            store.close()
            delete_prefix(prefix)

    def test_unreachable_redis_raises_redis_error(self) -> None:
        store = RedisCheckpointStore("redis://127.0.0.1:1/0", timeout_s=1.0)
        with pytest.raises(redis.ConnectionError):
            store.ping()


def test_a_registry_rides_out_its_redis_restarting(own_redis: OwnRedis) -> None:
    # found by bench.chaos: Redis SIGKILLed during a search made the shard's RegisterLayout and
    # checkpointing pushes fail with UNKNOWN, and the job FAILED although every update applied
    server = own_redis.start()
    store = RedisCheckpointStore(f"redis://127.0.0.1:{own_redis.port}/0", prefix="t",
                                 timeout_s=1.0)
    layout = LayoutSpec("policy", total_size=4, num_shards=1, checkpoint_every=2)
    try:
        registry = ShardRegistry(0, 1, store)
        server.kill()
        server.wait(10)
        # Act: Redis is down for the registration and the push at a checkpoint interval
        assert registry.register(layout, 0, 0, np.zeros(4, np.float32)) == (0, True)
        for seq in (1, 2):
            assert registry.push("policy", "r0", seq, seq - 1, 0, np.ones(4, np.float32)).applied
        own_redis.start()
        # Assert: the next update saves the checkpoint that was due
        assert registry.push("policy", "r0", 3, 2, 0, np.ones(4, np.float32)).version == 3
        restored = ShardRegistry(0, 1, store)
        assert restored.get("policy").version == 3
    finally:
        store.close()
