"""Security and tenants of the search service: tokens and roles (in process and on a real server),
tenant isolation, training budgets, fair job slots, TLS, a Redis password, and the bounds on
message size and concurrent calls. Searches run on the real NB201 table."""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from ports import free_port

from controller.jobs.redis_store import RedisJobStore
from controller.jobs.store import InMemoryJobStore
from controller.service import serve_options
from controller.service.auth import METHOD_ROLES, Role, TokenFileError, TokenTable, token_name
from controller.service.client import SearchClient
from controller.service.serve_options import ServeOptionError, connect_redis, security_from_args
from controller.service.servicer import SearchServicer, serve_search
from controller.service.tenants import BudgetFileError, FairSlots, TenantBudgets
from controller.service.tls import ServerTls
from nas import cli
from nas import serve_search as serve_search_command
from nas.cluster import job_runner
from protos.errors import (
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

WAIT_S = 120.0
ROOT = Path(__file__).resolve().parents[1]
TOKEN_LINES = ["# who may call", "r-acme:reader:acme", "s-acme:submitter:acme", "",
               "s-beta : submitter : beta", "s-capped:submitter:capped", "root:admin  # ops"]
TOKENS = TokenTable.parse(TOKEN_LINES, "tokens.txt")
BUDGETS = TenantBudgets({"capped": 30})


def nb201_spec(budget: int) -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy="random",
                         evaluation=sp.EvaluationSpec(evaluator="nb201"), budget=budget)


def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for ``condition`` (a state to be reached, not a time to pass)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


@dataclass
class Service:
    """A service with tokens, and a way to call it as one of them."""

    kind: str
    store: InMemoryJobStore
    connect: Callable[[str | None], SearchClient]


