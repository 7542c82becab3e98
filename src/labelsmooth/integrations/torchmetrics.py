"""Calibration metrics as ``torchmetrics.Metric`` classes (extra: ``labelsmooth[torchmetrics]``).

Each class keeps the state of a :mod:`labelsmooth.calibration` meter in torchmetrics states, so it
behaves as any torchmetrics metric: ``update``/``compute``/``reset``/``forward``, states summed (or
concatenated) across ranks by ``dist_reduce_fx`` when ``compute`` syncs under DDP, states saved in
``state_dict`` (and so in Lightning checkpoints), and ``self.log("name", metric)`` in Lightning.

* Equal-width bins (``binning="width"``, the default) keep ``O(n_bins)`` float64 sums -- the
  state of :class:`~labelsmooth.calibration.BinnedCalibrationMeter` -- reduced with ``sum``.
* Equal-mass bins (``binning="mass"``) need every sample: per-sample confidence and correctness,
  the state of :class:`~labelsmooth.calibration.SampleCalibrationMeter`, reduced with ``cat``.

Batch sums come from the meters' ``batch_state``/``batch_samples`` and metrics from the meters'
``results_from_state``/``results_from_samples``, so every value equals the function of
:mod:`labelsmooth.calibration` on all samples at once (up to float64 summation order), and the
checks are the same (``validate``: on CPU by default, on CUDA only with ``validate=True``).

Bin edges differ from ``torchmetrics.classification.MulticlassCalibrationError`` in one
convention.  Here bins are right-closed, ``((m-1)/M, m/M]``, with a confidence of exactly 1.0 in
the last bin (Guo et al.); torchmetrics uses left-closed bins ``[(m-1)/M, m/M)`` from
``linspace(0, 1, M + 1)`` and puts a confidence of exactly 1.0 into an extra, ``(M+1)``-th bin of
its own.  The two agree (to float32 rounding, ~1e-7) unless a confidence lies exactly on an edge:
with one-hot or saturated predictions, common in float16/bfloat16, torchmetrics' ECE splits the
last bin and can be larger.

Example:
    >>> import torch
    >>> from labelsmooth.integrations.torchmetrics import ExpectedCalibrationError
    >>> ece = ExpectedCalibrationError(n_bins=10)
    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    >>> ece.update(probs[:2], torch.tensor([0, 1]))
    >>> ece.update(probs[2:], torch.tensor([1]))
    >>> round(ece.compute().item(), 4)
    0.3333
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "labelsmooth.integrations.torchmetrics needs torchmetrics: "
        "pip install 'labelsmooth[torchmetrics]'"
    ) from exc

from labelsmooth._validation import check_choice, check_ignore_index, fail
from labelsmooth.calibration.meters import (
    BinnedCalibrationMeter,
    SampleCalibrationMeter,
    results_from_samples,
    results_from_state,
)

__all__ = [
    "BrierScore",
    "ClasswiseCalibrationError",
    "DebiasedCalibrationError",
    "ExpectedCalibrationError",
    "NegativeLogLikelihood",
    "SignedCalibrationGap",
]

_BINNINGS = ("width", "mass")


class _CalibrationMetric(Metric):
    """Shared machinery: meter-layout states, update from the meter, one result key."""

    is_differentiable = False
    higher_is_better: bool | None = False
    full_state_update = False

    def __init__(
        self,
        key: str,
        n_bins: int = 15,
        *,
        binning: str = "width",
        parts: tuple[str, ...] = (),
        num_classes: int | None = None,
        from_logits: bool = False,
        validate: bool | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ignore_index = None if ignore_index is None else check_ignore_index(ignore_index)
        self._key = key
        self.binning = check_choice("binning", binning, _BINNINGS)
        self._meter: BinnedCalibrationMeter | SampleCalibrationMeter
        if binning == "width":
            self._meter = BinnedCalibrationMeter(
                n_bins, num_classes, from_logits=from_logits, validate=validate
            )
            self._parts = parts
            for name, shape in self._meter.state_shapes(parts).items():
                self.add_state(
                    name,
                    default=torch.zeros(shape, dtype=torch.float64),
                    dist_reduce_fx="sum",
                    persistent=True,
                )
        else:
            self._meter = SampleCalibrationMeter(n_bins, from_logits=from_logits, validate=validate)
            self.add_state("conf", default=[], dist_reduce_fx="cat", persistent=True)
            self.add_state("correct", default=[], dist_reduce_fx="cat", persistent=True)
        self.n_bins = self._meter.n_bins
        self.from_logits = from_logits

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of ``(N, K)`` probabilities (logits with ``from_logits=True``) and labels.

        With ``ignore_index``, rows whose label equals it are left out (as torchmetrics does: a
        boolean selection, so a host-device sync on CUDA).
        """
        if self.ignore_index is not None and isinstance(target, torch.Tensor):
            keep = target != self.ignore_index
            if isinstance(preds, torch.Tensor) and preds.dim() == 2 and keep.dim() == 1:
                preds, target = preds[keep], target[keep]
                if target.numel() == 0:
                    return
        if isinstance(self._meter, BinnedCalibrationMeter):
            for name, value in self._meter.batch_state(preds, target, self._parts).items():
                state = getattr(self, name)
                setattr(self, name, state + value.to(device=state.device, dtype=state.dtype))
        else:
            conf, correct, _, _ = self._meter.batch_samples(preds, target)
            self.conf.append(conf)
            self.correct.append(correct)

    def results(self) -> dict[str, torch.Tensor]:
        """Every metric the state gives (the keys of the meter's ``compute``), unsynced."""
        if self.binning == "width":
            return results_from_state({name: getattr(self, name) for name in self._defaults})
        if isinstance(self.conf, list) and not self.conf:
            raise ValueError("compute() needs at least one sample; call update() first")
        conf, correct = dim_zero_cat(self.conf), dim_zero_cat(self.correct)
        return results_from_samples(conf, correct, self.n_bins, self.binning)

    def compute(self) -> torch.Tensor:
        """The metric over all samples seen (on every rank, after the DDP sync): 0-d float64."""
        return self.results()[self._key]


