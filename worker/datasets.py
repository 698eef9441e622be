"""Offline image datasets as normalised tensors: train / validation / test splits.

The validation split is held out of the training set with a seed; the test split is only
read and normalised, never sampled from. Loaders are looked up by name in DATASET_LOADERS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from worker.datasets_base import (
    DATASET_LOADERS,
    DatasetError,
    Int64Array,
    RawDataset,
    Uint8Array,
    get_loader,
    register_dataset,
)
from worker.datasets_cifar10 import load_cifar10
from worker.datasets_fashion_mnist import load_fashion_mnist, read_idx

__all__ = ["DATASET_LOADERS", "DatasetError", "DatasetSplits", "RawDataset", "channel_stats",
           "load_cifar10", "load_dataset", "load_fashion_mnist", "read_idx", "register_dataset",
           "stratified_sample"]


@dataclass(frozen=True)
class DatasetSplits:
    """Float32 images (N, C, H, W) normalised with the train split's per-channel mean and std,
    int64 labels, and the rows of the original training set that train and val were taken from.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    train_indices: torch.Tensor
    val_indices: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    def __post_init__(self) -> None:
        shape = self.train_images.shape[1:]
        for split in ("train", "val", "test"):
            images: torch.Tensor = getattr(self, f"{split}_images")
            labels: torch.Tensor = getattr(self, f"{split}_labels")
            if images.dtype != torch.float32 or images.ndim != 4 or images.shape[1:] != shape:
                raise ValueError(f"{split}_images: want float32 (N, {tuple(shape)}), got "
                                 f"{images.dtype} {tuple(images.shape)}")
            if labels.dtype != torch.int64 or labels.shape != (len(images),):
                raise ValueError(f"{split}_labels: want int64 ({len(images)},), got "
                                 f"{labels.dtype} {tuple(labels.shape)}")
        if shape[1] != shape[2]:
            raise ValueError(f"images must be square, got {tuple(shape[1:])}")
        if len(self.mean) != shape[0] or len(self.std) != shape[0]:
            raise ValueError(f"mean/std: want {shape[0]} channels")

    @property
    def in_channels(self) -> int:
        """Channels per image (1 for Fashion-MNIST, 3 for CIFAR-10)."""
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """Height (= width) of an image in pixels."""
        return int(self.train_images.shape[2])


def stratified_sample(labels: Int64Array, count: int, rng: np.random.Generator) -> Int64Array:
    """Sorted positions of ``count`` rows drawn without replacement, each class in proportion.

    Quotas are rounded by largest remainder, so the counts per class differ from the exact
    proportion by less than one.
    """
    if not 0 <= count <= len(labels):
        raise ValueError(f"count: must be in 0..{len(labels)}, got {count}")
    classes, sizes = np.unique(labels, return_counts=True)
    exact = count * sizes / len(labels)
    quota = np.floor(exact).astype(np.int64)
    extra = np.argsort(-(exact - quota), kind="stable")[: count - int(quota.sum())]
    quota[extra] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota,
                                                                              strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def channel_stats(images: Uint8Array) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1].

    Counted by histogram, so it is exact and needs no float copy of the images.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means: list[float] = []
    stds: list[float] = []
    for channel in range(images.shape[1]):
        counts = np.bincount(images[:, channel].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ values / total)
        var = max(float(counts @ values**2 / total) - mean * mean, 0.0)
        means.append(mean)
        stds.append(var**0.5 if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def _normalised(images: Uint8Array, mean: tuple[float, ...], std: tuple[float, ...]
                ) -> torch.Tensor:
    shape = (1, len(mean), 1, 1)
    out = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    return out.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))


def _subset(labels: Int64Array, rows: Int64Array, size: int | None, name: str, seed: int,
            stream: int) -> Int64Array:
    if size is None:
        return rows
    if not 1 <= size <= len(rows):
        raise ValueError(f"{name}: must be in 1..{len(rows)}, got {size}")
    return rows[stratified_sample(labels[rows], size, np.random.default_rng([seed, stream]))]


def load_dataset(name: str, data_dir: str | Path | None = None, *, seed: int,
                 val_fraction: float = 0.1, train_subset: int | None = None,
                 val_subset: int | None = None) -> DatasetSplits:
    """Load dataset ``name`` and split its training set into train and validation.

    ``val_fraction`` of the training set (stratified, chosen by ``seed``) becomes the
    validation split; ``train_subset`` / ``val_subset`` then keep seeded stratified subsets.
    The same seed always gives the same split, whatever the subset sizes. Missing or corrupt
    files raise DatasetError; an unknown name or a bad argument raises ValueError.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    if seed < 0:
        raise ValueError(f"seed: must be >= 0, got {seed}")
    raw = get_loader(name)(Path(data_dir) if data_dir is not None else None)
    labels = raw.train_labels
    n_val = round(val_fraction * len(labels))
    if not 1 <= n_val < len(labels):
        raise ValueError(f"val_fraction: {val_fraction} of {len(labels)} images leaves an "
                         f"empty split")
    val_rows = stratified_sample(labels, n_val, np.random.default_rng([seed, 0]))
    train_rows = np.setdiff1d(np.arange(len(labels)), val_rows)
    train_rows = _subset(labels, train_rows, train_subset, "train_subset", seed, 1)
    val_rows = _subset(labels, val_rows, val_subset, "val_subset", seed, 2)
    train_images = raw.train_images[train_rows]
    mean, std = channel_stats(train_images)
    return DatasetSplits(
        name=name,
        train_images=_normalised(train_images, mean, std),
        train_labels=torch.from_numpy(labels[train_rows]),
        val_images=_normalised(raw.train_images[val_rows], mean, std),
        val_labels=torch.from_numpy(labels[val_rows]),
        test_images=_normalised(raw.test_images, mean, std),
        test_labels=torch.from_numpy(raw.test_labels.copy()),
        train_indices=torch.from_numpy(train_rows),
        val_indices=torch.from_numpy(val_rows),
        mean=mean, std=std, num_classes=raw.num_classes)
