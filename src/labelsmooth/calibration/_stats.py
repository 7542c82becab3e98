"""The shared machinery of :mod:`labelsmooth.calibration`: input checks, binning, per-bin sums.

Public within the package (not exported by :mod:`labelsmooth.calibration`): the one-shot metrics
(:mod:`.metrics`), the streaming meters (:mod:`.meters`), temperature scaling
(:mod:`.temperature`), the reliability diagrams (:mod:`.plots`) and the torchmetrics integration
all use these, so each formula and each check has one home.  The conventions (bin edges, ties,
dtypes, which values are checked when) are documented in :mod:`.metrics`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch

from labelsmooth._validation import (
    _Shown,
    check_validate,
    fail,
    prior_sum_slack,
    should_check_values,
    tensor_value,
)

NORMS = ("l1", "l2", "max")
BINNINGS = ("width", "mass")


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def as_tensor(x: Any, name: str) -> torch.Tensor:
    """A tensor from a tensor, a NumPy array or a (nested) list/tuple of numbers."""
    if isinstance(x, torch.Tensor):
        return x
    import numpy as np  # a core dependency

    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, (list, tuple)):
        try:
            return torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            pass
    expected = "a torch.Tensor, a numpy array or a list of numbers"
    raise fail(name, expected, type(x).__name__, TypeError)


def check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
        raise fail("n_bins", "a positive int", n_bins, TypeError)
    if n_bins < 1:
        raise fail("n_bins", "a positive int", n_bins)
    return int(n_bins)


def check_bool(arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(arg, "a bool", value, TypeError)
    return value


def _first(mask: torch.Tensor) -> int:
    """Index of the first True entry of a 1-D bool tensor (the caller knows there is one)."""
    return int(mask.nonzero()[0, 0])


def check_values(x: torch.Tensor, labels: torch.Tensor, from_logits: bool, arg: str) -> None:
    """Value checks (they read the data: one host-device sync on accelerators).

    * labels are class indices in ``[0, K)``;
    * logits (``from_logits=True``) contain no NaN and no ``+inf``, and every row has a finite
      entry (``-inf`` masks a class): the row maximum is finite;
    * probabilities are finite, in ``[0, 1]`` (minimum >= 0, maximum <= 1; NaN fails both),
      and each row sums to 1 within :func:`~labelsmooth._validation.prior_sum_slack` of the input
      dtype (the rule for priors).

    Reductions only (no ``(N, K)`` temporaries), and one read of a flag tensor when all is well;
    the failing row is located only to write the message.
    """
    k = x.shape[1]
    label_bad = (labels < 0) | (labels >= k)
    if from_logits:
        row_bad = ~torch.isfinite(x.amax(dim=1))
        sum_bad = None
    else:
        lo, hi = torch.aminmax(x)  # over the whole tensor (fast); the row is found on failure
        range_ok = (lo >= 0) & (hi <= 1)  # NaN fails both
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        sums = x.sum(dim=1, dtype=acc)
        slack = prior_sum_slack(x.dtype, k)
        sum_bad = ~((sums - 1.0).abs() <= slack)
    flags = [label_bad.any()]
    flags += [row_bad.any()] if sum_bad is None else [~range_ok, sum_bad.any()]
    if not bool(torch.stack(flags).any()):
        return
    if bool(flags[0]):
        i = _first(label_bad)
        got = _Shown(f"labels[{i}] = {int(labels[i])}")
        raise fail("labels", f"class indices in [0, {k})", got)
    if from_logits:
        i = _first(row_bad)
        raise fail(
            arg,
            "logits without NaN or +inf and with a finite entry in every row",
            _Shown(f"{arg}[{i}] = {tensor_value(x[i])}"),
        )
    hint = "; pass from_logits=True for logits"  # the usual cause of out-of-range "probabilities"
    if bool(flags[1]):
        row_bad = ~((x.amin(dim=1) >= 0) & (x.amax(dim=1) <= 1))
        i = _first(row_bad)
        raise fail(
            arg,
            f"probabilities, finite and in [0, 1]{hint}",
            _Shown(f"{arg}[{i}] = {tensor_value(x[i])}"),
        )
    assert sum_bad is not None  # internal: set on the probabilities path
    i = _first(sum_bad)
    raise fail(
        arg,
        f"probabilities with rows summing to 1 (within {slack:.3g}{hint})",
        _Shown(f"{arg}[{i}] = {tensor_value(x[i])} summing to {float(sums[i]):.6g}"),
    )


def checked(
    probs: Any,
    labels: Any,
    from_logits: bool,
    validate: bool | None = None,
    *,
    check: bool | None = None,
    arg: str = "probs",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the inputs; return them as given (probabilities or logits) and int64 labels.

    Shapes and dtypes are always checked. Values are checked where
    :func:`~labelsmooth._validation.should_check_values` says so (on CPU by default, on CUDA only
    with ``validate=True``); ``check`` overrides that decision for callers that read values to the
    host anyway (smooth ECE, the bootstrap), which check unless ``validate=False``.  ``arg`` is the
    name of the first argument in messages.
    """
    probs = as_tensor(probs, arg)
    labels = as_tensor(labels, "labels")
    check_bool("from_logits", from_logits)
    check_validate(validate)
    if probs.dim() != 2:
        raise fail(
            arg,
            "a 2-D tensor of shape (N, K)"
            + (" (pass (N, 2) probabilities for a binary task)" if probs.dim() == 1 else ""),
            _Shown(f"shape {tuple(probs.shape)}"),
        )
    if not probs.is_floating_point():
        raise fail(arg, "a floating-point tensor", probs.dtype, TypeError)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise fail("labels", "an integer tensor of class indices", labels.dtype, TypeError)
    if labels.dim() != 1 or labels.shape[0] != probs.shape[0]:
        raise fail(
            "labels",
            f"of shape (N,) = ({probs.shape[0]},) matching {arg}",
            _Shown(f"shape {tuple(labels.shape)}"),
        )
    if probs.shape[0] == 0:
        raise fail(arg, "at least one sample", _Shown("N = 0"))
    if probs.shape[1] < 2:
        raise fail(arg, "at least 2 classes", _Shown(f"K = {probs.shape[1]}"))
    if labels.device != probs.device:
        raise fail("labels", f"on the device of {arg} ({probs.device})", _Shown(str(labels.device)))
    if check is None:
        check = should_check_values(validate, probs, labels)
    if check:
        check_values(probs, labels, from_logits, arg)
    return probs, labels.long()


