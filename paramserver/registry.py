"""The layouts one shard server holds, with their checkpoints: the servicer's domain layer."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import numpy as np

from paramserver.checkpoint import CheckpointStore
from paramserver.metrics import ShardMetrics
from paramserver.shard import PushResult, ShardState
from protos.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from protos.types import LayoutSpec

log = logging.getLogger(__name__)


def _same_vector(old: LayoutSpec, new: LayoutSpec) -> bool:
    """Whether two layouts differ at most in their staleness rule, bound and replicas."""
    return replace(old, staleness_rule=new.staleness_rule, staleness=new.staleness,
                   replicas=new.replicas) == new


class ShardRegistry:
    """Shard ``shard`` of ``num_shards`` for every registered layout. Restores each layout's
    checkpoint for this shard from ``store`` on construction, and checkpoints a layout every
    ``layout.checkpoint_every`` applied updates (0: only in :meth:`checkpoint_all`).

    Those checkpoints (and a new layout's first) never fail the call that made them: the update
    is applied either way. A save that fails (the store is down, e.g. Redis restarting) is
    logged and tried again after each later update of the layout until one succeeds."""

    def __init__(self, shard: int, num_shards: int, store: CheckpointStore,
                 metrics: ShardMetrics | None = None) -> None:
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
        self.shard, self.num_shards = shard, num_shards
        self.metrics = metrics or ShardMetrics(shard)
        self._store = store
        self._lock = threading.Lock()
        self._states: dict[str, ShardState] = {}
        self._checkpoint_locks: dict[str, threading.Lock] = {}
        self._due: set[str] = set()  # layouts whose last checkpoint failed
        for layout_id, blob in store.load_all(shard, num_shards).items():
            try:
                state = ShardState.from_bytes(blob)
            except ValueError as exc:  # keep serving the other layouts
                log.error("skipping unreadable checkpoint of layout %r: %s", layout_id, exc)
                continue
            self._add(state)
            log.info("restored layout %r at version %d", layout_id, state.version)

    def _add(self, state: ShardState) -> None:
        self._states[state.layout.layout_id] = state
        self._checkpoint_locks[state.layout.layout_id] = threading.Lock()
        self.metrics.version.set(state.version)

    def register(self, layout: LayoutSpec, shard: int, start: int,
                 initial: np.ndarray) -> tuple[int, bool]:
        """Register ``layout`` with this shard's initial values -> (version, created).
        Idempotent for an identical layout (``initial`` is then ignored); the same id with a
        different layout: FailedPreconditionError; wrong shard or sizes: InvalidArgumentError."""
        if shard != self.shard:
            raise InvalidArgumentError(f"shard: this server is shard {self.shard}, got {shard}")
        if layout.num_shards != self.num_shards:
            raise InvalidArgumentError(f"layout.num_shards: this server is one of "
                                       f"{self.num_shards} shards, got {layout.num_shards}")
        with self._lock:
            existing = self._states.get(layout.layout_id)
            if existing is not None:
                if existing.layout != layout and _same_vector(existing.layout, layout):
                    # only how pushes are applied changed (a resumed job with another
                    # staleness rule or replica count, or a checkpoint from before the rule):
                    # the values and Adam's state stand, the new rule applies from now on
                    existing.set_layout(layout)
                elif existing.layout != layout:
                    raise FailedPreconditionError(
                        f"layout {layout.layout_id!r} is registered with different settings: "
                        f"{existing.layout} (use a new layout_id)")
                return existing.version, False
            expected_start, _ = layout.shard_range(shard)
            if start != expected_start:
                raise InvalidArgumentError(f"initial.start: shard {shard} starts at "
                                           f"{expected_start}, got {start}")
            state = ShardState(layout, shard, initial)
            self._add(state)
        self._checkpoint_or_retry_later(layout.layout_id)
        return 0, True

    def get(self, layout_id: str) -> ShardState:
        """The shard state of a registered layout; NotFoundError otherwise."""
        with self._lock:
            state = self._states.get(layout_id)
        if state is None:
            raise NotFoundError(f"layout {layout_id!r} is not registered on shard {self.shard}")
        return state

    def push(self, layout_id: str, replica_id: str, seq: int, base_version: int, start: int,
             gradient: np.ndarray) -> PushResult:
        """Push to a layout (see :meth:`ShardState.push`), counting it and checkpointing when
        the layout's checkpoint interval is reached."""
        state = self.get(layout_id)
        result = state.push(replica_id, seq, base_version, start, gradient)
        self.metrics.record_push(result)
        every = state.layout.checkpoint_every
        with self._lock:
            due = layout_id in self._due
        if result.applied and (due or (every and result.version % every == 0)):
            self._checkpoint_or_retry_later(layout_id)
        return result

    def _checkpoint_or_retry_later(self, layout_id: str) -> None:
        """Checkpoint now; if the store fails, log it and leave the layout due."""
        try:
            self.checkpoint(layout_id)
        except Exception as exc:  # the update stands; an RPC error would make it look lost
            with self._lock:
                self._due.add(layout_id)
            log.warning("checkpoint of layout %r failed, retried after its next update: %s",
                        layout_id, exc)
            return
        with self._lock:
            self._due.discard(layout_id)

    def checkpoint(self, layout_id: str) -> None:
        """Save one layout's state now. Saves of one layout are serialized, snapshot and write
        together, so an older snapshot is never written over a newer one."""
        state = self.get(layout_id)
        with self._checkpoint_locks[layout_id]:
            self._store.save(layout_id, self.shard, self.num_shards, state.to_bytes())
        self.metrics.checkpoints.inc()

    def checkpoint_all(self) -> None:
        """Save every layout (shutdown)."""
        with self._lock:
            layout_ids = list(self._states)
        for layout_id in layout_ids:
            self.checkpoint(layout_id)

    def close(self) -> None:
        """Wake every pull waiting for a version (shutdown)."""
        with self._lock:
            states = list(self._states.values())
        for state in states:
            state.close()
