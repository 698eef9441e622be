"""One shard of a layout: its range of the flat vector, Adam state, version and push rules.

Pure logic (no network): the servicer decodes requests and calls :class:`ShardState`. Adam is
elementwise, so each shard applying :class:`paramserver.adam.Adam` (numpy, torch's algorithm)
to its own range gives what one Adam on the whole vector gives.

An async push computed on version ``b`` while the shard is at ``v`` is ``s = v - b`` stale. The
layout's :class:`StalenessRule` decides what happens to it: SCALE applies it with the learning
rate times ``min(1, K / s)`` (K: the layout's replicas), REJECT refuses it when ``s`` exceeds
the layout's ``staleness`` (tau). A push from the future (``b > v``, the shard restored an older
checkpoint) is refused under both.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from paramserver import snapshot
from paramserver.adam import Adam
from protos.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from protos.types import LayoutSpec, StalenessRule, UpdatePolicy


@dataclass(frozen=True)
class PushResult:
    """What a push did: the version after it, whether it applied an update, whether it was a
    duplicate, (accepted async pushes) how many versions behind its base was, and the factor
    its learning rate was scaled by (below 1: a push staler than K under the SCALE rule)."""

    version: int
    applied: bool
    duplicate: bool
    staleness: int | None = None
    lr_scale: float = 1.0


@dataclass(frozen=True)
class ShardStats:
    """A consistent view of a shard's counters."""

    version: int
    pushes: int
    rejected_stale: int
    duplicates: int


def lr_scale(layout: LayoutSpec, staleness: int) -> float:
    """The factor of the learning rate of an async push ``staleness`` versions behind: under
    SCALE ``min(1, K / staleness)`` (K: ``layout.replicas``), else 1.

    Zhang et al. 2016 (Staleness-aware async-SGD, IJCAI) divide the learning rate by each
    gradient's staleness and observe that with K learners the mean staleness is about K.
    Normalising by K keeps the job's tuned rate for a typical push of a K-replica layout and
    damps only the pushes staler than that (a slow, restarted or resumed replica); nothing is
    thrown away."""
    if layout.staleness_rule is not StalenessRule.SCALE or staleness <= layout.replicas:
        return 1.0
    return layout.replicas / staleness


