"""Fashion-MNIST from its idx files (gzip-compressed or not), as installed by Debian."""

from __future__ import annotations

import functools
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from worker.datasets_base import DatasetError, RawDataset, Uint8Array, register_dataset

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_UBYTE = 0x08
_NUM_CLASSES = 10


def read_idx(path: Path, ndim: int) -> Uint8Array:
    """Read an unsigned-byte idx file of ``ndim`` dimensions (gzip if it ends in .gz).

    The header is four bytes ``0 0 0x08 ndim`` followed by ``ndim`` big-endian uint32 sizes;
    any mismatch, a short or long body, or a broken gzip stream raises DatasetError naming it.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"cannot read idx file {path}: {exc}") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"corrupt idx file {path}: {len(raw)} bytes, shorter than its header")
    zero1, zero2, dtype, dims = raw[0], raw[1], raw[2], raw[3]
    if (zero1, zero2, dtype, dims) != (0, 0, _UBYTE, ndim):
        raise DatasetError(f"corrupt idx file {path}: magic {raw[:4].hex()}, expected "
                           f"0000{_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise DatasetError(f"corrupt idx file {path}: header says {shape} = {math.prod(shape)} "
                           f"bytes of data, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_files(directory: Path) -> list[Path]:
    found: list[Path] = []
    missing: list[str] = []
    for stem in FASHION_MNIST_FILES:
        candidates = [directory / f"{stem}.gz", directory / stem]
        present = [p for p in candidates if p.is_file()]
        if present:
            found.append(present[0])
        else:
            missing.append(f"{stem}.gz")
    if missing:
        raise DatasetError(
            f"Fashion-MNIST not found in {directory}: missing {', '.join(missing)}. Install "
            f"Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist, it fills "
            f"{FASHION_MNIST_DIR}) or pass --data-dir DIR holding "
            f"{', '.join(s + '.gz' for s in FASHION_MNIST_FILES)} (or the same names unzipped)")
    return found


def _read_pair(images_path: Path, labels_path: Path) -> tuple[Uint8Array, np.ndarray]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise DatasetError(f"corrupt Fashion-MNIST: {images_path} holds {len(images)} images "
                           f"but {labels_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= _NUM_CLASSES:
        raise DatasetError(f"corrupt idx file {labels_path}: label {labels.max()} is not in 0..9")
    return images[:, None, :, :], labels


@functools.lru_cache(maxsize=2)
def _load_files(paths: tuple[Path, ...], stamps: tuple[tuple[int, int], ...]) -> RawDataset:
    del stamps  # part of the cache key only: a changed file is read again
    train_images, train_labels = _read_pair(paths[0], paths[1])
    test_images, test_labels = _read_pair(paths[2], paths[3])
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DatasetError(f"corrupt Fashion-MNIST: {paths[0]} holds images of "
                           f"{train_images.shape[2:]}, {paths[2]} of {test_images.shape[2:]}")
    return RawDataset("fashion-mnist", train_images, train_labels, test_images, test_labels,
                      _NUM_CLASSES)


@register_dataset("fashion-mnist")
def load_fashion_mnist(data_dir: Path | None = None) -> RawDataset:
    """Fashion-MNIST (60000 train, 10000 test, 1x28x28) from ``data_dir`` or the Debian path.

    Parsed files are cached per process, keyed by path, size and modification time.
    """
    paths = tuple(_find_files(Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR))
    stamps = tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load_files(paths, stamps)
