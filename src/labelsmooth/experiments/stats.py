"""Seed-level paired statistics for the smoothing sweep.

The unit of evidence is the *seed*: for a given seed every factor sees the same split, the same
initial weights and the same batch order, so ``metric(ε, seed) − metric(ε₀, seed)`` is a paired
difference whose seed-to-seed spread is the noise of *training with* smoothing. For each
comparison this module gives

* the mean paired difference ``d̄`` over the ``n`` seeds, its sample std ``s_d`` and the
  Student-t 95% interval ``d̄ ± t_{0.975, n−1} · s_d / √n`` (a paired t-test, two-sided p-value);
  when every seed gives the same difference (``s_d = 0``, common for accuracy on a small test
  split) the t statistic is undefined and the p-value is the exact two-sided sign test,
  ``2^{1−n}``: two or five identical gains are not evidence (p = 0.5, 0.0625), six are;
* the effect size ``d_z = d̄ / s_d`` (Cohen's d for paired samples) and the relative change
  ``d̄ / |mean of the reference|``;
* Holm's step-down adjustment of the p-values over the factors compared (family-wise 5%); a
  difference counts (``different``) only when its Holm-adjusted p-value is below ``alpha``; the
  interval at Holm's level for that step (``holm_low``/``holm_high``) then excludes 0;
* optionally a paired bootstrap over *test examples* of the seed-mean difference (the same
  resampled indices for both models and every seed): the test-sampling noise, reported beside the
  seed-level interval but never used for a decision.

Everything here is numpy plus ``scipy.stats`` (the t quantile and distribution function).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "PairedDiff",
    "adjust",
    "holm",
    "one_sample",
    "paired_bootstrap",
    "paired_diff",
    "per_sample_metrics",
    "resample_counts",
    "resampled",
    "t_interval",
]


def _t_ppf(q: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _t_sf(t: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.sf(t, df))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample std, and the Student-t ``level`` interval of ``values``.

    With one value the std and the interval are NaN (nothing measures the noise); with a zero
    std the interval collapses to the mean.

    Example:
        >>> m, sd, lo, hi = t_interval([1.0, 2.0, 3.0])
        >>> m, sd, round(lo, 4), round(hi, 4)
        (2.0, 1.0, -0.4841, 4.4841)
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        raise ValueError("t_interval needs at least one value, got none")
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = _t_ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return m, sd, m - half, m + half


def _no_spread(mean: float, sd: float) -> bool:
    # Differences equal up to float rounding (e.g. the same accuracy gain on every seed).
    return sd <= 1e-12 * max(1.0, abs(mean))


def _t_test(mean: float, sd: float, n: int) -> float:
    """Two-sided one-sample t-test p-value of ``mean`` against 0 (NaN with one value)."""
    if n < 2 or math.isnan(sd):
        return math.nan
    if _no_spread(mean, sd):
        # Every seed gave the same difference, so the t statistic is undefined (not infinitely
        # significant): fall back to the exact two-sided sign test, all n signs alike.
        return 1.0 if mean == 0.0 else min(1.0, 2.0 ** (1 - n))
    t = abs(mean) / (sd / math.sqrt(n))
    return min(1.0, 2.0 * _t_sf(t, n - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN counts as 1).

    ``p_(i)`` sorted ascending becomes ``max_{j ≤ i} min(1, (m − j + 1) p_(j))``.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.array([1.0 if (v is None or math.isnan(v)) else float(v) for v in pvalues])
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return [float(round(v, 12)) for v in adj]


@dataclass
class PairedDiff:
    """One paired comparison ``metric(factor) − metric(reference)`` over seeds.

    ``reference_kind`` says what the reference is: ``"baseline"`` (ε = 0 as trained),
    ``"baseline_ts"`` (ε = 0 after temperature scaling) or ``"chosen"`` (the factor chosen on the
    validation split). ``family`` is the size of the Holm family the comparison belongs to.
    """

    metric: str
    factor: float
    reference: float
    reference_kind: str
    n: int
    mean: float
    sd: float
    low: float
    high: float
    p: float
    effect_size: float
    relative: float
    factor_mean: float
    reference_mean: float
    family: int = 1
    p_holm: float = math.nan
    holm_low: float = math.nan
    holm_high: float = math.nan
    different: bool = False
    boot_low: float | None = None
    boot_high: float | None = None

    @property
    def direction(self) -> int:
        """+1 (factor higher) / −1 (factor lower) when ``different``, else 0."""
        if not self.different:
            return 0
        return 1 if self.mean > 0 else -1

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["direction"] = self.direction
        return d


def paired_diff(
    a: Sequence[float],
    b: Sequence[float],
    *,
    metric: str,
    factor: float,
    reference: float,
    reference_kind: str = "baseline",
    level: float = 0.95,
) -> PairedDiff:
    """Paired difference ``a − b`` (same seeds, same order) with its t-interval and effect size.

    ``different`` is set here from the unadjusted test (``p < 1 − level``); :func:`adjust` resets
    it from Holm's adjusted p-value when the comparison is one of a family.

    Example:
        >>> d = paired_diff([0.10, 0.12, 0.11], [0.20, 0.21, 0.22], metric="ece", factor=0.1,
        ...                 reference=0.0)
        >>> round(d.mean, 4), d.different, d.direction
        (-0.1, True, -1)
    """
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"paired values must be two equal-length 1-D sequences, got {x.shape} and {y.shape}"
        )
    d = x - y
    mean, sd, lo, hi = t_interval(d, level)
    p = _t_test(mean, sd, d.size)
    if d.size < 2 or math.isnan(sd):
        es = math.nan
    elif _no_spread(mean, sd):
        es = math.copysign(math.inf, mean) if mean != 0 else 0.0
    else:
        es = mean / sd
    ref = float(y.mean())
    out = PairedDiff(
        metric=metric,
        factor=float(factor),
        reference=float(reference),
        reference_kind=reference_kind,
        n=int(d.size),
        mean=mean,
        sd=sd,
        low=lo,
        high=hi,
        p=p,
        effect_size=es,
        relative=mean / abs(ref) if ref != 0 else math.nan,
        factor_mean=float(x.mean()),
        reference_mean=ref,
    )
    out.p_holm, out.holm_low, out.holm_high = p, lo, hi
    out.different = bool(not math.isnan(p) and p < 1 - level)
    return out


def adjust(diffs: Sequence[PairedDiff], alpha: float = 0.05) -> None:
    """Holm-adjust a family of comparisons in place.

    Sets ``family``, ``p_holm``, ``different`` (``p_holm < alpha``) and the interval at the
    level Holm tests that comparison at (``1 − alpha / (m − rank)``, rank 0 for the smallest p).

    Example:
        >>> ds = [paired_diff([1.0, 1.1, 0.9], [0.0, 0.0, 0.0], metric="m", factor=f, reference=0)
        ...       for f in (0.1, 0.2)]
        >>> adjust(ds); [round(d.p_holm, 4) for d in ds]
        [0.0066, 0.0066]
    """
    m = len(diffs)
    adj = holm([d.p for d in diffs])
    order = np.argsort([1.0 if math.isnan(d.p) else d.p for d in diffs], kind="stable")
    for rank, i in enumerate(order):
        d = diffs[i]
        d.family = m
        d.p_holm = adj[i]
        d.different = bool(d.n >= 2 and adj[i] < alpha)
        if d.n >= 2 and not math.isnan(d.sd):
            half = _t_ppf(1 - alpha / (m - rank) / 2, d.n - 1) * d.sd / math.sqrt(d.n)
            d.holm_low, d.holm_high = d.mean - half, d.mean + half


def one_sample(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, std, t-interval and two-sided p-value of ``values`` against 0 (seed-level).

    Example:
        >>> r = one_sample([-0.05, -0.04, -0.06])
        >>> round(r["mean"], 3), r["high"] < 0
        (-0.05, True)
    """
    x = np.asarray(values, dtype=float)
    mean, sd, lo, hi = t_interval(x, level)
    return {"n": int(x.size), "mean": mean, "sd": sd, "low": lo, "high": hi,
            "p": _t_test(mean, sd, x.size)}


