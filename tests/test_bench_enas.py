"""The ENAS benchmark stays runnable: its quick mode runs every part for real (the numbers in
BENCHMARKS.md come from the full run, not from here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import enas


def test_enas_benchmark_quick_mode_reports_cost_and_ranking(
        fashion_mnist_installed: Path, nb201_csv: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))
    # Act
    code = enas.main(["--quick", "--seeds", "1", "--cells", "8", "--standalone", "3",
                      "--spaces", "enas-micro", "--no-write"])
    # Assert: the space's row with a cost and both children's accuracies, and the tau table
    # (macro's ENAS search runs in tests/test_enas.py)
    out = capsys.readouterr().out
    assert code == 0
    for space in ("enas-micro",):
        row = next(line for line in out.splitlines() if line.startswith(f"| {space} | 0 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3].endswith("threads)") and float(cells[3].split()[0]) > 0
        for pair in cells[5:7]:
            val, test = (float(v) for v in pair.split(" / "))
            assert 0 < val <= 1 and 0 < test <= 1
    taus = [float(line.rsplit("|", 2)[1]) for line in out.splitlines()
            if line.startswith("| supernet score") or line.startswith("| stand-alone")]
    assert len(taus) == 5 and all(-1 <= t <= 1 for t in taus)
