"""The gRPC adapter of a replica host (``nas.v1.ReplicaHost``): decode, call
:class:`~controller.distributed.host.ReplicaHostState`, encode; and its server."""

from __future__ import annotations

import json
from typing import Any

import grpc

from controller.distributed.host import ReplicaHostState, Reported
from protos import codec
from protos.cluster_auth import ClusterAuth
from protos.errors import InvalidArgumentError
from protos.rpc import servicer_method
from protos.server import RunningServer, service_name, start_server
from protos.v1 import replica_pb2 as rp
from protos.v1 import replica_pb2_grpc as rp_grpc


def _json(text: str, field: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"{field}: not JSON: {exc}") from None


class ReplicaHostServicer(rp_grpc.ReplicaHostServicer):
    """Serves one host's replicas."""

    def __init__(self, state: ReplicaHostState) -> None:
        self.state = state

    def _reply(self) -> rp.HostReply:
        return rp.HostReply(host_id=self.state.host_id)

    @servicer_method
    def BeginJob(self, request: rp.BeginJobRequest,
                 context: grpc.ServicerContext) -> rp.BeginJobResponse:
        """Take up a job (idempotent)."""
        settings = _json(request.settings_json, "settings_json")
        if not isinstance(settings, dict):
            raise InvalidArgumentError("settings_json: must be a JSON object of settings")
        created = self.state.begin_job(request.job_id, settings,
                                       codec.layout_from_proto(request.layout),
                                       list(request.shard_addresses),
                                       _json(request.checkpoint_json, "checkpoint_json"))
        return rp.BeginJobResponse(host_id=self.state.host_id, created=created)

    @servicer_method
    def LoadHistory(self, request: rp.LoadHistoryRequest,
                    context: grpc.ServicerContext) -> rp.HostReply:
        """A page of the job's history."""
        self.state.load_history(request.job_id, [(list(e.actions), e.reward)
                                                 for e in request.entries])
        return self._reply()

    @servicer_method
    def OpenReplica(self, request: rp.OpenReplicaRequest,
                    context: grpc.ServicerContext) -> rp.HostReply:
        """Start a replica (idempotent)."""
        if not request.replica_id:
            raise InvalidArgumentError("replica_id: must not be empty")
        self.state.open_replica(request.job_id, request.replica_id, request.index,
                                request.incarnation)
        return self._reply()

    @servicer_method
    def Suggest(self, request: rp.SuggestRequest,
                context: grpc.ServicerContext) -> rp.SuggestResponse:
        """Proposals of a replica."""
        trials = self.state.suggest(request.job_id, request.replica_id, request.n)
        return rp.SuggestResponse(host_id=self.state.host_id, proposals=[
            rp.Proposal(trial_id=t.trial_id, actions=list(t.actions),
                        policy_version=t.policy_version) for t in trials])

    @servicer_method
    def Report(self, request: rp.ReplicaReportRequest,
               context: grpc.ServicerContext) -> rp.ReplicaReportResponse:
        """A result for a replica."""
        return self._reported(self.state.report(
            request.job_id, request.replica_id, request.trial_id, list(request.actions),
            request.reward, request.failed, request.cached))

    @servicer_method
    def Withdraw(self, request: rp.WithdrawRequest,
                 context: grpc.ServicerContext) -> rp.ReplicaReportResponse:
        """A proposal the service did not run."""
        return self._reported(self.state.withdraw(
            request.job_id, request.replica_id, request.trial_id,
            request.reward if request.known else None))

    def _reported(self, done: Reported) -> rp.ReplicaReportResponse:
        return rp.ReplicaReportResponse(
            host_id=self.state.host_id, updated=done.updated, stats=done.stats,
            checkpoint_json=json.dumps(done.checkpoint) if done.checkpoint is not None else "",
            pushes=[rp.PushInfo(applied=u.applied, staleness=u.staleness,
                                push_seconds=u.push_seconds, pull_seconds=u.pull_seconds,
                                duplicates=u.duplicates) for u in done.updates])

    @servicer_method
    def CloseReplica(self, request: rp.CloseReplicaRequest,
                     context: grpc.ServicerContext) -> rp.HostReply:
        """A replica's search ended."""
        self.state.close_replica(request.job_id, request.replica_id)
        return self._reply()


def serve_replica_host(host: str = "127.0.0.1", port: int = 0,
                       auth: ClusterAuth | None = None,
                       max_workers: int = 64) -> tuple[RunningServer, ReplicaHostState]:
    """Start a replica host's server (the token of ``auth`` required on every call, its TLS
    certificate served when given); the server and the host's state."""
    auth = auth or ClusterAuth(None)
    state = ReplicaHostState(ClusterAuth(auth.token, auth.ca))
    servicer = ReplicaHostServicer(state)
    served = start_server(
        {service_name(rp, "ReplicaHost"):
         lambda server: rp_grpc.add_ReplicaHostServicer_to_server(servicer, server)},
        host, port, credentials=auth.server_credentials(), interceptors=auth.interceptors(),
        max_workers=max_workers, thread_name_prefix="replica-host")
    return served, state
