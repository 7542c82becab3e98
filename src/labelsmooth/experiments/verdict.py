"""The sweep's verdict as data: typed claims with their status and the numbers behind them.

Nothing here writes prose (:mod:`labelsmooth.experiments.render` does). Every decision is made
from the per-run rows of ``results.csv`` with seed-level paired statistics
(:mod:`labelsmooth.experiments.stats`), so a reviewer who recomputes the paired differences from
that file gets the same statuses:

* **Selection on validation.** The factor with the lowest mean validation NLL (of each run's
  kept checkpoint) is the candidate; it is named ``best_smoothing`` only when its paired
  validation-NLL difference to every other factor is beyond the Holm-adjusted interval. The
  smoothed factor the claims test (``smoothed_choice``) is the ε > 0 with the lowest mean
  validation NLL. The test split never chooses anything.
* **Comparisons.** Every factor against the baseline (ε = 0 as trained) and against the baseline
  after temperature scaling, per metric: paired difference over seeds, t-interval, Holm over the
  factors compared (:func:`comparisons`).
* **Claims** (status ``held`` / ``did not hold`` / ``inconclusive``):

  ========================================  ==================================================
  ``baseline_overconfident``                baseline signed gap (confidence − accuracy) > 0
  ``lower_{nll,brier,ece}_than_baseline``   ε* lower than ε = 0 (Holm over the factors)
  ``lower_{nll,brier,ece}_than_baseline_ts``  ε* as trained lower than ε = 0 after TS
  ``better_refinement_than_baseline``       NLL after TS (refinement) of ε* lower than ε = 0's
  ``higher_accuracy_than_baseline``         ε* more accurate on test
  ``higher_train_nll_than_baseline``        ε*'s hard-label training NLL higher
  ``large_factor_underfits``                largest ε ≥ 0.3 has lower train *and* test accuracy
                                            than the validation-chosen ε (both 95% intervals)
  ``large_factor_underconfident``           largest ε ≥ 0.3 has a signed gap < 0
  ``smoothing_helps_under_label_noise``     (training labels noisy) ε* has a higher *clean*
                                            test accuracy than ε = 0 trained on the same noisy
                                            labels (Lukasik et al. 2020); memorisation of the
                                            flipped examples beside it
  ``smoothed_teachers_distil_worse_students``  (distillation) students of ε* teachers have a
                                            lower test accuracy than students of ε = 0
                                            teachers (Müller et al. 2019, §5); ε* is chosen on
                                            the *teachers'* validation NLL
  ========================================  ==================================================

  The last two are judged only when the rows carry what they need: label noise (the
  configuration's ``label_noise`` with a rate > 0, or ``memo_*`` columns) and students
  (``student_test_*`` columns, :mod:`labelsmooth.experiments.distill`). Validation and test
  labels are clean in both, so the selection stays on validation and the comparison on test.

  "held" means the paired interval excludes 0 in the claimed direction, "did not hold" that it
  excludes 0 in the other direction, "inconclusive" that it contains 0 (or there is one seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelsmooth.experiments import stats

__all__ = [
    "CLAIMS",
    "STATUSES",
    "Claim",
    "Verdict",
    "comparisons",
    "select",
    "verdict",
]

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
#: The three statuses a claim can have.
STATUSES = (HELD, NOT_HELD, INCONCLUSIVE)

#: Metrics compared between factors (row key without the ``test_`` prefix) and whether lower is
#: better.
METRICS: dict[str, bool] = {
    "nll": True,
    "brier": True,
    "ece": True,
    "ece_debiased": True,
    "accuracy": False,
    "gap": True,
}

#: Claim names in the order :func:`verdict` returns them.
CLAIMS = (
    "baseline_overconfident",
    "lower_nll_than_baseline",
    "lower_brier_than_baseline",
    "lower_ece_than_baseline",
    "lower_nll_than_baseline_ts",
    "lower_brier_than_baseline_ts",
    "lower_ece_than_baseline_ts",
    "better_refinement_than_baseline",
    "higher_accuracy_than_baseline",
    "higher_train_nll_than_baseline",
    "large_factor_underfits",
    "large_factor_underconfident",
    "smoothing_helps_under_label_noise",
    "smoothed_teachers_distil_worse_students",
)

NOISE_CLAIM = "smoothing_helps_under_label_noise"
DISTILL_CLAIM = "smoothed_teachers_distil_worse_students"

#: Memorisation columns of a run trained on noisy labels (:func:`labelsmooth.experiments.noise.memorisation`).
MEMO_KEYS = (
    "memo_noisy_label_accuracy",
    "memo_true_label_accuracy",
    "memo_clean_example_accuracy",
)

#: The smallest factor the underfitting / underconfidence claims call "large".
LARGE_FACTOR = 0.3


@dataclass
class Claim:
    """One claim: its name, status and the numbers behind the status (JSON-serialisable)."""

    claim: str
    status: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "status": self.status, **_jsonable(self.numbers)}


@dataclass
class Verdict:
    """What :func:`verdict` returns: scope, validation selection(s), comparisons and claims."""

    scope: dict[str, Any]
    selection: dict[str, Any]
    claims: list[Claim]
    comparisons: list[dict[str, Any]]
    factors: list[dict[str, Any]]
    selections: list[dict[str, Any]] = field(default_factory=list)

    def claim(self, name: str) -> Claim | None:
        """The claim called ``name``, or None when it was not tested."""
        return next((c for c in self.claims if c.claim == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": _jsonable(self.scope),
            "selection": _jsonable(self.selection),
            "selections": _jsonable(self.selections),
            "verdict": [c.as_dict() for c in self.claims],
            "comparisons": _jsonable(self.comparisons),
            "factors": _jsonable(self.factors),
        }


def _jsonable(obj: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, recursively (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# grouping
# ---------------------------------------------------------------------------------------------
def _num(v: Any) -> float:
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _group(rows: Iterable[Mapping[str, Any]]) -> dict[float, dict[int, Mapping[str, Any]]]:
    """``{factor: {seed: row}}`` over the per-run rows (``kind`` other than ``run`` skipped)."""
    by: dict[float, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("kind", "run") != "run":
            continue
        by.setdefault(float(r["smoothing"]), {})[int(r["seed"])] = r
    return by


def _paired(
    by: dict[float, dict[int, Mapping[str, Any]]], fa: float, ka: str, fb: float, kb: str
) -> tuple[list[float], list[float]]:
    """Values of ``ka`` at ``fa`` and ``kb`` at ``fb`` on the seeds both have (finite only)."""
    xs, ys = [], []
    for seed in sorted(set(by.get(fa, {})) & set(by.get(fb, {}))):
        x, y = _num(by[fa][seed].get(ka)), _num(by[fb][seed].get(kb))
        if math.isfinite(x) and math.isfinite(y):
            xs.append(x)
            ys.append(y)
    return xs, ys


def _mean(by: dict[float, dict[int, Mapping[str, Any]]], f: float, key: str) -> float:
    vals = [_num(r.get(key)) for r in by.get(f, {}).values()]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


# ---------------------------------------------------------------------------------------------
# selection on validation
# ---------------------------------------------------------------------------------------------
def select(
    rows: Iterable[Mapping[str, Any]], metric: str = "nll", *, alpha: float = 0.05
) -> dict[str, Any]:
    """Choose the smoothing factor on the validation split.

    Returns ``{"split": "val", "metric", "candidate", "best_smoothing", "tied_with",
    "smoothed_choice", "means"}``: ``candidate`` has the lowest mean validation ``metric``;
    ``best_smoothing`` is the candidate only when every other factor is worse beyond the paired,
    Holm-adjusted interval, else None (a tie names no best; ``tied_with`` lists the factors it
    could not be told from). ``smoothed_choice`` is the ε > 0 with the lowest mean (what the
    claims test), None without a smoothed factor.

    Example:
        >>> rows = [{"smoothing": e, "seed": s, "val_nll": v + 0.01 * s * (1 + e)}
        ...         for e, v in ((0.0, 1.0), (0.1, 0.8)) for s in range(3)]
        >>> sel = select(rows)
        >>> sel["candidate"], sel["best_smoothing"], sel["smoothed_choice"]
        (0.1, 0.1, 0.1)
    """
    by = _group(rows)
    key = f"val_{metric}"
    means = {f: _mean(by, f, key) for f in sorted(by)}
    finite = [f for f in means if math.isfinite(means[f])]
    out: dict[str, Any] = {
        "split": "val",
        "metric": metric,
        "candidate": None,
        "best_smoothing": None,
        "tied_with": [],
        "smoothed_choice": None,
        "means": {repr(f): means[f] for f in means},
    }
    if not finite:
        return out
    cand = min(finite, key=lambda f: means[f])
    out["candidate"] = cand
    smoothed = [f for f in finite if f > 0]
    if smoothed:
        out["smoothed_choice"] = min(smoothed, key=lambda f: means[f])
    others = [f for f in finite if f != cand]
    diffs = []
    for f in others:
        a, b = _paired(by, f, key, cand, key)
        if a:
            diffs.append(stats.paired_diff(a, b, metric=key, factor=f, reference=cand,
                                           reference_kind="candidate"))
    stats.adjust(diffs, alpha)
    tied = [d.factor for d in diffs if not (d.different and d.mean > 0)]
    tied += [f for f in others if f not in {d.factor for d in diffs}]
    out["tied_with"] = sorted(tied)
    out["comparisons"] = [d.as_dict() for d in diffs]
    if others and not tied:
        out["best_smoothing"] = cand
    elif not others:
        out["best_smoothing"] = cand if len(finite) == 1 else None
    return out


# ---------------------------------------------------------------------------------------------
# comparisons against the baseline
# ---------------------------------------------------------------------------------------------
def comparisons(
    rows: Iterable[Mapping[str, Any]],
    *,
    baseline: float = 0.0,
    alpha: float = 0.05,
    metrics: Sequence[str] = tuple(METRICS),
) -> list[stats.PairedDiff]:
    """Every smoothed factor against the baseline, per metric, Holm-adjusted over the factors.

    Three references: ``baseline`` (test metric of ε = 0 as trained), ``baseline_ts`` (the
    smoothed model as trained against ε = 0 after temperature scaling) and ``refinement`` (both
    after temperature scaling: NLL/Brier/ECE after TS). Plus the training split (hard-label NLL,
    accuracy) against ``baseline``. Each (reference, metric) is one Holm family.
    """
    by = _group(rows)
    factors = [f for f in sorted(by) if f != baseline]
    out: list[stats.PairedDiff] = []
    if baseline not in by:
        return out
    fams: list[tuple[str, str, str, str]] = []  # (kind, metric name, key of factor, key of ref)
    for m in metrics:
        fams.append(("baseline", m, f"test_{m}", f"test_{m}"))
    for m in ("nll", "brier", "ece", "ece_debiased"):
        if m in metrics:
            fams.append(("baseline_ts", m, f"test_{m}", f"ts_{m}"))
            fams.append(("refinement", m, f"ts_{m}", f"ts_{m}"))
    fams.append(("train", "train_nll", "train_nll", "train_nll"))
    fams.append(("train", "train_accuracy", "train_accuracy", "train_accuracy"))
    fams.append(("val", "val_nll", "val_nll", "val_nll"))
    # label noise: how much of the flipped training labels each factor memorised
    fams.append(("memorisation", "memo_noisy_label_accuracy", "memo_noisy_label_accuracy",
                 "memo_noisy_label_accuracy"))
    fams.append(("memorisation", "memo_true_label_accuracy", "memo_true_label_accuracy",
                 "memo_true_label_accuracy"))
    # distillation: the students of each teacher factor against the students of ε = 0 teachers
    for m in ("accuracy", "nll", "ece"):
        fams.append(("student", f"student_{m}", f"student_test_{m}", f"student_test_{m}"))
    for kind, name, ka, kb in fams:
        fam = []
        for f in factors:
            a, b = _paired(by, f, ka, baseline, kb)
            if a:
                fam.append(stats.paired_diff(a, b, metric=name, factor=f, reference=baseline,
                                             reference_kind=kind))
        stats.adjust(fam, alpha)
        out += fam
    return out


def _find(cs: Sequence[stats.PairedDiff], kind: str, metric: str, factor: float | None):
    return next(
        (c for c in cs if c.reference_kind == kind and c.metric == metric and c.factor == factor),
        None,
    )


def _status(d: stats.PairedDiff | None, want: int) -> str:
    """``held`` if ``d`` is different in direction ``want`` (+1 higher / −1 lower), ``did not
    hold`` if different the other way, else ``inconclusive``."""
    if d is None or not d.different:
        return INCONCLUSIVE
    return HELD if d.direction == want else NOT_HELD


def _sign_status(s: dict[str, float], want: int, level_ok: bool = True) -> str:
    lo, hi = s["low"], s["high"]
    if not (math.isfinite(lo) and math.isfinite(hi)) or not level_ok:
        return INCONCLUSIVE
    if lo > 0:
        return HELD if want > 0 else NOT_HELD
    if hi < 0:
        return HELD if want < 0 else NOT_HELD
    return INCONCLUSIVE


# ---------------------------------------------------------------------------------------------
# the verdict
# ---------------------------------------------------------------------------------------------
def verdict(
    rows: Iterable[Mapping[str, Any]],
    config: Mapping[str, Any] | None = None,
    *,
    alpha: float = 0.05,
    select_on: Sequence[str] = ("nll",),
    bootstrap: Mapping[tuple[str, str, float], tuple[float, float]] | None = None,
) -> Verdict:
    """Judge the claims about label smoothing from the per-run rows (seed-level, paired).

    Args:
        rows: one mapping per run with ``smoothing``, ``seed`` and the metrics of
            :func:`labelsmooth.experiments.sweep.flatten_run` (``test_*``, ``ts_*``, ``val_*``,
            ``train_*``, ``selected_epoch``); the rows of ``results.csv`` work as read by
            :class:`csv.DictReader` (mean/std rows are skipped).
        config: the sweep configuration (dataset, model, recipe, epochs, ...) for the scope.
        alpha: family-wise error rate of the Holm-adjusted decisions.
        select_on: validation metrics to choose the factor on; the first is the ``selection``
            the claims use (``"nll"``), the others (``"ece"``) are reported beside it.
        bootstrap: optional paired test-set bootstrap intervals keyed by
            ``(reference_kind, metric, factor)``, attached to the comparisons (never decisive).

    Returns:
        A :class:`Verdict`.

    Example:
        >>> rows = [{"smoothing": e, "seed": s, "test_ece": ece + 0.001 * s * (1 + e),
        ...          "val_nll": 1.0 - e + 0.001 * s * (1 + e)}
        ...         for e, ece in ((0.0, 0.2), (0.1, 0.05)) for s in range(3)]
        >>> v = verdict(rows)
        >>> v.claim("lower_ece_than_baseline").status, v.selection["best_smoothing"]
        ('held', 0.1)
    """
    rows = list(rows)
    cfg = dict(config or {})
    by = _group(rows)
    factors = sorted(by)
    selections = [select(rows, m, alpha=alpha) for m in select_on]
    sel = selections[0] if selections else select(rows, "nll", alpha=alpha)
    cs = comparisons(rows, alpha=alpha)
    if bootstrap:
        for c in cs:
            ci = bootstrap.get((c.reference_kind, c.metric, c.factor))
            if ci is not None:
                c.boot_low, c.boot_high = ci
    eps = sel.get("smoothed_choice")
    claims: list[Claim] = []
    base_ok = 0.0 in by

    # the scope
    seeds = sorted({int(r["seed"]) for r in rows if r.get("kind", "run") == "run"})
    sel_epochs = [_num(r.get("selected_epoch")) for r in rows if r.get("kind", "run") == "run"]
    sel_epochs = [int(e) for e in sel_epochs if math.isfinite(e)]
    run_epochs = [_num(r.get("epochs_run")) for r in rows if r.get("kind", "run") == "run"]
    run_epochs = [int(e) for e in run_epochs if math.isfinite(e)]
    per_factor_seeds = [len(by[f]) for f in factors]
    n_seeds = min(per_factor_seeds) if per_factor_seeds else 0
    recipe = cfg.get("recipe") or {}
    ref = recipe.get("reference") if isinstance(recipe, Mapping) else None
    base_acc = _mean(by, 0.0, "test_accuracy") if base_ok else math.nan
    warnings: list[str] = []
    if n_seeds < 2:
        warnings.append("one_seed")
    elif n_seeds < 5:
        warnings.append("few_seeds")
    if not base_ok:
        warnings.append("no_baseline")
    if ref and math.isfinite(base_acc) and base_acc < float(ref.get("minimum", -math.inf)):
        warnings.append("baseline_below_reference")
    if sel_epochs and run_epochs and len(sel_epochs) == len(run_epochs):
        at_end = sum(s == e for s, e in zip(sel_epochs, run_epochs))
        if at_end * 2 >= len(sel_epochs):
            warnings.append("still_improving")
    scope = {
        "dataset": cfg.get("dataset"),
        "model": cfg.get("model"),
        "recipe": recipe.get("name") if isinstance(recipe, Mapping) else None,
        "factors": factors,
        "seeds": seeds,
        "n_seeds": n_seeds,
        "epochs": cfg.get("epochs"),
        "patience": cfg.get("patience"),
        "selected_epoch_min": min(sel_epochs) if sel_epochs else None,
        "selected_epoch_median": float(np.median(sel_epochs)) if sel_epochs else None,
        "selected_epoch_max": max(sel_epochs) if sel_epochs else None,
        "baseline_accuracy": base_acc,
        "baseline_accuracy_sd": (
            float(np.std([_num(r.get("test_accuracy")) for r in by[0.0].values()], ddof=1))
            if base_ok and len(by[0.0]) > 1
            else math.nan
        ),
        "reference": dict(ref) if ref else None,
        "alpha": alpha,
        "warnings": warnings,
        # what the training labels / targets were: noisy (noise.py), a teacher's (distill.py)
        "label_noise": dict(cfg["label_noise"]) if isinstance(cfg.get("label_noise"), Mapping)
        else None,
        "distill": dict(cfg["distill"]) if isinstance(cfg.get("distill"), Mapping) else None,
    }

    # per-factor summary numbers the renderer shows beside the claims (NLL decomposition)
    factor_rows = []
    for f in factors:
        nll, ts_nll = _mean(by, f, "test_nll"), _mean(by, f, "ts_nll")
        factor_rows.append(
            {
                "smoothing": f,
                "n_seeds": len(by[f]),
                "test_accuracy": _mean(by, f, "test_accuracy"),
                "test_nll": nll,
                "refinement_nll": ts_nll,
                "calibration_nll": nll - ts_nll,
                "test_ece": _mean(by, f, "test_ece"),
                "test_ece_debiased": _mean(by, f, "test_ece_debiased"),
                "test_gap": _mean(by, f, "test_gap"),
                "val_nll": _mean(by, f, "val_nll"),
                "train_nll": _mean(by, f, "train_nll"),
                "train_accuracy": _mean(by, f, "train_accuracy"),
                **{k: _mean(by, f, k) for k in _OPTIONAL_FACTOR_KEYS if _has(rows, k)},
            }
        )

    if base_ok:
        g = [_num(r.get("test_gap")) for r in by[0.0].values()]
        g = [v for v in g if math.isfinite(v)]
        if g:
            s = stats.one_sample(g)
            claims.append(Claim("baseline_overconfident", _sign_status(s, +1),
                                {"factor": 0.0, "metric": "test_gap", **s}))

    def cmp_claim(name: str, kind: str, metric: str, want: int, **extra: Any) -> None:
        d = _find(cs, kind, metric, eps)
        if d is None:
            return
        claims.append(Claim(name, _status(d, want), {"factor": eps, **d.as_dict(), **extra}))

    if base_ok and eps is not None:
        cmp_claim("lower_nll_than_baseline", "baseline", "nll", -1)
        cmp_claim("lower_brier_than_baseline", "baseline", "brier", -1)
        deb = _find(cs, "baseline", "ece_debiased", eps)
        cmp_claim("lower_ece_than_baseline", "baseline", "ece", -1,
                  debiased=deb.as_dict() if deb else None)
        cmp_claim("lower_nll_than_baseline_ts", "baseline_ts", "nll", -1)
        cmp_claim("lower_brier_than_baseline_ts", "baseline_ts", "brier", -1)
        deb = _find(cs, "baseline_ts", "ece_debiased", eps)
        cmp_claim("lower_ece_than_baseline_ts", "baseline_ts", "ece", -1,
                  debiased=deb.as_dict() if deb else None)
        fr = {r["smoothing"]: r for r in factor_rows}
        cmp_claim(
            "better_refinement_than_baseline", "refinement", "nll", -1,
            calibration_nll=fr[eps]["calibration_nll"],
            baseline_calibration_nll=fr[0.0]["calibration_nll"],
        )
        cmp_claim("higher_accuracy_than_baseline", "baseline", "accuracy", +1)
        cmp_claim("higher_train_nll_than_baseline", "train", "train_nll", +1)

    large = [f for f in factors if f >= LARGE_FACTOR]
    chosen = sel.get("candidate")
    if large and chosen is not None:
        big = max(large)
        if big == chosen:
            claims.append(Claim("large_factor_underfits", NOT_HELD,
                                {"factor": big, "chosen": chosen, "reason": "is_chosen"}))
        else:
            parts = {}
            for key in ("train_accuracy", "test_accuracy"):
                a, b = _paired(by, big, key, chosen, key)
                if a:
                    parts[key] = stats.paired_diff(a, b, metric=key, factor=big,
                                                   reference=chosen,
                                                   reference_kind="chosen").as_dict()
            if len(parts) == 2:
                lows = [p["different"] and p["mean"] < 0 for p in parts.values()]
                highs = [p["different"] and p["mean"] > 0 for p in parts.values()]
                status = HELD if all(lows) else (NOT_HELD if any(highs) else INCONCLUSIVE)
                claims.append(Claim("large_factor_underfits", status,
                                    {"factor": big, "chosen": chosen, **parts}))
        g = [_num(r.get("test_gap")) for r in by[big].values()]
        g = [v for v in g if math.isfinite(v)]
        if g:
            s = stats.one_sample(g)
            claims.append(Claim("large_factor_underconfident", _sign_status(s, -1),
                                {"factor": big, "metric": "test_gap", **s}))

    noise = scope["label_noise"]
    if (noise is not None and _num(noise.get("rate")) > 0) or (
        noise is None and any(_has(rows, k) for k in MEMO_KEYS)
    ):
        claims.append(_noise_claim(by, cs, eps, noise, base_ok))
    if _has(rows, "student_test_accuracy"):
        claims.append(_distill_claim(by, cs, eps, scope["distill"], base_ok))

    return Verdict(
        scope=scope,
        selection={k: v for k, v in sel.items() if k != "comparisons"},
        selections=selections,
        claims=claims,
        comparisons=[c.as_dict() for c in cs],
        factors=factor_rows,
    )


#: Per-factor means added to ``Verdict.factors`` when the rows have them (noise, distillation).
_OPTIONAL_FACTOR_KEYS = (
    *MEMO_KEYS,
    "student_test_accuracy",
    "student_test_nll",
    "student_test_ece",
)


def _has(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    """Whether some run row has a finite value for ``key``."""
    return any(
        r.get("kind", "run") == "run" and math.isfinite(_num(r.get(key))) for r in rows
    )


def _cmp(cs: Sequence[stats.PairedDiff], kind: str, metric: str, eps: float | None):
    d = _find(cs, kind, metric, eps)
    return None if d is None else d.as_dict()


def _noise_claim(by, cs, eps, noise, base_ok) -> Claim:
    """``smoothing_helps_under_label_noise``: ε* (validation NLL, clean labels) against ε = 0,
    both trained on the same noisy labels, on *clean* test accuracy (Holm over the factors);
    the test NLL / ECE comparisons and the memorisation of the flipped examples beside it."""
    info: dict[str, Any] = {
        "factor": eps,
        "noise_rate": None if noise is None else noise.get("rate"),
        "noise_kind": None if noise is None else noise.get("kind"),
        "selected_on": {"split": "val", "metric": "nll"},
    }
    d = _find(cs, "baseline", "accuracy", eps) if base_ok and eps is not None else None
    if d is None:
        info["reason"] = "needs ε = 0 and a smoothed factor, on the same seeds"
        return Claim(NOISE_CLAIM, INCONCLUSIVE, info)
    info.update(d.as_dict())
    info["test_nll"] = _cmp(cs, "baseline", "nll", eps)
    info["test_ece"] = _cmp(cs, "baseline", "ece", eps)
    memo: dict[str, Any] = {}
    for key in MEMO_KEYS:
        memo[key] = {"smoothed": _mean(by, eps, key), "baseline": _mean(by, 0.0, key)}
    memo["noisy_label_accuracy_diff"] = _cmp(cs, "memorisation", "memo_noisy_label_accuracy", eps)
    memo["true_label_accuracy_diff"] = _cmp(cs, "memorisation", "memo_true_label_accuracy", eps)
    info["memorisation"] = memo
    return Claim(NOISE_CLAIM, _status(d, +1), info)


def _distill_claim(by, cs, eps, spec, base_ok) -> Claim:
    """``smoothed_teachers_distil_worse_students``: the students of the ε* teachers (ε* chosen
    on the teachers' validation NLL) against the students of the ε = 0 teachers, on test
    accuracy (Holm over the teacher factors); ``held`` when they are less accurate."""
    info: dict[str, Any] = {
        "factor": eps,
        "selected_on": {"split": "val", "metric": "nll", "of": "teachers"},
        "student": None if spec is None else spec.get("student"),
        "temperature": None if spec is None else spec.get("temperature"),
    }
    d = _find(cs, "student", "student_accuracy", eps) if base_ok and eps is not None else None
    if d is None:
        info["reason"] = "needs a teacher at ε = 0 and a smoothed teacher, on the same seeds"
        return Claim(DISTILL_CLAIM, INCONCLUSIVE, info)
    info.update(d.as_dict())
    info["student_test_nll"] = _cmp(cs, "student", "student_nll", eps)
    info["teacher_test_accuracy"] = _cmp(cs, "baseline", "accuracy", eps)
    info["teacher_test_nll"] = _cmp(cs, "baseline", "nll", eps)
    per = []
    for f in sorted(by):
        if f == 0.0:
            continue
        per.append({
            "factor": f,
            "student_test_accuracy": _cmp(cs, "student", "student_accuracy", f),
            "student_test_nll": _cmp(cs, "student", "student_nll", f),
            "teacher_test_accuracy": _cmp(cs, "baseline", "accuracy", f),
        })
    info["per_factor"] = per
    return Claim(DISTILL_CLAIM, _status(d, -1), info)


def _factor_of(run: Mapping[str, Any]) -> float:
    return float(run["smoothing"])


def bootstrap_intervals(
    runs: Sequence[Mapping[str, Any]],
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
    baseline: Any = 0.0,
    group: Callable[[Mapping[str, Any]], Any] | None = None,
) -> dict[tuple[str, str, Any], tuple[float, float]]:
    """Paired test-set bootstrap of every factor against the baseline (and its TS version).

    Uses each run's saved test logits (``arrays[run["key"]]["test_logits"]``) and temperature;
    seeds missing on either side are left out. Keys are ``(reference_kind, metric, factor)`` as
    in :func:`comparisons`. ``group(run)`` says which arm a run belongs to (default: its
    smoothing factor; the method comparison passes its method and strength), and ``baseline``
    is the baseline's arm.
    """
    if group is None:
        group = _factor_of
    out: dict[tuple[str, str, Any], tuple[float, float]] = {}
    if n_resamples <= 0:
        return out
    per: dict[Any, dict[int, tuple[dict[str, Any], dict[str, Any]]]] = {}
    counts = None
    for r in runs:
        arr = arrays.get(r.get("key", ""))
        if arr is None or "test_logits" not in arr:
            continue
        z = np.asarray(arr["test_logits"], dtype=np.float64)
        y = np.asarray(arr["test_labels"])
        if counts is None:
            counts = stats.resample_counts(y.size, n_resamples, seed)
        if counts.shape[1] != y.size:
            continue  # a run from another test set cannot be paired
        t = float(r.get("temperature", 1.0) or 1.0)
        per.setdefault(group(r), {})[int(r["seed"])] = (
            stats.resampled(stats.per_sample_metrics(z, y, n_bins), counts),
            stats.resampled(stats.per_sample_metrics(z / t, y, n_bins), counts),
        )
    if baseline not in per:
        return out
    for f in sorted(per):
        if f == baseline:
            continue
        seeds_ = sorted(set(per[f]) & set(per[baseline]))
        if not seeds_:
            continue
        raw_f = [per[f][s][0] for s in seeds_]
        ts_f = [per[f][s][1] for s in seeds_]
        raw_b = [per[baseline][s][0] for s in seeds_]
        ts_b = [per[baseline][s][1] for s in seeds_]
        for m in ("nll", "brier", "ece", "accuracy", "gap"):
            out[("baseline", m, f)] = stats.paired_bootstrap(raw_f, raw_b, m)
        for m in ("nll", "brier", "ece"):
            out[("baseline_ts", m, f)] = stats.paired_bootstrap(raw_f, ts_b, m)
            out[("refinement", m, f)] = stats.paired_bootstrap(ts_f, ts_b, m)
    return out
