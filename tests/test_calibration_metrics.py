"""Functional calibration metrics: hand-computed values, edge cases, independent oracles.

Oracles (optional test-only packages, skipped cleanly when absent):
* netcal (``netcal.metrics.ECE`` / ``MCE``): equal-width ECE/MCE with [lo, hi) bins, so it is
  compared only where no confidence sits on a bin edge;
* uncertainty-calibration (Kumar et al.; ``calibration.utils``): Guo's (lo, hi] ECE, the plug-in
  and debiased L2, the marginal (class-wise) ECE and the equal-mass ECE;
* relplot (Błasiok & Nakkiran): smooth ECE, automatic and fixed bandwidth.
A small NumPy oracle written here (explicit per-bin masks with exact fractions) covers the edge
cases where the libraries' conventions differ.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelsmooth.calibration import (
    BootstrapCI,
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


pytestmark = pytest.mark.usefixtures("one_thread")


ORACLE_TOL = 1e-6


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _random_case(seed: int, n: int, k: int, scale: float = 2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=g)
    # Make it informative so confidences spread over many bins.
    logits[torch.arange(n), labels] += torch.rand(n, generator=g, dtype=torch.float64) * 3
    return logits.softmax(-1).to(dtype), labels


def _probs_with_confidence(conf, k: int = 10, pred=None) -> torch.Tensor:
    """Rows whose top probability is exactly ``conf`` (float64) on class ``pred`` (default 0).

    The rest is spread evenly; with conf >= 1/k the top class stays the argmax.
    """
    conf = torch.as_tensor(conf, dtype=torch.float64)
    n = conf.shape[0]
    rest = ((1 - conf) / (k - 1))[:, None].expand(n, k).clone()
    pred = torch.zeros(n, dtype=torch.long) if pred is None else torch.as_tensor(pred)
    rest.scatter_(1, pred[:, None], conf[:, None])
    return rest


def _numpy_guo_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Independent bin assignment by a linear scan over the edges k/M (correctly rounded floats).

    A confidence written as k/M (e.g. 0.1 for 1/10) is on the edge, so it goes to the lower bin.
    """
    out = np.empty(len(conf), dtype=np.int64)
    for i, c in enumerate(conf.tolist()):
        m = 0
        while m < n_bins - 1 and c > (m + 1) / n_bins:
            m += 1
        out[i] = m
    return out


def _numpy_binned(conf, correct, bins, n_bins):
    """Oracle ECE/MCE/RMS/debiased^2 from explicit bin masks (float64, Python loops)."""
    n = len(conf)
    ece = rms2 = deb = 0.0
    mce = 0.0
    for m in range(n_bins):
        mask = bins == m
        nb = int(mask.sum())
        if nb == 0:
            continue
        c, a = conf[mask].mean(), correct[mask].mean()
        ece += nb / n * abs(c - a)
        rms2 += nb / n * (c - a) ** 2
        mce = max(mce, abs(c - a))
        if nb >= 2:
            deb += nb / n * ((c - a) ** 2 - a * (1 - a) / (nb - 1))
    return ece, mce, np.sqrt(rms2), deb


def _top(probs: torch.Tensor, labels: torch.Tensor):
    p = probs.double().numpy()
    pred = p.argmax(1)
    return p.max(1), (pred == labels.numpy()).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------
def test_hand_computed_three_samples():
    # confidences 0.9 (right), 0.6 (wrong), 0.7 (right); 10 bins put each in its own bin.
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    assert expected_calibration_error(probs, labels, 10).item() == pytest.approx(
        (0.1 + 0.6 + 0.3) / 3
    )
    assert maximum_calibration_error(probs, labels, 10).item() == pytest.approx(0.6)
    assert rms_calibration_error(probs, labels, 10).item() == pytest.approx(np.sqrt(0.46 / 3))
    # One bin: |mean conf - acc| = |2.2/3 - 2/3|.
    assert expected_calibration_error(probs, labels, 1).item() == pytest.approx(0.2 / 3)
    gap = calibration_gap(probs, labels, 10)
    assert gap.overall.item() == pytest.approx(2.2 / 3 - 2 / 3)
    assert gap.counts.tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 1, 0]
    assert gap.per_bin[5].item() == pytest.approx(0.6)
    assert gap.per_bin[6].item() == pytest.approx(-0.3)
    assert (
        torch.isnan(gap.per_bin[0])
        and torch.isnan(gap.confidence[0])
        and torch.isnan(gap.accuracy[0])
    )
    # NLL, Brier, accuracy.
    assert negative_log_likelihood(probs, labels).item() == pytest.approx(
        -(np.log(0.9) + np.log(0.4) + np.log(0.7)) / 3
    )
    brier = ((0.1**2 + 0.1**2) + (0.6**2 + 0.6**2) + (0.3**2 + 0.3**2)) / 3
    assert brier_score(probs, labels).item() == pytest.approx(brier)
    assert accuracy(probs, labels).item() == pytest.approx(2 / 3)


