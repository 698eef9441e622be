"""``nas watch JOB``: a job's progress, live, until it ends; and ``nas export JOB --to DIR``, the
bundles of a job's best architectures downloaded from the service."""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from controller.config import ConfigError
from controller.service.connect import client_from_args
from protos.v1 import search_pb2 as sp

EXIT_CODES: dict[int, int] = {sp.JOB_STATE_SUCCEEDED: 0, sp.JOB_STATE_FAILED: 1,
                              sp.JOB_STATE_CANCELLED: 1}
REDRAW_S = 0.1  # a terminal is redrawn at most this often (and at the end)


def add_parser(sub: Any, endpoint: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``watch`` (``endpoint`` adds the shared --endpoint option)."""
    p = sub.add_parser(
        "watch", help="follow a job live until it ends",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show a job's progress as it happens: trainings spent of the budget,\n"
        "trials running, the best reward and architecture, the last trials and the\n"
        "policy's entropy. On a terminal the table is redrawn in place; otherwise one\n"
        "line is printed per event. Returns when the job ends.\n\n"
        "exit status:\n"
        "  0  the job SUCCEEDED\n"
        "  1  the job FAILED or was CANCELLED, or the service stayed unreachable\n"
        "  2  bad input (e.g. an unknown job)")
    p.add_argument("job_id")
    p.add_argument("--reconnect-seconds", type=float, default=60.0,
                   help="when the stream breaks (the service restarting), keep reconnecting "
                        "for this long before giving up (60)")
    p.add_argument("--last", type=int, default=5, help="how many recent trials to show (5)")
    endpoint(p)
    p.set_defaults(func=watch)


class Board:
    """What ``nas watch`` shows, updated event by event."""

    def __init__(self, job: sp.Job, last: int) -> None:
        self.job_id, self.budget = job.job_id, job.spec.budget
        self.state, self.reason = "PENDING", ""
        self.trainings = 0
        self.running: set[str] = set()
        self.best: sp.SearchEvent.NewBest | None = None
        self.entropy: float | None = None
        self.last: deque[sp.TrialRecord] = deque(maxlen=max(last, 0))
        self.final: int | None = None  # the job's final JobState, once seen

    def update(self, event: sp.SearchEvent) -> None:
        """Fold one event in."""
        kind = event.WhichOneof("kind")
        if kind == "trial_started":
            self.running.add(event.trial_started.trial_id)
        elif kind == "trial_finished":
            trial = event.trial_finished.trial
            self.running.discard(trial.trial_id)
            self.trainings += trial.status in ("succeeded", "failed") and not trial.cached
            self.last.append(trial)
        elif kind == "new_best":
            self.best = event.new_best
        elif kind == "policy":
            self.entropy = event.policy.entropy
        elif kind == "snapshot":  # the job's older events were compacted: where it stood
            job = event.snapshot.job
            self.state = sp.JobState.Name(job.state).removeprefix("JOB_STATE_")
            self.trainings = job.trainings
            if job.best_trial_id:
                self.best = sp.SearchEvent.NewBest(trial_id=job.best_trial_id,
                                                   reward=job.best_reward, arch=job.best_arch)
        elif kind == "state":
            self.state = sp.JobState.Name(event.state.state).removeprefix("JOB_STATE_")
            self.reason = event.state.reason
            if event.state.state in EXIT_CODES:
                self.final = event.state.state

    def lines(self) -> list[str]:
        """The table."""
        entropy = "-" if self.entropy is None else f"{self.entropy:.3f}"
        best = (f"{self.best.reward:.4f}  {self.best.arch}" if self.best is not None else "-")
        out = [f"{self.job_id}  {self.state}  trainings {self.trainings}/{self.budget}  "
               f"running {len(self.running)}  policy entropy {entropy}",
               f"  best {best}"]
        out += [f"  {t.trial_id:>12s} {t.status:9s} {t.reward:.4f}"
                f"{' cached' if t.cached else ''}  {t.arch}" for t in self.last]
        if self.reason:
            out.append(f"  {self.reason}")
        return out


def event_line(event: sp.SearchEvent) -> str:
    """One line for an event (output that is not a terminal)."""
    kind = event.WhichOneof("kind")
    if kind == "trial_started":
        e = event.trial_started
        body = f"started   {e.trial_id}  {e.arch}"
    elif kind == "trial_finished":
        t = event.trial_finished.trial
        body = (f"finished  {t.trial_id}  {t.status} {t.reward:.4f}"
                f"{' cached' if t.cached else ''}  {t.arch}{'  ' + t.error if t.error else ''}")
    elif kind == "new_best":
        body = f"new best  {event.new_best.trial_id}  {event.new_best.reward:.4f}  " \
               f"{event.new_best.arch}"
    elif kind == "policy":
        p = event.policy
        body = (f"policy    update {p.updates}  mean reward {p.mean_reward:.4f}  baseline "
                f"{p.baseline:.4f}  entropy {p.entropy:.4f}")
    elif kind == "snapshot":
        job = event.snapshot.job
        body = (f"earlier   {event.seq} events compacted: trainings {job.trainings}, cache "
                f"hits {job.cache_hits}, best {job.best_reward:.4f}  {job.best_arch}")
    else:
        state = sp.JobState.Name(event.state.state).removeprefix("JOB_STATE_")
        body = f"state     {state}{'  ' + event.state.reason if event.state.reason else ''}"
    return f"{event.seq:6d} {body}"


class Screen:
    """Redraws the board in place on a terminal (ANSI: cursor up, clear line)."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.drawn, self.at = out, 0, 0.0

    def draw(self, board: Board, force: bool = False) -> None:
        if not force and time.monotonic() - self.at < REDRAW_S:
            return
        lines = board.lines()
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines)
                       + "\x1b[J")
        self.out.flush()
        self.drawn, self.at = len(lines), time.monotonic()


def watch(args: argparse.Namespace) -> int:
    """``nas watch JOB``: exit 0 if the job SUCCEEDED, 1 if it FAILED or was CANCELLED."""
    if args.reconnect_seconds < 0:
        raise ConfigError(f"reconnect-seconds: must be >= 0, got {args.reconnect_seconds}")
    out: TextIO = sys.stdout
    with client_from_args(args) as client:
        board = Board(client.get(args.job_id), args.last)
        screen = Screen(out) if out.isatty() else None
        for event in client.watch(args.job_id, reconnect_for=args.reconnect_seconds):
            board.update(event)
            if screen is not None:
                screen.draw(board, force=board.final is not None)
            else:
                print(event_line(event), flush=True)
        final = board.final if board.final is not None else client.get(args.job_id).state
    if screen is None:
        print("\n".join(board.lines()))
    return EXIT_CODES.get(final, 1)


def export_job(args: argparse.Namespace) -> int:
    """``nas export JOB --to DIR``: the service builds the bundles; they are extracted here."""
    if args.to is None:
        raise ConfigError(f"to: `nas export {args.run}` names no run directory, so it is taken "
                          f"as a job id; pass --to DIR for its bundles")
    with client_from_args(args) as client:
        bundles = client.export(str(args.run), Path(args.to), args.top)
    for path in bundles:
        files = ", ".join(sorted(p.name for p in path.iterdir()))
        print(f"wrote {path}: {files}")
    return 0
