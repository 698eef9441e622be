"""The paper-scale part of ``bench.paramserver``: a real (tiny) run is measured and summarised
from its own result.json and processes, the noise test is the stated prediction interval, and
the section's verdicts are computed from the numbers it shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import paper_scale as scale
from bench import readme
from tests.conftest import OwnRedis


def test_a_tiny_run_is_measured_from_its_processes_and_result(tmp_path: Path,
                                                              own_redis: OwnRedis) -> None:
    # Arrange: S=2 shards, K=2 replicas of m=8, 32 trainings on a Redis of the test's own
    own_redis.start()
    layout = scale.Layout("S=2, K=2, m=8", 2, 2, flags=scale.SCALE)
    # Act
    r = scale.run(layout, 0, tmp_path / "run", 32, 16, 0.0,
                  f"redis://127.0.0.1:{own_redis.port}/3")
    # Assert: two blocks of 16 trainings, the distance to the known optimum, every push
    # applied under the scaling stand-in, each process's memory and CPU read while it lived
    assert r["trainings"] == 32 and r["cache_hits"] == 0 and len(r["curve"]) == 2
    assert all(0 < v < 1 for v in r["curve"])
    assert r["optimum"] == pytest.approx(0.95) and 0 < r["best"] <= r["optimum"]
    assert r["decisions"] == 33 and 0 <= r["hamming"] <= 33
    assert r["pushes"] >= 32 // 8 and r["rejected_stale"] == 0
    assert set(r["processes"]) == {"search", "shard0", "shard1"}
    assert all(p["rss_peak_mib"] > 10 and p["cpu_s"] > 0 for p in r["processes"].values())
    assert r["peak_rss_mib"] >= max(p["rss_peak_mib"] for p in r["processes"].values()) / 2
    groups = scale.roles(r["processes"])
    assert groups["shard"]["count"] == 2 and groups["search"]["count"] == 1


def test_the_prediction_interval_is_mean_plus_minus_t_sd_sqrt_one_plus_one_over_n() -> None:
    # Act: three seeds whose block means are 0, 1, 2 (mean 1, sample sd 1)
    band = scale.prediction_band([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0]])
    # Assert: t(0.975, 2) = 4.3027
    half = 4.302653 * (1 + 1 / 3) ** 0.5
    assert band[0] == pytest.approx((1 - half, 1 + half), rel=1e-5)
    assert band[1] == pytest.approx((5.0, 5.0))
    assert scale.outside([1 + half + 0.01, 5.0], band) == [1]
    assert scale.outside([1.0, 5.1], band) == [2]


def test_the_band_needs_two_seeds() -> None:
    with pytest.raises(ValueError, match="curves: need >= 2 seeds"):
        scale.prediction_band([[0.7, 0.8]])


def test_calibration_tests_each_seed_against_the_others() -> None:
    # Act: four similar seeds, and one far off among them
    similar = scale.calibration([[0.70, 0.80], [0.71, 0.81], [0.69, 0.79], [0.70, 0.82]])
    odd = scale.calibration([[0.70, 0.80], [0.71, 0.81], [0.70, 0.80], [0.95, 0.99]])
    # Assert
    assert similar == (4, 4)
    assert odd[1] == 4 and odd[0] < 4
    assert scale.calibration([[0.7], [0.8]]) == (0, 0)


def test_roles_group_processes_by_their_name_without_the_index() -> None:
    assert [scale.role(n) for n in ("search", "shard17", "replica-host3", "host_2")] == \
        ["search", "shard", "replica-host", "host"]


def _result(layout: str, replicas: int, seed: int, curve: list[float], pushes: int,
            rejected: int, rss: float) -> dict[str, Any]:
    """A run's summary as ``scale.run`` returns it, with made-up numbers."""
    return {"layout": layout, "seed": seed, "shards": 20 if replicas > 1 else 1,
            "replicas": replicas, "children": 8, "flags": list(scale.SCALE), "wall": 100.0,
            "trainings": 800 * len(curve), "cache_hits": 0, "curve": curve, "best": 0.9,
            "optimum": 0.95, "decisions": 33, "hamming": 7, "random_mean": 0.7,
            "pushes": pushes, "rejected_stale": rejected,
            "staleness_versions": {"p50": 50.0, "p90": 90.0, "max": 120.0},
            "push_ms": {"p50": 200.0, "p90": 900.0}, "pull_ms": {"p50": 300.0, "p90": 800.0},
            "peak_rss_mib": rss, "processes": {
                "search": {"pid": 1, "cpu_s": 50.0, "rss_peak_mib": rss / 2},
                "shard0": {"pid": 2, "cpu_s": 5.0, "rss_peak_mib": rss / 4},
                "shard1": {"pid": 3, "cpu_s": 7.0, "rss_peak_mib": rss / 4}}}


def test_the_section_states_the_runs_the_curve_and_computed_verdicts(tmp_path: Path) -> None:
    # Arrange: K=100 applies 95% of its pushes in 3,000 MiB; its second block lags K=1's
    k1 = [[0.73, 0.83, 0.85], [0.74, 0.84, 0.85], [0.72, 0.83, 0.86]]
    results = [_result("S=20, K=100, m=8", 100, 0, [0.60, 0.73, 0.85], 95, 5, 3000.0),
               *[_result("S=1, K=1, m=8", 1, s, c, 200, 0, 600.0) for s, c in enumerate(k1)]]
    # Act
    lines = scale.section(results, 2400, 800, 0.02, tmp_path)
    text = "\n".join(["<!-- bench:ps -->", "## PS", *lines, "<!-- /bench:ps -->"])
    # Assert: the rows, the starred blocks, the band, the process roles, the plot
    assert "| S=20, K=100, m=8 | `--staleness-rule scale` | 0 | 100 | 2,400 | 0.9000 | " \
           "0.0500 | 7 of 33 | 95 / 5 (95%) | 50/90/120 | 200/900 | 300/800 | 62 | 3,000 |" in text
    assert "| S=20, K=100, m=8, seed 0 | 0.600* | 0.730* | 0.850 |" in text
    assert "| K=1, 95% prediction interval |" in text
    assert "| S=20, K=100, m=8 | shard | 2 | 750 / 750 | 1,500 | 12 |" in text
    assert (tmp_path / "paramserver-curve.png").stat().st_size > 0
    # ... and the verdicts as the README block quotes them
    verdicts = readme.sections(text)[0].verdicts
    assert [ok for ok, _ in verdicts] == [True, True, False]
    assert "95.0% (95 of 100)" in verdicts[0][1]
    assert "2 of 3 blocks outside (1, 2)" in verdicts[2][1]


def test_the_memory_verdict_fails_over_4_gb(tmp_path: Path) -> None:
    results = [_result("S=20, K=100, m=8", 100, 0, [0.7], 80, 20, 4000.0),
               _result("S=1, K=1, m=8", 1, 0, [0.7], 100, 0, 600.0)]
    lines = scale.verdicts(results, None)
    assert lines[2].endswith("| not met |") and "80.0% (80 of 100)" in lines[2]
    assert lines[3].endswith("| not met |") and "peak 4,000 MiB" in lines[3]
    assert "not judged: the test needs >= 2 K=1 seeds" in lines[4]
