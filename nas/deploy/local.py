"""The topology as local processes on 127.0.0.1 (``nas up``): the same services, commands and
health probes as ``docker-compose.yml``, on free ports read back from each service's
``listening on`` line. Children die with the process that started them (``spawn``)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from controller.config import ConfigError
from controller.distributed.processes import (
    Child,
    ProcessError,
    redis_quote,
    redis_server_binary,
    spawn,
    stop,
    wait_for_line,
    write_private_file,
)
from nas.deploy.probe import ProbeFailed, healthy
from nas.deploy.topology import (
    METRICS,
    PASSWORD_ENV,
    TOKEN_ENV,
    Service,
    prometheus_config,
    services,
)
from protos.cluster_auth import generate_token

CLUSTER_FILE = "cluster.json"
READY_TIMEOUT_S = 120.0
SCRAPE_INTERVAL_S = 2
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")


class UpError(RuntimeError):
    """The cluster cannot start; the message names the flag or the service (with its log)."""


def expand(text: str, values: Mapping[str, str]) -> str:
    """Substitute compose-style ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}``."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if values.get(name):
            return values[name]
        if op == "-":
            return arg
        raise UpError(f"${name}: not set ({arg or 'needed by the topology'})")
    return _VARIABLE.sub(one, text)


class LocalTarget:
    """127.0.0.1, ports bound by the services themselves, files under the run directory."""

    host = "127.0.0.1"
    ray_address = None  # the search service starts a private local Ray

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.bound: dict[tuple[str, str], int] = {}

    def port(self, service: str, name: str) -> int:
        """0 until the service reported the port it bound."""
        return self.bound.get((service, name), 0)

    def address(self, service: str, name: str) -> str:
        """``127.0.0.1:PORT`` of a started service."""
        if (service, name) not in self.bound:
            raise UpError(f"{service}: its {name} port is not known yet (start order)")
        return f"{self.host}:{self.bound[service, name]}"

    def hostname(self, service: str) -> str:
        """Everything is on loopback."""
        return self.host

    def path(self, name: str) -> str:
        """A file or folder of the run directory."""
        return str(self.run_dir / name)

    def redis_url(self) -> str:
        """The private Redis's unix socket (no TCP port to collide with)."""
        return f"unix://{self.run_dir / 'redis.sock'}"


def program(service: Service) -> list[str]:
    """The local command running ``service.program``; ConfigError if it is not installed."""
    if service.program == "nas":
        return [sys.executable, "-m", "nas"]
    if service.program == "redis-server":
        try:
            return [redis_server_binary()]
        except ProcessError as exc:
            raise ConfigError(f"redis: {exc}") from None
    found = shutil.which(service.program)
    if not found:
        raise ConfigError(f"--prometheus: no {service.program} on PATH (apt-get install "
                          f"{service.program}, or leave out --prometheus)")
    return [found]


def redis_config(args: list[str]) -> str:
    """redis-server's ``--name value ...`` options as redis.conf lines (values quoted)."""
    lines: list[str] = []
    values: list[str] = []
    name = ""
    for arg in [*args, "--"]:
        if arg.startswith("--"):
            if name:
                lines.append(" ".join([name, *map(redis_quote, values)]))
            name, values = arg[2:], []
        else:
            values.append(arg)
    return "".join(f"{line}\n" for line in lines)


