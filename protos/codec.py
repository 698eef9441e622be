"""Conversions between the values in ``protos.types`` and the ``nas.v1`` wire messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import numpy as np
from google.protobuf.message import Message

from protos import types
from protos.errors import InvalidArgumentError
from protos.v1 import common_pb2 as pb
from protos.v1 import paramserver_pb2 as ps
from protos.v1 import worker_pb2 as wk

_STATUS_TO_PB = {
    types.TrialStatus.SUCCEEDED: pb.TRIAL_STATUS_SUCCEEDED,
    types.TrialStatus.FAILED: pb.TRIAL_STATUS_FAILED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


def node_to_proto(node: types.Node) -> pb.Node:
    """Encode a node."""
    return pb.Node(type=node.type, op=node.op, inputs=node.inputs, cell=node.cell,
                   attrs=dict(node.attrs))


def node_from_proto(msg: pb.Node) -> types.Node:
    """Decode a node; raises ValueError on a field that breaks the node's invariants."""
    return types.Node(type=msg.type, op=msg.op, inputs=tuple(msg.inputs), cell=msg.cell,
                      attrs=dict(msg.attrs))


def architecture_to_proto(arch: types.Architecture) -> pb.Architecture:
    """Encode an architecture."""
    return pb.Architecture(space=arch.space, nodes=[node_to_proto(n) for n in arch.nodes])


def architecture_from_proto(msg: pb.Architecture) -> types.Architecture:
    """Decode an architecture (structure only; the space validates its contents)."""
    return types.Architecture(space=msg.space, nodes=tuple(node_from_proto(n) for n in msg.nodes))


def space_spec_to_proto(spec: types.SearchSpaceSpec) -> pb.SearchSpaceSpec:
    """Encode a search-space spec (``None`` options become 0, the wire's 'default')."""
    return pb.SearchSpaceSpec(name=spec.name, num_blocks=spec.num_blocks or 0,
                              num_layers=spec.num_layers or 0,
                              predict_strides=spec.predict_strides)


def space_spec_from_proto(msg: pb.SearchSpaceSpec) -> types.SearchSpaceSpec:
    """Decode a search-space spec."""
    return types.SearchSpaceSpec(name=msg.name, num_blocks=msg.num_blocks or None,
                                 num_layers=msg.num_layers or None,
                                 predict_strides=msg.predict_strides)


def trial_to_proto(trial: types.Trial) -> pb.Trial:
    """Encode a trial, including the recorded actions and policy version."""
    return pb.Trial(trial_id=trial.trial_id, job_id=trial.job_id,
                    architecture=architecture_to_proto(trial.architecture),
                    actions=trial.actions, policy_version=trial.policy_version,
                    attempt=trial.attempt, arch_hash=trial.arch_hash)


def trial_from_proto(msg: pb.Trial) -> types.Trial:
    """Decode a trial."""
    return types.Trial(trial_id=msg.trial_id, job_id=msg.job_id,
                       architecture=architecture_from_proto(msg.architecture),
                       actions=tuple(msg.actions), policy_version=msg.policy_version,
                       attempt=msg.attempt, arch_hash=msg.arch_hash)


def trial_result_to_proto(result: types.TrialResult) -> pb.TrialResult:
    """Encode a trial result."""
    return pb.TrialResult(trial_id=result.trial_id, status=_STATUS_TO_PB[result.status],
                          reward=result.reward, metrics=dict(result.metrics),
                          cached=result.cached, error=result.error)


def trial_result_from_proto(msg: pb.TrialResult) -> types.TrialResult:
    """Decode a trial result; an unspecified status is a ValueError naming the field."""
    if msg.status not in _STATUS_FROM_PB:
        raise ValueError("TrialResult.status must be SUCCEEDED or FAILED")
    return types.TrialResult(trial_id=msg.trial_id, status=_STATUS_FROM_PB[msg.status],
                             reward=msg.reward, metrics=dict(msg.metrics), cached=msg.cached,
                             error=msg.error)


T = TypeVar("T", bound=Message)

_POLICY_TO_PB = {types.UpdatePolicy.ASYNC: ps.UPDATE_POLICY_ASYNC,
                 types.UpdatePolicy.SYNC: ps.UPDATE_POLICY_SYNC}
_POLICY_FROM_PB = {v: k for k, v in _POLICY_TO_PB.items()}
_RULE_TO_PB = {types.StalenessRule.SCALE: ps.STALENESS_RULE_SCALE,
               types.StalenessRule.REJECT: ps.STALENESS_RULE_REJECT}
_RULE_FROM_PB = {ps.STALENESS_RULE_UNSPECIFIED: types.StalenessRule.SCALE,
                 **{v: k for k, v in _RULE_TO_PB.items()}}


def layout_to_proto(spec: types.LayoutSpec) -> ps.Layout:
    """Encode a layout."""
    return ps.Layout(layout_id=spec.layout_id, total_size=spec.total_size,
                     num_shards=spec.num_shards, policy=_POLICY_TO_PB[spec.policy],
                     staleness=spec.staleness, sync_pushes=spec.sync_pushes,
                     learning_rate=spec.learning_rate, beta1=spec.beta1, beta2=spec.beta2,
                     eps=spec.eps, checkpoint_every=spec.checkpoint_every,
                     staleness_rule=_RULE_TO_PB[spec.staleness_rule], replicas=spec.replicas)


