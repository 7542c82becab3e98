"""cross_entropy: hand values, the parity matrix against PyTorch, options beyond PyTorch, stats, edges.

Tolerance rule (tests/helpers.py): against a float64 ground truth computed from the *same rounded
inputs*, our error may exceed PyTorch's own error in the same dtype by at most ``TOL[dtype]``
(relative to max(1, |truth|)); loss AND gradient, with a random upstream gradient.

Grid rationale (a full cartesian product would be ~5 000 cases and minutes on 2 shared cores; the
axes interact only in a few places, so each axis is crossed with the ones it can interact with and
the rest are cycled so that every value of every axis appears):

* G1 dtypes × shapes (20 cases), the option set alternating between two that exercise every code
  path between them (weights + ignore_index=-100 + ε=0.1 + mean; no weights + ignore_index=-1 +
  ε=0 + none);
* G2 weight × ignore_index ∈ {-100, -1, C+3, a valid class} × reduction (24 cases), ε cycling over
  {0, 0.1, 1} so every (option, ε) pair occurs, in float32 on a spatial (N, C, d1) input, where the
  per-element bookkeeping is hardest;
* G3 the options that touch rounding (weights, ε, reduction, ignore) in float16 and bfloat16;
* G4 every element ignored (NaN for mean, 0 for sum, zeros for none), per reduction × weight × ε;
* G5 probability targets: shapes × (weight, ε) × reductions in float32, plus each other dtype.

Each case runs per implementation (``reference``, ``fused``, ``triton``); an implementation whose
module is not importable / not available here is skipped. Triton runs under the CPU interpreter,
so only a handful of tiny cases are given to it.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from tests.helpers import TOL, assert_no_worse_than, dense_reference, need_impl, torch_loss_and_grad

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
IMPLS = ["reference", "fused", "triton"]
C = 5
SHAPES = {  # name → input shape; classes in dim 1 (dim 0 for the 1-D input)
    "C": (C,),
    "NC": (6, C),
    "NCd": (3, C, 4),
    "NCdd": (2, C, 3, 2),
    "unaligned": (7, 13, 3),
}



def num_classes(shape) -> int:
    return shape[0] if len(shape) == 1 else shape[1]


def index_shape(shape) -> tuple[int, ...]:
    return () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])


def make_logits(shape, dtype, scale: float = 3.0) -> torch.Tensor:
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)


def make_index_target(shape, ignore_index: int | None, all_ignored: bool = False) -> torch.Tensor:
    k = num_classes(shape)
    y = torch.randint(0, k, index_shape(shape))
    if ignore_index is not None:
        flat = y.view(-1)
        if all_ignored:
            flat.fill_(ignore_index)
        elif flat.numel() > 1:
            flat[::3] = ignore_index  # roughly a third ignored, always at least one
    return y


def upstream(loss_shape, reduction) -> torch.Tensor:
    if reduction == "none":
        return torch.rand(loss_shape, dtype=torch.float64) + 0.5
    return torch.rand((), dtype=torch.float64) + 0.5


def check_against_torch(impl, x, target, dtype, reduction, **kw) -> None:
    """ours vs torch in ``dtype``, both judged against torch in float64 on the same inputs."""
    weight = kw.pop("weight", None)
    loss_shape = target.shape if target.dtype == torch.long else index_shape(x.shape)
    g = upstream(loss_shape, reduction)
    t64 = target.double() if target.is_floating_point() else target
    truth = torch_loss_and_grad(x.double(), t64, g, weight=None if weight is None else weight.double(),
                                reduction=reduction, **kw)
    peer = torch_loss_and_grad(x, target, g, weight=weight, reduction=reduction, **kw)
    ours = torch_loss_and_grad(x, target, g, fn=ls.cross_entropy, weight=weight, reduction=reduction,
                               impl=impl, **kw)
    assert ours[0].dtype == peer[0].dtype == dtype
    assert ours[0].shape == peer[0].shape
    assert_no_worse_than(ours[0], peer[0], truth[0], TOL[dtype], "loss")
    assert_no_worse_than(ours[1], peer[1], truth[1], TOL[dtype], "grad")


# --- hand-computed values ------------------------------------------------------------------------


def test_hand_value_no_smoothing_uniform_logits():
    # equal logits: p = 1/K, loss = log K whatever the target or ε
    x = torch.zeros(2, 4)
    for eps in (0.0, 0.1, 1.0):
        assert float(ls.cross_entropy(x, torch.tensor([0, 3]), label_smoothing=eps)) == pytest.approx(
            math.log(4), abs=1e-6)


def test_hand_value_smoothed():
    # x = [ln 3, 0, 0] → p = [0.6, 0.2, 0.2]; y = 0, K = 3.
    x = torch.tensor([[math.log(3.0), 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    # ε = 0: −ln 0.6
    assert float(ls.cross_entropy(x, y)) == pytest.approx(-math.log(0.6), abs=1e-12)
    # ε = 0.3: q = [0.8, 0.1, 0.1] → −(0.8 ln 0.6 + 0.2 ln 0.2)
    expect = -(0.8 * math.log(0.6) + 0.2 * math.log(0.2))
    assert float(ls.cross_entropy(x, y, label_smoothing=0.3)) == pytest.approx(expect, abs=1e-12)
    # ε = 1: q = 1/3 each → −(ln 0.6 + 2 ln 0.2)/3
    expect = -(math.log(0.6) + 2 * math.log(0.2)) / 3
    assert float(ls.cross_entropy(x, y, label_smoothing=1.0)) == pytest.approx(expect, abs=1e-12)
    # spread="others", ε = 0.3: q = [0.7, 0.15, 0.15]
    expect = -(0.7 * math.log(0.6) + 0.3 * math.log(0.2))
    assert float(ls.cross_entropy(x, y, label_smoothing=0.3, spread="others")) == pytest.approx(
        expect, abs=1e-12)
    # prior [0, 0.5, 0.5], ε = 0.3: q = [0.7, 0.15, 0.15] as well
    prior = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    assert float(ls.cross_entropy(x, y, label_smoothing=0.3, prior=prior)) == pytest.approx(
        expect, abs=1e-12)


def test_hand_value_weighted_mean():
    # two rows, p = [0.6, 0.2, 0.2] in both; y = [0, 1]; w = [1, 3, 1]; ε = 0.
    x = torch.tensor([[math.log(3.0), 0.0, 0.0]] * 2, dtype=torch.float64)
    y = torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0, 1.0], dtype=torch.float64)
    expect = (1 * -math.log(0.6) + 3 * -math.log(0.2)) / (1 + 3)
    assert float(ls.cross_entropy(x, y, w)) == pytest.approx(expect, abs=1e-12)
    # with ε = 0.3 under torch's semantics the smoothing mass is weighted per class:
    # row n: 0.7·w_y·(−ln p_y) + 0.1·Σ_c w_c (−ln p_c), all over Σ w_y = 4
    s = 0.1 * (1 * -math.log(0.6) + 3 * -math.log(0.2) + 1 * -math.log(0.2))
    expect = (0.7 * 1 * -math.log(0.6) + s + 0.7 * 3 * -math.log(0.2) + s) / 4
    assert float(ls.cross_entropy(x, y, w, label_smoothing=0.3)) == pytest.approx(expect, abs=1e-12)
    # weight_mode="target": each row scaled by w_y, q unchanged
    row0 = -(0.8 * math.log(0.6) + 0.2 * math.log(0.2))
    row1 = -(0.1 * math.log(0.6) + 0.8 * math.log(0.2) + 0.1 * math.log(0.2))
    expect = (1 * row0 + 3 * row1) / 4
    assert float(ls.cross_entropy(x, y, w, label_smoothing=0.3, weight_mode="target")) == \
        pytest.approx(expect, abs=1e-12)


def test_hand_value_z_loss_and_softcap():
    x = torch.tensor([[math.log(3.0), 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    lse = math.log(5.0)  # log(3 + 1 + 1)
    assert float(ls.cross_entropy(x, y, z_loss=0.01)) == pytest.approx(
        -math.log(0.6) + 0.01 * lse**2, abs=1e-12)
    # softcap c: logits become c·tanh(x/c)
    c = 1.0
    xc = [c * math.tanh(v / c) for v in x[0].tolist()]
    lse_c = math.log(sum(math.exp(v) for v in xc))
    assert float(ls.cross_entropy(x, y, softcap=c)) == pytest.approx(lse_c - xc[0], abs=1e-12)


def test_docstring_example_matches_torch():
    x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 1])
    torch.testing.assert_close(ls.cross_entropy(x, y, label_smoothing=0.1),
                               F.cross_entropy(x, y, label_smoothing=0.1))


# --- parity matrix against torch ----------------------------------------------------------------

def _index_cases():
    cases = []
    opt_a = dict(weight=True, ignore_index=-100, reduction="mean", label_smoothing=0.1)
    opt_b = dict(weight=False, ignore_index=-1, reduction="none", label_smoothing=0.0)
    for i, (dtype, (sname, shape)) in enumerate(itertools.product(DTYPES, SHAPES.items())):
        oname, opt = ("A", opt_a) if i % 2 == 0 else ("B", opt_b)
        cases.append(pytest.param(dtype, shape, opt, id=f"G1-{str(dtype)[6:]}-{sname}-{oname}"))
    for i, (w, ii, red) in enumerate(itertools.product((False, True), (-100, -1, C + 3, 1),
                                                       ("none", "sum", "mean"))):
        eps = (0.0, 0.1, 1.0)[i % 3]
        opt = dict(weight=w, ignore_index=ii, reduction=red, label_smoothing=eps)
        cases.append(pytest.param(torch.float32, SHAPES["NCd"], opt, id=f"G2-w{int(w)}-ii{ii}-{red}-{eps}"))
    for dtype, (w, red, eps, ii) in itertools.product(
            (torch.float16, torch.bfloat16),
            ((True, "mean", 0.1, -100), (False, "none", 1.0, 1), (True, "sum", 0.0, 1),
             (True, "none", 0.1, C + 3))):
        opt = dict(weight=w, ignore_index=ii, reduction=red, label_smoothing=eps)
        cases.append(pytest.param(dtype, SHAPES["NC"], opt,
                                  id=f"G3-{str(dtype)[6:]}-w{int(w)}-{red}-{eps}-ii{ii}"))
    return cases


@pytest.mark.parametrize("impl", ["reference", "fused"])  # triton: test_parity_triton_tiny
@pytest.mark.parametrize("dtype,shape,opt", _index_cases())
def test_parity_index_targets(impl, dtype, shape, opt):
    need_impl(impl)
    _run_index_case(impl, dtype, shape, opt)


def _run_index_case(impl, dtype, shape, opt, all_ignored=False):
    opt = dict(opt)
    x = make_logits(shape, dtype)
    y = make_index_target(shape, opt["ignore_index"], all_ignored)
    w = (torch.rand(num_classes(shape), dtype=torch.float64) * 2 + 0.1).to(dtype) \
        if opt.pop("weight") else None
    check_against_torch(impl, x, y, dtype, weight=w, **opt)


TRITON_CASES = [
    (torch.float32, (4, 5), dict(weight=True, ignore_index=-100, reduction="mean", label_smoothing=0.1)),
    (torch.float32, (2, 5, 3), dict(weight=False, ignore_index=1, reduction="none", label_smoothing=1.0)),
    (torch.bfloat16, (3, 7), dict(weight=True, ignore_index=10, reduction="sum", label_smoothing=0.0)),
    (torch.float16, (5,), dict(weight=False, ignore_index=-100, reduction="mean", label_smoothing=0.1)),
]


@pytest.mark.parametrize("dtype,shape,opt", TRITON_CASES, ids=[f"t{i}" for i in range(len(TRITON_CASES))])
def test_parity_triton_tiny(dtype, shape, opt):
    need_impl("triton")
    _run_index_case("triton", dtype, shape, opt)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("weight", [False, True], ids=["now", "w"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_parity_all_ignored(impl, weight, eps, reduction):
    if impl == "triton" and weight:
        pytest.skip("triton: unweighted tiny cases only")
    need_impl(impl)
    # G4: the shape kind and dtype cycle with the options (1-D input: a scalar ignored target)
    shape = (SHAPES["NC"], SHAPES["C"], SHAPES["NCd"])[(int(weight) + 2 * int(eps > 0)) % 3]
    dtype = torch.float64 if reduction == "sum" else torch.float32
    opt = dict(weight=weight, ignore_index=-100, reduction=reduction, label_smoothing=eps)
    _run_index_case(impl, dtype, shape, opt, all_ignored=True)


def _prob_cases():
    cases = []
    opts = [(False, 0.0), (True, 0.1), (False, 1.0), (True, 0.0)]
    for i, ((sname, shape), (w, eps)) in enumerate(itertools.product(
            [("C", SHAPES["C"]), ("NC", SHAPES["NC"]), ("NCdd", SHAPES["NCdd"])], opts)):
        red = ("none", "sum", "mean")[i % 3]
        cases.append(pytest.param(torch.float32, shape, w, eps, red, id=f"f32-{sname}-w{int(w)}-{eps}-{red}"))
    for dtype, (w, eps, red) in itertools.product((torch.float64, torch.float16, torch.bfloat16),
                                                  [(False, 0.1, "none"), (True, 0.1, "mean")]):
        cases.append(pytest.param(dtype, SHAPES["NCd"], w, eps, red,
                                  id=f"{str(dtype)[6:]}-NCd-w{int(w)}-{eps}-{red}"))
    return cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,shape,weight,eps,reduction", _prob_cases())
def test_parity_probability_targets(impl, dtype, shape, weight, eps, reduction):
    if impl == "triton" and shape != SHAPES["NC"]:
        pytest.skip("triton: tiny (N, C) cases only")
    need_impl(impl)
    x = make_logits(shape, dtype)
    t = torch.softmax(torch.randn(shape, dtype=torch.float64) * 2, dim=0 if len(shape) == 1 else 1)
    t = t.to(dtype)
    w = (torch.rand(num_classes(shape), dtype=torch.float64) + 0.5).to(dtype) if weight else None
    check_against_torch(impl, x, t, dtype, reduction, weight=w, label_smoothing=eps)


# --- options beyond torch, against the dense float64 formula -------------------------------------


def dense_loss(x, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *,
               spread="all", prior=None, weight_mode="torch", z_loss=0.0, softcap=None):
    """Differentiable twin of tests.helpers.dense_reference (same literal formula, float64)."""
    k = x.shape[1] if x.dim() >= 2 else x.shape[0]
    xr = x.unsqueeze(0) if x.dim() == 1 else x.movedim(1, -1).reshape(-1, k)
    if softcap is not None:
        xr = softcap * torch.tanh(xr / softcap)
    y = target.reshape(-1)
    valid = y != ignore_index
    y0 = torch.where(valid, y, 0)
    q = ls.smooth_targets(y0, k, label_smoothing, spread=spread, dtype=torch.float64,
                          prior=None if prior is None else prior.double())
    logp = torch.log_softmax(xr, -1)
    lse = torch.logsumexp(xr, -1)
    w = torch.ones(k, dtype=torch.float64) if weight is None else weight.double()
    w_y = w[y0] * valid
    if weight_mode == "torch":
        rows = torch.where(valid, -(w * q * logp).sum(-1), 0.0)
    else:
        rows = torch.where(valid, -(q * logp).sum(-1) * w_y, 0.0)
    rows = rows + z_loss * w_y * lse**2
    if reduction == "none":
        return rows.reshape(target.shape)
    return rows.sum() if reduction == "sum" else rows.sum() / w_y.sum()


BEYOND = {
    "others": dict(label_smoothing=0.2, spread="others"),
    "others-w": dict(label_smoothing=0.2, spread="others", weight=True),
    "prior": dict(label_smoothing=0.3, prior=True),
    "prior-w": dict(label_smoothing=0.3, prior=True, weight=True),
    "target-mode": dict(label_smoothing=0.1, weight=True, weight_mode="target"),
    "target-mode-prior": dict(label_smoothing=0.1, weight=True, weight_mode="target", prior=True),
    "zloss": dict(z_loss=1e-2),
    "zloss-w-ls": dict(z_loss=1e-2, weight=True, label_smoothing=0.1),
    "softcap": dict(softcap=2.0, label_smoothing=0.1),
    "everything": dict(softcap=3.0, z_loss=1e-3, label_smoothing=0.2, spread="others", weight=True,
                       weight_mode="target"),
}


def _beyond_cases():
    """Each option set in float64 ('none', every element checked) and in one low precision,
    alternating float32/'mean' and bfloat16/'sum'."""
    cases = []
    for i, name in enumerate(BEYOND):
        low = (torch.float32, "mean") if i % 2 == 0 else (torch.bfloat16, "sum")
        for dtype, red in ((torch.float64, "none"), low):
            cases.append(pytest.param(name, dtype, red, id=f"{name}-{str(dtype)[6:]}-{red}"))
    return cases


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,dtype,reduction", _beyond_cases())
def test_beyond_torch_matches_dense_formula(impl, name, dtype, reduction):
    if impl == "triton" and dtype != torch.float32:
        pytest.skip("triton: float32 mean only")
    need_impl(impl)
    kw = dict(BEYOND[name])
    shape = (4, C, 3)
    x = make_logits(shape, dtype)
    y = make_index_target(shape, -100)
    if kw.pop("weight", False):
        kw["weight"] = (torch.rand(C, dtype=torch.float64) * 2 + 0.1).to(dtype)
    if kw.pop("prior", False):  # exact in every dtype, so the oracle sees the same distribution
        kw["prior"] = torch.tensor([0.125, 0.25, 0.0625, 0.5, 0.0625], dtype=dtype)
    g = upstream(y.shape, reduction)
    leaf64 = x.double().requires_grad_()
    truth = dense_loss(leaf64, y, reduction=reduction, **kw)
    (truth_grad,) = torch.autograd.grad(truth, leaf64, g)
    # the twin agrees with the shared oracle in tests/helpers.py
    # (helpers' oracle builds q in float32, hence the looser tolerance)
    torch.testing.assert_close(truth.detach(), dense_reference(x, y, reduction=reduction, **kw),
                               atol=1e-6, rtol=1e-6)
    ours, ours_grad = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, reduction=reduction,
                                          impl=impl, **kw)
    assert ours.dtype == dtype
    # no peer exists: the allowed error is the tolerance alone (peer = truth)
    assert_no_worse_than(ours, truth, truth, TOL[dtype], "loss")
    assert_no_worse_than(ours_grad, truth_grad, truth_grad, TOL[dtype], "grad")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", [dict(spread="others", label_smoothing=0.2),
                                dict(prior=True, label_smoothing=0.3),
                                dict(prior=True, label_smoothing=0.3, weight=True)],
                         ids=["others", "prior", "prior-w"])
def test_beyond_torch_probability_targets_equal_torch_on_presmoothed_targets(impl, kw):
    """Smoothing a soft target then calling torch's CE (ε=0) is the definition."""
    if impl == "triton":
        pytest.skip("triton: covered by index-target cases")
    need_impl(impl)
    kw = dict(kw)
    x = torch.randn(6, C, dtype=torch.float64) * 2
    t = torch.softmax(torch.randn(6, C, dtype=torch.float64), 1)
    w = torch.rand(C, dtype=torch.float64) + 0.5 if kw.pop("weight", False) else None
    if kw.pop("prior", False):
        kw["prior"] = torch.softmax(torch.randn(C, dtype=torch.float64), 0)
    q = ls.smooth_probabilities(t, kw["label_smoothing"], spread=kw.get("spread", "all"),
                                prior=kw.get("prior"))
    g = torch.rand(6, dtype=torch.float64)
    expect = torch_loss_and_grad(x, q, g, weight=w, reduction="none")
    ours = torch_loss_and_grad(x, t, g, fn=ls.cross_entropy, weight=w, reduction="none", impl=impl, **kw)
    torch.testing.assert_close(ours[0], expect[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours[1], expect[1], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_probability_targets_zloss_softcap_formula(reduction):
    x = torch.randn(4, C, 2, dtype=torch.float64) * 3
    t = torch.softmax(torch.randn(4, C, 2, dtype=torch.float64), 1)
    z, c = 1e-2, 2.5
    xc = c * torch.tanh(x / c)
    q = t * 0.9 + 0.1 / C
    lse = torch.logsumexp(xc, 1)
    rows = -(q * torch.log_softmax(xc, 1)).sum(1) + z * lse**2
    expect = {"none": rows, "sum": rows.sum(), "mean": rows.mean()}[reduction]
    ours = ls.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1, z_loss=z, softcap=c)
    torch.testing.assert_close(ours, expect, atol=1e-12, rtol=1e-12)


# --- CrossEntropyStats ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weight", [False, True], ids=["now", "w"])
def test_stats_nll_is_torch_unsmoothed_ce(reduction, weight):
    x = torch.randn(5, C, 3, dtype=torch.float64) * 2
    y = make_index_target(x.shape, -100)
    w = torch.rand(C, dtype=torch.float64) + 0.5 if weight else None
    out = ls.cross_entropy_with_stats(x, y, w, reduction=reduction, label_smoothing=0.2)
    torch.testing.assert_close(out.nll, F.cross_entropy(x, y, w, reduction=reduction),
                               atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.loss, F.cross_entropy(x, y, w, reduction=reduction,
                                                         label_smoothing=0.2), atol=1e-12, rtol=1e-12)
    assert out.z_loss.shape == out.loss.shape and not out.z_loss.any()
    lse = torch.logsumexp(x, 1)
    torch.testing.assert_close(out.lse, lse)
    assert not out.nll.requires_grad and not out.lse.requires_grad


def test_stats_z_loss_is_z_mean_lse_squared():
    x = torch.randn(8, C, dtype=torch.float64) * 4
    y = torch.randint(0, C, (8,))
    z = 1e-3
    out = ls.cross_entropy_with_stats(x, y, z_loss=z, label_smoothing=0.1)
    lse = torch.logsumexp(x, 1)
    torch.testing.assert_close(out.z_loss, z * (lse**2).mean(), atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(out.loss, F.cross_entropy(x, y, label_smoothing=0.1) + out.z_loss,
                               atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.nll, F.cross_entropy(x, y), atol=1e-12, rtol=1e-12)
    # weighted and with ignored rows: Σ w_y lse² / Σ w_y over the kept rows
    w = torch.rand(C, dtype=torch.float64) + 0.5
    y[::2] = -100
    out = ls.cross_entropy_with_stats(x, y, w, z_loss=z)
    keep = y != -100
    wy = w[y[keep]]
    torch.testing.assert_close(out.z_loss, z * (wy * lse[keep] ** 2).sum() / wy.sum(), atol=1e-14,
                               rtol=1e-12)
    torch.testing.assert_close(out.nll, F.cross_entropy(x, y, w), atol=1e-12, rtol=1e-12)


def test_stats_with_softcap_use_the_capped_logits():
    x = torch.randn(4, C, dtype=torch.float64) * 5
    y = torch.randint(0, C, (4,))
    out = ls.cross_entropy_with_stats(x, y, softcap=2.0, reduction="none")
    xc = 2.0 * torch.tanh(x / 2.0)
    torch.testing.assert_close(out.lse, torch.logsumexp(xc, 1))
    torch.testing.assert_close(out.nll, F.cross_entropy(xc, y, reduction="none"))


def test_stats_probability_targets():
    x = torch.randn(4, C, dtype=torch.float64)
    t = torch.softmax(torch.randn(4, C, dtype=torch.float64), 1)
    w = torch.rand(C, dtype=torch.float64) + 0.5
    out = ls.cross_entropy_with_stats(x, t, w, label_smoothing=0.3)
    torch.testing.assert_close(out.nll, F.cross_entropy(x, t, w), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.loss, F.cross_entropy(x, t, w, label_smoothing=0.3), atol=1e-12,
                               rtol=1e-12)


def test_stats_low_precision_dtype():
    x = torch.randn(4, C).bfloat16()
    y = torch.randint(0, C, (4,))
    out = ls.cross_entropy_with_stats(x, y, label_smoothing=0.1, z_loss=1e-3)
    assert out.loss.dtype == out.nll.dtype == out.z_loss.dtype == torch.bfloat16
    torch.testing.assert_close(out.nll.double(), F.cross_entropy(x.double(), y), atol=1e-2, rtol=0)


def test_stats_ignored_rows_with_infinite_logits():
    x = torch.randn(3, C, dtype=torch.float64)
    x[1, 0] = -math.inf  # the placeholder class of the ignored row
    y = torch.tensor([2, -100, 4])
    out = ls.cross_entropy_with_stats(x, y, reduction="none", label_smoothing=0.1)
    assert out.nll[1] == 0 and out.loss[1] == 0 and torch.isfinite(out.nll).all()


# --- edge cases ----------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("shape", [(0, C), (2, C, 0), (0, C, 3)], ids=["N0", "d0", "N0d"])
def test_empty_batches_match_torch(impl, reduction, shape):
    need_impl(impl)
    x = torch.randn(shape, requires_grad=True)
    y = torch.zeros(index_shape(shape), dtype=torch.long)
    for eps in (0.0, 0.1):
        ours = ls.cross_entropy(x, y, reduction=reduction, label_smoothing=eps, impl=impl)
        ref = F.cross_entropy(x, y, reduction=reduction, label_smoothing=eps)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, equal_nan=True)
        (g,) = torch.autograd.grad(ours.sum(), x, allow_unused=True)
        assert g is None or g.shape == x.shape
        # probability targets of the same empty shape
        t = torch.zeros(shape)
        ours = ls.cross_entropy(x, t, reduction=reduction, label_smoothing=eps, impl=impl)
        ref = F.cross_entropy(x, t, reduction=reduction, label_smoothing=eps)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref.abs() if reduction == "sum" else ref, equal_nan=True)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_one_class(impl):
    need_impl(impl)
    x = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(4, dtype=torch.long)
    for eps in (0.0, 0.5, 1.0):
        out = ls.cross_entropy(x, y, label_smoothing=eps, impl=impl)
        assert float(out.detach()) == 0.0
        torch.testing.assert_close(out, F.cross_entropy(x, y, label_smoothing=eps))
        (g,) = torch.autograd.grad(out, x)
        assert not g.any()


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_one_dimensional_input_with_scalar_target(impl):
    need_impl(impl)
    x = torch.randn(C, dtype=torch.float64)
    for y in (torch.tensor(3), torch.tensor(-100)):
        for red in ("none", "sum", "mean"):
            ours = ls.cross_entropy(x, y, reduction=red, label_smoothing=0.1, impl=impl)
            ref = F.cross_entropy(x, y, reduction=red, label_smoothing=0.1)
            assert ours.shape == ref.shape == ()
            torch.testing.assert_close(ours, ref, equal_nan=True)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_non_contiguous_inputs(impl):
    need_impl(impl)
    base = torch.randn(C, 12, dtype=torch.float64)
    y = torch.randint(0, C, (12,))
    views = {
        "transposed": base.t(),
        "strided rows": torch.randn(24, C, dtype=torch.float64)[::2],
        "strided cols": torch.randn(12, 2 * C, dtype=torch.float64)[:, ::2],
        "spatial permuted": torch.randn(3, 4, C, dtype=torch.float64).permute(0, 2, 1),
    }
    for name, v in views.items():
        assert not v.is_contiguous()
        yy = y if v.dim() == 2 else y.reshape(3, 4)
        w = torch.rand(2 * C, dtype=torch.float64)[::2] + 0.5  # a strided weight as well
        g = torch.rand(yy.shape, dtype=torch.float64)
        ours = torch_loss_and_grad(v, yy, g, fn=ls.cross_entropy, weight=w, reduction="none",
                                   label_smoothing=0.1, impl=impl)
        ref = torch_loss_and_grad(v, yy, g, weight=w, reduction="none", label_smoothing=0.1)
        torch.testing.assert_close(ours[0], ref[0], msg=name)
        torch.testing.assert_close(ours[1], ref[1], msg=name)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_integer_target_dtypes(dtype):
    x = torch.randn(6, C, dtype=torch.float64)
    y = torch.randint(0, C, (6,))
    expect = F.cross_entropy(x, y, label_smoothing=0.1)
    torch.testing.assert_close(ls.cross_entropy(x, y.to(dtype), label_smoothing=0.1), expect)
    if dtype == torch.uint8:  # segmentation-style ignore_index=255
        y2 = y.clone()
        y2[0] = 255
        torch.testing.assert_close(ls.cross_entropy(x, y2.to(dtype), ignore_index=255),
                                   F.cross_entropy(x, y2, ignore_index=255))


