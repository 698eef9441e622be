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
                       "--stack-seeds", "1",
                       "--nb201-csv", str(nb201_csv), "--plot-dir", str(tmp_path)])
    # Assert
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert code == 0
    for method in nb201.METHODS:  # gp: 10 seeds by default, here the 2 there are
        assert f"| {method} | 2 |" in out
    assert "Target ours >= evolution (REA) at every budget" in out
    assert "Target ours >= tpe (Optuna TPE) at every budget" in out
    assert "spent the whole budget (trainings == 20) in 2 of 2 runs" in out
    assert "A 200-training run of `nas search --space nb201`" in out
    # ours through 4 shard processes and 4 replicas, beside the same m=8 in one process
    assert f"| {nb201.STACK} |" in out and f"| {nb201.IN_PROCESS_M8} |" in out
    assert (tmp_path / "nb201-cifar10.png").stat().st_size > 1000


def test_sections_are_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "B.md"
    write_section("a", "first", path)
    write_section("b", "other", path)
    write_section("a", "second", path)
    text = path.read_text()
    assert "second" in text and "first" not in text and "other" in text
    assert text.index("second") < text.index("other")


def test_baseline_resnet_is_matched_in_parameters() -> None:
    from bench.fashion import SmallResNet, matched_resnet, params

    target = params(SmallResNet(1, 10, 10))
    assert params(matched_resnet(target, 1, 10)) == target
    near = matched_resnet(target + 500, 1, 10)
    assert abs(params(near) - target - 500) < 0.2 * target


def test_fashion_benchmark_runs(fashion_mnist_installed: Path, capsys: object) -> None:
    from bench import fashion

    code = fashion.main(["--budget", "2", "--search-subset", "1000", "--final-epochs", "1",
                         "--final-subset", "1000", "--no-write"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert code == 0
    assert "| searched cell |" in out and "| hand-designed ResNet |" in out
