"""Datasets for the smoothing sweep: built in (MNIST-1D, scikit-learn digits) or the user's own.

Every dataset ends up as a :class:`Splits`: four disjoint parts — ``train`` (fit the weights),
``val`` (per-epoch validation metrics), ``cal`` (fit the temperature for temperature scaling) and
``test`` (the reported numbers). The split is drawn once from ``split_seed`` and is the same for
every smoothing factor and every training seed, so the runs differ only in what they should.

Nothing here downloads: MNIST-1D is generated with ``mnist1d.data.make_dataset`` (offline,
deterministic) and digits ships with scikit-learn. Both are optional extras imported lazily.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["BUILTIN_DATASETS", "Splits", "load_dataset", "make_splits"]

#: Names accepted by :func:`load_dataset` besides paths to ``.npz`` / ``.csv`` files.
BUILTIN_DATASETS = ("mnist1d", "digits", "fashion-mnist")

_SPLIT_NAMES = ("train", "val", "cal", "test")

#: How MNIST-1D's 4000 training signals are split into train / val / cal (its 1000 test signals
#: are the test split).
MNIST1D_FRACTIONS = (0.8, 0.1, 0.1, 0.0)


@dataclass(frozen=True)
class Splits:
    """Train / validation / calibration / test tensors of one dataset.

    Features are float32 of shape ``(N, *feature_shape)``; labels are int64 in ``[0, num_classes)``.
    """

    name: str
    num_classes: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_cal: torch.Tensor
    y_cal: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    #: original label of class index ``k`` when labels were remapped to ``0..K-1``, else None
    label_values: tuple[Any, ...] | None = None
    #: clean training labels when ``y_train`` carries label noise (see ``experiments.noise``)
    y_train_clean: torch.Tensor | None = None
    #: what noise was added to ``y_train`` (rate, kind, seed, flipped count), else None
    label_noise: dict[str, Any] | None = None

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's features."""
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        """Number of examples in each split.

        Example:
            >>> s = make_splits(torch.randn(20, 3), torch.arange(20) % 2, fractions=(0.5, 0.2, 0.1, 0.2))
            >>> s.sizes()
            {'train': 10, 'val': 4, 'cal': 2, 'test': 4}
        """
        return {k: int(getattr(self, f"y_{k}").shape[0]) for k in _SPLIT_NAMES}


def _check_labels(
    y: np.ndarray, source: str, num_classes: int | None = None
) -> tuple[np.ndarray, int, tuple[Any, ...] | None]:
    """Class indices ``0..K-1``, ``K`` and the original label of each index (None if unchanged).

    Integer labels that are already ``0..K-1`` with every index present, or that lie in
    ``[0, num_classes)`` when ``num_classes`` is given, are kept. Anything else (``{1, 2}``,
    ``{0, 1000}``, negative numbers, floats, strings) is remapped to ``0..K-1`` in sorted order, so
    no class index is left without examples; the mapping is returned so it can be reported.
    """
    if y.ndim != 1:
        raise ValueError(f"labels from {source} must be 1-D, got shape {tuple(y.shape)}")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        i = int(np.argwhere(~np.isfinite(y))[0][0])
        raise ValueError(f"labels from {source}: label {y[i]} at row {i}; labels must be finite")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"labels from {source} have {len(classes)} distinct value(s) "
            f"({classes.tolist()}); a classifier needs at least 2"
        )
    if np.issubdtype(y.dtype, np.integer) and classes.min() >= 0:
        contiguous = classes.max() == len(classes) - 1
        if num_classes is not None and classes.max() >= num_classes:
            raise ValueError(
                f"num_classes={num_classes} but labels from {source} go up to {classes.max()}; "
                f"give num_classes >= {classes.max() + 1}, or leave it out to map the "
                f"{len(classes)} labels present to 0..{len(classes) - 1}"
            )
        if contiguous or num_classes is not None:
            return y.astype(np.int64), int(classes.max()) + 1, None
    return codes.reshape(-1).astype(np.int64), len(classes), tuple(classes.tolist())


