"""The job store in Redis: one append-only journal (a list of JSON entries) per job.

Each append is one MULTI/EXEC guarded by WATCH on the journal, so concurrent writers of a job
are serialised and a reader never sees half a write. Every ``snapshot_every`` entries the folded
view is stored beside the journal (with the length it covers); a read folds only the entries
after it. The journal stays the truth: a lost or stale snapshot only costs a longer read.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from controller.jobs.store import ConflictError, JobView, JournalJobStore


class RedisJobStore(JournalJobStore):
    """Jobs under ``{prefix}:jobs`` (ids, in creation order) and ``{prefix}:job:{id}:*``."""

    def __init__(self, client: redis.Redis, prefix: str = "nas",
                 snapshot_every: int = 64) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every: must be >= 1, got {snapshot_every}")
        self.client = client
        self.prefix = prefix
        self.snapshot_every = snapshot_every

    def _key(self, job_id: str, what: str) -> str:
        return f"{self.prefix}:job:{job_id}:{what}"

    def _journal(self, job_id: str) -> JobView | None:
        raw = self.client.get(self._key(job_id, "snapshot"))
        view = JobView.from_json(json.loads(raw)) if raw is not None else None
        start = view.length if view is not None else 0
        rest = [json.loads(e) for e in self.client.lrange(self._key(job_id, "journal"), start,
                                                          -1)]
        if view is None:
            return JobView.from_journal(rest) if rest else None
        for entry in rest:
            view.apply(entry)
        return view

    def _append(self, job_id: str, expected_length: int, entry: dict[str, Any]) -> None:
        journal = self._key(job_id, "journal")
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(journal)
                if pipe.llen(journal) != expected_length:
                    raise ConflictError(job_id)
                pipe.multi()
                pipe.rpush(journal, json.dumps(entry))
                if expected_length == 0:
                    pipe.zadd(f"{self.prefix}:jobs", {job_id: float(entry["at"])})
                pipe.execute()
            except redis.WatchError:
                raise ConflictError(job_id) from None
        if (expected_length + 1) % self.snapshot_every == 0:
            self._snapshot(job_id)

    def _snapshot(self, job_id: str) -> None:
        view = self._journal(job_id)
        if view is not None:
            self.client.set(self._key(job_id, "snapshot"), json.dumps(view.to_json()))

    def _job_ids(self) -> list[str]:
        return [j.decode() if isinstance(j, bytes) else str(j)
                for j in self.client.zrange(f"{self.prefix}:jobs", 0, -1)]
