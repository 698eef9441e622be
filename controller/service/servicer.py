"""The SearchService gRPC adapter: decode, call the job store or runner, encode."""

from __future__ import annotations

import uuid
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller.jobs.store import TRIAL_STATUSES, JobStore, JobView
from controller.service.objectives_spec import pareto_of_trials
from controller.service.runner import JobRunner
from controller.service.spec import spec_from_settings, spec_settings, spec_to_config
from protos.errors import InvalidArgumentError
from protos.rpc import CHANNEL_OPTIONS, servicer_method
from protos.v1 import search_pb2 as sp
from protos.v1 import search_pb2_grpc as sp_grpc

MAX_PAGE = 1000
MAX_TOP_K = 100
STATE_TO_PB = {"PENDING": sp.JOB_STATE_PENDING, "RUNNING": sp.JOB_STATE_RUNNING,
               "SUCCEEDED": sp.JOB_STATE_SUCCEEDED, "FAILED": sp.JOB_STATE_FAILED,
               "CANCELLED": sp.JOB_STATE_CANCELLED}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def job_to_proto(view: JobView) -> sp.Job:
    """The wire form of a job, with its trial counts and best trial."""
    done = [t for t in view.trials.values() if t.get("status") in ("succeeded", "failed")]
    best = max((t for t in done if t.get("status") == "succeeded"),
               key=lambda t: float(t.get("reward", 0.0)), default=None)
    return sp.Job(job_id=view.job_id, owner=view.owner, tenant=view.tenant,
                  spec=spec_from_settings(view.spec), state=STATE_TO_PB[view.state],
                  reason=view.reason, created_at=view.created_at, updated_at=view.updated_at,
                  trainings=sum(1 for t in done if not t.get("cached")),
                  running=len(view.trials) - len(done),
                  best_reward=float(best["reward"]) if best else 0.0,
                  best_arch=str(best.get("same_as", best.get("arch", ""))) if best else "")


def _trial_to_proto(t: dict[str, Any]) -> sp.TrialRecord:
    return sp.TrialRecord(trial_id=t["trial_id"], arch=str(t.get("arch", "")),
                          status=str(t.get("status", "running")),
                          reward=float(t.get("reward", 0.0)), cached=bool(t.get("cached")),
                          error=str(t.get("error", "")),
                          metrics={k: float(v) for k, v in t.get("metrics", {}).items()})


def _job_id(value: str) -> str:
    if not value:
        raise InvalidArgumentError("job_id: must not be empty")
    return value


class SearchServicer(sp_grpc.SearchServiceServicer):
    """Jobs in ``store``, run by ``runner``."""

    def __init__(self, store: JobStore, runner: JobRunner) -> None:
        self.store = store
        self.runner = runner

    @servicer_method
    def SubmitSearch(self, request: sp.SubmitSearchRequest,
                     context: grpc.ServicerContext) -> sp.SubmitSearchResponse:
        """Validate, store PENDING, start."""
        spec_to_config(request.spec)  # INVALID_ARGUMENT naming the field
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        self.store.create(job_id, "anonymous", "default", spec_settings(request.spec))
        self.runner.start(job_id)
        return sp.SubmitSearchResponse(job_id=job_id)

    @servicer_method
    def GetSearch(self, request: sp.GetSearchRequest,
                  context: grpc.ServicerContext) -> sp.Job:
        """One job."""
        return job_to_proto(self.store.get(_job_id(request.job_id)))

    @servicer_method
    def ListSearches(self, request: sp.ListSearchesRequest,
                     context: grpc.ServicerContext) -> sp.ListSearchesResponse:
        """All jobs, oldest first, optionally in one state."""
        if request.state and request.state not in STATE_FROM_PB:
            raise InvalidArgumentError(f"state: unknown value {request.state}")
        state = STATE_FROM_PB.get(request.state)
        return sp.ListSearchesResponse(jobs=[job_to_proto(v)
                                             for v in self.store.jobs(state=state)])

    @servicer_method
    def CancelSearch(self, request: sp.CancelSearchRequest,
                     context: grpc.ServicerContext) -> sp.Job:
        """Stop a job before its next training; an ended job: FAILED_PRECONDITION."""
        job_id = _job_id(request.job_id)
        self.runner.cancel(job_id, request.reason or "cancelled by the user")
        return job_to_proto(self.store.get(job_id))

    @servicer_method
    def ListTrials(self, request: sp.ListTrialsRequest,
                   context: grpc.ServicerContext) -> sp.ListTrialsResponse:
        """A page of a job's trials, in the order they started."""
        if request.status and request.status not in TRIAL_STATUSES:
            raise InvalidArgumentError(f"status: {request.status!r} is not one of "
                                       f"{', '.join(TRIAL_STATUSES)}")
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidArgumentError(f"page_size: must be in [0, {MAX_PAGE}], got "
                                       f"{request.page_size}")
        try:
            offset = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgumentError("page_token: not a token this service gave") from None
        if offset < 0:
            raise InvalidArgumentError("page_token: not a token this service gave")
        page, nxt = self.store.trials(_job_id(request.job_id), request.status or None, offset,
                                      request.page_size or 100)
        return sp.ListTrialsResponse(trials=[_trial_to_proto(t) for t in page],
                                     next_page_token="" if nxt is None else str(nxt))


    @servicer_method
    def GetBest(self, request: sp.GetBestRequest,
                context: grpc.ServicerContext) -> sp.GetBestResponse:
        """The top-k architectures by reward, each once (an isomorphic twin counts as one), or
        the Pareto front (``pareto``)."""
        if not 0 <= request.top_k <= MAX_TOP_K:
            raise InvalidArgumentError(f"top_k: must be in [0, {MAX_TOP_K}], got "
                                       f"{request.top_k}")
        view = self.store.get(_job_id(request.job_id))
        if request.pareto:  # max accuracy, min each objective
            front = pareto_of_trials(view.trials.values(), list(request.objectives))
            return sp.GetBestResponse(trials=[_trial_to_proto(t)
                                              for t in front[:request.top_k or None]])
        ranked = sorted((t for t in view.trials.values() if t.get("status") == "succeeded"),
                        key=lambda t: -float(t.get("reward", 0.0)))  # stable: earlier first
        best: list[sp.TrialRecord] = []
        seen: set[str] = set()
        for trial in ranked:
            arch = str(trial.get("same_as", trial.get("arch", "")))
            if arch not in seen:
                seen.add(arch)
                best.append(_trial_to_proto(trial))
            if len(best) == (request.top_k or 1):
                break
        return sp.GetBestResponse(trials=best)


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
                 max_workers: int = 16) -> RunningSearchService:
    """Serve the search service, the standard health service and reflection."""
    servicer = SearchServicer(store, runner)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="search"),
                         options=CHANNEL_OPTIONS, maximum_concurrent_rpcs=4 * max_workers)
    sp_grpc.add_SearchServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = sp.DESCRIPTOR.services_by_name["SearchService"].full_name
    reflection.enable_server_reflection((service_name, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RunningSearchService(servicer, server, host, bound)