def prepare(
    probs: Any,
    labels: Any,
    from_logits: bool,
    validate: bool | None = None,
    *,
    check: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`checked`, then float probabilities (float32 or float64; a softmax of logits)."""
    x, y = checked(probs, labels, from_logits, validate, check=check)
    return to_probs(x, from_logits), y


def to_probs(x: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """Probabilities in float32 or wider from checked probabilities or logits."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return torch.softmax(x, dim=-1) if from_logits else x


def host_check(validate: bool | None) -> bool:
    """Value checks for functions that read values to the host anyway: on unless validate=False."""
    return check_validate(validate) is not False


def confidence_correct(
    probs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    pred = probs.argmax(dim=-1)
    conf = probs.gather(1, pred[:, None]).squeeze(1)
    correct = (pred == labels).to(probs.dtype)
    return conf, correct


# ---------------------------------------------------------------------------------------------
# binning and per-bin sums
# ---------------------------------------------------------------------------------------------
def width_bins(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin index in [0, n_bins) with right-closed bins ((m-1)/M, m/M]; 0 -> 0 and 1 -> M-1."""
    inner = (torch.arange(1, n_bins, dtype=torch.float64, device=conf.device) / n_bins).to(
        conf.dtype
    )
    # bucketize(right=False) returns i with inner[i-1] < x <= inner[i]: exactly Guo's convention.
    # Values below 0 or above 1 (rounding) are clamped by construction to the end bins.
    return torch.bucketize(conf, inner, right=False)


def mass_bins(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-mass bin index per sample, deterministic under ties and input permutations."""
    n = conf.shape[0]
    # Lexicographic (confidence, correctness) order from two stable sorts.
    by_correct = torch.argsort(correct, stable=True)
    order = by_correct[torch.argsort(conf[by_correct], stable=True)]
    q, r = divmod(n, n_bins)
    pos = torch.arange(n, device=conf.device)
    big = r * (q + 1)  # the first r bins hold q + 1 samples, the rest q
    bin_of_pos = torch.where(pos < big, pos // (q + 1), r + (pos - big) // max(q, 1))
    bins = torch.empty_like(pos)
    bins[order] = bin_of_pos
    return bins


def bin_stats(
    bins: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count, sum of confidence, sum of correct) in float64."""
    z = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    counts = z.index_add(0, bins, torch.ones_like(conf, dtype=torch.float64))
    sum_conf = z.index_add(0, bins, conf.to(torch.float64))
    sum_correct = z.index_add(0, bins, correct.to(torch.float64))
    return counts, sum_conf, sum_correct


def ce_from_stats(
    counts: torch.Tensor, sum_conf: torch.Tensor, sum_correct: torch.Tensor, norm: str
) -> torch.Tensor:
    """Calibration error from per-bin sums; empty bins have zero weight.

    l1:  sum_b |S_conf - S_acc| / N          (= sum_b n_b/N |conf_b - acc_b|)
    l2:  sqrt(sum_b (S_conf - S_acc)^2 / n_b / N)
    max: max over non-empty b of |S_conf - S_acc| / n_b
    """
    total = counts.sum()
    diff = (sum_conf - sum_correct).abs()
    safe = counts.clamp_min(1.0)
    if norm == "l1":
        return diff.sum() / total
    if norm == "l2":
        return ((diff * diff / safe).sum() / total).sqrt()
    if norm == "max":
        return torch.where(counts > 0, diff / safe, torch.zeros_like(diff)).max()
    raise fail("norm", f"one of {NORMS}", norm)


def debiased_sq_from_stats(
    counts: torch.Tensor, sum_conf: torch.Tensor, sum_correct: torch.Tensor
) -> torch.Tensor:
    """Kumar et al. (2019) unbiased estimate of the squared L2 calibration error.

    sum over bins with n_b >= 2 of n_b/N [(conf_b - acc_b)^2 - acc_b (1 - acc_b) / (n_b - 1)].
    """
    total = counts.sum()
    safe = counts.clamp_min(1.0)
    conf_b = sum_conf / safe
    acc_b = sum_correct / safe
    var = acc_b * (1.0 - acc_b) / (counts - 1.0).clamp_min(1.0)
    term = (conf_b - acc_b) ** 2 - var
    term = torch.where(counts >= 2, term, torch.zeros_like(term))
    return (counts * term).sum() / total


class CalibrationGap(NamedTuple):
    """Signed calibration gap; positive values mean over-confidence.

    Attributes:
        overall: 0-d tensor, mean confidence minus accuracy.
        per_bin: ``(n_bins,)`` mean confidence minus accuracy in each bin (NaN for empty bins).
        counts: ``(n_bins,)`` int64 number of samples per bin.
        confidence: ``(n_bins,)`` mean confidence per bin (NaN for empty bins).
        accuracy: ``(n_bins,)`` accuracy per bin (NaN for empty bins).
    """

    overall: torch.Tensor
    per_bin: torch.Tensor
    counts: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor


def gap_from_stats(
    counts: torch.Tensor, sum_conf: torch.Tensor, sum_correct: torch.Tensor
) -> CalibrationGap:
    nan = torch.full_like(counts, float("nan"))
    nonempty = counts > 0
    conf_b = torch.where(nonempty, sum_conf / counts.clamp_min(1.0), nan)
    acc_b = torch.where(nonempty, sum_correct / counts.clamp_min(1.0), nan)
    overall = (sum_conf.sum() - sum_correct.sum()) / counts.sum()
    return CalibrationGap(overall, conf_b - acc_b, counts.round().long(), conf_b, acc_b)


def classwise_stats(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(K, M) per-class per-bin sums of (count, p_k, [label == k]) in float64.

    Rows are processed in chunks of at most ~4M probabilities, so the temporary (rows, K) bin
    indices stay small however large N * K is.
    """
    n, k = probs.shape
    dev = probs.device
    counts = torch.zeros(k * n_bins, dtype=torch.float64, device=dev)
    sum_p = torch.zeros_like(counts)
    sum_y = torch.zeros_like(counts)
    offsets = torch.arange(k, device=dev) * n_bins
    step = max(1, (1 << 22) // k)
    for lo in range(0, n, step):
        p = probs[lo : lo + step]
        y = labels[lo : lo + step]
        flat = width_bins(p, n_bins) + offsets  # same edge convention as the top-label ECE
        counts += torch.bincount(flat.reshape(-1), minlength=k * n_bins).to(torch.float64)
        sum_p.index_add_(0, flat.reshape(-1), p.reshape(-1).to(torch.float64))
        # [label == k] is 1 only at (row, label): one entry per row.
        at_label = flat.gather(1, y[:, None]).squeeze(1)
        sum_y.index_add_(0, at_label, torch.ones_like(at_label, dtype=torch.float64))
    shape = (k, n_bins)
    return counts.view(shape), sum_p.view(shape), sum_y.view(shape)


def classwise_from_stats(
    counts: torch.Tensor, sum_p: torch.Tensor, sum_y: torch.Tensor
) -> torch.Tensor:
    n = counts[0].sum()
    return ((sum_p - sum_y).abs().sum(dim=1) / n).mean()


# ---------------------------------------------------------------------------------------------
# smooth ECE (Błasiok & Nakkiran, 2023)
# ---------------------------------------------------------------------------------------------
def _fft_correlate_valid(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``out[j] = sum_i x[j + i] * w[i]`` for ``j`` in ``[0, len(x) - len(w)]``, via FFT."""
    n = x.shape[0] + w.shape[0] - 1
    size = 1 << (n - 1).bit_length()
    fx = torch.fft.rfft(x, size)
    fw = torch.fft.rfft(w.flip(0), size)
    full = torch.fft.irfft(fx * fw, size)[:n]
    return full[w.shape[0] - 1 : x.shape[0]]


def _smooth_reflected(
    f: torch.Tensor, values: torch.Tensor, sigma: float, t_eval: torch.Tensor
) -> torch.Tensor:
    """Gaussian kernel regression numerator ``sum_i K_sigma(t, f_i) v_i`` with reflection at 0, 1.

    The samples are spread linearly onto a uniform grid of ``G = max(2000, round(20/sigma))//2 + 1``
    points, convolved with the Gaussian density (reflected at both ends) and linearly interpolated
    at ``t_eval`` -- the discretisation of the authors' reference implementation (relplot), so the
    two agree to rounding.
    """
    g = max(2000, round(20.0 / sigma)) // 2 + 1
    dev = f.device
    scaled = f * (g - 1)
    lo = scaled.floor().clamp(0, g - 2)
    frac = scaled - lo
    lo = lo.long().clamp(0, g - 2)  # NaN (unchecked input) must not become a wild index
    grid = torch.zeros(g, dtype=torch.float64, device=dev)
    grid.index_add_(0, lo, (1.0 - frac) * values)
    grid.index_add_(0, lo + 1, frac * values)
    tk = torch.linspace(0.0, 1.0, g, dtype=torch.float64, device=dev)
    kernel = torch.exp(-((tk - 0.5) ** 2) / (2.0 * sigma**2)) / (math.sqrt(2.0 * math.pi) * sigma)
    # Reflect at both ends (mirror without repeating the end points) then convolve.
    ext = torch.cat([grid.flip(0)[:-1], grid, grid.flip(0)[1:]])
    smoothed = _fft_correlate_valid(ext, kernel.flip(0))[g // 2 : g // 2 + g]
    idx = (t_eval * (g - 1)).floor().clamp(0, g - 2)
    res = (t_eval - idx / (g - 1)) * (g - 1)
    idx = idx.long()
    return smoothed[idx] * (1.0 - res) + smoothed[idx + 1] * res


def _smece_at(f: torch.Tensor, r: torch.Tensor, sigma: float) -> float:
    n_eval = max(round(10.0 / sigma), 200)
    t = torch.linspace(0.0, 1.0, n_eval, dtype=torch.float64, device=f.device)
    num = _smooth_reflected(f, r, sigma, t)
    dens = _smooth_reflected(f, torch.ones_like(r), sigma, t) + 1e-4
    return float(((num / dens).abs() * dens).sum() / dens.sum())


def smece(f: torch.Tensor, correct: torch.Tensor, bandwidth: float | None, eps: float = 1e-3):
    f = f.to(torch.float64)
    r = f - correct.to(torch.float64)
    if bandwidth is not None:
        return _smece_at(f, r, bandwidth), bandwidth

    # Automatic bandwidth: the fixed point sigma = smECE_sigma, by bisection on (0, 1]
    # (smECE_sigma decreases in sigma, so "sigma < smECE_sigma" means sigma is too small).
    def too_small(s: float) -> bool:
        return s < eps or s < _smece_at(f, r, s)

    hi, lo = 1.0, 0.0
    if not too_small(hi):
        for _ in range(10):
            mid = 0.5 * (hi + lo)
            if too_small(mid):
                lo = mid
            else:
                hi = mid
    return _smece_at(f, r, hi), hi


# ---------------------------------------------------------------------------------------------
# per-sample scores and the bootstrap
# ---------------------------------------------------------------------------------------------
def log_prob_true(x: torch.Tensor, labels: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """Per-sample ``log p_{i, y_i}`` in float64 from validated probabilities or logits."""
    if from_logits:
        logits = x if x.dtype in (torch.float32, torch.float64) else x.float()
        logp = torch.log_softmax(logits, dim=-1)
    else:
        logp = x.log()
    return logp.gather(1, labels[:, None]).squeeze(1).to(torch.float64)


def brier_per_sample(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum_k (p_ik - [y_i = k])^2`` in float64 from validated probabilities."""
    p = p.to(torch.float64)
    onehot = torch.zeros_like(p).scatter_(1, labels[:, None], 1.0)
    return ((p - onehot) ** 2).sum(dim=1)


def gap_of(conf: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Signed top-label gap, mean confidence minus accuracy, of per-sample tensors."""
    return conf.mean() - correct.mean()


def check_bootstrap_args(n_resamples: Any, alpha: Any, seed: Any) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral):
        raise fail("n_resamples", "a positive int", n_resamples, TypeError)
    if n_resamples < 1:
        raise fail("n_resamples", "a positive int", n_resamples)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise fail("alpha", "a float in (0, 1)", alpha, TypeError)
    if not 0.0 < alpha < 1.0:
        raise fail("alpha", "a float in (0, 1)", alpha)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise fail("seed", "an int", seed, TypeError)


def percentile_bootstrap(
    stat: Callable[[torch.Tensor], float],
    n: int,
    device: torch.device,
    n_resamples: int,
    alpha: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of ``stat(idx)`` over seeded resamples ``idx`` of ``range(n)``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    values = torch.empty(n_resamples, dtype=torch.float64)
    for b in range(n_resamples):
        idx = torch.randint(0, n, (n,), generator=gen).to(device)
        values[b] = stat(idx)
    q = torch.tensor([alpha / 2.0, 1.0 - alpha / 2.0], dtype=torch.float64)
    low, high = torch.quantile(values, q).tolist()
    return low, high
