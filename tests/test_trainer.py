"""Trainer: a tiny conv net learns real Fashion-MNIST; hooks, rewards, failures, validation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from worker.datasets import DatasetSplits, load_dataset
from worker.datasets_fashion_mnist import FASHION_MNIST_DIR
from worker.trainer import TrainingFailed, TrainRecipe, evaluate, train
from worker.trainer_recipe import compute_reward, cosine_lr

FAST = TrainRecipe(epochs=2, batch_size=32, learning_rate=0.05, device="cpu")


def _tiny_convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(16 * 7 * 7, 10))


def _synthetic_splits(n: int = 48, classes: int = 3) -> DatasetSplits:
    generator = torch.Generator().manual_seed(0)

    def images(count: int) -> torch.Tensor:
        return torch.randn(count, 1, 8, 8, generator=generator)

    def labels(count: int) -> torch.Tensor:
        return torch.arange(count) % classes

    return DatasetSplits("synthetic", images(n), labels(n), images(12), labels(12), images(12),
                         labels(12), torch.arange(n), torch.arange(n, n + 12), (0.0,), (1.0,),
                         classes)


class _Linear(nn.Module):
    """A linear classifier on 8x8 images that records the hooks the trainer calls."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.head = nn.Linear(64, classes)
        self.progress: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))

    def set_progress(self, p: float) -> None:
        self.progress.append(p)


class _WithAux(_Linear):
    def __init__(self, aux: bool) -> None:
        super().__init__()
        self.aux = nn.Linear(64, 3) if aux else None
        self.aux_calls = 0

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.aux_calls += 1
        return self(x), self.aux(x.flatten(1)) if self.aux is not None else None




@pytest.fixture(scope="module")
def fmnist_600() -> DatasetSplits:
    assert (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), \
        f"Fashion-MNIST not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist"
    return load_dataset("fashion-mnist", seed=0, train_subset=600, val_subset=300)


@pytest.mark.usefixtures("one_thread")
def test_tiny_convnet_learns_and_is_deterministic(fmnist_600: DatasetSplits) -> None:
    # Arrange
    seen: list[tuple[int, float, float]] = []
    # Act
    first = train(_tiny_convnet(0), fmnist_600, FAST, progress_cb=lambda *a: seen.append(a))
    second = train(_tiny_convnet(0), fmnist_600, FAST)
    # Assert
    assert first.epochs_trained == 2 and first.device == "cpu"
    assert first.final_val_accuracy > 0.5, first
    assert first.train_losses[1] < first.train_losses[0]
    assert first.reward == first.val_accuracies[-1]
    assert seen == [(e, first.train_losses[e], first.val_accuracies[e]) for e in range(2)]
    assert dataclasses.replace(first, train_seconds=0) == dataclasses.replace(
        second, train_seconds=0)
    assert first.train_seconds > 0


def test_rewards_from_per_epoch_accuracies() -> None:
    accuracies = [0.1, 0.9, 0.3, 0.4, 0.5, 0.6, 0.2]
    assert compute_reward(accuracies, "last", cube=False) == 0.2
    assert compute_reward(accuracies, "max5", cube=False) == 0.6  # 0.9 is six epochs back
    assert compute_reward(accuracies, "max5", cube=True) == pytest.approx(0.216)
    assert compute_reward([0.7, 0.8], "max5", cube=False) == 0.8
    assert compute_reward([0.5], "last", cube=True) == 0.125
    with pytest.raises(ValueError, match="val_accuracies"):
        compute_reward([], "last", cube=False)


def test_report_reward_uses_recipe() -> None:
    recipe = TrainRecipe(epochs=3, batch_size=8, reward="max5", cube_reward=True, device="cpu")
    report = train(_Linear(), _synthetic_splits(), recipe)
    assert report.reward == pytest.approx(max(report.val_accuracies) ** 3)


def test_cosine_schedule_runs_from_base_to_zero() -> None:
    assert cosine_lr(0.1, 0, 10) == 0.1
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine_lr(0.1, 10, 10) == pytest.approx(0.0)


@pytest.mark.parametrize("changes", [{"lr_schedule": "cosine-epoch"},
                                     {"label_smoothing": 0.1, "grad_clip": None}])
def test_recipe_variants_train(changes: dict[str, object]) -> None:
    recipe = dataclasses.replace(FAST, batch_size=8, **changes)  # type: ignore[arg-type]
    report = train(_Linear(), _synthetic_splits(), recipe)
    assert len(report.train_losses) == 2 and all(map(math.isfinite, report.train_losses))


def test_set_progress_called_at_each_epoch_start() -> None:
    model = _Linear()
    train(model, _synthetic_splits(), dataclasses.replace(FAST, epochs=4))
    assert model.progress == [0.0, 0.25, 0.5, 0.75]


@pytest.mark.parametrize("aux", [True, False])
def test_aux_head_used_in_training(aux: bool) -> None:
    # Arrange
    model = _WithAux(aux)
    before = model.aux.weight.clone() if model.aux is not None else None
    # Act
    report = train(model, _synthetic_splits(n=48), dataclasses.replace(FAST, batch_size=16))
    # Assert
    assert model.aux_calls == 2 * 3  # training batches only; evaluation calls forward
    assert all(map(math.isfinite, report.train_losses))
    if model.aux is not None:
        assert before is not None and not torch.equal(model.aux.weight, before)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_fails(bad: float) -> None:
    class Broken(_Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * bad

    with pytest.raises(TrainingFailed, match="non-finite training loss"):
        train(Broken(), _synthetic_splits(), FAST)


def test_out_of_memory_becomes_training_failed() -> None:
    class Hungry(_Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    with pytest.raises(TrainingFailed, match=r"CUDA out of memory.*80\.00 GiB"):
        train(Hungry(), _synthetic_splits(), FAST)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_recipe_without_cuda_fails_clearly() -> None:
    with pytest.raises(TrainingFailed, match="CUDA is not available"):
        train(_Linear(), _synthetic_splits(), dataclasses.replace(FAST, device="cuda"))


def test_evaluate_counts_correct_and_restores_mode() -> None:
    # Arrange: a model that always answers class 0
    linear = nn.Linear(64, 3)
    model = nn.Sequential(nn.Flatten(), linear)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    splits = _synthetic_splits()
    # Act
    accuracy = evaluate(model, splits.val_images, splits.val_labels, 5, "cpu")
    # Assert
    assert accuracy == pytest.approx(4 / 12)
    assert model.training


@pytest.mark.parametrize(("field", "value"), [
    ("epochs", 0), ("batch_size", 0), ("learning_rate", 0.0), ("learning_rate", math.nan),
    ("weight_decay", -1.0), ("label_smoothing", 1.0), ("lr_schedule", "step"),
    ("grad_clip", 0.0), ("reward", "best"), ("seed", -1), ("aux_weight", -0.1),
    ("device", "tpu"), ("device", "cuda:x")])
def test_recipe_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        TrainRecipe(**{field: value})  # type: ignore[arg-type]
