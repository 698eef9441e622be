"""``nas search`` end to end through the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REQUIRED_KEYS = {"best", "budget", "trainings", "cache_hits", "wall_seconds", "history"}


def nas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("nas") or str(Path(sys.executable).parent / "nas")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_search_writes_result_json(tmp_path: Path, nb201_csv: Path) -> None:
    # Act
    proc = nas("search", "--space", "nb201", "--strategy", "reinforce", "--evaluator", "nb201",
               "--nb201-csv", str(nb201_csv), "--dataset", "cifar10", "--budget", "40",
               "--seed", "0", "--out", str(tmp_path))
    # Assert
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    assert set(doc) >= REQUIRED_KEYS
    assert set(doc["best"]) == {"arch", "reward", "test_accuracy"}
    assert doc["budget"] == 40 and doc["trainings"] == 40
    assert doc["cache_hits"] - doc["repeats"] == sum(h["cached"] for h in doc["history"])
    assert len(doc["history"]) == doc["distinct"] == doc["trainings"] + doc["cache_hits"] - \
        doc["repeats"]
    assert all({"arch", "reward", "cached"} <= set(h) for h in doc["history"])
    assert doc["best"]["reward"] == max(h["reward"] for h in doc["history"])
    assert 0.0 < doc["best"]["test_accuracy"] <= 0.9437
    assert "test accuracy" in proc.stdout and "result.json" in proc.stdout
    assert "training" in proc.stderr  # the progress bar


@pytest.mark.parametrize("strategy", ["reinforce", "random", "evolution"])
def test_same_seed_same_result(tmp_path: Path, nb201_csv: Path, strategy: str) -> None:
    docs = []
    for run in ("a", "b"):
        proc = nas("search", "--strategy", strategy, "--nb201-csv", str(nb201_csv),
                   "--budget", "30", "--seed", "4", "--out", str(tmp_path / run), "--quiet")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads((tmp_path / run / "result.json").read_text())
        doc.pop("wall_seconds")
        docs.append(doc)
    assert docs[0] == docs[1]
    other = nas("search", "--strategy", strategy, "--nb201-csv", str(nb201_csv), "--budget",
                "30", "--seed", "5", "--out", str(tmp_path / "c"), "--quiet")
    assert other.returncode == 0
    assert json.loads((tmp_path / "c" / "result.json").read_text())["history"] != \
        docs[0]["history"]


def test_yaml_spec_with_flags_overriding(tmp_path: Path, nb201_csv: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"space: nb201\nstrategy: evolution\nevaluator: nb201\n"
                    f"nb201_csv: {nb201_csv}\ndataset: cifar100\nbudget: 50\nseed: 2\n"
                    f"population: 8\nout: {tmp_path / 'from-spec'}\n")
    proc = nas("search", str(spec), "--budget", "20", "--quiet")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "from-spec" / "result.json").read_text())
    assert doc["budget"] == 20 and doc["trainings"] == 20
    assert doc["config"]["strategy"] == "evolution" and doc["config"]["population"] == 8
    assert doc["config"]["dataset"] == "cifar100"
    assert doc["best"]["test_accuracy"] <= 0.7351  # the CIFAR-100 optimum


@pytest.mark.parametrize(("args", "message"), [
    (["--dataset", "mnist"], "dataset: 'mnist' is not one of cifar10, cifar100, imagenet16"),
    (["--budget", "0"], "budget: must be >= 1"),
    (["--space", "macro"], "space: the nb201 evaluator only scores --space nb201"),
    (["--tournament", "20"], "tournament: must be <= population"),
    (["--controller-lr", "-1"], "controller_lr: must be > 0"),
])
def test_bad_flags_exit_2_naming_the_field(args: list[str], message: str,
                                           nb201_csv: Path) -> None:
    proc = nas("search", "--nb201-csv", str(nb201_csv), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_and_malformed_tables_are_one_clear_line(tmp_path: Path) -> None:
    missing = nas("search", "--nb201-csv", str(tmp_path / "nope.csv"), "--quiet")
    assert missing.returncode == 2
    assert "NB201 table not found" in missing.stderr and "NAS_NB201_CSV" in missing.stderr
    assert missing.stderr.count("\n") == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("arch_str,cifar10_valid_x_valid_12ep\n|none~0|,abc\n")
    malformed = nas("search", "--nb201-csv", str(bad), "--quiet")
    assert malformed.returncode == 2
    assert "missing column(s) cifar10_test_200ep" in malformed.stderr
    bad.write_text("arch_str,cifar10_valid_x_valid_12ep,cifar10_test_200ep\n|none~0|,abc,1\n")
    malformed = nas("search", "--nb201-csv", str(bad), "--quiet")
    assert malformed.returncode == 2
    assert "bad.csv:2: column cifar10_valid_x_valid_12ep is not a number" in malformed.stderr
    from_env = nas("search", "--quiet", env={"NAS_NB201_CSV": str(tmp_path / "env.csv")})
    assert from_env.returncode == 2 and "env.csv" in from_env.stderr


def test_bad_spec_files_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("budgett: 10\n")
    proc = nas("search", str(spec))
    assert proc.returncode == 2 and "budgett: unknown setting" in proc.stderr
    spec.write_text("budget: ten\n")
    proc = nas("search", str(spec))
    assert proc.returncode == 2 and "budget: expected an integer" in proc.stderr
    spec.write_text("- a list\n")
    proc = nas("search", str(spec))
    assert proc.returncode == 2 and "must hold a mapping" in proc.stderr
    proc = nas("search", str(tmp_path / "absent.yaml"))
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_help_explains_the_budget_and_presets() -> None:
    proc = nas("search", "--help")
    assert proc.returncode == 0
    assert "--budget counts child trainings" in proc.stdout
    assert "zoph-le" in proc.stdout and "sample-efficient" in proc.stdout
    assert nas("frobnicate").returncode == 2


def test_the_progress_bar_shows_proposals_hits_and_their_rate(tmp_path: Path,
                                                              nb201_csv: Path) -> None:
    # a run that proposes repeats must never look frozen: the bar counts trainings and shows
    # proposals, cache hits and proposals/s
    proc = nas("search", "--strategy", "random", "--nb201-csv", str(nb201_csv), "--budget",
               "30", "--simulate-seconds", "0.05", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "30/30" in proc.stderr and "training" in proc.stderr
    for shown in ("proposals=", "hits=", "proposals/s=", "best="):
        assert shown in proc.stderr


@pytest.mark.parametrize(("sig", "code", "layout"), [
    (signal.SIGINT, 130, ["--shards", "2", "--replicas", "2"]),
    (signal.SIGTERM, 143, []),
])
def test_a_stopped_search_exits_cleanly_with_a_partial_result(
        tmp_path: Path, nb201_csv: Path, sig: signal.Signals, code: int,
        layout: list[str]) -> None:
    # Arrange: a long search (each lookup takes 50 ms, like a training)
    exe = shutil.which("nas") or str(Path(sys.executable).parent / "nas")
    proc = subprocess.Popen([exe, "search", "--strategy", "reinforce", "--nb201-csv",
                             str(nb201_csv), "--budget", "2000", "--simulate-seconds", "0.05",
                             "--out", str(tmp_path), "--quiet", *layout],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "cluster.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(5)  # a few trainings
        started = json.loads((tmp_path / "cluster.json").read_text())["processes"]
        # Act
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Assert: the shell's code, one line on stderr, every process it started gone, and a
    # result.json of what it found so far
    assert proc.returncode == code, err
    assert "Traceback" not in err and "terminate called" not in err
    assert f"stopped by {sig.name}" in err
    assert len(started) == (3 if layout else 0)  # 2 shards and their private Redis
    for pid in started.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["stopped_reason"] == "interrupted" and 0 < doc["trainings"] < 2000
    assert len(doc["history"]) == doc["trainings"] + doc["cache_hits"] - doc["repeats"]
    assert doc["best"]["test_accuracy"] is None  # the test split is for a finished search
    assert "stopped: interrupted" in out


def test_cuda_without_cuda_is_one_line_exit_2(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: there is nothing to refuse")
    proc = nas("search", "--space", "nb201", "--evaluator", "train", "--device", "cuda",
               "--budget", "1", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nas search: error: device: 'cuda' asked for but CUDA is not available; use --device "
        "auto (CUDA when present) or cpu"]
    bad = nas("search", "--device", "gpu", "--out", str(tmp_path))
    assert bad.returncode == 2 and "device: 'gpu' is not auto, cpu, cuda or cuda:N" in bad.stderr
