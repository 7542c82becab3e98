"""Label relaxation, signed (negative) smoothing and margin-based smoothing (labelsmooth.variants).

Each loss is checked against hand-computed values, a dense float64 formula written here from the
paper (materialised targets, no shared code path), gradcheck, properties, and, for label
relaxation, the independent ``label-relaxation`` package (class dimension last, no ignore_index).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import labelsmooth as ls

# ------------------------------------------------------------------------------------------------
# Label relaxation
# ------------------------------------------------------------------------------------------------


def relaxation_dense(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, ...]:
    """(N, K) float64: KL(r‖p) with the relaxed target r built explicitly, its gradient p − r."""
    x = x.double()
    p = torch.softmax(x, 1)
    py = p.gather(1, y[:, None])[:, 0]
    onehot = F.one_hot(y, x.shape[1]).bool()
    r = torch.where(onehot, 1.0 - alpha, alpha * p / (1.0 - py)[:, None])
    kl = (torch.special.xlogy(r, r) - r * torch.log_softmax(x, 1)).sum(1)
    active = py < 1.0 - alpha
    loss = torch.where(active, kl, torch.zeros_like(kl))
    grad = torch.where(active[:, None], p - r, torch.zeros_like(p))
    return loss, grad


def test_relaxation_hand_computed():
    # p_0 = e^0.5 / (e^0.5 + e^1.5 + 1) = 0.231224; α = 0.2:
    # 0.8·log(0.8/0.231224) + 0.2·log(0.2/0.768776) = 0.992980 − 0.269297 = 0.723683
    x = torch.tensor([[0.5, 1.5, 0.0]], dtype=torch.float64)
    p0 = math.exp(0.5) / (math.exp(0.5) + math.exp(1.5) + 1.0)
    expected = 0.8 * math.log(0.8 / p0) + 0.2 * math.log(0.2 / (1 - p0))
    assert abs(expected - 0.723683) < 1e-6
    got = ls.label_relaxation_loss(x, torch.tensor([0]), 0.2)
    assert abs(float(got) - expected) < 1e-12
    # p_0 of [2, 0, -1] is 0.8438: inside the set for α = 0.2, outside for α = 0.1
    x2 = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    assert float(ls.label_relaxation_loss(x2, torch.tensor([0]), 0.2)) == 0.0
    assert float(ls.label_relaxation_loss(x2, torch.tensor([0]), 0.1)) > 0.0


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.5, 0.9, 1.0])
def test_relaxation_dense_formula_and_gradient(alpha):
    x = (torch.randn(64, 7, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 7, (64,))
    loss = ls.label_relaxation_loss(x, y, alpha, reduction="sum")
    loss.backward()
    ref, grad = relaxation_dense(x.detach(), y, alpha)
    torch.testing.assert_close(loss, ref.sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, grad, rtol=1e-10, atol=1e-12)
    if 0.0 < alpha < 1.0:
        active = (ref > 0).sum()
        assert 0 < active < 64, "the case should hold rows on both sides of the threshold"


def test_relaxation_alpha_zero_is_nll_and_one_is_zero():
    x = torch.randn(10, 5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (10, 3))
    y[0, 1] = -100
    w = torch.rand(5, dtype=torch.float64) + 0.5
    ours = ls.label_relaxation_loss(x, y, 0.0, weight=w)
    torch_ = F.cross_entropy(x, y, weight=w)
    torch.testing.assert_close(ours, torch_, rtol=1e-12, atol=1e-12)
    g1, = torch.autograd.grad(ours, x)
    g2, = torch.autograd.grad(torch_, x)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
    one = ls.label_relaxation_loss(x, y, 1.0, reduction="none")
    assert torch.equal(one, torch.zeros_like(one))
    g, = torch.autograd.grad(one.sum(), x)
    assert torch.equal(g, torch.zeros_like(g))


def test_relaxation_zero_inside_credal_set_with_exact_zero_gradient():
    x = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    loss = ls.label_relaxation_loss(x, y, 0.1, reduction="none")
    assert loss[0] == 0.0 and loss[1] > 0.0
    loss.sum().backward()
    assert torch.equal(x.grad[0], torch.zeros(3))
    # outside the set the gradient is that of CE against the relaxed target: p − r sums to 0
    assert abs(float(x.grad[1].sum())) < 1e-6 and x.grad[1, 0] < 0


def test_relaxation_is_monotone_in_alpha():
    x = torch.randn(200, 6, dtype=torch.float64) * 2
    y = torch.randint(0, 6, (200,))
    losses = [float(ls.label_relaxation_loss(x, y, a)) for a in (0.0, 0.05, 0.1, 0.3, 0.6, 1.0)]
    assert all(a > b for a, b in zip(losses, losses[1:-1])) and losses[-1] == 0.0


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_relaxation_gradcheck(reduction):
    x = (torch.randn(6, 4, 2, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, 4, (6, 2))
    y[2, 1] = -100
    w = torch.rand(4, dtype=torch.float64) + 0.5
    assert gradcheck(lambda t: ls.label_relaxation_loss(t, y, 0.15, weight=w, reduction=reduction),
                     (x,))


def test_relaxation_ignore_index_and_weights():
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    y[[1, 4]] = 3
    ign = y.clone()
    ign[[1, 4]] = -1
    w = torch.rand(5, dtype=torch.float64) + 0.5
    xp = x.detach().clone()
    xp[[1, 4]] = float("nan")  # padding rows may hold anything
    xp.requires_grad_()
    loss = ls.label_relaxation_loss(xp, ign, 0.1, weight=w, ignore_index=-1)
    ref, _ = relaxation_dense(x.detach(), y, 0.1)
    keep = ign != -1
    expected = (ref * w[y])[keep].sum() / w[y][keep].sum()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert torch.equal(xp.grad[[1, 4]], torch.zeros(2, 5, dtype=torch.float64))
    assert torch.isfinite(xp.grad).all()
    none = ls.label_relaxation_loss(xp, ign, 0.1, ignore_index=-1, reduction="none")
    assert torch.equal(none[[1, 4]], torch.zeros(2, dtype=torch.float64))


def test_relaxation_extreme_logits_stay_finite():
    x = torch.tensor([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0], [0.0, 0.0, float("-inf")]],
                     requires_grad=True)
    y = torch.tensor([0, 0, 0])
    loss = ls.label_relaxation_loss(x, y, 0.1, reduction="none")
    # row 1: p_0 = e^-2000 → loss ≈ 0.9·(log 0.9 + 2000) + 0.1·log 0.1
    assert loss[0] == 0.0
    assert abs(float(loss[1].detach()) - (0.9 * (math.log(0.9) + 2000.0) + 0.1 * math.log(0.1))) < 1e-2
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    # a single class: p_y = 1 always, so the loss and its gradient are 0
    one = torch.randn(4, 1, requires_grad=True)
    out = ls.label_relaxation_loss(one, torch.zeros(4, dtype=torch.long), 0.1)
    out.backward()
    assert float(out.detach()) == 0.0 and torch.equal(one.grad, torch.zeros(4, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_relaxation_low_precision_against_float64(dtype):
    x = torch.randn(256, 11) * 3
    y = torch.randint(0, 11, (256,))
    truth = ls.label_relaxation_loss(x.double(), y, 0.1, reduction="none")
    ours = ls.label_relaxation_loss(x.to(dtype), y, 0.1, reduction="none")
    assert ours.dtype == dtype
    # error no larger than the input's own rounding propagated (≈ |∂ℓ/∂x|·ulp·|x|) + output rounding
    xr = x.to(dtype).double()
    rounded = ls.label_relaxation_loss(xr, y, 0.1, reduction="none")
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-6}[dtype]
    err = (ours.double() - rounded).abs() - tol * rounded.abs().clamp_min(1)
    assert (err <= 0).all(), float(err.max())
    assert (truth - rounded).abs().max() < 1.0  # sanity: same regime


def test_relaxation_against_label_relaxation_package():
    lr = pytest.importorskip("label_relaxation")
    worst = 0.0
    for dtype in (torch.float64, torch.float32):
        for alpha in (0.01, 0.05, 0.1, 0.3, 0.7):
            for scale in (0.5, 3.0, 30.0):
                x = (torch.randn(97, 13, dtype=dtype) * scale)
                y = torch.randint(0, 13, (97,))
                for reduction in ("none", "mean", "sum"):
                    a = x.clone().requires_grad_()
                    b = x.clone().requires_grad_()
                    ours = ls.label_relaxation_loss(a, y, alpha, reduction=reduction)
                    theirs = lr.label_relaxation_loss(b, y, alpha, reduction)
                    tol = 1e-10 if dtype == torch.float64 else 2e-5
                    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
                    ours.sum().backward()
                    theirs.sum().backward()
                    torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol)
                    if dtype == torch.float64:
                        worst = max(worst, float((ours - theirs).detach().abs().max()),
                                    float((a.grad - b.grad).abs().max()))
    # (N, C, d) layout: the package wants the classes last
    x = torch.randn(5, 6, 4, dtype=torch.float64)
    y = torch.randint(0, 6, (5, 4))
    torch.testing.assert_close(ls.label_relaxation_loss(x, y, 0.1, reduction="none"),
                               lr.label_relaxation_loss(x.movedim(1, -1), y, 0.1, "none"))
    print(f"max |ours - label-relaxation| (float64, loss and gradient) = {worst:.3e}")
    assert worst < 1e-10  # absolute, on losses up to ~10³ (logit scale 30)


def test_relaxation_module_and_errors():
    m = ls.LabelRelaxationLoss(0.1, weight=torch.ones(3))
    assert "weight" in m.state_dict()
    x = torch.randn(4, 3)
    y = torch.randint(0, 3, (4,))
    torch.testing.assert_close(m(x, y), ls.label_relaxation_loss(x, y, 0.1))
    with pytest.raises(ValueError, match=r"Expected `alpha` to be a float in \[0, 1\], but got 1.5"):
        ls.label_relaxation_loss(x, y, 1.5)
    with pytest.raises(ValueError, match="`alpha`"):
        ls.LabelRelaxationLoss(-0.1)
    with pytest.raises(TypeError, match="`alpha`"):
        ls.label_relaxation_loss(x, y, "0.1")
    with pytest.raises(TypeError, match="`target`"):
        ls.label_relaxation_loss(x, F.one_hot(y, 3).float())
    with pytest.raises(ValueError, match=r"`target` to be of shape \(4,\)"):
        ls.label_relaxation_loss(x, y[:3])
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        ls.label_relaxation_loss(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="`reduction`"):
        ls.label_relaxation_loss(x, y, reduction="avg")
    with pytest.raises(TypeError, match="`input`"):
        ls.label_relaxation_loss(torch.ones(4, 3, dtype=torch.long), y)


# ------------------------------------------------------------------------------------------------
# Signed smoothing (negative label smoothing)
# ------------------------------------------------------------------------------------------------


def signed_dense(x, y, eps, weight=None, ignore_index=-100, reduction="mean", spread="all",
                 prior=None, weight_mode="torch"):
    """Index targets: −Σ_c w_c q_c log p_c with q materialised (any sign of ε), float64."""
    x = x.double()
    k = x.shape[1]
    valid = y != ignore_index
    y0 = torch.where(valid, y, 0)
    onehot = F.one_hot(y0, k).double()
    if spread == "others":
        q = onehot * (1 - eps) + (1 - onehot) * eps / (k - 1)
    elif prior is not None:
        q = onehot * (1 - eps) + eps * prior.double()
    else:
        q = onehot * (1 - eps) + eps / k
    logp = torch.log_softmax(x, 1)
    w = torch.ones(k, dtype=torch.float64) if weight is None else weight.double()
    w_y = w[y0] * valid
    rows = -(w * q * logp).sum(1) * valid if weight_mode == "torch" else -(q * logp).sum(1) * w_y
    if reduction == "none":
        return rows
    return rows.sum() / w_y.sum() if reduction == "mean" else rows.sum()


CASES = {
    "plain": {},
    "others": dict(spread="others"),
    "weight": dict(weight=True),
    "weight-target": dict(weight=True, weight_mode="target"),
    "prior": dict(prior=True),
}


@pytest.mark.parametrize("eps", [-0.5, -0.2, 0.0, 0.3])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_signed_smoothing_dense(eps, case, reduction):
    kw = dict(CASES[case])
    k = 6
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(k, dtype=torch.float64) + 0.5
    if kw.pop("prior", False):
        kw["prior"] = torch.softmax(torch.randn(k, dtype=torch.float64), 0)
    x = (torch.randn(20, k, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, k, (20,))
    y[3] = -100
    ours = ls.smoothed_cross_entropy(x, y, eps, allow_negative=True, reduction=reduction, **kw)
    ref = signed_dense(x.detach(), y, eps, reduction=reduction, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-12)
    if eps >= 0:
        direct = ls.cross_entropy(x, y, label_smoothing=eps, reduction=reduction, **kw)
        assert torch.equal(ours, direct)


def test_signed_smoothing_gradient_is_p_minus_q_and_gradcheck():
    k = 5
    x = (torch.randn(7, k, 3, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, k, (7, 3))
    loss = ls.smoothed_cross_entropy(x, y, -0.3, allow_negative=True, reduction="sum")
    g, = torch.autograd.grad(loss, x)
    q = F.one_hot(y, k).movedim(-1, 1).double() * 1.3 - 0.3 / k
    torch.testing.assert_close(g, torch.softmax(x.detach(), 1) - q, rtol=1e-10, atol=1e-12)
    w = torch.rand(k, dtype=torch.float64) + 0.5
    y[0, 0] = -100
    assert gradcheck(lambda t: ls.smoothed_cross_entropy(
        t, y, -0.4, allow_negative=True, weight=w, z_loss=0.01, softcap=3.0), (x,))


def test_signed_smoothing_probability_targets_and_z_loss():
    k = 4
    x = torch.randn(6, k, dtype=torch.float64)
    t = torch.softmax(torch.randn(6, k, dtype=torch.float64), 1)
    ours = ls.smoothed_cross_entropy(x, t, -0.25, allow_negative=True, z_loss=0.1)
    q = t * 1.25 - 0.25 / k
    lse = torch.logsumexp(x, 1)
    ref = (-(q * torch.log_softmax(x, 1)).sum(1) + 0.1 * lse**2).mean()
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_negative_smoothing_sign_of_effect():
    # a confident correct prediction: plain CE barely pushes any more, NLS keeps sharpening
    x = torch.tensor([[8.0, 0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0])
    g_ce, = torch.autograd.grad(ls.smoothed_cross_entropy(x, y, 0.0), x)
    g_ls, = torch.autograd.grad(ls.smoothed_cross_entropy(x, y, 0.2), x)
    g_nls, = torch.autograd.grad(ls.smoothed_cross_entropy(x, y, -0.2, allow_negative=True), x)
    assert g_ls[0, 0] > 0 > g_ce[0, 0] > g_nls[0, 0]  # LS pulls the target logit down, NLS up
    assert (g_nls[0, 1:] > 0).all() and (g_nls[0, 1:] > g_ce[0, 1:]).all()
    assert abs(float(g_nls[0, 0]) - (float(torch.softmax(x.detach(), 1)[0, 0]) - (1.2 - 0.05))) < 1e-6
    # unbounded below: sharpening a correct prediction keeps lowering the NLS loss
    vals = [float(ls.smoothed_cross_entropy(torch.tensor([[s, 0.0, 0.0, 0.0]]), y, -0.2,
                                            allow_negative=True)) for s in (5.0, 20.0, 80.0)]
    assert vals[0] > vals[1] > vals[2] and vals[2] < -10


def test_signed_smoothing_errors_and_module():
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="allow_negative=True"):
        ls.smoothed_cross_entropy(x, y, -0.1)
    with pytest.raises(ValueError, match=r"`label_smoothing` to be a finite float <= 1"):
        ls.smoothed_cross_entropy(x, y, 1.5, allow_negative=True)
    with pytest.raises(ValueError, match="`label_smoothing`"):
        ls.smoothed_cross_entropy(x, y, float("-inf"), allow_negative=True)
    with pytest.raises(TypeError, match="`allow_negative`"):
        ls.smoothed_cross_entropy(x, y, -0.1, allow_negative="yes")
    with pytest.raises(ValueError, match="`spread`"):
        ls.smoothed_cross_entropy(torch.randn(3, 1), torch.zeros(3, dtype=torch.long), -0.1,
                                  allow_negative=True, spread="others")
    m = ls.SmoothedCrossEntropyLoss(-0.1, allow_negative=True)
    torch.testing.assert_close(m(x, y), ls.smoothed_cross_entropy(x, y, -0.1, allow_negative=True))
    m.label_smoothing = 0.1  # reassignable (a schedule), checked on the call
    torch.testing.assert_close(m(x, y), ls.cross_entropy(x, y, label_smoothing=0.1))
    m.label_smoothing = 2.0
    with pytest.raises(ValueError, match="`label_smoothing`"):
        m(x, y)
    with pytest.raises(ValueError, match="allow_negative=True"):
        ls.SmoothedCrossEntropyLoss(-0.1)


# ------------------------------------------------------------------------------------------------
# Margin-based label smoothing
# ------------------------------------------------------------------------------------------------


def margin_dense(x, y, margin, lam, class_reduction="mean", ignore_index=-100, reduction="mean"):
    """(N, K) float64: CE + λ·R_j max(0, max_k x_k − x_j − m), official-code style for 'mean'."""
    x = x.double()
    valid = y != ignore_index
    ce = F.cross_entropy(x, torch.where(valid, y, 0), reduction="none")
    diff = x.max(1, keepdim=True).values.repeat(1, x.shape[1]) - x
    pen = F.relu(diff - margin)
    pen = pen.mean(1) if class_reduction == "mean" else pen.sum(1)
    rows = (ce + lam * pen) * valid
    if reduction == "none":
        return rows
    return rows.sum() / valid.sum() if reduction == "mean" else rows.sum()


def test_margin_hand_computed():
    x = torch.tensor([[14.0, 2.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    ce = F.cross_entropy(x, y, reduction="none")
    out = ls.margin_smoothing_loss(x, y, reduction="none")
    # row 0: distances 12 and 14 exceed m = 10 by 2 and 4 → λ·6/3 = 0.2; row 1: within the margin
    torch.testing.assert_close(out, ce + torch.tensor([0.2, 0.0], dtype=torch.float64))
    out_sum = ls.margin_smoothing_loss(x, y, class_reduction="sum", reduction="none")
    torch.testing.assert_close(out_sum, ce + torch.tensor([0.6, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("class_reduction", ["mean", "sum"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_margin_dense_and_gradient(class_reduction, reduction):
    x = (torch.randn(40, 9, dtype=torch.float64) * 6).requires_grad_()
    y = torch.randint(0, 9, (40,))
    y[5] = -100
    ours = ls.margin_smoothing_loss(x, y, 4.0, 0.3, class_reduction=class_reduction,
                                    reduction=reduction)
    ref = margin_dense(x, y, 4.0, 0.3, class_reduction, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g1, = torch.autograd.grad(ours.sum(), x)
    g2, = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_margin_is_plain_ce_within_the_margin():
    x = torch.rand(12, 5, 2, dtype=torch.float64) * 9.0  # every distance < 10
    y = torch.randint(0, 5, (12, 2))
    y[0, 0] = -100
    # equal up to the summation order of the mean (cross_entropy's small-input path reduces in
    # torch's kernel, the margin loss sums its rows itself)
    exact = dict(rtol=1e-14, atol=0.0)
    torch.testing.assert_close(ls.margin_smoothing_loss(x, y), ls.cross_entropy(x, y), **exact)
    torch.testing.assert_close(ls.margin_smoothing_loss(x * 100, y, lam=0.0),
                               ls.cross_entropy(x * 100, y), **exact)


def test_margin_gradcheck_and_spatial():
    x = (torch.randn(4, 5, 3, dtype=torch.float64) * 5).requires_grad_()
    y = torch.randint(0, 5, (4, 3))
    y[1, 2] = -100
    assert gradcheck(lambda t: ls.margin_smoothing_loss(t, y, margin=2.0, lam=0.5), (x,))
    flat = ls.margin_smoothing_loss(x.movedim(1, -1).reshape(-1, 5), y.reshape(-1), 2.0, 0.5)
    torch.testing.assert_close(ls.margin_smoothing_loss(x, y, 2.0, 0.5), flat)


def test_margin_ignored_rows_with_nonfinite_logits():
    x = torch.randn(3, 4, requires_grad=True)
    xp = x.detach().clone()
    xp[1] = float("inf")
    xp.requires_grad_()
    y = torch.tensor([0, -100, 2])
    out = ls.margin_smoothing_loss(xp, y, 1.0, 1.0)
    out.backward()
    assert torch.isfinite(out) and torch.equal(xp.grad[1], torch.zeros(4))


def test_margin_errors_and_module():
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="`margin`"):
        ls.margin_smoothing_loss(x, y, margin=-1.0)
    with pytest.raises(ValueError, match="`lam`"):
        ls.MarginSmoothingLoss(lam=float("nan"))
    with pytest.raises(ValueError, match="`class_reduction`"):
        ls.margin_smoothing_loss(x, y, class_reduction="max")
    m = ls.MarginSmoothingLoss(1.0, 0.5, reduction="sum")
    torch.testing.assert_close(m(x, y), ls.margin_smoothing_loss(x, y, 1.0, 0.5, reduction="sum"))


def test_class_weights_that_require_grad_are_refused():
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="`weight.requires_grad`"):
        ls.label_relaxation_loss(torch.randn(2, 3), torch.tensor([0, 1]), weight=w)
    with torch.no_grad():
        ls.label_relaxation_loss(torch.randn(2, 3), torch.tensor([0, 1]), weight=w)


@pytest.mark.parametrize("fn", [
    lambda x, y: ls.label_relaxation_loss(x, y, 0.1),
    lambda x, y: ls.margin_smoothing_loss(x, y, 1.0, 0.5),
    lambda x, y: ls.smoothed_cross_entropy(x, y, -0.1, allow_negative=True),
])
def test_edge_shapes_follow_torch(fn):
    # an empty batch and an all-ignored batch give NaN under "mean" (as F.cross_entropy);
    # an unbatched (C,) input with a 0-d target gives a 0-d loss
    assert fn(torch.randn(0, 4), torch.zeros(0, dtype=torch.long)).isnan()
    assert fn(torch.randn(2, 4), torch.tensor([-100, -100])).isnan()
    x = torch.randn(4, dtype=torch.float64)
    out = fn(x, torch.tensor(2))
    assert out.shape == () and torch.allclose(out, fn(x[None], torch.tensor([2])))
    assert fn(torch.randn(3, 4, dtype=torch.bfloat16), torch.tensor([0, 1, 2])).dtype == \
        torch.bfloat16


@pytest.mark.slow
def test_losses_compile_without_graph_breaks():
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    for fn in (lambda a, b: ls.label_relaxation_loss(a, b, 0.1),
               lambda a, b: ls.margin_smoothing_loss(a, b, 1.0, 0.5)):
        compiled = torch.compile(fn, fullgraph=True)
        out, ref = compiled(x, y), fn(x, y)
        torch.testing.assert_close(out, ref)
        g1, = torch.autograd.grad(out, x)
        g2, = torch.autograd.grad(ref, x)
        torch.testing.assert_close(g1, g2)
