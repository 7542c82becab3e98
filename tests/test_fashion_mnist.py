"""Fashion-MNIST: the IDX reader on tiny files written here, and the real files when installed."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from labelsmooth.experiments import build_model, load_dataset
from labelsmooth.experiments.fashion import (
    FASHION_DIR,
    FASHION_FILES,
    FASHION_PACKAGE,
    load_fashion_mnist,
    read_idx,
)


def _write_idx(path: str, arr: np.ndarray, magic: int, *, gz: bool = True) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    head = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as fh:
        fh.write(head + arr.tobytes())


def _fake_dir(tmp_path, n_train=60, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = (np.arange(n_train) % 10).astype(np.uint8)
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = (np.arange(n_test) % 10).astype(np.uint8)
    for role, arr, magic in (
        ("train_images", xtr, 0x803),
        ("train_labels", ytr, 0x801),
        ("test_images", xte, 0x803),
        ("test_labels", yte, 0x801),
    ):
        name = FASHION_FILES[role] if gz else FASHION_FILES[role][:-3]
        _write_idx(str(tmp_path / name), arr, magic, gz=gz)
    return xtr, ytr, xte, yte


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = str(tmp_path / "a.gz")
    _write_idx(p, a, 0x803)
    out = read_idx(p, expect_magic=0x803)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, a)
    p2 = str(tmp_path / "b")
    _write_idx(p2, a[0, 0], 0x801, gz=False)
    np.testing.assert_array_equal(read_idx(p2), a[0, 0])


def test_read_idx_rejects_bad_files(tmp_path):
    a = np.zeros((2, 28, 28), np.uint8)
    p = str(tmp_path / "x.gz")
    _write_idx(p, a, 0x803)
    with pytest.raises(ValueError, match="expected 0x00000801"):
        read_idx(p, expect_magic=0x801)
    # truncated: the header says 3 images, the data hold 2
    with gzip.open(p, "wb") as fh:
        fh.write(struct.pack(">IIII", 0x803, 3, 28, 28) + a.tobytes())
    with pytest.raises(ValueError, match="truncated or damaged"):
        read_idx(p)
    with gzip.open(p, "wb") as fh:
        fh.write(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX header"):
        read_idx(p)
    with open(p, "wb") as fh:  # not gzip at all
        fh.write(b"hello")
    with pytest.raises(ValueError, match="not a readable IDX file"):
        read_idx(p)


def test_missing_files_name_package_and_files(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    msg = str(e.value)
    assert FASHION_PACKAGE in msg and str(tmp_path) in msg
    for name in FASHION_FILES.values():
        assert name in msg


def test_load_from_tiny_files(tmp_path):
    xtr, ytr, xte, yte = _fake_dir(tmp_path)
    s = load_fashion_mnist(tmp_path, split_seed=3, subset={"train": 30, "val": 10, "cal": 10})
    assert s.name == "fashion-mnist" and s.num_classes == 10
    assert s.sizes() == {"train": 30, "val": 10, "cal": 10, "test": 20}
    assert s.feature_shape == (1, 28, 28)
    # the test split is the official test set, in order, normalised the same way as train
    np.testing.assert_array_equal(s.y_test.numpy(), yte)
    back = (s.x_test[:, 0].numpy() * 0.3530 + 0.2860) * 255
    np.testing.assert_allclose(back, xte, atol=1e-3)
    # train/val/cal are disjoint training images: recover each from its pixels
    rows = {xtr[i].tobytes(): i for i in range(len(xtr))}
    seen = []
    for split in ("train", "val", "cal"):
        x = getattr(s, f"x_{split}")[:, 0].numpy()
        y = getattr(s, f"y_{split}").numpy()
        for xi, yi in zip(x, y):
            idx = rows[np.rint((xi * 0.3530 + 0.2860) * 255).astype(np.uint8).tobytes()]
            assert ytr[idx] == yi
            seen.append(idx)
    assert len(set(seen)) == 50
    # same seed, same split; uncompressed files read the same
    s2 = load_fashion_mnist(tmp_path, split_seed=3, subset={"train": 30, "val": 10, "cal": 10})
    assert torch.equal(s.x_train, s2.x_train)


def test_uncompressed_files_and_bad_shapes(tmp_path):
    _fake_dir(tmp_path, gz=False)
    s = load_fashion_mnist(tmp_path, subset={"train": 20, "val": 5, "cal": 5})
    assert s.sizes()["test"] == 20
    with pytest.raises(ValueError, match="more than the 60 training images"):
        load_fashion_mnist(tmp_path, subset={"train": 50, "val": 10, "cal": 10})
    # labels of another length than the images
    _write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(59, np.uint8), 0x801, gz=False)
    with pytest.raises(ValueError, match="labels have shape"):
        load_fashion_mnist(tmp_path)
    # labels outside 0..9
    _write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.full(60, 11, np.uint8), 0x801, gz=False)
    with pytest.raises(ValueError, match="expected 0..9"):
        load_fashion_mnist(tmp_path)


def test_builtin_models_take_images():
    x = torch.randn(4, 1, 28, 28)
    for name in ("mlp", "cnn"):
        assert build_model(name, (1, 28, 28), 10)(x).shape == (4, 10)


@pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(FASHION_DIR, f)) for f in FASHION_FILES.values()),
    reason=f"{FASHION_PACKAGE} is not installed (apt-get install {FASHION_PACKAGE})",
)
def test_real_files():
    s = load_dataset("fashion-mnist", split_seed=0)
    assert s.sizes() == {"train": 12000, "val": 2000, "cal": 2000, "test": 10000}
    assert s.feature_shape == (1, 28, 28) and s.num_classes == 10
    # the official test set is balanced: 1000 images per class
    assert torch.bincount(s.y_test, minlength=10).tolist() == [1000] * 10
    # normalised with the training set's published mean and std
    assert abs(float(s.x_train.mean())) < 0.05 and abs(float(s.x_train.std()) - 1.0) < 0.05
