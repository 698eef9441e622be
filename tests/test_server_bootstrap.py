"""The one server bootstrap (protos.server) and stop-on-signal helper (protos.signals): a real
gRPC server on a free port of 127.0.0.1 with health, reflection and timed calls; a clear error
for a port that cannot be bound; graceful stop; real signals to this process and a child."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from ports import free_port
from prometheus_client import CollectorRegistry

from controller.trials.board import TrialBoard
from controller.trials.servicer import serve_trial_reports
from protos.server import BindError, RunningServer, service_name, start_server
from protos.signals import StopOnSignal
from protos.v1 import worker_pb2 as wk
from protos.v1 import worker_pb2_grpc as wk_grpc

ROOT = Path(__file__).resolve().parents[1]
TRIAL_REPORT = service_name(wk, "TrialReport")


class SlowLease(wk_grpc.TrialReportServicer):
    """LeaseTrials waits for ``release``; every other method is UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def LeaseTrials(self, request: wk.LeaseRequest,
                    context: grpc.ServicerContext) -> wk.LeaseResponse:
        self.entered.set()
        self.release.wait(30)
        return wk.LeaseResponse()


class Recorder(grpc.ServerInterceptor):
    """Remembers the methods it saw."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.methods.append(handler_call_details.method)
        return continuation(handler_call_details)


def _serve(servicer: wk_grpc.TrialReportServicer, port: int = 0,
           **kwargs: object) -> RunningServer:
    return start_server({TRIAL_REPORT: lambda s: wk_grpc.add_TrialReportServicer_to_server(
        servicer, s)}, "127.0.0.1", port, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def slow() -> Iterator[tuple[SlowLease, RunningServer]]:
    servicer = SlowLease()
    served = _serve(servicer)
    yield servicer, served
    servicer.release.set()
    served.stop(None)


def _lease(address: str, timeout: float = 10) -> wk.LeaseResponse:
    with grpc.insecure_channel(address) as channel:
        return wk_grpc.TrialReportStub(channel).LeaseTrials(wk.LeaseRequest(), timeout=timeout)


def test_a_server_on_a_free_port_answers_health_and_reflection_and_times_its_calls() -> None:
    # Arrange
    registry = CollectorRegistry()
    recorder = Recorder()
    served = _serve(wk_grpc.TrialReportServicer(), registry=registry, interceptors=[recorder])
    try:
        assert served.port > 0 and served.address == f"127.0.0.1:{served.port}"
        with grpc.insecure_channel(served.address) as channel:
            # Act
            health = health_pb2_grpc.HealthStub(channel)
            statuses = [health.Check(health_pb2.HealthCheckRequest(service=name),
                                     timeout=10).status for name in ("", TRIAL_REPORT)]
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
            names = {s.name for r in replies for s in r.list_services_response.service}
            with pytest.raises(grpc.RpcError) as unimplemented:
                wk_grpc.TrialReportStub(channel).ReportStart(wk.StartReport(trial_id="t"),
                                                             timeout=10)
            garbage = channel.unary_unary(f"/{TRIAL_REPORT}/ReportStart")
            with pytest.raises(grpc.RpcError) as undecodable:
                garbage(b"\xff\xff\xff", timeout=10)
    finally:
        served.stop()
    # Assert
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 2
    assert {TRIAL_REPORT, "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert undecodable.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the decode guard
    assert f"/{TRIAL_REPORT}/ReportStart" in recorder.methods
    handled = registry.get_sample_value("nas_rpc_server_handled_total", {
        "service": TRIAL_REPORT, "method": "ReportStart", "code": "UNIMPLEMENTED"})
    assert handled == 1


def test_a_port_in_use_is_a_clear_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BindError, match=rf"cannot listen on 127\.0\.0\.1:{port}: port "
                                            rf"{port} is already in use .*0 picks a free one"):
            _serve(wk_grpc.TrialReportServicer(), port)


def test_a_second_server_on_the_same_port_fails_instead_of_sharing_it(
        slow: tuple[SlowLease, RunningServer]) -> None:
    _, first = slow
    with pytest.raises(OSError, match="already in use"):  # BindError is an OSError
        serve_trial_reports(TrialBoard(), port=first.port)


@pytest.mark.parametrize(("host", "port", "why"), [
    ("192.0.2.1", 0, "'192.0.2.1' is not an address of this machine"),  # TEST-NET-1
    ("no-such-host.invalid", 0, "cannot resolve host 'no-such-host.invalid'"),
    ("127.0.0.1", 70000, r"the port must be in \[0, 65535\]"),
])
def test_a_bad_host_or_port_is_a_clear_error(host: str, port: int, why: str) -> None:
    with pytest.raises(BindError, match=rf"cannot listen on {host}:{port}: {why}"):
        start_server({TRIAL_REPORT: lambda s: wk_grpc.add_TrialReportServicer_to_server(
            wk_grpc.TrialReportServicer(), s)}, host, port)


def test_graceful_stop_finishes_calls_in_flight_refuses_new_ones_and_frees_the_port(
        slow: tuple[SlowLease, RunningServer]) -> None:
    # Arrange: a call in flight and a health watcher
    servicer, served = slow
    with futures.ThreadPoolExecutor(2) as pool, \
            grpc.insecure_channel(served.address) as channel:
        in_flight = pool.submit(_lease, served.address)
        assert servicer.entered.wait(10)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        # Act
        stopping = pool.submit(served.stop, 20.0)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # a watch is a call in flight too
        with pytest.raises(grpc.RpcError) as refused:
            _lease(served.address, timeout=5)
        assert not stopping.done()  # still waiting for the call in flight
        servicer.release.set()
        # Assert
        assert in_flight.result(10) == wk.LeaseResponse()
        stopping.result(30)
    assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    again = _serve(SlowLease(), served.port)  # the port is free again at once
    try:
        assert again.port == served.port
    finally:
        again.stop(None)


def test_stop_without_grace_cancels_calls_in_flight(
        slow: tuple[SlowLease, RunningServer]) -> None:
    servicer, served = slow
    with futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_lease, served.address)
        assert servicer.entered.wait(10)
        served.stop(None)
        with pytest.raises(grpc.RpcError) as cancelled:
            in_flight.result(10)
    assert cancelled.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_a_signal_during_start_up_is_kept_and_the_previous_handler_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # before anyone waits
        assert stop.wait(10) and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_set_from_another_thread_ends_the_wait_without_a_signal() -> None:
    with StopOnSignal() as stop:
        threading.Timer(0.05, stop.set).start()
        assert stop.wait(10) and stop.is_set()
    assert stop.signum is None


CHILD = textwrap.dedent("""
    import time
    from protos.signals import StopOnSignal
    with StopOnSignal() as stop:
        print("ready", flush=True)
        stop.wait()
        print("cleaning up after", stop.signum, flush=True)
        time.sleep(1.0)  # a second signal now must not cut the clean-up short
        print("done", flush=True)
""")


def _line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The child's next stdout line; AssertionError after ``timeout`` (a hung child)."""
    assert proc.stdout is not None
    poll = select.poll()
    poll.register(proc.stdout, select.POLLIN)
    assert poll.poll(timeout * 1000), "the child printed nothing"
    return proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_real_signal_stops_a_child_cleanly_and_a_second_one_is_ignored(
        sig: signal.Signals) -> None:
    # Arrange
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _line(proc) == "ready\n"
        # Act
        proc.send_signal(sig)
        assert _line(proc) == f"cleaning up after {int(sig)}\n"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Assert
    assert proc.returncode == 0, err
    assert out == "done\n"
    assert "Traceback" not in err


def test_ports_helper_gives_a_bindable_port() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
