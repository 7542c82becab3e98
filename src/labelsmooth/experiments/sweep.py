"""Train the same model at every smoothing factor × seed, save each run atomically, summarise.

Layout of the output directory::

    out/
      config.json            the resolved configuration of the sweep
      runs/eps0.1_seed0.json one finished run (written last, atomically: its presence = done)
      runs/eps0.1_seed0.npz  its test logits and penultimate-layer projection
      results.json           all runs + mean ± std per factor
      results.csv            a row per run, then mean and std rows per factor
      history.csv            per-epoch logs of every run
      report.md, report.html, *.png   (see :mod:`labelsmooth.experiments.report`)

Re-running with the same configuration skips finished runs; Ctrl-C loses only the run in
progress.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import inspect
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from labelsmooth.experiments.data import Splits, as_splits
from labelsmooth.experiments.executor import (
    RunJob,
    RunProgress,
    RunTask,
    check_device,
    check_executor,
    make_runner,
    with_costs,
)
from labelsmooth.experiments.models import build_model
from labelsmooth.experiments.rundir import (
    DamagedRunError,
    DirectoryLock,
    atomic_write,
    check_record,
    prepare_out_dir,
    read_arrays,
    read_record,
    read_run,
    write_json,
    write_npz,
)
from labelsmooth.experiments.train import TrainSettings, recipe_for, train_run
from labelsmooth.experiments.verdict import Verdict, bootstrap_intervals, verdict

__all__ = [
    "DEFAULT_SMOOTHING",
    "SweepResult",
    "flatten_run",
    "load_runs",
    "results_json",
    "summarize",
    "sweep",
]

#: Smoothing factors of the default sweep.
DEFAULT_SMOOTHING = (0.0, 0.05, 0.1, 0.2, 0.5)


@dataclass
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
        config: the resolved configuration (JSON-serialisable).
        runs: one record per finished run (see :func:`labelsmooth.experiments.train.train_run`).
        rows: the flat per-run metrics (one dict per run, the rows of ``results.csv``).
        summary: mean and std over seeds per smoothing factor.
        arrays: per run key, the saved arrays (test logits, projections).
        out: the output directory, or None when nothing was written.
        paths: the files written (name → path).
        complete: False when the sweep was interrupted.
        reused: how many runs were read back from ``out`` instead of trained.
        notes: what the sweep noted on the way (remapped labels, runs trained again, ...).
        verdict: the judged claims (:func:`labelsmooth.experiments.verdict.verdict`), None
            without runs.
    """

    config: dict[str, Any]
    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    out: str | None = None
    paths: dict[str, str] = field(default_factory=dict)
    complete: bool = True
    reused: int = 0
    notes: list[str] = field(default_factory=list)
    verdict: Verdict | None = None


def run_key(smoothing: float, seed: int) -> str:
    """File stem of one run, e.g. ``eps0.05_seed2``.

    The factor is written with ``{:g}`` when that reads back as the same float (the usual case),
    else with its full ``repr``, so two distinct factors never share a key.

    Example:
        >>> run_key(0.05, 2), run_key(0.0, 0), run_key(0.1234561, 1)
        ('eps0.05_seed2', 'eps0_seed0', 'eps0.1234561_seed1')
    """
    short = f"{smoothing:g}"
    return f"eps{short if float(short) == smoothing else repr(float(smoothing))}_seed{seed}"


# File writing lives in rundir.py; these names stay importable from here.
_atomic_write = atomic_write
_write_npz = write_npz