def test_debiased_hand_computed():
    # one bin of 4: conf mean 0.75, acc 0.75 -> plug-in 0, debiased^2 = -0.75*0.25/3.
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0])
    est = debiased_calibration_error(probs, labels, 1, squared=True)
    assert est.item() == pytest.approx(-0.0625)
    assert debiased_calibration_error(probs, labels, 1).item() == 0.0  # clipped before the sqrt
    # bins of size 1 contribute 0 to the debiased estimate.
    assert debiased_calibration_error(probs, labels, 100, squared=True).item() == 0.0


def test_classwise_hand_computed():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    # class 0: bins (0,.5] {0.3 | y=0}, (.5,1] {0.9, 0.6 | y=1,0}: (0.3 + |1.5 - 1|)/3
    # class 1: bins (0,.5] {0.1, 0.4 | y=0,1}, (.5,1] {0.7 | y=1}: (|0.5 - 1| + 0.3)/3
    expected = ((0.3 + 0.5) / 3 + (0.5 + 0.3) / 3) / 2
    assert classwise_calibration_error(probs, labels, 2).item() == pytest.approx(expected)


def test_adaptive_hand_computed_and_ties():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0])
    # sorted confidences .6(w) .7(r) | .8(w) .9(r): (0.15 + 0.35) / 2
    assert adaptive_calibration_error(probs, labels, 2).item() == pytest.approx(0.25)
    # 3 bins of 4 samples: sizes 2, 1, 1 (first N mod M bins get the extra sample).
    expected = (2 * abs(0.65 - 0.5) + abs(0.8 - 0) + abs(0.9 - 1)) / 4
    assert adaptive_calibration_error(probs, labels, 3).item() == pytest.approx(expected)


def test_adaptive_ties_are_deterministic_and_order_free():
    # fp16-like saturation: many identical confidences with mixed correctness.
    conf = torch.tensor([1.0] * 6 + [0.75] * 6, dtype=torch.float64)
    correct = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1])
    probs = _probs_with_confidence(conf, k=4)
    labels = torch.where(correct.bool(), 0, 1)
    ref = adaptive_calibration_error(probs, labels, 5).item()
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        perm = torch.randperm(12, generator=g)
        assert adaptive_calibration_error(probs[perm], labels[perm], 5).item() == ref
    # Oracle under the documented tie order (incorrect first): sorted (conf, correct) rows in
    # contiguous groups of sizes 3, 3, 2, 2, 2.
    rows = sorted(zip(conf.tolist(), correct.tolist()))
    sizes, start, ece = [3, 3, 2, 2, 2], 0, 0.0
    for s in sizes:
        grp = rows[start : start + s]
        start += s
        ece += s / 12 * abs(np.mean([r[0] for r in grp]) - np.mean([r[1] for r in grp]))
    assert ref == pytest.approx(ece, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_bins", [4, 10, 15])
def test_confidences_exactly_on_bin_edges(dtype, n_bins):
    # conf = k/M (as rounded in the dtype) must land in bin k (1-based): ((k-1)/M, k/M].
    k_top = torch.arange(1, n_bins + 1)
    conf = (k_top.double() / n_bins).to(dtype)
    k_classes = n_bins + 1  # conf >= 1/M > 1/(M+1) keeps the top class the argmax
    probs = _probs_with_confidence(conf.double(), k=k_classes).to(dtype)
    probs[torch.arange(n_bins), 0] = conf  # keep the exact dtype value on the top class
    labels = torch.zeros(n_bins, dtype=torch.long)
    gap = calibration_gap(probs, labels, n_bins)
    assert gap.counts.tolist() == [1] * n_bins
    assert gap.counts.shape == (n_bins,)  # no extra bin for 1.0
    if dtype == torch.float64:
        bins = _numpy_guo_bins(conf.numpy(), n_bins)
        assert bins.tolist() == list(range(n_bins))


def test_zero_and_one_confidence():
    # A row of zeros has confidence 0 (first bin); a one-hot row has confidence 1.0 (last bin).
    # A zero row is not a distribution, so the value check is switched off to test the binning.
    probs = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 2])
    off = {"validate": False}
    gap = calibration_gap(probs, labels, 15, **off)
    assert gap.counts.tolist() == [1] + [0] * 13 + [2]
    # conf 0 with pred 0 != label 1: gap 0; last bin: conf 1, acc 0.5.
    assert expected_calibration_error(probs, labels, 15, **off).item() == pytest.approx(2 / 3 * 0.5)
    # Class-wise: probabilities of exactly 0 are counted in the first bin (not dropped).
    ref = _numpy_classwise(probs.numpy(), labels.numpy(), 15)
    got = classwise_calibration_error(probs, labels, 15, **off).item()
    assert got == pytest.approx(ref, abs=1e-15)
    with pytest.raises(ValueError, match=r"rows summing to 1 .*probs\[0\]"):
        expected_calibration_error(probs, labels, 15)


