"""Dataset loading: the IDX reader, the digits split, and what a missing dataset says."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from testbed.data import DEFAULT_FASHION_MNIST, load_dataset, load_digits, load_fashion_mnist, read_idx
from testbed.errors import DatasetError


def write_idx(path: Path, arr: np.ndarray, *, compress: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.gz" if compress else "a")
    write_idx(p, arr, compress=compress)
    np.testing.assert_array_equal(read_idx(p), arr)


def test_idx_garbage_and_short_body_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"not an idx file")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    arr = np.zeros((2, 2), dtype=np.uint8)
    write_idx(tmp_path / "short", arr, compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DatasetError, match="expected 4"):
        read_idx(tmp_path / "short")


def test_missing_fashion_mnist_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_from_idx_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for stem, shape in (("train-images-idx3-ubyte", (6, 28, 28)), ("train-labels-idx1-ubyte", (6,)),
                        ("t10k-images-idx3-ubyte", (3, 28, 28)), ("t10k-labels-idx1-ubyte", (3,))):
        write_idx(tmp_path / f"{stem}.gz", rng.integers(0, 10, size=shape), compress=True)
    ds = load_fashion_mnist(tmp_path)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.x_train.max() <= 1.0 and ds.y_test.shape == (3,) and len(ds.classes) == 10


@pytest.mark.skipif(not (DEFAULT_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist not installed")
def test_installed_fashion_mnist_has_the_standard_split() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.y_test).tolist() == [1000] * 10


def test_digits_split_is_deterministic_and_disjoint() -> None:
    a, b = load_digits(seed=1), load_digits(seed=1)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert len(a.y_train) + len(a.y_test) == 1797
    with pytest.raises(DatasetError, match="expected one of fashion-mnist, digits"):
        load_dataset("cifar")
