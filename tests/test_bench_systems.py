"""The seed-systems benchmark stays runnable: every system searches for real at tiny sizes and
its row and the PNAS-vs-REINFORCE tables come out with sane numbers (the published numbers
come from the full run, not from here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import systems

SEEDS, BUDGET, COMPARE, CHILDREN = 2, 12, 20, 2


def _row(out: str, name: str) -> list[str]:
    lines = [line for line in out.splitlines() if line.startswith(f"| {name} |")]
    assert len(lines) == 1, f"one row for {name!r}, got {lines}"
    return [c.strip() for c in lines[0].strip("|").split("|")]


def _number(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return float(m.group(1))


def test_every_system_runs_and_reports_sane_numbers(nb201_csv: Path,
                                                    fashion_mnist_installed: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Act
    code = systems.main(["--quick", "--no-write", "--seeds", str(SEEDS), "--budget",
                         str(BUDGET), "--compare-budget", str(COMPARE), "--children",
                         str(CHILDREN), "--lm-steps", "8", "--nb201-csv", str(nb201_csv),
                         "--fashion-dir", str(fashion_mnist_installed)])
    # Assert
    out = capsys.readouterr().out
    assert code == 0
    assert "## The seed systems: a small real run each" in out
    assert "Command: `python -m bench.systems --quick --seeds 2" in out
    # the machine's load is measured (at the start and over the run), never typed in
    assert "cores busy when it started" in out and "of its cores during the run" in out
    assert "cores (" in out and "another developer" not in out
    for system in systems.SYSTEMS:
        _, space, _, budget, best, to_best, wall, cpu_h = _row(out, system.name)
        reward = _number(best, r"^([0-9.]+);")
        assert 0.0 <= reward <= 1.0
        assert 1 <= float(to_best) <= int(budget)
        assert 0.0 < float(wall) < 600.0 and float(cpu_h) > 0.0
        if space == "nb201":
            assert int(budget) == BUDGET
            test = _number(best, r"NB201 test ([0-9.]+)%")
            assert 70.0 < test < 95.0  # NB201 CIFAR-10's best cell tests at 94.37%
            assert 0.7 < reward < 0.92  # 12-epoch validation accuracy of a sampled cell
        else:
            assert int(budget) == CHILDREN
        if space == "enas-micro":
            assert _number(best, r"val accuracy ([0-9.]+)%") == pytest.approx(100 * reward,
                                                                              abs=0.01)
        if space in ("rnn-cell", "enas-rnn"):
            ppl = _number(best, r"val perplexity ([0-9.]+)")
            assert 1.0 < ppl < 70.0  # tinyshakespeare has 65 characters
            assert reward == pytest.approx(min(1.0, 80 / ppl**2), rel=0.01)
    compared = list(systems.COMPARED)
    assert "### PNAS vs REINFORCE on NB201 CIFAR-10" in out
    for target in ("top 1% (157 cells)", "top 0.1% (16 cells)"):
        cells = _row(out, target)
        assert 0.8 < float(cells[1].rstrip("%")) / 100 < 0.92
        for cell in cells[2:]:
            m = re.fullmatch(r"mean ([0-9.]+), median ([0-9.]+) \((\d)/2 seeds\)", cell)
            assert m or cell == f"not reached in {COMPARE} (0/2 seeds)", cell
            if m:
                assert 1 <= float(m.group(1)) <= COMPARE and 1 <= int(m.group(3)) <= 2
    for seed in range(SEEDS):
        cells = _row(out, str(seed))
        assert 0.7 < float(cells[1].rstrip("%")) / 100 < 0.92
        # the target is the lower of the two bests: both methods reached it in budget
        assert all(1 <= int(c) <= COMPARE for c in cells[2:2 + len(compared)])
    assert all(c.endswith("(2/2 seeds)") for c in _row(out, "all")[2:])


@pytest.mark.usefixtures("one_thread")
def test_a_shorter_run_is_the_prefix_of_the_longer_one(nb201_csv: Path) -> None:
    # Arrange: the NB201 rows read their budget's prefix of the comparison's longer runs
    settings = {"space": "nb201", "evaluator": "nb201", "nb201_csv": str(nb201_csv),
                "strategy": "reinforce", "seed": 3}
    shared = systems.Bench(systems.Options(nb201_csv=str(nb201_csv)))
    long = shared.search(budget=30, **settings)
    # Act
    cut = shared.search(budget=10, **settings)
    fresh = systems.Bench(systems.Options(nb201_csv=str(nb201_csv))).search(budget=10,
                                                                            **settings)
    # Assert
    assert long.outcome.trainings == 30 and cut.outcome.trainings == 10
    assert [h.arch for h in cut.outcome.history] == [h.arch for h in fresh.outcome.history]
    assert cut.best is not None and fresh.best is not None
    assert (cut.best.reward, cut.to_best) == (fresh.best.reward, fresh.to_best)
    assert 0.0 < cut.wall <= long.wall


@pytest.mark.usefixtures("one_thread")
def test_the_registry_takes_a_new_system_as_one_entry(nb201_csv: Path) -> None:
    # Arrange: what an ENAS row would add
    entry = systems.nb201_system("ENAS controller", strategy="reinforce", controller="enas")
    bench = systems.Bench(systems.Options(seeds=1, budget=8, nb201_csv=str(nb201_csv)))
    # Act
    row = entry.row(bench)
    # Assert
    assert row.system == "ENAS controller" and len(row.runs) == 1
    assert row.runs[0].outcome.trainings == 8 and 0.7 < row.reward < 0.92
    assert entry.searches(bench.opts) == 1
