"""What a job is built from: the evaluator and strategy a config names, and how its best
children are written as bundles.

The controller knows the parts that are controller code only (``controller.factory``); the
composition root (``nas.wiring``) adds those that run another service's code: children trained
by the worker's trainer, ENAS's supernet, bundles of trained children. Whatever runs a job (the
search service's ``JobRunner``, ``nas search``) is handed a ``Parts``, so the controller never
imports the worker or the parameter server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.config import ConfigError, SearchConfig
from controller.evaluators.base import Evaluator
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy

EvaluatorFactory = Callable[[SearchConfig], Evaluator]
StrategyFactory = Callable[[SearchSpace, SearchConfig], Strategy]
# (the run's document: history and evaluator description; its config; its space; out; top k)
BundleWriter = Callable[[dict[str, Any], SearchConfig, SearchSpace, Path, int], list[Path]]


@dataclass(frozen=True)
class Parts:
    """The factories a job's evaluator and strategy come from, by the names a config uses."""

    evaluators: Mapping[str, EvaluatorFactory]
    strategies: Mapping[str, StrategyFactory]
    bundles: BundleWriter | None = field(default=None)

    def evaluator(self, cfg: SearchConfig) -> Evaluator:
        """The evaluator ``cfg`` names; ConfigError when this process was not given it."""
        return _pick(self.evaluators, "evaluator", cfg.evaluator)(cfg)

    def strategy(self, space: SearchSpace, cfg: SearchConfig) -> Strategy:
        """The strategy ``cfg`` names, over ``space``."""
        return _pick(self.strategies, "strategy", cfg.strategy)(space, cfg)

    def write_bundles(self, doc: dict[str, Any], cfg: SearchConfig, space: SearchSpace,
                      out: Path, top: int) -> list[Path]:
        """The ``top`` trained children of a run as bundles under ``out``."""
        if self.bundles is None:
            raise ConfigError("export: this process was started without the worker's model "
                              "code, so it cannot write bundles (run it through `nas`)")
        return self.bundles(doc, cfg, space, out, top)

    def extended(self, evaluators: Mapping[str, EvaluatorFactory] | None = None,
                 strategies: Mapping[str, StrategyFactory] | None = None,
                 bundles: BundleWriter | None = None) -> Parts:
        """These parts with more factories (a name given again replaces the old one)."""
        return Parts({**self.evaluators, **(evaluators or {})},
                     {**self.strategies, **(strategies or {})},
                     bundles if bundles is not None else self.bundles)


def _pick(factories: Mapping[str, Any], setting: str, name: str) -> Any:
    try:
        return factories[name]
    except KeyError:
        raise ConfigError(f"{setting}: {name!r} is not available in this process (it has "
                          f"{', '.join(sorted(factories))}); run the job through the `nas` "
                          f"command or its search service") from None
