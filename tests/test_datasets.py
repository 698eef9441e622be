"""Datasets: real Fashion-MNIST from the Debian path, CIFAR-10 batches written here, errors."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.datasets import (
    DATASET_LOADERS,
    DatasetError,
    DatasetSplits,
    load_dataset,
    load_fashion_mnist,
    read_idx,
)
from worker.datasets_fashion_mnist import FASHION_MNIST_DIR

# The real data is a test requirement (.ci/run installs it): a missing copy fails loudly.
needs_fashion_mnist = pytest.mark.usefixtures("fashion_mnist_installed")


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _write_small_fashion_mnist(directory: Path, n_train: int = 40, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def _write_cifar10(directory: Path, per_batch: int = 10, protocol: int = 5) -> None:
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"batch_label": name.encode()}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.fixture(scope="module")
def fmnist() -> DatasetSplits:
    return load_dataset("fashion-mnist", seed=0)


@needs_fashion_mnist
def test_fashion_mnist_shapes_labels_and_attributes(fmnist: DatasetSplits) -> None:
    # Assert
    assert fmnist.train_images.shape == (54000, 1, 28, 28)
    assert fmnist.val_images.shape == (6000, 1, 28, 28)
    assert fmnist.test_images.shape == (10000, 1, 28, 28)
    assert (fmnist.in_channels, fmnist.image_size, fmnist.num_classes) == (1, 28, 10)
    for labels in (fmnist.train_labels, fmnist.val_labels, fmnist.test_labels):
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 9
    assert fmnist.val_labels.bincount().tolist() == [600] * 10  # stratified


@needs_fashion_mnist
def test_fashion_mnist_val_is_held_out_of_train_and_test_is_untouched(
        fmnist: DatasetSplits) -> None:
    # Arrange
    raw = load_fashion_mnist()
    train_rows, val_rows = fmnist.train_indices.numpy(), fmnist.val_indices.numpy()
    test_labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", ndim=1)
    # Assert
    assert not set(train_rows) & set(val_rows)
    assert sorted([*train_rows, *val_rows]) == list(range(60000))
    assert torch.equal(fmnist.val_labels, torch.from_numpy(raw.train_labels[val_rows]))
    row = raw.train_images[val_rows[5]].astype(np.float64) / 255
    expected = (row - fmnist.mean[0]) / fmnist.std[0]
    assert np.allclose(fmnist.val_images[5].numpy(), expected, atol=1e-5)
    assert fmnist.test_labels.tolist() == test_labels.tolist()


@needs_fashion_mnist
def test_fashion_mnist_normalised_with_train_statistics(fmnist: DatasetSplits) -> None:
    # Arrange
    raw = load_fashion_mnist().train_images[fmnist.train_indices.numpy()]
    # Assert
    assert fmnist.mean[0] == pytest.approx(raw.mean(dtype=np.float64) / 255, abs=1e-9)
    assert fmnist.std[0] == pytest.approx(0.353, abs=0.001)
    assert fmnist.train_images.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert fmnist.train_images.std().item() == pytest.approx(1.0, abs=1e-4)
    assert abs(fmnist.test_images.mean().item()) < 0.05  # train stats, not the test set's


@needs_fashion_mnist
def test_split_depends_on_seed_only() -> None:
    # Act
    first = load_dataset("fashion-mnist", seed=3, train_subset=500, val_subset=200)
    again = load_dataset("fashion-mnist", seed=3, train_subset=500, val_subset=200)
    other = load_dataset("fashion-mnist", seed=4, train_subset=500, val_subset=200)
    full = load_dataset("fashion-mnist", seed=3, train_subset=100)
    # Assert
    assert len(first.train_labels) == 500 and len(first.val_labels) == 200
    assert torch.equal(first.train_indices, again.train_indices)
    assert torch.equal(first.val_indices, again.val_indices)
    assert torch.equal(first.train_images, again.train_images)
    assert not torch.equal(first.val_indices, other.val_indices)
    assert not torch.equal(first.train_indices, other.train_indices)
    # The subsets come from the same held-out split, whatever their sizes.
    assert set(first.val_indices.tolist()) <= set(full.val_indices.tolist())
    assert not set(full.train_indices.tolist()) & set(full.val_indices.tolist())
    assert first.train_labels.bincount().tolist() == [50] * 10


def test_uncompressed_idx_files_from_data_dir(tmp_path: Path) -> None:
    # Arrange
    _write_small_fashion_mnist(tmp_path)
    # Act
    splits = load_dataset("fashion-mnist", tmp_path, seed=0, val_fraction=0.25)
    # Assert
    assert splits.train_images.shape == (30, 1, 28, 28)
    assert splits.val_images.shape == (10, 1, 28, 28)
    assert splits.test_labels.tolist() == list(range(10))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", tmp_path / "nowhere", seed=0)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    assert "train-images-idx3-ubyte.gz" in message


@pytest.mark.parametrize("corruption", ["magic", "truncated", "gzip", "labels", "count"])
def test_corrupt_idx_file_is_named(tmp_path: Path, corruption: str) -> None:
    # Arrange
    _write_small_fashion_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    bad = {"magic": images, "truncated": images, "gzip": images, "labels": labels,
           "count": labels}[corruption]
    if corruption == "magic":
        images.write_bytes(b"\x00\x00\x0d\x03" + images.read_bytes()[4:])
    elif corruption == "truncated":
        images.write_bytes(images.read_bytes()[:-7])
    elif corruption == "gzip":
        images.unlink()
        bad = tmp_path / "train-images-idx3-ubyte.gz"
        bad.write_bytes(b"\x1f\x8b not really gzip")
    elif corruption == "labels":
        _write_idx(labels, np.full(40, 12))
    else:
        _write_idx(labels, np.zeros(39))
    # Act / Assert
    with pytest.raises(DatasetError, match=re.escape(str(bad))):
        load_dataset("fashion-mnist", tmp_path, seed=0)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_python_batches(tmp_path: Path, protocol: int, nested: bool) -> None:
    # Arrange
    _write_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)
    data_dir = tmp_path if nested else tmp_path / "cifar-10-batches-py"
    # Act
    splits = load_dataset("cifar10", data_dir, seed=0, val_fraction=0.2)
    # Assert
    assert splits.train_images.shape == (40, 3, 32, 32)
    assert splits.val_images.shape == (10, 3, 32, 32)
    assert splits.test_images.shape == (10, 3, 32, 32)
    assert (splits.in_channels, splits.image_size, splits.num_classes) == (3, 32, 10)
    assert sorted(splits.train_indices.tolist() + splits.val_indices.tolist()) == list(range(50))
    test = pickle.loads((data_dir.joinpath("test_batch") if not nested else
                         tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    first = test[b"data"][0].reshape(3, 32, 32) / 255.0
    expected = (first - np.array(splits.mean)[:, None, None]) / np.array(splits.std)[:, None, None]
    assert np.allclose(splits.test_images[0].numpy(), expected, atol=1e-5)
    assert splits.test_labels.tolist() == test[b"labels"]


def test_missing_cifar10_gives_url_and_flag(tmp_path: Path) -> None:
    # Arrange
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    # Act / Assert
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path, seed=0)
    message = str(err.value)
    assert "data_batch_3" in message and "--data-dir" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message


class _Hostile:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


@pytest.mark.parametrize("content", [b"garbage, not a pickle",
                                     pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                   b"labels": [0, 1]}),
                                     pickle.dumps({b"data": _Hostile(), b"labels": []})])
def test_corrupt_cifar10_batch_is_named(tmp_path: Path, content: bytes) -> None:
    # Arrange
    _write_cifar10(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(content)
    # Act / Assert
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path, seed=0)


def test_registry_and_bad_arguments(tmp_path: Path) -> None:
    assert {"fashion-mnist", "cifar10"} <= set(DATASET_LOADERS)
    with pytest.raises(ValueError, match="imagenet-1k"):
        load_dataset("imagenet-1k", seed=0)
    _write_small_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("fashion-mnist", tmp_path, seed=0, val_fraction=1.0)
    with pytest.raises(ValueError, match="train_subset"):
        load_dataset("fashion-mnist", tmp_path, seed=0, train_subset=1000)
