"""The trial board and its TrialReport gRPC service: attempts, retries, timeouts, exactly one
result per trial, idempotent reports, bad input (a real server on a free loopback port)."""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from conftest import assert_unparsable_requests_are_invalid_argument
from prometheus_client import CollectorRegistry, generate_latest

from controller.early_stopping import SuccessiveHalving
from controller.trials.board import TrialBoard, TrialHandle
from controller.trials.queues import DeadlineHeap, FairQueue
from controller.trials.servicer import RunningTrialReport, TrialMetrics, serve_trial_reports
from protos import codec
from protos.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from protos.types import (
    Architecture,
    Node,
    Resources,
    Trial,
    TrialResult,
    TrialStatus,
    Workload,
)
from protos.v1 import worker_pb2 as wk
from protos.v1 import worker_pb2_grpc as wk_grpc
from worker.reporting import TrialReporter
from worker.trainer import TrainRecipe

WORKLOAD = Workload("fashion-mnist", {"cells": 1, "filters": 4, "drop_path": 0.0,
                                      "aux_head": False},
                    dataclasses.asdict(TrainRecipe(epochs=3, grad_clip=None)), "/tmp/weights")
ARCH = Architecture("nb201", (Node("edge", "skip_connect", (0,), attrs={"to": 1}),))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trial(i: int) -> Trial:
    return Trial(f"t{i}", ARCH, (0,), f"h{i}")


def _job_trial(job_id: str, i: int) -> Trial:
    return Trial(f"{job_id}-t{i}", ARCH, (0,), f"h{i}", job_id=job_id)


def _ok(trial_id: str, reward: float = 0.5) -> TrialResult:
    return TrialResult(trial_id, TrialStatus.SUCCEEDED, reward, {"epochs": 3.0})


def _board(**kwargs: object) -> tuple[TrialBoard, Clock]:
    clock = Clock()
    defaults: dict[str, object] = {"max_attempts": 3, "heartbeat_seconds": 1.0,
                                   "heartbeat_timeout": 5.0, "start_timeout": 20.0}
    board = TrialBoard(clock=clock, **{**defaults, **kwargs})  # type: ignore[arg-type]
    return board, clock


def test_first_result_wins_and_replays_are_duplicates() -> None:
    board, _ = _board()
    handle = board.submit(_trial(1), WORKLOAD, Resources())
    (task,), _ = board.lease(4)
    assert task.trial.attempt == 1 and task.workload == WORKLOAD
    assert board.start("t1", 1, "host:1").accepted
    assert board.start("t1", 1, "host:1").duplicate
    assert board.result("t1", 1, _ok("t1", 0.7)).accepted
    replay = board.result("t1", 1, _ok("t1", 0.7))
    other = board.result("t1", 1, _ok("t1", 0.1))
    assert replay.duplicate and other.duplicate and not other.accepted
    outcome = handle.wait(1)
    assert outcome is not None and outcome.result.reward == 0.7 and outcome.attempts == 1
    assert board.counters.succeeded == 1 and board.counters.duplicates == 2


def test_a_lost_attempt_is_retried_with_a_new_number_until_max_attempts() -> None:
    board, _ = _board(max_attempts=2)
    handle = board.submit(_trial(1), WORKLOAD, Resources())
    (first,), _ = board.lease(1)
    assert first.trial.attempt == 1
    board.start("t1", 1, "host:1")
    assert board.lost("t1", 1, "WorkerCrashedError: killed").accepted
    (second,), _ = board.lease(1)
    assert second.trial.attempt == 2
    # The dead attempt's reports are now answered "superseded" (abandon, no result).
    assert board.heartbeat("t1", 1).superseded
    assert board.lost("t1", 2, "killed again").accepted
    outcome = handle.wait(1)
    assert outcome is not None and outcome.result.status is TrialStatus.FAILED
    assert "gave up after 2 attempts" in outcome.result.error
    assert board.counters.retried_lost == 1 and board.counters.failed == 1


