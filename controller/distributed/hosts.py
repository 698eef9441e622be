"""Local replica-host processes (``nas serve replica``) on loopback: started by the search
service's cluster with ``--replica-hosts P``, each restarted on its port when it dies (while it
starts too), at most ``MAX_RESTARTS`` times. The cluster token travels in their environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.distributed.processes import (
    Child,
    count_restart,
    python_module,
    spawn,
    start_ready,
    stop,
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
        child, ready = start_ready(lambda: self._spawn(index, port), HOST_READY, self.restarts,
                                   MAX_RESTARTS)
        if index < len(self.hosts):
            self.hosts[index], self.addresses[index] = child, ready.group(1)
        else:
            self.hosts.append(child)
            self.addresses.append(ready.group(1))
        return ready.group(1)

    def _spawn(self, index: int, port: int) -> Child:
        return spawn(f"replica-host{index}", python_module(
            "nas", "serve", "replica", "--port", str(port),
            *([] if self.token else [INSECURE_FLAG])), self.log_dir,
            {TOKEN_ENV: self.token} if self.token else {})

    def revive(self) -> list[str]:
        """Restart every host that died, on its port; the names of those restarted."""
        revived = []
        for index, child in enumerate(self.hosts):
            if child.alive():
                continue
            count_restart(child, self.restarts, MAX_RESTARTS)
            self._start(index, int(self.addresses[index].rsplit(":", 1)[1]))
            revived.append(child.name)
        return revived

    def pids(self) -> dict[str, int]:
        """Each host's process id."""
        return {c.name: c.proc.pid for c in self.hosts}

    def stop(self) -> None:
        """Stop every host."""
        stop(self.hosts)
