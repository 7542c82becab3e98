"""Class weights with and without distortion of the smoothed target (pytorch#104776).

Under ``weight_mode="torch"`` (PyTorch's semantics) the class weights also reweight the smoothing
mass class by class, so the loss minimiser is p*_c ∝ a·w_y·[c=y] + b_c·w_c, not the smoothed
target. ``weight_mode="target"`` scales the whole row by w_y and keeps the minimiser at q. These
tests find the minimiser numerically (L-BFGS over free logits) and compare with both closed forms.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls


def minimise(k: int, y: int, **kw) -> torch.Tensor:
    """softmax of the logits that minimise the loss of a single element with target y."""
    x = torch.zeros(1, k, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([y])
    opt = torch.optim.LBFGS([x], lr=1, max_iter=200, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ls.cross_entropy(x, target, **kw)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(x.detach(), -1)[0]


def test_the_issue_example_k2_w_1_100():
    """K=2, w=[1, 100], ε=0.1, y=0: torch's semantics predict the wrong class (p*_1 = 5/5.95)."""
    w = torch.tensor([1.0, 100.0], dtype=torch.float64)
    p_torch = minimise(2, 0, weight=w, label_smoothing=0.1, weight_mode="torch")
    p_target = minimise(2, 0, weight=w, label_smoothing=0.1, weight_mode="target")
    # a_c = (1−ε)·w_y·[c=y] + (ε/K)·w_c = [0.9 + 0.05, 5] → p*_1 = 5 / 5.95
    assert float(p_torch[1]) == pytest.approx(5 / 5.95, abs=1e-6)
    assert float(p_torch[1]) == pytest.approx(0.84, abs=5e-3)  # the notes' number
    assert int(p_torch.argmax()) == 1  # the rare-class weight flips the prediction
    torch.testing.assert_close(p_target, torch.tensor([0.95, 0.05], dtype=torch.float64), atol=1e-6, rtol=0)
    assert int(p_target.argmax()) == 0


@pytest.mark.parametrize("conv", [dict(), dict(spread="others"), dict(prior=True)],
                         ids=["all", "others", "prior"])
def test_minimiser_in_both_modes_matches_the_closed_forms(conv):
    k, y, eps = 4, 2, 0.3
    conv = dict(conv)
    if conv.pop("prior", False):
        conv["prior"] = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    w = torch.tensor([0.5, 3.0, 1.0, 8.0], dtype=torch.float64)
    q = ls.smooth_targets(torch.tensor(y), k, eps, dtype=torch.float64, **conv)
    a, b = ls.smoothing_coefficients(k, eps, **{kk: v for kk, v in conv.items()})
    b = b if isinstance(b, torch.Tensor) else torch.full((k,), b, dtype=torch.float64)
    distorted = a * w[y] * torch.nn.functional.one_hot(torch.tensor(y), k) + b * w
    distorted = distorted / distorted.sum()

    p_torch = minimise(k, y, weight=w, label_smoothing=eps, weight_mode="torch", **conv)
    p_target = minimise(k, y, weight=w, label_smoothing=eps, weight_mode="target", **conv)
    torch.testing.assert_close(p_torch, distorted, atol=1e-6, rtol=0)
    torch.testing.assert_close(p_target, q, atol=1e-6, rtol=0)
    assert float((p_torch - q).abs().max()) > 0.05  # the distortion is real, not rounding


def test_without_weights_both_modes_are_torch():
    x = torch.randn(6, 5, 2, dtype=torch.float64)
    y = torch.randint(0, 5, (6, 2))
    y[0, 0] = -100
    for red in ("none", "sum", "mean"):
        a = ls.cross_entropy(x, y, reduction=red, label_smoothing=0.2, weight_mode="target")
        torch.testing.assert_close(a, F.cross_entropy(x, y, reduction=red, label_smoothing=0.2))
    # constant weights: "target" is then the unweighted loss exactly, for the mean
    w = torch.full((5,), 3.0, dtype=torch.float64)
    torch.testing.assert_close(ls.cross_entropy(x, y, w, label_smoothing=0.2, weight_mode="target"),
                               F.cross_entropy(x, y, label_smoothing=0.2))


def test_torch_mode_is_pytorchs_semantics():
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    w = torch.rand(5, dtype=torch.float64) * 5
    for red in ("none", "sum", "mean"):
        torch.testing.assert_close(ls.cross_entropy(x, y, w, reduction=red, label_smoothing=0.3),
                                   F.cross_entropy(x, y, w, reduction=red, label_smoothing=0.3))


def test_target_mode_is_the_row_scaled_by_its_class_weight():
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    y[3] = -100
    w = torch.rand(4, dtype=torch.float64) * 5 + 0.1
    rows = ls.cross_entropy(x, y, reduction="none", label_smoothing=0.2)  # unweighted smoothed CE
    keep = y != -100
    w_y = torch.where(keep, w[y.clamp_min(0)], 0.0)
    out = ls.cross_entropy(x, y, w, reduction="none", label_smoothing=0.2, weight_mode="target")
    torch.testing.assert_close(out, rows * w_y)
    mean = ls.cross_entropy(x, y, w, label_smoothing=0.2, weight_mode="target")
    torch.testing.assert_close(mean, (rows * w_y).sum() / w_y.sum())
    # logging: the nll under "target" is torch's weighted unsmoothed CE (same weights and normaliser)
    stats = ls.cross_entropy_with_stats(x, y, w, label_smoothing=0.2, weight_mode="target")
    torch.testing.assert_close(stats.nll, F.cross_entropy(x, y, w))


def test_target_mode_probability_targets_keep_the_smoothed_optimum():
    """Soft targets under "target": the row scale Σ_c w_c t_c multiplies an undistorted CE."""
    k = 3
    w = torch.tensor([1.0, 50.0, 2.0], dtype=torch.float64)
    t = torch.tensor([[0.7, 0.0, 0.3]], dtype=torch.float64)
    q = ls.smooth_probabilities(t, 0.1)
    x = torch.zeros(1, k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([x], max_iter=200, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ls.cross_entropy(x, t, w, label_smoothing=0.1, weight_mode="target")
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(torch.softmax(x.detach(), -1), q, atol=1e-6, rtol=0)
    # and the value is the row scale times the unweighted CE, over Σ of the row scales
    x2 = torch.randn(4, k, dtype=torch.float64)
    t2 = torch.softmax(torch.randn(4, k, dtype=torch.float64), 1)
    rs = t2 @ w
    rows = F.cross_entropy(x2, t2, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(ls.cross_entropy(x2, t2, w, label_smoothing=0.1, weight_mode="target"),
                               (rs * rows).sum() / rs.sum())
