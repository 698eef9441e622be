"""`nas serve search` as an operator runs it: without `--redis` its jobs live in a private
redis-server with an append-only file in its work dir, so a SIGKILL and a restart on the same
work dir find the job (and finish it), an orphaned store server is stopped first and a second
service on the work dir is refused; `--in-memory` says that it forgets. No process it starts
carries the Redis password or the cluster token on its command line."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import cmdlines, descendants

from controller.distributed.processes import start_private_redis, stop
from controller.distributed.shards import split_password
from controller.service.client import SearchClient
from protos.cluster_auth import TOKEN_ENV
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 180.0


def _spec(budget: int, strategy: str = "random", replicas: int = 1) -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="nb201"), strategy=strategy,
                         evaluation=sp.EvaluationSpec(evaluator="nb201", dataset="cifar10"),
                         budget=budget, seed=7, execution=sp.ExecutionSpec(replicas=replicas))


def _serve(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes],
                                                                       str]:
    with log.open("ab") as out:
        offset = out.tell()
        proc = subprocess.Popen([sys.executable, "-m", "nas", "serve", "search", "--port", "0",
                                 *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("search service listening on "):
                return proc, line.split()[-1]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the service did not start:\n{log.read_text()[-3000:]}")


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _orphan(store: Path) -> subprocess.Popen[bytes]:
    """A redis-server on the store's files, as one whose service was SIGKILLed and that lived
    on (its own session: nothing ties it to a parent)."""
    proc = subprocess.Popen(["redis-server", str(store / "redis.conf")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (store / "redis.pid").exists() and \
                (store / "redis.pid").read_text().strip() == str(proc.pid):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the orphan redis-server did not start")


def test_a_job_survives_a_sigkill_of_a_service_with_the_default_store(
        tmp_path: Path, nb201_csv: Path) -> None:
    # Arrange
    env = {**os.environ, "NAS_NB201_CSV": str(nb201_csv)}
    work, log = tmp_path / "work", tmp_path / "service.log"
    first, endpoint = _serve(["--work-dir", str(work)], env, log)
    procs: list[subprocess.Popen[bytes]] = [first]
    try:
        with SearchClient(endpoint) as client:
            job_id = client.submit(_spec(2500))
            deadline = time.monotonic() + WAIT_S
            while client.get(job_id).trainings < 100 and time.monotonic() < deadline:
                time.sleep(0.05)
        store_pid = int((work / "store" / "redis.pid").read_text())
        # Act: SIGKILL mid-job; its store server gets SIGTERM with it and exits; one that
        # lived on (an orphan) holds the same files when the service starts again
        first.kill()
        first.wait(30)
        assert _gone(store_pid)
        orphan = _orphan(work / "store")
        procs.append(orphan)
        second, endpoint = _serve(["--work-dir", str(work)], env, log)
        procs.append(second)
        busy = subprocess.run([sys.executable, "-m", "nas", "serve", "search", "--port", "0",
                               "--work-dir", str(work)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        with SearchClient(endpoint) as client:
            resumed = client.get(job_id)
            job = client.wait(job_id, WAIT_S)
        # Assert
        assert orphan.wait(30) == 0  # stopped (SIGTERM) before the new store server started
        assert resumed.trainings >= 100
        assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 2500, job.reason
        assert busy.returncode == 2 and "--work-dir" in busy.stderr and "in use" in busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1, busy.stderr
        assert f"resumed {job_id}" in log.read_text()
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
        assert not (work / "store" / "redis.pid").exists()  # its store server stopped too
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


def test_in_memory_is_only_when_asked_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    server, _ = _serve(["--in-memory", "--work-dir", str(tmp_path / "work")], dict(os.environ),
                       log)
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    both = subprocess.run([sys.executable, "-m", "nas", "serve", "search", "--in-memory",
                           "--redis", "redis://127.0.0.1:6379/0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert "warning: --in-memory: jobs are kept in memory only" in log.read_text()
    assert not (tmp_path / "work" / "store").exists()
    assert both.returncode == 2 and "--in-memory" in both.stderr
    assert len(both.stderr.strip().splitlines()) == 1 and "Traceback" not in both.stderr


def test_no_process_the_service_starts_has_a_secret_on_its_command_line(
        tmp_path: Path, nb201_csv: Path) -> None:
    # Arrange: a Redis with a password; the password and the token in the environment only
    password, token = secrets.token_hex(16), secrets.token_urlsafe(32)
    db, url = start_private_redis(tmp_path / "db", tmp_path / "logs", password=password)
    env = {**os.environ, "NAS_NB201_CSV": str(nb201_csv), "NAS_REDIS_PASSWORD": password,
           TOKEN_ENV: token}
    server: subprocess.Popen[bytes] | None = None
    try:
        server, endpoint = _serve(["--redis", url, "--redis-prefix", "secrets", "--shards", "2",
                                   "--work-dir", str(tmp_path / "work")], env,
                                  tmp_path / "service.log")
        # Act: a job whose two replicas push to the shards (they checkpoint to the Redis)
        with SearchClient(endpoint) as client:
            job = client.wait(client.submit(_spec(8, "reinforce", replicas=2)), WAIT_S)
        commands = cmdlines([db.proc.pid, server.pid, *descendants(server.pid)])
        # Assert
        assert job.state == sp.JOB_STATE_SUCCEEDED and job.trainings == 8, job.reason
        assert sum("paramserver" in c for c in commands) == 2 and len(commands) >= 4
        leaked = [c for c in commands if password in c or token in c]
        assert not leaked
        assert ((tmp_path / "db" / "redis.conf").stat().st_mode & 0o777) == 0o600
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(30)
        stop([db])


def test_a_relative_work_dir_keeps_its_store_there(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-m", "nas", "serve", "search", "--port", "0",
                             "--work-dir", "runs/service"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert line.startswith("search service listening on "), line + proc.stdout.read()
    assert (tmp_path / "runs" / "service" / "store" / "appendonlydir").is_dir()


def test_a_password_is_taken_out_of_a_redis_url_for_the_environment() -> None:
    assert split_password("unix:///run/redis.sock") == ("unix:///run/redis.sock", None)
    assert split_password("unix:///run/redis.sock?password=a%20b&db=1") == (
        "unix:///run/redis.sock?db=1", "a b")
    assert split_password("redis://:p%40w@db:6379/0") == ("redis://db:6379/0", "p@w")
    assert split_password("redis://user:pw@db:6379/0") == ("redis://user@db:6379/0", "pw")