def _check_finite(a: np.ndarray, what: str, source: str) -> None:
    """Refuse NaN or ±inf features, naming the first bad row and column.

    Example:
        >>> _check_finite(np.array([[1.0, 2.0], [3.0, np.nan]]), "x", "my.npz")
        Traceback (most recent call last):
        ...
        ValueError: my.npz: non-finite feature x[1, 1] = nan (row 1, column 1, counting from 0; 1 such value in all); features must be finite numbers
    """
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    where = np.argwhere(bad)
    first = tuple(int(i) for i in where[0])
    col = ", ".join(str(i) for i in first[1:]) if len(first) > 2 else str(first[1])
    idx = ", ".join(str(i) for i in first)
    raise ValueError(
        f"{source}: non-finite feature {what}[{idx}] = {a[first]} (row {first[0]}, column {col}, "
        f"counting from 0; {len(where)} such value{'s' if len(where) > 1 else ''} in all); "
        "features must be finite numbers"
    )


def make_splits(
    x: Any,
    y: Any,
    *,
    x_test: Any = None,
    y_test: Any = None,
    fractions: tuple[float, float, float, float] = (0.6, 0.1, 0.1, 0.2),
    split_seed: int = 0,
    standardize: bool = True,
    name: str = "custom",
    num_classes: int | None = None,
    split: Any = None,
) -> Splits:
    """Split arrays into train / val / cal / test (a seeded permutation) and wrap them in Splits.

    Args:
        x: features, ``(N, ...)``, anything ``numpy.asarray`` accepts.
        y: labels, ``(N,)``; integers that are already ``0..K-1`` (every index present, or all
            below ``num_classes`` when it is given) are kept as class indices; anything else
            (``{1, 2}``, gaps, negative numbers, floats, strings) is mapped to ``0..K-1`` in sorted
            order and the original values are kept in :attr:`Splits.label_values`.
        x_test, y_test: an existing test set; then ``x, y`` are split into train / val / cal only,
            in proportion to the first three ``fractions``.
        fractions: shares of train, val, cal and test (must sum to 1; the last is ignored when
            a test set is given).
        split_seed: seed of the permutation; the same seed gives the same split.
        standardize: centre and scale every feature with the training split's mean and std.
        name: a label for reports.
        num_classes: override the class count (otherwise ``max label + 1``).
        split: the split of every row, marked by the data (``"train"``, ``"val"``, ``"cal"``,
            ``"test"``; see :data:`SPLIT_VALUES` for the accepted spellings) instead of drawn:
            ``train`` and ``test`` rows are required; ``val`` / ``cal`` rows, when none are
            marked, are carved from the ``train`` rows (seeded, in proportion to
            ``fractions``). Not with ``x_test``.

    Returns:
        The :class:`Splits`.

    Example:
        >>> s = make_splits(torch.randn(50, 4), torch.arange(50) % 3, split_seed=1)
        >>> s.num_classes, s.sizes()
        (3, {'train': 30, 'val': 5, 'cal': 5, 'test': 10})
    """
    xa = np.asarray(x.numpy() if isinstance(x, torch.Tensor) else x)
    ya = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
    if len(fractions) != 4 or any(f < 0 for f in fractions):
        raise ValueError(
            f"fractions must be 4 non-negative shares (train, val, cal, test), got {fractions!r}"
        )
    if xa.ndim < 2 or xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"x must be (N, features...) with N matching y; got x {tuple(xa.shape)}, y {tuple(ya.shape)}"
        )
    if not np.issubdtype(xa.dtype, np.number):
        raise ValueError(f"features of {name} must be numeric, got dtype {xa.dtype}")
    _check_finite(xa, "x", name)
    has_test = x_test is not None or y_test is not None
    if split is not None and has_test:
        raise ValueError(f"{name}: give either a split column or x_test/y_test, not both")
    if has_test:
        if x_test is None or y_test is None:
            raise ValueError("give both x_test and y_test, or neither")
        xt = np.asarray(x_test.numpy() if isinstance(x_test, torch.Tensor) else x_test)
        yt = np.asarray(y_test.numpy() if isinstance(y_test, torch.Tensor) else y_test)
        if xt.shape[1:] != xa.shape[1:] or xt.shape[0] != yt.shape[0]:
            raise ValueError(
                f"x_test {tuple(xt.shape)} / y_test {tuple(yt.shape)} do not match x {tuple(xa.shape)}"
            )
        if not np.issubdtype(xt.dtype, np.number):
            raise ValueError(f"test features of {name} must be numeric, got dtype {xt.dtype}")
        _check_finite(xt, "x_test", name)
        all_y, k, label_values = _check_labels(np.concatenate([ya, yt]), name, num_classes)
        ya, yt = all_y[: len(ya)], all_y[len(ya) :]
        shares = np.asarray(fractions[:3], dtype=float)
    else:
        ya, k, label_values = _check_labels(ya, name, num_classes)
        shares = np.asarray(fractions, dtype=float)
    if not np.isclose(np.sum(fractions), 1.0) or shares.sum() <= 0:
        raise ValueError(f"fractions must sum to 1, got {fractions!r}")
    shares = shares / shares.sum()
    n = xa.shape[0]
    if split is not None:
        parts = _marked_parts(split, n, fractions, split_seed, name)
    else:
        perm = np.random.default_rng(split_seed).permutation(n)
        bounds = np.floor(np.cumsum(shares) * n + 1e-9).astype(int)
        bounds[-1] = n
        parts = np.split(perm, bounds[:-1])
    if any(len(p) == 0 for p in parts):
        raise ValueError(
            f"{name}: {n} examples are too few for the split fractions {fractions!r} "
            f"(sizes {[len(p) for p in parts]})"
        )
    xs = [xa[p] for p in parts]
    ys = [ya[p] for p in parts]
    if has_test:
        xs.append(xt)
        ys.append(yt)
    xs = [v.astype(np.float32) for v in xs]
    if standardize:
        mu = xs[0].mean(axis=0, keepdims=True)
        sd = xs[0].std(axis=0, keepdims=True)
        sd = np.where(sd > 1e-8, sd, 1.0)  # constant features (e.g. digits' border pixels) stay 0
        xs = [(v - mu) / sd for v in xs]
    if num_classes is not None:
        if num_classes < k:
            raise ValueError(f"num_classes={num_classes} but labels go up to {k - 1}")
        k = num_classes
    tensors: dict[str, torch.Tensor] = {}
    for split, xv, yv in zip(_SPLIT_NAMES, xs, ys):
        tensors[f"x_{split}"] = torch.from_numpy(np.ascontiguousarray(xv))
        tensors[f"y_{split}"] = torch.from_numpy(np.ascontiguousarray(yv)).long()
    return Splits(name=name, num_classes=int(k), label_values=label_values, **tensors)