def test_a_non_retryable_loss_fails_the_trial_at_once() -> None:
    board, _ = _board()
    handle = board.submit(_trial(1), WORKLOAD, Resources(1, 4))
    board.lease(1)
    board.lost("t1", 1, "resources: no node has 4 GPUs", retryable=False)
    outcome = handle.wait(1)
    assert outcome is not None and outcome.attempts == 1
    assert outcome.result.error == "resources: no node has 4 GPUs"


def test_silence_past_the_heartbeat_timeout_retries_and_cancels_the_old_attempt() -> None:
    board, clock = _board()
    board.submit(_trial(1), WORKLOAD, Resources())
    board.lease(1)
    board.start("t1", 1, "host:1")
    clock.now = 4.0
    assert board.heartbeat("t1", 1).accepted
    clock.now = 9.5  # 5.5 s since the last heartbeat
    (retry,), cancel = board.lease(1, running=[("t1", 1)])
    assert retry.trial.attempt == 2 and cancel == [("t1", 1)]
    assert board.counters.retried_timeout == 1
    # A result from the old attempt that arrives anyway is still the trial's one result.
    assert board.result("t1", 1, _ok("t1")).accepted
    assert board.result("t1", 2, _ok("t1")).duplicate
    assert board.progress("t1", 2, 1, 0.5, 0.5).superseded


def test_a_leased_attempt_that_never_starts_times_out_on_the_start_timeout() -> None:
    board, clock = _board()
    board.submit(_trial(1), WORKLOAD, Resources())
    board.lease(1)
    clock.now = 10.0  # past the heartbeat timeout, not the start timeout: queued by Ray
    assert board.lease(1) == ([], [])
    clock.now = 21.0
    (retry,), _ = board.lease(1)
    assert retry.trial.attempt == 2


def test_reports_for_unknown_trials_or_unleased_attempts_are_refused() -> None:
    board, _ = _board()
    board.submit(_trial(1), WORKLOAD, Resources())
    with pytest.raises(NotFoundError, match="trial_id"):
        board.heartbeat("nope", 1)
    with pytest.raises(FailedPreconditionError, match="attempt"):
        board.start("t1", 1, "host:1")  # not leased yet
    board.lease(1)
    with pytest.raises(FailedPreconditionError, match="attempt"):
        board.result("t1", 2, _ok("t1"))


def test_progress_asks_the_stopper_and_records_the_stop() -> None:
    board, _ = _board(stopper=SuccessiveHalving(max_epochs=3, grace_epochs=1, eta=2))
    for i in (1, 2):
        board.submit(_trial(i), WORKLOAD, Resources())
    board.lease(2)
    assert not board.progress("t1", 1, 1, 1.0, 0.8).stop
    ack = board.progress("t2", 1, 1, 1.0, 0.2)
    assert ack.stop and "asha" in ack.reason
    assert board.progress("t2", 1, 1, 1.0, 0.2).duplicate  # replayed: same answer, no recount
    board.result("t2", 1, _ok("t2", 0.2))
    outcome = board.outcome("t2")
    assert outcome is not None and outcome.stopped_at_epoch == 1
    assert board.counters.stopped_early == 1


def test_close_releases_every_waiter_with_a_failure() -> None:
    board, _ = _board()
    handle = board.submit(_trial(1), WORKLOAD, Resources())
    board.close("interrupted")
    outcome = handle.wait(1)
    assert outcome is not None and "interrupted" in outcome.result.error


@pytest.fixture
def served() -> Iterator[tuple[TrialBoard, RunningTrialReport]]:
    board = TrialBoard(heartbeat_seconds=1.0, heartbeat_timeout=30.0)
    running = serve_trial_reports(board)
    yield board, running
    running.stop()


