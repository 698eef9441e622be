"""The controller's ``TrialReport`` gRPC service over a :class:`TrialBoard`, and its metrics."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.trials.board import Ack, TrialBoard
from protos import codec
from protos.cluster_auth import ClusterAuth
from protos.errors import InvalidArgumentError
from protos.rpc import servicer_method
from protos.server import RunningServer, ServedBy, service_name, start_server
from protos.types import TrialStatus
from protos.v1 import worker_pb2 as wk
from protos.v1 import worker_pb2_grpc as wk_grpc

MAX_LEASE_WAIT_S = 10.0
MAX_LEASE_TRIALS = 256


class TrialMetrics(Collector):
    """``nas_trial*`` metrics read from a board at scrape time (labels bounded: status,
    reason; never a trial id). Register with ``registry.register(TrialMetrics(board))``."""

    def __init__(self, board: TrialBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        """The board's counters as Prometheus families."""
        c = self.board.counters
        finished = CounterMetricFamily("nas_trials", "Trials finished, by status",
                                       labels=["status"])
        finished.add_metric(["succeeded"], c.succeeded)
        finished.add_metric(["failed"], c.failed)
        retries = CounterMetricFamily("nas_trial_retries", "Attempts retried, by why the "
                                      "previous attempt was lost", labels=["reason"])
        retries.add_metric(["lost"], c.retried_lost)
        retries.add_metric(["timeout"], c.retried_timeout)
        yield finished
        yield retries
        yield CounterMetricFamily("nas_trial_duplicate_reports", "Results reported again "
                                  "(replays, other attempts): nothing changed",
                                  value=c.duplicates)
        yield CounterMetricFamily("nas_trials_stopped_early", "Children told to stop by the "
                                  "early-stopping rule", value=c.stopped_early)
        yield GaugeMetricFamily("nas_trials_running", "Trials leased to workers, not finished",
                                value=self.board.running())
        yield GaugeMetricFamily("nas_trials_queued", "Trials waiting for a worker",
                                value=self.board.queued())


def _ack(ack: Ack) -> wk.ReportAck:
    return wk.ReportAck(accepted=ack.accepted, duplicate=ack.duplicate, stop=ack.stop,
                        superseded=ack.superseded, reason=ack.reason)


def _need(value: str, name: str) -> str:
    if not value:
        raise InvalidArgumentError(f"{name}: must not be empty")
    return value


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name}: must be finite, got {value}")
    return value


class TrialReportServicer(wk_grpc.TrialReportServicer):
    """Decodes, validates, calls the board, encodes."""

    def __init__(self, board: TrialBoard) -> None:
        self.board = board

    @servicer_method
    def LeaseTrials(self, request: wk.LeaseRequest,
                    context: grpc.ServicerContext) -> wk.LeaseResponse:
        """Up to max_trials queued attempts (long-poll), and which running ones to cancel."""
        if not 0 <= request.max_trials <= MAX_LEASE_TRIALS:
            raise InvalidArgumentError(f"max_trials: must be in [0, {MAX_LEASE_TRIALS}], got "
                                       f"{request.max_trials}")
        wait = min(max(_finite(request.wait_seconds, "wait_seconds"), 0.0), MAX_LEASE_WAIT_S)
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, max(remaining - 0.5, 0.0))
        tasks, cancel = self.board.lease(request.max_trials, wait,
                                         [(r.trial_id, r.attempt) for r in request.running])
        return wk.LeaseResponse(
            tasks=[wk.TrialTask(trial=codec.trial_to_proto(t.trial),
                                workload=codec.workload_to_proto(t.workload),
                                resources=codec.resources_to_proto(t.resources),
                                heartbeat_seconds=t.heartbeat_seconds) for t in tasks],
            cancel=[wk.TrialAttempt(trial_id=t, attempt=a) for t, a in cancel])

    @servicer_method
    def ReportStart(self, request: wk.StartReport,
                    context: grpc.ServicerContext) -> wk.ReportAck:
        """An attempt's process began."""
        return _ack(self.board.start(_need(request.trial_id, "trial_id"),
                                            request.attempt, request.worker))

    @servicer_method
    def Heartbeat(self, request: wk.HeartbeatReport,
                  context: grpc.ServicerContext) -> wk.ReportAck:
        """An attempt is alive."""
        return _ack(self.board.heartbeat(_need(request.trial_id, "trial_id"),
                                                request.attempt))

    @servicer_method
    def ReportProgress(self, request: wk.ProgressReport,
                       context: grpc.ServicerContext) -> wk.ReportAck:
        """An epoch finished; the answer may say stop."""
        if request.epoch < 1:
            raise InvalidArgumentError(f"epoch: must be >= 1, got {request.epoch}")
        accuracy = _finite(request.val_accuracy, "val_accuracy")
        if not 0 <= accuracy <= 1:
            raise InvalidArgumentError(f"val_accuracy: must be in [0, 1], got {accuracy}")
        return _ack(self.board.progress(_need(request.trial_id, "trial_id"),
                                               request.attempt, request.epoch,
                                               request.train_loss, accuracy))

    @servicer_method
    def ReportResult(self, request: wk.ResultReport,
                     context: grpc.ServicerContext) -> wk.ReportAck:
        """A final result; the trial's first one is kept."""
        trial_id = _need(request.trial_id, "trial_id")
        try:
            result = codec.trial_result_from_proto(request.result)
        except ValueError as exc:
            raise InvalidArgumentError(f"result: {exc}") from None
        if result.status is TrialStatus.SUCCEEDED and not 0 <= result.reward <= 1:
            raise InvalidArgumentError(f"result.reward: must be in [0, 1], got {result.reward}")
        return _ack(self.board.result(trial_id, request.attempt, result,
                                             dict(request.artifacts)))

    @servicer_method
    def ReportLost(self, request: wk.LostReport,
                   context: grpc.ServicerContext) -> wk.ReportAck:
        """An attempt's process died, or the attempt cannot run."""
        return _ack(self.board.lost(_need(request.trial_id, "trial_id"),
                                           request.attempt,
                                           _need(request.reason, "reason"), request.retryable))


@dataclass
class RunningTrialReport(ServedBy):
    """A started TrialReport server."""

    servicer: TrialReportServicer
    served: RunningServer

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (calls in flight get ``grace`` seconds)."""
        self.served.stop(grace)


def serve_trial_reports(board: TrialBoard, host: str = "127.0.0.1", port: int = 0,
                        max_workers: int = 32, registry: CollectorRegistry | None = None, *,
                        credentials: grpc.ServerCredentials | None = None,
                        interceptors: Sequence[grpc.ServerInterceptor] = (),
                        auth: ClusterAuth | None = None) -> RunningTrialReport:
    """Serve ``board`` on ``host:port`` (0: a free port), with health and reflection; calls
    are timed on ``registry`` (``nas_rpc_server_*``) when given. ``credentials``: serve TLS
    only; ``interceptors``: e.g. authentication, run before the decode guard; ``auth``: the
    cluster token every call must carry (and TLS when it has a certificate). A port that
    cannot be bound raises :class:`protos.server.BindError` (an ``OSError``)."""
    if auth is not None:
        interceptors = [*auth.interceptors(), *interceptors]
        credentials = credentials or auth.server_credentials()
    servicer = TrialReportServicer(board)
    served = start_server(
        {service_name(wk, "TrialReport"):
         lambda server: wk_grpc.add_TrialReportServicer_to_server(servicer, server)},
        host, port, credentials=credentials, interceptors=interceptors, registry=registry,
        max_workers=max_workers, thread_name_prefix="trials")
    return RunningTrialReport(servicer, served)