def test_weight_in_another_dtype_is_cast():
    x = torch.randn(6, C)
    y = torch.randint(0, C, (6,))
    w = torch.rand(C, dtype=torch.float64) + 0.5
    torch.testing.assert_close(ls.cross_entropy(x, y, w, label_smoothing=0.1),
                               F.cross_entropy(x, y, w.float(), label_smoothing=0.1))
    assert ls.cross_entropy(x.half(), y, w).dtype == torch.float16


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_loss_dtype_is_input_dtype(dtype, reduction):
    x = torch.randn(3, C).to(dtype)
    y = torch.randint(0, C, (3,))
    assert ls.cross_entropy(x, y, reduction=reduction, label_smoothing=0.1).dtype == dtype
    t = torch.softmax(torch.randn(3, C), 1).to(dtype)
    assert ls.cross_entropy(x, t, reduction=reduction).dtype == dtype


def test_numpy_scalars_are_accepted_like_python_numbers():
    np = pytest.importorskip("numpy")
    x = torch.randn(4, C)
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(
        ls.cross_entropy(x, y, ignore_index=np.int64(1), label_smoothing=np.float32(0.25)),
        F.cross_entropy(x, y, ignore_index=1, label_smoothing=0.25))


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_infinite_logits_in_ignored_rows_do_not_leak(impl, eps):
    """Padding rows whose logits hold -inf (a masked class 0) must not turn the loss into NaN."""
    need_impl(impl)
    x = torch.randn(4, C, dtype=torch.float64)
    x[:, 0] = -math.inf  # class 0 masked everywhere (e.g. a pad token)
    y = torch.tensor([1, -100, 3, -100])
    if eps > 0:  # the smoothing term of a kept row is +inf for torch too; keep only ε=0 rows finite
        x[[1, 3]] = x[[1, 3]].clone()
    for red in ("none", "sum", "mean"):
        g = upstream(y.shape, red)
        ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, reduction=red, label_smoothing=eps,
                                   impl=impl)
        ref = torch_loss_and_grad(x, y, g, reduction=red, label_smoothing=eps)
        torch.testing.assert_close(ours[0], ref[0], equal_nan=True)
        torch.testing.assert_close(ours[1][[1, 3]], torch.zeros(2, C, dtype=torch.float64))
        if eps == 0:
            torch.testing.assert_close(ours[1], ref[1])


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_masked_vocabulary_without_smoothing_stays_finite(impl):
    """A class masked to −inf in every row: torch's unsmoothed loss is finite, with weights too."""
    need_impl(impl)
    x = torch.randn(4, C, dtype=torch.float64)
    x[:, 3] = -math.inf
    y = torch.tensor([0, 1, 2, 4])
    w = torch.rand(C, dtype=torch.float64) + 0.5
    g = torch.rand((), dtype=torch.float64)
    for kw in (dict(weight=w), dict(weight=w, prior=torch.full((C,), 1 / C, dtype=torch.float64)),
               dict(weight=w, weight_mode="target")):
        ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl=impl, **kw)
        kw.pop("prior", None), kw.pop("weight_mode", None)
        ref = torch_loss_and_grad(x, y, g, **kw)
        assert torch.isfinite(ours[0]) and torch.isfinite(ours[1]).all()
        torch.testing.assert_close(ours[0], ref[0])
        torch.testing.assert_close(ours[1], ref[1])


