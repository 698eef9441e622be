"""bench.load for real, small: the served search service (a subprocess, with its shard) under a
few concurrent clients, then fuzzed with the seeded fuzzer together with a TrialReport server."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import load


@pytest.fixture(autouse=True)
def _nb201_table(nb201_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_NB201_CSV", str(nb201_csv))


def test_load_and_fuzz_meet_the_targets() -> None:
    # Act
    report = load.main(["--quick", "--clients", "3", "--budget", "4", "--fuzz-requests", "120",
                        "--seed", "1", "--no-write"])
    # Assert: nothing accepted was lost, every load call succeeded
    jobs = report["load"]
    assert jobs["submitted"] == jobs["accepted"] == jobs["succeeded"] == 3, jobs["problems"]
    assert set(jobs["codes"]) == {"OK"}
    assert {"SubmitSearch", "WatchSearch", "GetSearch", "GetBest", "ListTrials",
            "ListSearches"} <= set(jobs["latency_ms"])
    # no UNKNOWN, INTERNAL or status lost to huge details anywhere, every RPC of every service
    # fuzzed, all still serving
    fuzz = report["fuzz"]
    assert fuzz["bad"] == []
    for name, codes in fuzz["codes"].items():
        assert not set(codes) & {"UNKNOWN", "INTERNAL", "LOST STATUS"}, (name, codes)
        assert set(fuzz["methods"][name]) <= set(fuzz["per_method"][name]), name
    assert set(fuzz["codes"]) == {"search", "paramserver", "trials (seeded board)"}
    assert {"INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED",
            "OK"} <= set(fuzz["codes"]["search"])
    assert set(fuzz["health"].values()) == {"OK", "running"}, fuzz["health"]
    assert fuzz["shard_restarted"] is False
