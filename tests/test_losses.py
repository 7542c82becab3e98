"""The nn.Module forms: drop-in parity with torch.nn.CrossEntropyLoss, buffers, configuration."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

import labelsmooth as ls
from tests.helpers import TOL, assert_no_worse_than, need_impl

IMPLS = ["reference", "fused", "triton"]
C = 5



def module_loss_and_grad(mod, x, target, g):
    leaf = x.detach().clone().requires_grad_()
    out = mod(leaf, target)
    (grad,) = torch.autograd.grad(out, leaf, g.to(out.dtype))
    return out.detach(), grad


# A cycled grid: every dtype, every reduction, weights on/off, index and probability targets,
# ignore_index inside and outside [0, C) and ε ∈ {0, 0.1, 1}, without the full product.
MODULE_CASES = []
for i, (dtype, reduction) in enumerate(itertools.product(
        (torch.float64, torch.float32, torch.float16, torch.bfloat16), ("none", "sum", "mean"))):
    MODULE_CASES.append(pytest.param(dtype, reduction, i % 2 == 0, (0.0, 0.1, 1.0)[i % 3],
                                     (-100, 1, C + 3, -1)[i % 4], i % 5 == 0,
                                     id=f"{str(dtype)[6:]}-{reduction}-{i}"))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,reduction,weighted,eps,ignore_index,prob", MODULE_CASES)
def test_module_parity_with_torch(impl, dtype, reduction, weighted, eps, ignore_index, prob):
    if impl == "triton" and dtype != torch.float32:
        pytest.skip("triton: float32 cases only (CPU interpreter)")
    need_impl(impl)
    shape = (4, C, 3)
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    if prob:
        target = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to(dtype)
        ignore_index = -100
    else:
        target = torch.randint(0, C, (4, 3))
        target[::2, 0] = ignore_index
    w = (torch.rand(C, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    out_shape = (4, 3) if reduction == "none" else ()
    g = torch.rand(out_shape, dtype=torch.float64) + 0.5
    t64 = target.double() if prob else target
    truth = module_loss_and_grad(nn.CrossEntropyLoss(weight=None if w is None else w.double(), **kw),
                                 x.double(), t64, g)
    peer = module_loss_and_grad(nn.CrossEntropyLoss(weight=w, **kw), x, target, g)
    ours = module_loss_and_grad(ls.CrossEntropyLoss(weight=w, impl=impl, **kw), x, target, g)
    assert ours[0].dtype == dtype and ours[0].shape == peer[0].shape
    assert_no_worse_than(ours[0], peer[0], truth[0], TOL[dtype], "loss")
    assert_no_worse_than(ours[1], peer[1], truth[1], TOL[dtype], "grad")


def test_module_equals_functional_for_every_option():
    x = torch.randn(3, C, 2, dtype=torch.float64)
    y = torch.randint(0, C, (3, 2))
    w = torch.rand(C, dtype=torch.float64) + 0.5
    prior = torch.softmax(torch.randn(C, dtype=torch.float64), 0)
    for kw in (dict(label_smoothing=0.1, spread="others"),
               dict(weight=w, label_smoothing=0.2, prior=prior, weight_mode="target"),
               dict(weight=w, label_smoothing=0.2, z_loss=1e-2, softcap=3.0, reduction="none")):
        torch.testing.assert_close(ls.CrossEntropyLoss(**kw)(x, y), ls.cross_entropy(x, y, **kw))


def test_keyword_arguments_match_torch_module():
    """The arguments of torch.nn.CrossEntropyLoss (bar the deprecated size_average/reduce) work."""
    w = torch.rand(C)
    ours = ls.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum", label_smoothing=0.3)
    ref = nn.CrossEntropyLoss(weight=w, ignore_index=2, reduction="sum", label_smoothing=0.3)
    for attr in ("ignore_index", "reduction", "label_smoothing"):
        assert getattr(ours, attr) == getattr(ref, attr)
    assert torch.equal(ours.weight, ref.weight)
    x, y = torch.randn(6, C), torch.randint(0, C, (6,))
    torch.testing.assert_close(ours(x, y), ref(x, y))
    # the first positional argument is the weight, as in torch
    torch.testing.assert_close(ls.CrossEntropyLoss(w)(x, y), nn.CrossEntropyLoss(w)(x, y))


def test_buffers_follow_the_module():
    w = torch.rand(C) + 0.5
    prior = torch.full((C,), 1 / C)
    mod = ls.CrossEntropyLoss(weight=w, prior=prior, label_smoothing=0.1)
    assert set(mod.state_dict()) == {"weight", "prior"}
    mod = mod.double()
    assert mod.weight.dtype == torch.float64 and mod.prior.dtype == torch.float64
    assert set(ls.CrossEntropyLoss().state_dict()) == set()
    clone = copy.deepcopy(mod)
    x, y = torch.randn(2, C, dtype=torch.float64), torch.tensor([0, 3])
    torch.testing.assert_close(clone(x, y), mod(x, y))


def test_attributes_can_be_changed_after_construction_and_are_rechecked():
    mod = ls.CrossEntropyLoss()
    x, y = torch.randn(4, C), torch.randint(0, C, (4,))
    mod.label_smoothing = 0.25
    torch.testing.assert_close(mod(x, y), torch.nn.functional.cross_entropy(x, y, label_smoothing=0.25))
    mod.label_smoothing = 3.0
    with pytest.raises(ValueError, match="label_smoothing"):
        mod(x, y)


def test_repr_shows_the_configuration():
    text = repr(ls.CrossEntropyLoss(label_smoothing=0.1, spread="others", weight_mode="target"))
    assert "label_smoothing=0.1" in text and "'others'" in text and "weight_mode='target'" in text


def test_module_runs_inside_a_model_and_trains():
    torch.manual_seed(1)
    model = nn.Linear(3, C).double()
    crit = ls.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(32, 3, dtype=torch.float64)
    y = torch.randint(0, C, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = float(crit(model(x), y).detach())
    for _ in range(20):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first
    assert float(loss.detach()) >= float(ls.entropy_floor(C, 0.1))