def test_float16_on_cpu_is_accurate():
    x = (torch.randn(64, 50) * 4).half()
    y = torch.randint(0, 50, (64,))
    truth = F.cross_entropy(x.double(), y, label_smoothing=0.1)
    ours = ls.cross_entropy(x, y, label_smoothing=0.1)
    assert abs(float(ours) - float(truth)) <= 2 ** -10 * max(1.0, abs(float(truth)))


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
def test_ignored_rows_with_infinite_logits_give_no_nan(impl):
    need_impl(impl)
    inf = math.inf
    x = torch.tensor([[1.0, 2.0, 0.5], [-inf, -inf, -inf], [inf, 0.0, -inf]], requires_grad=True)
    y = torch.tensor([0, -100, -100])
    loss = ls.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-2, impl=impl)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(x.grad[1:], torch.zeros(2, 3))
    st = ls.cross_entropy_with_stats(x.detach(), y, label_smoothing=0.1, z_loss=1e-2, impl=impl)
    # only row 0 counts: z·lse² of it
    want = 1e-2 * torch.logsumexp(x.detach()[0], 0) ** 2
    assert torch.allclose(st.z_loss, want), st.z_loss


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
def test_every_impl_refuses_logits_overwritten_in_place(impl):
    need_impl(impl)
    h = torch.randn(3, 4, requires_grad=True) * 1.0
    ls.cross_entropy(h, torch.tensor([0, 1, 2]), inplace_backward=True, impl="fused").backward()
    with pytest.raises(RuntimeError, match="`input`.*overwritten"):
        ls.cross_entropy(h, torch.tensor([0, 1, 2]), impl=impl)