@pytest.fixture(params=["in-process", "server"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    store = InMemoryJobStore()
    runner = job_runner(store, tmp_path, max_running=1)
    clients: list[SearchClient] = []
    running = None
    if request.param == "in-process":
        servicer = SearchServicer(store, runner, TOKENS, BUDGETS)
        target: str | SearchServicer = servicer
    else:
        running = serve_search(store, runner, tokens=TOKENS, budgets=BUDGETS)
        target = running.address

    def connect(token: str | None) -> SearchClient:
        clients.append(SearchClient(target, timeout=10, token=token))
        return clients[-1]

    try:
        yield Service(request.param, store, connect)
    finally:
        for client in clients:
            client.close()
        if running is not None:
            running.stop()
        else:
            runner.close()


def test_every_search_service_method_has_a_role() -> None:
    methods = sp.DESCRIPTOR.services_by_name["SearchService"].methods_by_name
    assert set(methods) <= set(METHOD_ROLES), "give each new RPC a role in METHOD_ROLES"
    assert METHOD_ROLES["SubmitSearch"] is Role.SUBMITTER and all(
        role is Role.READER for name, role in METHOD_ROLES.items()
        if name.startswith(("Get", "List", "Watch", "Export")))


def test_roles_tokens_and_tenants(service: Service) -> None:
    # Arrange
    reader, acme, beta, admin = (service.connect(t) for t in ("r-acme", "s-acme", "s-beta",
                                                             "root"))
    # Act: each submitter submits one job (acme's keeps running until cancelled)
    acme_job = acme.submit(nb201_spec(budget=5000))
    beta_job = beta.submit(nb201_spec(budget=2))
    # Assert: a wrong token and too low a role are refused, naming what is needed
    with pytest.raises(UnauthenticatedError, match="unknown token"):
        service.connect("guess").list()
    with pytest.raises(PermissionDeniedError, match=r"SubmitSearch needs .* submitter"):
        reader.submit(nb201_spec(budget=2))
    # each job records its owner (a hash, never the token) and the token's tenant
    job = reader.get(acme_job)
    assert (job.owner, job.tenant) == (token_name("s-acme"), "acme")
    assert "s-acme" not in str(service.store.get(acme_job).to_json())
    # a tenant sees only its own jobs; another tenant's job is as if it did not exist
    assert [j.job_id for j in reader.list()] == [acme_job]
    assert [j.job_id for j in beta.list()] == [beta_job]
    assert [j.job_id for j in admin.list()] == [beta_job, acme_job]  # newest first
    for call in (lambda: beta.cancel(acme_job), lambda: beta.get(acme_job),
                 lambda: list(beta.trials(acme_job)), lambda: beta.best(acme_job)):
        with pytest.raises(NotFoundError, match=acme_job):
            call()
    with pytest.raises(PermissionDeniedError, match="CancelSearch"):
        reader.cancel(acme_job)
    # the admin acts in every tenant
    assert admin.cancel(acme_job, "admin").state == sp.JOB_STATE_CANCELLED
    assert admin.wait(beta_job, WAIT_S).state == sp.JOB_STATE_SUCCEEDED


def test_no_token_is_refused_by_a_server_and_trusted_in_process(service: Service) -> None:
    anonymous = service.connect(None)
    if service.kind == "server":
        with pytest.raises(UnauthenticatedError, match="Bearer"):
            anonymous.list()
    else:  # the process that holds the servicer is trusted: admin of tenant default
        job_id = anonymous.submit(nb201_spec(budget=2))
        assert anonymous.get(job_id).tenant == "default"


def test_a_submit_beyond_the_tenants_budget_is_resource_exhausted(service: Service) -> None:
    capped, beta = service.connect("s-capped"), service.connect("s-beta")
    first = capped.submit(nb201_spec(budget=20))
    with pytest.raises(ResourceExhaustedError,
                       match=r"spec\.budget: 15 .* remaining budget of 10 \(limit 30, "
                             r"(20 reserved by unfinished jobs, 0|0 reserved by unfinished "
                             r"jobs, 20) used"):  # the first job may have ended already
        capped.submit(nb201_spec(budget=15))
    assert [j.job_id for j in capped.list()] == [first]  # nothing stored
    beta.submit(nb201_spec(budget=40))  # another tenant, no limit
    assert capped.wait(first, WAIT_S).trainings == 20
    capped.submit(nb201_spec(budget=10))  # what the ended job did not use
    with pytest.raises(ResourceExhaustedError, match="remaining budget of 0"):
        capped.submit(nb201_spec(budget=1))


def test_fair_slots_start_the_tenant_with_fewest_running_first() -> None:
    # Arrange: tenant a holds both slots, then a3 and later b1 wait
    slots = FairSlots(2)
    held = [slots.hold(j, "a", t) for j, t in (("a1", 1.0), ("a2", 2.0))]
    for hold in held:
        hold.__enter__()
    started: list[str] = []
    release = {j: threading.Event() for j in ("a3", "b1")}

    def run(job_id: str, tenant: str, created_at: float) -> None:
        with slots.hold(job_id, tenant, created_at):
            started.append(job_id)
            release[job_id].wait(30)

    threads = [threading.Thread(target=run, args=("a3", "a", 3.0)),
               threading.Thread(target=run, args=("b1", "b", 4.0))]
    for n, thread in enumerate(threads, 1):
        thread.start()
        until(lambda n=n: slots.waiting() == n)  # type: ignore[misc]
    # Act / Assert: the freed slot goes to b (0 running), not to a's older job
    held[0].__exit__(None, None, None)
    until(lambda: started == ["b1"])
    assert slots.running("a") == 1 and slots.waiting() == 1
    held[1].__exit__(None, None, None)
    until(lambda: started == ["b1", "a3"])
    for event in release.values():
        event.set()
    for thread in threads:
        thread.join(10)
    assert slots.running("a") == slots.running("b") == 0


@pytest.mark.parametrize(("lines", "message"), [
    (["ok:reader", "nocolon"], "tokens.txt:2: expected TOKEN:ROLE"),
    (["# c", "", "t:owner:x"], "tokens.txt:3: role 'owner' is not one of"),
    (["t:reader", "t:admin"], "tokens.txt:2: this token is listed twice"),
    (["a b:reader"], "tokens.txt:1: a token must not contain spaces"),
    (["t:reader::"], "tokens.txt:1: expected"),
    (["# only comments"], "tokens.txt: no tokens"),
])
def test_a_bad_token_line_is_named_by_file_and_line(lines: list[str], message: str) -> None:
    with pytest.raises(TokenFileError, match=message):
        TokenTable.parse(lines, "tokens.txt")


def serve_args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    serve_options.add_arguments(p)
    return p.parse_args(list(argv))


def test_bad_budget_lines_and_tokens_from_the_environment() -> None:
    with pytest.raises(BudgetFileError, match=r"b\.txt:2: expected TENANT:TRAININGS"):
        TenantBudgets.parse(["acme:10", "beta:-1"], "b.txt")
    assert TenantBudgets.parse(["acme: 10", "*:5"], "b.txt").limit("zeta") == 5
    tokens = security_from_args(serve_args(), {"NAS_TOKENS": "x:reader:t1,y:admin\nz:submitter"}
                                ).tokens
    assert tokens is not None and tokens.identify("x").tenant == "t1"
    assert tokens.identify("z").role is Role.SUBMITTER
    with pytest.raises(ServeOptionError, match=r"\$NAS_TOKENS:2: role 'boss'"):
        security_from_args(serve_args(), {"NAS_TOKENS": "x:reader,y:boss"})
    assert security_from_args(serve_args(), {}).tokens is None
    with pytest.raises(ServeOptionError, match="--tls-cert, --tls-key: TLS needs both"):
        security_from_args(serve_args("--tls-cert", "c.pem"), {})
    assert security_from_args(serve_args(), {}).max_workers == 64
    with pytest.raises(ServeOptionError, match="--max-workers: must be >= 1, got 0"):
        security_from_args(serve_args("--max-workers", "0"), {})


def test_health_stays_open_and_an_oversized_request_is_resource_exhausted(tmp_path: Path
                                                                         ) -> None:
    store = InMemoryJobStore()
    running = serve_search(store, job_runner(store, tmp_path), tokens=TOKENS,
                           max_message_bytes=64 * 1024)
    try:
        with grpc.insecure_channel(running.address) as channel:  # no token
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="nas.v1.SearchService"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with SearchClient(running.address, timeout=10, token="root") as client:
            huge = nb201_spec(budget=2)
            huge.name = "x" * 100_000
            with pytest.raises(ResourceExhaustedError, match="larger than max"):
                client.submit(huge)
            assert client.list() == []  # refused before the servicer, and still serving
            assert client.get(client.submit(nb201_spec(budget=2))).tenant == "default"
    finally:
        running.stop()


def test_calls_beyond_max_concurrent_rpcs_are_resource_exhausted(tmp_path: Path) -> None:
    store = InMemoryJobStore()
    running = serve_search(store, job_runner(store, tmp_path), max_concurrent_rpcs=1)
    requests: queue.Queue[reflection_pb2.ServerReflectionRequest | None] = queue.Queue()
    try:
        with grpc.insecure_channel(running.address) as channel, \
                SearchClient(running.address, timeout=10) as client:
            # a reflection stream stays open while its requests do: it holds the one slot
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter(requests.get, None), timeout=30)
            requests.put(reflection_pb2.ServerReflectionRequest(list_services=""))
            assert next(replies).list_services_response.service
            with pytest.raises(ResourceExhaustedError, match="Concurrent RPC limit"):
                client.list()
            requests.put(None)  # end the stream
            assert list(replies) == []

            def served() -> bool:
                with contextlib.suppress(ResourceExhaustedError):
                    return client.list() == []
                return False

            until(served)  # the slot is free again once the server has closed the stream
    finally:
        requests.put(None)
        running.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for localhost and 127.0.0.1, and its key."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=30)
    return cert, key


def test_tls_and_mutual_tls(tmp_path: Path, certificate: tuple[Path, Path],
                            capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = certificate
    pem, key_pem = cert.read_bytes(), key.read_bytes()
    store = InMemoryJobStore()
    for mutual in (False, True):
        tls = ServerTls.from_files(cert, key, client_ca=cert if mutual else None)
        running = serve_search(store, job_runner(store, tmp_path), tokens=TOKENS, tls=tls)
        try:
            with SearchClient(running.address, timeout=10, token="s-beta", tls_ca=pem,
                              tls_cert=pem if mutual else None,
                              tls_key=key_pem if mutual else None) as client:
                job_id = client.submit(nb201_spec(budget=2))
                assert client.get(job_id).tenant == "beta"
            if not mutual:  # the CLI's --tls-ca
                assert cli.main(["list", "--endpoint", running.address, "--token", "s-beta",
                                 "--tls-ca", str(cert)]) == 0
                assert job_id in capsys.readouterr().out
            with SearchClient(running.address, timeout=5, token="s-beta") as plain, \
                    pytest.raises(UnavailableError):
                plain.list()  # a plaintext client cannot talk to a TLS server
            if mutual:  # a client without a certificate is turned away
                with SearchClient(running.address, timeout=5, token="s-beta",
                                  tls_ca=pem) as anonymous, pytest.raises(UnavailableError):
                    anonymous.list()
        finally:
            running.stop()
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("secret")
    with pytest.raises(ValueError, match=r"--tls-key: .* is not a PEM file"):
        ServerTls.from_files(cert, not_pem)


REDIS_PASSWORD = "pw-for-tests"


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server that requires REDIS_PASSWORD; its URL (no password in it)."""
    port = free_port()
    server = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                               "--bind", "127.0.0.1", "--requirepass", REDIS_PASSWORD, "--save",
                               "", "--appendonly", "no", "--dir",
                               str(tmp_path_factory.mktemp("redis"))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        def up() -> bool:
            with contextlib.suppress(ServeOptionError):
                connect_redis(url, REDIS_PASSWORD).close()
                return True
            return False

        until(up)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def test_the_job_store_takes_a_redis_password_and_a_wrong_one_exits_2(
        redis_with_password: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = redis_with_password
    store = RedisJobStore(connect_redis(url, REDIS_PASSWORD), "pw-test")
    assert store.create("job-1", "me", "acme", {"budget": 1}).tenant == "acme"
    assert [v.job_id for v in store.jobs()[0]] == ["job-1"]
    for password in ("wrong", None):
        with pytest.raises(ServeOptionError, match=r"--redis-password: .* refused"):
            connect_redis(url, password)
    assert serve_search_command.main(["--port", "0", "--redis", url, "--redis-password",
                                      "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--redis-password or $NAS_REDIS_PASSWORD" in err


def test_serve_search_exits_2_naming_a_bad_token_file_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("root:admin\n# readers\nalice:reeder:acme\n")
    assert serve_search_command.main(["--port", "0", "--tokens-file", str(tokens)]) == 2
    assert f"{tokens}:3: role 'reeder' is not one of reader, submitter, admin" in \
        capsys.readouterr().err
    assert serve_search_command.main(["--port", "0", "--tokens-file", str(tmp_path / "no")]) == 2
    assert "--tokens-file: cannot read" in capsys.readouterr().err


def _serve(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "nas", "serve", "search", "--port",
                             "0", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("search service listening on "):
        proc.kill()
        raise AssertionError(f"the service did not start: {line}{proc.stdout.read()[-2000:]}")
    return proc, line.split()[-1]


def test_the_cli_calls_a_served_service_with_tokens_in_a_password_redis(
        redis_with_password: str, tmp_path: Path, nb201_csv: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange: tokens, a budget for acme, the job store in a Redis that needs a password
    (tmp_path / "tokens.txt").write_text("\n".join(TOKEN_LINES) + "\n")
    (tmp_path / "budgets.txt").write_text("acme:5\n")
    spec, big = tmp_path / "spec.yaml", tmp_path / "big.yaml"
    spec.write_text("space: nb201\nevaluator: nb201\nstrategy: random\nbudget: 3\n")
    big.write_text("space: nb201\nevaluator: nb201\nstrategy: random\nbudget: 12\n")
    env = {**os.environ, "NAS_NB201_CSV": str(nb201_csv), "NAS_REDIS_PASSWORD": REDIS_PASSWORD}
    server, endpoint = _serve(["--redis", redis_with_password, "--redis-prefix", "cli-test",
                               "--tokens-file", str(tmp_path / "tokens.txt"), "--tenant-budgets",
                               str(tmp_path / "budgets.txt"), "--work-dir",
                               str(tmp_path / "work")], env)
    monkeypatch.delenv("NAS_TOKEN", raising=False)

    def nas(*args: str) -> tuple[int, str, str]:
        code = cli.main([*args, "--endpoint", endpoint])
        out, err = capsys.readouterr()
        return code, out, err

    try:
        # Act / Assert
        code, out, _ = nas("submit", str(spec), "--token", "s-acme")
        assert code == 0
        job_id = out.strip().splitlines()[-1]
        code, _, err = nas("list")
        assert code == 2 and "no token" in err and "--token TOKEN or $NAS_TOKEN" in err
        code, _, err = nas("submit", str(spec), "--token", "r-acme")
        assert code == 2 and "SubmitSearch needs a token of role submitter" in err
        code, _, err = nas("submit", str(big), "--token", "s-acme")
        assert code == 2 and "spec.budget: 12 trainings exceed tenant 'acme'" in err
        monkeypatch.setenv("NAS_TOKEN", "s-beta")  # another tenant: the job is not there
        code, _, err = nas("status", job_id)
        assert code == 2 and f"no job {job_id!r}" in err and "Traceback" not in err
        stored = RedisJobStore(connect_redis(redis_with_password, REDIS_PASSWORD), "cli-test")
        assert stored.get(job_id).owner == token_name("s-acme")
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_an_open_service_warns_once_at_start_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NAS_TOKENS"}
    server, _ = _serve(["--work-dir", str(tmp_path / "work")], env)
    try:
        assert server.stdout is not None
        assert "the service is open, every caller is admin" in server.stdout.readline()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert "warning" not in server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
