"""The job store in Redis: one append-only journal (a list of JSON entries) per job.

Each append is one MULTI/EXEC guarded by WATCH on the journal, so concurrent writers of a job
are serialised and a reader never sees half a write. Every ``snapshot_every`` entries the folded
view is stored beside the journal (with the length it covers); a read folds only the entries
after it. The journal stays the truth: a lost or stale snapshot only costs a longer read.
Watchers waiting for new entries poll the journal's length every ``poll_interval`` seconds.

A Redis that goes away (killed, restarting from its AOF) is waited for up to ``retry_for``
seconds: every read and append is retried on a connection error. An append whose reply was lost
is safe to retry: it is guarded by the journal's length, so one that did land makes the retry a
conflict, and the writer re-reads the view and sees its entry there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from controller.jobs.store import ConflictError, JobView, JournalJobStore, R
from protos.errors import NotFoundError

T = TypeVar("T")


class RedisJobStore(JournalJobStore):
    """Jobs under ``{prefix}:jobs`` (ids, in creation order) and ``{prefix}:job:{id}:*``."""

    poll_interval = 0.15

    def __init__(self, client: redis.Redis, prefix: str = "nas",
                 snapshot_every: int = 64, retry_for: float = 60.0) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every: must be >= 1, got {snapshot_every}")
        self.client = client
        self.retry_for = retry_for
        self.prefix = prefix
        self.snapshot_every = snapshot_every
        self._views: dict[str, JobView] = {}  # folded so far, per job (only later entries
        self._lock = threading.Lock()  # are read and folded on the next read)
        self._writers: dict[str, threading.Lock] = {}  # per job: this process's writers

    def _key(self, job_id: str, what: str) -> str:
        return f"{self.prefix}:job:{job_id}:{what}"

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, again after a connection error until ``retry_for`` s have passed (a
        Redis restarting: refused connections, then LOADING while it replays its AOF)."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 1.0)

    def _with_view(self, job_id: str, fn: Callable[[JobView], R]) -> R:
        with self._lock:
            cached = self._views.get(job_id)
            start = cached.length if cached is not None else 0
        snapshot = None
        if cached is None:  # first read in this process: start from the snapshot, if any
            raw = self._retrying(lambda: self.client.get(self._key(job_id, "snapshot")))
            if raw is not None:
                snapshot = JobView.from_json(json.loads(raw))
                start = snapshot.length
        journal = self._key(job_id, "journal")
        rest = [json.loads(e) for e in self._retrying(lambda: self.client.lrange(journal, start,
                                                                                 -1))]
        with self._lock:
            view = self._views.get(job_id)
            if view is None:
                if snapshot is None and not rest:
                    raise NotFoundError(f"job_id: no job {job_id!r}")
                view = snapshot if snapshot is not None else JobView.from_journal(rest[:1])
                self._views[job_id] = view
            for entry in rest[view.length - start:]:  # another thread may have folded some
                view.apply(entry)
            return fn(view)

    def _write(self, job_id: str, make: Any) -> Any:
        """This process's writers of a job take turns: racing each other to WATCH only made
        the losers re-read and retry (a job's replica and evaluation threads lost about two
        appends in three that way); writers in other processes still conflict and retry."""
        with self._lock:
            writer = self._writers.setdefault(job_id, threading.Lock())
        with writer:
            return super()._write(job_id, make)

    def _append(self, job_id: str, expected_length: int, entry: dict[str, Any]) -> None:
        self._retrying(lambda: self._append_once(job_id, expected_length, entry))
        if (expected_length + 1) % self.snapshot_every == 0:
            self._snapshot(job_id)

    def _append_once(self, job_id: str, expected_length: int, entry: dict[str, Any]) -> None:
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
            except redis.WatchError:  # another writer, or the connection broke while watching
                raise ConflictError(job_id) from None

    def _snapshot(self, job_id: str) -> None:
        doc = self._with_view(job_id, JobView.to_json)
        self._retrying(lambda: self.client.set(self._key(job_id, "snapshot"), json.dumps(doc)))

    def _job_ids(self) -> list[str]:
        ids = self._retrying(lambda: self.client.zrange(f"{self.prefix}:jobs", 0, -1))
        return [j.decode() if isinstance(j, bytes) else str(j) for j in ids]

    def _read(self, job_id: str, offset: int) -> list[dict[str, Any]]:
        journal = self._key(job_id, "journal")

        def read() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.lrange(journal, offset, -1)
                pipe.exists(journal)
                return list(pipe.execute())

        raw, exists = self._retrying(read)
        if not exists:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return [json.loads(e) for e in raw]

    def _wait_longer(self, job_id: str, length: int, timeout: float) -> None:
        time.sleep(min(timeout, self.poll_interval))