def test_weight_that_requires_grad_is_refused():
    w = torch.ones(3, requires_grad=True)
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"`weight.requires_grad`.*False.*got True"):
        ls.cross_entropy(x, y, weight=w)
    with pytest.raises(ValueError, match=r"`weight.requires_grad`"):
        ls.cross_entropy(x, torch.softmax(x, 1), weight=w)
    with torch.no_grad():  # no graph is built: nothing is dropped
        ls.cross_entropy(x, y, weight=w)


# --- issue 13: large logits, confident rows, non-finite values, mixed dtypes ---------------------
#
# "fused-inductor" is the fused engine with its compiled kernels forced at every size
# (LABELSMOOTH_FUSED_KERNELS=inductor), "fused-native" with its hand-written float32 kernels
# (=native; other dtypes take the chunked path there); "triton" runs under the CPU interpreter
# when installed.

PREC_IMPLS = ["reference", "fused", "fused-inductor", "fused-native", "triton"]


def _impl(impl, monkeypatch):
    if impl in ("fused-inductor", "fused-native"):
        monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", impl.split("-")[1])
        return "fused"
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "eager")
    need_impl(impl)
    return impl


# Before the fix the float32 loss was off by 1.6e-5 at an offset of 1e4 and 5e-3 at 1e6 (lse − x_y
# on unshifted values); relative to the row max it is off by ~1e-7, as torch's.
PREC_TOL = 1e-6