def test_over_grpc_a_request_that_does_not_parse_is_invalid_argument(
        served: tuple[TrialBoard, RunningTrialReport]) -> None:
    _, running = served
    assert_unparsable_requests_are_invalid_argument(
        running.address, "TrialReport", ("LeaseTrials", "ReportStart", "ReportResult",
                                         "ReportLost"),
        (b"\xff\xff\xff", b"\x0a\x06t1", b"\x0a\x02\xff\xfe"))
    with grpc.insecure_channel(running.address) as channel:
        lease = channel.unary_unary("/nas.v1.TrialReport/LeaseTrials")(
            wk.LeaseRequest(worker_id="w").SerializeToString(), timeout=10)
    assert wk.LeaseResponse.FromString(lease).tasks == []  # still serving


def test_over_grpc_an_error_quoting_a_huge_trial_id_keeps_its_status(
        served: tuple[TrialBoard, RunningTrialReport]) -> None:
    # found by bench.load's fuzzer: NOT_FOUND quoting a 20 kB trial id passed the client's
    # 16 KiB metadata limit, so the caller saw RESOURCE_EXHAUSTED instead
    _, running = served
    with grpc.insecure_channel(running.address) as channel, \
            pytest.raises(grpc.RpcError) as info:
        wk_grpc.TrialReportStub(channel).Heartbeat(
            wk.HeartbeatReport(trial_id="t" * 20_000, attempt=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "characters cut" in str(info.value.details())


def test_over_grpc_a_retried_result_after_a_lost_ack_is_accepted_once(
        served: tuple[TrialBoard, RunningTrialReport]) -> None:
    board, running = served
    handle = board.submit(_trial(1), WORKLOAD, Resources())
    reporter = TrialReporter(running.address, timeout=5, retry_for=5)
    try:
        lease = reporter.lease("w1", 2, 1.0, [])
        assert [t.trial.trial_id for t in lease.tasks] == ["t1"]
        assert codec.workload_from_proto(lease.tasks[0].workload) == WORKLOAD
        assert reporter.start("t1", 1, "host:1", "cpu").accepted
        assert reporter.progress("t1", 1, 1, 2.0, 0.4).accepted
        first = reporter.result("t1", 1, _ok("t1", 0.6), {"weights": "/w.pt"})
        again = reporter.result("t1", 1, _ok("t1", 0.6), {"weights": "/w.pt"})
    finally:
        reporter.close()
    assert first.accepted and not first.duplicate
    assert again.duplicate and not again.accepted
    outcome = handle.wait(5)
    assert outcome is not None and outcome.artifacts == {"weights": "/w.pt"}
    assert board.counters.succeeded == 1


@pytest.mark.parametrize(("method", "request_msg", "code", "field"), [
    ("ReportProgress", wk.ProgressReport(trial_id="t1", attempt=1, epoch=0), "INVALID_ARGUMENT",
     "epoch"),
    ("ReportProgress", wk.ProgressReport(trial_id="t1", attempt=1, epoch=1, val_accuracy=2.0),
     "INVALID_ARGUMENT", "val_accuracy"),
    ("Heartbeat", wk.HeartbeatReport(trial_id="", attempt=1), "INVALID_ARGUMENT", "trial_id"),
    ("Heartbeat", wk.HeartbeatReport(trial_id="ghost", attempt=1), "NOT_FOUND", "trial_id"),
    ("ReportStart", wk.StartReport(trial_id="t1", attempt=7), "FAILED_PRECONDITION", "attempt"),
    ("ReportResult", wk.ResultReport(trial_id="t1", attempt=1), "INVALID_ARGUMENT", "result"),
    ("ReportLost", wk.LostReport(trial_id="t1", attempt=1), "INVALID_ARGUMENT", "reason"),
    ("LeaseTrials", wk.LeaseRequest(max_trials=-1), "INVALID_ARGUMENT", "max_trials"),
])
def test_bad_reports_get_a_status_naming_the_field(
        served: tuple[TrialBoard, RunningTrialReport], method: str, request_msg: object,
        code: str, field: str) -> None:
    board, running = served
    board.submit(_trial(1), WORKLOAD, Resources())
    board.lease(1)
    with grpc.insecure_channel(running.address) as channel:
        stub = wk_grpc.TrialReportStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, method)(request_msg, timeout=5)
    assert info.value.code() == grpc.StatusCode[code]
    assert field in (info.value.details() or "")
    # Nothing already accepted was lost: the trial is still leased and can finish.
    assert board.result("t1", 1, _ok("t1")).accepted


def test_trial_metrics_are_exported_with_bounded_labels() -> None:
    board, _ = _board(max_attempts=1)
    registry = CollectorRegistry()
    registry.register(TrialMetrics(board))
    board.submit(_trial(1), WORKLOAD, Resources())
    board.submit(_trial(2), WORKLOAD, Resources())
    board.lease(2)
    board.result("t1", 1, _ok("t1"))
    board.result("t1", 1, _ok("t1"))
    board.lost("t2", 1, "died")
    text = generate_latest(registry).decode()
    assert 'nas_trials_total{status="succeeded"} 1.0' in text
    assert 'nas_trials_total{status="failed"} 1.0' in text
    assert "nas_trial_duplicate_reports_total 1.0" in text
    assert "nas_trials_running 0.0" in text
    assert "t1" not in text and "t2" not in text  # never a trial id


def test_metrics_http_endpoint_serves_the_board() -> None:
    from prometheus_client import start_http_server

    board, _ = _board()
    registry = CollectorRegistry()
    registry.register(TrialMetrics(board))
    http, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{http.server_port}/metrics",
                                      timeout=5).read().decode()
    finally:
        http.shutdown()
        http.server_close()
    assert "nas_trials_queued 0.0" in body


