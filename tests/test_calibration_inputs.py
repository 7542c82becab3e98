"""Value checks on calibration inputs (issue 13, item 5).

Before these checks, every metric and meter took whatever it was given: raw logits passed as
probabilities gave an ECE of 2.5, out-of-range labels counted as wrong predictions
(``ECE([[.9, .1], [.2, .8]], [0, 7]) = 0.45``), and a NaN probability reached an IndexError inside
the smooth ECE.  Each case below failed (returned a value or raised something else) before.
"""

from __future__ import annotations

import math

import pytest
import torch

from labelsmooth import calibration as cal
from labelsmooth.calibration import (
    BinnedCalibrationMeter,
    SampleCalibrationMeter,
    expected_calibration_error,
    fit_temperature,
    smooth_calibration_error,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NAN = float("nan")
INF = float("inf")

GOOD = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
LABELS = torch.tensor([0, 1, 0])

# Every function of (probs, labels) in the public API.
FUNCTIONS = [
    cal.expected_calibration_error,
    cal.maximum_calibration_error,
    cal.rms_calibration_error,
    cal.adaptive_calibration_error,
    cal.debiased_calibration_error,
    cal.calibration_gap,
    cal.classwise_calibration_error,
    cal.smooth_calibration_error,
    cal.negative_log_likelihood,
    cal.brier_score,
    cal.accuracy,
]


def _meter_update(meter):
    def run(probs, labels, **kw):
        meter(**kw).update(probs, labels)

    return run


# Meters take `validate` (and `from_logits`) at construction.
METERS = {
    "binned": _meter_update(BinnedCalibrationMeter),
    "binned_classwise": _meter_update(lambda **kw: BinnedCalibrationMeter(10, 2, **kw)),
    "sample": _meter_update(SampleCalibrationMeter),
    "sample_keep_probs": _meter_update(lambda **kw: SampleCalibrationMeter(keep_probs=True, **kw)),
}


def _entry_points():
    for fn in FUNCTIONS:
        yield pytest.param(fn, id=fn.__name__)
    for name, fn in METERS.items():
        yield pytest.param(fn, id=name)


ENTRY_POINTS = list(_entry_points())


# (probs, labels, message pattern): each is an input the metrics used to accept.
BAD_PROBS = {
    "raw_logits": (
        torch.tensor([[3.0, -1.0], [-2.0, 4.0], [0.5, 2.5]]),
        LABELS,
        r"Expected `probs` to be probabilities, finite and in \[0, 1\]; pass from_logits=True "
        r"for logits, but got probs\[0\] = tensor\(\[3.0, -1.0\]\)",
    ),
    "negative": (
        torch.tensor([[0.9, 0.1], [1.5, -0.5], [0.4, 0.6]]),
        LABELS,
        r"in \[0, 1\].*probs\[1\] = tensor\(\[1.5, -0.5\]\)",
    ),
    "unnormalised": (
        torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.6]], dtype=torch.float64),
        LABELS,
        r"rows summing to 1 \(within 0.0001; pass from_logits=True for logits\), "
        r"but got probs\[2\] = tensor\(\[0.5, 0.6\]\) summing to 1.1",
    ),
    "nan": (
        torch.tensor([[0.9, 0.1], [NAN, 0.5], [0.4, 0.6]]),
        LABELS,
        r"probs\[1\] = tensor\(\[nan, 0.5\]\)",
    ),
    "inf": (
        torch.tensor([[0.9, 0.1], [0.2, 0.8], [INF, 0.0]]),
        LABELS,
        r"probs\[2\] = tensor\(\[inf, 0.0\]\)",
    ),
    "label_too_big": (
        torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
        torch.tensor([0, 7]),
        r"Expected `labels` to be class indices in \[0, 2\), but got labels\[1\] = 7\.",
    ),
    "label_negative": (GOOD, torch.tensor([0, -1, 1]), r"labels\[1\] = -1"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROBS))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_bad_probabilities_and_labels_are_rejected(entry, case):
    probs, labels, pattern = BAD_PROBS[case]
    with pytest.raises(ValueError, match=pattern):
        entry(probs, labels)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_validate_false_skips_the_value_check(entry):
    # The opt-out reads no values: raw logits go through (giving a meaningless value).
    logits = torch.tensor([[3.0, -1.0], [-2.0, 4.0], [0.5, 2.5]])
    entry(logits, LABELS, validate=False)


def test_issue_repros_before_and_after():
    # Before: 0.45 (label 7 counted as a wrong prediction).
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        expected_calibration_error(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 7]))
    # Before: 2.5, an ECE above its maximum of 1.
    logits = torch.tensor([[3.0, -1.0], [-2.0, 4.0], [0.5, 2.5]])
    with pytest.raises(ValueError, match="pass from_logits=True"):
        expected_calibration_error(logits, LABELS)
    assert 0.0 <= expected_calibration_error(logits, LABELS, from_logits=True).item() <= 1.0
    # Before: IndexError inside the kernel smoothing.
    with pytest.raises(ValueError, match=r"probs\[0\] = tensor\(\[nan, 0.5\]\)"):
        smooth_calibration_error(torch.tensor([[NAN, 0.5], [0.2, 0.8]]), torch.tensor([0, 1]))


