"""NAS-Bench-201 as an evaluator: table lookups instead of training.

reward = the dataset's 12-epoch validation accuracy; reported = its 200-epoch test accuracy.
"""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from controller.evaluators.base import Evaluation, Evaluator, EvaluatorError
from controller.spaces.nb201 import NB201Space
from protos.types import Architecture


@dataclass(frozen=True)
class NB201Columns:
    """The table columns used for one dataset."""

    reward: str
    test: str


DATASETS: dict[str, NB201Columns] = {
    "cifar10": NB201Columns("cifar10_valid_x_valid_12ep", "cifar10_test_200ep"),
    "cifar100": NB201Columns("cifar100_x_valid_12ep", "cifar100_test_200ep"),
    "imagenet16": NB201Columns("in16_x_valid_12ep", "in16_test_200ep"),
}
DATA_HINT = ("pass --nb201-csv PATH or set NAS_NB201_CSV (the table ships in "
             "../shared/data/nb201/nb201_merged.csv beside this project)")


def default_csv() -> Path:
    """NAS_NB201_CSV, else NAS_DATA_DIR/nb201/..., else ../shared/data beside the project."""
    if os.environ.get("NAS_NB201_CSV"):
        return Path(os.environ["NAS_NB201_CSV"])
    if os.environ.get("NAS_DATA_DIR"):
        return Path(os.environ["NAS_DATA_DIR"]) / "nb201" / "nb201_merged.csv"
    root = Path(__file__).resolve().parents[2]
    return root.parent / "shared" / "data" / "nb201" / "nb201_merged.csv"


def load_table(path: Path, dataset: str) -> dict[str, tuple[float, float]]:
    """arch_str -> (reward, test accuracy), both in [0, 1]; EvaluatorError names what is wrong."""
    if dataset not in DATASETS:
        raise EvaluatorError(f"dataset: {dataset!r} is not one of {', '.join(DATASETS)}")
    cols = DATASETS[dataset]
    if not path.is_file():
        raise EvaluatorError(f"NB201 table not found at {path}: {DATA_HINT}")
    table: dict[str, tuple[float, float]] = {}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"arch_str", cols.reward, cols.test} - set(reader.fieldnames or ())
            if missing:
                raise EvaluatorError(f"{path}: not an NB201 table, missing column(s) "
                                     f"{', '.join(sorted(missing))}")
            for line, row in enumerate(reader, start=2):
                values = []
                for col in (cols.reward, cols.test):
                    try:
                        value = float(row[col])
                    except (TypeError, ValueError):
                        raise EvaluatorError(f"{path}:{line}: column {col} is not a number: "
                                             f"{row[col]!r}") from None
                    if not (math.isfinite(value) and 0 <= value <= 100):
                        raise EvaluatorError(f"{path}:{line}: column {col} must be an accuracy "
                                             f"in [0, 100], got {value}")
                    values.append(value / 100.0)
                table[row["arch_str"]] = (values[0], values[1])
    except UnicodeDecodeError as exc:
        raise EvaluatorError(f"{path}: not a text CSV file ({exc.reason})") from None
    except csv.Error as exc:
        raise EvaluatorError(f"{path}: malformed CSV ({exc})") from None
    if not table:
        raise EvaluatorError(f"{path}: the table has no rows")
    return table


class NB201Evaluator(Evaluator):
    """Looks rewards up in the NAS-Bench-201 table for one dataset."""

    name = "nb201"

    def __init__(self, dataset: str = "cifar10", csv_path: Path | str | None = None,
                 table: dict[str, tuple[float, float]] | None = None,
                 simulate_seconds: float = 0.0) -> None:
        self.dataset = dataset
        self.simulate_seconds = simulate_seconds
        self.path = Path(csv_path) if csv_path is not None else default_csv()
        self.table = table if table is not None else load_table(self.path, dataset)
        self.space = NB201Space()

    @property
    def cache_key(self) -> str:
        return f"nb201:{self.dataset}:valid12"

    def _row(self, arch: Architecture) -> tuple[float, float]:
        key = self.space.to_string(arch)
        try:
            return self.table[key]
        except KeyError:
            raise EvaluatorError(f"{self.path}: no row for {key}; the table is incomplete") \
                from None

    def evaluate(self, arch: Architecture) -> Evaluation:
        if self.simulate_seconds > 0:  # stand in for a child's training time
            time.sleep(self.simulate_seconds)
        return Evaluation(reward=self._row(arch)[0])

    def test_accuracy(self, arch: Architecture) -> float | None:
        return self._row(arch)[1]