class ShardState:
    """The state of shard ``shard`` of ``layout``; every public method is thread-safe."""

    def __init__(self, layout: LayoutSpec, shard: int, initial: np.ndarray) -> None:
        self.layout = layout
        self.shard = shard
        self.start, self.length = layout.shard_range(shard)
        values = np.asarray(initial)
        if values.ndim != 1 or values.size != self.length:
            raise InvalidArgumentError(f"initial.length: shard {shard} of {layout.layout_id!r} "
                                       f"holds {self.length} values, got {values.size}")
        if not np.all(np.isfinite(values)):
            raise InvalidArgumentError("initial.data: non-finite values")
        self._param = np.array(values, dtype=np.float32)
        self._adam = Adam(self.length, layout.learning_rate, layout.beta1, layout.beta2,
                          layout.eps)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self.version = 0
        self.pushes = 0
        self.rejected_stale = 0
        self.duplicates = 0
        self._last_seq: dict[str, int] = {}
        self._pending_sum = np.zeros(self.length, dtype=np.float64)
        self._pending_count = 0

    def pull(self, start: int, length: int) -> tuple[int, np.ndarray]:
        """(version, a copy of values[start:start+length]); ``length`` 0 reads the whole range
        (``start`` is then ignored). A range outside the shard: InvalidArgumentError."""
        if length < 0:
            raise InvalidArgumentError(f"length: must be >= 0, got {length}")
        if length == 0:
            start, length = self.start, self.length
        end = self.start + self.length
        if not (self.start <= start and start + length <= end):
            raise InvalidArgumentError(f"start: range [{start}, {start + length}) is outside "
                                       f"this shard's range [{self.start}, {end})")
        with self._lock:
            offset = start - self.start
            return self.version, self._param[offset:offset + length].copy()

    def wait_for_version(self, min_version: int, timeout: float) -> bool:
        """Block until the version is >= ``min_version`` (True) or ``timeout`` seconds pass
        (False). UnavailableError when the shard is closed while waiting."""
        with self._changed:
            self._changed.wait_for(lambda: self.version >= min_version or self._closed,
                                   timeout=max(timeout, 0.0))
            if self.version < min_version and self._closed:
                raise UnavailableError("the parameter server is shutting down")
            return self.version >= min_version

    def close(self) -> None:
        """Wake every waiter (shutdown); the state stays readable."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def set_layout(self, layout: LayoutSpec) -> None:
        """Apply pushes by ``layout``'s rule from now on (same vector, same ranges)."""
        if layout.shard_range(self.shard) != (self.start, self.length):
            raise InvalidArgumentError("layout: a new layout must keep the shard's range")
        with self._lock:
            self.layout = layout

    def stats(self) -> ShardStats:
        """The version and counters, read together."""
        with self._lock:
            return ShardStats(self.version, self.pushes, self.rejected_stale, self.duplicates)

    def push(self, replica_id: str, seq: int, base_version: int, start: int,
             gradient: np.ndarray) -> PushResult:
        """Apply (or, for SYNC, accumulate) a gradient of exactly this shard's range computed at
        ``base_version``. Idempotent by ``(replica_id, seq)``: a seq not above the replica's
        highest accepted one is a duplicate and changes nothing. Bad gradient:
        InvalidArgumentError naming the field; from the future, or too stale for the REJECT
        rule or SYNC: FailedPreconditionError (re-pull and recompute)."""
        grad = self._check_gradient(start, gradient)
        with self._changed:
            if seq <= self._last_seq.get(replica_id, seq - 1):
                self.duplicates += 1
                return PushResult(self.version, applied=False, duplicate=True)
            self._check_base(base_version)
            self._last_seq[replica_id] = seq
            self.pushes += 1
            if self.layout.policy is UpdatePolicy.ASYNC:
                staleness = self.version - base_version
                scale = lr_scale(self.layout, staleness)
                self._apply(grad.astype(np.float32), self.layout.learning_rate * scale)
                return PushResult(self.version, applied=True, duplicate=False,
                                  staleness=staleness, lr_scale=scale)
            self._pending_sum += grad
            self._pending_count += 1
            if self._pending_count < self.layout.sync_pushes:
                return PushResult(self.version, applied=False, duplicate=False)
            mean = (self._pending_sum / self._pending_count).astype(np.float32)
            self._pending_sum[:] = 0.0
            self._pending_count = 0
            self._apply(mean, self.layout.learning_rate)
            return PushResult(self.version, applied=True, duplicate=False)

    def _check_gradient(self, start: int, gradient: np.ndarray) -> np.ndarray:
        if start != self.start:
            raise InvalidArgumentError(f"gradient.start: must be this shard's start "
                                       f"{self.start}, got {start}")
        grad = np.asarray(gradient, dtype=np.float64)
        if grad.ndim != 1 or grad.size != self.length:
            raise InvalidArgumentError(f"gradient.length: must be this shard's length "
                                       f"{self.length}, got {grad.size}")
        if not np.all(np.isfinite(grad)):
            raise InvalidArgumentError("gradient.data: non-finite values")
        return grad

    def _check_base(self, base_version: int) -> None:
        # Called with the lock held; counts and raises a rejected push.
        version, tau = self.version, self.layout.staleness
        if base_version > version:
            message = (f"base_version {base_version} is ahead of version {version} (the shard "
                       "was restored from an older checkpoint); re-pull")
        elif self.layout.policy is UpdatePolicy.SYNC and base_version != version:
            message = (f"stale push: base_version {base_version} is not the current version "
                       f"{version} (sync); re-pull")
        elif version - base_version > tau and self.layout.staleness_rule is StalenessRule.REJECT:
            message = (f"stale push: base_version {base_version} is {version - base_version} "
                       f"versions behind version {version} (staleness bound {tau}); re-pull")
        else:
            return
        self.rejected_stale += 1
        raise FailedPreconditionError(message)

    def _apply(self, grad: np.ndarray, lr: float) -> None:
        self._adam.step(self._param, grad, lr)
        self.version += 1
        self._changed.notify_all()

    def to_bytes(self) -> bytes:
        """The whole state (layout, values, Adam moments, version, counters, de-duplication
        table, pending sync sum) as bytes that :meth:`from_bytes` restores exactly."""
        with self._lock:
            return snapshot.encode(snapshot.ShardSnapshot(
                layout=self.layout, shard=self.shard,
                params=self._param.copy(), adam=self._adam.state(),
                version=self.version, counters=(self.pushes, self.rejected_stale,
                                                self.duplicates),
                last_seq=dict(self._last_seq), pending_sum=self._pending_sum.copy(),
                pending_count=self._pending_count))

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardState:
        """Rebuild a shard saved by :meth:`to_bytes`; ValueError on a malformed blob."""
        snap = snapshot.decode(data)
        state = cls(snap.layout, snap.shard, snap.params)
        state.version = snap.version
        state.pushes, state.rejected_stale, state.duplicates = snap.counters
        state._last_seq = dict(snap.last_seq)
        state._pending_sum = snap.pending_sum.astype(np.float64)
        state._pending_count = snap.pending_count
        if snap.adam is not None:
            state._adam.load(*snap.adam)
        return state