BAD_LOGITS = {
    "nan": (torch.tensor([[1.0, 2.0], [NAN, 0.0], [0.0, 0.0]]), r"probs\[1\] = tensor\(\[nan"),
    "plus_inf": (torch.tensor([[1.0, 2.0], [0.0, 0.0], [INF, 0.0]]), r"probs\[2\]"),
    "all_minus_inf": (torch.tensor([[-INF, -INF], [0.0, 0.0], [1.0, 0.0]]), r"probs\[0\]"),
}


@pytest.mark.parametrize("case", sorted(BAD_LOGITS))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_bad_logits_are_rejected(entry, case):
    logits, pattern = BAD_LOGITS[case]
    with pytest.raises(ValueError, match="to be logits without NaN or \\+inf.*" + pattern):
        entry(logits, LABELS, from_logits=True)


def test_masked_class_logits_are_accepted():
    # -inf masks a class: allowed as long as each row keeps a finite logit.
    logits = torch.tensor([[2.0, 0.0, -INF], [0.0, 1.0, -INF], [1.5, 0.5, -INF]])
    labels = torch.tensor([0, 1, 1])
    ece = expected_calibration_error(logits, labels, from_logits=True)
    ref = expected_calibration_error(logits[:, :2], labels, from_logits=True)
    assert ece.item() == pytest.approx(ref.item(), abs=1e-12)
    nll = cal.negative_log_likelihood(logits, labels, from_logits=True)
    assert math.isfinite(nll.item())


def test_sum_tolerance_follows_the_dtype():
    # float16 thirds sum to 0.99976: accepted (slack 3 * eps16 = 2.9e-3); a float32 row missing 1
    # by 1e-3 is not (slack 1e-4), nor a float16 row missing it by 1e-2.
    thirds = torch.full((4, 3), 1.0 / 3.0, dtype=torch.float16)
    y = torch.tensor([0, 1, 2, 0])
    expected_calibration_error(thirds, y)
    with pytest.raises(ValueError, match=r"within 0.0001.*summing to 1.001"):
        expected_calibration_error(torch.tensor([[0.501, 0.5], [0.5, 0.5]]), y[:2])
    with pytest.raises(ValueError, match=r"within 0.00195"):
        half = torch.tensor([[0.51, 0.5], [0.5, 0.5]], dtype=torch.float16)
        expected_calibration_error(half, y[:2])
    # Softmax outputs of every dtype and of a large K pass.
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        for k in (2, 10, 5000):
            x = (4 * torch.randn(64, k, generator=g)).to(dtype)
            yk = torch.randint(0, k, (64,), generator=g)
            expected_calibration_error(x.float().softmax(-1).to(dtype), yk)
            expected_calibration_error(x, yk, from_logits=True)


def test_meter_rejects_before_changing_its_state():
    meter = BinnedCalibrationMeter(10)
    meter.update(GOOD, LABELS)
    before = meter.state_dict()
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        meter.update(GOOD[:2], torch.tensor([0, 7]))
    after = meter.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    sample = SampleCalibrationMeter(10)
    with pytest.raises(ValueError, match="pass from_logits=True"):
        sample.update(GOOD * 2, LABELS)
    assert len(sample) == 0


def test_reliability_diagram_rejects_raw_logits():
    pytest.importorskip("matplotlib")
    from labelsmooth.calibration.plots import reliability_diagram

    with pytest.raises(ValueError, match="pass from_logits=True"):
        reliability_diagram(torch.tensor([[3.0, -1.0], [-2.0, 4.0]]), torch.tensor([0, 1]))


def test_fit_temperature_rejects_bad_labels_and_logits():
    z = torch.tensor([[2.0, -1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"Expected `labels` to be class indices in \[0, 2\)"):
        fit_temperature(z, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"Expected `logits` to be finite"):
        fit_temperature(torch.tensor([[-INF, 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))


def test_bootstrap_checks_once_and_honours_validate():
    logits = torch.tensor([[3.0, -1.0], [-2.0, 4.0], [0.5, 2.5]])
    with pytest.raises(ValueError, match="pass from_logits=True"):
        cal.bootstrap_ci(expected_calibration_error, logits, LABELS, n_resamples=5)
    ci = cal.bootstrap_ci(
        expected_calibration_error, logits, LABELS, n_resamples=5, from_logits=True
    )
    assert 0.0 <= ci.low <= ci.high <= 1.0
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        cal.bootstrap_ci(cal.accuracy, GOOD[:2], torch.tensor([0, 7]), n_resamples=5)


def test_default_skips_checks_off_cpu(monkeypatch):
    # Off CPU the default reads no values (no host-device sync): simulate it by making the shared
    # rule answer as it does for CUDA tensors; validate=True still checks.
    import labelsmooth.calibration._stats as S

    def as_on_cuda(validate, *tensors):
        return bool(validate)

    monkeypatch.setattr(S, "should_check_values", as_on_cuda)
    bad = torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 7])
    expected_calibration_error(*bad)  # no check, no error (the label just never matches)
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        expected_calibration_error(*bad, validate=True)
    # Functions that read values to the host anyway check by default on every device.
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        smooth_calibration_error(*bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_default_does_not_sync_and_validate_true_checks():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]], device="cuda")
    labels = torch.tensor([0, 7], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ece = expected_calibration_error(probs, labels)
        meter = BinnedCalibrationMeter(10)
        meter.update(probs, torch.tensor([0, 1], device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ece.item() == pytest.approx(0.45, abs=1e-6)
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        expected_calibration_error(probs, labels, validate=True)
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        BinnedCalibrationMeter(10, validate=True).update(probs, labels)
