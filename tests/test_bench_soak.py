"""The soak benchmark stays runnable: a small real run through ``nas serve search`` (a private
Redis, shards, K=4 replicas, the synthetic evaluator), measured at each checkpoint (the published
numbers come from the full run, not from here)."""

from __future__ import annotations

import re

import pytest

from bench import soak


def test_soak_measures_every_probe_at_every_checkpoint(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    # Act: 200 trainings (checkpoints 100 and 200), then 40 stored jobs (30 and 40)
    code = soak.main(["--quick", "--trainings", "200", "--jobs", "40", "--n", "3",
                      "--shards", "2", "--wave", "10"])
    # Assert
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if re.match(r"\| \d[\d,]* (trainings|jobs) \|",
                                                          line)]
    assert [r.split("|")[1].strip() for r in rows] == ["100 trainings", "200 trainings",
                                                      "30 jobs", "40 jobs"]
    for row in rows:  # every probe measured: numbers, not dashes (the job rows' rate aside)
        cells = [c.strip() for c in row.split("|")[3:-1]]
        assert all(re.fullmatch(r"[\d.]+( / [\d.]+)?", c) for c in cells), row
    assert "Redis memory per trial of the long job:" in out
    verdicts = [line for line in out.splitlines() if line.endswith(("| met |", "| NOT met |"))
                and not line.startswith("| target")]
    assert len(verdicts) == len(soak.PROBES) + 3
    assert "`make search-nb201`" in verdicts[0]
