"""The worker's client of the controller's ``TrialReport`` service.

Every report is idempotent on the controller (by trial id and attempt), so each is retried on
UNAVAILABLE and DEADLINE_EXCEEDED: a retry after a lost acknowledgement is answered as a
duplicate and changes nothing. A result is retried for ``result_retry_for`` seconds (long: an
accepted result must never be lost to a controller restart).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

from protos import codec
from protos.cluster_auth import ClusterAuth, open_channel
from protos.errors import DeadlineExceededError, UnavailableError
from protos.rpc import call_with_retry
from protos.types import TrialResult
from protos.v1 import worker_pb2 as wk
from protos.v1 import worker_pb2_grpc as wk_grpc

T = TypeVar("T")
RETRYABLE = (UnavailableError, DeadlineExceededError)


class TrialReporter:
    """Reports one process's attempts to the controller at ``address`` (``host:port``), with
    ``auth``'s cluster token (and TLS when it has a CA)."""

    def __init__(self, address: str, timeout: float = 10.0, retry_for: float = 60.0,
                 result_retry_for: float = 600.0, auth: ClusterAuth | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.retry_for = retry_for
        self.result_retry_for = result_retry_for
        self._channel = open_channel(address, auth)
        self._stub = wk_grpc.TrialReportStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, fn: Callable[[], T], retry_for: float | None = None) -> T:
        return call_with_retry(fn, self.retry_for if retry_for is None else retry_for,
                               RETRYABLE)

    def lease(self, worker_id: str, max_trials: int, wait: float,
              running: Sequence[tuple[str, int]]) -> wk.LeaseResponse:
        """Queued attempts for this worker service, and which running ones to cancel."""
        request = wk.LeaseRequest(worker_id=worker_id, max_trials=max_trials, wait_seconds=wait,
                                  running=[wk.TrialAttempt(trial_id=t, attempt=a)
                                           for t, a in running])
        # Not retried on DEADLINE_EXCEEDED: a lease is not idempotent (it hands out attempts;
        # one lost with its answer is retried by the controller's start timeout).
        return call_with_retry(lambda: self._stub.LeaseTrials(request,
                                                              timeout=wait + self.timeout),
                               self.retry_for)

    def start(self, trial_id: str, attempt: int, worker: str, device: str) -> wk.ReportAck:
        """This attempt's process began."""
        request = wk.StartReport(trial_id=trial_id, attempt=attempt, worker=worker,
                                 device=device)
        return self._call(lambda: self._stub.ReportStart(request, timeout=self.timeout))

    def heartbeat(self, trial_id: str, attempt: int) -> wk.ReportAck:
        """This attempt is alive."""
        request = wk.HeartbeatReport(trial_id=trial_id, attempt=attempt)
        return self._call(lambda: self._stub.Heartbeat(request, timeout=self.timeout))

    def progress(self, trial_id: str, attempt: int, epoch: int, train_loss: float,
                 val_accuracy: float) -> wk.ReportAck:
        """``epoch`` epochs done; the answer may say stop."""
        request = wk.ProgressReport(trial_id=trial_id, attempt=attempt, epoch=epoch,
                                    train_loss=train_loss, val_accuracy=val_accuracy)
        return self._call(lambda: self._stub.ReportProgress(request, timeout=self.timeout))

    def result(self, trial_id: str, attempt: int, result: TrialResult,
               artifacts: dict[str, str]) -> wk.ReportAck:
        """The final result (retried for a long time: it must not be lost)."""
        request = wk.ResultReport(trial_id=trial_id, attempt=attempt,
                                  result=codec.trial_result_to_proto(result),
                                  artifacts=artifacts)
        return self._call(lambda: self._stub.ReportResult(request, timeout=self.timeout),
                          self.result_retry_for)

    def lost(self, trial_id: str, attempt: int, reason: str,
             retryable: bool = True) -> wk.ReportAck:
        """An attempt's process died, or the attempt cannot run here."""
        request = wk.LostReport(trial_id=trial_id, attempt=attempt, reason=reason,
                                retryable=retryable)
        return self._call(lambda: self._stub.ReportLost(request, timeout=self.timeout),
                          self.result_retry_for)


_SHARED_MAX = 8
_shared: OrderedDict[tuple[str, ClusterAuth | None], TrialReporter] = OrderedDict()
_shared_lock = threading.Lock()


def shared_reporter(address: str, auth: ClusterAuth | None = None) -> TrialReporter:
    """This process's reporter to the controller at ``address``, kept for every attempt the
    process runs (a Ray worker process runs many: a channel of its own per attempt paid a
    connection set-up each time). gRPC reconnects it when the controller comes back; the
    least recently used of more than a few controllers' reporters is closed."""
    key = (address, auth)
    with _shared_lock:
        reporter = _shared.get(key)
        if reporter is None:
            reporter = _shared[key] = TrialReporter(address, auth=auth)
            while len(_shared) > _SHARED_MAX:
                _shared.popitem(last=False)[1].close()
        _shared.move_to_end(key)
        return reporter