def _prec_check(impl, x, target, g, **kw):
    t64 = target.double() if target.is_floating_point() else target
    w = kw.pop("weight", None)
    truth = torch_loss_and_grad(x.double(), t64, g, weight=None if w is None else w.double(), **kw)
    peer = torch_loss_and_grad(x, target, g, weight=w, **kw)
    ours = torch_loss_and_grad(x, target, g, fn=ls.cross_entropy, impl=impl, weight=w, **kw)
    assert_no_worse_than(ours[0], peer[0], truth[0], PREC_TOL, "loss")
    assert_no_worse_than(ours[1], peer[1], truth[1], PREC_TOL, "grad")


@pytest.mark.parametrize("impl", PREC_IMPLS)
@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("kw", [dict(label_smoothing=0.0), dict(label_smoothing=0.1),
                                dict(label_smoothing=0.2, weight=True, reduction="none")],
                         ids=["eps0", "eps0.1", "w-none"])
def test_large_logit_offsets_index_targets(impl, offset, kw, monkeypatch):
    """8×10 float32 logits + offset (issue 13): the error stays at the loss's scale."""
    impl = _impl(impl, monkeypatch)
    kw = dict(kw)
    x = torch.randn(8, 10) + offset
    y = torch.randint(0, 10, (8,))
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(10) + 0.5
    g = upstream(y.shape, kw.get("reduction", "mean"))
    _prec_check(impl, x, y, g, **kw)