def test_one_sample():
    probs = torch.tensor([[0.3, 0.7]], dtype=torch.float64)
    for label, acc in ((1, 1.0), (0, 0.0)):
        y = torch.tensor([label])
        for fn in (
            expected_calibration_error,
            maximum_calibration_error,
            rms_calibration_error,
            adaptive_calibration_error,
        ):
            assert fn(probs, y, 15).item() == pytest.approx(abs(0.7 - acc))
        assert debiased_calibration_error(probs, y, 15, squared=True).item() == 0.0
        assert calibration_gap(probs, y, 15).overall.item() == pytest.approx(0.7 - acc)


def test_empty_bins_and_more_bins_than_samples():
    probs, labels = _random_case(0, 5, 4)
    conf, correct = _top(probs, labels)
    for fn in (
        expected_calibration_error,
        maximum_calibration_error,
        rms_calibration_error,
        debiased_calibration_error,
        adaptive_calibration_error,
        classwise_calibration_error,
    ):
        v = fn(probs, labels, 100)
        assert torch.isfinite(v), fn.__name__
    # With at most one sample per bin, ECE and adaptive ECE are mean |c_i - a_i|.
    per = np.abs(conf - correct)
    assert len(set(_numpy_guo_bins(conf, 1000).tolist())) == 5
    assert expected_calibration_error(probs, labels, 1000).item() == pytest.approx(per.mean())
    assert adaptive_calibration_error(probs, labels, 100).item() == pytest.approx(per.mean())
    assert maximum_calibration_error(probs, labels, 1000).item() == pytest.approx(per.max())


def test_logits_and_low_precision():
    g = torch.Generator().manual_seed(1)
    logits = 4 * torch.randn(300, 7, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    a = expected_calibration_error(logits, labels, from_logits=True)
    b = expected_calibration_error(logits.softmax(-1), labels)
    assert a.item() == b.item()
    # float16 logits are upcast before the softmax: identical to the float32 result.
    h = logits.half()
    assert expected_calibration_error(h, labels, from_logits=True).item() == (
        expected_calibration_error(h.float(), labels, from_logits=True).item()
    )
    # float64 stays float64.
    p64 = logits.double().softmax(-1)
    assert expected_calibration_error(p64, labels).item() == pytest.approx(
        _numpy_binned(*_top(p64, labels), _numpy_guo_bins(_top(p64, labels)[0], 15), 15)[0],
        abs=1e-15,
    )
    assert negative_log_likelihood(logits, labels, from_logits=True).item() == pytest.approx(
        F.cross_entropy(logits.double(), labels).item(), rel=1e-6
    )
    assert brier_score(logits, labels, from_logits=True).item() == pytest.approx(
        brier_score(logits.softmax(-1), labels).item(), abs=1e-12
    )


def test_nll_gradcheck():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (6,), generator=g)
    assert torch.autograd.gradcheck(
        lambda z: negative_log_likelihood(z, labels, from_logits=True), (logits,)
    )
    assert torch.autograd.gradcheck(lambda z: brier_score(z, labels, from_logits=True), (logits,))


