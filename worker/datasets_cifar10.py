"""CIFAR-10 from the batches of its python version (``cifar-10-batches-py``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from worker.datasets_base import DatasetError, RawDataset, Uint8Array, register_dataset

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = Path.home() / ".cache" / "nas-service" / "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
_NUM_CLASSES = 10
_PIXELS = 3 * 32 * 32
# The batches are pickles; only what a pickled numpy array needs may be reconstructed, so a
# hostile file cannot run code while it is read.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes as written by Python 3 with protocol 2
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[Uint8Array, np.ndarray]:
    """One batch file: images (N, 3, 32, 32) uint8 and int64 labels; DatasetError if corrupt."""
    try:
        with path.open("rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise nearly anything
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: want a dict with b'data' and "
                           f"b'labels'")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: data is {data.dtype} {data.shape}, "
                           f"want uint8 (N, {_PIXELS})")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: {labels.shape} labels for "
                           f"{len(data)} images")
    if len(labels) and not 0 <= labels.min() <= labels.max() < _NUM_CLASSES:
        raise DatasetError(f"corrupt CIFAR-10 batch {path}: labels must lie in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _batch_dir(data_dir: Path) -> Path:
    # Accept both the extracted folder and the folder the tarball was extracted into.
    nested = data_dir / "cifar-10-batches-py"
    return nested if not (data_dir / CIFAR10_TEST_BATCH).exists() and nested.is_dir() else data_dir


@register_dataset("cifar10")
def load_cifar10(data_dir: Path | None = None) -> RawDataset:
    """CIFAR-10 (50000 train, 10000 test, 3x32x32) from ``data_dir`` or the user cache.

    ``data_dir`` is ``cifar-10-batches-py`` (or the folder holding it) as extracted from
    the python-version tarball.
    """
    directory = _batch_dir(Path(data_dir) if data_dir is not None else CIFAR10_DIR)
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR-10 not found in {directory}: missing {', '.join(missing)}. Download the "
            f"python version {CIFAR10_URL}, extract it (tar xzf cifar-10-python.tar.gz) and "
            f"pass --data-dir DIR for the cifar-10-batches-py folder it makes (default "
            f"{CIFAR10_DIR})")
    train = [read_batch(directory / n) for n in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = read_batch(directory / CIFAR10_TEST_BATCH)
    return RawDataset("cifar10", np.concatenate([b[0] for b in train]),
                      np.concatenate([b[1] for b in train]), test_images, test_labels,
                      _NUM_CLASSES)
