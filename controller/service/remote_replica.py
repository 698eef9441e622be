"""A job's controller replica that runs on a replica host (``nas serve replica``), seen by the
search service as a :class:`Strategy`: the job's thread runs ``run_search`` with it as with a
local one (the budget, cache, journal and children stay in the service), and each ``suggest``
and ``report`` is a call to the host, where the replica's policy samples, learns and pushes to
the parameter-server shards.

When the host dies (SIGKILL, a lost machine) the replica's children go on in the service; its
results wait here, and once the host answers again (restarted by the service's cluster, or by
whoever runs it) the replica is started there again: a new incarnation (``name.iN``: new trial
ids, a new push id, so no push is ever applied twice) that takes up the job's history and
learner checkpoint and gets the results its predecessor had not pushed yet, before any new
one. No accepted result is lost. One edge is left: a batch whose push reached the shards
while its host died (the reply never came back) is pushed again by the next incarnation,
under its own push id; at most one batch per replica of the dead host is learned from twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from controller.distributed.metrics import ReplicaMetrics
from controller.distributed.remote import ReplicaStats
from controller.policy.novelty import NoveltyIndex
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos import codec
from protos.errors import NotFoundError
from protos.rpc import call_with_retry
from protos.types import LayoutSpec, Trial, TrialResult, TrialStatus
from protos.v1 import replica_pb2 as rp
from protos.v1 import replica_pb2_grpc as rp_grpc

RETRIES = 4  # times a replica's host is asked again for proposals no other replica made
HISTORY_PAGE = 2000  # entries per LoadHistory call
WAIT_FOR_HOST = 180.0  # seconds a replica waits for its host to answer again
CALL_TIMEOUT = 120.0  # a Report may push and pull (the shards' retries included)

History = Callable[[], Iterable[tuple[Sequence[int], float]]]
Unpushed = tuple[str, tuple[int, ...], float, bool, bool]  # trial id, actions, reward, failed,
# cached


class HostLink:
    """A job on one replica host: begun there once per host incarnation (``ensure``), with
    the job's history and its latest learner checkpoint."""

    def __init__(self, channel: grpc.Channel, job_id: str, settings_json: str,
                 layout: LayoutSpec, shards: Sequence[str], history: History,
                 checkpoint: Callable[[], dict[str, Any] | None]) -> None:
        self.channel = channel
        self.stub = rp_grpc.ReplicaHostStub(channel)
        self.job_id = job_id
        self._begin = rp.BeginJobRequest(job_id=job_id, settings_json=settings_json,
                                         layout=codec.layout_to_proto(layout),
                                         shard_addresses=list(shards))
        self._history, self._checkpoint = history, checkpoint
        self.host_id: str | None = None
        self._lock = threading.Lock()
        self.closed = threading.Event()

    def call(self, fn: Callable[[], Any]) -> Any:
        """One call, retried while the host is unreachable (``WAIT_FOR_HOST`` s)."""
        return call_with_retry(fn, WAIT_FOR_HOST, give_up=self.closed.is_set)

    def ensure(self, stale: str | None) -> str:
        """The host's incarnation with the job begun on it; ``stale``: the incarnation the
        caller found gone (the job is begun again unless another replica did it already)."""
        with self._lock:
            if self.host_id is not None and self.host_id != stale:
                return self.host_id
            request = rp.BeginJobRequest()
            request.CopyFrom(self._begin)
            checkpoint = self._checkpoint()
            request.checkpoint_json = json.dumps(checkpoint) if checkpoint else ""
            reply = self.call(lambda: self.stub.BeginJob(request, timeout=CALL_TIMEOUT))
            if reply.created:
                self._load_history()
            self.host_id = reply.host_id
            return self.host_id

    def _load_history(self) -> None:
        page: list[rp.Scored] = []
        for actions, reward in self._history():
            page.append(rp.Scored(actions=list(actions), reward=reward))
            if len(page) >= HISTORY_PAGE:
                self._send_page(page)
                page = []
        if page:
            self._send_page(page)

    def _send_page(self, page: list[rp.Scored]) -> None:
        request = rp.LoadHistoryRequest(job_id=self.job_id, entries=page)
        self.call(lambda: self.stub.LoadHistory(request, timeout=CALL_TIMEOUT))

    def close(self) -> None:
        """Stop waiting for the host (the job ended or the service is closing)."""
        self.closed.set()


