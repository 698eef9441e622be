"""A job's K controller replicas: REINFORCE searches that share one policy kept on the
parameter-server shards, one set of drawn sequences, one surrogate and one learner state (the
baseline and reward statistics, ``RewardStats``: one policy, so one estimate of its expected
reward, over all the job's results rather than a K-th of them each).

Each replica's search runs in a thread of the job (its budget, cache, journal and children are
the service's). Its controller (policy, sampling, learning, pushes) is either in this process,
or, when the cluster has replica hosts, in replica ``i``'s host ``i mod P``
(``remote_replica.RemoteReplica``); there the drawn sequences, the surrogate and the learner
state are shared by the job's replicas on that host, and this process keeps the architectures
all of them proposed (``novelty``), so that none is proposed twice across hosts."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from controller.config import SearchConfig
from controller.distributed.host import settings_json
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.remote import RemoteUpdater, ReplicaStats
from controller.distributed.shards import layout_for
from controller.factory import build_reinforce, candidates_of
from controller.policy.lstm import LSTMPolicy
from controller.policy.novelty import NoveltyIndex
from controller.policy.ranking import OverlapGP
from controller.search import SearchOutcome
from controller.service.remote_replica import HostLink, RemoteReplica
from controller.service.resources import JobCluster
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy

log = logging.getLogger(__name__)

History = Sequence[tuple[Sequence[int], float]]


class ReplicaGroup:
    """The replicas of one run of ``job_id`` (their ids name the run's ``tag``). The layout id
    is the job id: registering it again after a restart keeps what the shards hold (or
    restored from their checkpoint), so a resumed job's policy goes on learning; its learner
    state comes back from the job's ``checkpoint`` (the job store keeps it with each policy
    note: the shards keep flat parameter vectors only)."""

    def __init__(self, cluster: JobCluster, job_id: str, tag: str, cfg: SearchConfig,
                 space: SearchSpace, checkpoint: Mapping[str, Any] | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.cluster = cluster
        self.settings = dict(settings or {})  # the job's spec: what a replica host builds from
        self.checkpoint: dict[str, Any] | None = dict(checkpoint) if checkpoint else None
        self.links: list[HostLink] = []
        self.job_id, self.tag = job_id, tag
        self.cfg, self.space = cfg, space
        self.stats: dict[str, ReplicaStats] = {}       # each replica's pushes and pulls
        self.outcomes: dict[str, SearchOutcome] = {}   # each replica's search, once ended
        self._lock = threading.Lock()
        seeded = build_reinforce(space, cfg)  # the initial policy of a new job
        self.batch_size = seeded.batch_size  # m
        self.initial = nn.utils.parameters_to_vector(seeded.policy.parameters()).detach()
        learner = seeded.learner.config
        self.reward_stats = seeded.learner.stats  # the replicas' learner state, shared
        if checkpoint is not None and "learner" in checkpoint:
            self.reward_stats.restore(checkpoint["learner"])
        self.layout = layout_for(cfg, job_id, self.initial.numel(), learner.learning_rate,
                                 learner.adam_betas, num_shards=len(cluster.addresses))
        self.client: ShardedParameterClient = cluster.parameter_client(self.layout)
        # what the replicas drew, and the surrogate ranking their draws: one for all of them
        self.novelty = NoveltyIndex([d.num_choices for d in space.decisions])
        self.ranker = OverlapGP(len(space.decisions)) if candidates_of(cfg) else None

    def run(self, search: Callable[[Strategy], SearchOutcome], history: History,
            reload: Callable[[], History] | None = None) -> list[SearchOutcome]:
        """Register the policy, run the K replicas to the end; their outcomes (the first
        error of any replica is raised). ``reload``: the job's history read again (a replica
        host that restarted takes it up)."""
        try:
            self._register()
            self._link_hosts(history, reload or (lambda: history))
            errors: list[BaseException] = []
            threads = [threading.Thread(target=self._replica, args=(i, search, history, errors),
                                        name=f"{self.job_id}-r{i}", daemon=True)
                       for i in range(self.cfg.replicas)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for link in self.links:
                link.close()
                link.channel.close()
            self.client.close()
        if errors:
            raise errors[0]
        return list(self.outcomes.values())

    def close(self) -> None:
        """Cut the replicas' parameter-server calls short (the service is closing)."""
        for link in self.links:
            link.close()
        self.client.close()

    def _link_hosts(self, history: History, reload: Callable[[], History]) -> None:
        """The job on each replica host (none: the replicas run in this process). The first
        host incarnation gets ``history``; one that restarted gets ``reload()``."""
        first = {address: True for address in self.cluster.replica_hosts}
        for actions, reward in history if self.cluster.replica_hosts else []:
            key = self.space.canonical_hash(self.space.decode(list(actions)))
            self.novelty.claim(key)  # proposed by an earlier run: never again
            self.novelty.settle(key, reward)

        def pages(address: str) -> History:
            if first.pop(address, False):
                return history
            return reload()

        self.links = [HostLink(self.cluster.host_channel(address), self.job_id,
                               settings_json(self.settings), self.layout,
                               list(self.cluster.addresses), functools.partial(pages, address),
                               lambda: self.checkpoint)
                      for address in self.cluster.replica_hosts]

    def _remember(self, checkpoint: dict[str, Any]) -> None:
        """A remote replica's latest learner state: what a restarted host starts from."""
        self.checkpoint = checkpoint

    def _register(self) -> None:
        versions = self.client.register(self.initial.numpy().astype(np.float32))
        if min(versions) > 0:
            log.info("%s: policy resumed from the parameter servers at version %d",
                     self.job_id, min(versions))
        else:
            log.info("%s: policy registered on %d parameter-server shards, %d replicas",
                     self.job_id, self.layout.num_shards, self.cfg.replicas)

    def _replica(self, index: int, search: Callable[[Strategy], SearchOutcome],
                 history: History, errors: list[BaseException]) -> None:
        name = f"{self.tag}-r{index}"
        try:
            if self.links:
                self._remote_replica(index, name, search)
                return
            def updater(policy: LSTMPolicy) -> RemoteUpdater:
                remote = RemoteUpdater(list(policy.parameters()), self.client, name,
                                       metrics=self.cluster.replica_metrics.replica(index))
                self.stats[name] = remote.stats
                return remote

            strategy = build_reinforce(self.space, self.cfg,
                                       seed=self.cfg.seed + 7919 * (index + 1), updater=updater,
                                       novelty=self.novelty, ranker=self.ranker)
            strategy.job_id = name
            strategy.learner.stats = self.reward_stats
            if index == 0:  # the draws and the surrogate are the replicas' shared ones
                strategy.resume(history)
            outcome = search(strategy)
            with self._lock:
                self.outcomes[name] = outcome
        except BaseException as exc:  # raised in the job's thread by run()
            errors.append(exc)

    def _remote_replica(self, index: int, name: str,
                        search: Callable[[Strategy], SearchOutcome]) -> None:
        """Replica ``index`` on host ``index mod P``: its search here, its controller there."""
        replica = RemoteReplica(self.space, self.links[index % len(self.links)], name, index,
                                self.batch_size,
                                self.cluster.replica_metrics.replica(index), self._remember,
                                self.novelty)
        self.stats[name] = replica.replica_stats
        try:
            outcome = search(replica)
        finally:
            replica.close()
        with self._lock:
            self.outcomes[name] = outcome
