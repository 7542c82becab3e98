"""Calibration metrics as pure functions of ``(probs, labels)``.

Every metric takes ``probs`` of shape ``(N, K)`` holding class probabilities, or logits when
``from_logits=True`` is passed explicitly (the input kind is never guessed), and integer ``labels``
of shape ``(N,)``.  Probabilities are computed in float32 or wider: float16/bfloat16 inputs are
upcast before the softmax (half-precision saturation would create spurious confidences of exactly
1.0), float64 stays float64.  Binned statistics are accumulated in float64.

Conventions (Guo et al., 2017):

* confidence ``c_i = max_k p_ik``, prediction ``argmax_k p_ik`` (first index on ties), correctness
  ``a_i = [prediction == label]``;
* equal-width bins: bin ``m`` (1-based) holds confidences in ``((m-1)/M, m/M]``; a confidence of
  exactly 0 goes to the first bin and 1.0 to the last.  Edges are the correctly rounded ``k/M``
  values in the confidence dtype, so a confidence equal to ``k/M`` lies in bin ``k`` (1-based);
* equal-mass bins: samples sorted by confidence and split into ``M`` contiguous groups whose sizes
  differ by at most one (the first ``N mod M`` groups get the extra sample).  Ties in confidence are
  ordered by correctness (incorrect first), so the result does not depend on the input order;
* empty bins carry zero weight and never produce NaN in a scalar metric.

Inputs are checked as the losses check theirs.  Shapes and dtypes always.  Values -- labels in
``[0, K)``; probabilities finite, in ``[0, 1]`` and summing to 1 per row within
:func:`~labelsmooth._validation.prior_sum_slack` of their dtype (``max(1e-4, K * eps)``); logits
without NaN or ``+inf`` -- on CPU by default, and on accelerators only with ``validate=True``
(reading values there is a host-device sync; ``validate=False`` never checks).  Raw logits passed
without ``from_logits=True`` are therefore refused instead of giving impossible values.
:func:`smooth_calibration_error` and :func:`bootstrap_ci` read results to the host anyway, so they
check values on every device unless ``validate=False``.  Unchecked bad values give meaningless
results or indexing errors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from labelsmooth._validation import (
    _Shown,
    check_choice,
    check_validate,
    fail,
    prior_sum_slack,
    should_check_values,
    tensor_value,
)

__all__ = [
    "BootstrapCI",
    "CalibrationGap",
    "accuracy",
    "adaptive_calibration_error",
    "bootstrap_ci",
    "brier_score",
    "calibration_gap",
    "classwise_calibration_error",
    "debiased_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "rms_calibration_error",
    "smooth_calibration_error",
]

_NORMS = ("l1", "l2", "max")
_BINNINGS = ("width", "mass")


# ---------------------------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------------------------
def _as_tensor(x: Any, name: str) -> torch.Tensor:
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
    raise fail(name, "a torch.Tensor, a numpy array or a list of numbers", type(x).__name__, TypeError)


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
        raise fail("n_bins", "a positive int", n_bins, TypeError)
    if n_bins < 1:
        raise fail("n_bins", "a positive int", n_bins)
    return int(n_bins)


def _check_bool(arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(arg, "a bool", value, TypeError)
    return value


def _first(mask: torch.Tensor) -> int:
    """Index of the first True entry of a 1-D bool tensor (the caller knows there is one)."""
    return int(mask.nonzero()[0, 0])


def _check_values(x: torch.Tensor, labels: torch.Tensor, from_logits: bool, arg: str) -> None:
    """Value checks (they read the data: a host-device sync on accelerators).

    * labels are class indices in ``[0, K)``;
    * logits (``from_logits=True``) contain no NaN and no ``+inf``, and every row has a finite
      entry (``-inf`` masks a class);
    * probabilities are finite, in ``[0, 1]``, and each row sums to 1 within
      :func:`~labelsmooth._validation.prior_sum_slack` of the input dtype (the rule for priors).
    """
    k = x.shape[1]
    bad = (labels < 0) | (labels >= k)
    if bool(bad.any()):
        i = _first(bad)
        raise fail("labels", f"class indices in [0, {k})", _Shown(f"labels[{i}] = {int(labels[i])}"))
    if from_logits:
        bad_rows = (torch.isnan(x) | (x == math.inf)).any(dim=1) | (x == -math.inf).all(dim=1)
        if bool(bad_rows.any()):
            i = _first(bad_rows)
            raise fail(
                arg,
                "logits without NaN or +inf and with a finite entry in every row",
                _Shown(f"{arg}[{i}] = {tensor_value(x[i])}"),
            )
        return
    hint = "; pass from_logits=True for logits"  # the usual cause of out-of-range "probabilities"
    bad_rows = (torch.isnan(x) | (x < 0) | (x > 1)).any(dim=1)
    if bool(bad_rows.any()):
        i = _first(bad_rows)
        raise fail(
            arg,
            f"probabilities, finite and in [0, 1]{hint}",
            _Shown(f"{arg}[{i}] = {tensor_value(x[i])}"),
        )
    slack = prior_sum_slack(x.dtype, k)
    sums = x.sum(dim=1, dtype=torch.float64)
    bad_rows = (sums - 1.0).abs() > slack
    if bool(bad_rows.any()):
        i = _first(bad_rows)
        raise fail(
            arg,
            f"probabilities with rows summing to 1 (within {slack:.3g}{hint})",
            _Shown(f"{arg}[{i}] = {tensor_value(x[i])} summing to {float(sums[i]):.6g}"),
        )


def _checked(
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
    probs = _as_tensor(probs, arg)
    labels = _as_tensor(labels, "labels")
    _check_bool("from_logits", from_logits)
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
        _check_values(probs, labels, from_logits, arg)
    return probs, labels.long()


def _prepare(
    probs: Any,
    labels: Any,
    from_logits: bool,
    validate: bool | None = None,
    *,
    check: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_checked`, then float probabilities (float32 or float64; a softmax of logits)."""
    x, y = _checked(probs, labels, from_logits, validate, check=check)
    return _to_probs(x, from_logits), y


