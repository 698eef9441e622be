"""The SearchService gRPC adapter: decode, call the job store or runner, encode."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from controller.config import ConfigError
from controller.jobs.store import TRIAL_STATUSES, JobStore, JobSummary, TrialRecord
from controller.service.auth import Role, TokenTable, caller, check_visible, missing_roles
from controller.service.events import watch_events
from controller.service.export import export_chunks
from controller.service.guard import AuthInterceptor
from controller.service.runner import JobRunner
from controller.service.spec import (
    WIRE_NAMES,
    spec_from_settings,
    spec_settings,
    spec_to_config,
)
from controller.service.tenants import TenantBudgets
from controller.service.tls import ServerTls
from protos.errors import FailedPreconditionError, InvalidArgumentError
from protos.rpc import (
    CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    servicer_method,
    servicer_stream,
)
from protos.server import service_name, start_server
from protos.v1 import search_pb2 as sp
from protos.v1 import search_pb2_grpc as sp_grpc

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_TOP_K = 100
STATE_TO_PB = {"PENDING": sp.JOB_STATE_PENDING, "RUNNING": sp.JOB_STATE_RUNNING,
               "SUCCEEDED": sp.JOB_STATE_SUCCEEDED, "FAILED": sp.JOB_STATE_FAILED,
               "CANCELLED": sp.JOB_STATE_CANCELLED}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def job_to_proto(job: JobSummary) -> sp.Job:
    """The wire form of a job's summary: its trial counts and best trial."""
    best = job.best
    return sp.Job(job_id=job.job_id, owner=job.owner, tenant=job.tenant,
                  spec=spec_from_settings(job.spec), state=STATE_TO_PB[job.state],
                  reason=job.reason, created_at=job.created_at, updated_at=job.updated_at,
                  trainings=job.trainings, cache_hits=job.cache_hits + job.repeats,
                  repeats=job.repeats,
                  running=len(job.running), failed=job.failed,
                  budget_spent=job.budget_spent, policy_version=job.policy_version,
                  best_reward=best.reward if best else 0.0,
                  best_arch=best.arch if best else "",
                  best_trial_id=best.trial_id if best else "")


def trial_to_proto(t: TrialRecord) -> sp.TrialRecord:
    """The wire form of a trial record."""
    return sp.TrialRecord(trial_id=t.trial_id, arch=t.arch, status=t.status.value,
                          reward=t.reward, cached=t.cached, error=t.error,
                          metrics=dict(t.metrics), trained_arch=t.trained_arch)


def _job_id(value: str) -> str:
    if not value:
        raise InvalidArgumentError("job_id: must not be empty")
    return value


def _page_token(token: str, first: int) -> int:
    """A page token this service gave (``first``: the empty token's value)."""
    if not token:
        return first
    try:
        return int(token)
    except ValueError:
        raise InvalidArgumentError("page_token: not a token this service gave") from None


def _page_size(size: int) -> int:
    if not 0 <= size <= MAX_PAGE:
        raise InvalidArgumentError(f"page_size: must be in [0, {MAX_PAGE}], got {size}")
    return size or DEFAULT_PAGE


