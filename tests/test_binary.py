"""Binary / multi-label cross-entropy on smoothed targets y·(1−ε)+ε/2 (Keras' convention)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_hand_values():
    # x = 0: σ = 1/2, loss = log 2 whatever the target and ε
    for eps in (0.0, 0.3, 1.0):
        out = ls.binary_cross_entropy_with_logits(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]),
                                                  label_smoothing=eps)
        assert float(out) == pytest.approx(math.log(2), abs=1e-6)
    # x = [3, −2], y = [1, 0], ε = 0.1 → t' = [0.95, 0.05];
    # ℓ = t'·softplus(−x) + (1 − t')·softplus(x)
    x = torch.tensor([3.0, -2.0], dtype=torch.float64)
    out = ls.binary_cross_entropy_with_logits(x, torch.tensor([1.0, 0.0], dtype=torch.float64),
                                              reduction="none", label_smoothing=0.1)
    expect = [0.95 * softplus(-3) + 0.05 * softplus(3), 0.05 * softplus(2) + 0.95 * softplus(-2)]
    torch.testing.assert_close(out, torch.tensor(expect, dtype=torch.float64))
    # ε = 1: every target is 1/2
    out = ls.binary_cross_entropy_with_logits(x, torch.tensor([1.0, 0.0], dtype=torch.float64),
                                              reduction="sum", label_smoothing=1.0)
    assert float(out) == pytest.approx(0.5 * (softplus(-3) + softplus(3) + softplus(2) + softplus(-2)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighting", ["none", "weight", "pos_weight", "both"])
def test_equals_torch_on_smoothed_targets(dtype, reduction, weighting):
    x = (torch.randn(6, 4) * 3).to(dtype)
    y = (torch.rand(6, 4) < 0.3).to(dtype)
    w = (torch.rand(6, 1) + 0.5).to(dtype) if weighting in ("weight", "both") else None
    pw = (torch.rand(4) * 3 + 0.5).to(dtype) if weighting in ("pos_weight", "both") else None
    for eps in (0.0, 0.1, 1.0):
        ours_leaf, ref_leaf = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = ls.binary_cross_entropy_with_logits(ours_leaf, y, w, pw, reduction, eps)
        ref = F.binary_cross_entropy_with_logits(ref_leaf, y * (1 - eps) + eps / 2, w, reduction=reduction,
                                                 pos_weight=pw)
        assert ours.dtype == ref.dtype == dtype
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)
        g = torch.rand_like(ours)
        torch.testing.assert_close(torch.autograd.grad(ours, ours_leaf, g)[0],
                                   torch.autograd.grad(ref, ref_leaf, g)[0], atol=0, rtol=0)


def test_module_equals_functional_and_torch():
    x = torch.randn(5, 3)
    y = (torch.rand(5, 3) < 0.5).float()
    pw = torch.tensor([1.0, 2.0, 3.0])
    w = torch.rand(5, 3) + 0.5
    for reduction, eps in itertools.product(("none", "sum", "mean"), (0.0, 0.2)):
        mod = ls.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw, label_smoothing=eps)
        torch.testing.assert_close(mod(x, y), ls.binary_cross_entropy_with_logits(x, y, w, pw, reduction, eps))
        ref = torch.nn.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)
        torch.testing.assert_close(mod(x, y), ref(x, y * (1 - eps) + eps / 2))
    # weight and pos_weight are buffers: they move with the module and appear in its state
    mod = ls.BCEWithLogitsLoss(weight=w, pos_weight=pw).double()
    assert mod.weight.dtype == torch.float64 and set(mod.state_dict()) == {"weight", "pos_weight"}


def test_optimum_is_the_smoothed_target():
    """d/dx vanishes where σ(x) = t' = y(1−ε)+ε/2, so a fitted positive saturates at 1 − ε/2."""
    y = torch.tensor([1.0, 0.0, 1.0, 0.5], dtype=torch.float64)
    t = y * 0.8 + 0.1
    x = torch.logit(t).requires_grad_()
    out = ls.binary_cross_entropy_with_logits(x, y, label_smoothing=0.2, reduction="sum")
    (g,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(g, torch.zeros_like(g), atol=1e-12, rtol=0)


def test_multilabel_spatial_shapes():
    x = torch.randn(2, 3, 4, 5)
    y = (torch.rand(2, 3, 4, 5) < 0.5).float()
    pw = torch.rand(5) + 0.5  # along the last dimension
    out = ls.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none", label_smoothing=0.1)
    assert out.shape == x.shape
    torch.testing.assert_close(out, F.binary_cross_entropy_with_logits(
        x, y * 0.9 + 0.05, pos_weight=pw, reduction="none"))


@pytest.mark.parametrize("call,exc,words", [
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3, 2), torch.rand(3)), ValueError,
     ["`target`", "(3, 2)", "(3,)"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3), torch.tensor([1, 0, 1])), TypeError,
     ["`target`", "floating", "torch.int64"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.tensor([1, 0]), torch.rand(2)), TypeError,
     ["`input`", "floating", "torch.int64"]),
    (lambda: ls.binary_cross_entropy_with_logits([0.0], torch.rand(1)), TypeError, ["`input`", "list"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3), torch.rand(3), label_smoothing=1.2),
     ValueError, ["`label_smoothing`", "[0, 1]", "1.2"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3), torch.rand(3),
                                                 label_smoothing=float("nan")),
     ValueError, ["`label_smoothing`", "nan"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3), torch.rand(3), reduction="avg"),
     ValueError, ["`reduction`", "'avg'"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3, 2), torch.rand(3, 2), torch.rand(4)),
     ValueError, ["`weight`", "broadcastable", "(3, 2)", "(4,)"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3, 2), torch.rand(3, 2),
                                                 pos_weight=torch.rand(3)),
     ValueError, ["`pos_weight`", "broadcastable", "(3,)"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(3, 2), torch.rand(3, 2),
                                                 pos_weight=torch.rand(2, 3, 2)),
     ValueError, ["`pos_weight`", "(2, 3, 2)"]),
    (lambda: ls.binary_cross_entropy_with_logits(torch.randn(2), torch.rand(2), weight=[1.0, 2.0]),
     TypeError, ["`weight`", "Tensor", "list"]),
    (lambda: ls.BCEWithLogitsLoss(label_smoothing=-0.5), ValueError, ["`label_smoothing`", "-0.5"]),
    (lambda: ls.BCEWithLogitsLoss(reduction="batchmean"), ValueError, ["`reduction`", "'batchmean'"]),
    (lambda: ls.BCEWithLogitsLoss(pos_weight=torch.tensor([1, 2])), TypeError,
     ["`pos_weight`", "floating", "torch.int64"]),
    (lambda: ls.BCEWithLogitsLoss()(torch.randn(2, 3), torch.rand(3, 2)), ValueError,
     ["`target`", "(2, 3)", "(3, 2)"]),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


def test_refuses_logits_overwritten_by_an_in_place_backward():
    """Issue 13.6: the same consumed-logits check every cross-entropy loss makes."""
    h = torch.randn(3, 4, requires_grad=True) * 1.0  # an activation: written in place
    ls.cross_entropy(h, torch.tensor([0, 1, 2]), inplace_backward=True, impl="fused").backward()
    with pytest.raises(RuntimeError, match="`input`.*overwritten"):
        ls.binary_cross_entropy_with_logits(h, torch.zeros(3, 4))
    with pytest.raises(RuntimeError, match="`input`.*overwritten"):
        ls.BCEWithLogitsLoss()(h, torch.zeros(3, 4))