def _to_probs(x: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """Probabilities in float32 or wider from checked probabilities or logits."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return torch.softmax(x, dim=-1) if from_logits else x


def _host_check(validate: bool | None) -> bool:
    """Value checks for functions that read values to the host anyway: on unless validate=False."""
    return check_validate(validate) is not False


def _confidence_correct(
    probs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    pred = probs.argmax(dim=-1)
    conf = probs.gather(1, pred[:, None]).squeeze(1)
    correct = (pred == labels).to(probs.dtype)
    return conf, correct


# ---------------------------------------------------------------------------------------------
# binning
# ---------------------------------------------------------------------------------------------
def _width_bins(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin index in [0, n_bins) with right-closed bins ((m-1)/M, m/M]; 0 -> 0 and 1 -> M-1."""
    inner = (torch.arange(1, n_bins, dtype=torch.float64, device=conf.device) / n_bins).to(
        conf.dtype
    )
    # bucketize(right=False) returns i with inner[i-1] < x <= inner[i]: exactly Guo's convention.
    # Values below 0 or above 1 (rounding) are clamped by construction to the end bins.
    return torch.bucketize(conf, inner, right=False)


def _mass_bins(conf: torch.Tensor, correct: torch.Tensor, n_bins: int) -> torch.Tensor:
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


def _bin_stats(
    bins: torch.Tensor, conf: torch.Tensor, correct: torch.Tensor, n_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin (count, sum of confidence, sum of correct) in float64."""
    z = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    counts = z.index_add(0, bins, torch.ones_like(conf, dtype=torch.float64))
    sum_conf = z.index_add(0, bins, conf.to(torch.float64))
    sum_correct = z.index_add(0, bins, correct.to(torch.float64))
    return counts, sum_conf, sum_correct


def _binned(
    probs: Any,
    labels: Any,
    n_bins: int,
    from_logits: bool,
    binning: str,
    validate: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_bins = _check_n_bins(n_bins)
    check_choice("binning", binning, _BINNINGS)
    p, y = _prepare(probs, labels, from_logits, validate)
    conf, correct = _confidence_correct(p, y)
    if binning == "width":
        bins = _width_bins(conf, n_bins)
    else:
        bins = _mass_bins(conf, correct, n_bins)
    return _bin_stats(bins, conf, correct, n_bins)


def _ce_from_stats(
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
    raise fail("norm", f"one of {_NORMS}", norm)


def _debiased_sq_from_stats(
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


# ---------------------------------------------------------------------------------------------
# binned top-label metrics
# ---------------------------------------------------------------------------------------------
def expected_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    norm: str = "l1",
    binning: str = "width",
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Top-label expected calibration error (Guo et al., 2017).

    .. math::
        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}\,
        \bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|

    with bins ``B_m = {i : c_i in ((m-1)/M, m/M]}`` (0 in the first bin, 1.0 in the last).
    ``norm="l2"`` gives ``sqrt(sum_m |B_m|/N (acc - conf)^2)`` and ``norm="max"`` the maximum
    gap over non-empty bins.  ``binning="mass"`` uses equal-mass bins instead (see module doc).

    Args:
        probs: ``(N, K)`` probabilities, or logits with ``from_logits=True``.
        labels: ``(N,)`` integer class indices.
        n_bins: number of bins ``M``.
        from_logits: apply a softmax (in float32 or wider) to ``probs`` first.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS calibration error) or ``"max"`` (MCE).
        binning: ``"width"`` (equal-width) or ``"mass"`` (equal-mass, adaptive).

    Returns:
        0-d float64 tensor.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> labels = torch.tensor([0, 1, 1])
        >>> round(expected_calibration_error(probs, labels, n_bins=10).item(), 4)
        0.3333
    """
    check_choice("norm", norm, _NORMS)
    stats = _binned(probs, labels, n_bins, from_logits, binning, validate)
    return _ce_from_stats(*stats, norm)


def maximum_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    binning: str = "width",
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Maximum calibration error over non-empty bins.

    .. math::
        \mathrm{MCE} = \max_{m: |B_m|>0} |\mathrm{acc}(B_m) - \mathrm{conf}(B_m)|


    Same bins as :func:`expected_calibration_error`; empty bins are ignored.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(maximum_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=10).item(), 4)
        0.6
    """
    return expected_calibration_error(
        probs,
        labels,
        n_bins,
        from_logits=from_logits,
        norm="max",
        binning=binning,
        validate=validate,
    )


def rms_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    binning: str = "width",
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Plug-in RMS (L2) calibration error.

    .. math::
        \mathrm{RMSCE} = \sqrt{\sum_m \frac{|B_m|}{N}(\mathrm{acc}(B_m)-\mathrm{conf}(B_m))^2}


    Biased upward (by the within-bin label variance); see :func:`debiased_calibration_error`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(rms_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=10).item(), 4)
        0.3916
    """
    return expected_calibration_error(
        probs,
        labels,
        n_bins,
        from_logits=from_logits,
        norm="l2",
        binning=binning,
        validate=validate,
    )


def adaptive_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    norm: str = "l1",
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Adaptive (equal-mass) ECE: :func:`expected_calibration_error` with ``binning="mass"``.

    Samples are sorted by confidence (ties: incorrect before correct) and split into ``M`` groups
    whose sizes differ by at most one; with ``M > N`` the extra bins are empty and carry no weight.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
        >>> labels = torch.tensor([0, 1, 1, 0])
        >>> round(adaptive_calibration_error(probs, labels, n_bins=2).item(), 4)
        0.25
    """
    return expected_calibration_error(
        probs,
        labels,
        n_bins,
        from_logits=from_logits,
        norm=norm,
        binning="mass",
        validate=validate,
    )


def debiased_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    binning: str = "width",
    squared: bool = False,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Debiased L2 calibration error (Bröcker 2012; Ferro & Fricker 2012; Kumar et al. 2019).

    The plug-in squared gap of a bin overestimates the true one by the variance of the bin's
    accuracy; subtracting its unbiased estimate gives

    .. math::
        \widehat{\mathrm{CE}}^2 = \sum_{m: n_m \ge 2} \frac{n_m}{N}\Bigl[(\mathrm{conf}_m -
        \mathrm{acc}_m)^2 - \frac{\mathrm{acc}_m (1-\mathrm{acc}_m)}{n_m - 1}\Bigr]

    (bins with fewer than two samples contribute 0).  Returns
    :math:`\sqrt{\max(\widehat{\mathrm{CE}}^2, 0)}`, or the unclipped
    :math:`\widehat{\mathrm{CE}}^2` (which can be negative, and is unbiased) when ``squared=True``.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
        >>> labels = torch.tensor([0, 0, 1, 0])
        >>> round(debiased_calibration_error(probs, labels, n_bins=1, squared=True).item(), 4)
        -0.0625
    """
    _check_bool("squared", squared)
    est = _debiased_sq_from_stats(*_binned(probs, labels, n_bins, from_logits, binning, validate))
    return est if squared else est.clamp_min(0.0).sqrt()


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


def _gap_from_stats(
    counts: torch.Tensor, sum_conf: torch.Tensor, sum_correct: torch.Tensor
) -> CalibrationGap:
    nan = torch.full_like(counts, float("nan"))
    nonempty = counts > 0
    conf_b = torch.where(nonempty, sum_conf / counts.clamp_min(1.0), nan)
    acc_b = torch.where(nonempty, sum_correct / counts.clamp_min(1.0), nan)
    overall = (sum_conf.sum() - sum_correct.sum()) / counts.sum()
    return CalibrationGap(overall, conf_b - acc_b, counts.round().long(), conf_b, acc_b)


def calibration_gap(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    binning: str = "width",
    validate: bool | None = None,
) -> CalibrationGap:
    r"""Signed over/under-confidence, overall and per equal-width bin.

    ``overall`` :math:`= \frac1N\sum_i c_i - \frac1N\sum_i a_i` (positive: over-confident,
    negative: under-confident, as label-smoothed models often are).  ``per_bin[m]`` is
    :math:`\mathrm{conf}(B_m) - \mathrm{acc}(B_m)`.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> gap = calibration_gap(probs, torch.tensor([0, 1, 1]), n_bins=2)
        >>> round(gap.overall.item(), 4), gap.counts.tolist()
        (0.0667, [0, 3])
    """
    return _gap_from_stats(*_binned(probs, labels, n_bins, from_logits, binning, validate))


# ---------------------------------------------------------------------------------------------
# class-wise ECE
# ---------------------------------------------------------------------------------------------
def _classwise_stats(
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
        flat = _width_bins(p, n_bins) + offsets  # same edge convention as the top-label ECE
        counts += torch.bincount(flat.reshape(-1), minlength=k * n_bins).to(torch.float64)
        sum_p.index_add_(0, flat.reshape(-1), p.reshape(-1).to(torch.float64))
        # [label == k] is 1 only at (row, label): one entry per row.
        at_label = flat.gather(1, y[:, None]).squeeze(1)
        sum_y.index_add_(0, at_label, torch.ones_like(at_label, dtype=torch.float64))
    shape = (k, n_bins)
    return counts.view(shape), sum_p.view(shape), sum_y.view(shape)


def _classwise_from_stats(
    counts: torch.Tensor, sum_p: torch.Tensor, sum_y: torch.Tensor
) -> torch.Tensor:
    n = counts[0].sum()
    return ((sum_p - sum_y).abs().sum(dim=1) / n).mean()


def classwise_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    from_logits: bool = False,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Class-wise ECE (Kull et al., 2019): the mean over classes of one-vs-rest binned ECEs.

    .. math::
        \mathrm{cwECE} = \frac1K\sum_{k=1}^K\sum_{m=1}^M \frac{|B_{mk}|}{N}
        \bigl|\overline{p_k}(B_{mk}) - \overline{[y=k]}(B_{mk})\bigr|

    where ``B_mk`` bins the probabilities of class ``k`` with the same ``((m-1)/M, m/M]`` edges as
    the top-label ECE (a probability of exactly 0 falls in the first bin).  The number of classes
    is ``probs.shape[1]``, never inferred from the labels.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(classwise_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=2).item(), 4)
        0.2667
    """
    n_bins = _check_n_bins(n_bins)
    p, y = _prepare(probs, labels, from_logits, validate)
    return _classwise_from_stats(*_classwise_stats(p, y, n_bins))


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


def _smece(f: torch.Tensor, correct: torch.Tensor, bandwidth: float | None, eps: float = 1e-3):
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


def smooth_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    from_logits: bool = False,
    bandwidth: float | None = None,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Smooth ECE (smECE) of Błasiok & Nakkiran (ICLR 2024) for top-label confidence.

    With residuals :math:`r_i = c_i - a_i` and a Gaussian kernel :math:`K_\sigma` reflected at
    0 and 1, the smoothed residual is
    :math:`\hat r(t) = \sum_i K_\sigma(t, c_i) r_i / \hat\delta(t)` with density
    :math:`\hat\delta(t) = \sum_i K_\sigma(t, c_i)`, and

    .. math::
        \mathrm{smECE}_\sigma = \int_0^1 |\hat r(t)|\,\hat\delta(t)\,dt
        \Big/ \int_0^1 \hat\delta(t)\,dt.

    With ``bandwidth=None`` the bandwidth is the fixed point
    :math:`\sigma^* = \mathrm{smECE}_{\sigma^*}`, found by 10 bisection steps on (0, 1]; this is
    the consistent calibration measure of the paper.
    The integrals use the paper's reference discretisation (a grid of ``>= 1001`` points and an
    evaluation mesh of ``max(200, 10/sigma)`` points), so the value matches ``relplot.smECE``.
    All samples are needed (see :class:`~labelsmooth.calibration.SampleCalibrationMeter`).

    Args:
        probs: ``(N, K)`` probabilities, or logits with ``from_logits=True``.
        labels: ``(N,)`` integer class indices.
        from_logits: apply a softmax first.
        bandwidth: kernel width ``sigma > 0``; ``None`` picks it automatically.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
        >>> labels = torch.tensor([0, 1, 1, 0])
        >>> round(smooth_calibration_error(probs, labels, bandwidth=0.1).item(), 3)
        0.249
    """
    if bandwidth is not None:
        if (
            isinstance(bandwidth, bool)
            or not isinstance(bandwidth, (int, float))
            or not (bandwidth > 0 and math.isfinite(bandwidth))
        ):
            raise fail("bandwidth", "a positive finite float or None", bandwidth)
        bandwidth = float(bandwidth)
    p, y = _prepare(probs, labels, from_logits, validate, check=_host_check(validate))
    conf, correct = _confidence_correct(p, y)
    value, _ = _smece(conf, correct, bandwidth)
    return torch.tensor(value, dtype=torch.float64, device=p.device)


# ---------------------------------------------------------------------------------------------
# proper scores and accuracy
# ---------------------------------------------------------------------------------------------
def negative_log_likelihood(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    from_logits: bool = False,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Mean negative log-likelihood :math:`-\frac1N\sum_i \log p_{i,y_i}`.

    From logits this is ``F.cross_entropy(logits.float(), labels)`` (log-softmax, no round trip
    through probabilities).  From probabilities a zero probability on the true class gives ``inf``.

    Example:
        >>> probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        >>> round(negative_log_likelihood(probs, torch.tensor([0, 1])).item(), 4)
        0.4904
    """
    # From logits: log_softmax of the logits themselves, for accuracy in the tails.
    x, y = _checked(probs, labels, from_logits, validate)
    return -_log_prob_true(_to_probs(x, False), y, from_logits).mean()


def _log_prob_true(x: torch.Tensor, labels: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """Per-sample ``log p_{i, y_i}`` in float64 from validated probabilities or logits."""
    if from_logits:
        logits = x if x.dtype in (torch.float32, torch.float64) else x.float()
        logp = torch.log_softmax(logits, dim=-1)
    else:
        logp = x.log()
    return logp.gather(1, labels[:, None]).squeeze(1).to(torch.float64)


def _brier_per_sample(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum_k (p_ik - [y_i = k])^2`` in float64 from validated probabilities."""
    p = p.to(torch.float64)
    onehot = torch.zeros_like(p).scatter_(1, labels[:, None], 1.0)
    return ((p - onehot) ** 2).sum(dim=1)


def _gap_of(conf: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Signed top-label gap, mean confidence minus accuracy, of per-sample tensors."""
    return conf.mean() - correct.mean()


def brier_score(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    from_logits: bool = False,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Multiclass Brier score :math:`\frac1N\sum_i\sum_k (p_{ik} - [y_i = k])^2` (range [0, 2]).

    Example:
        >>> probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        >>> round(brier_score(probs, torch.tensor([0, 1])).item(), 4)
        0.3125
    """
    p, y = _prepare(probs, labels, from_logits, validate)
    return _brier_per_sample(p, y).mean()


def accuracy(
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    from_logits: bool = False,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Top-1 accuracy :math:`\frac1N\sum_i [\arg\max_k p_{ik} = y_i]` (first index on ties).

    Example:
        >>> probs = torch.tensor([[0.5, 0.5], [0.25, 0.75], [0.9, 0.1]])
        >>> round(accuracy(probs, torch.tensor([0, 1, 1])).item(), 4)
        0.6667
    """
    p, y = _prepare(probs, labels, from_logits, validate)
    return (p.argmax(dim=-1) == y).to(torch.float64).mean()


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------
class BootstrapCI(NamedTuple):
    """Point estimate on the full sample and a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    metric: Callable[..., Any],
    probs: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    **metric_kwargs: Any,
) -> BootstrapCI:
    r"""Seeded percentile bootstrap interval for any metric ``metric(probs, labels, **kwargs)``.

    Draws ``n_resamples`` resamples of the ``N`` rows with replacement (a CPU ``torch.Generator``
    seeded with ``seed``, so results are reproducible on any device), evaluates the metric on
    each, and returns the full-sample estimate with the ``alpha/2`` and ``1 - alpha/2`` quantiles
    (linear interpolation) of the resampled values.  With ``from_logits=True`` in
    ``metric_kwargs`` the softmax is applied once, before resampling.  The inputs are checked once,
    on every device (the bootstrap reads values to the host anyway), unless ``validate=False`` is
    in ``metric_kwargs``; this module's metrics then skip the check on each resample.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
        >>> ci = bootstrap_ci(accuracy, probs, torch.tensor([0, 1, 1, 0]), n_resamples=200)
        >>> ci.estimate, ci.low <= ci.estimate <= ci.high
        (0.5, True)
    """
    if not callable(metric):
        raise fail("metric", "a callable metric(probs, labels)", type(metric).__name__, TypeError)
    _check_bootstrap_args(n_resamples, alpha, seed)
    from_logits = _check_bool("from_logits", metric_kwargs.pop("from_logits", False))
    validate = metric_kwargs.pop("validate", None)
    p, y = _prepare(probs, labels, from_logits, validate, check=_host_check(validate))
    if metric in _CHECKING_METRICS:
        metric_kwargs["validate"] = False  # checked once above, not on every resample
    estimate = float(metric(p, y, **metric_kwargs))
    low, high = _percentile_bootstrap(
        lambda idx: float(metric(p[idx], y[idx], **metric_kwargs)),
        p.shape[0],
        p.device,
        n_resamples,
        alpha,
        seed,
    )
    return BootstrapCI(estimate, low, high)


def _check_bootstrap_args(n_resamples: Any, alpha: Any, seed: Any) -> None:
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


# This module's metrics: they take ``validate``, so the bootstrap checks the data only once.
_CHECKING_METRICS = frozenset(
    {
        accuracy,
        adaptive_calibration_error,
        brier_score,
        calibration_gap,
        classwise_calibration_error,
        debiased_calibration_error,
        expected_calibration_error,
        maximum_calibration_error,
        negative_log_likelihood,
        rms_calibration_error,
        smooth_calibration_error,
    }
)


def _percentile_bootstrap(
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
