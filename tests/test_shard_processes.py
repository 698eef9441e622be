"""Shard processes as ``nas`` starts them (controller.distributed.shards.ShardProcesses, real
``python -m paramserver`` processes, real Redis): no torch in them, small and quick to start,
and one that dies while it starts is restarted like one that dies later."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from controller.distributed.processes import Child, ProcessError
from controller.distributed.ps_client import ShardedParameterClient
from controller.distributed.shards import MAX_RESTARTS, ShardProcesses
from protos.types import LayoutSpec

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/0"
POLICY_SIZE = 20_550  # a policy of the size the bench measures
MAX_RSS_MB = 120
MAX_STARTUP_S = 5.0  # 0.3 to 1.1 s on a loaded 2-core machine; 2 to 5 s when shards had torch


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(f"{name}:*"):
        r.delete(key)
    r.close()


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _serve_a_policy(c: ShardProcesses, address: str) -> None:
    """Register, push and pull a policy-sized layout on a one-shard process."""
    layout = LayoutSpec("policy", POLICY_SIZE, 1, learning_rate=1e-3)
    client = ShardedParameterClient([address], layout, auth=c.auth)
    try:
        client.register(np.zeros(POLICY_SIZE, dtype=np.float32))
        for seq in range(10):
            client.push("r0", seq, [seq], np.ones(POLICY_SIZE, dtype=np.float32))
        values, versions = client.pull()
    finally:
        client.close()
    assert versions == [10] and values.shape == (POLICY_SIZE,) and values[0] < 0


def test_a_shard_process_never_maps_torch_and_is_small_and_quick(prefix: str,
                                                                 tmp_path: Path) -> None:
    c = ShardProcesses(tmp_path / "logs")
    try:
        # Act
        begin = time.monotonic()
        address = c.start_shard(0, 1, REDIS_URL, prefix)
        startup = time.monotonic() - begin
        _serve_a_policy(c, address)
        pid = c.shards[0].proc.pid
        maps = Path(f"/proc/{pid}/maps").read_text()
        rss_mb = _status_kb(pid, "VmRSS") / 1024
    finally:
        c.stop()
    # Assert: no torch library in its address space, after serving a push and a pull
    assert "libtorch" not in maps and "/torch/" not in maps
    assert rss_mb <= MAX_RSS_MB, f"shard RSS {rss_mb:.0f} MB"
    assert startup <= MAX_STARTUP_S, f"spawn to 'listening on': {startup:.2f} s"


def test_no_module_of_the_parameter_server_imports_torch() -> None:
    # every module, including the ones __main__ imports late (the server)
    code = ("import pkgutil, importlib, sys, paramserver\n"
            "for m in pkgutil.walk_packages(paramserver.__path__, 'paramserver.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


class KillBeforeReady:
    """``on_spawn`` that SIGKILLs the next ``times`` shard processes the moment they exist."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.killed: list[int] = []

    def __call__(self, child: Child) -> None:
        if len(self.killed) < self.times:
            child.proc.kill()
            self.killed.append(child.proc.pid)


def _ready_lines(c: ShardProcesses, name: str) -> int:
    return (c.log_dir / f"{name}.log").read_text().count("listening on")


def test_a_shard_killed_while_starting_is_restarted_and_counted(prefix: str,
                                                                tmp_path: Path) -> None:
    # Arrange
    killer = KillBeforeReady(times=1)
    c = ShardProcesses(tmp_path / "logs", on_spawn=killer)
    try:
        # Act
        address = c.start_shard(0, 1, REDIS_URL, prefix)
        # Assert: the second process serves; only it ever got ready
        assert c.restarts == {"shard0": 1} and len(killer.killed) == 1
        assert c.shards[0].alive() and c.shards[0].proc.pid != killer.killed[0]
        assert _ready_lines(c, "shard0") == 1
        _serve_a_policy(c, address)
        # Act: it dies serving, and its replacement dies while starting
        killer.times = 2
        c.shards[0].proc.kill()
        c.shards[0].proc.wait(timeout=30)
        c.revive_shards(1, REDIS_URL, prefix)
        # Assert: both restarts counted, back on the same port, its checkpoint restored
        assert c.restarts == {"shard0": 3} and c.shard_addresses == [address]
        assert _ready_lines(c, "shard0") == 2
        client = ShardedParameterClient([address], LayoutSpec("policy", POLICY_SIZE, 1,
                                                              learning_rate=1e-3), auth=c.auth)
        assert client.pull()[1] == [10]
        client.close()
    finally:
        c.stop()


def test_a_shard_that_never_gets_ready_is_given_up_after_max_restarts(prefix: str,
                                                                      tmp_path: Path) -> None:
    killer = KillBeforeReady(times=1000)
    c = ShardProcesses(tmp_path / "logs", on_spawn=killer)
    try:
        with pytest.raises(ProcessError, match=rf"shard0 died {MAX_RESTARTS} times"):
            c.start_shard(0, 1, REDIS_URL, prefix)
    finally:
        c.stop()
    assert len(killer.killed) == MAX_RESTARTS + 1 and c.shards == []


def _children(pid: int) -> list[int]:
    """The processes ``pid`` forked (any of its threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _kill_first_shard_child(proc: subprocess.Popen[bytes], timeout: float = 180) -> int:
    """SIGKILL the first ``python -m paramserver`` child of ``proc`` as soon as it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in _children(proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"paramserver" in argv:
                os.kill(pid, signal.SIGKILL)
                return int(argv[argv.index(b"--shard") + 1])
        time.sleep(0.002)
    raise AssertionError("no shard process was started")


def test_nas_search_survives_a_shard_killed_while_starting(tmp_path: Path,
                                                           nb201_csv: Path) -> None:
    # Arrange
    proc = subprocess.Popen([sys.executable, "-m", "nas", "search", "--space", "nb201",
                             "--evaluator", "nb201", "--nb201-csv", str(nb201_csv), "--out",
                             str(tmp_path), "--quiet", "--budget", "12", "--shards", "3"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Act
    shard = _kill_first_shard_child(proc)
    out, _ = proc.communicate(timeout=300)
    # Assert: the search ended well, the restart counted, that shard got ready once
    assert proc.returncode == 0, out.decode()[-3000:]
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 12
    assert doc["layout"]["restarts"] == {f"shard{shard}": 1}
    assert (tmp_path / "logs" / f"shard{shard}.log").read_text().count("listening on") == 1