class ExpectedCalibrationError(_CalibrationMetric):
    r"""Top-label calibration error, as :func:`~labelsmooth.calibration.expected_calibration_error`.

    .. math::
        \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}\,
        \bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|

    ``norm="l2"`` gives the plug-in RMS calibration error, ``norm="max"`` the MCE.  With
    ``binning="width"`` the state is ``3 * n_bins`` float64 sums; ``binning="mass"`` (adaptive
    ECE) keeps every sample's confidence and correctness.

    Args:
        n_bins: number of bins ``M``.
        norm: ``"l1"`` (ECE), ``"l2"`` (RMS) or ``"max"`` (MCE).
        binning: ``"width"`` (equal-width, Guo's ``((m-1)/M, m/M]``) or ``"mass"`` (equal-mass).
        from_logits: ``update`` receives logits (a softmax in float32 or wider is applied).
        validate: check values (probabilities in ``[0, 1]`` summing to 1, labels in ``[0, K)``):
            ``None`` on CPU only, ``True`` everywhere (a host-device sync), ``False`` never.
        ignore_index: rows with this label are left out (e.g. ``-100`` padding); every class
            here takes it.
        kwargs: ``torchmetrics.Metric`` options (``sync_on_compute``, ``dist_sync_fn``, ...).

    Example:
        >>> metric = ExpectedCalibrationError(n_bins=10, norm="max")
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> metric.update(probs, torch.tensor([0, 1, 1]))
        >>> round(metric.compute().item(), 4)
        0.6
    """

    def __init__(
        self,
        n_bins: int = 15,
        *,
        norm: str = "l1",
        binning: str = "width",
        from_logits: bool = False,
        validate: bool | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_choice("norm", norm, ("l1", "l2", "max"))
        key = {"l1": "ece", "l2": "rms_ce", "max": "mce"}[norm]
        super().__init__(
            key,
            n_bins,
            binning=binning,
            from_logits=from_logits,
            validate=validate,
            ignore_index=ignore_index,
            **kwargs,
        )
        self.norm = norm


class DebiasedCalibrationError(_CalibrationMetric):
    r"""Debiased L2 calibration error: :func:`~labelsmooth.calibration.debiased_calibration_error`.

    .. math::
        \widehat{\mathrm{CE}}^2 = \sum_{m: n_m \ge 2} \frac{n_m}{N}\Bigl[(\mathrm{conf}_m -
        \mathrm{acc}_m)^2 - \frac{\mathrm{acc}_m (1-\mathrm{acc}_m)}{n_m - 1}\Bigr]

    Returns :math:`\sqrt{\max(\widehat{\mathrm{CE}}^2, 0)}`, or the unclipped (unbiased, possibly
    negative) :math:`\widehat{\mathrm{CE}}^2` with ``squared=True``.  Arguments as
    :class:`ExpectedCalibrationError`.

    Example:
        >>> metric = DebiasedCalibrationError(n_bins=1, squared=True)
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
        >>> metric.update(probs, torch.tensor([0, 0, 1, 0]))
        >>> round(metric.compute().item(), 4)
        -0.0625
    """

    def __init__(
        self,
        n_bins: int = 15,
        *,
        binning: str = "width",
        squared: bool = False,
        from_logits: bool = False,
        validate: bool | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(squared, bool):
            raise fail("squared", "a bool", squared, TypeError)
        key = "debiased_ce_squared" if squared else "debiased_ce"
        super().__init__(
            key,
            n_bins,
            binning=binning,
            from_logits=from_logits,
            validate=validate,
            ignore_index=ignore_index,
            **kwargs,
        )
        self.squared = squared


class SignedCalibrationGap(_CalibrationMetric):
    r"""Mean confidence minus accuracy, ``calibration_gap(probs, labels).overall``.

    :math:`\frac1N\sum_i c_i - \frac1N\sum_i a_i`: positive when over-confident, negative when
    under-confident (as label-smoothed models often are).  It does not depend on binning; the
    state is one bin's sums.

    Example:
        >>> metric = SignedCalibrationGap()
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> metric.update(probs, torch.tensor([0, 1, 1]))
        >>> round(metric.compute().item(), 4)
        0.0667
    """

    higher_is_better = None

    def __init__(
        self,
        *,
        from_logits: bool = False,
        validate: bool | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            "gap", 1, from_logits=from_logits, validate=validate, ignore_index=ignore_index, **kwargs
        )


class NegativeLogLikelihood(_CalibrationMetric):
    r"""Mean NLL :math:`-\frac1N\sum_i \log p_{i,y_i}`, as
    :func:`~labelsmooth.calibration.negative_log_likelihood` (from logits: a log-softmax).

    Example:
        >>> metric = NegativeLogLikelihood()
        >>> metric.update(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]))
        >>> round(metric.compute().item(), 4)
        0.4904
    """

    def __init__(
        self,
        *,
        from_logits: bool = False,
        validate: bool | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            "nll",
            1,
            parts=("nll",),
            from_logits=from_logits,
            validate=validate,
            ignore_index=ignore_index,
            **kwargs,
        )


class BrierScore(_CalibrationMetric):
    r"""Multiclass Brier score :math:`\frac1N\sum_i\sum_k (p_{ik} - [y_i = k])^2`, as
    :func:`~labelsmooth.calibration.brier_score`.

    Example:
        >>> metric = BrierScore()
        >>> metric.update(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.tensor([0, 1]))
        >>> round(metric.compute().item(), 4)
        0.3125
    """

    def __init__(
        self,
        *,
        from_logits: bool = False,
        validate: bool | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            "brier",
            1,
            parts=("brier",),
            from_logits=from_logits,
            validate=validate,
            ignore_index=ignore_index,
            **kwargs,
        )


class ClasswiseCalibrationError(_CalibrationMetric):
    r"""Class-wise ECE, as :func:`~labelsmooth.calibration.classwise_calibration_error`.

    The state is ``3 * num_classes * n_bins`` float64 sums (plus the top-label bins).

    Example:
        >>> metric = ClasswiseCalibrationError(num_classes=2, n_bins=2)
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> metric.update(probs, torch.tensor([0, 1, 1]))
        >>> round(metric.compute().item(), 4)
        0.2667
    """

    def __init__(
        self,
        num_classes: int,
        n_bins: int = 15,
        *,
        from_logits: bool = False,
        validate: bool | None = None,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            "classwise_ece",
            n_bins,
            parts=("classwise",),
            num_classes=num_classes,
            from_logits=from_logits,
            validate=validate,
            ignore_index=ignore_index,
            **kwargs,
        )
        self.num_classes = num_classes
