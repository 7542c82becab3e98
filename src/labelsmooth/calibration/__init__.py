"""Calibration toolkit: metrics, streaming meters and temperature scaling.

Reliability diagrams live in :mod:`labelsmooth.calibration.plots` (matplotlib, an optional
extra, is imported only there and only when a plot is drawn).

Example:
    >>> import torch
    >>> from labelsmooth.calibration import expected_calibration_error, fit_temperature
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.5, 0.5]])
    >>> labels = torch.tensor([0, 1, 1])
    >>> round(expected_calibration_error(logits, labels, from_logits=True).item(), 4)
    0.1938
"""

from labelsmooth.calibration.meters import BinnedCalibrationMeter, SampleCalibrationMeter
from labelsmooth.calibration.metrics import (
    BootstrapCI,
    CalibrationGap,
    accuracy,
    adaptive_calibration_error,
    bootstrap_ci,
    brier_score,
    calibration_gap,
    classwise_calibration_error,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    rms_calibration_error,
    smooth_calibration_error,
)
from labelsmooth.calibration.temperature import TemperatureFit, apply_temperature, fit_temperature

__all__ = [
    "BinnedCalibrationMeter",
    "BootstrapCI",
    "CalibrationGap",
    "SampleCalibrationMeter",
    "TemperatureFit",
    "accuracy",
    "adaptive_calibration_error",
    "apply_temperature",
    "bootstrap_ci",
    "brier_score",
    "calibration_gap",
    "classwise_calibration_error",
    "debiased_calibration_error",
    "expected_calibration_error",
    "fit_temperature",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "rms_calibration_error",
    "smooth_calibration_error",
]
