r"""Smoothing and its relatives compared on one testbed: ``labelsmooth sweep --method ...``.

The practitioner's question is rarely "label smoothing, yes or no?" but "smoothing, a confidence
penalty, focal loss, Poly-1, label relaxation — or just temperature scaling — and at which
strength?". This module trains every method at every strength of its grid on the same split,
with the same seeds (one paired unit each: same initialisation, same batch order), the same
training recipe and the same checkpoint rule (lowest validation NLL), and compares them:

1. **Strength, chosen on validation.** For each method, the strength with the lowest mean
   validation NLL over the seeds (the validation split carved from the training data). The test
   split chooses nothing.
2. **Ranking, on validation.** Methods (each at its chosen strength) and the unsmoothed baseline
   are ranked by that mean validation NLL; the report says which split ranked them.
3. **Paired seed-level intervals.** Each chosen method against the baseline as trained and
   against the baseline after temperature scaling (fitted on the separate calibration split), on
   test NLL, ECE, Brier score (and accuracy against the baseline): the mean paired difference over
   seeds, its Student-t 95% interval, Holm-adjusted across the methods compared
   (:mod:`labelsmooth.experiments.stats`). A status is ``better``, ``worse`` or
   ``indistinguishable`` (the Holm-adjusted paired test at 5%), ``inconclusive`` with one seed.

The comparison is data (:func:`compare`); :func:`render_comparison` turns it into words.

Default strength grids (:data:`DEFAULT_GRIDS`): ε ∈ {0.05, 0.1, 0.2, 0.5} (the sweep's default
grid; ε = 0 is the baseline itself); β ∈ {0.1, 0.5, 1} (Pereyra et al. 2017 report β = 0.1 to
2); γ ∈ {1, 2, 3, flsd-53} (Lin et al. 2017; Mukhoti et al. 2020); Poly-1 ε₁ ∈ {1, 2} (the
research notes hold no grid for it: 1 and 2 are the defaults of the public Poly-1
implementations); label relaxation α ∈ {0.05, 0.1} (Lienen & Hüllermeier 2021); margin (MbLS,
opt-in) λ ∈ {0.1} at margin 10 (Liu et al. 2022's defaults).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import labelsmooth
from labelsmooth.experiments import stats as S

__all__ = [
    "DEFAULT_GRIDS",
    "DEFAULT_METHODS",
    "DEFAULT_SEEDS",
    "METHODS",
    "Method",
    "MethodComparison",
    "compare",
    "compare_methods",
    "parse_grid",
    "render_comparison",
    "train_method_run",
]

#: every method the comparison knows (``baseline`` is always trained and is not listed here)
METHODS = ("ls", "confidence_penalty", "focal", "poly", "label_relaxation", "margin")
#: the methods of ``labelsmooth sweep --method`` given without names
DEFAULT_METHODS = ("ls", "confidence_penalty", "focal", "poly", "label_relaxation")
#: the strength grid of each method (see the module docstring for where each comes from)
DEFAULT_GRIDS: dict[str, tuple[float | str, ...]] = {
    "ls": (0.05, 0.1, 0.2, 0.5),
    "confidence_penalty": (0.1, 0.5, 1.0),
    "focal": (1.0, 2.0, 3.0, "flsd-53"),
    "poly": (1.0, 2.0),
    "label_relaxation": (0.05, 0.1),
    "margin": (0.1,),
}
#: the symbol of each method's strength
SYMBOLS = {"baseline": "", "ls": "ε", "confidence_penalty": "β", "focal": "γ", "poly": "ε₁",
           "label_relaxation": "α", "margin": "λ"}
#: test metrics compared, and whether lower is better
METRICS = {"nll": True, "ece": True, "brier": True, "accuracy": False}
MARGIN = 10.0  # MbLS margin m (Liu et al. 2022)
#: seeds of a comparison when none are given: 3, not the recipe's 5, so that the default
#: comparison (16 strengths × 3 seeds of the MNIST-1D MLP recipe, ~16 s of CPU per run) fits in
#: 10 minutes on 2 cores; pass ``seeds=5`` (``--seeds 5``) for the protocol's full count.
DEFAULT_SEEDS = 3


def _check_strength(name: str, value: Any) -> float | str:
    if name == "focal" and value == "flsd-53":
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"the strength of method {name!r} must be a number"
                             f"{' or flsd-53' if name == 'focal' else ''}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"the strength of method {name!r} must be a finite number, got {value!r}")
    value = float(value)
    if name in ("ls", "label_relaxation") and not 0.0 < value <= 1.0:
        raise ValueError(f"the strength of method {name!r} must be in (0, 1], got {value!r}")
    if name in ("confidence_penalty", "focal", "margin") and value <= 0.0:
        raise ValueError(f"the strength of method {name!r} must be > 0, got {value!r}")
    return value


@dataclass(frozen=True)
class Method:
    """One training objective at one strength; calling it gives the batch loss (picklable).

    ``name`` is ``"baseline"`` (plain cross-entropy) or one of :data:`METHODS`; ``strength`` is
    ε, β, γ (or ``"flsd-53"``), ε₁, α or λ. Every objective but label relaxation and the margin
    loss is :func:`labelsmooth.cross_entropy` with one option set.

    Examples:
        >>> Method("focal", 2.0).label, Method("ls", 0.1).key
        ('focal γ=2', 'ls0.1')
        >>> x, y = torch.zeros(2, 4), torch.tensor([0, 1])
        >>> float(Method("confidence_penalty", 1.0)(x, y))  # log 4 − log 4
        0.0
    """

    name: str
    strength: float | str = 0.0
    spread: str = "all"

    def __post_init__(self) -> None:
        if self.name == "baseline":
            return
        if self.name not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.name!r}")
        object.__setattr__(self, "strength", _check_strength(self.name, self.strength))

    @property
    def shown(self) -> str:
        s = self.strength
        return s if isinstance(s, str) else f"{s:g}"

    @property
    def label(self) -> str:
        if self.name == "baseline":
            return "baseline"
        return f"{self.name} {SYMBOLS[self.name]}={self.shown}"

    @property
    def key(self) -> str:
        return "baseline" if self.name == "baseline" else f"{self.name}{self.shown}"

    @property
    def smoothing(self) -> float:
        """The label-smoothing ε this objective trains with (0 but for ``ls``)."""
        return float(self.strength) if self.name == "ls" else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.name, "strength": self.strength, "label": self.label}

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = self.name
        if n in ("baseline", "ls"):
            return labelsmooth.cross_entropy(logits, target, label_smoothing=self.smoothing,
                                             spread=self.spread)
        if n == "confidence_penalty":
            return labelsmooth.cross_entropy(logits, target, confidence_penalty=self.strength)
        if n == "focal":
            return labelsmooth.cross_entropy(logits, target, focal_gamma=self.strength)
        if n == "poly":
            return labelsmooth.cross_entropy(logits, target, poly=self.strength)
        if n == "label_relaxation":
            return labelsmooth.label_relaxation_loss(logits, target, alpha=self.strength)
        return labelsmooth.margin_smoothing_loss(logits, target, margin=MARGIN, lam=self.strength)


def parse_grid(items: Sequence[str] | Mapping[str, Sequence[Any]] | None) -> dict[str, tuple]:
    """Grids from ``["focal=1,2", "poly=2"]`` (the CLI's ``--method-grid``) or a mapping.

    Examples:
        >>> parse_grid(["focal=1,flsd-53", "poly=0.5"])
        {'focal': (1.0, 'flsd-53'), 'poly': (0.5,)}
        >>> parse_grid(["nope=1"])
        Traceback (most recent call last):
        ...
        ValueError: --method-grid: unknown method 'nope'; known: ('ls', 'confidence_penalty', 'focal', 'poly', 'label_relaxation', 'margin')
    """
    if not items:
        return {}
    pairs: list[tuple[str, Sequence[Any]]] = []
    if isinstance(items, Mapping):
        pairs = [(k, list(v) if not isinstance(v, (str, int, float)) else [v])
                 for k, v in items.items()]
    else:
        for item in items:
            name, sep, values = str(item).partition("=")
            if not sep or not values:
                raise ValueError(f"--method-grid: expected METHOD=V1,V2,..., got {item!r}")
            pairs.append((name.strip(), [v.strip() for v in values.split(",") if v.strip()]))
    out: dict[str, tuple] = {}
    for name, values in pairs:
        if name not in METHODS:
            raise ValueError(f"--method-grid: unknown method {name!r}; known: {METHODS}")
        if not values:
            raise ValueError(f"--method-grid: method {name!r} needs at least one strength")
        out[name] = tuple(dict.fromkeys(_check_strength(name, v) for v in values))
    return out


def train_method_run(
    build: Callable[[], nn.Module],
    splits: Any,
    method: Method,
    seed: int,
    settings: Any,
    *,
    progress: Any = None,
    smoothing_schedule: str = "constant",
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One run of ``method`` (the executor's ``train_fn``; the task's ``setting`` is the
    :class:`Method`). ``ls`` and the baseline train through the sweep's own smoothed loss
    (with ``smoothing_schedule`` for ``ls``); every other method replaces it."""
    from labelsmooth.experiments.train import train_run

    if method.name in ("baseline", "ls"):
        rec, arr = train_run(build, splits, method.smoothing, seed, settings, progress=progress,
                             smoothing_schedule=smoothing_schedule if method.name == "ls"
                             else "constant")
    else:
        rec, arr = train_run(build, splits, 0.0, seed, settings, progress=progress, loss=method)
    rec["method"] = method.as_dict()
    return rec, arr


# ---------------------------------------------------------------------------------------------
# the comparison, as data
# ---------------------------------------------------------------------------------------------
def _group(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["method"], str(r["strength"])), {})[int(r["seed"])] = r
    return out