@pytest.mark.parametrize("impl", PREC_IMPLS)
@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
def test_large_logit_offsets_probability_targets(impl, offset, monkeypatch):
    impl = _impl(impl, monkeypatch)
    x = torch.randn(8, 10) + offset
    t = torch.softmax(torch.randn(8, 10), 1)
    _prec_check(impl, x, t, upstream((8,), "none"), label_smoothing=0.1, reduction="none",
                weight=torch.rand(10) + 0.5)


def test_large_logit_offset_issue_repro():
    """The issue's number: at +1e6 the fused loss was 2.90625 where the truth is 2.90867."""
    x = torch.randn(8, 10) + 1e6
    y = torch.randint(0, 10, (8,))
    truth = float(F.cross_entropy(x.double(), y, label_smoothing=0.1))
    for impl in ("reference", "fused"):
        assert abs(float(ls.cross_entropy(x, y, label_smoothing=0.1, impl=impl)) - truth) < 1e-6


def test_large_logit_offsets_stats_nll():
    x = torch.randn(8, 10) + 1e6
    y = torch.randint(0, 10, (8,))
    st = ls.cross_entropy_with_stats(x, y, label_smoothing=0.1)
    assert abs(float(st.nll) - float(F.cross_entropy(x.double(), y))) < 1e-6
    t = torch.softmax(torch.randn(8, 10), 1)
    st = ls.cross_entropy_with_stats(x, t, label_smoothing=0.1)
    assert abs(float(st.nll) - float(F.cross_entropy(x.double(), t.double()))) < 1e-6


