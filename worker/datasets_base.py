"""Raw image datasets as read from disk, the error they raise, and the loader registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

Uint8Array = npt.NDArray[np.uint8]
Int64Array = npt.NDArray[np.int64]


class DatasetError(RuntimeError):
    """A dataset is missing or corrupt; the message says which file and how to get it."""


@dataclass(frozen=True)
class RawDataset:
    """Images as read from disk: uint8 arrays (N, C, H, W) and int64 labels in 0..classes-1.

    The arrays are read-only so one cached copy can be shared by every caller.
    """

    name: str
    train_images: Uint8Array
    train_labels: Int64Array
    test_images: Uint8Array
    test_labels: Int64Array
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"{split}_images: want uint8 (N, C, H, W), got "
                                 f"{images.dtype} {images.shape}")
            if labels.dtype != np.int64 or labels.shape != (len(images),):
                raise ValueError(f"{split}_labels: want int64 ({len(images)},), got "
                                 f"{labels.dtype} {labels.shape}")
            if len(labels) and not 0 <= labels.min() <= labels.max() < self.num_classes:
                raise ValueError(f"{split}_labels: must lie in 0..{self.num_classes - 1}")
            images.flags.writeable = False
            labels.flags.writeable = False
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"train and test images differ in shape: "
                             f"{self.train_images.shape[1:]} vs {self.test_images.shape[1:]}")


RawLoader = Callable[[Path | None], RawDataset]
DATASET_LOADERS: dict[str, RawLoader] = {}


LoaderT = TypeVar("LoaderT", bound=RawLoader)


def register_dataset(name: str) -> Callable[[LoaderT], LoaderT]:
    """Register ``loader(data_dir | None) -> RawDataset`` under ``name`` (a decorator)."""

    def add(loader: LoaderT) -> LoaderT:
        if name in DATASET_LOADERS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASET_LOADERS[name] = loader
        return loader

    return add


def get_loader(name: str) -> RawLoader:
    """The registered loader for ``name``; an unknown name raises ValueError listing the known."""
    try:
        return DATASET_LOADERS[name]
    except KeyError:
        known = ", ".join(sorted(DATASET_LOADERS))
        raise ValueError(f"unknown dataset {name!r}; known: {known}") from None