# ---------------------------------------------------------------------------------------------
# NumPy oracle on random data, including ties and saturated confidences
# ---------------------------------------------------------------------------------------------
def _numpy_classwise(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    n, k = p.shape
    total = 0.0
    for c in range(k):
        bins = _numpy_guo_bins(p[:, c], n_bins)
        yc = (y == c).astype(np.float64)
        for m in range(n_bins):
            mask = bins == m
            if mask.any():
                total += abs(p[mask, c].sum() - yc[mask].sum()) / n
    return total / k


@pytest.mark.parametrize("seed,n,k,n_bins", [(0, 200, 5, 15), (1, 50, 3, 7), (2, 13, 10, 40)])
def test_against_numpy_oracle(seed, n, k, n_bins):
    probs, labels = _random_case(seed, n, k)
    # Add rows exactly on edges and saturated ones.
    edge = _probs_with_confidence(torch.tensor([1.0, 0.5, 1.0, 2 / n_bins]).clamp_min(1 / k), k=k)
    probs = torch.cat([probs, edge])
    labels = torch.cat([labels, torch.tensor([0, 0, 1, 1])])
    conf, correct = _top(probs, labels)
    bins = _numpy_guo_bins(conf, n_bins)
    ece, mce, rms, deb = _numpy_binned(conf, correct, bins, n_bins)
    assert expected_calibration_error(probs, labels, n_bins).item() == pytest.approx(ece, abs=1e-14)
    assert maximum_calibration_error(probs, labels, n_bins).item() == pytest.approx(mce, abs=1e-14)
    assert rms_calibration_error(probs, labels, n_bins).item() == pytest.approx(rms, abs=1e-14)
    assert debiased_calibration_error(probs, labels, n_bins, squared=True).item() == pytest.approx(
        deb, abs=1e-14
    )
    assert debiased_calibration_error(probs, labels, n_bins).item() == pytest.approx(
        np.sqrt(max(deb, 0.0)), abs=1e-14
    )
    assert classwise_calibration_error(probs, labels, n_bins).item() == pytest.approx(
        _numpy_classwise(probs.numpy(), labels.numpy(), n_bins), abs=1e-14
    )
    gap = calibration_gap(probs, labels, n_bins)
    assert gap.counts.tolist() == np.bincount(bins, minlength=n_bins).tolist()
    assert gap.overall.item() == pytest.approx(conf.mean() - correct.mean(), abs=1e-14)
    with np.errstate(divide="ignore"):  # an edge row puts probability 0 on its label: inf
        nll = -np.log(probs.numpy()[np.arange(len(labels)), labels.numpy()]).mean()
    assert negative_log_likelihood(probs, labels).item() == pytest.approx(nll, abs=1e-14)
    onehot = np.eye(k)[labels.numpy()]
    assert brier_score(probs, labels).item() == pytest.approx(
        ((probs.numpy() - onehot) ** 2).sum(1).mean(), abs=1e-14
    )
    assert accuracy(probs, labels).item() == pytest.approx(correct.mean(), abs=1e-15)


# ---------------------------------------------------------------------------------------------
# library oracles
# ---------------------------------------------------------------------------------------------
ORACLE_CASES = [
    (0, 2000, 10, 15),
    (1, 500, 3, 10),
    (2, 40, 5, 15),
    (3, 7, 4, 20),
    (4, 3000, 100, 15),
]


@pytest.mark.parametrize("seed,n,k,n_bins", ORACLE_CASES)
def test_against_netcal(seed, n, k, n_bins):
    nm = pytest.importorskip("netcal.metrics")
    probs, labels = _random_case(seed, n, k)
    # netcal treats labels with <= 2 distinct values as a binary task; keep >= 3 classes present.
    labels[:3] = torch.tensor([0, 1, 2])
    conf, _ = _top(probs, labels)
    # netcal bins are [lo, hi): the conventions agree only when no confidence is on an edge.
    assert not np.isin(conf, np.arange(n_bins + 1) / n_bins).any()
    p, y = probs.numpy(), labels.numpy()
    ours_ece = expected_calibration_error(probs, labels, n_bins).item()
    ours_mce = maximum_calibration_error(probs, labels, n_bins).item()
    assert abs(ours_ece - nm.ECE(bins=n_bins).measure(p, y)) < ORACLE_TOL
    assert abs(ours_mce - nm.MCE(bins=n_bins).measure(p, y)) < ORACLE_TOL


@pytest.mark.parametrize("seed,n,k,n_bins", ORACLE_CASES)
def test_against_uncertainty_calibration(seed, n, k, n_bins):
    cal = pytest.importorskip("calibration.utils")
    probs, labels = _random_case(seed, n, k)
    # Guo's (lo, hi] bins at i/M: the same convention, so edge and saturated rows are shared too.
    edge = _probs_with_confidence(torch.tensor([1.0, 0.5, 1.0, 3 / n_bins]).clamp_min(1 / k), k=k)
    probs = torch.cat([probs, edge])
    labels = torch.cat([labels, torch.tensor([0, 0, 1, 1])])
    p, y = probs.numpy(), labels.numpy()
    conf, correct = _top(probs, labels)
    data = list(zip(conf, correct))
    width_bins = cal.bin(data, cal.get_equal_prob_bins(conf, n_bins))
    checks = {
        "ece": (
            expected_calibration_error(probs, labels, n_bins),
            cal.get_ece(p, y, num_bins=n_bins),
        ),
        "rms": (rms_calibration_error(probs, labels, n_bins), cal.plugin_ce(width_bins, power=2)),
        "debiased": (
            debiased_calibration_error(probs, labels, n_bins),
            cal.unbiased_l2_ce(width_bins),
        ),
        "debiased_sq": (
            debiased_calibration_error(probs, labels, n_bins, squared=True),
            cal.unbiased_square_ce(width_bins),
        ),
        "classwise": (
            classwise_calibration_error(probs, labels, n_bins),
            cal.get_ece(p, y, num_bins=n_bins, mode="marginal"),
        ),
    }
    for name, (ours, theirs) in checks.items():
        assert abs(ours.item() - float(theirs)) < ORACLE_TOL, name


@pytest.mark.parametrize("seed,n,k,n_bins", ORACLE_CASES)
def test_adaptive_against_uncertainty_calibration(seed, n, k, n_bins):
    cal = pytest.importorskip("calibration.utils")
    probs, labels = _random_case(seed, n, k)  # continuous: no ties, so tie rules do not matter
    ours = adaptive_calibration_error(probs, labels, n_bins).item()
    theirs = cal.get_ece_em(probs.numpy(), labels.numpy(), num_bins=n_bins)
    assert abs(ours - theirs) < ORACLE_TOL


@pytest.mark.parametrize("seed,n,k", [(0, 1, 2), (1, 10, 3), (2, 1000, 10), (3, 20000, 5)])
def test_smooth_ece_against_relplot(seed, n, k):
    relplot = pytest.importorskip("relplot")
    probs, labels = _random_case(seed, n, k, scale=1.0)
    if n > 1:  # saturated rows (confidence exactly 1.0, right and wrong) and a grid-edge value
        edge = _probs_with_confidence(torch.tensor([1.0, 1.0, 0.5]).clamp_min(1 / k), k=k)
        probs = torch.cat([probs, edge])
        labels = torch.cat([labels, torch.tensor([0, 1, 0])])
    conf, correct = _top(probs, labels)
    assert (
        abs(smooth_calibration_error(probs, labels).item() - relplot.smECE(conf, correct))
        < ORACLE_TOL
    )
    for sigma in (0.01, 0.05, 0.3):
        ours = smooth_calibration_error(probs, labels, bandwidth=sigma).item()
        assert abs(ours - relplot.smECE_sigma(conf, correct, sigma)) < ORACLE_TOL


def test_smooth_ece_properties():
    # Always-right confidence 1.0 and always-wrong confidence 1.0: 0 and 1.
    probs = torch.tensor([[1.0, 0.0]] * 20, dtype=torch.float64)
    assert smooth_calibration_error(probs, torch.zeros(20, dtype=torch.long)).item() < 1e-3
    assert smooth_calibration_error(probs, torch.ones(20, dtype=torch.long)).item() > 0.99


# ---------------------------------------------------------------------------------------------
# statistics: the plug-in estimator is biased upward, the debiased one is not
# ---------------------------------------------------------------------------------------------
def test_perfectly_calibrated_model_debiased_vs_plugin():
    g = torch.Generator().manual_seed(0)
    reps, n, n_bins = 200, 1000, 15
    plug_sq, deb_sq, ece = [], [], []
    for _ in range(reps):
        conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64) ** 0.5
        correct = torch.rand(n, generator=g, dtype=torch.float64) < conf  # calibrated by design
        probs = torch.stack([conf, 1 - conf], 1)
        labels = (~correct).long()
        plug_sq.append(rms_calibration_error(probs, labels, n_bins).item() ** 2)
        deb_sq.append(debiased_calibration_error(probs, labels, n_bins, squared=True).item())
        ece.append(expected_calibration_error(probs, labels, n_bins).item())
    plug_sq, deb_sq, ece = map(np.asarray, (plug_sq, deb_sq, ece))
    se = deb_sq.std(ddof=1) / np.sqrt(reps)
    assert abs(deb_sq.mean()) < 3 * se  # unbiased: the true value is 0
    # The plug-in squared error sits far above 0: its bias is E[var of the bin accuracy].
    assert plug_sq.mean() > 10 * se and plug_sq.mean() > deb_sq.mean() + 10 * se
    # Binned-ECE noise floor of a calibrated model at n=1000 is ~1-2 % (Roelofs et al.).
    assert 0.005 < ece.mean() < 0.03