# ---------------------------------------------------------------------------------------------
# paired test-set bootstrap
# ---------------------------------------------------------------------------------------------
def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_sample_metrics(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Per-example pieces of the test metrics, for :func:`paired_bootstrap`.

    Returns ``nll``, ``brier``, ``accuracy`` (per-example values whose mean is the metric),
    ``conf``/``correct``/``bin`` (for the binned ECE: equal-width bins ``((m−1)/M, m/M]`` with 0
    in the first, as :func:`labelsmooth.calibration.expected_calibration_error`) and ``gap``.

    Example:
        >>> m = per_sample_metrics(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), 10)
        >>> m["accuracy"].tolist(), m["bin"].tolist()
        ([1.0, 0.0], [8, 7])
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    zs = z - z.max(axis=1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return {
        "nll": -logp[np.arange(y.size), y],
        "brier": ((p - onehot) ** 2).sum(axis=1),
        "accuracy": correct,
        "gap": conf - correct,
        "conf": conf,
        "correct": correct,
        "bin": bins,
        "n_bins": n_bins,
    }


def resample_counts(n: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``(n_resamples, n)`` matrix: how often each test example is drawn in each resample.

    Every statistic of a resample is then a matrix product, so all models and seeds share the
    same resamples (the pairing) at the cost of one ``(B, n) @ (n, ·)`` product each.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    return counts


def resampled(m: dict[str, Any], counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric of :func:`per_sample_metrics` ``m`` on every resample in ``counts``."""
    n = counts.shape[1]
    out = {k: counts @ m[k] / n for k in ("nll", "brier", "accuracy", "gap")}
    onehot = np.zeros((n, int(m["n_bins"])))
    onehot[np.arange(n), m["bin"]] = 1.0
    out["ece"] = np.abs(counts @ (onehot * (m["conf"] - m["correct"])[:, None])).sum(axis=1) / n
    return out


def _ece_resampled(m: dict[str, Any], idx: np.ndarray) -> np.ndarray:
    """Plug-in ECE of every resample given as rows of indices (a check of :func:`resampled`)."""
    b, n = idx.shape
    nb = int(m["n_bins"])
    flat = (m["bin"][idx] + nb * np.arange(b)[:, None]).ravel()
    sc = np.bincount(flat, weights=m["conf"][idx].ravel(), minlength=b * nb).reshape(b, nb)
    sa = np.bincount(flat, weights=m["correct"][idx].ravel(), minlength=b * nb).reshape(b, nb)
    return np.abs(sc - sa).sum(axis=1) / n


def paired_bootstrap(
    runs_a: Sequence[dict[str, Any]],
    runs_b: Sequence[dict[str, Any]],
    metric: str,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    counts: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean_seeds(metric(a) − metric(b))`` over test examples.

    ``runs_a[i]`` and ``runs_b[i]`` are :func:`per_sample_metrics` of the two models for the
    same seed on the same test set, or already :func:`resampled` dicts (then ``counts`` is not
    needed). Each resample draws one set of test examples and applies it to every model and
    seed, so the interval reflects only which test examples were drawn.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 200)
        >>> a = [per_sample_metrics(rng.normal(size=(200, 3)), y)]
        >>> lo, hi = paired_bootstrap(a, a, "nll", n_resamples=50)
        >>> lo == hi == 0.0
        True
    """
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError("paired_bootstrap needs the same positive number of runs on both sides")

    def vec(m: dict[str, Any]) -> np.ndarray:
        nonlocal counts
        if "bin" not in m:  # already resampled
            return m[metric]
        if counts is None:
            counts = resample_counts(m["accuracy"].size, n_resamples, seed)
        return resampled(m, counts)[metric]

    diffs = np.mean([vec(a) - vec(b) for a, b in zip(runs_a, runs_b)], axis=0)
    q = (1 - level) / 2
    lo, hi = np.quantile(diffs, [q, 1 - q])
    return float(lo), float(hi)