def _status(d: S.PairedDiff, lower_better: bool) -> str:
    if d.n < 2 or math.isnan(d.sd):
        return "inconclusive"
    if not d.different:
        return "indistinguishable"
    return "better" if (d.mean < 0) == lower_better else "worse"


def compare(rows: Sequence[dict[str, Any]], alpha: float = 0.05) -> dict[str, Any]:
    """The method comparison from per-run rows (``method``, ``strength``, ``seed``,
    ``val_nll``, ``test_<metric>``, ``ts_<metric>``), as plain data.

    Returns a dict with ``selection`` and ``ranking`` (``{"split": "val", "metric": "nll"}``),
    ``baseline`` (its mean validation NLL, test and temperature-scaled test means) and
    ``methods``: per method its ``grid`` (mean validation NLL per strength), the chosen
    ``strength``, ``rank``, the test means, and ``vs_baseline`` / ``vs_baseline_ts``: per metric
    the paired seed-level difference (method − reference, :class:`stats.PairedDiff` fields)
    with its ``status``.

    Example (a planted truth: method "a" lowers NLL by 0.1 on every seed):
        >>> rows = [dict(method=m, strength=s, seed=k, val_nll=v - (0.1 + 0.01 * k if m == "a" else 0),
        ...              test_nll=v - (0.1 + 0.01 * k if m == "a" else 0), ts_nll=v)
        ...         for k, v in enumerate([1.0, 1.2, 0.9]) for m, s in (("baseline", 0.0), ("a", 1.0))]
        >>> c = compare(rows)
        >>> [(m["method"], m["rank"], m["vs_baseline"]["nll"]["status"]) for m in c["methods"]]
        [('a', 1, 'better')]
    """
    groups = _group(rows)
    base = next((g for (m, _), g in groups.items() if m == "baseline"), None)
    if base is None:
        raise ValueError("the comparison needs the baseline's runs (method 'baseline')")

    def mean_of(g: dict[int, dict[str, Any]], key: str) -> float:
        vals = [r[key] for r in g.values() if r.get(key) is not None]
        return float(np.mean(vals)) if vals else math.nan

    metrics = [m for m in METRICS if any(f"test_{m}" in r for r in rows)]
    baseline = {"val_nll": mean_of(base, "val_nll"), "n_seeds": len(base),
                "test": {m: mean_of(base, f"test_{m}") for m in metrics},
                "ts_test": {m: mean_of(base, f"ts_{m}") for m in metrics if m != "accuracy"}}
    methods: list[dict[str, Any]] = []
    for name in dict.fromkeys(m for m, _ in groups if m != "baseline"):
        grid = []
        for (m, s), g in groups.items():
            if m != name:
                continue
            seeds = sorted(set(g) & set(base))
            grid.append({"strength": next(iter(g.values()))["strength"], "n_seeds": len(seeds),
                         "val_nll": float(np.mean([g[k]["val_nll"] for k in seeds]))
                         if seeds else math.nan})
        finite = [e for e in grid if not math.isnan(e["val_nll"])]
        if not finite:
            continue
        best = min(finite, key=lambda e: e["val_nll"])  # first of equals: the grid's order
        g = groups[(name, str(best["strength"]))]
        seeds = sorted(set(g) & set(base))
        entry: dict[str, Any] = {
            "method": name, "strength": best["strength"], "n_seeds": len(seeds),
            "val_nll": best["val_nll"], "grid": grid,
            "test": {m: float(np.mean([g[k][f"test_{m}"] for k in seeds])) for m in metrics},
            "vs_baseline": {}, "vs_baseline_ts": {},
        }
        for m in metrics:
            ours = [g[k][f"test_{m}"] for k in seeds]
            entry["vs_baseline"][m] = S.paired_diff(
                ours, [base[k][f"test_{m}"] for k in seeds], metric=m, factor=0.0,
                reference=0.0, reference_kind="baseline")
            if m != "accuracy" and all(f"ts_{m}" in base[k] for k in seeds):
                entry["vs_baseline_ts"][m] = S.paired_diff(
                    ours, [base[k][f"ts_{m}"] for k in seeds], metric=m, factor=0.0,
                    reference=0.0, reference_kind="baseline_ts")
        methods.append(entry)
    # Holm within each (reference, metric) family, across the methods compared
    for ref in ("vs_baseline", "vs_baseline_ts"):
        for m in metrics:
            fam = [e[ref][m] for e in methods if m in e[ref]]
            if fam:
                S.adjust(fam, alpha)
    for e in methods:
        for ref in ("vs_baseline", "vs_baseline_ts"):
            e[ref] = {m: {**{k: v for k, v in d.as_dict().items()
                             if k not in ("factor", "reference")},
                          "status": _status(d, METRICS[m])}
                      for m, d in e[ref].items()}
    order = sorted(methods + [{"method": "baseline", "val_nll": baseline["val_nll"]}],
                   key=lambda e: (math.isnan(e["val_nll"]), e["val_nll"]))
    for rank, e in enumerate(order, 1):
        if e["method"] == "baseline":
            baseline["rank"] = rank
        else:
            e["rank"] = rank
    methods.sort(key=lambda e: e["rank"])
    return {
        "selection": {"split": "val", "metric": "nll",
                      "rule": "each method's strength with the lowest mean validation NLL"},
        "ranking": {"split": "val", "metric": "nll",
                    "rule": "mean validation NLL at the chosen strength, lowest first"},
        "alpha": alpha,
        "holm": "across the methods compared, per metric and reference",
        "baseline": baseline,
        "methods": methods,
    }


