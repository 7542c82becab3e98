"""Calibration toolkit: metrics, streaming meters, temperature scaling (plots in ``.plots``)."""

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

from labelsmooth.calibration.temperature import (  # noqa: E402
    TemperatureFit,
    apply_temperature,
    fit_temperature,
)

__all__ += ["TemperatureFit", "apply_temperature", "fit_temperature"]