# ---------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------
def test_bootstrap_ci_seeded_and_percentile():
    probs, labels = _random_case(5, 300, 4)
    a = bootstrap_ci(expected_calibration_error, probs, labels, n_resamples=200, seed=7, n_bins=10)
    b = bootstrap_ci(expected_calibration_error, probs, labels, n_resamples=200, seed=7, n_bins=10)
    c = bootstrap_ci(expected_calibration_error, probs, labels, n_resamples=200, seed=8, n_bins=10)
    assert isinstance(a, BootstrapCI) and a == b and a != c
    assert a.estimate == expected_calibration_error(probs, labels, 10).item()
    assert a.low < a.estimate < a.high
    # Recompute the documented procedure independently: resamples from a CPU generator seeded
    # with `seed`, percentile interval by linear interpolation (numpy's default quantile).
    gen = torch.Generator().manual_seed(7)
    vals = []
    for _ in range(200):
        idx = torch.randint(0, 300, (300,), generator=gen)
        conf, correct = _top(probs[idx], labels[idx])
        vals.append(_numpy_binned(conf, correct, _numpy_guo_bins(conf, 10), 10)[0])
    lo, hi = np.quantile(vals, [0.025, 0.975])
    assert a.low == pytest.approx(lo, abs=1e-12) and a.high == pytest.approx(hi, abs=1e-12)