def layout_from_proto(msg: ps.Layout) -> types.LayoutSpec:
    """Decode a layout (an unspecified staleness rule is SCALE, replicas 0 is 1: what an older
    client meant); InvalidArgumentError names what is wrong."""
    if msg.policy not in _POLICY_FROM_PB:
        raise InvalidArgumentError("layout.policy: must be ASYNC or SYNC")
    if msg.staleness_rule not in _RULE_FROM_PB:
        raise InvalidArgumentError("layout.staleness_rule: must be SCALE or REJECT")
    try:
        return types.LayoutSpec(
            layout_id=msg.layout_id, total_size=msg.total_size, num_shards=msg.num_shards,
            policy=_POLICY_FROM_PB[msg.policy], staleness=msg.staleness,
            sync_pushes=msg.sync_pushes, learning_rate=msg.learning_rate, beta1=msg.beta1,
            beta2=msg.beta2, eps=msg.eps, checkpoint_every=msg.checkpoint_every,
            staleness_rule=_RULE_FROM_PB[msg.staleness_rule], replicas=msg.replicas or 1)
    except ValueError as exc:
        raise InvalidArgumentError(f"layout: {exc}") from None


def tensor_to_proto(start: int, values: np.ndarray) -> ps.Tensor:
    """Encode a float32 range of the flat vector (little-endian bytes)."""
    data = np.ascontiguousarray(values, dtype="<f4")
    return ps.Tensor(start=start, length=data.size, dtype="float32", data=data.tobytes())


def tensor_from_proto(msg: ps.Tensor, field: str = "tensor") -> np.ndarray:
    """Decode a float32 range (a fresh, writable array); InvalidArgumentError names the field."""
    if msg.dtype != "float32":
        raise InvalidArgumentError(f"{field}.dtype: only float32 is accepted, got {msg.dtype!r}")
    if msg.length < 0 or len(msg.data) != 4 * msg.length:
        raise InvalidArgumentError(f"{field}.data: {len(msg.data)} bytes for length "
                                   f"{msg.length} float32 values")
    return np.frombuffer(msg.data, dtype="<f4").astype(np.float32)


def resources_to_proto(res: types.Resources) -> wk.Resources:
    """Encode a resource request."""
    return wk.Resources(num_cpus=res.num_cpus, num_gpus=res.num_gpus)


def resources_from_proto(msg: wk.Resources) -> types.Resources:
    """Decode a resource request; bad values are INVALID_ARGUMENT naming the field."""
    try:
        return types.Resources(msg.num_cpus, msg.num_gpus)
    except ValueError as exc:
        raise InvalidArgumentError(f"resources.{exc}") from None


_MODEL_FIELDS = ("cells", "filters", "drop_path", "aux_head")
_RECIPE_FIELDS = ("epochs", "batch_size", "learning_rate", "weight_decay", "label_smoothing",
                  "lr_schedule", "grad_clip", "reward", "cube_reward", "seed", "aux_weight",
                  "device")


def _typed(msg_type: type[T], values: Mapping[str, object], known: tuple[str, ...],
           name: str) -> T:
    unknown, missing = sorted(set(values) - set(known)), sorted(set(known) - set(values))
    if unknown or missing:
        raise InvalidArgumentError(f"workload.{name}: unknown fields {unknown}, missing fields "
                                   f"{missing}; the wire carries exactly {', '.join(known)}")
    try:
        return msg_type(**{k: v for k, v in values.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"workload.{name}: {exc}") from None


def _fields(msg: Message, known: tuple[str, ...]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in known:
        if msg.DESCRIPTOR.fields_by_name[key].has_presence and not msg.HasField(key):
            out[key] = None  # an unset optional: e.g. no gradient clipping
        else:
            out[key] = getattr(msg, key)
    return out


def workload_to_proto(w: types.Workload) -> wk.Workload:
    """Encode a workload; a model or recipe key the wire does not know is INVALID_ARGUMENT."""
    return wk.Workload(dataset=w.dataset, data_dir=w.data_dir or "",
                       train_subset=w.train_subset or 0, val_subset=w.val_subset or 0,
                       data_seed=w.data_seed,
                       model=_typed(wk.ChildSize, w.model, _MODEL_FIELDS, "model"),
                       recipe=_typed(wk.TrainingRecipe, w.recipe, _RECIPE_FIELDS, "recipe"),
                       weights_dir=w.weights_dir)


def workload_from_proto(msg: wk.Workload) -> types.Workload:
    """Decode a workload; malformed fields are INVALID_ARGUMENT naming the field."""
    try:
        return types.Workload(dataset=msg.dataset, model=_fields(msg.model, _MODEL_FIELDS),
                              recipe=_fields(msg.recipe, _RECIPE_FIELDS),
                              weights_dir=msg.weights_dir, data_dir=msg.data_dir or None,
                              train_subset=msg.train_subset or None,
                              val_subset=msg.val_subset or None, data_seed=msg.data_seed)
    except ValueError as exc:
        raise InvalidArgumentError(f"workload.{exc}") from None
