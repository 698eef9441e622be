"""Child-network builders, looked up by search-space name: ``build_model(arch, spec)``."""

from __future__ import annotations

from collections.abc import Callable

from protos.types import Architecture
from worker.builders.base import ChildNet, ModelSpec
from worker.builders.drop_path import ScheduledDropPath
from worker.builders.macro import build_macro
from worker.builders.nasnet import build_cell_net
from worker.builders.nb201 import build_nb201

Builder = Callable[[Architecture, ModelSpec], ChildNet]

BUILDERS: dict[str, Builder] = {
    "nb201": build_nb201,
    "nasnet": build_cell_net,
    "enas-micro": build_cell_net,
    "macro": build_macro,
}
SPACE_NAMES = tuple(BUILDERS)


def build_model(arch: Architecture, spec: ModelSpec) -> ChildNet:
    """Build the child network of ``arch``; an unknown space raises KeyError listing BUILDERS.

    A malformed architecture raises ValueError naming the bad node.
    """
    try:
        builder = BUILDERS[arch.space]
    except KeyError:
        raise KeyError(f"no model builder for space {arch.space!r}; known: "
                       f"{', '.join(SPACE_NAMES)}") from None
    return builder(arch, spec)


__all__ = ["BUILDERS", "SPACE_NAMES", "ChildNet", "ModelSpec", "ScheduledDropPath",
           "build_model"]