#: Values a split column may hold (case-insensitive), and the split each one names.
SPLIT_VALUES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "cal": "cal", "calib": "cal", "calibration": "cal",
    "test": "test",
}


def _marked_parts(
    split: Any, n: int, fractions: tuple[float, float, float, float], seed: int, name: str
) -> list[np.ndarray]:
    """Row indices of train / val / cal / test from a per-row split marking.

    Example:
        >>> parts = _marked_parts(["train"] * 6 + ["test"] * 2, 8, (0.5, 0.25, 0.25, 0.0), 0, "d")
        >>> [len(p) for p in parts], parts[3].tolist()  # val and cal carved from the train rows
        ([3, 1, 2, 2], [6, 7])
    """
    marks = np.asarray(split).reshape(-1)
    if marks.shape[0] != n:
        raise ValueError(f"{name}: the split marking has {marks.shape[0]} rows, the data {n}")
    names = []
    for i, m in enumerate(marks):
        v = SPLIT_VALUES.get(str(m).strip().lower())
        if v is None:
            raise ValueError(
                f"{name}: row {i} has split {str(m)!r}; a split column holds one of "
                f"{sorted(set(SPLIT_VALUES))} (train is trained on; val, cal and test are "
                "assumed clean)"
            )
        names.append(v)
    names_a = np.asarray(names)
    idx = {k: np.flatnonzero(names_a == k) for k in _SPLIT_NAMES}
    for k in ("train", "test"):
        if idx[k].size == 0:
            raise ValueError(f"{name}: the split column marks no {k!r} rows; it needs train and test")
    missing = [k for k in ("val", "cal") if idx[k].size == 0]
    if missing:  # carve the unmarked held-out splits from the train rows, seeded
        share = {"train": fractions[0], "val": fractions[1], "cal": fractions[2]}
        keep = ["train", *missing]
        w = np.asarray([share[k] for k in keep], dtype=float)
        if w.sum() <= 0 or any(share[k] <= 0 for k in missing):
            raise ValueError(f"{name}: fractions {fractions!r} leave no share for {missing}")
        perm = np.random.default_rng(seed).permutation(idx["train"])
        bounds = np.floor(np.cumsum(w / w.sum()) * perm.size + 1e-9).astype(int)
        bounds[-1] = perm.size
        for k, part in zip(keep, np.split(perm, bounds[:-1])):
            idx[k] = part
    return [idx[k] for k in _SPLIT_NAMES]


