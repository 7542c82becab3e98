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
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from labelsmooth._validation import check_choice, fail
from labelsmooth.calibration._stats import (
    BINNINGS,
    NORMS,
    CalibrationGap,
    bin_stats,
    brier_per_sample,
    ce_from_stats,
    check_bool,
    check_bootstrap_args,
    check_n_bins,
    checked,
    classwise_from_stats,
    classwise_stats,
    confidence_correct,
    debiased_sq_from_stats,
    gap_from_stats,
    host_check,
    log_prob_true,
    mass_bins,
    percentile_bootstrap,
    prepare,
    smece,
    to_probs,
    width_bins,
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


def _binned(
    probs: Any,
    labels: Any,
    n_bins: int,
    from_logits: bool,
    binning: str,
    validate: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n_bins = check_n_bins(n_bins)
    check_choice("binning", binning, BINNINGS)
    p, y = prepare(probs, labels, from_logits, validate)
    conf, correct = confidence_correct(p, y)
    if binning == "width":
        bins = width_bins(conf, n_bins)
    else:
        bins = mass_bins(conf, correct, n_bins)
    return bin_stats(bins, conf, correct, n_bins)


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
    check_choice("norm", norm, NORMS)
    stats = _binned(probs, labels, n_bins, from_logits, binning, validate)
    return ce_from_stats(*stats, norm)


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
    check_bool("squared", squared)
    est = debiased_sq_from_stats(*_binned(probs, labels, n_bins, from_logits, binning, validate))
    return est if squared else est.clamp_min(0.0).sqrt()


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
    return gap_from_stats(*_binned(probs, labels, n_bins, from_logits, binning, validate))


# ---------------------------------------------------------------------------------------------
# class-wise ECE
# ---------------------------------------------------------------------------------------------
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
    n_bins = check_n_bins(n_bins)
    p, y = prepare(probs, labels, from_logits, validate)
    return classwise_from_stats(*classwise_stats(p, y, n_bins))


# ---------------------------------------------------------------------------------------------
# smooth ECE (Błasiok & Nakkiran, 2023)
# ---------------------------------------------------------------------------------------------
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
    p, y = prepare(probs, labels, from_logits, validate, check=host_check(validate))
    conf, correct = confidence_correct(p, y)
    value, _ = smece(conf, correct, bandwidth)
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
    x, y = checked(probs, labels, from_logits, validate)
    return -log_prob_true(to_probs(x, False), y, from_logits).mean()


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
    p, y = prepare(probs, labels, from_logits, validate)
    return brier_per_sample(p, y).mean()


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
    p, y = prepare(probs, labels, from_logits, validate)
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
    check_bootstrap_args(n_resamples, alpha, seed)
    from_logits = check_bool("from_logits", metric_kwargs.pop("from_logits", False))
    validate = metric_kwargs.pop("validate", None)
    p, y = prepare(probs, labels, from_logits, validate, check=host_check(validate))
    if metric in _CHECKING_METRICS:
        metric_kwargs["validate"] = False  # checked once above, not on every resample
    estimate = float(metric(p, y, **metric_kwargs))
    low, high = percentile_bootstrap(
        lambda idx: float(metric(p[idx], y[idx], **metric_kwargs)),
        p.shape[0],
        p.device,
        n_resamples,
        alpha,
        seed,
    )
    return BootstrapCI(estimate, low, high)


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


