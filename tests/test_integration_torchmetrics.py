"""labelsmooth.integrations.torchmetrics: Metric classes over the calibration meters' state.

* values equal labelsmooth.calibration's functions on all samples at once, for any batching;
* update/compute/reset/forward, state_dict round trips (checkpoints), the dtype of the states;
* parity with torchmetrics' MulticlassCalibrationError except the documented bin-edge convention;
* Lightning: self.log(metric) in one process, and in a 2-process gloo DDP fit (slow) where the
  logged values must equal the one-process values of the functions.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torchmetrics = pytest.importorskip("torchmetrics")

from labelsmooth import calibration as cal  # noqa: E402
from labelsmooth.integrations.torchmetrics import (  # noqa: E402
    BrierScore,
    ClasswiseCalibrationError,
    DebiasedCalibrationError,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    SignedCalibrationGap,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _case(seed: int, n: int, k: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    logits[torch.arange(n), labels] += 2 * torch.rand(n, generator=g, dtype=torch.float64)
    return logits.to(dtype), labels


# (metric factory, reference function of (x, y, from_logits))
def _cases(n_bins: int, k: int):
    return {
        "ece": (
            lambda fl: ExpectedCalibrationError(n_bins, from_logits=fl),
            lambda x, y, fl: cal.expected_calibration_error(x, y, n_bins, from_logits=fl),
        ),
        "rms": (
            lambda fl: ExpectedCalibrationError(n_bins, norm="l2", from_logits=fl),
            lambda x, y, fl: cal.rms_calibration_error(x, y, n_bins, from_logits=fl),
        ),
        "mce": (
            lambda fl: ExpectedCalibrationError(n_bins, norm="max", from_logits=fl),
            lambda x, y, fl: cal.maximum_calibration_error(x, y, n_bins, from_logits=fl),
        ),
        "adaptive": (
            lambda fl: ExpectedCalibrationError(n_bins, binning="mass", from_logits=fl),
            lambda x, y, fl: cal.adaptive_calibration_error(x, y, n_bins, from_logits=fl),
        ),
        "adaptive_max": (
            lambda fl: ExpectedCalibrationError(n_bins, norm="max", binning="mass", from_logits=fl),
            lambda x, y, fl: cal.adaptive_calibration_error(
                x, y, n_bins, norm="max", from_logits=fl
            ),
        ),
        "debiased": (
            lambda fl: DebiasedCalibrationError(n_bins, from_logits=fl),
            lambda x, y, fl: cal.debiased_calibration_error(x, y, n_bins, from_logits=fl),
        ),
        "debiased_sq_mass": (
            lambda fl: DebiasedCalibrationError(
                n_bins, binning="mass", squared=True, from_logits=fl
            ),
            lambda x, y, fl: cal.debiased_calibration_error(
                x, y, n_bins, binning="mass", squared=True, from_logits=fl
            ),
        ),
        "gap": (
            lambda fl: SignedCalibrationGap(from_logits=fl),
            lambda x, y, fl: cal.calibration_gap(x, y, n_bins, from_logits=fl).overall,
        ),
        "nll": (
            lambda fl: NegativeLogLikelihood(from_logits=fl),
            lambda x, y, fl: cal.negative_log_likelihood(x, y, from_logits=fl),
        ),
        "brier": (
            lambda fl: BrierScore(from_logits=fl),
            lambda x, y, fl: cal.brier_score(x, y, from_logits=fl),
        ),
        "classwise": (
            lambda fl: ClasswiseCalibrationError(k, n_bins, from_logits=fl),
            lambda x, y, fl: cal.classwise_calibration_error(x, y, n_bins, from_logits=fl),
        ),
    }


NAMES = sorted(_cases(15, 5))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_equal_the_functions_for_any_batching(name, from_logits, dtype):
    x, y = _case(1, 300, 5, dtype)
    if not from_logits:
        x = x.softmax(-1)
    make, ref = _cases(12, 5)[name]
    want = ref(x, y, from_logits).item()
    metric = make(from_logits)
    for lo, hi in ((0, 7), (7, 150), (150, 151), (151, 300)):
        metric.update(x[lo:hi], y[lo:hi])
    got = metric.compute()
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-13)
    # One batch: the same float64 operations as the function.
    one = make(from_logits)
    one.update(x, y)
    assert one.compute().item() == pytest.approx(want, rel=1e-14, abs=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_ignore_index_leaves_those_rows_out(name):
    x, y = _case(8, 120, 5)
    padded = y.clone()
    padded[::3] = -100
    keep = padded != -100
    make, ref = _cases(10, 5)[name]
    want = ref(x[keep], y[keep], True).item()
    metric = make(True)
    metric.ignore_index = -100  # as if constructed with ignore_index=-100
    for lo in range(0, 120, 40):
        metric.update(x[lo : lo + 40], padded[lo : lo + 40])
    metric.update(x[:3][:1], padded[:1])  # a batch with only ignored rows adds nothing
    assert metric.compute().item() == pytest.approx(want, rel=1e-12, abs=1e-13)


def test_ignore_index_argument():
    x, y = _case(8, 60, 4)
    padded = torch.where(torch.arange(60) % 2 == 0, y, torch.full_like(y, -100))
    metric = ExpectedCalibrationError(10, from_logits=True, ignore_index=-100)
    metric.update(x, padded)
    want = cal.expected_calibration_error(x[0::2], y[0::2], 10, from_logits=True)
    assert metric.compute().item() == pytest.approx(want.item(), abs=1e-15)
    with pytest.raises(ValueError, match=r"labels\[1\] = -100"):
        ExpectedCalibrationError(10, from_logits=True).update(x, padded)
    with pytest.raises(TypeError, match="Expected `ignore_index` to be an int"):
        NegativeLogLikelihood(ignore_index=1.5)


def test_hand_computed_values():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    # bins of width 0.1: 0.9 (correct), 0.6 (wrong), 0.7 (correct) -> |.9-1| + |.6-0| + |.7-1|
    ece = ExpectedCalibrationError(10)
    ece.update(probs, labels)
    assert ece.compute().item() == pytest.approx((0.1 + 0.6 + 0.3) / 3, abs=1e-15)
    gap = SignedCalibrationGap()
    gap.update(probs, labels)
    assert gap.compute().item() == pytest.approx((0.9 + 0.6 + 0.7) / 3 - 2 / 3, abs=1e-15)
    brier = BrierScore()
    brier.update(probs, labels)
    want = (2 * 0.1**2 + 2 * 0.6**2 + 2 * 0.3**2) / 3
    assert brier.compute().item() == pytest.approx(want, abs=1e-15)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_forward_reset_and_empty():
    x, y = _case(2, 64, 4)
    metric = ExpectedCalibrationError(10, from_logits=True)
    batch_value = metric(x[:32], y[:32])  # forward: this batch's value, and accumulates
    assert batch_value.item() == pytest.approx(
        cal.expected_calibration_error(x[:32], y[:32], 10, from_logits=True).item(), abs=1e-15
    )
    metric(x[32:], y[32:])
    whole = cal.expected_calibration_error(x, y, 10, from_logits=True).item()
    assert metric.compute().item() == pytest.approx(whole, abs=1e-14)
    metric.reset()
    with pytest.raises(ValueError, match="at least one sample"):
        metric.compute()
    mass = ExpectedCalibrationError(10, binning="mass")
    with pytest.raises(ValueError, match="at least one sample"):
        mass.compute()


@pytest.mark.parametrize("binning", ["width", "mass"])
def test_states_round_trip_through_a_checkpoint(binning):
    x, y = _case(3, 200, 6)
    metric = ExpectedCalibrationError(15, binning=binning, from_logits=True)
    metric.update(x[:120], y[:120])
    buf = io.BytesIO()
    torch.save({"metric": metric.state_dict()}, buf)
    keys = set(metric.state_dict())
    width_keys = {"counts", "sum_conf", "sum_correct"}
    assert keys == (width_keys if binning == "width" else {"conf", "correct"})
    restored = ExpectedCalibrationError(15, binning=binning, from_logits=True)
    buf.seek(0)
    restored.load_state_dict(torch.load(buf)["metric"])
    restored.update(x[120:], y[120:])
    want = cal.expected_calibration_error(x, y, 15, from_logits=True, binning=binning)
    assert restored.compute().item() == pytest.approx(want.item(), abs=1e-14)


def test_state_layout_is_the_meter_state():
    # Equal-width metrics keep exactly the meter's sums (only the parts they need).
    x, y = _case(4, 100, 3)
    meter = cal.BinnedCalibrationMeter(15, 3, from_logits=True)
    meter.update(x, y)
    cw = ClasswiseCalibrationError(3, 15, from_logits=True)
    cw.update(x, y)
    nll = NegativeLogLikelihood(from_logits=True)
    nll.update(x, y)
    ms = meter.state_dict()
    for metric in (cw, nll):
        for key, value in metric.state_dict().items():
            if value.shape == ms[key].shape:
                assert torch.equal(value, ms[key]), key
    assert set(nll.state_dict()) == {"counts", "sum_conf", "sum_correct", "sum_nll"}
    assert torch.equal(cw.cw_counts, ms["cw_counts"])
    assert meter.compute()["classwise_ece"].item() == cw.compute().item()
    assert meter.compute()["nll"].item() == nll.compute().item()


def test_inputs_are_checked_as_in_the_functions():
    metric = ExpectedCalibrationError(10)
    with pytest.raises(ValueError, match="pass from_logits=True"):
        metric.update(torch.tensor([[3.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"labels\[1\] = 7"):
        metric.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="Expected `norm`"):
        ExpectedCalibrationError(norm="l3")
    with pytest.raises(ValueError, match="Expected `binning`"):
        ExpectedCalibrationError(binning="quantile")
    with pytest.raises(TypeError, match="Expected `squared`"):
        DebiasedCalibrationError(squared=1)
    with pytest.raises(ValueError, match="Expected `n_bins`"):
        ExpectedCalibrationError(0)
    with pytest.raises(ValueError, match="Expected `num_classes`"):
        ClasswiseCalibrationError(1)
    with pytest.raises(ValueError, match="num_classes = 3 columns"):
        ClasswiseCalibrationError(3).update(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))
    # Nothing was added by the refused batches.
    with pytest.raises(ValueError, match="at least one sample"):
        metric.compute()


def test_float32_states_after_set_dtype_still_accumulate():
    x, y = _case(5, 64, 3)
    metric = ExpectedCalibrationError(10, from_logits=True).set_dtype(torch.float32)
    assert metric.counts.dtype == torch.float32
    metric.update(x, y)
    want = cal.expected_calibration_error(x, y, 10, from_logits=True).item()
    assert metric.compute().item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("binning", ["width", "mass"])
def test_merge_state_equals_one_metric(binning):
    x, y = _case(7, 160, 4)
    a = ExpectedCalibrationError(12, binning=binning, from_logits=True)
    b = ExpectedCalibrationError(12, binning=binning, from_logits=True)
    a.update(x[:70], y[:70])
    b.update(x[70:], y[70:])
    a.merge_state(b)
    want = cal.expected_calibration_error(x, y, 12, binning=binning, from_logits=True).item()
    assert a.compute().item() == pytest.approx(want, abs=1e-14)


def test_metric_collection_forward_and_pickle():
    import pickle

    from torchmetrics import MetricCollection

    x, y = _case(6, 200, 5)
    kw = {"from_logits": True}
    collection = MetricCollection(
        {
            "ece": ExpectedCalibrationError(**kw),
            "rms": ExpectedCalibrationError(norm="l2", **kw),
            "adaptive": ExpectedCalibrationError(binning="mass", **kw),
            "nll": NegativeLogLikelihood(**kw),
        }
    )
    for lo in range(0, 200, 50):
        step = collection(x[lo : lo + 50], y[lo : lo + 50])
    # forward returns the last batch's values; compute those of every batch.
    last = cal.adaptive_calibration_error(x[150:], y[150:], **kw).item()
    assert step["adaptive"].item() == pytest.approx(last, abs=1e-15)
    got = collection.compute()
    want = {
        "ece": cal.expected_calibration_error(x, y, **kw),
        "rms": cal.rms_calibration_error(x, y, **kw),
        "adaptive": cal.adaptive_calibration_error(x, y, **kw),
        "nll": cal.negative_log_likelihood(x, y, **kw),
    }
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value.item(), abs=1e-14), key
    copy = pickle.loads(pickle.dumps(collection))  # as ddp_spawn and checkpoint tools do
    assert copy.compute()["adaptive"].item() == got["adaptive"].item()


# ---------------------------------------------------------------------------------------------
# torchmetrics' own calibration error
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics_off_the_bin_edges(norm, seed):
    from torchmetrics.classification import MulticlassCalibrationError

    x, y = _case(seed, 500, 7)
    probs = x.softmax(-1)
    conf = probs.max(dim=1).values
    # No confidence exactly on an edge k/15 (where the conventions differ).
    assert not torch.isclose(conf * 15, (conf * 15).round(), rtol=0, atol=1e-5).any()
    ours = ExpectedCalibrationError(15, norm=norm)
    theirs = MulticlassCalibrationError(num_classes=7, n_bins=15, norm=norm)
    for lo in range(0, 500, 100):
        ours.update(probs[lo : lo + 100], y[lo : lo + 100])
        theirs.update(probs[lo : lo + 100], y[lo : lo + 100])
    assert ours.compute().item() == pytest.approx(theirs.compute().item(), abs=1e-6)


def test_torchmetrics_puts_confidence_one_in_an_extra_bin():
    from torchmetrics.classification import MulticlassCalibrationError

    # 10 bins: a correct prediction at confidence 0.95 and a wrong one at exactly 1.0.
    # Here both are in the last bin (0.9, 1.0]: |mean conf 0.975 - acc 0.5| = 0.475.
    # torchmetrics: 0.95 in [0.9, 1.0) (gap 0.05) and 1.0 alone in an 11th bin (gap 1.0):
    # (0.05 + 1.0) / 2 = 0.525.
    probs = torch.tensor([[0.95, 0.05], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    ours = ExpectedCalibrationError(10)
    ours.update(probs, labels)
    assert ours.compute().item() == pytest.approx(0.475, abs=1e-7)
    function_value = cal.expected_calibration_error(probs, labels, 10).item()
    assert function_value == pytest.approx(0.475, abs=1e-7)
    theirs = MulticlassCalibrationError(num_classes=2, n_bins=10, norm="l1")
    theirs.update(probs, labels)
    assert theirs.compute().item() == pytest.approx(0.525, abs=1e-7)


# ---------------------------------------------------------------------------------------------
# Lightning
# ---------------------------------------------------------------------------------------------
def _recipe_blocks() -> list[str]:
    text = (ROOT / "docs" / "lightning.md").read_text()
    return [block.split("```")[0] for block in text.split("```python\n")[1:]]


def test_docs_recipe_runs_and_logs_the_function_values(tmp_path, capsys):
    pytest.importorskip("lightning")
    ns: dict = {"__name__": "lightning_recipe"}
    for i, block in enumerate(_recipe_blocks()):
        exec(compile(block, f"docs/lightning.md[block {i}]", "exec"), ns)
    printed = capsys.readouterr().out
    assert "val/ece" in printed
    trainer, module = ns["trainer"], ns["module"]
    x, y = ns["x"][192:], ns["y"][192:]
    with torch.no_grad():
        logits = module.model(x)
    logged = trainer.callback_metrics
    assert set(logged) >= {f"val/{k}" for k in module.val_metrics}
    kw = {"from_logits": True}
    want = {
        "val/ece": cal.expected_calibration_error(logits, y, 15, **kw),
        "val/adaptive_ece": cal.adaptive_calibration_error(logits, y, 15, **kw),
        "val/debiased_ce": cal.debiased_calibration_error(logits, y, 15, **kw),
        "val/gap": cal.calibration_gap(logits, y, 15, **kw).overall,
        "val/nll": cal.negative_log_likelihood(logits, y, **kw),
        "val/brier": cal.brier_score(logits, y, **kw),
    }
    for key, value in want.items():
        assert float(logged[key]) == pytest.approx(value.item(), rel=1e-12, abs=1e-14), key
    # The metric states are in the module's state_dict, so in Lightning checkpoints.
    state = module.state_dict()
    assert "val_metrics.ece.counts" in state and "val_metrics.adaptive_ece.conf" in state


@pytest.mark.slow
def test_two_process_ddp_fit_logs_the_single_process_values(tmp_path):
    pytest.importorskip("lightning")
    out = tmp_path / "ddp.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_lightning_ddp_calibration.py"), str(out), "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,  # Lightning's import and launch take minutes on a loaded 2-core machine
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2
    logged, reference = result["logged"], result["reference"]
    assert set(logged) == set(reference)
    for key, value in reference.items():
        assert logged[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key
    # Each rank alone would have logged something else (the failure mode this replaces).
    assert all(abs(v - reference["val/ece"]) > 1e-4 for v in result["per_rank_ece"])
