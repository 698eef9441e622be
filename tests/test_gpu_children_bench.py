"""The GPU-children benchmark stays runnable without CUDA: its CPU smoke run measures the
single-child and two-process rows and marks the CUDA-only rows skipped (numbers for
BENCHMARKS.md come from the full run on a GPU, not from here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_children


def test_cpu_smoke_run_measures_the_cpu_rows_and_skips_the_cuda_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange
    out_json = tmp_path / "gpu-children.json"
    # Act
    code = gpu_children.main(["--device", "cpu", "--smoke", "--no-write", "--json",
                              str(out_json)])
    # Assert
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out_json.read_text())
    rows = {row["config"]: row for row in report["rows"]}
    for measured in ("eager fp32 (naive)", "2 processes, eager"):
        assert rows[measured]["status"] == "ok"
        assert rows[measured]["images_per_s"] > 0
        assert rows[measured]["mfu"] > 0 and rows[measured]["children_per_hour"] > 0
        assert f"| {measured} | fp32 |" in out
    assert rows["eager fp32 (naive)"]["x_naive"] == 1.0
    assert rows["2 processes, eager"]["children"] == 2
    skipped = [row for row in report["rows"] if row["status"] == "skipped"]
    assert {row["config"] for row in skipped} == {
        "eager bf16 + channels_last", "CUDA graph", "2 processes, CUDA graph",
        "2 streams in 1 process, CUDA graph"}
    assert all(row["note"] == "skipped: no CUDA" for row in skipped)
    assert report["winner"] in ("eager fp32 (naive)", "2 processes, eager")
    assert sum(row["winner"] for row in report["rows"]) == 1 and "**winner**" in out
    assert report["model"]["flops_per_train_image"] == 6 * report["model"][
        "forward_macs_per_image"]
    assert "Target (issue 5)" in out and "BENCHMARKS.md not written" in out


def test_full_size_child_is_the_nasnet_search_size() -> None:
    # Act
    model = gpu_children.build_child(gpu_children.NASNET_A, cells=2, filters=32)
    # Assert: about a million parameters, as a NASNet-search child
    assert 0.8e6 < model.num_params() < 1.5e6


def test_arch_flag_accepts_a_seeded_sample_and_rejects_garbage() -> None:
    # Act
    sampled = gpu_children.resolve_arch("sample:3")
    # Assert
    assert sampled == gpu_children.resolve_arch("sample:3")
    assert sampled.startswith("normal:") and sampled != gpu_children.NASNET_A
    with pytest.raises(ValueError):
        gpu_children.resolve_arch("normal:nope")