def _with_clean_labels(source: str, x: Any, y: Any, y_clean: Any, kw: dict[str, Any]) -> Splits:
    """Train on ``y`` (noisy) while validation, calibration and test take ``y_clean``."""
    y_clean = np.asarray(y_clean)
    if y_clean.shape != np.asarray(y).shape:
        raise ValueError(f"{source}: y_clean has shape {y_clean.shape}, y has {np.asarray(y).shape}")
    clean = make_splits(x, y_clean, **kw)
    noisy = make_splits(x, y, **kw)  # the same seeded permutation: the same rows in each split
    if noisy.label_values != clean.label_values or noisy.num_classes != clean.num_classes:
        raise ValueError(
            f"{source}: y and y_clean name different classes; give both as the same label values"
        )
    flipped = int((noisy.y_train != clean.y_train).sum())
    info = {"rate": flipped / max(1, len(clean.y_train)), "kind": "given (y vs y_clean)",
            "flipped": flipped, "clean_splits": ["val", "cal", "test"]}
    return dataclasses.replace(
        clean, y_train=noisy.y_train, y_train_clean=clean.y_train, label_noise=info
    )


def _mnist1d(split_seed: int, num_classes: int | None = None) -> Splits:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "dataset 'mnist1d' needs the mnist1d package: pip install 'labelsmooth[experiments]'"
        ) from e
    # make_dataset reseeds numpy's global RNG; keep the caller's state intact.
    state = np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())  # generated offline; get_dataset() would download
    finally:
        np.random.set_state(state)
    # The canonical 4000/1000 train/test split; the 4000 training signals are split again,
    # seeded by split_seed, into train / val / cal = 80/10/10 (3200/400/400): validation chooses
    # each run's checkpoint and the factor, calibration fits the temperature, the 1000 test
    # signals only report.
    return make_splits(
        d["x"],
        d["y"],
        x_test=d["x_test"],
        y_test=d["y_test"],
        fractions=MNIST1D_FRACTIONS,
        split_seed=split_seed,
        standardize=False,
        name="mnist1d",
        num_classes=num_classes,
    )


def _digits(split_seed: int, num_classes: int | None = None) -> Splits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "dataset 'digits' needs scikit-learn: pip install 'labelsmooth[experiments]'"
        ) from e
    d = load_digits()
    return make_splits(
        d.data, d.target, split_seed=split_seed, name="digits", num_classes=num_classes
    )


def _load_npz(
    path: str,
    split_seed: int,
    fractions: tuple[float, float, float, float],
    num_classes: int | None = None,
) -> Splits:
    try:
        return _read_npz(path, split_seed, fractions, num_classes)
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def _read_npz(
    path: str,
    split_seed: int,
    fractions: tuple[float, float, float, float],
    num_classes: int | None,
) -> Splits:
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        xk = next((k for k in ("x", "X", "features", "data") if k in keys), None)
        yk = next((k for k in ("y", "labels", "label", "target", "targets") if k in keys), None)
        if xk is None or yk is None:
            raise ValueError(
                f"{path}: an .npz dataset needs arrays 'x' (features) and 'y' (labels); "
                f"found {sorted(keys)}"
            )
        x, y = f[xk], f[yk]
        xt = next((f[k] for k in ("x_test", "X_test") if k in keys), None)
        yt = next((f[k] for k in ("y_test", "labels_test") if k in keys), None)
        y_clean = f["y_clean"] if "y_clean" in keys else None
        split = f["split"] if "split" in keys else None
    kw: dict[str, Any] = {
        "x_test": xt, "y_test": yt, "fractions": fractions, "split_seed": split_seed,
        "name": os.path.basename(path), "num_classes": num_classes, "split": split,
    }
    if y_clean is None:
        return make_splits(x, y, **kw)
    # y holds noisy labels and y_clean the clean ones: train on y, keep val/cal/test clean.
    return _with_clean_labels(path, x, y, y_clean, kw)