def test_workloads_cross_the_wire_typed_and_complete() -> None:
    assert codec.workload_from_proto(codec.workload_to_proto(WORKLOAD)) == WORKLOAD
    partial = Workload("fashion-mnist", {"filters": 4}, {"epochs": 3, "momentum": 0.9}, "/w")
    with pytest.raises(InvalidArgumentError, match=r"workload.model: .*missing"):
        codec.workload_to_proto(partial)


def test_a_lease_hands_out_the_trial_of_the_group_with_fewest_running_first() -> None:
    # Arrange: tenant a queues four trials before tenant b queues two
    board, _ = _board()
    for i, group in enumerate("aaaabab", 1):
        board.submit(_trial(i), WORKLOAD, Resources(), group=group)

    def leased(n: int) -> list[str]:
        return [t.trial.trial_id for t in board.lease(n)[0]]

    # Act / Assert: b's first trial goes second, not fifth; ties go to the first queued
    assert leased(2) == ["t1", "t5"]
    assert leased(1) == ["t2"]  # a: 1 running, b: 1 -> FIFO
    assert leased(1) == ["t7"]  # a: 2 running, b: 1
    for trial_id in ("t1", "t2"):
        assert board.result(trial_id, 1, _ok(trial_id)).accepted
    assert leased(3) == ["t3", "t4", "t6"]  # b has 2 running, a none: a's, in queue order
    assert board.queued() == 0 and board.running() == 5


def test_without_groups_the_queue_stays_first_in_first_out() -> None:
    board, _ = _board()
    for i in range(1, 5):
        board.submit(_trial(i), WORKLOAD, Resources())
    assert [t.trial.trial_id for t in board.lease(4)[0]] == ["t1", "t2", "t3", "t4"]


def test_an_attempt_that_reported_its_result_is_not_named_for_cancelling() -> None:
    # Arrange: attempt 1 reported; its Ray task has not returned yet (still "running")
    board, _ = _board()
    board.submit(_trial(1), WORKLOAD, Resources())
    board.lease(1)
    board.start("t1", 1, "host:1")
    assert board.result("t1", 1, _ok("t1")).accepted
    # Act
    _, cancel = board.lease(1, running=[("t1", 1)])
    # Assert: it returns by itself; a force-cancel racing that return crashed Ray's core worker
    assert cancel == []


