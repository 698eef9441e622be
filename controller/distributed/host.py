"""A replica host's jobs and replicas: the controller replicas of the paper's layout in a process
of their own (``nas serve replica``), driven by the search service over gRPC.

The service keeps everything a job must not lose (the budget, the evaluation cache, the
journal, the trials and their children); a host keeps only what a replica can rebuild: its
LSTM policy (a copy of the shards'), the sequences drawn, the surrogate and the learner state
of the job's replicas on this host (shared by them, as ``controller.service.replicas`` shares
them in-process). A host that dies loses no result: the service finishes the children of its
replicas, starts the replicas again on the restarted host (a new *incarnation*: new trial ids,
a new push id, so every push stays exactly-once) with the job's history and learner checkpoint,
and hands them the results their predecessors had not pushed yet (``adopt``).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.config import SearchConfig, build_config
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.remote import RemoteUpdater, ReplicaStats
from controller.factory import build_reinforce, build_space, candidates_of
from controller.policy.lstm import LSTMPolicy
from controller.policy.novelty import NoveltyIndex
from controller.policy.ranking import OverlapGP
from controller.policy.reward_stats import RewardStats
from controller.spaces.base import InvalidArchitecture, SearchSpace
from controller.strategies.reinforce import ReinforceStrategy
from protos.cluster_auth import ClusterAuth
from protos.errors import InvalidArgumentError, NotFoundError
from protos.types import LayoutSpec, Trial, TrialResult, TrialStatus

log = logging.getLogger(__name__)
REMEMBERED = 1024  # trial ids of results a replica remembers taking


@dataclass(frozen=True)
class Update:
    """One policy update a report caused: its push and the pull after it."""

    applied: bool
    staleness: int
    push_seconds: float
    pull_seconds: float
    duplicates: int


@dataclass
class Reported:
    """What a report did to the replica."""

    updated: bool
    updates: list[Update]
    stats: dict[str, float]
    checkpoint: dict[str, Any] | None


@dataclass
class HostedReplica:
    """One replica: its strategy (calls are serialized: the service drives each replica from
    one thread, a retry after a lost reply may overlap)."""

    strategy: ReinforceStrategy
    stats: ReplicaStats
    lock: threading.Lock = field(default_factory=threading.Lock)
    reported: OrderedDict[str, None] = field(default_factory=OrderedDict)  # the last results'
    # trial ids: a report retried after its reply was lost is taken once

    def seen(self, trial_id: str) -> bool:
        """Whether the result of ``trial_id`` was taken already (remembering it if not)."""
        if trial_id in self.reported:
            return True
        self.reported[trial_id] = None
        if len(self.reported) > REMEMBERED:
            self.reported.popitem(last=False)
        return False


@dataclass
class HostedJob:
    """A job's replicas on this host and what they share."""

    cfg: SearchConfig
    space: SearchSpace
    client: ShardedParameterClient
    reward_stats: RewardStats
    novelty: NoveltyIndex
    ranker: OverlapGP | None
    replicas: dict[str, HostedReplica] = field(default_factory=dict)
    history: list[tuple[tuple[int, ...], float]] = field(default_factory=list)


