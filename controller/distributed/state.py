"""What the replicas of one job share through Redis: the training budget, the evaluation cache
and the history. Every write is a single atomic command (INCR, SET NX, RPUSH)."""

from __future__ import annotations

import json
from typing import Any

import redis

from controller.cache import CachedEvaluation, EvaluationCache
from controller.search import HistoryEntry


class RedisCache(EvaluationCache):
    """The evaluation cache in Redis: first result stored under a key wins (SET NX), so every
    job and replica on the same Redis shares it."""

    def __init__(self, client: redis.Redis, prefix: str = "nas") -> None:
        super().__init__()
        self.client = client
        self.prefix = f"{prefix}:cache:"

    def _get(self, key: str) -> CachedEvaluation | None:
        raw = self.client.get(self.prefix + key)
        if raw is None:
            return None
        doc = json.loads(raw)
        return CachedEvaluation(doc["reward"], doc["arch"], doc["metrics"], doc["artifacts"])

    def put(self, key: str, value: CachedEvaluation) -> bool:
        doc = {"reward": value.reward, "arch": value.arch, "metrics": dict(value.metrics),
               "artifacts": dict(value.artifacts)}
        return bool(self.client.set(self.prefix + key, json.dumps(doc), nx=True))


class JobState:
    """One job's shared counters and history under ``{prefix}:job:{job_id}:``."""

    def __init__(self, client: redis.Redis, job_id: str, prefix: str = "nas") -> None:
        self.client = client
        self.key = f"{prefix}:job:{job_id}:"

    def write_spec(self, doc: dict[str, Any]) -> None:
        """Store what replicas need to start (config, layout, shard addresses)."""
        self.client.set(self.key + "spec", json.dumps(doc))

    def read_spec(self) -> dict[str, Any]:
        """The job's spec; KeyError if it was never written."""
        raw = self.client.get(self.key + "spec")
        if raw is None:
            raise KeyError(f"no job spec at {self.key}spec")
        return dict(json.loads(raw))

    def claimer(self, budget: int) -> Any:
        """A claim() for run_search: True while the job's trainings stay within ``budget``."""
        def claim() -> bool:
            return int(self.client.incr(self.key + "trainings")) <= budget
        return claim

    def trainings(self) -> int:
        """Trainings claimed so far (may exceed the budget by refused claims)."""
        return int(self.client.get(self.key + "trainings") or 0)

    def append(self, entry: HistoryEntry) -> None:
        """Record one history entry."""
        self.client.rpush(self.key + "history", json.dumps(entry.to_json()))

    def history(self) -> list[dict[str, Any]]:
        """Every entry recorded, in arrival order."""
        return [json.loads(raw) for raw in self.client.lrange(self.key + "history", 0, -1)]

    def report_replica(self, replica_id: str, stats: dict[str, Any]) -> None:
        """A replica's closing statistics."""
        self.client.hset(self.key + "replicas", replica_id, json.dumps(stats))

    def replica_reports(self) -> dict[str, dict[str, Any]]:
        """Closing statistics by replica id."""
        raw = self.client.hgetall(self.key + "replicas")
        return {k.decode() if isinstance(k, bytes) else str(k): json.loads(v)
                for k, v in raw.items()}
