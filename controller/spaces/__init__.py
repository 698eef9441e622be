"""Search spaces, looked up by name in a registry."""

from __future__ import annotations

from collections.abc import Callable

from controller.spaces.base import Decision, InvalidArchitecture, SearchSpace
from controller.spaces.cell import CellSpace, enas_micro, nasnet
from controller.spaces.macro import MacroSpace
from controller.spaces.nb201 import NB201Space
from controller.spaces.rnn import ENASRNNSpace, RNNTreeSpace
from protos.types import SearchSpaceSpec

_REGISTRY: dict[str, Callable[[SearchSpaceSpec], SearchSpace]] = {
    "nb201": lambda spec: NB201Space(),
    "nasnet": lambda spec: nasnet(spec.num_blocks or 5),
    "enas-micro": lambda spec: enas_micro(spec.num_blocks or 5),
    "macro": lambda spec: MacroSpace(spec.num_layers or 6, spec.predict_strides),
    "rnn-cell": lambda spec: RNNTreeSpace(),
    "enas-rnn": lambda spec: ENASRNNSpace(spec.num_blocks or 8),
}
SPACE_NAMES = tuple(_REGISTRY)


def create_space(spec: SearchSpaceSpec | str) -> SearchSpace:
    """Build the space a spec names; an unknown name raises KeyError listing the known ones."""
    if isinstance(spec, str):
        spec = SearchSpaceSpec(name=spec)
    try:
        factory = _REGISTRY[spec.name]
    except KeyError:
        raise KeyError(f"unknown search space {spec.name!r}; known: {', '.join(SPACE_NAMES)}")\
            from None
    return factory(spec)


__all__ = ["SPACE_NAMES", "CellSpace", "Decision", "InvalidArchitecture", "MacroSpace",
           "NB201Space", "SearchSpace", "create_space"]