@pytest.mark.parametrize("impl", PREC_IMPLS)
@pytest.mark.parametrize("k", [10, 1000])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_confident_rows(impl, k, eps, monkeypatch):
    """Target logit 20 above the rest: per-row losses of ~1e-7 and p_y − 1 keep torch's accuracy
    (an unshifted lse near 20 has an ulp of 1.9e-6 and rounded them to 0)."""
    impl = _impl(impl, monkeypatch)
    x = torch.randn(8, k)
    y = torch.randint(0, k, (8,))
    x[torch.arange(8), y] = x.amax(1) + 20
    _prec_check(impl, x, y, upstream((8,), "none"), label_smoothing=eps, reduction="none")


def _nonfinite_cases():
    inf, nan = math.inf, math.nan
    x = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    cases = []
    for name, (r, c, v) in {"+inf-other": (0, 1, inf), "+inf-target": (0, 0, inf),
                            "-inf-other": (0, 1, -inf), "-inf-target": (0, 0, -inf),
                            "nan": (0, 1, nan)}.items():
        xi = x.clone()
        xi[r, c] = v
        cases.append((name, xi, y, {}))
    xi = x.clone()
    xi[0] = -inf
    cases.append(("all-inf-row", xi, y, {}))
    cases.append(("weights-sum-0", x, y, {"weight": torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)}))
    cases.append(("all-ignored", x, torch.tensor([-100, -100]), {}))
    return cases


@pytest.mark.parametrize("impl", PREC_IMPLS)
@pytest.mark.parametrize("case", _nonfinite_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_nonfinite_values_follow_torch(impl, case, eps, reduction, monkeypatch):
    """One rule (see cross_entropy's docstring): NaN where torch gives NaN, +inf where it gives
    +inf, for the loss and the gradient alike."""
    impl = _impl(impl, monkeypatch)
    _, x, y, kw = case
    g = upstream(y.shape, reduction)
    ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl=impl, label_smoothing=eps,
                               reduction=reduction, **kw)
    ref = torch_loss_and_grad(x, y, g, label_smoothing=eps, reduction=reduction, **kw)
    torch.testing.assert_close(ours[0], ref[0], equal_nan=True)
    torch.testing.assert_close(ours[1], ref[1], equal_nan=True)


@pytest.mark.parametrize("impl", PREC_IMPLS)
@pytest.mark.parametrize("kind", ["prior", "weight", "prob"])
def test_zero_mass_at_minus_inf_logit_is_finite(impl, kind, monkeypatch):
    """A masked (−inf) column whose smoothing mass is 0 contributes 0·log 0 = 0: finite loss and
    gradient equal to the loss without that column (was NaN)."""
    impl = _impl(impl, monkeypatch)
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 4])
    xm = x.clone()
    xm[:, 3] = -math.inf
    keep = [0, 1, 2, 4, 5]
    if kind == "prior":
        p = torch.tensor([0.2, 0.2, 0.2, 0.0, 0.2, 0.2], dtype=torch.float64)
        kw, kw_ref = dict(prior=p), dict(prior=p[keep])
        tgt, tgt_ref = y, torch.tensor([0, 1, 2, 3])
    elif kind == "weight":
        w = torch.tensor([1.0, 2.0, 0.5, 0.0, 1.5, 1.0], dtype=torch.float64)
        kw = dict(weight=w)
        tgt, tgt_ref = y, torch.tensor([0, 1, 2, 3])

        def formula(xk, yk, label_smoothing):  # torch's semantics, shares ε/6 on the kept classes
            logp = torch.log_softmax(xk, 1)
            wk = w[keep]
            rows = (1 - label_smoothing) * wk[yk] * -logp.gather(1, yk[:, None])[:, 0] \
                + (label_smoothing / 6) * -(wk * logp).sum(1)
            return rows.sum() / wk[yk].sum()
    else:  # probability targets with zero probability there, no smoothing
        t = torch.softmax(torch.randn(4, 6, dtype=torch.float64), 1)
        t[:, 3] = 0
        t = t / t.sum(1, keepdim=True)
        kw, kw_ref = {}, {}
        tgt, tgt_ref = t, t[:, keep]
    eps = 0.0 if kind == "prob" else 0.1
    g = torch.rand((), dtype=torch.float64) + 0.5
    ours = torch_loss_and_grad(xm, tgt, g, fn=ls.cross_entropy, impl=impl, label_smoothing=eps, **kw)
    if kind == "weight":
        want = torch_loss_and_grad(x[:, keep], tgt_ref, g, fn=formula, label_smoothing=eps)
    else:
        want = torch_loss_and_grad(x[:, keep], tgt_ref, g, fn=ls.cross_entropy, impl="reference",
                                   label_smoothing=eps, **kw_ref)
    assert torch.isfinite(ours[0]) and torch.isfinite(ours[1]).all()
    torch.testing.assert_close(ours[0], want[0])
    torch.testing.assert_close(ours[1][:, keep], want[1])
    assert torch.equal(ours[1][:, 3], torch.zeros(4, dtype=torch.float64))