def _method_row(record: dict[str, Any]) -> dict[str, Any]:
    """The flat row of ``methods.csv`` for one run record: its method, strength and the sweep's
    row (:func:`~labelsmooth.experiments.sweep.flatten_run`)."""
    from labelsmooth.experiments.sweep import flatten_run

    return {"method": record["method"]["method"], "strength": record["method"]["strength"],
            **flatten_run(record)}


def _run_group(record: Mapping[str, Any]) -> tuple[str, str]:
    return (record["method"]["method"], str(record["method"]["strength"]))


def attach_bootstrap(
    comp: dict[str, Any],
    records: Sequence[Mapping[str, Any]],
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    *,
    n_resamples: int = 1000,
    n_bins: int = 15,
) -> None:
    """Add the paired test-set bootstrap (as the ε sweep has it) to :func:`compare`'s result.

    For each method at its chosen strength, against the baseline as trained and after
    temperature scaling: the percentile 95% interval of the seed-mean difference over resampled
    test examples (:func:`labelsmooth.experiments.verdict.bootstrap_intervals`, from the saved
    test logits), as ``boot_low``/``boot_high`` of each difference. The seed-level interval
    says how much the result depends on the seed; this one, on which test examples were drawn.
    ``n_resamples=0`` adds nothing.
    """
    from labelsmooth.experiments.verdict import bootstrap_intervals

    if n_resamples <= 0:
        return
    chosen = {(e["method"], str(e["strength"])) for e in comp["methods"]}
    runs = [r for r in records if "method" in r
            and (r["method"]["method"] == "baseline" or _run_group(r) in chosen)]
    base = next((_run_group(r) for r in runs if r["method"]["method"] == "baseline"), None)
    if base is None:
        return
    boot = bootstrap_intervals(runs, arrays, n_resamples=n_resamples, n_bins=n_bins,
                               baseline=base, group=_run_group)
    for e in comp["methods"]:
        g = (e["method"], str(e["strength"]))
        for ref, kind in (("vs_baseline", "baseline"), ("vs_baseline_ts", "baseline_ts")):
            for m, d in e[ref].items():
                ci = boot.get((kind, m, g))
                if ci is not None:
                    d["boot_low"], d["boot_high"] = ci


