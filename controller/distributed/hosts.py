"""Local replica-host processes (``nas serve replica``) on loopback: started by the search
service's cluster with ``--replica-hosts P``, each restarted on its port when it dies (while it
starts too), at most ``MAX_RESTARTS`` times. The cluster token travels in their environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.distributed.processes import (
    Child,
    ProcessError,
    python_module,
    spawn,
    stop,
    wait_for_line,
)
from protos.cluster_auth import INSECURE_FLAG, TOKEN_ENV

HOST_READY = r"replica host listening on (\S+:\d+)"
MAX_RESTARTS = 5


@dataclass
class ReplicaHostProcesses:
    """The replica hosts started here, stopped together."""

    log_dir: Path
    token: str | None = field(default=None, repr=False)
    hosts: list[Child] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)

    def start(self, count: int) -> list[str]:
        """Start ``count`` hosts; their addresses once each listens."""
        for index in range(count):
            self._start(index, 0)
        return list(self.addresses)

    def _start(self, index: int, port: int) -> str:
        """Start host ``index`` (on ``port``; 0: any), again when it dies before it is ready."""
        while True:
            child = spawn(f"replica-host{index}", python_module(
                "nas", "serve", "replica", "--port", str(port),
                *([] if self.token else [INSECURE_FLAG])), self.log_dir,
                {TOKEN_ENV: self.token} if self.token else {})
            if index < len(self.hosts):
                self.hosts[index] = child
            else:
                self.hosts.append(child)
            try:
                address = wait_for_line(child, HOST_READY).group(1)
            except ProcessError:
                if child.alive() or child.proc.returncode == 2:  # stuck, or its own error
                    raise
                self._count_restart(child)
                continue
            if index < len(self.addresses):
                self.addresses[index] = address
            else:
                self.addresses.append(address)
            return address

    def revive(self) -> list[str]:
        """Restart every host that died, on its port; the names of those restarted."""
        revived = []
        for index, child in enumerate(self.hosts):
            if child.alive():
                continue
            self._count_restart(child)
            self._start(index, int(self.addresses[index].rsplit(":", 1)[1]))
            revived.append(child.name)
        return revived

    def _count_restart(self, child: Child) -> None:
        self.restarts[child.name] = self.restarts.get(child.name, 0) + 1
        if self.restarts[child.name] > MAX_RESTARTS:
            raise ProcessError(f"{child.name} died {MAX_RESTARTS} times:\n{child.tail()}")

    def pids(self) -> dict[str, int]:
        """Each host's process id."""
        return {c.name: c.proc.pid for c in self.hosts}

    def stop(self) -> None:
        """Stop every host."""
        stop(self.hosts)
