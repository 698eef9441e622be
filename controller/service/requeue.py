"""A resumed job's first work: the trials a service that died had handed out and not finished,
trained again (each once, under a new trial id that names the one it re-queues) before its
strategy proposes anything new."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

from controller.budget import BudgetLedger
from controller.cache import EvaluationCache
from controller.evaluators.base import Evaluator
from controller.objectives import RewardShaper
from controller.search import run_trial
from controller.service.recorder import JobRecorder
from controller.spaces.base import SearchSpace
from protos.types import Trial


def train_again(lost: dict[str, str], tag: str, space: SearchSpace, evaluator: Evaluator,
                cache: EvaluationCache, failure_reward: float, recorder: JobRecorder,
                ledger: BudgetLedger, shaper: RewardShaper | None, parallel: int) -> None:
    """Train the ``lost`` trials (old trial id -> architecture) again, up to ``parallel`` at
    once (the job's children in flight: a restarted service's free workers take them all, not
    one after another); each claims its training from ``ledger`` and is recorded once, and
    none starts once a claim was refused (the budget is spent, or the job was cancelled). The
    first error (an evaluator that cannot run) is raised once they have all stopped."""
    if not lost:
        return
    refused = threading.Event()

    def again(n: int, old: str, arch: str) -> None:
        if refused.is_set():
            return
        architecture = space.from_string(arch)
        trial = Trial(f"{tag}-q{n + 1}", architecture, (), space.canonical_hash(architecture),
                      job_id=recorder.job_id)
        done = run_trial(trial, space, evaluator, cache, failure_reward, ledger.claim,
                         ledger.refund, functools.partial(recorder.started, requeues=old),
                         shaper)
        if done is None:
            refused.set()
        else:
            recorder.finished(done[0])

    with ThreadPoolExecutor(max(1, min(parallel, len(lost))),
                            thread_name_prefix=f"{tag}-requeue") as pool:
        runs = [pool.submit(again, n, old, arch) for n, (old, arch) in enumerate(lost.items())]
    for run in runs:
        run.result()