def _data_fingerprint(splits: Splits) -> str:
    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_val", "y_val", "x_cal", "y_cal", "x_test", "y_test"):
        h.update(getattr(splits, name).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def flatten_run(record: dict[str, Any]) -> dict[str, Any]:
    """The flat row of ``results.csv`` for one run record.

    Everything is measured on the run's kept checkpoint (lowest validation NLL):
    ``selected_epoch``/``epochs_run``, ``test_*`` (as trained), ``temperature`` and ``ts_*``
    (after temperature scaling), ``nll_calibration`` (``test_nll − ts_nll``; ``ts_nll`` is the
    refinement part), ``val_*``, ``train_*`` (training split in evaluation mode: hard-label
    ``train_nll``, ``train_accuracy``, smoothed ``train_loss``), the entropy floor, the cluster
    spreads and the training time. Records written before checkpoint selection existed fall
    back to their last epoch.

    Example:
        >>> rec = {"smoothing": 0.1, "seed": 0, "entropy_floor": 0.5, "temperature": 0.9,
        ...        "train_seconds": 1.0, "test": {"ece": 0.02, "nll": 1.0},
        ...        "temperature_scaled": {"ece": 0.01, "nll": 0.9}, "selected_epoch": 1,
        ...        "history": [{"epoch": 1, "train_loss": 0.7, "val_nll": 1.0}]}
        >>> r = flatten_run(rec)
        >>> r["ts_ece"], r["train_loss"], r["selected_epoch"], round(r["nll_calibration"], 3)
        (0.01, 0.7, 1, 0.1)
    """
    row: dict[str, Any] = {"smoothing": record["smoothing"], "seed": record["seed"]}
    hist = record.get("history") or [{}]
    sel = record.get("selected_epoch", len(hist))
    row["selected_epoch"] = sel
    row["epochs_run"] = record.get("epochs_run", len(hist))
    for k, v in record["test"].items():
        row[f"test_{k}"] = v
    row["temperature"] = record["temperature"]
    for k, v in record["temperature_scaled"].items():
        row[f"ts_{k}"] = v
    if "nll" in record["test"] and "nll" in record["temperature_scaled"]:
        row["nll_calibration"] = record["test"]["nll"] - record["temperature_scaled"]["nll"]
    kept = next((h for h in hist if h.get("epoch") == sel), hist[-1])
    val = record.get("val") or {
        k[4:]: v for k, v in kept.items() if k.startswith("val_")
    }
    for k, v in val.items():
        row[f"val_{k}"] = v
    train = record.get("train") or {
        "loss": kept.get("train_loss"),
        "nll": kept.get("train_nll"),
        "accuracy": kept.get("train_accuracy"),
    }
    for k, v in train.items():
        row[f"train_{k}"] = v
    row["entropy_floor"] = record["entropy_floor"]
    for part in ("train", "test"):
        if f"cluster_spread_{part}" in record:
            row[f"cluster_spread_{part}"] = record[f"cluster_spread_{part}"]
    for k, v in (record.get("memorisation") or {}).items():  # label noise (noise.py)
        row[f"memo_{k}"] = v
    student = record.get("student")
    if isinstance(student, dict):  # distillation (distill.py): the student of this teacher
        for k, v in (student.get("test") or {}).items():
            row[f"student_test_{k}"] = v
        row["student_val_nll"] = student.get("val_nll")
        row["student_selected_epoch"] = student.get("selected_epoch")
    row["train_seconds"] = record["train_seconds"]
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1; 0 for one seed) of every metric, per smoothing factor.

    Returns one dict per factor, sorted by factor, with ``smoothing``, ``n_seeds`` and
    ``<metric>_mean`` / ``<metric>_std``.

    Example:
        >>> s = summarize([{"smoothing": 0.1, "seed": 0, "test_ece": 0.02},
        ...                {"smoothing": 0.1, "seed": 1, "test_ece": 0.04}])
        >>> s[0]["n_seeds"], round(s[0]["test_ece_mean"], 3), round(s[0]["test_ece_std"], 4)
        (2, 0.03, 0.0141)
    """
    by: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(float(r["smoothing"]), []).append(r)
    out = []
    for eps in sorted(by):
        group = by[eps]
        entry: dict[str, Any] = {"smoothing": eps, "n_seeds": len(group)}
        keys = [k for k in group[0] if k not in ("smoothing", "seed")]
        for k in keys:
            vals = np.array([g[k] for g in group if g.get(k) is not None], dtype=float)
            if vals.size == 0:
                continue
            entry[f"{k}_mean"] = float(vals.mean())
            entry[f"{k}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else 0.0
        out.append(entry)
    return out


def _judge(
    config: dict[str, Any],
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    arrays: dict[str, dict[str, np.ndarray]],
    settings: TrainSettings,
) -> Verdict:
    """The verdict of the finished runs, with the paired test-set bootstrap attached."""
    boot = bootstrap_intervals(
        records, arrays, n_resamples=settings.n_bootstrap, n_bins=settings.n_bins
    )
    return verdict(rows, config, select_on=tuple(config.get("select_on", ("nll",))),
                   bootstrap=boot)


def results_json(result: SweepResult) -> dict[str, Any]:
    """The content of ``results.json``: configuration, ``verdict`` (a list of ``{"claim",
    "status", ...}``), ``selection`` (``{"split": "val", "metric", "best_smoothing", ...}``),
    ``scope``, paired ``comparisons``, per-factor ``summary`` and every run (each with its
    ``selected_epoch``)."""
    out: dict[str, Any] = {"config": result.config}
    if result.verdict is not None:
        v = result.verdict.as_dict()
        out["verdict"] = v["verdict"]
        out["selection"] = v["selection"]
        out["selections"] = v["selections"]
        out["scope"] = v["scope"]
        out["comparisons"] = v["comparisons"]
        out["factors"] = v["factors"]
    out["summary"] = result.summary
    out["runs"] = result.runs
    return out


def write_csv(path: str, rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> None:
    """A row per run (``kind=run``), then a ``mean`` and a ``std`` row per factor."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols and k not in ("smoothing", "seed")]
    header = ["kind", "smoothing", "seed", *cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def fmt(v: Any) -> Any:
        return f"{v:.6g}" if isinstance(v, float) else v

    for r in rows:
        w.writerow(["run", fmt(r["smoothing"]), r["seed"], *[fmt(r.get(c, "")) for c in cols]])
    for s in summary:
        for stat in ("mean", "std"):
            w.writerow(
                [
                    stat,
                    fmt(s["smoothing"]),
                    f"n={s['n_seeds']}",
                    *[fmt(s.get(f"{c}_{stat}", "")) for c in cols],
                ]
            )
    _atomic_write(path, buf.getvalue().encode())


def write_history_csv(path: str, records: Sequence[dict[str, Any]]) -> None:
    """Per-epoch logs of every run: a row per (smoothing, seed, epoch)."""
    cols: list[str] = []
    for r in records:
        for h in r["history"]:
            cols += [k for k in h if k not in cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["smoothing", "seed", *cols])
    for r in records:
        for h in r["history"]:
            w.writerow(
                [f"{r['smoothing']:g}", r["seed"]]
                + [f"{h[c]:.6g}" if isinstance(h.get(c), float) else h.get(c, "") for c in cols]
            )
    _atomic_write(path, buf.getvalue().encode())


def load_runs(out: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Read every finished run (records and arrays) from ``out/runs``.

    A damaged run file (invalid JSON, not a run record, a missing or truncated ``.npz``) is
    skipped with a ``UserWarning`` naming it; re-running the sweep trains that run again.
    """
    runs_dir = os.path.join(out, "runs")
    records, arrays = [], {}
    if not os.path.isdir(runs_dir):
        return records, arrays
    for name in sorted(os.listdir(runs_dir)):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            rec, arr = read_run(os.path.join(runs_dir, name), check=flatten_run)
        except DamagedRunError as e:
            warnings.warn(
                f"skipping a damaged run file: {e}; re-run the sweep to train that run again",
                stacklevel=2,
            )
            continue
        records.append(rec)
        arrays[name[:-5]] = arr
    records.sort(key=lambda r: (r["smoothing"], r["seed"]))
    return records, arrays


class BuiltinModel:
    """A picklable zero-argument builder of a built-in model (so worker processes can use it)."""

    def __init__(
        self, name: str, feature_shape: Sequence[int], num_classes: int, dropout: float = 0.0
    ) -> None:
        self.name = name
        self.feature_shape = tuple(feature_shape)
        self.num_classes = num_classes
        self.dropout = dropout

    def __call__(self) -> nn.Module:
        return build_model(self.name, self.feature_shape, self.num_classes, dropout=self.dropout)


class ShapedModelFn:
    """``fn(feature_shape, num_classes)`` as a zero-argument builder; picklable when ``fn`` is."""

    def __init__(self, fn: Callable[..., nn.Module], feature_shape: Sequence[int], k: int) -> None:
        self.fn = fn
        self.feature_shape = tuple(feature_shape)
        self.num_classes = k

    def __call__(self) -> nn.Module:
        return self.fn(self.feature_shape, self.num_classes)


def _resolve_model_fn(
    model_fn: Any, model: str, splits: Splits, dropout: float = 0.0
) -> tuple[Callable[[], nn.Module], str]:
    if model_fn is None:
        build_model(model, splits.feature_shape, splits.num_classes)  # validate the name early
        return BuiltinModel(model, splits.feature_shape, splits.num_classes, dropout), model
    if not callable(model_fn):
        raise TypeError(f"model_fn must be callable, got {type(model_fn).__name__}")
    name = getattr(model_fn, "__qualname__", type(model_fn).__name__)
    try:
        required = [
            p
            for p in inspect.signature(model_fn).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # builtins without a signature
        required = []
    if len(required) == 2:
        return ShapedModelFn(model_fn, splits.feature_shape, splits.num_classes), name
    if required:
        raise TypeError(
            f"model_fn must take no arguments or (feature_shape, num_classes); {name} takes "
            f"{[p.name for p in required]}"
        )
    return model_fn, name


def _check_smoothing_list(smoothing: Any) -> list[float]:
    if isinstance(smoothing, (int, float)):
        smoothing = [smoothing]
    vals = []
    for s in smoothing:
        if (
            isinstance(s, bool)
            or not isinstance(s, (int, float))
            or not math.isfinite(s)
            or not 0.0 <= s <= 1.0
        ):
            raise ValueError(f"smoothing factors must be numbers in [0, 1], got {s!r}")
        vals.append(float(s))
    if not vals:
        raise ValueError("smoothing must list at least one factor")
    return sorted(set(vals))


def _seed_list(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be a count or a list of ints, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be a count >= 1, got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("seeds must name at least one seed")
    return out


def sweep(
    model_fn: Callable[..., nn.Module] | None = None,
    data: Any = "mnist1d",
    smoothing: Sequence[float] = DEFAULT_SMOOTHING,
    *,
    seeds: int | Sequence[int] | None = None,
    model: str = "mlp",
    settings: TrainSettings | None = None,
    recipe: str | None = "auto",
    select_on: Sequence[str] = ("nll",),
    smoothing_schedule: str = "constant",
    out: str | os.PathLike[str] | None = None,
    split_seed: int = 0,
    threads: int | None = None,
    workers: int | None = 1,
    executor: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
    report: bool = True,
    extra_config: dict[str, Any] | None = None,
    distill: dict[str, Any] | None = None,
    **settings_kwargs: Any,
) -> SweepResult:
    """Train one model per smoothing factor × seed and measure what smoothing did.

    Args:
        model_fn: a callable returning a fresh ``nn.Module`` (logits from a final ``nn.Linear``),
            either with no arguments or as ``model_fn(feature_shape, num_classes)``. None builds
            the built-in ``model``.
        data: a dataset name (``"mnist1d"``, ``"digits"``), a ``.npz``/``.csv`` path, a
            :class:`~labelsmooth.experiments.data.Splits`, ``(x, y)``, ``(x, y, x_test, y_test)``
            or a mapping with those keys.
        smoothing: the factors ε to try (each in ``[0, 1]``).
        seeds: a count (seeds ``0..n-1``) or an explicit list; None: the recipe's (5). Each
            seed is one paired unit: every factor gets the same initialisation and batch order.
        model: the built-in model name when ``model_fn`` is None (``"mlp"`` or ``"cnn"``).
        settings: training settings; or pass them as keywords (``epochs=…``, ``lr=…``), which
            then override the recipe's.
        recipe: ``"auto"`` uses the built-in recipe of (dataset, built-in model) when there is
            one (:data:`labelsmooth.experiments.train.RECIPES`) for the settings not given, and
            records it (with its reference accuracy) in the configuration; None uses
            :class:`~labelsmooth.experiments.train.TrainSettings` defaults and no reference.
            When ``settings`` is given, the recipe only supplies the reference accuracy.
        select_on: validation metrics the factor is chosen on: ``("nll",)``, or
            ``("nll", "ece")`` to report the validation-ECE choice beside it (the claims always
            use the validation-NLL choice).
        smoothing_schedule: how each run's ε moves over its epochs, one of
            :data:`labelsmooth.schedules.NAMES` (:func:`labelsmooth.schedules.named`: the factor
            is the starting value; ``linear``/``cosine`` decay it to 0 over ``epochs``, ``step``
            drops it to 0 at half the epochs).
        out: output directory. With it, every run is saved as it finishes, finished runs are
            skipped on a re-run (a damaged run file is named and that run trained again), and
            ``results.*`` plus the report are written. One sweep at a time: the directory is
            locked while a sweep writes to it. None keeps everything in memory.
        split_seed: seed of the train/val/cal/test split (fixed across runs).
        threads: ``torch.set_num_threads`` during the sweep (restored afterwards); None keeps
            the current setting. With several workers, the threads of each worker (None: 1).
        workers: runs trained at once, each in its own process (``spawn``); 1 (the default)
            trains in this process, None uses one worker per core (1 on an accelerator). The
            numbers equal the serial sweep's with the same thread count. A ``model_fn`` that
            cannot be pickled (a lambda, a closure) runs serially, with a warning; a script
            that calls ``sweep(workers=...)`` at import time needs an
            ``if __name__ == "__main__":`` guard. See :mod:`labelsmooth.experiments.executor`.
        executor: ``"local"`` (this process or ``workers`` processes) or ``"ray"``: the runs
            as Ray tasks, one CPU each (the ``ray`` extra). With Ray, ``workers`` caps the runs
            in flight (None: the cluster's CPUs) and sizes the local instance it starts.
        ray_address: with ``executor="ray"``, a running cluster to use (``"auto"``,
            ``"ray://head:10001"``); None starts a local Ray instance for this sweep (or uses
            the one already initialised in this process).
        progress: show tqdm progress bars (if tqdm is installed).
        report: write ``report.md``/``report.html`` and figures (needs matplotlib and ``out``).
        extra_config: more entries for the saved configuration (e.g. the CLI's own).
        distill: ``{"student": "same"|"mlp-small", "temperature": T}`` makes every run a
            teacher that is then distilled into a student (:mod:`labelsmooth.experiments.distill`;
            built-in models only); the student's test metrics are the ``student_test_*``
            columns and the verdict judges ``smoothed_teachers_distil_worse_students``.

    Returns:
        A :class:`SweepResult`. On Ctrl-C the finished runs are kept (on disk and in the partial
        ``results.*``), worker processes are ended and ``KeyboardInterrupt`` is re-raised.

    Raises:
        ValueError: bad arguments, or ``out`` holds runs of another configuration.
        ImportError: ``report=True`` with ``out`` but matplotlib is missing, or
            ``executor="ray"`` without Ray (checked before any data is loaded).
        labelsmooth.experiments.rundir.SweepLockedError: another sweep is writing to ``out``.
        labelsmooth.experiments.rundir.OutputDirError: ``out`` cannot be written.

    Example:
        >>> data = (torch.randn(80, 6), torch.arange(80) % 2)
        >>> res = sweep(data=data, smoothing=[0.0, 0.1], seeds=1, epochs=2, n_bootstrap=0,
        ...             progress=False, report=False)
        >>> [(r["smoothing"], r["seed"]) for r in res.rows]
        [(0.0, 0), (0.1, 0)]
    """
    factors = _check_smoothing_list(smoothing)
    if isinstance(select_on, str):
        select_on = (select_on,)
    select_on = tuple(select_on)
    if not select_on or select_on[0] != "nll" or any(m not in ("nll", "ece") for m in select_on):
        raise ValueError(
            f"select_on must be ('nll',) or ('nll', 'ece'), got {select_on!r}"
        )
    from labelsmooth.schedules import NAMES as _SCHEDULES

    if smoothing_schedule not in _SCHEDULES:
        raise ValueError(
            f"smoothing_schedule must be one of {_SCHEDULES}, got {smoothing_schedule!r}"
        )
    if recipe not in ("auto", None):
        raise ValueError(f"recipe must be 'auto' or None, got {recipe!r}")
    if settings is not None and settings_kwargs:
        raise TypeError(f"pass either settings or keywords, not both ({sorted(settings_kwargs)})")
    # Everything that can fail for want of a package or a device fails before data or training.
    check_device(settings.device if settings is not None else settings_kwargs.get("device", "cpu"))
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ValueError(f"workers must be a positive int or None (one per core), got {workers!r}")
    check_executor(
        executor,
        ray_address,
        settings.device if settings is not None else settings_kwargs.get("device", "cpu"),
    )
    if report and out is not None:
        require_report_dependencies()
    splits = as_splits(data, split_seed=split_seed)
    notes: list[str] = []
    if getattr(splits, "label_values", None) is not None:
        _note(label_mapping_note(splits), notes)
    rec_obj = recipe_for(splits.name, model) if recipe == "auto" and model_fn is None else None
    if settings is None:
        settings = (
            rec_obj.train_settings(**settings_kwargs)
            if rec_obj is not None
            else TrainSettings(**settings_kwargs)
        )
    seed_list = _seed_list(seeds if seeds is not None else (rec_obj.seeds if rec_obj else 5))
    k = splits.num_classes
    if k >= 3 and any(c >= k for c in settings.proj_classes):
        raise ValueError(
            f"proj_classes must be 3 classes below num_classes={k} for the penultimate-layer "
            f"picture, got {list(settings.proj_classes)}"
        )
    build, model_name = _resolve_model_fn(model_fn, model, splits, settings.dropout)
    train_fn: Callable[..., Any] = train_run
    if smoothing_schedule != "constant":
        train_fn = functools.partial(train_run, smoothing_schedule=smoothing_schedule)
    distill_cfg = None
    if distill is not None:
        from labelsmooth.experiments.distill import distill_train_fn

        if model_fn is not None:
            raise ValueError("distill needs a built-in model (model=...), not model_fn")
        train_fn, distill_cfg = distill_train_fn(
            distill, model, splits, smoothing_schedule=smoothing_schedule
        )
    config: dict[str, Any] = {
        "dataset": splits.name,
        "model": model_name,
        "smoothing": factors,
        "seeds": seed_list,
        "split_seed": split_seed,
        "splits": splits.sizes(),
        "num_classes": splits.num_classes,
        # original label of each class index when the labels were remapped to 0..K-1
        "label_values": (
            None
            if getattr(splits, "label_values", None) is None
            else json.loads(json.dumps(list(splits.label_values), default=str))
        ),
        "feature_shape": list(splits.feature_shape),
        "label_noise": getattr(splits, "label_noise", None),
        "data_fingerprint": _data_fingerprint(splits),
        **settings.as_dict(),
        # the built-in recipe these settings start from and the accuracy it is checked against
        "recipe": rec_obj.as_dict() if rec_obj is not None else None,
        "select_on": list(select_on),
        **({"smoothing_schedule": smoothing_schedule} if smoothing_schedule != "constant" else {}),
        **(extra_config or {}),
    }
    if distill_cfg is not None:
        config["distill"] = distill_cfg
    # Runs are reusable when everything that shapes one run matches: the data, the model and the
    # training settings — not the list of factors or seeds (adding some reuses what is there),
    # nor threads, paths or progress bars.
    identity_keys = [
        "dataset",
        "model",
        "split_seed",
        "splits",
        "num_classes",
        "feature_shape",
        "data_fingerprint",
        *settings.as_dict(),
        *(["distill"] if distill_cfg is not None else []),
        # only when set, so the run directories of constant-ε sweeps keep their fingerprint
        *(["smoothing_schedule"] if smoothing_schedule != "constant" else []),
    ]
    run_identity = {k: config[k] for k in identity_keys}
    fingerprint = hashlib.sha256(
        json.dumps(run_identity, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    config["fingerprint"] = fingerprint

    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    out_dir = os.fspath(out) if out is not None else None
    runs_dir = prepare_out_dir(out_dir) if out_dir is not None else None
    lock = DirectoryLock(out_dir) if out_dir is not None else None
    if lock is not None:
        lock.acquire()  # held until the results and the report are written
    try:
        return _sweep_locked(
            config=config,
            run_identity=run_identity,
            fingerprint=fingerprint,
            factors=factors,
            seed_list=seed_list,
            build=build,
            splits=splits,
            settings=settings,
            out_dir=out_dir,
            runs_dir=runs_dir,
            threads=threads,
            workers=workers,
            executor=executor,
            ray_address=ray_address,
            progress=progress,
            report=report,
            notes=notes,
            train_fn=train_fn,
        )
    finally:
        if lock is not None:
            lock.release()


def _note(message: str, notes: list[str], display: RunProgress | None = None) -> None:
    """Record a note in the result and print it on stderr (above the progress bar if any)."""
    notes.append(message)
    if display is not None:
        display.write(f"note: {message}")
    else:
        print(f"note: {message}", file=sys.stderr, flush=True)


def require_report_dependencies() -> None:
    """Raise ImportError now if the report cannot be drawn (before hours of training).

    Example:
        >>> require_report_dependencies()  # matplotlib is installed here
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"the report needs matplotlib ({e}): pip install 'labelsmooth[experiments]', "
            "or turn the report off (report=False, --no-report)"
        ) from None


def label_mapping_note(splits: Splits) -> str:
    """The note printed when labels were remapped to class indices ``0..K-1``.

    Example:
        >>> from labelsmooth.experiments.data import make_splits
        >>> s = make_splits(torch.randn(30, 2), torch.tensor([0, 1, 5] * 10), name="mine.csv")
        >>> label_mapping_note(s)
        'mine.csv: labels mapped to class indices 0..2 (0→0, 1→1, 5→2); pass num_classes (--num-classes) to keep integer labels as they are, with empty classes'
    """
    values = list(splits.label_values or ())
    shown = ", ".join(f"{v}→{i}" for i, v in enumerate(values[:12]))
    if len(values) > 12:
        shown += f", … ({len(values)} in all)"
    msg = f"{splits.name}: labels mapped to class indices 0..{len(values) - 1} ({shown})"
    if values and all(isinstance(v, int) and v >= 0 for v in values):
        msg += (
            "; pass num_classes (--num-classes) to keep integer labels as they are, with "
            "empty classes"
        )
    return msg


def _sweep_locked(
    *,
    config: dict[str, Any],
    run_identity: dict[str, Any],
    fingerprint: str,
    factors: list[float],
    seed_list: list[int],
    build: Callable[[], nn.Module],
    splits: Splits,
    settings: TrainSettings,
    out_dir: str | None,
    runs_dir: str | None,
    threads: int | None,
    workers: int | None,
    progress: bool,
    report: bool,
    notes: list[str],
    executor: str = "local",
    ray_address: str | None = None,
    train_fn: Callable[..., Any] = train_run,
) -> SweepResult:
    """The body of :func:`sweep` once ``out`` (if any) is locked: resume, run, save, report."""
    records: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    todo: list[RunTask] = []
    redo: list[str] = []
    # Seeds outer, factors inner: after an interruption every factor has the same seeds.
    for seed in seed_list:
        for eps in factors:
            key = run_key(eps, seed)
            path = os.path.join(runs_dir, key + ".json") if runs_dir else None
            if path and os.path.exists(path):
                try:
                    rec = read_record(path)
                except DamagedRunError as e:
                    redo.append(f"{e.path} is damaged ({e.reason}); training run {key} again")
                    todo.append(RunTask(key, eps, seed))
                    continue
                # A run of another configuration is an error, not damage: never overwrite it.
                if rec.get("fingerprint") != fingerprint:
                    theirs = rec.get("identity", {})
                    theirs = theirs if isinstance(theirs, dict) else {}
                    diff = sorted(
                        k
                        for k in set(theirs) | set(run_identity)
                        if theirs.get(k) != json.loads(json.dumps(run_identity.get(k), default=str))
                    )
                    raise ValueError(
                        f"{out_dir} holds run {key} from a different configuration "
                        f"(differs in {diff or 'its fingerprint'}); choose another output "
                        "directory or delete its runs/ folder"
                    )
                if rec.get("smoothing") != eps or rec.get("seed") != seed:
                    raise ValueError(
                        f"{path} holds smoothing={rec.get('smoothing')!r}, "
                        f"seed={rec.get('seed')!r}, expected smoothing={eps!r}, seed={seed!r}; "
                        "delete that file or choose another output directory"
                    )
                try:
                    check_record(path, rec, flatten_run)
                    arr = read_arrays(path[:-5] + ".npz")
                except DamagedRunError as e:
                    redo.append(f"{e.path} is damaged ({e.reason}); training run {key} again")
                    todo.append(RunTask(key, eps, seed))
                    continue
                records[key] = rec
                arrays[key] = arr
            else:
                todo.append(RunTask(key, eps, seed))
    for message in redo:
        _note(message, notes)
    reused = len(records)

    todo = with_costs(todo, records.values())  # reused runs say how long their settings take
    job = RunJob(train_fn=train_fn, build=build, splits=splits, settings=settings)
    runner = make_runner(
        executor,
        workers,
        job,
        len(todo),
        threads=threads,
        ray_address=ray_address,
        warn=lambda m: _note(m, notes),
    )
    if executor == "ray":
        config["executor"] = "ray"
        config["ray_address"] = ray_address
    config["workers"] = runner.workers if runner.workers else workers
    if runs_dir is not None:
        write_json(os.path.join(out_dir, "config.json"), config)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)

    complete = True
    display = RunProgress(len(todo), enabled=progress, reused=reused)

    def on_done(task: RunTask, rec: dict[str, Any], arr: dict[str, np.ndarray]) -> None:
        rec["fingerprint"] = fingerprint
        rec["identity"] = json.loads(json.dumps(run_identity, default=str))
        rec["key"] = task.key
        if runs_dir:
            write_npz(os.path.join(runs_dir, task.key + ".npz"), arr)
            write_json(os.path.join(runs_dir, task.key + ".json"), rec)  # written last: "done"
        records[task.key] = rec
        arrays[task.key] = arr
        display.finished(task)

    try:
        runner.run(
            job,
            todo,
            display.started,
            on_done,
            epoch_progress=lambda task: display.epoch_bar(task, settings.epochs),
        )
    except BaseException:  # Ctrl-C or a crash: what is on disk is an incomplete sweep
        complete = False
        raise
    finally:
        display.close()
        torch.set_num_threads(old_threads)
        ordered = sorted(records.values(), key=lambda r: (r["smoothing"], r["seed"]))
        rows = [flatten_run(r) for r in ordered]
        summary = summarize(rows)
        config["complete"] = complete
        result = SweepResult(
            config=config,
            runs=ordered,
            rows=rows,
            summary=summary,
            arrays=arrays,
            out=out_dir,
            complete=complete,
            reused=reused,
            notes=notes,
            verdict=_judge(config, ordered, rows, arrays, settings) if ordered else None,
        )
        if out_dir is not None and ordered:
            result.paths["results.json"] = os.path.join(out_dir, "results.json")
            write_json(result.paths["results.json"], results_json(result))
            result.paths["results.csv"] = os.path.join(out_dir, "results.csv")
            write_csv(result.paths["results.csv"], rows, summary)
            result.paths["history.csv"] = os.path.join(out_dir, "history.csv")
            write_history_csv(result.paths["history.csv"], ordered)
    if report and out_dir is not None and rows:
        from labelsmooth.experiments.report import write_report

        try:
            result.paths.update(write_report(result))
        except Exception as e:  # the runs and results.* are safe on disk; say so
            raise RuntimeError(
                f"writing the report failed ({type(e).__name__}: {e}); every run and "
                f"results.json/csv are saved in {out_dir}; re-run to retry the report"
            ) from e
    return result
