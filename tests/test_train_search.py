"""Real child training in a search, then export: the bundle's TorchScript classifies the test
images with the accuracy the search reported, and train-final retrains it larger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.cli import main as nas
from worker.datasets import load_dataset

SEARCH = ["search", "--space", "nb201", "--strategy", "evolution", "--evaluator", "train",
          "--dataset", "fashion-mnist", "--budget", "3", "--epochs", "2", "--train-subset",
          "10000", "--val-subset", "1000", "--filters", "8", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory,
                fashion_mnist_installed: Path) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    assert nas([*SEARCH, "--out", str(out)]) == 0
    return out


def test_history_records_what_each_child_cost(trained_run: Path) -> None:
    doc = json.loads((trained_run / "result.json").read_text())
    assert doc["trainings"] == 3
    for entry in doc["history"]:
        metrics = entry["metrics"]
        assert set(metrics) >= {"val_accuracy", "params", "flops", "train_seconds"}
        assert metrics["params"] > 1000 and metrics["flops"] > metrics["params"]
        assert entry["reward"] == metrics["val_accuracy"]
    assert doc["evaluator"]["name"] == "train" and doc["evaluator"]["train_images"] == 10000
    # the best child of this small search is a real Fashion-MNIST classifier
    assert doc["best"]["reward"] > 0.80
    assert 0.75 < doc["best"]["test_accuracy"] <= 1.0


def test_exported_bundle_classifies_with_the_reported_accuracy(trained_run: Path) -> None:
    # Act
    assert nas(["export", str(trained_run), "--top", "1", "--to", str(trained_run / "b")]) == 0
    (bundle,) = (trained_run / "b").iterdir()
    # Assert: the files a user expects
    names = {p.name for p in bundle.iterdir()}
    assert {"architecture.json", "genotype.txt", "cell.png", "weights.pt", "model.ts",
            "recipe.json"} <= names
    doc = json.loads((trained_run / "result.json").read_text())
    arch = json.loads((bundle / "architecture.json").read_text())
    assert arch["arch"] == doc["best"]["arch"] == (bundle / "genotype.txt").read_text().strip()
    # The TorchScript child, fed test images normalised as recipe.json says, scores the
    # test accuracy the search reported.
    recipe = json.loads((bundle / "recipe.json").read_text())
    model = torch.jit.load(str(bundle / "model.ts"))
    splits = load_dataset("fashion-mnist", seed=0, train_subset=10000, val_subset=1000)
    assert recipe["mean"] == pytest.approx(list(splits.mean))
    with torch.no_grad():
        predictions = torch.cat([model(x).argmax(1) for x in splits.test_images.split(500)])
    accuracy = (predictions == splits.test_labels).float().mean().item()
    assert accuracy == pytest.approx(doc["best"]["test_accuracy"], abs=1e-4)


def test_train_final_retrains_larger(trained_run: Path) -> None:
    if not (trained_run / "b").exists():
        assert nas(["export", str(trained_run), "--to", str(trained_run / "b")]) == 0
    (bundle,) = (trained_run / "b").iterdir()
    code = nas(["train-final", str(bundle), "--cells", "1", "--filters", "12", "--epochs", "1",
                "--train-subset", "4000", "--quiet"])
    assert code == 0
    report = json.loads((bundle / "final-1@12" / "report.json").read_text())
    small = json.loads((bundle / "architecture.json").read_text())["metrics"]["params"]
    assert report["params"] > small
    assert 0.5 < report["test_accuracy"] <= 1.0
    assert (bundle / "final-1@12" / "model.ts").is_file()


def test_export_errors_name_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    assert nas(["export", str(tmp_path)]) == 2
    assert "result.json not found" in capsys.readouterr().err
    assert nas(["train-final", str(tmp_path)]) == 2
    assert "architecture.json not found" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    code = nas(["search", "--space", "nb201", "--evaluator", "train", "--data-dir",
                str(tmp_path), "--budget", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err
