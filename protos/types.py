"""Immutable, validated values shared by every service (mirrors of the ``nas.v1`` messages).

Algorithm code uses these; only ``protos.codec`` converts them to and from the wire messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType


def _frozen_map(values: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(sorted(values.items())))


@dataclass(frozen=True)
class Node:
    """One typed node of an architecture: an ``op`` applied to ``inputs`` (see common.proto)."""

    type: str
    op: str
    inputs: tuple[int, ...] = ()
    cell: str = ""
    attrs: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.type:
            raise ValueError("Node.type must not be empty")
        if not self.op:
            raise ValueError("Node.op must not be empty")
        object.__setattr__(self, "inputs", tuple(int(i) for i in self.inputs))
        object.__setattr__(self, "attrs", _frozen_map({k: int(v) for k, v in self.attrs.items()}))

    def __hash__(self) -> int:
        return hash((self.type, self.op, self.inputs, self.cell, tuple(self.attrs.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return (self.type, self.op, self.inputs, self.cell, dict(self.attrs)) == (
            other.type, other.op, other.inputs, other.cell, dict(other.attrs))


@dataclass(frozen=True)
class Architecture:
    """An architecture of a named search space, as its list of nodes in canonical order."""

    space: str
    nodes: tuple[Node, ...]

    def __post_init__(self) -> None:
        if not self.space:
            raise ValueError("Architecture.space must not be empty")
        object.__setattr__(self, "nodes", tuple(self.nodes))


@dataclass(frozen=True)
class SearchSpaceSpec:
    """A search space name and its size options (``None``: the space's default)."""

    name: str
    num_blocks: int | None = None
    num_layers: int | None = None
    predict_strides: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("SearchSpaceSpec.name must not be empty")
        for fname in ("num_blocks", "num_layers"):
            value = getattr(self, fname)
            if value is not None and value < 1:
                raise ValueError(f"SearchSpaceSpec.{fname} must be >= 1, got {value}")


@dataclass(frozen=True)
class Trial:
    """A child to train, with the exact action sequence (and policy version) that produced it."""

    trial_id: str
    architecture: Architecture
    actions: tuple[int, ...]
    arch_hash: str
    policy_version: int = 0
    job_id: str = ""
    attempt: int = 0

    def __post_init__(self) -> None:
        if not self.trial_id:
            raise ValueError("Trial.trial_id must not be empty")
        object.__setattr__(self, "actions", tuple(int(a) for a in self.actions))
        if any(a < 0 for a in self.actions):
            raise ValueError("Trial.actions must be non-negative choice indices")
        if self.policy_version < 0 or self.attempt < 0:
            raise ValueError("Trial.policy_version and Trial.attempt must be >= 0")


class TrialStatus(Enum):
    """How a trial ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class TrialResult:
    """The outcome of one trial. ``reward`` is the raw validation accuracy in [0, 1]."""

    trial_id: str
    status: TrialStatus
    reward: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    cached: bool = False
    error: str = ""

    def __post_init__(self) -> None:
        if not self.trial_id:
            raise ValueError("TrialResult.trial_id must not be empty")
        if not math.isfinite(self.reward):
            raise ValueError(f"TrialResult.reward must be finite, got {self.reward}")
        if self.status is TrialStatus.FAILED and not self.error:
            raise ValueError("TrialResult.error must say why a FAILED trial failed")
        object.__setattr__(self, "metrics", _frozen_map(
            {k: float(v) for k, v in self.metrics.items()}))

    def __hash__(self) -> int:
        return hash((self.trial_id, self.status, self.reward, tuple(self.metrics.items()),
                     self.cached, self.error))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrialResult):
            return NotImplemented
        return (self.trial_id, self.status, self.reward, dict(self.metrics), self.cached,
                self.error) == (other.trial_id, other.status, other.reward, dict(other.metrics),
                                other.cached, other.error)


class UpdatePolicy(Enum):
    """How a shard applies pushes."""

    ASYNC = "async"  # each push applied as it comes, by the layout's StalenessRule
    SYNC = "sync"  # `sync_pushes` pushes on the current version averaged into one update


class StalenessRule(Enum):
    """What an ASYNC shard does with a push ``s`` versions stale (computed on an older version).

    SCALE applies it with the learning rate times ``min(1, K / s)``, K the layout's replicas:
    Zhang et al. 2016 (Staleness-aware async-SGD, IJCAI) divide the rate by each gradient's
    staleness and observe that with K learners the mean staleness is about K, so normalising by
    K keeps the tuned rate for a typical push and damps only the staler ones (a slow, restarted
    or resumed replica); nothing is thrown away. REJECT refuses pushes more than ``staleness``
    (tau) versions behind; the replica re-pulls and recomputes."""

    SCALE = "scale"
    REJECT = "reject"


@dataclass(frozen=True)
class LayoutSpec:
    """A flat float32 parameter vector split over ``num_shards`` shards, and its update rule
    (Adam, with the given hyper-parameters, applied by each shard to its own range).
    ``staleness`` bounds the REJECT rule; ``replicas`` (K, the replicas pushing to it) is the
    SCALE rule's typical staleness."""

    layout_id: str
    total_size: int
    num_shards: int
    policy: UpdatePolicy = UpdatePolicy.ASYNC
    staleness: int = 4
    sync_pushes: int = 1
    learning_rate: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    checkpoint_every: int = 10
    staleness_rule: StalenessRule = StalenessRule.SCALE
    replicas: int = 1

    def __post_init__(self) -> None:
        if not self.layout_id:
            raise ValueError("layout_id must not be empty")
        if self.total_size < 1:
            raise ValueError(f"total_size must be >= 1, got {self.total_size}")
        if not 1 <= self.num_shards <= self.total_size:
            raise ValueError(f"num_shards must be in [1, total_size], got {self.num_shards}")
        if self.staleness < 0 or self.sync_pushes < 1 or self.checkpoint_every < 0:
            raise ValueError("staleness >= 0, sync_pushes >= 1 and checkpoint_every >= 0 needed")
        if not (self.learning_rate > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1
                and self.eps > 0):
            raise ValueError("Adam needs learning_rate > 0, betas in [0, 1) and eps > 0")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")

    def shard_range(self, shard: int) -> tuple[int, int]:
        """(start, length) of shard ``shard``: even ranges as ps-lite splits keys."""
        return shard_range(self.total_size, self.num_shards, shard)


def shard_range(total_size: int, num_shards: int, shard: int) -> tuple[int, int]:
    """Shard ``shard`` of ``num_shards`` owns [shard*N//S, (shard+1)*N//S)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    start = shard * total_size // num_shards
    end = (shard + 1) * total_size // num_shards
    return start, end - start


@dataclass(frozen=True)
class Resources:
    """What one child needs from the machine that trains it (fractional GPUs pack children)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
        if self.num_cpus == 0 and self.num_gpus == 0:
            raise ValueError("num_cpus: a child needs some CPU or GPU, got 0 of both")


@dataclass(frozen=True)
class Workload:
    """How the children of one job are trained: data, child size, recipe, where weights go.

    ``model`` and ``recipe`` hold the worker's ModelSpec and TrainRecipe fields.
    """

    dataset: str
    model: Mapping[str, object]
    recipe: Mapping[str, object]
    weights_dir: str
    data_dir: str | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    data_seed: int = 0

    def __post_init__(self) -> None:
        if not self.dataset:
            raise ValueError("dataset: must not be empty")
        object.__setattr__(self, "model", _frozen_map(self.model))
        object.__setattr__(self, "recipe", _frozen_map(self.recipe))
        for name in ("train_subset", "val_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1 or unset, got {value}")

    def __hash__(self) -> int:
        return hash((self.dataset, tuple(self.model.items()), tuple(self.recipe.items()),
                     self.weights_dir, self.data_dir, self.train_subset, self.val_subset,
                     self.data_seed))