def _load_csv(
    path: str,
    label_column: str,
    split_seed: int,
    fractions: tuple[float, float, float, float],
    num_classes: int | None = None,
    split_column: str | None = "split",
) -> Splits:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text CSV file ({e})") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None
    if not rows:
        raise ValueError(f"{path}: the CSV file is empty")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise ValueError(
            f"{path}: no label column {label_column!r} in the CSV header {header}; "
            f"name it with --label-column"
        )
    j = header.index(label_column)
    # optional columns that are not features: the split of each row, the clean label
    sj = header.index(split_column) if split_column and split_column in header else None
    clean_name = f"{label_column}_clean"
    cj = header.index(clean_name) if clean_name in header else None
    skip = {n for n in (j, sj, cj) if n is not None}
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if not body:
        raise ValueError(f"{path}: the CSV file has a header but no rows")
    feats, labels, splits_col, clean = [], [], [], []
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise ValueError(f"{path}, line {i}: {len(r)} fields, the header has {len(header)}")
        try:
            vals = [float(c) for n, c in enumerate(r) if n not in skip]
        except ValueError as e:
            raise ValueError(f"{path}, line {i}: non-numeric feature ({e})") from None
        if not all(math.isfinite(v) for v in vals):
            n_bad = next(n for n, c in enumerate(r) if n not in skip and not math.isfinite(float(c)))
            raise ValueError(
                f"{path}, line {i}, column {header[n_bad]!r}: non-finite feature "
                f"{r[n_bad].strip()!r}; features must be finite numbers"
            )
        feats.append(vals)
        labels.append(r[j].strip())
        if sj is not None:
            splits_col.append(r[sj].strip())
        if cj is not None:
            clean.append(r[cj].strip())
    if len(header) - len(skip) < 1:
        raise ValueError(f"{path}: the CSV has only the label column, no features")
    if sj is not None:
        bad = next((n for n, v in enumerate(splits_col) if v.lower() not in SPLIT_VALUES), None)
        if bad is not None:
            raise ValueError(
                f"{path}, line {bad + 2}, column {split_column!r}: split {splits_col[bad]!r}; "
                f"the split column holds one of {sorted(set(SPLIT_VALUES))} (train rows are "
                "trained on; val, cal and test rows are assumed clean)"
            )
    kw: dict[str, Any] = {
        "fractions": fractions, "split_seed": split_seed, "name": os.path.basename(path),
        "num_classes": num_classes, "split": splits_col if sj is not None else None,
    }
    x = np.asarray(feats, dtype=np.float32)
    if cj is not None:
        return _with_clean_labels(path, x, _csv_labels(labels), _csv_labels(clean), kw)
    return make_splits(x, _csv_labels(labels), **kw)


def _csv_labels(labels: list[str]) -> np.ndarray:
    """Numeric labels stay numbers (so ``"2"`` is class 2); others are categories."""
    lab = np.asarray(labels)
    try:
        as_int = lab.astype(np.int64)
        if np.array_equal(as_int.astype(str), lab):
            return as_int
    except ValueError:
        pass
    return lab