def start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` ("" if gone or a zombie): a reused pid differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()  # after the (comm) field: state is field 3
    return "" if fields[0] == "Z" else fields[19]  # field 22


@dataclass
class LocalCluster:
    """The services started so far, their endpoints, and how to stop them."""

    run_dir: Path
    shards: int = 2
    workers: int = 0
    prometheus: bool = False
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    token: str = field(default_factory=generate_token, repr=False)
    target: LocalTarget = field(init=False)
    children: list[Child] = field(default_factory=list)
    endpoints: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # absolute: redis-server chdirs to its --dir, and a relative unix socket path (the
        # README's `--dir runs/cluster`) would then point nowhere
        self.run_dir = Path(self.run_dir).resolve()
        self.target = LocalTarget(self.run_dir)
        self.values = {PASSWORD_ENV: self.password, TOKEN_ENV: self.token,
                       "NAS_WORKERS": str(self.workers)}

    def up(self) -> None:
        """Start every service in order and wait until each is healthy; UpError (after
        stopping what started) if one is not."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)  # cluster.json holds the Redis password
        for name in ("redis-data", "prometheus-data", "work"):
            (self.run_dir / name).mkdir(exist_ok=True)
        cluster = services(self.shards, self.workers)
        try:
            for service in cluster:
                if service.local is not None:
                    self.skipped[service.name] = service.local
                elif service.program == "prometheus" and not self.prometheus:
                    self.skipped[service.name] = "without --prometheus"
                else:
                    self._start(service, cluster)
            self.save()
        except BaseException:
            self.down()
            raise

    def _start(self, service: Service, cluster: list[Service]) -> None:
        if service.program == "prometheus":
            started = [s for s in cluster if s.name in self.endpoints]
            config = prometheus_config(started, self.target, SCRAPE_INTERVAL_S, False)
            (self.run_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        argv = program(service) + [expand(a, self.values) for a in service.args(self.target)]
        if service.program == "redis-server":  # its options (the password) in a 0600 file
            argv = [argv[0], str(write_private_file(self.run_dir / "redis.conf",
                                                    redis_config(argv[1:])))]
        env = {k: expand(v, self.values) for k, v in service.env.items()}
        child = spawn(service.name, argv, self.run_dir / "logs", env)
        self.children.append(child)
        self.save()
        try:
            for port_name, pattern in service.ready.items():
                found = wait_for_line(child, pattern, READY_TIMEOUT_S)
                if port_name:
                    self.target.bound[service.name, port_name] = int(
                        found.group(1).rsplit(":", 1)[1])
        except ProcessError as exc:
            raise UpError(f"{service.name}: {exc}") from None
        self.endpoints[service.name] = self._endpoints(service)
        self._wait_healthy(service, child)
        self.save()

    def _endpoints(self, s: Service) -> dict[str, str]:
        ends = {name: (f"http://{self.target.address(s.name, name)}/metrics"
                       if name == METRICS else self.target.address(s.name, name))
                for name in s.ports if (s.name, name) in self.target.bound}
        if s.name == "redis":
            ends["redis"] = self.target.redis_url()
        elif s.program == "prometheus":
            ends = {"http": f"http://{self.target.address(s.name, 'http')}"}
        return ends

    def _probe_target(self, s: Service) -> str:
        if s.probe.kind == "redis":
            return self.target.redis_url()
        if s.probe.kind == "metrics":
            return self.endpoints[s.name][METRICS]
        address = self.target.address(s.name, s.probe.port)
        return f"http://{address}{s.probe.path}" if s.probe.kind == "http" else address

    def _wait_healthy(self, s: Service, child: Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                healthy(s.probe.kind, self._probe_target(s), self.password)
                return
            except ProbeFailed as exc:
                if not child.alive() or time.monotonic() > deadline:
                    raise UpError(f"{s.name}: not healthy ({exc}):\n{child.tail()}") from None
            time.sleep(0.2)

    def save(self) -> None:
        """Write RUN_DIR/cluster.json: this process, each service's pid, command, endpoints."""
        doc = {"pid": os.getpid(), "start": start_time(os.getpid()),
               "redis_password": self.password, "cluster_token": self.token,
               "services": {c.name: {"pid": c.proc.pid, "start": start_time(c.proc.pid),
                                     "argv": c.args,
                                     "endpoints": self.endpoints.get(c.name, {}),
                                     "log": str(c.log)} for c in self.children},
               "skipped": self.skipped}
        path = self.run_dir / CLUSTER_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(path)

    def dead(self) -> Child | None:
        """A service that exited on its own, if any."""
        return next((c for c in self.children if not c.alive()), None)

    def down(self) -> None:
        """Stop every service, last started first; remove cluster.json."""
        for child in reversed(self.children):
            stop([child])
        (self.run_dir / CLUSTER_FILE).unlink(missing_ok=True)