MIXED = [  # (input dtype, target dtype, weight dtype or None)
    (torch.float32, torch.float64, None),
    (torch.float32, torch.float32, torch.float64),
    (torch.bfloat16, torch.float32, None),
    (torch.bfloat16, torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16, None),
    (torch.float64, torch.float32, torch.bfloat16),
]


@pytest.mark.parametrize("impl", ["reference", "fused", "triton"])
@pytest.mark.parametrize("xd,td,wd", MIXED, ids=[f"{a}-{b}-{c}".replace("torch.", "") for a, b, c in MIXED])
def test_mixed_dtypes_promote_like_torch(impl, xd, td, wd, monkeypatch):
    """Probability targets: the loss dtype is torch's promotion of input, target and weight;
    the gradient stays in the input's dtype; the value is no worse than torch's."""
    impl = _impl(impl, monkeypatch)
    x = (torch.randn(6, C, dtype=torch.float64) * 3).to(xd)
    t = torch.softmax(torch.randn(6, C, dtype=torch.float64), 1).to(td)
    w = None if wd is None else (torch.rand(C, dtype=torch.float64) + 0.5).to(wd)
    g = torch.rand((), dtype=torch.float64) + 0.5
    peer = torch_loss_and_grad(x, t, g, weight=w, label_smoothing=0.1)
    ours = torch_loss_and_grad(x, t, g, fn=ls.cross_entropy, impl=impl, weight=w, label_smoothing=0.1)
    truth = torch_loss_and_grad(x.double(), t.double(), g, label_smoothing=0.1,
                                weight=None if w is None else w.double())
    assert ours[0].dtype == peer[0].dtype
    assert ours[1].dtype == peer[1].dtype == xd
    tol = TOL[ours[0].dtype]
    assert_no_worse_than(ours[0], peer[0], truth[0], tol, "loss")
    assert_no_worse_than(ours[1], peer[1], truth[1], TOL[xd], "grad")


def test_mixed_dtypes_index_targets_keep_the_input_dtype():
    """torch refuses an index-target weight of another dtype; labelsmooth casts it, loss in input's dtype."""
    x = torch.randn(6, C)
    y = torch.randint(0, C, (6,))
    with pytest.raises(RuntimeError):
        F.cross_entropy(x, y, torch.rand(C, dtype=torch.float64))
    assert ls.cross_entropy(x, y, torch.rand(C, dtype=torch.float64)).dtype == torch.float32
    assert ls.cross_entropy(x.bfloat16(), y, torch.rand(C), label_smoothing=0.1).dtype == torch.bfloat16


@pytest.mark.parametrize("args", [(None, None, 1), (None, None, -100), (None, -100, None),
                                  (None, True), (None, -100, False)])
def test_torch_positional_size_average_reduce_slots_are_refused(args):
    x, y = torch.randn(3, C), torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match=r"size_average`/`reduce` positional.*keyword.*ignore_index=-100"):
        ls.cross_entropy(x, y, *args)
    with pytest.raises(TypeError, match=r"size_average`/`reduce`"):
        ls.CrossEntropyLoss(*args)


@pytest.mark.parametrize("impl", ["reference", "fused", "fused-inductor", "fused-native"])
@pytest.mark.parametrize("k", [10, 1000])
def test_confident_rows_keep_their_tiny_loss(impl, k, monkeypatch):
    """Beyond torch: a row whose target logit is 20 above the rest has a loss of ~1e-8..1e-7,
    which float32 log_softmax rounds to 0 or 1.2e-7 (torch loses it). The sum of exponentials in
    float64 with the max's 1 apart keeps it to float32 relative precision, loss and p_y − 1."""
    impl = _impl(impl, monkeypatch)
    x = torch.randn(8, k)
    y = torch.randint(0, k, (8,))
    x[torch.arange(8), y] = x.amax(1) + 20
    leaf = x.clone().requires_grad_()
    loss = ls.cross_entropy(leaf, y, reduction="none", impl=impl)
    (g,) = torch.autograd.grad(loss.sum(), leaf)
    xd = x.double().requires_grad_()
    truth = F.cross_entropy(xd, y, reduction="none")
    (gt,) = torch.autograd.grad(truth.sum(), xd)
    assert (truth > 0).all()
    rel = ((loss.double() - truth) / truth).abs().max().item()
    assert rel < 1e-5, rel
    if impl == "reference":
        return  # its autograd rounds p_y to float32 before subtracting 1, as torch's does
    gy, gty = g.gather(1, y[:, None]).double(), gt.gather(1, y[:, None])
    rel_g = ((gy - gty) / gty).abs().max().item()
    assert rel_g < 1e-5, rel_g
