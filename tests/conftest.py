"""Shared fixtures: the real NB201 table from ../shared/data (or $NAS_DATA_DIR)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis
import torch

from controller.jobs.store import JobStore, TrialRecord
from controller.service.client import SearchClient

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The shared data directory: $NAS_DATA_DIR, else ../shared/data beside the project."""
    return Path(os.environ.get("NAS_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def nb201_csv() -> Path:
    path = Path(os.environ.get("NAS_NB201_CSV", data_dir() / "nb201" / "nb201_merged.csv"))
    assert path.is_file(), f"NB201 table missing at {path}: set NAS_DATA_DIR or NAS_NB201_CSV"
    return path


@pytest.fixture(scope="session")
def nb201_table(nb201_csv: Path) -> dict[str, tuple[float, float]]:
    from controller.evaluators.nb201 import load_table

    return load_table(nb201_csv, "cifar10")


@pytest.fixture(scope="session")
def fashion_mnist_installed() -> Path:
    from worker.datasets_fashion_mnist import FASHION_MNIST_DIR

    assert (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        f"Fashion-MNIST not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist")
    return FASHION_MNIST_DIR


def stored_trials(store: JobStore, job_id: str) -> dict[str, TrialRecord]:
    """Every trial record of a stored job, by id in start order (read page by page)."""
    out: dict[str, TrialRecord] = {}
    after: int | None = -1
    while after is not None:
        page, after = store.trials(job_id, after=after, limit=500)
        out.update((t.trial_id, t) for t in page)
    return out


@pytest.fixture(params=["in-process", "server"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SearchClient]:
    """One client suite, run against the servicer in this process and against a real server on
    a free port (jobs in memory, one at a time)."""
    from controller.jobs.store import InMemoryJobStore
    from controller.service.servicer import SearchServicer, serve_search
    from nas.cluster import job_runner

    store = InMemoryJobStore()
    runner = job_runner(store, tmp_path, max_running=1)
    if request.param == "in-process":
        with SearchClient(SearchServicer(store, runner)) as local:
            yield local
        runner.close()
        return
    running = serve_search(store, runner)
    try:
        with SearchClient(running.address) as remote:
            yield remote
    finally:
        running.stop()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine, intra-op threads fighting for the cores make
    small trainings many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class OwnRedis:
    """redis-server processes of a test's own on one free port of 127.0.0.1, with an AOF
    (fsync always) in ``directory``: ``start()`` (again after a kill) restarts from it."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.directory = directory
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        """A server on ``port``, once it accepts connections."""
        proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind",
                                 "127.0.0.1", "--save", "", "--appendonly", "yes",
                                 "--appendfsync", "always", "--dir", str(self.directory)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started.append(proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return proc
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A Redis of the test's own to kill and restart; every server it started is killed after."""
    servers = OwnRedis(tmp_path)
    yield servers
    for proc in servers.started:
        proc.kill()
        proc.wait(10)


def assert_unparsable_requests_are_invalid_argument(address: str, service: str,
                                                    methods: tuple[str, ...],
                                                    payloads: tuple[bytes, ...]) -> None:
    """Raw bytes that are no valid request get INVALID_ARGUMENT naming the message (found by
    bench.load's fuzzer: grpc answered INTERNAL "Exception deserializing request!")."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        for payload in payloads:
            for method in methods:
                raw = channel.unary_unary(f"/nas.v1.{service}/{method}")
                with pytest.raises(grpc.RpcError) as info:
                    raw(payload, timeout=10)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "request: not a valid nas.v1." in str(info.value.details())


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdlines(pids: list[int]) -> list[str]:
    """The command lines of ``pids`` (those still running), arguments joined by spaces."""
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # exited meanwhile
    return out


def serve_search_process(work: Path, redis_url: str, prefix: str, extra: Sequence[str] = (),
                         env: Mapping[str, str] | None = None
                         ) -> tuple[subprocess.Popen[str], str]:
    """A real ``nas serve search`` on a free port with its jobs in ``redis_url`` under
    ``prefix``, and its endpoint (read from its first line; the process is killed and the test
    fails with its output when it does not start)."""
    proc = subprocess.Popen([sys.executable, "-m", "nas", "serve", "search", "--port", "0",
                             "--redis", redis_url, "--redis-prefix", prefix, "--work-dir",
                             str(work), *extra], cwd=ROOT,
                            env=dict(os.environ if env is None else env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("search service listening on "):
        proc.kill()  # never leave a service behind
        raise AssertionError(f"the service did not start: {line}{proc.stdout.read()[-2000:]}")
    return proc, line.split()[-1]