def _fmt_diff(d: dict[str, Any] | None) -> str:
    if not d:
        return "—"
    lo, hi = d.get("holm_low", d["low"]), d.get("holm_high", d["high"])
    if math.isnan(lo):
        return f"{d['mean']:+.4f} ({d['status']})"
    return f"{d['mean']:+.4f} [{lo:+.4f}, {hi:+.4f}] {d['status']}"


def _fmt_boot(d: dict[str, Any] | None) -> str:
    if not d or d.get("boot_low") is None:
        return "—"
    return f"{d['mean']:+.4f} [{d['boot_low']:+.4f}, {d['boot_high']:+.4f}]"


def render_comparison(comp: dict[str, Any], scope: Mapping[str, Any] | None = None) -> str:
    """The comparison in words: a scope line, the ranking table and each method's statuses.

    Example:
        >>> rows = [dict(method=m, strength=s, seed=k, val_nll=v + d, test_nll=v + d, ts_nll=v)
        ...         for k, v in enumerate([1.0, 1.2, 0.9])
        ...         for m, s, d in (("baseline", 0.0, 0.0), ("focal", 2.0, 0.05))]
        >>> print(render_comparison(compare(rows)).splitlines()[0])
        # Methods compared (strength and ranking chosen on the validation split)
    """
    scope = dict(scope or {})
    b = comp["baseline"]
    lines = ["# Methods compared (strength and ranking chosen on the validation split)", ""]
    if scope:
        lines += [", ".join(f"{k}: {v}" for k, v in scope.items()), ""]
    lines += [
        "Each method's strength was chosen on the **validation** split (lowest mean validation "
        "NLL over the seeds), and methods are **ranked by that validation NLL**; the test split "
        "only reports. Differences are paired over seeds (method − reference, same seeds and "
        "split); the intervals are Student-t intervals at Holm's level across the methods "
        "compared (family-wise 95%), so a status other than indistinguishable is exactly an "
        "interval that excludes 0.", "",
        "| rank | method (val-chosen strength) | val NLL | test NLL | test ECE | test acc | "
        "Δ NLL vs baseline | Δ NLL vs baseline+TS | Δ ECE vs baseline | Δ ECE vs baseline+TS | "
        "Δ acc vs baseline |",
        "|---:|---|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    rowsout = []
    for e in comp["methods"]:
        m = Method(e["method"], e["strength"])
        t = e["test"]
        rowsout.append((e["rank"], (
            f"| {e['rank']} | {m.label} | {e['val_nll']:.4f} | {t.get('nll', math.nan):.4f} | "
            f"{t.get('ece', math.nan):.4f} | {t.get('accuracy', math.nan):.4f} | "
            f"{_fmt_diff(e['vs_baseline'].get('nll'))} | {_fmt_diff(e['vs_baseline_ts'].get('nll'))} | "
            f"{_fmt_diff(e['vs_baseline'].get('ece'))} | {_fmt_diff(e['vs_baseline_ts'].get('ece'))} | "
            f"{_fmt_diff(e['vs_baseline'].get('accuracy'))} |")))
    bt = b["test"]
    rowsout.append((b.get("rank", 0), (
        f"| {b.get('rank', '')} | baseline (ε=0) | {b['val_nll']:.4f} | {bt.get('nll', math.nan):.4f} | "
        f"{bt.get('ece', math.nan):.4f} | {bt.get('accuracy', math.nan):.4f} | — | — | — | — | — |")))
    lines += [r for _, r in sorted(rowsout, key=lambda x: x[0])]
    ts = b["ts_test"]
    lines += [f"| — | baseline + temperature scaling (reference, not ranked) | — | "
              f"{ts.get('nll', math.nan):.4f} | {ts.get('ece', math.nan):.4f} | "
              f"{bt.get('accuracy', math.nan):.4f} | — | — | — | — | — |", ""]
    lines += ["Strength grids (mean validation NLL per strength; the chosen one in bold):", ""]
    for e in comp["methods"]:
        cells = []
        for g in e["grid"]:
            s = Method(e["method"], g["strength"]).shown
            cell = f"{SYMBOLS[e['method']]}={s}: {g['val_nll']:.4f}"
            cells.append(f"**{cell}**" if str(g["strength"]) == str(e["strength"]) else cell)
        lines.append(f"- {e['method']}: " + "; ".join(cells))
    lines.append("")
    if any(d.get("boot_low") is not None for e in comp["methods"]
           for ref in ("vs_baseline", "vs_baseline_ts") for d in e[ref].values()):
        lines += [
            "Paired test-set bootstrap (95% percentile interval of the seed-mean difference over "
            "resampled test examples, the same draw for every model and seed; not Holm-adjusted):",
            "", "| method | Δ NLL vs baseline | Δ NLL vs baseline+TS | Δ ECE vs baseline | "
            "Δ ECE vs baseline+TS | Δ Brier vs baseline | Δ acc vs baseline |",
            "|---|---|---|---|---|---|---|"]
        for e in comp["methods"]:
            cells = [_fmt_boot(e[ref].get(m)) for ref, m in (
                ("vs_baseline", "nll"), ("vs_baseline_ts", "nll"), ("vs_baseline", "ece"),
                ("vs_baseline_ts", "ece"), ("vs_baseline", "brier"), ("vs_baseline", "accuracy"))]
            lines.append(f"| {Method(e['method'], e['strength']).label} | " + " | ".join(cells)
                         + " |")
        lines.append("")
    for e in comp["methods"]:
        label = Method(e["method"], e["strength"]).label
        st = {k: v["status"] for k, v in e["vs_baseline"].items()}
        ts_st = {k: v["status"] for k, v in e["vs_baseline_ts"].items()}
        lines.append(f"- {label}: against the baseline " + ", ".join(
            f"{k} {v}" for k, v in st.items()) + "; against the baseline with temperature "
            "scaling " + (", ".join(f"{k} {v}" for k, v in ts_st.items()) or "—") + ".")
    if any(e["n_seeds"] < 2 for e in comp["methods"]):
        lines += ["", "Warning: one seed measures no seed-to-seed noise; every status is "
                  "inconclusive. Use at least 3 seeds (5 by the protocol)."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------------------------
@dataclass
class MethodComparison:
    """What :func:`compare_methods` returns: the configuration, one flat row per run (the rows of
    ``methods.csv``), the comparison (:func:`compare`), its text, the files written and how many
    runs were reused from ``out``."""

    config: dict[str, Any]
    rows: list[dict[str, Any]]
    comparison: dict[str, Any] | None
    text: str
    paths: dict[str, str] = field(default_factory=dict)
    reused: int = 0
    complete: bool = True


def _write_rows(path: str, rows: Sequence[dict[str, Any]]) -> None:
    from labelsmooth.experiments.rundir import atomic_write

    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([f"{r[c]:.6g}" if isinstance(r.get(c), float) else r.get(c, "") for c in cols])
    atomic_write(path, buf.getvalue().encode())


def compare_methods(
    data: Any = "mnist1d",
    methods: Sequence[str] = DEFAULT_METHODS,
    *,
    grids: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
    seeds: int | Sequence[int] | None = None,
    model: str = "mlp",
    model_fn: Callable[..., nn.Module] | None = None,
    settings: Any = None,
    smoothing_schedule: str = "constant",
    out: str | os.PathLike[str] | None = None,
    split_seed: int = 0,
    threads: int | None = None,
    workers: int | None = 1,
    executor: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
    extra_config: dict[str, Any] | None = None,
    **settings_kwargs: Any,
) -> MethodComparison:
    """Train the baseline and every method × strength × seed on one testbed and compare them.

    Args:
        data, model, model_fn, split_seed, threads, workers, executor, ray_address, progress:
            as :func:`labelsmooth.experiments.sweep` (``executor="ray"``: every run a Ray task).
        methods: names from :data:`METHODS` (the baseline is always trained).
        grids: strengths per method, overriding :data:`DEFAULT_GRIDS` (a mapping, or the CLI's
            ``["focal=1,2", ...]``).
        seeds: a count or a list; None: :data:`DEFAULT_SEEDS` (3).
        settings: :class:`~labelsmooth.experiments.train.TrainSettings`, or keywords
            (``epochs=…``) overriding the built-in recipe of (dataset, model).
        smoothing_schedule: how ``ls``'s ε moves over the epochs
            (:func:`labelsmooth.schedules.named`).
        out: with it, each run is saved in ``out/runs`` as it finishes (a re-run with the same
            configuration reuses them), and ``methods.json``, ``methods.csv`` and ``methods.md``
            are written.

    Beside the seed-level intervals, each chosen method gets the paired test-set bootstrap of
    the sweep (``settings.n_bootstrap`` resamples of the test examples, 0 turns it off): the
    ``boot_low``/``boot_high`` of its differences. ``config["wall_seconds"]`` is the wall time
    of this call.

    Example:
        >>> data = (torch.randn(120, 6), torch.arange(120) % 3)
        >>> res = compare_methods(data, ["focal", "poly"], grids={"focal": [2.0], "poly": [1.0]},
        ...                       seeds=2, epochs=2, n_bootstrap=0, progress=False)
        >>> sorted(m["method"] for m in res.comparison["methods"]), len(res.rows)
        (['focal', 'poly'], 6)
    """
    from labelsmooth.experiments.data import as_splits
    from labelsmooth.experiments.executor import (
        RunJob,
        RunProgress,
        RunTask,
        check_executor,
        make_runner,
        with_costs,
    )
    from labelsmooth.experiments.rundir import (
        DamagedRunError,
        DirectoryLock,
        check_record,
        prepare_out_dir,
        read_arrays,
        read_record,
        write_json,
        write_npz,
    )
    from labelsmooth.experiments.sweep import (
        _data_fingerprint,
        _resolve_model_fn,
        _seed_list,
    )
    from labelsmooth.experiments.train import TrainSettings, recipe_for
    from labelsmooth.schedules import NAMES

    if isinstance(methods, str):
        methods = [methods]
    methods = list(dict.fromkeys(methods or DEFAULT_METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; known: {METHODS}")
    if smoothing_schedule not in NAMES:
        raise ValueError(f"smoothing_schedule must be one of {NAMES}, got {smoothing_schedule!r}")
    if settings is not None and settings_kwargs:
        raise TypeError(f"pass either settings or keywords, not both ({sorted(settings_kwargs)})")
    check_executor(executor, ray_address,
                   settings.device if settings is not None else settings_kwargs.get("device", "cpu"))
    t_start = time.perf_counter()
    user = parse_grid(grids)
    unused = sorted(set(user) - set(methods))
    if unused:
        raise ValueError(f"grids given for methods not compared: {unused}")
    grid = {m: tuple(user.get(m, DEFAULT_GRIDS[m])) for m in methods}
    splits = as_splits(data, split_seed=split_seed)
    rec_obj = recipe_for(splits.name, model) if model_fn is None else None
    if settings is None:
        settings = (rec_obj.train_settings(**settings_kwargs) if rec_obj is not None
                    else TrainSettings(**settings_kwargs))
    seed_list = _seed_list(seeds if seeds is not None else DEFAULT_SEEDS)
    build, model_name = _resolve_model_fn(model_fn, model, splits, settings.dropout)
    specs = [Method("baseline", 0.0, spread=settings.spread)] + [
        Method(m, s, spread=settings.spread) for m in methods for s in grid[m]]
    # as the sweep's run identity: the data's own bytes too, so edited data never reuses runs
    identity = {"dataset": splits.name, "model": model_name, "split_seed": split_seed,
                "splits": splits.sizes(), "num_classes": splits.num_classes,
                "data_fingerprint": _data_fingerprint(splits),
                "smoothing_schedule": smoothing_schedule, **settings.as_dict()}
    fingerprint = hashlib.sha256(
        json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    config: dict[str, Any] = {
        **identity, "methods": methods, "grids": {m: list(v) for m, v in grid.items()},
        "seeds": seed_list, "recipe": rec_obj.as_dict() if rec_obj is not None else None,
        "fingerprint": fingerprint, **(extra_config or {})}

    out_dir = os.fspath(out) if out is not None else None
    runs_dir = prepare_out_dir(out_dir) if out_dir is not None else None
    lock = DirectoryLock(out_dir) if out_dir is not None else None
    records: dict[str, dict[str, Any]] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    todo: list[RunTask] = []
    if lock is not None:
        lock.acquire()
    try:
        for seed in seed_list:  # seeds outer: an interrupted comparison keeps whole seeds
            for spec in specs:
                key = f"{spec.key}_seed{seed}"
                path = os.path.join(runs_dir, key + ".json") if runs_dir else None
                if path and os.path.exists(path):
                    try:
                        rec = read_record(path)
                        # another configuration's run is an error, not damage: never overwrite
                        if rec.get("fingerprint") != fingerprint:
                            raise ValueError(
                                f"{out_dir} holds run {key} of another configuration; choose "
                                "another output directory or delete its runs/ folder")
                        check_record(path, rec, _method_row)
                        arr = read_arrays(path[:-5] + ".npz")
                    except DamagedRunError as e:  # named, and trained again (as the sweep does)
                        print(f"note: {e.path} is damaged ({e.reason}); training run {key} again",
                              file=sys.stderr)
                        todo.append(RunTask(key, spec, seed))
                        continue
                    records[key] = rec
                    arrays[key] = arr
                else:
                    todo.append(RunTask(key, spec, seed))
        reused = len(records)
        todo = with_costs(todo, records.values())  # reused runs say how long their settings take
        train_fn = (train_method_run if smoothing_schedule == "constant" else
                    functools.partial(train_method_run, smoothing_schedule=smoothing_schedule))
        job = RunJob(train_fn=train_fn, build=build, splits=splits, settings=settings)
        runner = make_runner(executor, workers, job, len(todo), threads=threads,
                             ray_address=ray_address,
                             warn=lambda msg: print(f"note: {msg}", file=sys.stderr))
        if executor == "ray":
            config["executor"], config["ray_address"] = "ray", ray_address
        config["workers"] = runner.workers if runner.workers else workers
        if out_dir is not None:
            write_json(os.path.join(out_dir, "config.json"), config)
        old_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        display = RunProgress(len(todo), enabled=progress, reused=reused)

        def on_done(task: Any, rec: dict[str, Any], arr: dict[str, np.ndarray]) -> None:
            rec["fingerprint"] = fingerprint
            rec["key"] = task.key
            if runs_dir:
                write_npz(os.path.join(runs_dir, task.key + ".npz"), arr)
                write_json(os.path.join(runs_dir, task.key + ".json"), rec)
            records[task.key] = rec
            arrays[task.key] = arr
            display.finished(task)

        complete = True
        try:
            runner.run(job, todo, display.started, on_done,
                       epoch_progress=lambda task: display.epoch_bar(task, settings.epochs))
        except BaseException:
            complete = False
            raise
        finally:
            display.close()
            torch.set_num_threads(old_threads)
            rows = [_method_row(rec) for rec in records.values()]
            order = {s.key: i for i, s in enumerate(specs)}
            rows.sort(key=lambda r: (order.get(Method(r["method"], r["strength"]).key, 0), r["seed"]))
            comp = compare(rows) if any(r["method"] == "baseline" for r in rows) else None
            if comp is not None:
                attach_bootstrap(comp, list(records.values()), arrays,
                                 n_resamples=settings.n_bootstrap, n_bins=settings.n_bins)
            config["complete"] = complete
            config["wall_seconds"] = time.perf_counter() - t_start
            scope = {"testbed": f"{splits.name} / {model_name}", "seeds": len(seed_list),
                     "epochs (max)": settings.epochs, "ls schedule": smoothing_schedule,
                     "runs": f"{len(rows)} ({len(rows) - reused} trained, {reused} reused)",
                     "workers": f"{runner.workers or config['workers']} ({runner.name})",
                     "wall time": f"{config['wall_seconds']:.0f} s"}
            text = render_comparison(comp, scope) if comp is not None else ""
            result = MethodComparison(config, rows, comp, text, reused=reused, complete=complete)
            if out_dir is not None and rows:
                result.paths["methods.json"] = os.path.join(out_dir, "methods.json")
                write_json(result.paths["methods.json"],
                           {"config": config, "comparison": comp, "rows": rows})
                result.paths["methods.csv"] = os.path.join(out_dir, "methods.csv")
                _write_rows(result.paths["methods.csv"], rows)
                if text:
                    from labelsmooth.experiments.rundir import atomic_write

                    result.paths["methods.md"] = os.path.join(out_dir, "methods.md")
                    atomic_write(result.paths["methods.md"], text.encode())
    finally:
        if lock is not None:
            lock.release()
    return result
