"""SearchSpec messages to and from the settings of a SearchConfig, validated once.

The mapping is the ``wire`` column of ``controller.settings.SETTINGS``: each setting with a
wire path is one field of the spec. A bad spec becomes INVALID_ARGUMENT naming the field as the
wire spells it (``spec.controller.learning_rate``), never a config name the client has not seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from controller.config import ConfigError, SearchConfig, build_config
from controller.service.objectives_spec import (
    check_objectives,
    objectives_settings,
    objectives_to_proto,
)
from controller.settings import WIRE_GROUPS, WIRE_SETTINGS, Setting
from protos.errors import InvalidArgumentError
from protos.v1 import search_pb2 as sp

# config field -> where the spec carries it
WIRE_NAMES = {s.name: f"spec.{s.wire}" for s in WIRE_SETTINGS}
# SearchSpec fields that are no setting -> why (every other field is exactly one setting)
NOT_SETTINGS = {
    "name": "free text for people",
    "evaluation.recipe.device": "an older client's spec.execution.device",
    "evaluation.recipe.grad_clip": "the recipe of a search's children clips no gradients",
    "evaluation.recipe.lr_schedule": "not settable per job",
    "evaluation.recipe.aux_weight": "not settable per job",
    "evaluation.recipe.seed": "not settable per job (the recipe seed is spec.seed)",
}
_UNSETTABLE = ("lr_schedule", "aux_weight", "seed")  # recipe fields a job must leave at 0 / ""
# settings that are lists of messages on the wire -> (messages to settings, settings to messages)
STRUCTURED: dict[str, tuple[Callable[[Any], Any], Callable[[Any], list[Any]]]] = {
    "objectives": (objectives_settings, objectives_to_proto)}


def _locate(msg: Message, path: str) -> tuple[Message, str]:
    """The message holding the field at ``path`` and the field's name."""
    *parents, leaf = path.split(".")
    for part in parents:
        msg = getattr(msg, part)
    return msg, leaf


def _group(path: str) -> str | None:
    return next((g for g in WIRE_GROUPS if path.startswith(g + ".")), None)


# each WIRE_GROUPS message -> the settings it carries
GROUP_MEMBERS = {g: tuple(s.name for s in WIRE_SETTINGS if _group(str(s.wire)) == g)
                  for g in WIRE_GROUPS}


def _read(spec: sp.SearchSpec, setting: Setting) -> Any:
    """The value ``spec`` gives ``setting``; None where it leaves the setting unset."""
    wire = str(setting.wire)
    msg, leaf = _locate(spec, wire)
    value = getattr(msg, leaf)
    if setting.name in STRUCTURED:
        return STRUCTURED[setting.name][0](value) or None
    group = _group(wire)
    if group is not None:  # a set group carries every member, zeros included
        holder, name = _locate(spec, group)
        if not holder.HasField(name):
            return None
        return setting.default if value == "" else value
    if msg.DESCRIPTOR.fields_by_name[leaf].has_presence:
        return value if msg.HasField(leaf) else None
    return value if value or setting.wire_zero else None


def _recipe_extras(spec: sp.SearchSpec, settings: dict[str, Any]) -> None:
    """The recipe's fields that are no setting: its device (an older client's), the rest
    refused."""
    if not spec.evaluation.HasField("recipe"):
        return
    r, device = spec.evaluation.recipe, spec.execution.device
    if r.device and device and r.device != device:
        raise InvalidArgumentError(f"spec.evaluation.recipe.device: {r.device!r} differs "
                                   f"from spec.execution.device {device!r}; "
                                   f"set spec.execution.device only")
    if r.device and "device" not in settings:
        settings["device"] = r.device
    for name in _UNSETTABLE:
        if getattr(r, name):
            raise InvalidArgumentError(f"spec.evaluation.recipe.{name}: not settable per "
                                       f"job (the recipe seed is spec.seed)")


def spec_settings(spec: sp.SearchSpec) -> dict[str, Any]:
    """The config settings a spec sets (defaults left out), without validating them."""
    settings = {s.name: value for s in WIRE_SETTINGS if (value := _read(spec, s)) is not None}
    _recipe_extras(spec, settings)
    return settings


def spec_to_config(spec: sp.SearchSpec) -> SearchConfig:
    """Validate a spec into the config its job runs with."""
    for setting in WIRE_SETTINGS:  # the service's own bounds: a job makes threads of these
        if setting.wire_max is not None:
            msg, leaf = _locate(spec, str(setting.wire))
            if getattr(msg, leaf) > setting.wire_max:
                raise InvalidArgumentError(f"spec.{setting.wire}: at most {setting.wire_max}, "
                                           f"got {getattr(msg, leaf)}")
    check_objectives(spec.objectives)
    try:
        return build_config(spec_settings(spec))
    except ConfigError as exc:
        field, _, rest = str(exc).partition(":")
        raise InvalidArgumentError(f"{WIRE_NAMES.get(field, field)}:{rest}") from None


def spec_from_settings(settings: dict[str, Any]) -> sp.SearchSpec:
    """The spec a stored job was submitted with (the inverse of ``spec_settings``): every
    message on the way to a setting is set, a ``WIRE_GROUPS`` message only with its settings."""
    spec = sp.SearchSpec()
    for setting in WIRE_SETTINGS:
        wire = str(setting.wire)
        msg, leaf = _locate(spec, wire)
        group = _group(wire)
        if msg is not spec and (group is None
                                or any(m in settings for m in GROUP_MEMBERS[group])):
            msg.SetInParent()
        if setting.name not in settings:
            continue
        if setting.name in STRUCTURED:
            getattr(msg, leaf).extend(STRUCTURED[setting.name][1](settings[setting.name]))
        else:
            setattr(msg, leaf, settings[setting.name])
    return spec
