"""Fashion-MNIST from the standard IDX files, read with numpy only (no torchvision, no download).

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence) has 60,000 training and 10,000 test
grey-scale images of 28×28 pixels in 10 clothing classes. The four files are the ones torchvision
and Keras download (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``); Debian ships them in the package
``dataset-fashion-mnist`` under ``/usr/share/datasets/fashion-mnist/``. Uncompressed copies (the
same names without ``.gz``) are read too.

**IDX format.** A big-endian header: two zero bytes, a type code (``0x08`` = unsigned byte), the
number of dimensions ``d``, then ``d`` uint32 sizes; the data follow in C order. Images have the
magic number ``0x00000803`` (3 dimensions: N, 28, 28), labels ``0x00000801`` (1 dimension: N).
:func:`read_idx` checks the magic number, the sizes against the file length, and
:func:`load_fashion_mnist` checks the shapes and that labels lie in ``0..9``.

**The sweep's subset** (:data:`FASHION_SUBSET`). To keep one run near a minute on 2 cores, the
sweep trains on a seeded subset of the 60,000 training images: 12,000 train, 2,000 validation and
2,000 calibration images, drawn without overlap by ``split_seed``. The test split is the full
official 10,000-image test set. Pixels are scaled to ``[0, 1]`` and normalised with the training
set's published mean and std (0.2860, 0.3530), the same for every split. Features have shape
``(1, 28, 28)``: the ``mlp`` model flattens them, the ``cnn`` model is a small 2-D CNN
(:class:`labelsmooth.experiments.models.CNN2d`).

**References** (full training set): an MLP 256-128-100 reaches 0.883 test accuracy and small CNNs
0.876–0.925 (Xiao et al. 2017 and the dataset's benchmark table). A scikit-learn MLP on a
10k-image subset reached 0.857–0.861 here.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Any

import numpy as np

__all__ = [
    "FASHION_CLASSES",
    "FASHION_DIR",
    "FASHION_FILES",
    "FASHION_PACKAGE",
    "FASHION_SUBSET",
    "find_fashion_files",
    "load_fashion_mnist",
    "read_idx",
]

#: Where Debian's ``dataset-fashion-mnist`` puts the files.
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
#: The Debian package holding the files.
FASHION_PACKAGE = "dataset-fashion-mnist"
#: The four standard file names, by role.
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
#: Class names in label order.
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Sizes of the sweep's train / val / cal subset of the 60,000 training images (test: all 10,000).
FASHION_SUBSET = {"train": 12000, "val": 2000, "cal": 2000}
#: Mean and std of the training images' pixels scaled to [0, 1] (published values).
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530

_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str, *, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed) into a numpy array.

    Args:
        path: the file.
        expect_magic: the magic number it must have (``0x803`` images, ``0x801`` labels), or None
            to accept any valid IDX header.

    Raises:
        ValueError: not an IDX file, another magic number, or a length that does not match the
            header's sizes (a truncated or damaged file).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "l.idx")
        >>> with open(p, "wb") as fh:
        ...     _ = fh.write(struct.pack(">IIBBB", 0x801, 3, 7, 0, 9))
        >>> read_idx(p, expect_magic=0x801).tolist()
        [7, 0, 9]
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a readable IDX file ({type(e).__name__}: {e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    magic = struct.unpack(">I", raw[:4])[0]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: magic number 0x{magic:08x} is not an IDX header")
    if expect_magic is not None and magic != expect_magic:
        raise ValueError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{expect_magic:08x} "
            f"({'images' if expect_magic == _MAGIC['images'] else 'labels'})"
        )
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: header cut short ({len(raw)} bytes, {head} needed)")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    dtype = _IDX_DTYPES[code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - head != need:
        raise ValueError(
            f"{path}: {len(raw) - head} data bytes, the header's sizes {dims} need {need} "
            "(truncated or damaged file)"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=head).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def find_fashion_files(data_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Paths of the four files in ``data_dir`` (default :data:`FASHION_DIR`).

    Each file may be gzipped (the standard name) or not (the name without ``.gz``).

    Raises:
        ValueError: files missing; the message names them, the directory and the package.
    """
    d = os.fspath(data_dir) if data_dir is not None else FASHION_DIR
    found, missing = {}, []
    for role, name in FASHION_FILES.items():
        for cand in (name, name[: -len(".gz")]):
            p = os.path.join(d, cand)
            if os.path.isfile(p):
                found[role] = p
                break
        else:
            missing.append(name)
    if missing:
        hint = (
            f"install the Debian package {FASHION_PACKAGE} (apt-get install {FASHION_PACKAGE}, "
            f"files in {FASHION_DIR}) or pass --data-dir (data_dir=) with the standard IDX files"
        )
        raise ValueError(
            f"Fashion-MNIST: missing {', '.join(missing)} in {d}; {hint}"
        )
    return found


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split_seed: int = 0,
    subset: dict[str, int] | None = None,
    num_classes: int | None = None,
) -> Any:
    """Fashion-MNIST as :class:`~labelsmooth.experiments.data.Splits` (see the module docstring).

    Args:
        data_dir: directory of the IDX files (default :data:`FASHION_DIR`).
        split_seed: seed of the train / val / cal draw from the 60,000 training images.
        subset: sizes ``{"train", "val", "cal"}`` (default :data:`FASHION_SUBSET`); their sum
            must not exceed the number of training images.
        num_classes: class count override (at least 10).

    Raises:
        ValueError: files missing (names them and the package), a damaged file, shapes that are
            not ``(N, 28, 28)`` / ``(N,)`` with matching ``N``, labels outside ``0..9``, or a
            subset larger than the training set.
    """
    from labelsmooth.experiments.data import make_splits

    files = find_fashion_files(data_dir)
    xtr = read_idx(files["train_images"], expect_magic=_MAGIC["images"])
    ytr = read_idx(files["train_labels"], expect_magic=_MAGIC["labels"])
    xte = read_idx(files["test_images"], expect_magic=_MAGIC["images"])
    yte = read_idx(files["test_labels"], expect_magic=_MAGIC["labels"])
    for what, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise ValueError(f"Fashion-MNIST {what} images have shape {x.shape}, expected (N, 28, 28)")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"Fashion-MNIST {what} labels have shape {y.shape}, expected ({x.shape[0]},)"
            )
        if y.size and (int(y.min()) < 0 or int(y.max()) > 9):
            raise ValueError(
                f"Fashion-MNIST {what} labels lie in [{int(y.min())}, {int(y.max())}], expected 0..9"
            )
    sizes = dict(FASHION_SUBSET if subset is None else subset)
    if set(sizes) != {"train", "val", "cal"} or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes.values()
    ):
        raise ValueError(
            f"subset must give positive int sizes for 'train', 'val' and 'cal', got {subset!r}"
        )
    n = sum(sizes.values())
    if n > xtr.shape[0]:
        raise ValueError(
            f"subset sizes {sizes} sum to {n}, more than the {xtr.shape[0]} training images"
        )
    pick = np.random.default_rng(split_seed).permutation(xtr.shape[0])[:n]

    def prep(x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float32) / 255.0 - FASHION_MEAN) / FASHION_STD)[:, None, :, :]

    return make_splits(
        prep(xtr[pick]),
        ytr[pick].astype(np.int64),
        x_test=prep(xte),
        y_test=yte.astype(np.int64),
        fractions=(sizes["train"] / n, sizes["val"] / n, sizes["cal"] / n, 0.0),
        split_seed=split_seed,
        standardize=False,
        name="fashion-mnist",
        num_classes=10 if num_classes is None else num_classes,
    )
