"""The job store in Redis: per job a journal (a list of JSON entries), a summary and indexes.

Keys (``P`` is the prefix):

- ``P:cache`` (hash: cache key -> JSON) every training any job recorded, the first per key.
- ``P:jobs:n`` numbers jobs as they are created; ``P:jobs``, ``P:jobs:t:TENANT``,
  ``P:jobs:s:STATE`` and ``P:jobs:t:TENANT:s:STATE`` are sorted sets of job ids by number
  (pages of ListSearches, newest first); ``P:usage:TENANT`` a hash of the budget its unfinished
  jobs reserve and the trainings its ended jobs used.
- ``P:job:ID:summary`` (JSON ``JobSummary``), ``:journal`` (the entries from position ``:base``
  on; ``:basesummary`` is the summary as of that position), ``:trials`` (hash: trial id -> JSON
  ``TrialRecord``), ``:order`` and ``:st:STATUS`` (sorted sets of trial ids by start index),
  ``:best`` (sorted set by -reward, members ``INDEX|ID``), ``:trained`` (the trained
  architectures indexed there), ``:fronts`` (JSON Pareto fronts), ``:checkpoint`` (JSON: the
  policy's learner state, replaced with each ``policy`` note, deleted when the job ends).

Each append is one MULTI/EXEC guarded by WATCH on the job's summary, so concurrent writers are
serialised, a reader never sees half a write, and the summary and indexes always agree with the
journal. Compaction happens in the same transaction. Journal reads run as one Lua script so a
compaction cannot shift the list between reading its base and its entries.

A Redis that goes away (killed, restarting from its AOF) is waited for up to ``retry_for``
seconds: every read and write is retried on a connection error. A write whose reply was lost is
safe to retry: the retry re-reads the summary and sees its own entry there.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import redis
from redis.client import Pipeline

from controller.jobs.projection import Change, Fronts, arch_key
from controller.jobs.records import STATES, JobSummary, TrialRecord
from controller.jobs.store import CompactedError, ConflictError, JournalJobStore, Txn
from protos.errors import NotFoundError

T = TypeVar("T")

# KEYS: journal, base position, summary; ARGV: offset, count (-1: all). Returns
# {0, entries...} | {1, base} (compacted) | {2} (no such job).
READ_JOURNAL = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {2} end
local base = tonumber(redis.call('GET', KEYS[2]) or '0')
local start = tonumber(ARGV[1]) - base
if start < 0 then return {1, base} end
local stop = -1
if tonumber(ARGV[2]) >= 0 then stop = start + tonumber(ARGV[2]) - 1 end
local out = redis.call('LRANGE', KEYS[1], start, stop)
table.insert(out, 1, 0)
return out
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisJobStore(JournalJobStore):
    """Jobs under ``{prefix}:*`` (see the module docstring for the keys)."""

    poll_interval = 0.15

    def __init__(self, client: redis.Redis, prefix: str = "nas", retry_for: float = 60.0,
                 journal_keep: int | None = 4096) -> None:
        super().__init__(journal_keep)
        self.client = client
        self.retry_for = retry_for
        self.prefix = prefix
        self._read_journal = client.register_script(READ_JOURNAL)
        self._lock = threading.Lock()
        self._writers: dict[str, threading.Lock] = {}  # per job: this process's writers

    def _key(self, job_id: str, what: str) -> str:
        return f"{self.prefix}:job:{job_id}:{what}"

    def _list(self, tenant: str | None, state: str | None) -> str:
        """The sorted set of job ids matching the filters."""
        key = f"{self.prefix}:jobs"
        if tenant is not None:
            key += f":t:{tenant}"
        if state is not None:
            key += f":s:{state}"
        return key

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

    # -- writes ------------------------------------------------------------------------------

    def _write(self, job_id: str, make: Any, checkpoint: Any = None) -> Any:
        """This process's writers of a job take turns: racing each other to WATCH only made
        the losers re-read and retry; writers in other processes still conflict and retry."""
        with self._lock:
            writer = self._writers.setdefault(job_id, threading.Lock())
        with writer:
            return self._retrying(lambda: super(RedisJobStore, self)._write(job_id, make,
                                                                             checkpoint))

    @contextlib.contextmanager
    def _transaction(self, job_id: str) -> Iterator[Txn]:
        with self.client.pipeline() as pipe:
            yield _RedisTxn(self, job_id, pipe)

    def _insert(self, summary: JobSummary, entry: dict[str, Any]) -> JobSummary:
        summary.number = int(self._retrying(lambda: self.client.incr(f"{self.prefix}:jobs:n")))

        def insert() -> None:
            key = self._key(summary.job_id, "summary")
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.exists(key):
                        raise ConflictError(summary.job_id)
                    pipe.multi()
                    pipe.rpush(self._key(summary.job_id, "journal"), json.dumps(entry))
                    _index_job(pipe, self, summary, None, summary.state)
                    pipe.hincrby(f"{self.prefix}:usage:{summary.tenant}", "reserved",
                                 summary.budget)
                    pipe.set(key, json.dumps(summary.to_json()))
                    pipe.execute()
                except redis.WatchError:
                    raise ConflictError(summary.job_id) from None

        self._retrying(insert)
        return summary.copy()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._writers.pop(job_id, None)

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobSummary:
        raw = self._retrying(lambda: self.client.get(self._key(job_id, "summary")))
        if raw is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return JobSummary.from_json(json.loads(raw))

    def jobs(self, tenant: str | None = None, state: str | None = None, limit: int = 100,
             before: int | None = None) -> tuple[list[JobSummary], int | None]:
        top = "+inf" if before is None else f"({before}"
        found: list[Any] = list(self._retrying(lambda: self.client.zrevrangebyscore(
            self._list(tenant, state), top, "-inf", start=0, num=limit + 1, withscores=True)))
        chosen = found[:limit]
        if not chosen:
            return [], None
        raws = self._retrying(lambda: self.client.mget(
            [self._key(_text(j), "summary") for j, _ in chosen]))
        page = [JobSummary.from_json(json.loads(r)) for r in raws if r is not None]
        return page, (int(chosen[-1][1]) if len(found) > limit else None)

    def count_jobs(self) -> dict[str, int]:
        def count() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                for state in STATES:
                    pipe.zcard(self._list(None, state))
                return list(pipe.execute())

        return dict(zip(STATES, map(int, self._retrying(count)), strict=True))

    def tenant_usage(self, tenant: str) -> tuple[int, int]:
        reserved, used = self._retrying(lambda: self.client.hmget(
            f"{self.prefix}:usage:{tenant}", ["reserved", "used"]))
        return int(reserved or 0), int(used or 0)

    def cached(self, cache_key: str) -> dict[str, Any] | None:
        raw = self._retrying(lambda: self.client.hget(f"{self.prefix}:cache", cache_key))
        return json.loads(raw) if raw is not None else None

    def _journal_script(self, job_id: str, offset: int, count: int) -> list[Any]:
        keys = [self._key(job_id, "journal"), self._key(job_id, "base"),
                self._key(job_id, "summary")]
        reply = self._retrying(lambda: self._read_journal(keys=keys, args=[offset, count]))
        if int(reply[0]) == 2:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        if int(reply[0]) == 1:
            raise CompactedError(job_id, int(reply[1]))
        return list(reply[1:])

    def _read(self, job_id: str, offset: int, limit: int | None) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self._journal_script(job_id, offset,
                                                            -1 if limit is None else limit)]

    def _entry_at(self, job_id: str, position: int) -> dict[str, Any] | None:
        try:
            found = self._journal_script(job_id, position, 1)
        except CompactedError:
            return None
        return json.loads(found[0]) if found else None

    def _wait_longer(self, job_id: str, length: int, timeout: float) -> None:
        time.sleep(min(timeout, self.poll_interval))

    def base_summary(self, job_id: str) -> JobSummary | None:
        raw = self._retrying(lambda: self.client.get(self._key(job_id, "basesummary")))
        return JobSummary.from_json(json.loads(raw)) if raw is not None else None

    def _page(self, job_id: str, status: str | None, after: int, limit: int
              ) -> list[TrialRecord]:
        index = self._key(job_id, "order" if status is None else f"st:{status}")

        def page() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.exists(self._key(job_id, "summary"))
                pipe.zrangebyscore(index, f"({after}", "+inf", start=0, num=limit)
                return list(pipe.execute())

        exists, ids = self._retrying(page)
        if not exists:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return [r for r in self._records(job_id, [_text(i) for i in ids]) if r is not None]

    def checkpoint(self, job_id: str) -> dict[str, Any] | None:
        def read() -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.exists(self._key(job_id, "summary"))
                pipe.get(self._key(job_id, "checkpoint"))
                return list(pipe.execute())

        exists, raw = self._retrying(read)
        if not exists:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        return json.loads(raw) if raw is not None else None

    def best(self, job_id: str, k: int) -> list[TrialRecord]:
        self.get(job_id)
        members: list[Any] = list(self._retrying(lambda: self.client.zrange(
            self._key(job_id, "best"), 0, k - 1)))
        ids = [_text(m).split("|", 1)[1] for m in members]
        return [r for r in self._records(job_id, ids) if r is not None]

    def _fronts(self, job_id: str) -> Fronts:
        raw = self._retrying(lambda: self.client.get(self._key(job_id, "fronts")))
        return json.loads(raw) if raw is not None else {}

    def _records(self, job_id: str, trial_ids: list[str]) -> list[TrialRecord | None]:
        if not trial_ids:
            return []
        raws = self._retrying(lambda: self.client.hmget(self._key(job_id, "trials"),
                                                        trial_ids))
        return [TrialRecord.from_json(json.loads(r)) if r is not None else None for r in raws]


def _index_job(pipe: Pipeline, store: RedisJobStore, summary: JobSummary, old: str | None,
               new: str) -> None:
    """Queue the moves of a job between the state lists (``old`` None: a new job)."""
    job, number, tenant = summary.job_id, summary.number, summary.tenant
    if old is None:
        for key in (store._list(None, None), store._list(tenant, None)):
            pipe.zadd(key, {job: number})
    else:
        for key in (store._list(None, old), store._list(tenant, old)):
            pipe.zrem(key, job)
    for key in (store._list(None, new), store._list(tenant, new)):
        pipe.zadd(key, {job: number})


class _RedisTxn:
    """One job's write: WATCH on its summary, reads, then one MULTI/EXEC."""

    def __init__(self, store: RedisJobStore, job_id: str, pipe: Pipeline) -> None:
        self.store, self.job_id, self.pipe = store, job_id, pipe
        self.key = store._key
        pipe.watch(self.key(job_id, "summary"))
        raw = pipe.get(self.key(job_id, "summary"))
        if raw is None:
            raise NotFoundError(f"job_id: no job {job_id!r}")
        self.summary = JobSummary.from_json(json.loads(raw))

    def trial(self, trial_id: str) -> TrialRecord | None:
        raw = self.pipe.hget(self.key(self.job_id, "trials"), trial_id)
        return TrialRecord.from_json(json.loads(raw)) if raw is not None else None

    def has_trained(self, arch_key: str) -> bool:
        return bool(self.pipe.sismember(self.key(self.job_id, "trained"), arch_key))

    def fronts(self) -> Fronts:
        raw = self.pipe.get(self.key(self.job_id, "fronts"))
        return json.loads(raw) if raw is not None else {}

    def entries(self, start: int, stop: int) -> list[dict[str, Any]]:
        base = self.summary.base
        raws = self.pipe.lrange(self.key(self.job_id, "journal"), start - base,
                                stop - base - 1)
        return [json.loads(r) for r in raws]

    def base_summary(self) -> JobSummary | None:
        raw = self.pipe.get(self.key(self.job_id, "basesummary"))
        return JobSummary.from_json(json.loads(raw)) if raw is not None else None

    def commit(self, change: Change, compaction: tuple[JobSummary, int] | None) -> None:
        pipe, job = self.pipe, self.job_id
        try:
            pipe.multi()
            pipe.rpush(self.key(job, "journal"), json.dumps(change.entry))
            self._records(change.records, change.dropped)
            if change.best is not None:
                best = change.best
                pipe.zadd(self.key(job, "best"), {f"{best.index:012d}|{best.trial_id}":
                                                  -best.reward})
                pipe.sadd(self.key(job, "trained"), arch_key(best.trained_arch))
            if change.fronts is not None:
                pipe.set(self.key(job, "fronts"), json.dumps(change.fronts))
            if change.state is not None:
                _index_job(pipe, self.store, change.summary, *change.state)
            usage = f"{self.store.prefix}:usage:{change.summary.tenant}"
            if change.reserved:
                pipe.hincrby(usage, "reserved", change.reserved)
            if change.used:
                pipe.hincrby(usage, "used", change.used)
            if change.cache is not None:
                pipe.hsetnx(f"{self.store.prefix}:cache", change.cache[0],
                            json.dumps(change.cache[1]))
            if change.checkpoint is not None:
                pipe.set(self.key(job, "checkpoint"), json.dumps(change.checkpoint))
            elif change.drop_checkpoint:
                pipe.delete(self.key(job, "checkpoint"))
            if compaction is not None:
                base, cut = compaction
                pipe.set(self.key(job, "basesummary"), json.dumps(base.to_json()))
                pipe.ltrim(self.key(job, "journal"), cut - self.summary.base, -1)
                pipe.set(self.key(job, "base"), cut)
            pipe.set(self.key(job, "summary"), json.dumps(change.summary.to_json()))
            pipe.execute()
        except redis.WatchError:
            raise ConflictError(job) from None

    def _records(self, records: Sequence[tuple[TrialRecord, Any]],
                 dropped: Sequence[TrialRecord]) -> None:
        pipe, job = self.pipe, self.job_id
        for record, old in records:
            trial_id = record.trial_id
            pipe.hset(self.key(job, "trials"), trial_id, json.dumps(record.to_json()))
            if old is not None:
                pipe.zrem(self.key(job, f"st:{old.value}"), trial_id)
            else:
                pipe.zadd(self.key(job, "order"), {trial_id: record.index})
            pipe.zadd(self.key(job, f"st:{record.status.value}"), {trial_id: record.index})
        for record in dropped:
            pipe.hdel(self.key(job, "trials"), record.trial_id)
            pipe.zrem(self.key(job, "order"), record.trial_id)
            pipe.zrem(self.key(job, f"st:{record.status.value}"), record.trial_id)