class ReplicaHostState:
    """The jobs and replicas of one host process; ``auth``: how it calls the shards."""

    def __init__(self, auth: ClusterAuth | None = None) -> None:
        self.host_id = uuid.uuid4().hex[:12]
        self.auth = auth
        self._lock = threading.Lock()
        self._jobs: dict[str, HostedJob] = {}

    def begin_job(self, job_id: str, settings: Mapping[str, Any], layout: LayoutSpec,
                  shards: Sequence[str], checkpoint: Mapping[str, Any] | None) -> bool:
        """Take up a job (False: it was here already)."""
        with self._lock:
            if job_id in self._jobs:
                return False
        cfg = build_config(settings)
        if cfg.strategy != "reinforce":
            raise InvalidArgumentError(f"settings_json: replica hosts run REINFORCE "
                                       f"controllers, got strategy {cfg.strategy!r}")
        space = build_space(cfg)
        seeded = build_reinforce(space, cfg)
        stats = seeded.learner.stats
        if checkpoint and "learner" in checkpoint:
            stats.restore(checkpoint["learner"])
        job = HostedJob(cfg, space, ShardedParameterClient(list(shards), layout, auth=self.auth),
                        stats, NoveltyIndex([d.num_choices for d in space.decisions]),
                        OverlapGP(len(space.decisions)) if candidates_of(cfg) else None)
        with self._lock:
            if job_id in self._jobs:  # begun meanwhile by another call
                job.client.close()
                return False
            self._jobs[job_id] = job
        log.info("took up job %s (%d shards)", job_id, layout.num_shards)
        return True

    def load_history(self, job_id: str, entries: Sequence[tuple[Sequence[int], float]]) -> None:
        """What the job evaluated before; its first replica here takes it up."""
        job = self._job(job_id)
        with self._lock:
            job.history += [(tuple(a), float(r)) for a, r in entries]

    def open_replica(self, job_id: str, replica_id: str, index: int, incarnation: int) -> None:
        """Start a replica (nothing when it runs already)."""
        job = self._job(job_id)
        with self._lock:
            if replica_id in job.replicas:
                return
        made: list[RemoteUpdater] = []

        def updater(policy: LSTMPolicy) -> RemoteUpdater:
            made.append(RemoteUpdater(list(policy.parameters()), job.client, replica_id))
            return made[0]

        seed = job.cfg.seed + 7919 * (index + 1) + 104729 * incarnation
        strategy = build_reinforce(job.space, job.cfg, seed=seed, updater=updater,
                                   novelty=job.novelty, ranker=job.ranker)
        strategy.job_id = replica_id
        strategy.learner.stats = job.reward_stats
        with self._lock:
            if replica_id in job.replicas:
                return
            history, job.history = job.history, []
            job.replicas[replica_id] = HostedReplica(strategy, made[0].stats)
        strategy.resume(history)  # the draws and the surrogate are the job's shared ones
        log.info("replica %s of job %s started (incarnation %d, %d results taken up)",
                 replica_id, job_id, incarnation, len(history))

    def suggest(self, job_id: str, replica_id: str, n: int) -> list[Trial]:
        """Up to ``n`` proposals of the replica."""
        if n < 1:
            raise InvalidArgumentError(f"n: must be >= 1, got {n}")
        replica = self._replica(job_id, replica_id)
        with replica.lock:
            return replica.strategy.suggest(n)

    def report(self, job_id: str, replica_id: str, trial_id: str, actions: Sequence[int],
               reward: float, failed: bool, cached: bool) -> Reported:
        """Give a result to the replica (adopting a trial its predecessor proposed)."""
        replica = self._replica(job_id, replica_id)
        strategy = replica.strategy
        status = TrialStatus.FAILED if failed else TrialStatus.SUCCEEDED
        with replica.lock:
            if replica.seen(trial_id):
                return Reported(False, [], strategy.stats(), None)
            if not strategy.issued(trial_id):
                try:
                    strategy.adopt(trial_id, actions)
                except InvalidArchitecture as exc:  # it names the field (actions)
                    raise InvalidArgumentError(f"{exc} (trial {trial_id!r} is not a pending "
                                               f"proposal of {replica_id!r})") from None
            result = TrialResult(trial_id, status, reward, cached=cached)
            return self._learning(replica, lambda: strategy.report(trial_id, result))

    def withdraw(self, job_id: str, replica_id: str, trial_id: str,
                 reward: float | None) -> Reported:
        """Take back a proposal the service did not run (see ``ReinforceStrategy.withdraw``)."""
        replica = self._replica(job_id, replica_id)
        with replica.lock:
            return self._learning(replica, lambda: replica.strategy.withdraw(trial_id, reward))

    def _learning(self, replica: HostedReplica, act: Callable[[], None]) -> Reported:
        """Run ``act`` on the replica's strategy (lock held) and say what it pushed."""
        strategy, stats = replica.strategy, replica.stats
        version, done = strategy.learner.version, len(stats.pull_seconds)
        counters = (stats.pushes, stats.rejected_stale, stats.duplicates)
        act()
        updated = strategy.learner.version != version or len(stats.pull_seconds) > done
        updates = _updates(stats, done, counters) if updated else []
        return Reported(updated, updates, strategy.stats(),
                        strategy.checkpoint() if updated else None)

    def close_replica(self, job_id: str, replica_id: str) -> None:
        """A replica's search ended; the job leaves with its last replica."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.replicas.pop(replica_id, None)
            if job.replicas:
                return
            del self._jobs[job_id]
        job.client.close()

    def close(self) -> None:
        """Cut every job's shard calls short (the host is stopping)."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.client.close()

    def _job(self, job_id: str) -> HostedJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"job_id: job {job_id!r} is not on replica host {self.host_id}")
        return job

    def _replica(self, job_id: str, replica_id: str) -> HostedReplica:
        job = self._job(job_id)
        with self._lock:
            replica = job.replicas.get(replica_id)
        if replica is None:
            raise NotFoundError(f"replica_id: replica {replica_id!r} of job {job_id!r} is not "
                                f"on replica host {self.host_id}")
        return replica


def _updates(stats: ReplicaStats, pulls_before: int,
             counters: tuple[int, int, int]) -> list[Update]:
    """The pushes (and pulls) a report caused, from the replica's statistics before it."""
    pushes, rejected, duplicates = counters
    new_pulls = stats.pull_seconds[pulls_before:]
    applied = stats.pushes - pushes
    out = [Update(True, stats.staleness[len(stats.staleness) - applied + i],
                  stats.push_seconds[len(stats.push_seconds) - applied + i],
                  new_pulls[i] if i < len(new_pulls) else 0.0,
                  stats.duplicates - duplicates if i == 0 else 0) for i in range(applied)]
    out += [Update(False, 0, 0.0, 0.0, 0) for _ in range(stats.rejected_stale - rejected)]
    return out


def settings_json(spec: Mapping[str, Any]) -> str:
    """A job's settings as the JSON ``BeginJob`` carries."""
    return json.dumps(dict(spec), sort_keys=True)

