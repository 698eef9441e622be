"""The trial board's indexes: a fair queue by group, and a heap of attempt deadlines.

Both keep the board's per-call cost independent of how many trials it has ever seen: a pick costs
O(groups with queued trials), a deadline O(log live entries).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """One FIFO queue per group, and how many items of each group are running.

    ``pop`` takes the head of the group with the fewest running items (ties: the head queued
    first), so one group's many items do not starve another's; with a single group it is a
    plain FIFO. Items are compared by identity.
    """

    def __init__(self) -> None:
        self._queues: dict[str, deque[tuple[int, T]]] = {}  # never holds an empty deque
        self._running: dict[str, int] = {}  # never holds a zero
        self._order = itertools.count()
        self._queued = 0
        self._running_total = 0

    def __len__(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        """Items started and not yet stopped, over every group."""
        return self._running_total

    def push(self, group: str, item: T) -> None:
        """Queue ``item`` at the back of ``group``'s queue."""
        self._queues.setdefault(group, deque()).append((next(self._order), item))
        self._queued += 1

    def pop(self) -> tuple[str, T]:
        """The next item by fairness, and its group (IndexError when empty)."""
        if not self._queues:
            raise IndexError("pop from an empty FairQueue")
        group = min(self._queues,
                    key=lambda g: (self._running.get(g, 0), self._queues[g][0][0]))
        queue = self._queues[group]
        _, item = queue.popleft()
        if not queue:
            del self._queues[group]
        self._queued -= 1
        return group, item

    def remove(self, group: str, item: T) -> bool:
        """Take ``item`` out of ``group``'s queue wherever it is (O(that queue)); whether it
        was there."""
        queue = self._queues.get(group)
        if queue is None:
            return False
        for index, (_, queued) in enumerate(queue):
            if queued is item:
                del queue[index]
                if not queue:
                    del self._queues[group]
                self._queued -= 1
                return True
        return False

    def discard(self, unwanted: Callable[[T], bool]) -> int:
        """Take every ``unwanted`` item out of the queues in one pass (O(items queued)); how
        many were taken."""
        taken = 0
        for group in list(self._queues):
            kept = deque(entry for entry in self._queues[group] if not unwanted(entry[1]))
            taken += len(self._queues[group]) - len(kept)
            if kept:
                self._queues[group] = kept
            else:
                del self._queues[group]
        self._queued -= taken
        return taken

    def clear(self) -> None:
        """Drop every queued item (running counts stay)."""
        self._queues.clear()
        self._queued = 0

    def started(self, group: str) -> None:
        """One more item of ``group`` runs."""
        self._running[group] = self._running.get(group, 0) + 1
        self._running_total += 1

    def stopped(self, group: str) -> None:
        """One item of ``group`` stopped running."""
        left = self._running[group] - 1
        if left:
            self._running[group] = left
        else:
            del self._running[group]
        self._running_total -= 1


class DeadlineHeap(Generic[T]):
    """Keys by deadline, invalidated lazily: the owner decides, when a key comes due or the
    heap is compacted, whether its entry still counts."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties: first pushed first; keys are never compared

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, key: T) -> None:
        """Come due at ``deadline``."""
        heapq.heappush(self._heap, (deadline, next(self._order), key))

    def due(self, now: float) -> list[T]:
        """Pop the keys whose deadline is at or before ``now``, earliest first."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def compact(self, valid: Callable[[T], bool]) -> None:
        """Drop every entry whose key is no longer ``valid`` (O(entries))."""
        self._heap = [entry for entry in self._heap if valid(entry[2])]
        heapq.heapify(self._heap)
