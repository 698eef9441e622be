"""The chaos benchmark stays runnable and keeps its promise: a tiny search on the real processes
(own redis-server with AOF, 2 shard processes, the search service) with a SIGKILLed service and
a SIGKILLed shard, both restarted, loses no result and its job succeeds. Every wait in
``bench.chaos`` is bounded (process start, the job, each restart)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bench import chaos


def test_a_killed_service_and_shard_lose_nothing(nb201_csv: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Arrange / Act: one clean run, then one run with both faults
    began = time.monotonic()
    code = chaos.main(["--quick", "--no-write", "--faults", "service,shard", "--together",
                       "--kills", "1", "--budget", "24", "--run-timeout", "60",
                       "--down-seconds", "0.5", "--seed", "1"])
    # Assert
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| search service")]
    assert len(rows) == 1, out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    kills, state, lost, trainings = cells[1], cells[2], cells[3], cells[4]
    assert kills == "2/2", out  # both faults hit the running job
    assert state == "SUCCEEDED" and lost == "0" and trainings == "24 / 24", out
    assert cells[5] == "0"  # nothing trained twice
    assert re.search(r"service SIGKILLed, restarted", out) and re.search(
        r"shard\d SIGKILLed, restarted", out)
    assert code == 0
    assert time.monotonic() - began < 90
