"""Where children run: the Scheduler interface, and its Ray implementation.

Ray stays at this edge: a Ray task is a thin wrapper that calls ``worker.task.run_attempt`` (the
trainer with its reports). Ray's own retries are off (``max_retries=0``): the controller counts
attempts, so a retried attempt gets a new number and its reports cannot be mistaken for the old
one's.

A lost Ray node (``check``): the raylet of a private local Ray fate-shares with its agents, so a
killed dashboard agent takes it down, and every running attempt with it. Ray alone does not
recover: its attempts come back (NodeDiedError, once the GCS marks the node dead, seconds later)
but every retry fails at once (LocalRayletDiedError) and the dead node's capacity is gone, so
nothing is leased again. The raylet and GCS processes are polled each round: a private Ray is
shut down and started afresh (its attempts end lost, the controller retries them), up to
``max_restarts`` times; a Ray whose node this process joined died raises RayUnavailable.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protos import codec
from protos.cluster_auth import ClusterAuth
from protos.types import Resources
from protos.v1 import worker_pb2 as wk

Key = tuple[str, int]  # (trial_id, attempt)
log = logging.getLogger(__name__)

# Keep a local Ray on loopback and quiet: no usage reports, no cloud metadata probes.
RAY_LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


class RayUnavailable(RuntimeError):
    """This process's Ray is gone for good (not restartable here); the message says what died."""


class InfeasibleResources(ValueError):
    """No machine of the cluster can ever run a child of this size; the message says how to
    fix it."""


@dataclass(frozen=True)
class Finished:
    """An attempt whose task ended. ``lost``: its process died (or it could not report), so the
    controller never heard a result from it and should retry it."""

    trial_id: str
    attempt: int
    lost: bool
    reason: str = ""
    seconds: float | None = None  # how long the attempt ran, as it measured (None: unknown)


class Scheduler(ABC):
    """Runs attempts somewhere with the resources they declare."""

    @abstractmethod
    def check_feasible(self, resources: Resources) -> None:
        """Raise InfeasibleResources when no machine could ever run a child this size."""

    @abstractmethod
    def capacity(self, resources: Resources) -> int:
        """How many children of this size fit on the cluster at once."""

    @abstractmethod
    def submit(self, task: wk.TrialTask, controller: str,
               auth: ClusterAuth | None = None) -> None:
        """Start one attempt; it reports to the controller at ``controller`` (host:port), with
        ``auth``'s cluster token."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Finished]:
        """Attempts that ended within ``timeout`` seconds (each returned once)."""

    @abstractmethod
    def cancel(self, trial_id: str, attempt: int) -> None:
        """Kill an attempt (superseded or no longer wanted); it ends without being lost."""

    @abstractmethod
    def running(self) -> list[Key]:
        """The attempts submitted and not yet returned by ``wait``."""

    def check(self) -> None:  # noqa: B027 - optional
        """Notice a lost cluster: recover (the attempts it ran end lost, returned by ``wait``)
        or raise RayUnavailable."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the scheduler's resources."""


def _ray_entry(task_bytes: bytes, controller: str,
               auth: ClusterAuth | None = None) -> dict[str, Any]:
    """The Ray task: decode and run one attempt (imports stay inside: a fresh worker process)."""
    from worker.task import run_attempt

    start = time.perf_counter()
    summary = run_attempt(wk.TrialTask.FromString(task_bytes), controller, auth)
    return {"trial_id": summary.trial_id, "attempt": summary.attempt,
            "outcome": summary.outcome, "worker": summary.worker,
            "seconds": time.perf_counter() - start}


