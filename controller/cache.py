"""The evaluation cache: results by canonical architecture hash + evaluator (dataset and recipe).

An architecture whose canonical hash is already here costs no training: its stored result is used
and the hit is counted.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CachedEvaluation:
    """A stored result: the reward, metrics, and the architecture that was actually trained."""

    reward: float
    arch: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    artifacts: Mapping[str, str] = field(default_factory=dict)


class EvaluationCache(ABC):
    """Contract: ``put`` keeps the first value stored under a key (later puts are ignored and
    return False); ``get`` returns that value or None. Values are immutable."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0

    @abstractmethod
    def _get(self, key: str) -> CachedEvaluation | None: ...

    @abstractmethod
    def put(self, key: str, value: CachedEvaluation) -> bool:
        """Store ``value`` unless the key is present; True if stored."""

    def begin(self, key: str) -> bool:
        """Whether the caller should evaluate ``key`` now: False while another caller
        evaluates it (``wait`` for that result instead). The base cache does not track
        evaluations in flight."""
        return True

    def end(self, key: str) -> None:  # noqa: B027 (nothing to release when nothing is tracked)
        """The evaluation ``begin`` allowed is over (its result, if any, was ``put``)."""

    def wait(self, key: str) -> CachedEvaluation | None:
        """The result of the evaluation of ``key`` in flight elsewhere, once it ends (None if
        it stored nothing: the caller may ``begin`` it itself)."""
        return self._get(key)

    def get(self, key: str) -> CachedEvaluation | None:
        """Look a key up, counting the hit or miss."""
        value = self._get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value


class InMemoryCache(EvaluationCache):
    """A per-process cache, shared by the threads of a process (every job of a search
    service): an architecture one job is training is not trained again by another at the same
    time; the second waits and gets the first's result as a cache hit.

    With ``lookup`` (a durable cache elsewhere, e.g. the job store's, which records every
    training as it is journalled) a miss here is looked up there, and this process keeps only
    the ``capacity`` most recently used results: memory stays bounded however many children a
    long-lived service trains, and a restarted service needs no warm-up."""

    def __init__(self, lookup: Callable[[str], CachedEvaluation | None] | None = None,
                 capacity: int = 4096) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity: must be >= 1, got {capacity}")
        self._lookup = lookup
        self._capacity = capacity
        self._data: OrderedDict[str, CachedEvaluation] = OrderedDict()
        self._in_flight: set[str] = set()
        self._changed = threading.Condition()

    def _get(self, key: str) -> CachedEvaluation | None:
        with self._changed:
            value = self._data.get(key)
            if value is not None and self._lookup is not None:
                self._data.move_to_end(key)
        if value is None and self._lookup is not None:
            value = self._lookup(key)
            if value is not None:
                self._keep(key, value)
        return value

    def _keep(self, key: str, value: CachedEvaluation) -> bool:
        with self._changed:
            if key in self._data:
                return False
            self._data[key] = value
            if self._lookup is not None and len(self._data) > self._capacity:
                self._data.popitem(last=False)  # still found through the lookup
            return True

    def put(self, key: str, value: CachedEvaluation) -> bool:
        return self._keep(key, value)

    def begin(self, key: str) -> bool:
        with self._changed:
            if key in self._in_flight:
                return False
            self._in_flight.add(key)
            return True

    def end(self, key: str) -> None:
        with self._changed:
            self._in_flight.discard(key)
            self._changed.notify_all()

    def wait(self, key: str) -> CachedEvaluation | None:
        with self._changed:
            self._changed.wait_for(lambda: key not in self._in_flight)
        return self._get(key)

    def __len__(self) -> int:
        return len(self._data)