class SearchServicer(sp_grpc.SearchServiceServicer):
    """Jobs in ``store``, run by ``runner``; callers known by ``tokens`` (None: open to all),
    each tenant's submits held to ``budgets``."""

    def __init__(self, store: JobStore, runner: JobRunner, tokens: TokenTable | None = None,
                 budgets: TenantBudgets | None = None) -> None:
        self.store = store
        self.runner = runner
        self.tokens = tokens
        self.budgets = budgets or TenantBudgets()

    def _visible(self, job_id: str) -> JobSummary:
        """The job, if the caller may see it (another tenant's job: NOT_FOUND)."""
        view = self.store.get(_job_id(job_id))
        check_visible(view.job_id, view.tenant)
        return view

    @servicer_method
    def SubmitSearch(self, request: sp.SubmitSearchRequest,
                     context: grpc.ServicerContext) -> sp.SubmitSearchResponse:
        """Validate, store PENDING, start."""
        cfg = spec_to_config(request.spec)  # INVALID_ARGUMENT naming the field
        try:
            self.runner.cluster.check_job(cfg)
        except ConfigError as exc:
            field, _, rest = str(exc).partition(":")
            raise FailedPreconditionError(f"{WIRE_NAMES.get(field, field)}:{rest}") from None
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        who = caller()
        with self.budgets.admit(self.store, who.tenant, request.spec.budget):
            self.store.create(job_id, who.name, who.tenant, spec_settings(request.spec))
        self.runner.start(job_id)
        return sp.SubmitSearchResponse(job_id=job_id)

    @servicer_method
    def GetSearch(self, request: sp.GetSearchRequest,
                  context: grpc.ServicerContext) -> sp.Job:
        """One job."""
        return job_to_proto(self._visible(request.job_id))

    @servicer_method
    def ListSearches(self, request: sp.ListSearchesRequest,
                     context: grpc.ServicerContext) -> sp.ListSearchesResponse:
        """A page of jobs (a non-admin: its tenant's), newest first, optionally of one tenant
        and in one state."""
        if request.state and request.state not in STATE_FROM_PB:
            raise InvalidArgumentError(f"state: unknown value {request.state}")
        size = _page_size(request.page_size)
        before = _page_token(request.page_token, 0) or None
        who = caller()
        tenant = request.tenant or None
        if who.role is not Role.ADMIN:
            if tenant not in (None, who.tenant):  # another tenant's jobs: none visible
                return sp.ListSearchesResponse()
            tenant = who.tenant
        jobs, nxt = self.store.jobs(tenant, STATE_FROM_PB.get(request.state), size, before)
        return sp.ListSearchesResponse(jobs=[job_to_proto(j) for j in jobs],
                                       next_page_token="" if nxt is None else str(nxt))

    @servicer_method
    def CancelSearch(self, request: sp.CancelSearchRequest,
                     context: grpc.ServicerContext) -> sp.Job:
        """Stop a job before its next training; an ended job: FAILED_PRECONDITION."""
        job_id = self._visible(request.job_id).job_id
        self.runner.cancel(job_id, request.reason or "cancelled by the user")
        return job_to_proto(self.store.get(job_id))

    @servicer_method
    def ListTrials(self, request: sp.ListTrialsRequest,
                   context: grpc.ServicerContext) -> sp.ListTrialsResponse:
        """A page of a job's trials, in the order they started."""
        if request.status and request.status not in TRIAL_STATUSES:
            raise InvalidArgumentError(f"status: {request.status!r} is not one of "
                                       f"{', '.join(TRIAL_STATUSES)}")
        size = _page_size(request.page_size)
        after = _page_token(request.page_token, -1)
        if after < -1:
            raise InvalidArgumentError("page_token: not a token this service gave")
        page, nxt = self.store.trials(self._visible(request.job_id).job_id,
                                      request.status or None, after, size)
        return sp.ListTrialsResponse(trials=[trial_to_proto(t) for t in page],
                                     next_page_token="" if nxt is None else str(nxt))


    @servicer_method
    def GetBest(self, request: sp.GetBestRequest,
                context: grpc.ServicerContext) -> sp.GetBestResponse:
        """The top-k architectures by reward, each once (an isomorphic twin counts as one), or
        the Pareto front (``pareto``)."""
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidArgumentError(f"top_k: must be in [0, {MAX_TOP_K}], got "
                                       f"{request.top_k}")
        job_id = self._visible(request.job_id).job_id
        if request.pareto:  # max accuracy, min each objective
            front = self.store.pareto(job_id, list(request.objectives))
            return sp.GetBestResponse(trials=[trial_to_proto(t)
                                              for t in front[:request.top_k or None]])
        return sp.GetBestResponse(trials=[trial_to_proto(t) for t in
                                          self.store.best(job_id, request.top_k or 1)])

    @servicer_stream
    def WatchSearch(self, request: sp.WatchSearchRequest,
                    context: grpc.ServicerContext) -> Iterator[sp.SearchEvent]:
        """The job's events after ``after_seq``, live until its final state (events.py)."""
        if request.after_seq < 0:
            raise InvalidArgumentError(f"after_seq: must be >= 0, got {request.after_seq}")
        job_id = self._visible(request.job_id).job_id  # another tenant's: NOT_FOUND
        yield from watch_events(self.store, job_id, request.after_seq, context.is_active,
                                job_to_proto)

    @servicer_stream
    def ExportBest(self, request: sp.ExportBestRequest,
                   context: grpc.ServicerContext) -> Iterator[sp.ExportChunk]:
        """The bundles of the top-k trained architectures, a tar archive in 1 MiB chunks."""
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidArgumentError(f"top_k: must be in [0, {MAX_TOP_K}], got "
                                       f"{request.top_k}")
        job_id = self._visible(request.job_id).job_id  # another tenant's: NOT_FOUND
        for data in export_chunks(self.store, self.runner.parts, self.runner.work_dir, job_id,
                                  request.top_k or 1):
            yield sp.ExportChunk(data=data)


@dataclass
class RunningSearchService:
    """A started search server."""

    servicer: SearchServicer
    server: grpc.Server
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving and the jobs' threads."""
        self.server.stop(grace).wait()
        self.servicer.runner.close()


def serve_search(store: JobStore, runner: JobRunner, host: str = "127.0.0.1", port: int = 0,
                 max_workers: int = 64, *, tokens: TokenTable | None = None,
                 budgets: TenantBudgets | None = None, tls: ServerTls | None = None,
                 max_concurrent_rpcs: int | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> RunningSearchService:
    """Serve the search service, the standard health service and reflection (those two stay
    open to all). ``tokens``: who may call what (None: open); ``tls``: serve TLS only; calls
    beyond ``max_concurrent_rpcs`` (default 4 per worker thread) and requests over
    ``max_message_bytes`` get RESOURCE_EXHAUSTED. Each open WatchSearch holds one of the
    ``max_workers`` threads while it watches: 16 threads left 32 watchers' other calls queued
    for seconds (bench.load)."""
    unlisted = missing_roles(list(sp.DESCRIPTOR.services_by_name["SearchService"]
                                  .methods_by_name))
    if unlisted:  # a new RPC must be given a role before it can be served
        raise ValueError(f"METHOD_ROLES: no role for {', '.join(unlisted)}")
    servicer = SearchServicer(store, runner, tokens, budgets)
    options = [(k, v) for k, v in CHANNEL_OPTIONS if k != "grpc.max_receive_message_length"]
    options.append(("grpc.max_receive_message_length", max_message_bytes))
    served = start_server(
        {service_name(sp, "SearchService"):
         lambda server: sp_grpc.add_SearchServiceServicer_to_server(servicer, server)},
        host, port, credentials=tls.credentials() if tls else None,
        interceptors=[AuthInterceptor(tokens)], registry=runner.cluster.registry,
        max_workers=max_workers, thread_name_prefix="search", options=options,
        max_concurrent_rpcs=max_concurrent_rpcs or 4 * max_workers)
    return RunningSearchService(servicer, served.server, host, served.port)
