"""``--workers N``: children trained by Ray tasks that report to this controller over gRPC.

Part of the composition root: it wires the controller's trial board and ``TrialReport`` service
to the worker package's Ray scheduler and worker service, all in this process (the Ray tasks run
in Ray's worker processes). On a cluster the same worker service runs as ``nas serve worker``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from controller.config import ConfigError, SearchConfig
from controller.early_stopping import create_stopper
from controller.local_training import TrainEvaluator
from controller.trials.board import TrialBoard
from controller.trials.evaluator import DispatchEvaluator
from controller.trials.servicer import TrialMetrics, serve_trial_reports
from protos.types import Resources, Workload
from worker.scheduler import InfeasibleResources, RayScheduler
from worker.service import WorkerService

# Children packed per GPU by default: 8. The one measurement so far (issue 5, an H200, a
# NASNet-search child): 8 packed processes 6,819 images/s > 4 packed 6,126 > 1 child 2,429.
# bench/gpu_children.py re-measures it on the GPU at hand.
DEFAULT_GPU_SHARE = 0.125


def workload_of(local: TrainEvaluator) -> Workload:
    """What a worker needs to train the children ``local`` would train."""
    s, recipe = local.splits, local.recipe
    model = {k: v for k, v in vars(local.spec).items() if k not in ("in_channels", "num_classes")}
    return Workload(dataset=s.name, model=model, recipe=dict(vars(recipe)),
                    weights_dir=str(local.weights_dir.resolve()), data_dir=local.data_dir,
                    train_subset=local.train_subset, val_subset=local.val_subset,
                    data_seed=local.data_seed)


@dataclass
class RayWorkers:
    """The running parts; ``evaluator`` is what the search uses."""

    evaluator: DispatchEvaluator
    board: TrialBoard
    scheduler: RayScheduler
    report_address: str
    metrics_url: str | None = None

    def summary(self) -> dict[str, object]:
        """For result.json: how trials went through the workers."""
        c = self.board.counters
        return {"report_address": self.report_address, "trials_leased": c.leased,
                "succeeded": c.succeeded, "failed": c.failed, "retried_lost": c.retried_lost,
                "retried_timeout": c.retried_timeout, "duplicate_reports": c.duplicates,
                "stopped_early": c.stopped_early,
                "resources": {"num_cpus": self.evaluator.resources.num_cpus,
                              "num_gpus": self.evaluator.resources.num_gpus}}


@contextmanager
def ray_workers(cfg: SearchConfig, local: TrainEvaluator,
                metrics_port: int | None = None) -> Iterator[RayWorkers]:
    """Start the trial service, Ray (``cfg.ray_address`` or local with ``cfg.workers`` children's
    CPUs) and a worker service; stop them all on exit. An impossible resource request is a
    ConfigError before anything is trained."""
    stopper = create_stopper(cfg.early_stopping, cfg.epochs, cfg.grace_epochs, cfg.asha_eta,
                             cfg.median_min_trials)
    board = TrialBoard(max_attempts=cfg.max_attempts, heartbeat_seconds=cfg.heartbeat_seconds,
                       heartbeat_timeout=cfg.heartbeat_timeout, stopper=stopper)
    server = serve_trial_reports(board)
    scheduler: RayScheduler | None = None
    service: WorkerService | None = None
    http: WSGIServer | None = None
    try:
        if cfg.ray_address:
            scheduler = RayScheduler(address=cfg.ray_address)
        else:
            scheduler = RayScheduler(num_cpus=math.ceil(cfg.workers * cfg.cpus_per_child),
                                     num_gpus=None if cfg.gpus_per_child is None
                                     else math.ceil(cfg.workers * cfg.gpus_per_child))
        gpus = cfg.gpus_per_child
        if gpus is None:
            gpus = DEFAULT_GPU_SHARE if scheduler.capacity(Resources(0.0, 1.0)) else 0.0
        resources = Resources(cfg.cpus_per_child, gpus)
        try:
            scheduler.check_feasible(resources)
        except InfeasibleResources as exc:
            raise ConfigError(str(exc)) from None
        service = WorkerService(scheduler, server.address, max_slots=cfg.workers).start()
        evaluator = DispatchEvaluator(board, workload_of(local), resources, local)
        running = RayWorkers(evaluator, board, scheduler, server.address)
        if metrics_port is not None:
            registry = CollectorRegistry()
            registry.register(TrialMetrics(board))
            http, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
            running.metrics_url = f"http://127.0.0.1:{http.server_port}/metrics"
        yield running
    finally:
        board.close()
        if service is not None:
            service.stop()
        if scheduler is not None:
            scheduler.close()
        server.stop()
        if http is not None:
            http.shutdown()
            http.server_close()
