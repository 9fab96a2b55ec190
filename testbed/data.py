"""Datasets the harness trains and evaluates on, as plain numpy arrays.

Holds the Fashion-MNIST IDX reader (the Debian package ``dataset-fashion-mnist`` installs the
files under /usr/share/datasets/fashion-mnist) and scikit-learn's bundled digits set (tiny,
for fast tests). Nothing here downloads anything: a missing file is a DatasetError that says
exactly what to install or which path to pass.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from testbed.errors import DatasetError

DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Dataset:
    """Images as float32 N x 1 x H x W in [0, 1] (normalised later by the model), labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (expected magic 00 00 <type> <ndim>)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise DatasetError(f"{path}: IDX body has {len(body)} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    raise DatasetError(
        f"Fashion-MNIST file {stem}[.gz] not found under {root}; install it with "
        f"'apt-get install dataset-fashion-mnist' or set dataset.path to the folder holding the IDX files")


def load_fashion_mnist(root: Path | None = None) -> Dataset:
    """Load Fashion-MNIST from IDX files (60k train, 10k test, 28x28 grey)."""
    root = Path(root) if root else DEFAULT_FASHION_MNIST
    arrays = {stem: read_idx(_find_idx(root, stem)) for stem in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def images(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0)[:, None, :, :]

    return Dataset(
        name="fashion-mnist",
        x_train=images(arrays["train-images-idx3-ubyte"]),
        y_train=arrays["train-labels-idx1-ubyte"].astype(np.int64),
        x_test=images(arrays["t10k-images-idx3-ubyte"]),
        y_test=arrays["t10k-labels-idx1-ubyte"].astype(np.int64),
        classes=FASHION_CLASSES,
    )


def load_digits(*, seed: int = 0, test_fraction: float = 0.25) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), split deterministically."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DatasetError("the digits dataset needs scikit-learn: pip install 'hbc-testbed[train]'") from exc
    bunch = _sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return Dataset(name="digits", x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
                   classes=tuple(str(i) for i in range(10)))


def load_dataset(name: str, *, path: Path | None = None, seed: int = 0) -> Dataset:
    """Load a dataset by name: ``fashion-mnist`` or ``digits``."""
    if name == "fashion-mnist":
        return load_fashion_mnist(path)
    if name == "digits":
        return load_digits(seed=seed)
    raise DatasetError(f"unknown dataset {name!r}; expected one of fashion-mnist, digits")
