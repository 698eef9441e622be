"""The benchmark stays runnable: a tiny real run through every method (numbers go to
BENCHMARKS.md from the full run, not from here)."""

from __future__ import annotations

from pathlib import Path

from bench import nb201
from bench.report import write_section


def test_nb201_benchmark_runs_every_method(tmp_path: Path, nb201_csv: Path,
                                           capsys: object) -> None:
    # Act
    code = nb201.main(["--seeds", "2", "--budgets", "10,20", "--workers", "1", "--no-write",
                       "--nb201-csv", str(nb201_csv), "--plot-dir", str(tmp_path)])
    # Assert
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert code == 0
    for method in nb201.METHODS:
        assert f"| {method} |" in out
    assert "Target ours >= REA at every budget" in out
    assert (tmp_path / "nb201-cifar10.png").stat().st_size > 1000


def test_sections_are_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "B.md"
    write_section("a", "first", path)
    write_section("b", "other", path)
    write_section("a", "second", path)
    text = path.read_text()
    assert "second" in text and "first" not in text and "other" in text
    assert text.index("second") < text.index("other")