class RayScheduler(Scheduler):
    """Attempts as Ray tasks, on a running cluster (``address``) or a private local Ray.

    A local Ray is started with ``num_cpus`` / ``num_gpus`` (None: what the machine has), on
    loopback only, its files under a fresh temporary directory; ``close`` shuts it down. An
    already initialised Ray in this process is used as it is (and left running). ``check``
    restarts a private local Ray whose raylet or GCS died, at most ``max_restarts`` times.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 num_gpus: int | None = None, temp_dir: str | None = None,
                 max_restarts: int = 3) -> None:
        import ray

        self._ray = ray
        self._owns = False
        self.address = address
        self.max_restarts = max_restarts  # of a private local Ray whose node died
        self.restarts = 0
        self._num_cpus, self._num_gpus, self._temp_dir = num_cpus, num_gpus, temp_dir
        if not ray.is_initialized():
            for key, value in RAY_LOOPBACK_ENV.items():
                os.environ.setdefault(key, value)
            self._init()
            self._owns = True
        self._remote = ray.remote(max_retries=0, retry_exceptions=False)(_ray_entry)
        self._refs: dict[Any, Key] = {}
        self._lost: list[Finished] = []  # attempts of a Ray that died, for the next ``wait``
        self._lock = threading.Lock()
        self._node_cache: tuple[float, list[dict[str, float]]] | None = None
        self._node_alive = True  # the node this process is attached to, as the GCS sees it
        self._closed = threading.Event()  # ends the thread of a restarted Ray (``_restart``)

    def _init(self) -> None:
        # no dashboard: Ray 2.60 still starts its process (usage stats only, no frontend) and
        # the raylet its dashboard agent (a raylet refuses an empty agent command); with the
        # minimal install (no aiohttp) both run --minimal
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": "WARNING", "configure_logging": True}
        if self.address:
            self._ray.init(address=self.address, **kwargs)
            return
        temp = self._temp_dir or tempfile.mkdtemp(prefix="nas-ray-")
        self._ray.init(address="local", num_cpus=self._num_cpus, num_gpus=self._num_gpus,
                       _temp_dir=str(Path(temp).resolve()),
                       _node_ip_address="127.0.0.1", **kwargs)

    # how long the cluster's node table is reused: the worker loop asks for its capacity on
    # every lease, and each ``ray.nodes()`` is a GCS round trip (a profile of a lookup-speed
    # search found it among the worker loop's largest costs); a node that joins or leaves is
    # seen within this
    NODE_TABLE_TTL_S = 5.0

    def _nodes(self, fresh: bool = False) -> list[dict[str, float]]:
        now = time.monotonic()
        with self._lock:
            cached = self._node_cache
        if not fresh and cached is not None and now - cached[0] < self.NODE_TABLE_TTL_S:
            return cached[1]
        table = self._ray.nodes()
        nodes = [dict(n.get("Resources", {})) for n in table if n.get("Alive")]
        mine = self._ray.get_runtime_context().get_node_id()
        with self._lock:
            self._node_cache = (now, nodes)
            self._node_alive = all(n.get("Alive") for n in table if n.get("NodeID") == mine)
        return nodes

    def check(self) -> None:
        reason = self._dead()
        if reason is None:
            return
        with self._lock:  # the node took its attempts with it: end them lost
            self._lost += [Finished(*key, lost=True, reason=reason)
                           for key in self._refs.values()]
            self._refs.clear()
            self._node_cache = None
        if self.address or not self._owns:
            raise RayUnavailable(f"{reason}: the Ray node this process is attached to is lost"
                                 f" (not restarted from here: this process did not start it)")
        if self.restarts >= self.max_restarts:
            raise RayUnavailable(f"{reason}: the private local Ray is lost (restarted "
                                 f"{self.restarts} times already, at most {self.max_restarts})")
        self._restart(reason)

    def _dead(self) -> str | None:
        """What of this process's Ray died (None: nothing)."""
        from ray._private import ray_constants

        node = getattr(self._ray._private.worker, "_global_node", None)
        if node is None:
            return "Ray is not running in this process"
        for kind in (ray_constants.PROCESS_TYPE_RAYLET, ray_constants.PROCESS_TYPE_GCS_SERVER):
            for info in node.all_processes.get(kind, []):  # empty where this process joined
                code = info.process.poll()
                if code is not None:
                    return f"Ray's {kind} (pid {info.process.pid}) exited with code {code}"
        if not self._node_alive:  # an attempt's error, or the last node table (NODE_TABLE_TTL_S)
            return (f"Ray reports this process's node "
                    f"{self._ray.get_runtime_context().get_node_id()[:12]} (its raylet) dead")
        return None

    def _restart(self, reason: str) -> None:
        log.warning("%s: the private local Ray is lost; restarting it", reason)
        start = time.monotonic()
        started = threading.Event()
        error: list[Exception] = []

        def keeper() -> None:  # Ray binds its processes' lives to the thread that started them
            try:  # (prctl PR_SET_PDEATHSIG): this one lives until ``close``, whoever called
                self._ray.shutdown()  # the rest of the dead node's processes, and the driver
                self._init()
            except Exception as exc:
                error.append(exc)
            finally:
                started.set()
            self._closed.wait()

        threading.Thread(target=keeper, name="ray-keeper", daemon=True).start()
        started.wait()
        if error:
            raise RayUnavailable(f"{reason}; restarting the private local Ray failed: "
                                 f"{type(error[0]).__name__}: {error[0]}") from error[0]
        self.restarts += 1
        self._node_alive = True
        log.warning("%s: restarted it in %.1f s (restart %d of at most %d); its attempts are "
                    "retried", reason, time.monotonic() - start, self.restarts,
                    self.max_restarts)

    def check_feasible(self, resources: Resources) -> None:
        def fits(nodes: list[dict[str, float]]) -> bool:
            return any(n.get("CPU", 0.0) >= resources.num_cpus
                       and n.get("GPU", 0.0) >= resources.num_gpus for n in nodes)

        if fits(self._nodes()):
            return
        nodes = self._nodes(fresh=True)  # not on the cached table: a node may have joined
        if fits(nodes):
            return
        total_cpu = sum(n.get("CPU", 0.0) for n in nodes)
        total_gpu = sum(n.get("GPU", 0.0) for n in nodes)
        best_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        best_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        raise InfeasibleResources(
            f"resources: a child asks for num_cpus={resources.num_cpus:g}, "
            f"num_gpus={resources.num_gpus:g}, but no node of the Ray cluster has that much "
            f"(largest node: {best_cpu:g} CPUs, {best_gpu:g} GPUs; cluster: {total_cpu:g} CPUs, "
            f"{total_gpu:g} GPUs in {len(nodes)} nodes). Lower --cpus-per-child / "
            f"--gpus-per-child, or add larger workers to the cluster.")

    def capacity(self, resources: Resources) -> int:
        total = 0
        for node in self._nodes():
            fits = [int(node.get("CPU", 0.0) // resources.num_cpus)] if resources.num_cpus else []
            if resources.num_gpus:
                fits.append(int(node.get("GPU", 0.0) / resources.num_gpus + 1e-9))
            total += min(fits) if fits else 0
        return total

    def submit(self, task: wk.TrialTask, controller: str,
               auth: ClusterAuth | None = None) -> None:
        res = codec.resources_from_proto(task.resources)
        key = (task.trial.trial_id, task.trial.attempt)
        ref = self._remote.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                                   name=f"trial {key[0]} attempt {key[1]}").remote(
            task.SerializeToString(), controller, auth)
        with self._lock:
            self._refs[ref] = key

    def wait(self, timeout: float) -> list[Finished]:
        with self._lock:
            refs = list(self._refs)
            lost, self._lost = self._lost, []
        if lost or not refs:
            return lost
        # back as soon as one attempt ends (its slot is free again), with all that ended by
        # then: waiting for every running attempt would idle the slots of those that ended
        ready, rest = self._ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:
            ready += self._ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        finished = []
        for ref in ready:
            with self._lock:
                key = self._refs.pop(ref, None)
            if key is not None:
                finished.append(self._finished(ref, key))
        return finished

    def _finished(self, ref: Any, key: Key) -> Finished:
        exceptions = self._ray.exceptions
        try:
            summary = self._ray.get(ref, timeout=30)
        except exceptions.TaskCancelledError:
            return Finished(*key, lost=False, reason="cancelled")
        except exceptions.RayTaskError as exc:  # the attempt raised: it could not report
            return Finished(*key, lost=True, reason=f"the attempt raised: "
                                                    f"{str(exc.cause or exc).splitlines()[0]}")
        except exceptions.RayError as exc:  # worker or node died, out of memory, ...
            if isinstance(exc, exceptions.NodeDiedError | exceptions.LocalRayletDiedError) and \
                    self._owns and not self.address:  # a private Ray's one node: restart it
                self._node_alive = False  # before the next lease puts an attempt on it
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Finished(*key, lost=True, reason=f"{type(exc).__name__}: {first}")
        seconds = summary.get("seconds") if isinstance(summary, dict) else None
        return Finished(*key, lost=False,
                        seconds=float(seconds) if isinstance(seconds, int | float) else None)

    def cancel(self, trial_id: str, attempt: int) -> None:
        with self._lock:
            refs = [r for r, k in self._refs.items() if k == (trial_id, attempt)]
        for ref in refs:
            self._ray.cancel(ref, force=True)

    def running(self) -> list[Key]:
        with self._lock:
            return [*self._refs.values(), *((f.trial_id, f.attempt) for f in self._lost)]

    def close(self) -> None:
        with self._lock:
            refs = list(self._refs)
            self._refs.clear()
        for ref in refs:
            self._ray.cancel(ref, force=True)
        if self._owns:
            self._ray.shutdown()
        self._closed.set()