def load_dataset(
    name: str,
    *,
    split_seed: int = 0,
    label_column: str = "label",
    fractions: tuple[float, float, float, float] = (0.6, 0.1, 0.1, 0.2),
    num_classes: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    split_column: str | None = "split",
) -> Splits:
    """Load a built-in dataset by name, or the user's own from a ``.npz`` / ``.csv`` path.

    * ``"mnist1d"``: MNIST-1D (4000 + 1000 signals of length 40, 10 classes), generated offline;
      its 1000 test signals are the test split and the 4000 others are split 80/10/10 into
      train / val / cal (seeded by ``split_seed``).
    * ``"digits"``: scikit-learn's 8×8 digits (1797 × 64, 10 classes), standardised.
    * ``"fashion-mnist"``: Fashion-MNIST read from the standard IDX ``.gz`` files in ``data_dir``
      (default ``/usr/share/datasets/fashion-mnist``, Debian package ``dataset-fashion-mnist``):
      a seeded 12,000 / 2,000 / 2,000 train / val / cal subset of the 60,000 training images and
      the official 10,000 test images, shape ``(1, 28, 28)``
      (:mod:`labelsmooth.experiments.fashion`).
    * ``*.npz``: arrays ``x`` and ``y`` (optionally ``x_test`` and ``y_test``). The test arrays
      are assumed clean. If ``y`` is noisy, add ``y_clean`` (the clean labels of the same rows):
      training then uses ``y`` while validation, calibration and test take ``y_clean`` (and
      memorisation is measured); without it, validation and calibration are carved from ``y``
      and are as noisy as it is.
    * ``*.csv``: a header row; the column ``label_column`` holds the labels, every other column a
      numeric feature, except two optional columns:

      - ``split_column`` (default ``split``): the split of each row, ``train``, ``val``
        (or ``valid``/``validation``), ``cal`` (or ``calib``/``calibration``) or ``test``
        (case-insensitive). **Only the train rows may be noisy: val, cal and test rows are
        assumed clean** — validation chooses checkpoints and ε, calibration fits the
        temperature, test reports — so mark your trusted, carefully labelled rows as those.
        Train and test rows are required; when no val or cal rows are marked, they are carved
        from the train rows (seeded by ``split_seed``, in proportion to ``fractions``) and are
        then as noisy as the train rows.
      - ``<label_column>_clean`` (e.g. ``label_clean``): the clean label of each row, as NPZ's
        ``y_clean``: training uses ``label``, validation / calibration / test use the clean one,
        and the report measures memorisation of the train rows whose two labels differ.

      An ``.npz`` may mark its rows the same way with an array ``split``.

    User data is split by ``fractions`` (train, val, cal, test) and standardised with the
    training split's statistics. Non-finite features (NaN, ±inf) are refused, naming the row and
    column. Labels that are not the class indices ``0..K-1`` are mapped to them (the original
    values are in :attr:`Splits.label_values`); with ``num_classes`` given, non-negative integer
    labels below it are kept as they are, so classes without examples keep their index.

    Raises:
        ValueError: unknown name, missing or unreadable file, missing label column, fewer than
            two classes, a non-finite feature, labels beyond ``num_classes``.

    Example:
        >>> load_dataset("imagenet")
        Traceback (most recent call last):
        ...
        ValueError: dataset must be one of ('mnist1d', 'digits', 'fashion-mnist') or a path to a .npz/.csv file, got 'imagenet'
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"dataset must be a name or a path, got {type(name).__name__}")
    name = os.fspath(name)
    key = name.lower()
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
    if key == "mnist1d":
        return _mnist1d(split_seed, num_classes)
    if key == "digits":
        return _digits(split_seed, num_classes)
    if key in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        from labelsmooth.experiments.fashion import load_fashion_mnist

        return load_fashion_mnist(data_dir, split_seed=split_seed, num_classes=num_classes)
    ext = os.path.splitext(key)[1]
    if ext in (".npz", ".csv"):
        if not os.path.isfile(name):
            raise ValueError(f"dataset file {name!r} does not exist")
        if ext == ".npz":
            return _load_npz(name, split_seed, fractions, num_classes)
        return _load_csv(name, label_column, split_seed, fractions, num_classes, split_column)
    raise ValueError(
        f"dataset must be one of {BUILTIN_DATASETS} or a path to a .npz/.csv file, got {name!r}"
    )


def as_splits(
    data: Any, *, split_seed: int = 0, label_column: str = "label", num_classes: int | None = None
) -> Splits:
    """Coerce what the sweep API accepts into :class:`Splits`.

    ``data`` may be a :class:`Splits`, a dataset name or path (see :func:`load_dataset`), a
    tuple ``(x, y)`` or ``(x, y, x_test, y_test)``, or a mapping with keys ``x``, ``y`` and
    optionally ``x_test``, ``y_test``.

    Example:
        >>> as_splits((torch.randn(40, 2), torch.arange(40) % 2)).sizes()["train"]
        24
    """
    if isinstance(data, Splits):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(
            data, split_seed=split_seed, label_column=label_column, num_classes=num_classes
        )
    if isinstance(data, Mapping):
        if "x" not in data or "y" not in data:
            raise ValueError(f"a data mapping needs keys 'x' and 'y', got {sorted(data)}")
        return make_splits(
            data["x"],
            data["y"],
            x_test=data.get("x_test"),
            y_test=data.get("y_test"),
            split_seed=split_seed,
            num_classes=num_classes,
        )
    if isinstance(data, tuple) and len(data) in (2, 4):
        return make_splits(
            *data[:2],
            x_test=data[2] if len(data) == 4 else None,
            y_test=data[3] if len(data) == 4 else None,
            split_seed=split_seed,
            num_classes=num_classes,
        )
    raise TypeError(
        "data must be Splits, a dataset name or path, (x, y), (x, y, x_test, y_test) or a "
        f"mapping with 'x' and 'y'; got {type(data).__name__}"
    )
