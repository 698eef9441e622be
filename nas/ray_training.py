"""Children trained by Ray tasks that report to this controller over gRPC.

Part of the composition root: it wires the controller's trial board and ``TrialReport`` service
to the worker package's Ray scheduler and worker service, all in this process (the Ray tasks run
in Ray's worker processes). On a cluster the same worker service runs as ``nas serve worker``.
The search service's cluster (``nas.cluster``) owns one pool for all its jobs.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from controller.config import ConfigError
from controller.early_stopping import EarlyStopper
from controller.settings import DEFAULT_GPU_SHARE  # GPUs per child when Ray has GPUs
from controller.trials.board import TrialBoard
from controller.trials.evaluator import DispatchEvaluator
from controller.trials.servicer import serve_trial_reports
from nas.local_training import TrainEvaluator
from protos.cluster_auth import ClusterAuth
from protos.types import Resources, Workload
from worker.metrics import WorkerCollector
from worker.scheduler import InfeasibleResources, RayScheduler
from worker.service import WorkerService


def workload_of(local: TrainEvaluator) -> Workload:
    """What a worker needs to train the children ``local`` would train."""
    s, recipe = local.splits, local.recipe
    model = {k: v for k, v in vars(local.spec).items() if k not in ("in_channels", "num_classes")}
    return Workload(dataset=s.name, model=model, recipe=dict(vars(recipe)),
                    weights_dir=str(local.weights_dir.resolve()), data_dir=local.data_dir,
                    train_subset=local.train_subset, val_subset=local.val_subset,
                    data_seed=local.data_seed)


class RayWorkerPool:
    """The trial board, its ``TrialReport`` server, Ray and one worker service: the workers
    every job of a process shares. ``dispatcher(local)`` gives a job its evaluator; trials of
    all jobs queue on the one board (``group``: the job's tenant, for fair leasing). A private
    local Ray whose node dies is restarted (``ray_restarts`` times at most) and its trials
    retried; a Ray lost for good fails every job's trials, and the jobs, with the reason."""

    def __init__(self, workers: int, ray_address: str | None = None,
                 cpus_per_child: float = 1.0, gpus_per_child: float | None = None,
                 max_attempts: int = 3, heartbeat_seconds: float = 5.0,
                 heartbeat_timeout: float = 60.0, stopper: EarlyStopper | None = None,
                 report_host: str = "127.0.0.1", report_port: int = 0,
                 registry: CollectorRegistry | None = None,
                 auth: ClusterAuth | None = None, ray_restarts: int = 3) -> None:
        self.board = TrialBoard(max_attempts=max_attempts, heartbeat_seconds=heartbeat_seconds,
                                heartbeat_timeout=heartbeat_timeout, stopper=stopper)
        self.server = serve_trial_reports(self.board, report_host, report_port,
                                          registry=registry, auth=auth)
        self.scheduler: RayScheduler | None = None
        self.service: WorkerService | None = None
        try:
            if ray_address:
                self.scheduler = RayScheduler(address=ray_address)
            else:
                self.scheduler = RayScheduler(
                    num_cpus=math.ceil(workers * cpus_per_child),
                    num_gpus=None if gpus_per_child is None
                    else math.ceil(workers * gpus_per_child), max_restarts=ray_restarts)
            gpus = gpus_per_child
            if gpus is None:
                gpus = DEFAULT_GPU_SHARE if self.scheduler.capacity(Resources(0.0, 1.0)) else 0.0
            self.resources = Resources(cpus_per_child, gpus)
            try:
                self.scheduler.check_feasible(self.resources)
            except InfeasibleResources as exc:
                raise ConfigError(str(exc)) from None
            self.service = WorkerService(self.scheduler, self.server.address,
                                         max_slots=workers, auth=auth,
                                         on_unavailable=self._lost).start()
            if registry is not None:  # nas_worker_*: busy slots (GPUs: worker.exporter)
                registry.register(WorkerCollector(self.service))
        except BaseException:
            self.close()
            raise

    def _lost(self, reason: str) -> None:
        """Ray is lost for good (not restartable, or restarted too often): every job's trials
        fail with the reason, and the jobs with them."""
        self.board.close(f"the workers' Ray is lost: {reason}", broken=True)

    @property
    def report_address(self) -> str:
        """Where workers report (``nas serve worker --controller`` takes it)."""
        return str(self.server.address)

    def dispatcher(self, local: TrainEvaluator, group: str = "") -> DispatchEvaluator:
        """The evaluator of a job whose children ``local`` describes (``group``: its tenant)."""
        return DispatchEvaluator(self.board, workload_of(local), self.resources, local, group)

    def forget_job(self, job_id: str) -> int:
        """Drop what the board holds of an ended job's trials (``TrialBoard.forget_job``);
        how many trials."""
        return self.board.forget_job(job_id)

    def summary(self) -> dict[str, object]:
        """For result.json: how trials went through the workers."""
        c = self.board.counters
        return {"report_address": self.report_address, "trials_leased": c.leased,
                "succeeded": c.succeeded, "failed": c.failed, "retried_lost": c.retried_lost,
                "retried_timeout": c.retried_timeout, "duplicate_reports": c.duplicates,
                "stopped_early": c.stopped_early,
                "resources": {"num_cpus": self.resources.num_cpus,
                              "num_gpus": self.resources.num_gpus}}

    def close(self) -> None:
        """Stop the workers, Ray and the report server (queued trials end as lost)."""
        self.board.close()
        if self.service is not None:
            self.service.stop()
        if self.scheduler is not None:
            self.scheduler.close()
        self.server.stop()
