"""Benchmark text is measured or computed: the README's benchmarks block is generated from
BENCHMARKS.md (drift fails here), a section writer refreshes it, the machine line detects its
GPUs, the load line calls the machine shared only when measured so, and every verdict in a
bench script comes from a comparison."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import readme, report

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """# Benchmarks

<!-- bench:one -->
## First: a section

Intro with no verdict.

### cifar10

- ours / them: **0.86x** (target >= 2x: **NOT met**)

| target | measured | met |
|---|---|---|
| p99 <= 50 ms | 23.6 ms | met |
<!-- /bench:one -->

<!-- bench:two -->
## Second, without targets

| a | b |
|---|---|
| 1 | 2 |
<!-- /bench:two -->
"""


def test_readme_block_is_generated_from_the_current_benchmarks_md() -> None:
    # Arrange
    text = (ROOT / "README.md").read_text()
    # Act
    block = readme.block(text)
    # Assert: regenerate with `python -m bench.readme` after BENCHMARKS.md changes
    assert block is not None, "README.md has no <!-- bench:begin --> block"
    assert block == readme.render((ROOT / "BENCHMARKS.md").read_text()), \
        "README's benchmarks block drifted from BENCHMARKS.md: run python -m bench.readme"


def test_every_benchmarks_section_and_verdict_reaches_the_readme() -> None:
    # Arrange
    text = (ROOT / "BENCHMARKS.md").read_text()
    # Act
    block = readme.render(text)
    # Assert: one link per section, and every unmet verdict quoted (none hidden)
    names = re.findall(r"<!-- bench:([\w-]+) -->", text)
    assert len(re.findall(r"^- \[", block, re.M)) == len(names)
    unmet = len(re.findall(r"\*\*not met\*\*|\| not met \|", text, re.I))
    assert block.lower().count("**not met**") == unmet


def test_verdicts_are_read_from_bold_words_and_table_rows() -> None:
    # Act
    found = readme.sections(SAMPLE)
    # Assert
    assert [s.title for s in found] == ["First: a section", "Second, without targets"]
    assert found[0].verdicts == [
        (False, "cifar10: ours / them: **0.86x** (target >= 2x: **NOT met**)"),
        (True, "p99 <= 50 ms: 23.6 ms (**met**)")]
    assert found[1].verdicts == []
    block = readme.render(SAMPLE, "B.md")
    assert "1 met, 1 not met" in block and "no target judged" in block
    assert "(B.md#first-a-section)" in block and "(B.md#second-without-targets)" in block


def test_writing_a_section_refreshes_the_readme_block(tmp_path: Path) -> None:
    # Arrange
    benchmarks, readme_md = tmp_path / "B.md", tmp_path / "R.md"
    benchmarks.write_text(SAMPLE)
    readme_md.write_text(f"# Project\n\n{readme.BEGIN}\nold\n{readme.END}\n\n## After\n")
    # Act
    report.write_section("two", "## Second\n\nA claim: **met**.", benchmarks, readme=readme_md)
    # Assert
    text = readme_md.read_text()
    assert readme.block(text) == readme.render(benchmarks.read_text(), "BENCHMARKS.md")
    assert "A claim: **met**" in text and "old" not in text
    assert text.startswith("# Project\n\n") and text.endswith("\n\n## After\n")


def test_machine_names_the_gpus_it_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    # Arrange: no CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # Act / Assert
    assert report.machine().endswith(", no GPU")
    assert "GPU" not in report.machine(gpu=False)
    # Arrange: two GPUs, nvidia-smi absent, then present
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(report.shutil, "which", lambda _: None)
    assert report.machine().endswith(", 2 CUDA GPUs")

    class Done:
        stdout = "NVIDIA H100 80GB HBM3\nNVIDIA H100 80GB HBM3\n"

    monkeypatch.setattr(report.shutil, "which", lambda _: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(report.subprocess, "run", lambda *a, **k: Done())
    assert report.machine().endswith(", 2 x NVIDIA H100 80GB HBM3")


def test_the_machine_is_called_shared_only_when_measured_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange / Act / Assert
    monkeypatch.setattr(report, "others_share", lambda: 0.05)
    assert report.load_during_run() == ("other processes used 5% of its cores during the run "
                                        "(not shared)")
    monkeypatch.setattr(report, "others_share", lambda: 0.6)
    assert "60%" in report.load_during_run() and "shared with other work" in \
        report.load_during_run()
    monkeypatch.setattr(report, "others_share", lambda: None)
    assert "unknown" in report.load_during_run()


def test_others_share_is_a_share_of_the_cores() -> None:
    # Act
    share = report.others_share()
    # Assert
    assert share is None or 0.0 <= share <= 1.0


def test_readings_follow_the_measurements() -> None:
    from bench import enas, paper_scale

    # Act
    weak = enas.reading({"tau_reward": 0.2, "tau_test": 0.0, "tau_sub_alone": 0.6})
    strong = enas.reading({"tau_reward": 0.7, "tau_test": 0.5, "tau_sub_alone": 0.6})
    pushes = paper_scale.reading([
        {"layout": "S=2, K=4, m=8", "pushes": 30, "rejected_stale": 10,
         "flags": list(paper_scale.REJECT)},
        {"layout": "S=2, K=4, m=8", "pushes": 1, "rejected_stale": 0,
         "flags": list(paper_scale.REJECT)}])
    # Assert: a layout's first seed, the rule its flags name and no other
    assert "weakly" in weak and "weakly" not in strong and "at least as well" in strong
    assert "S=2, K=4, m=8 30 / 10 (75%)" in pushes and "1 / 0" not in pushes
    assert paper_scale.RULES[paper_scale.REJECT] in pushes
    assert paper_scale.RULES[paper_scale.SCALE] not in pushes


def test_the_throughput_reading_names_the_samplers_that_ran() -> None:
    import argparse

    from bench import throughput

    # Act
    both = throughput._learning(argparse.Namespace(systems=["ours", "ray-tune", "optuna"],
                                                   optuna_sampler="random"))
    tpe = throughput._learning(argparse.Namespace(systems=["ours", "ray-tune", "optuna"],
                                                  optuna_sampler="tpe"))
    # Assert
    assert both == "Ray Tune's and Optuna's random search do no learning between trials."
    assert tpe.startswith("Ray Tune's random search does no learning") and "TPE" in tpe


def test_every_verdict_in_a_bench_script_is_computed() -> None:
    # Arrange
    scripts = [p for p in (ROOT / "bench").glob("*.py") if p.name != "readme.py"]
    # Act: a 'met' / 'not met' literal outside a conditional expression is typed in
    typed = [f"{p.name}:{n}: {line.strip()}" for p in scripts
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"""['"](?:not )?met\b""", line, re.I)
             and not (" if " in line and " else " in line)]
    # Assert
    assert typed == []
    assert not any("another developer" in p.read_text() for p in scripts)