def test_bootstrap_degenerate_and_logits():
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    labels = torch.zeros(10, dtype=torch.long)
    assert bootstrap_ci(accuracy, probs, labels, n_resamples=50) == (1.0, 1.0, 1.0)
    logits = torch.randn(50, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    a = bootstrap_ci(negative_log_likelihood, logits, y, n_resamples=30, from_logits=True)
    b = bootstrap_ci(negative_log_likelihood, logits.softmax(-1), y, n_resamples=30)
    assert a.estimate == pytest.approx(b.estimate, abs=1e-12)
    assert a.low == pytest.approx(b.low, abs=1e-12) and a.high == pytest.approx(b.high, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------------------------
def test_validation_messages():
    # Every message follows the project template: the argument, what was expected, the value.
    p = torch.tensor([[0.6, 0.4]])
    y = torch.tensor([0])
    with pytest.raises(ValueError, match=r"Expected `n_bins` to be a positive int, but got 0"):
        expected_calibration_error(p, y, 0)
    with pytest.raises(ValueError, match="Expected `norm` to be one of .*'l3'"):
        expected_calibration_error(p, y, norm="l3")
    with pytest.raises(ValueError, match="Expected `binning` to be one of .*'quantile'"):
        expected_calibration_error(p, y, binning="quantile")
    with pytest.raises(ValueError, match=r"Expected `probs` to be a 2-D tensor of shape \(N, K\)"):
        expected_calibration_error(p[0], y)
    with pytest.raises(ValueError, match=r"Expected `labels` to be of shape \(N,\)"):
        expected_calibration_error(p, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="Expected `labels` to be an integer tensor.*float32"):
        expected_calibration_error(p, torch.tensor([0.0]))
    with pytest.raises(TypeError, match="Expected `probs` to be a floating-point tensor"):
        expected_calibration_error(torch.tensor([[1, 0]]), y)
    with pytest.raises(TypeError, match="Expected `from_logits` to be a bool, but got 1"):
        expected_calibration_error(p, y, from_logits=1)
    with pytest.raises(TypeError, match="Expected `validate` to be None, True or False"):
        expected_calibration_error(p, y, validate=1)
    with pytest.raises(ValueError, match="N = 0"):
        expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="Expected `bandwidth`"):
        smooth_calibration_error(p, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="Expected `alpha`"):
        bootstrap_ci(accuracy, p, y, alpha=1.5)
    with pytest.raises(ValueError, match="Expected `n_resamples`"):
        bootstrap_ci(accuracy, p, y, n_resamples=0)
    with pytest.raises(TypeError, match="Expected `metric` to be a callable"):
        bootstrap_ci("ece", p, y)
    with pytest.raises(TypeError, match="Expected `probs` to be a torch.Tensor, a numpy array"):
        expected_calibration_error("0.6 0.4", y)