def _finish_all(board: TrialBoard, handles: list[TrialHandle]) -> None:
    """Lease, start and report every queued trial; their submitters take the outcomes."""
    tasks, _ = board.lease(len(handles))
    for task in tasks:
        trial_id, attempt = task.trial.trial_id, task.trial.attempt
        board.start(trial_id, attempt, "host:1")
        board.progress(trial_id, attempt, 1, 1.0, 0.5)
        assert board.result(trial_id, attempt, _ok(trial_id)).accepted
    for handle in handles:
        assert handle.wait(1) is not None


def test_a_taken_outcome_leaves_a_tombstone_that_still_answers_late_reports() -> None:
    # Arrange
    board, _ = _board()
    handles = [board.submit(_job_trial("job-a", i), WORKLOAD, Resources()) for i in range(50)]
    # Act
    _finish_all(board, handles)
    # Assert: no full record is left, only the tombstones
    sizes = board.sizes()
    assert (sizes.records, sizes.tombstones, sizes.queued, sizes.running) == (0, 50, 0, 0)
    # ... which answer the finished trials' reports exactly as before
    assert board.result("job-a-t3", 1, _ok("job-a-t3", 0.1)).duplicate
    heartbeat = board.heartbeat("job-a-t3", 1)
    assert heartbeat.superseded and heartbeat.duplicate and "has a result" in heartbeat.reason
    assert board.progress("job-a-t3", 1, 2, 1.0, 0.6).superseded
    assert board.lost("job-a-t3", 1, "late").superseded
    with pytest.raises(FailedPreconditionError, match="attempt"):
        board.start("job-a-t3", 2, "host:1")  # never leased
    with pytest.raises(AlreadyExistsError):
        board.submit(_job_trial("job-a", 3), WORKLOAD, Resources())
    assert board.attempt("job-a-t3") == (1, "")
    with pytest.raises(FailedPreconditionError, match="taken"):
        board.outcome("job-a-t3")
    # the handle keeps what it took; the attempt that reported is not named for cancelling
    outcome = handles[3].wait(0)
    assert outcome is not None and outcome.result.reward == 0.5
    assert board.lease(1, running=[("job-a-t3", 1)]) == ([], [])
    assert board.counters.duplicates == 1 and board.counters.succeeded == 50


def test_forget_job_drops_every_trial_of_the_job_and_its_tags_and_only_those() -> None:
    # Arrange: job-a has a finished, a running and a queued trial, and a resumed run's trial
    # (tag job-a-x7); job-b one queued trial
    board, _ = _board()
    done = board.submit(_job_trial("job-a", 1), WORKLOAD, Resources())
    _finish_all(board, [done])
    running = board.submit(_job_trial("job-a", 2), WORKLOAD, Resources())
    board.lease(1)
    queued = [board.submit(_job_trial("job-a", 3), WORKLOAD, Resources()),
              board.submit(_job_trial("job-a-x7", 4), WORKLOAD, Resources())]
    other = board.submit(_job_trial("job-b", 1), WORKLOAD, Resources())
    # Act
    forgotten = board.forget_job("job-a")
    # Assert: the unfinished ones failed (their waiters return), and nothing of job-a is left
    assert forgotten == 4
    for handle in (running, *queued):
        outcome = handle.wait(1)
        assert outcome is not None and outcome.result.status is TrialStatus.FAILED
        assert "its job job-a ended" in outcome.result.error
    sizes = board.sizes()
    assert (sizes.records, sizes.tombstones, sizes.queued, sizes.running, sizes.jobs) == \
        (1, 0, 1, 0, 1)
    for trial_id in ("job-a-t1", "job-a-t2", "job-a-t3", "job-a-x7-t4"):
        with pytest.raises(NotFoundError, match="trial_id"):
            board.heartbeat(trial_id, 1)
    with pytest.raises(NotFoundError):
        board.result("job-a-t1", 1, _ok("job-a-t1"))
    # the forgotten running attempt is named for cancelling; job-b goes on
    (task,), cancel = board.lease(4, running=[("job-a-t2", 1)])
    assert task.trial.trial_id == "job-b-t1" and cancel == [("job-a-t2", 1)]
    assert board.result("job-b-t1", 1, _ok("job-b-t1")).accepted
    assert other.wait(1) is not None
    assert board.forget_job("job-a") == 0


