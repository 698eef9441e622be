"""The search-space contract: an architecture is a fixed sequence of categorical decisions."""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from protos.types import Architecture, SearchSpaceSpec


class InvalidArchitecture(ValueError):
    """An architecture or action sequence that does not belong to the space (names the field)."""


@dataclass(frozen=True)
class Decision:
    """One categorical decision of a space.

    ``kind`` groups decisions that share a vocabulary (and, in a policy, an embedding and an output
    head): e.g. "op", "input", "combine". Decisions of kind "skip" are the Zoph & Le anchor-point
    sigmoids: ``skip = (i, j)`` asks whether layer ``j`` feeds layer ``i``. ``sets_anchor = i``
    marks the decision whose controller state is layer ``i``'s anchor.
    """

    name: str
    kind: str
    choices: tuple[str, ...]
    skip: tuple[int, int] | None = None
    sets_anchor: int = -1

    def __post_init__(self) -> None:
        if len(self.choices) < 1:
            raise ValueError(f"decision {self.name} has no choices")
        if self.skip is not None and len(self.choices) != 2:
            raise ValueError(f"skip decision {self.name} must be binary")

    @property
    def num_choices(self) -> int:
        """How many values this decision can take."""
        return len(self.choices)


class SearchSpace(ABC):
    """A search space: decode/encode between action sequences and architectures.

    Contract: ``decisions`` is the same for every architecture of the space; ``decode`` accepts
    exactly the sequences with ``0 <= a_t < decisions[t].num_choices``; ``encode(decode(a)) == a``;
    ``canonical_hash`` is equal for architectures that compute the same function.
    """

    name: str

    @property
    @abstractmethod
    def decisions(self) -> tuple[Decision, ...]:
        """The ordered decisions that define an architecture."""

    @property
    @abstractmethod
    def spec(self) -> SearchSpaceSpec:
        """The spec this space was built from (name and size options)."""

    @abstractmethod
    def decode(self, actions: Sequence[int]) -> Architecture:
        """Build the architecture that an action sequence describes."""

    @abstractmethod
    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The action sequence of an architecture; raises InvalidArchitecture if it is not ours."""

    @abstractmethod
    def canonical_form(self, arch: Architecture) -> str:
        """A string equal for architectures that compute the same function."""

    @abstractmethod
    def to_string(self, arch: Architecture) -> str:
        """The human-readable string form of an architecture."""

    @abstractmethod
    def from_string(self, text: str) -> Architecture:
        """Parse ``to_string``'s form; raises InvalidArchitecture with the reason."""

    def check_actions(self, actions: Sequence[int]) -> tuple[int, ...]:
        """Validate an action sequence against ``decisions``; return it as a tuple."""
        decisions = self.decisions
        if len(actions) != len(decisions):
            raise InvalidArchitecture(
                f"actions: {self.name} needs {len(decisions)} decisions, got {len(actions)}")
        for t, (a, d) in enumerate(zip(actions, decisions, strict=True)):
            if not 0 <= int(a) < d.num_choices:
                raise InvalidArchitecture(
                    f"actions[{t}] ({d.name}): {a} is not in [0, {d.num_choices})")
        return tuple(int(a) for a in actions)

    def validate(self, arch: Architecture) -> None:
        """Raise InvalidArchitecture unless ``arch`` is a well-formed member of this space."""
        if arch.space != self.name:
            raise InvalidArchitecture(f"space: expected {self.name!r}, got {arch.space!r}")
        actions = self.encode(arch)
        if self.decode(actions) != arch:
            raise InvalidArchitecture(f"nodes: not in the canonical layout of {self.name}")

    def sample_random(self, rng: random.Random) -> Architecture:
        """A uniformly random architecture (each decision uniform)."""
        return self.decode([rng.randrange(d.num_choices) for d in self.decisions])

    def canonical_hash(self, arch: Architecture) -> str:
        """A stable hex digest of the space, its options and ``canonical_form``."""
        spec = self.spec
        key = (f"{spec.name}|{spec.num_blocks}|{spec.num_layers}|{spec.predict_strides}|"
               f"{self.canonical_form(arch)}")
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    @property
    def size(self) -> int:
        """The number of distinct action sequences."""
        total = 1
        for d in self.decisions:
            total *= d.num_choices
        return total