class RemoteReplica(Strategy):
    """Replica ``index`` of a job, named ``name``, on the host of ``link``."""

    name = "reinforce"

    def __init__(self, space: SearchSpace, link: HostLink, name: str, index: int,
                 batch_size: int, metrics: ReplicaMetrics | None = None,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 proposed: NoveltyIndex | None = None) -> None:
        super().__init__(space, name)
        self.proposed = proposed  # the architectures every replica of the job proposed
        self.link, self.base_name, self.index = link, name, index
        self.batch_size = batch_size
        self.metrics = metrics
        self.on_checkpoint = on_checkpoint
        self.replica_stats = ReplicaStats()
        self.incarnation = 0
        self.replica_id = name
        self._stats: dict[str, float] = {}
        self._checkpoint: dict[str, Any] | None = None
        self._unpushed: list[Unpushed] = []  # results the host has not pushed yet
        self._host_id: str | None = None
        self._lost = False  # the host lost this incarnation: the next one starts first
        self._open()

    def _open(self) -> None:
        """Start this incarnation on the host (beginning the job there first if the host is
        new to it)."""
        while True:
            self._host_id = self.link.ensure(self._host_id)
            request = rp.OpenReplicaRequest(job_id=self.link.job_id, replica_id=self.replica_id,
                                            index=self.index, incarnation=self.incarnation)
            try:
                self.link.call(functools.partial(self.link.stub.OpenReplica, request,
                                                 timeout=CALL_TIMEOUT))
                return
            except NotFoundError:  # the host restarted in between: begin the job again
                if self.link.closed.is_set():
                    raise

    def _call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the host; when the host lost this replica (it restarted), start the
        replica's next incarnation there first and call again."""
        deadline = time.monotonic() + WAIT_FOR_HOST
        while True:
            try:
                if self._lost:
                    self._replace()
                return self.link.call(fn)
            except NotFoundError:
                if self.link.closed.is_set() or time.monotonic() > deadline:
                    raise
                self._lost = True

    def _replace(self) -> None:
        """The next incarnation, with the results its predecessor had not pushed (they stay
        owed if the host is lost again meanwhile)."""
        self.incarnation += 1
        self.replica_id = f"{self.base_name}.i{self.incarnation}"
        self._open()
        owed, self._unpushed = self._unpushed, []
        for done, item in enumerate(owed):
            self._unpushed.append(item)
            try:
                self._absorb(self.link.call(functools.partial(self._send, item)))
            except BaseException:
                self._unpushed += owed[done + 1:]
                raise
        self._lost = False

    def suggest(self, n: int = 1) -> list[Trial]:
        """Up to ``n`` proposals of architectures no replica of the job proposed before. A
        replica's host knows only its own replicas' draws: a proposal another host's replica
        made is withdrawn (a free lesson when its reward is known) and the host is asked again,
        ``RETRIES`` times; after that the last ones are taken as they are (cache hits)."""
        trials: list[Trial] = []
        for attempt in range(RETRIES + 1):
            reply = self._call(lambda: self.link.stub.Suggest(rp.SuggestRequest(
                job_id=self.link.job_id, replica_id=self.replica_id, n=n - len(trials)),
                timeout=CALL_TIMEOUT))
            for p in reply.proposals:
                arch = self.space.decode(list(p.actions))
                trial = Trial(p.trial_id, arch, tuple(p.actions),
                              self.space.canonical_hash(arch), int(p.policy_version),
                              self.job_id)
                new, reward = (True, None) if self.proposed is None else \
                    self.proposed.claim(trial.arch_hash)
                if new or attempt == RETRIES:
                    self._pending[trial.trial_id] = trial
                    trials.append(trial)
                else:
                    self._withdraw(trial.trial_id, reward)
            if len(trials) == n or not reply.proposals:
                break
        return trials

    def _withdraw(self, trial_id: str, reward: float | None) -> None:
        request = rp.WithdrawRequest(job_id=self.link.job_id, replica_id=self.replica_id,
                                     trial_id=trial_id, known=reward is not None,
                                     reward=reward or 0.0)
        self._absorb(self._call(lambda: self.link.stub.Withdraw(request, timeout=CALL_TIMEOUT)))

    def report(self, trial_id: str, result: TrialResult) -> None:
        trial = self._take(trial_id, result)
        if self.proposed is not None:
            self.proposed.settle(trial.arch_hash, result.reward)
        item = (trial_id, trial.actions, result.reward,
                result.status is not TrialStatus.SUCCEEDED, result.cached)
        self._unpushed.append(item)
        self._absorb(self._call(lambda: self._send(item)))

    def _send(self, item: Unpushed) -> rp.ReplicaReportResponse:
        trial_id, actions, reward, failed, cached = item
        return self.link.stub.Report(rp.ReplicaReportRequest(
            job_id=self.link.job_id, replica_id=self.replica_id, trial_id=trial_id,
            actions=list(actions), reward=reward, failed=failed, cached=cached),
            timeout=CALL_TIMEOUT)

    def _absorb(self, reply: rp.ReplicaReportResponse) -> None:
        """Take in what a report did: an update pushed every result reported so far."""
        self._stats = dict(reply.stats)
        if not reply.updated:
            return
        self._unpushed.clear()
        if reply.checkpoint_json:
            self._checkpoint = json.loads(reply.checkpoint_json)
            if self.on_checkpoint is not None:
                self.on_checkpoint(self._checkpoint)
        for push in reply.pushes:
            self._count(push)

    def _count(self, push: rp.PushInfo) -> None:
        s, m = self.replica_stats, self.metrics
        s.pull_seconds.append(push.pull_seconds)
        if not push.applied:
            s.rejected_stale += 1
            if m is not None:
                m.rejected.inc()
            return
        s.pushes += 1
        s.duplicates += push.duplicates
        s.staleness.append(push.staleness)
        s.push_seconds.append(push.push_seconds)
        if m is not None:
            m.pushes.inc()
            m.push_seconds.observe(push.push_seconds)
            m.pull_seconds.observe(push.pull_seconds)
            m.staleness.observe(push.staleness)

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def checkpoint(self) -> dict[str, Any] | None:
        return self._checkpoint

    def close(self) -> None:
        """The replica's search ended: the host may let it go (best effort)."""
        request = rp.CloseReplicaRequest(job_id=self.link.job_id, replica_id=self.replica_id)
        with contextlib.suppress(grpc.RpcError):  # the host is gone or going: nothing of
            self.link.stub.CloseReplica(request, timeout=10.0)  # the replica is kept there
