"""torch.autograd.gradcheck in float64: index and probability targets, weights, smoothing, softcap,
z-loss, both weight modes and both conventions, per implementation (skipped when unavailable).

The probability-target cases also check the gradient with respect to the target (the loss is
linear in it), and the binary loss is checked for input and target (with weight and pos_weight). Each index case
runs with one reduction (cycled), which keeps the file fast; the reductions are plain sums.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import labelsmooth as ls
from tests.helpers import need_impl

IMPLS = ["reference", "fused", "triton"]
K = 5



INDEX_CASES = {
    "plain": dict(),
    "smooth": dict(label_smoothing=0.1),
    "smooth-weight": dict(label_smoothing=0.2, weight=True),
    "smooth-weight-target-mode": dict(label_smoothing=0.2, weight=True, weight_mode="target"),
    "others-prior-weight": dict(label_smoothing=0.3, weight=True, prior=True),
    "others": dict(label_smoothing=0.3, spread="others"),
    "softcap": dict(label_smoothing=0.1, softcap=1.5),
    "zloss": dict(label_smoothing=0.1, z_loss=0.05, weight=True),
    "all-options": dict(label_smoothing=1.0, weight=True, softcap=2.0, z_loss=0.01, spread="all",
                        weight_mode="target"),
}


def build(kw):
    kw = dict(kw)
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(K, dtype=torch.float64) + 0.5
    if kw.pop("prior", False):
        kw["prior"] = torch.softmax(torch.randn(K, dtype=torch.float64), 0)
    return kw


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,reduction", [(n, ("none", "mean", "sum")[i % 3])
                                            for i, n in enumerate(INDEX_CASES)])
def test_gradcheck_index_targets(impl, name, reduction):
    if impl == "triton" and name not in ("smooth-weight", "all-options"):
        pytest.skip("triton: two cases (CPU interpreter)")
    need_impl(impl)
    kw = build(INDEX_CASES[name])
    x = (torch.randn(3, K, 2, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, K, (3, 2))
    y[1, 0] = -100
    assert gradcheck(lambda t: ls.cross_entropy(t, y, reduction=reduction, impl=impl, **kw), (x,))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["plain", "smooth-weight", "softcap", "zloss", "others-prior-weight"])
def test_gradcheck_probability_targets_wrt_input_and_target(impl, name):
    if impl == "triton" and name != "smooth-weight":
        pytest.skip("triton: one case (CPU interpreter)")
    need_impl(impl)
    kw = build(INDEX_CASES[name])
    kw.pop("spread", None)
    x = (torch.randn(4, K, dtype=torch.float64) * 2).requires_grad_()
    t = torch.softmax(torch.randn(4, K, dtype=torch.float64), 1).requires_grad_()
    assert gradcheck(lambda a, b: ls.cross_entropy(a, b, reduction="sum", impl=impl, **kw), (x, t))


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_gradcheck_probability_targets_target_mode(impl):
    """Under weight_mode="target" the row scale Σ_c w_c t_c depends on t: its gradient counts."""
    need_impl(impl)
    w = torch.rand(K, dtype=torch.float64) * 3 + 0.5
    x = torch.randn(3, K, dtype=torch.float64, requires_grad=True)
    t = torch.softmax(torch.randn(3, K, dtype=torch.float64), 1).requires_grad_()
    for red in ("none", "mean"):
        assert gradcheck(lambda a, b: ls.cross_entropy(a, b, w, reduction=red, label_smoothing=0.1,
                                                       z_loss=0.01, weight_mode="target", impl=impl),
                         (x, t))


def test_gradgradcheck_reference():
    """The reference is plain autograd, so second derivatives exist (useful for meta-learning)."""
    x = torch.randn(3, K, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, K, (3,))
    w = torch.rand(K, dtype=torch.float64) + 0.5
    assert gradgradcheck(lambda t: ls.cross_entropy(t, y, w, label_smoothing=0.1, z_loss=0.01,
                                                    impl="reference"), (x,))


def test_gradcheck_one_dimensional_input():
    x = torch.randn(K, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda t: ls.cross_entropy(t, torch.tensor(2), label_smoothing=0.2), (x,))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck_binary(reduction):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    # torch's op is not differentiable in weight / pos_weight: they stay constants
    w = torch.rand(4, 1, dtype=torch.float64) + 0.5
    pw = torch.rand(3, dtype=torch.float64) + 0.5
    assert gradcheck(lambda a, b: ls.binary_cross_entropy_with_logits(
        a, b, w, pw, reduction=reduction, label_smoothing=0.1), (x, t))
