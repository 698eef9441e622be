"""The evaluation cache: results by canonical architecture hash + evaluator (dataset and recipe).

An architecture whose canonical hash is already here costs no training: its stored result is used
and the hit is counted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
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

    def get(self, key: str) -> CachedEvaluation | None:
        """Look a key up, counting the hit or miss."""
        value = self._get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value


class InMemoryCache(EvaluationCache):
    """A per-process cache (the default for ``nas search``)."""

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, CachedEvaluation] = {}

    def _get(self, key: str) -> CachedEvaluation | None:
        return self._data.get(key)

    def put(self, key: str, value: CachedEvaluation) -> bool:
        if key in self._data:
            return False
        self._data[key] = value
        return True

    def __len__(self) -> int:
        return len(self._data)
