"""The throughput benchmark stays runnable: each system (ours on shards, replicas and Ray
workers; Ray Tune; Optuna) runs a tiny N for real, completes every trial and reports a rate (the
published numbers come from the full run, not from here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import throughput

TRIALS = 12


def test_every_system_completes_its_trials_and_reports_a_rate(
        nb201_csv: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange: Ray's workers, Tune's actors and Optuna's processes find the table by this
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))
    # Act: each system is given up on (TimeoutError) after 60 s
    results = throughput.main(["--quick", "--trials", str(TRIALS), "--children", "4",
                               "--timeout", "60", "--no-write"])
    # Assert
    out = capsys.readouterr().out
    assert set(results) == {"ours", "ray-tune", "optuna"}
    for name, r in results.items():
        assert r["trials"] == TRIALS, f"{name}: {r['trials']} of {TRIALS} trials completed"
        assert r["rate"] > 0, f"{name}: no rate"
        assert 0 < r["best"] <= 1, f"{name}: best reward {r['best']}"
        assert f"| {name} |" in out
    assert results["ours"]["failed"] == 0
    assert "## Throughput against Ray Tune and Optuna" in out
    assert "ours / Ray Tune:" in out and "ours / Optuna:" in out