def test_a_forgotten_attempt_that_reported_its_result_is_not_named_for_cancelling() -> None:
    # Arrange: the result is in, the job ends, the attempt's Ray task has not returned yet
    board, _ = _board()
    handle = board.submit(_job_trial("job-a", 1), WORKLOAD, Resources())
    _finish_all(board, [handle])
    board.forget_job("job-a")
    # Act
    _, cancel = board.lease(1, running=[("job-a-t1", 1)])
    # Assert: it returns by itself (a force-cancel racing that return crashes Ray's worker)
    assert cancel == []


def test_over_grpc_reports_of_a_forgotten_job_are_not_found(
        served: tuple[TrialBoard, RunningTrialReport]) -> None:
    # Arrange
    board, running = served
    board.submit(_job_trial("job-a", 1), WORKLOAD, Resources())
    board.lease(1)
    board.forget_job("job-a")
    # Act
    with grpc.insecure_channel(running.address) as channel, \
            pytest.raises(grpc.RpcError) as info:
        wk_grpc.TrialReportStub(channel).Heartbeat(
            wk.HeartbeatReport(trial_id="job-a-t1", attempt=1), timeout=10)
    # Assert
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "trial_id" in (info.value.details() or "")


def test_among_ten_thousand_finished_trials_a_silent_attempt_is_retried_from_a_small_heap(
        ) -> None:
    # Arrange: 10,000 trials finished and taken, then one live attempt that goes silent
    board, clock = _board()
    for start in range(0, 10_000, 500):
        _finish_all(board, [board.submit(_job_trial("job-a", i), WORKLOAD, Resources())
                            for i in range(start, start + 500)])
    board.submit(_job_trial("job-b", 1), WORKLOAD, Resources())
    board.lease(1)
    board.start("job-b-t1", 1, "host:1")
    # Assert: the lease's structures hold the live attempt, not the finished trials
    sizes = board.sizes()
    assert (sizes.records, sizes.tombstones, sizes.running) == (1, 10_000, 1)
    assert sizes.deadlines <= 2 * sizes.running + 64
    # Act
    clock.now = 5.5  # silent past the heartbeat timeout
    (retry,), cancel = board.lease(1, running=[("job-b-t1", 1)])
    # Assert
    assert retry.trial.attempt == 2 and cancel == [("job-b-t1", 1)]
    assert board.counters.retried_timeout == 1
    board.start("job-b-t1", 2, "host:2")
    clock.now = 25.0
    board.heartbeat("job-b-t1", 2)
    clock.now = 26.0  # every stale deadline has come due: only the live attempt's is left
    board.expire()
    assert board.sizes().deadlines == 1 and board.running() == 1


def test_an_attempt_that_keeps_heartbeating_is_never_expired() -> None:
    # Arrange
    board, clock = _board()
    board.submit(_trial(1), WORKLOAD, Resources())
    board.lease(1)
    board.start("t1", 1, "host:1")
    # Act: heartbeats every 4 s (timeout 5 s) for a minute, the board expiring between them
    for beat in range(1, 16):
        clock.now = 4.0 * beat
        board.expire()
        assert board.heartbeat("t1", 1).accepted
    clock.now += 4.9
    board.expire()
    # Assert: still the first attempt; silent past the timeout, it is retried
    assert board.attempt("t1") == (1, "host:1") and board.running() == 1
    clock.now += 0.2
    (retry,), _ = board.lease(1)
    assert retry.trial.attempt == 2 and board.counters.retried_timeout == 1


