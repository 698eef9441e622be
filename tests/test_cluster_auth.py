"""The cluster token on the internal endpoints: real parameter-server and TrialReport servers on
loopback refuse (UNAUTHENTICATED) a call without the token or with a wrong one, answer the
token's bearer, keep health and reflection open, and serve TLS when given a certificate; the
commands read the token from the environment or a 0600 file and refuse to serve without one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controller.distributed.ps_client import ShardedParameterClient
from controller.trials.board import TrialBoard
from controller.trials.servicer import serve_trial_reports
from paramserver.checkpoint import InMemoryCheckpointStore
from paramserver.server import RunningShard, serve
from protos.cluster_auth import (
    TOKEN_ENV,
    ClusterAuth,
    ClusterAuthError,
    read_token_file,
    resolve_token,
)
from protos.errors import UnauthenticatedError, UnavailableError
from protos.types import LayoutSpec
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import paramserver_pb2_grpc as ps_grpc
from worker.reporting import TrialReporter

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-cluster-token-0123456789"
AUTH = ClusterAuth(TOKEN)
LAYOUT = LayoutSpec("policy", 6, 1, checkpoint_every=0)


@pytest.fixture
def shard() -> Iterator[RunningShard]:
    running = serve(0, 1, InMemoryCheckpointStore(), interceptors=AUTH.interceptors(),
                    max_workers=4)
    yield running
    running.stop(None)


def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code()  # type: ignore[attr-defined,no-any-return]


def test_a_shard_answers_only_calls_with_the_cluster_token(shard: RunningShard) -> None:
    request = ps.ShardStatusRequest(layout_id="policy")
    with grpc.insecure_channel(shard.address) as plain:
        stub = ps_grpc.ParameterServerStub(plain)
        # Act
        none = _code(lambda: stub.ShardStatus(request, timeout=10))
        wrong = _code(lambda: stub.ShardStatus(request, timeout=10, metadata=(
            ("authorization", "Bearer not-the-token"),)))
        basic = _code(lambda: stub.ShardStatus(request, timeout=10, metadata=(
            ("authorization", TOKEN),)))
        health = health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=10)
        listed = next(reflection_pb2_grpc.ServerReflectionStub(plain).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    client = ShardedParameterClient([shard.address], LAYOUT, timeout=10, auth=AUTH)
    try:
        versions = client.register(np.zeros(6, dtype=np.float32))
        values, _ = client.pull()
    finally:
        client.close()
    anonymous = ShardedParameterClient([shard.address], LAYOUT, timeout=10, retry_for=1)
    try:
        with pytest.raises(UnauthenticatedError, match="cluster token"):
            anonymous.pull()
    finally:
        anonymous.close()
    # Assert
    assert none == wrong == basic == grpc.StatusCode.UNAUTHENTICATED
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # open: probes need no token
    assert "nas.v1.ParameterServer" in {s.name for s in listed.list_services_response.service}
    assert versions == [0] and values.shape == (6,)


def test_the_trial_report_server_answers_only_the_token_s_bearer() -> None:
    board = TrialBoard()
    served = serve_trial_reports(board, auth=AUTH)
    try:
        with _reporter(served.address, AUTH) as ok:
            leased = ok.lease("w", 1, 0.0, [])
        with _reporter(served.address, None) as anonymous, \
                pytest.raises(UnauthenticatedError, match="no cluster token"):
            anonymous.lease("w", 1, 0.0, [])
        with _reporter(served.address, ClusterAuth("wrong")) as wrong, \
                pytest.raises(UnauthenticatedError, match="wrong cluster token"):
            wrong.heartbeat("t", 1)
    finally:
        served.stop(None)
    assert list(leased.tasks) == []


class _reporter:
    def __init__(self, address: str, auth: ClusterAuth | None) -> None:
        self.reporter = TrialReporter(address, timeout=5, retry_for=1, auth=auth)

    def __enter__(self) -> TrialReporter:
        return self.reporter

    def __exit__(self, *exc: object) -> None:
        self.reporter.close()


def _certificate(tmp_path: Path) -> tuple[bytes, bytes]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return cert.read_bytes(), key.read_bytes()


def test_the_trial_report_server_serves_tls_with_the_token(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    served = serve_trial_reports(TrialBoard(), auth=ClusterAuth(TOKEN, cert=cert, key=key))
    try:
        with _reporter(served.address, ClusterAuth(TOKEN, ca=cert)) as tls:
            leased = tls.lease("w", 1, 0.0, [])
        with _reporter(served.address, AUTH) as plaintext, pytest.raises(UnavailableError):
            plaintext.lease("w", 1, 0.0, [])
        with _reporter(served.address, ClusterAuth(None, ca=cert)) as no_token, \
                pytest.raises(UnauthenticatedError):
            no_token.heartbeat("t", 1)
    finally:
        served.stop(None)
    assert list(leased.tasks) == []
    assert TOKEN not in repr(ClusterAuth(TOKEN, ca=cert, cert=cert, key=key))


def test_a_token_file_must_be_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o644)
    with pytest.raises(ClusterAuthError, match=r"--cluster-token-file: .*chmod 600"):
        read_token_file(path)
    path.chmod(0o600)
    assert read_token_file(path) == TOKEN
    assert resolve_token(path, {TOKEN_ENV: "other"}) == TOKEN  # the file given wins
    assert resolve_token(None, {TOKEN_ENV: " env-token\n"}) == "env-token"
    assert resolve_token(None, {}) is None


def _paramserver(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", "serve", "paramserver", "--shard", "0",
                           "--num-shards", "1", "--port", "0", "--redis",
                           "redis://127.0.0.1:1/0", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_nas_serve_paramserver_refuses_to_serve_without_a_private_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    loose = tmp_path / "token"
    loose.write_text(TOKEN)
    loose.chmod(0o640)
    # Act
    no_token = _paramserver(env=env)
    readable = _paramserver("--cluster-token-file", str(loose), env=env)
    insecure = _paramserver("--insecure-no-token", env=env)  # gets as far as Redis
    from_env = _paramserver(env={**env, TOKEN_ENV: TOKEN})
    # Assert
    for refused in (no_token, readable):
        assert refused.returncode == 2
        assert refused.stderr.strip().count("\n") == 0, refused.stderr
        assert "--cluster-token-file" in refused.stderr and "Traceback" not in refused.stderr
    assert "group or others" in readable.stderr
    for started in (insecure, from_env):  # past the token check: Redis at port 1 is not there
        assert started.returncode == 2 and "cannot reach Redis" in started.stderr
    assert "--insecure-no-token" in insecure.stderr