def test_a_started_attempt_times_out_on_the_heartbeat_timeout_not_the_start_timeout() -> None:
    # Arrange: leased at 0 (start timeout 20 s), started at 1 (heartbeat timeout 5 s)
    board, clock = _board()
    board.submit(_trial(1), WORKLOAD, Resources())
    board.lease(1)
    clock.now = 1.0
    board.start("t1", 1, "host:1")
    # Act
    clock.now = 5.9
    not_yet = board.lease(1)
    clock.now = 6.5
    (retry,), _ = board.lease(1)
    # Assert
    assert not_yet == ([], []) and retry.trial.attempt == 2
    board.result("t1", 2, _ok("t1"))
    outcome = board.outcome("t1")
    assert outcome is not None and outcome.lost == ["attempt 1: no heartbeat for 5 s"]


def test_a_result_of_an_old_attempt_takes_the_waiting_retry_off_the_queue() -> None:
    # Arrange: attempt 1 timed out and the trial waits to be retried
    board, clock = _board()
    handle = board.submit(_trial(1), WORKLOAD, Resources())
    board.lease(1)
    clock.now = 21.0
    board.expire()
    assert board.queued() == 1 and board.running() == 0
    # Act: attempt 1's result arrives after all
    assert board.result("t1", 1, _ok("t1")).accepted
    # Assert: the trial has its one result; it is not leased again
    assert board.queued() == 0 and board.lease(1) == ([], [])
    outcome = handle.wait(1)
    assert outcome is not None and outcome.attempts == 1


def test_fair_leasing_among_three_groups_follows_running_counts_then_queue_order() -> None:
    # Arrange: a queues three, then b two, then c one; a retried trial goes to its group's back
    board, _ = _board(max_attempts=2)
    for i, group in enumerate("aaabbc", 1):
        board.submit(_trial(i), WORKLOAD, Resources(), group=group)

    def leased(n: int) -> list[str]:
        return [t.trial.trial_id for t in board.lease(n)[0]]

    # Act / Assert
    assert leased(3) == ["t1", "t4", "t6"]  # one of each group: fewest running, then FIFO
    assert board.lost("t4", 1, "died").accepted  # b: 0 running; t4 queued behind t5
    assert leased(1) == ["t5"]
    assert leased(1) == ["t2"]  # a, b, c 1 running each: a's head was queued first
    assert leased(2) == ["t4", "t3"]  # b (1 running) before a (2); then a, the only one left
    assert board.running() == 6 and board.queued() == 0


def test_the_fair_queue_and_the_deadline_heap_on_their_own() -> None:
    # Arrange
    queue: FairQueue[str] = FairQueue()
    for group, item in (("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3")):
        queue.push(group, item)
    heap: DeadlineHeap[str] = DeadlineHeap()
    for deadline, key in ((3.0, "x"), (1.0, "y"), (2.0, "z"), (1.0, "w")):
        heap.push(deadline, key)
    # Act
    first = queue.pop()
    queue.started("a")
    second = queue.pop()
    removed = queue.remove("a", "a3")
    heap.compact(lambda key: key != "z")
    due = heap.due(2.5)
    # Assert
    assert (first, second, removed) == (("a", "a1"), ("b", "b1"), True)
    assert len(queue) == 1 and queue.running == 1 and queue.discard(lambda i: True) == 1
    assert due == ["y", "w"] and len(heap) == 1
    with pytest.raises(IndexError):
        queue.pop()


def test_a_finished_trial_is_forgotten_by_the_early_stopping_rule() -> None:
    # Arrange
    stopper = SuccessiveHalving(max_epochs=3, grace_epochs=1, eta=2)
    board, _ = _board(stopper=stopper)
    handles = [board.submit(_trial(i), WORKLOAD, Resources()) for i in (1, 2)]
    board.lease(2)
    board.progress("t1", 1, 1, 1.0, 0.8)
    assert board.progress("t2", 1, 1, 1.0, 0.2).stop
    # Act
    for handle in handles:
        trial_id = handle.trial_id
        board.result(trial_id, 1, _ok(trial_id))
        handle.wait(1)
    # Assert: the rule keeps no state of finished trials; the outcome kept the stop
    assert stopper.stopped("t2") is None
    outcome = handles[1].wait(0)
    assert outcome is not None and outcome.stopped_at_epoch == 1
