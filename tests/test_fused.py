"""The fused CPU engine (``impl="fused"``): primitives, parity, gradients, in-place safety, compile.

Ground truth is float64: ``tests.helpers.dense_reference`` (literal smoothed-target formula) for
index targets, ``impl="reference"`` in float64 (autograd-derived gradients) for probability targets.
The peer whose error we must not exceed is torch's ``F.cross_entropy`` in the same dtype where it
supports the options, else ``impl="reference"`` in the same dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth.ops import _fused_chunks as chunks
from labelsmooth.ops import _fused_inductor as ind
from labelsmooth.ops import fused
from tests.helpers import TOL, assert_no_worse_than, dense_reference

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _eager_kernels(monkeypatch):
    """Tests use small inputs: the chunked eager path (compiled kernels are tested explicitly)."""
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "eager")


def _dense_stats(x, y, s, s_uniform, softcap):
    xf = x.double()
    if softcap is not None:
        xf = softcap * torch.tanh(xf / softcap)
    lse = torch.logsumexp(xf, 1)
    share = (
        s.double()
        if s is not None
        else torch.full((x.shape[1],), float(s_uniform), dtype=torch.float64)
    )
    return lse, xf.gather(1, y[:, None])[:, 0], xf @ share, xf


# --- primitives -----------------------------------------------------------------------------------


def test_row_partials_hand_values():
    # rows [0, ln 3] and [5, 5]: max, Σexp(x − max), target logit, ½·Σ(max − x)
    x = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]])
    m, se, xy, sx = fused.row_partials(x, torch.tensor([1, 0]), None, 0.5, None)
    torch.testing.assert_close(m, torch.tensor([math.log(3.0), 5.0]))
    torch.testing.assert_close(se, torch.tensor([4.0 / 3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(xy, torch.tensor([math.log(3.0), 5.0]))
    # ½·Σ (max − x): relative to the row max (float32 keeps its digits at large logits)
    torch.testing.assert_close(sx, torch.tensor([0.5 * math.log(3.0), 0.0]))


def test_grad_rows_hand_values():
    # x = [0, 0], y = 0, ε = 0.5 (K convention): p = [½, ½], q = [¾, ¼] → grad p − q = [−¼, ¼]
    x = torch.zeros(1, 2)
    one = torch.ones(1)
    lse = torch.tensor([math.log(2.0)])
    g = fused.grad_rows(x, torch.tensor([0]), lse, one, 0.5 * one, one, None, 0.25, None, one)
    torch.testing.assert_close(g, torch.tensor([[-0.25, 0.25]]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shares", ["none", "uniform", "vector"])
@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("blocks", ["rows", "columns"])
def test_row_partials_matches_dense(monkeypatch, dtype, shares, softcap, blocks):
    rows, k = 11, 37
    x = (torch.randn(rows, k, dtype=torch.float64) * 4).to(dtype)
    y = torch.randint(0, k, (rows,))
    mask = torch.rand(rows) > 0.3
    y_bad = torch.where(mask, y, torch.full_like(y, 10**6))  # ignored rows may hold any index
    s = torch.rand(k, dtype=torch.float64) if shares == "vector" else None
    su = 0.03 if shares == "uniform" else 0.0
    if blocks == "columns":
        monkeypatch.setattr(chunks, "MAX_COLS", 8)
    m, se, xy, sx = fused.row_partials(x, y_bad, s, su, softcap, target_mask=mask, chunk_elems=24)
    lse, xy_ref, _, xf = _dense_stats(x, y, s, su, softcap)
    share = s.double() if s is not None else torch.full((k,), su, dtype=torch.float64)
    sx_ref = (xf.amax(1, keepdim=True) - xf) @ share  # Σ s_c (max − x_c): relative to the max
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert m.dtype == xy.dtype == sx.dtype == acc and se.dtype == torch.float64
    tol = {"rtol": 1e-12, "atol": 1e-12} if acc == torch.float64 else {"rtol": 2e-6, "atol": 2e-5}
    torch.testing.assert_close((m + se.log()).double(), lse, **tol)
    torch.testing.assert_close(xy.double(), torch.where(mask, xy_ref, 0.0), **tol)
    if shares == "none":
        assert torch.equal(sx, torch.zeros_like(sx))
    else:
        torch.testing.assert_close(sx.double(), sx_ref, **tol)


@pytest.mark.parametrize("blocks", ["rows", "columns"])
def test_row_partials_infinite_rows(monkeypatch, blocks):
    """All −inf rows give lse −inf (torch.logsumexp), −inf blocks add nothing; a row holding
    +inf gets a NaN sum (its loss and gradient are NaN, as torch's log_softmax makes them)."""
    if blocks == "columns":
        monkeypatch.setattr(chunks, "MAX_COLS", 2)
    inf = float("inf")
    x = torch.tensor(
        [
            [-inf, -inf, -inf, -inf],
            [-inf, -inf, 1.0, 2.0],
            [1.0, -inf, -inf, -inf],
            [0.0, inf, 1.0, 1.0],
        ]
    )
    m, se, _, _ = fused.row_partials(x, torch.zeros(4, dtype=torch.long), None, 0.0, None)
    torch.testing.assert_close((m + se.log())[:3].float(), torch.logsumexp(x, 1)[:3])
    assert torch.isnan(se[3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shares", ["none", "uniform", "vector"])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("where", ["fresh", "inplace", "columns"])
def test_grad_rows_matches_autograd(monkeypatch, dtype, shares, softcap, where):
    rows, k = 9, 29
    x = (torch.randn(rows, k, dtype=torch.float64) * 3).to(dtype)
    y = torch.randint(0, k, (rows,))
    mask = torch.rand(rows) > 0.3
    s = torch.rand(k, dtype=torch.float64) if shares == "vector" else None
    su = 0.02 if shares == "uniform" else 0.0
    ct, cs, cz, g = (torch.rand(rows, dtype=torch.float64) for _ in range(4))
    g = g - 0.5  # upstream gradients of both signs
    # float64 truth by autograd through the per-row loss
    xd = x.double().requires_grad_()
    lse, xy, sx, _ = _dense_stats(xd, y, s, su, softcap)
    big_s = s.sum() if s is not None else su * k
    loss = ct * mask * (lse - xy) + cs * (big_s * lse - sx) + cz * lse**2
    (truth,) = torch.autograd.grad(loss, xd, g)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    lse = lse.detach().to(acc)
    coef_p = (ct * mask + cs * big_s + 2 * cz * lse.double()).to(acc)
    if where == "columns":
        monkeypatch.setattr(chunks, "MAX_COLS", 8)
    xx = x.clone()
    out = xx if where == "inplace" else None
    got = fused.grad_rows(
        xx,
        torch.where(mask, y, -1),
        lse,
        coef_p,
        ct.to(acc),
        cs.to(acc),
        s,
        su,
        softcap,
        g.to(acc),
        target_mask=mask,
        out=out,
        chunk_elems=40,
    )
    assert got.dtype == dtype and got.shape == x.shape
    if where == "inplace":
        assert got.data_ptr() == xx.data_ptr()
    bound = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
    err = (got.double() - truth).abs().max().item()
    assert err <= bound * max(1.0, truth.abs().max().item()), err


def test_primitives_do_not_read_values_on_the_host():
    """On the meta device any .item()/bool(tensor) raises: the primitives never sync."""
    rows, k = 6, 10
    x = torch.empty(rows, k, device="meta")
    y = torch.empty(rows, dtype=torch.long, device="meta")
    mask = torch.empty(rows, dtype=torch.bool, device="meta")
    v = torch.empty(rows, device="meta")
    s = torch.empty(k, device="meta")
    m, se, xy, sx = fused.row_partials(x, y, s, 0.0, 2.0, target_mask=mask, chunk_elems=20)
    assert m.shape == se.shape == xy.shape == sx.shape == (rows,)
    g = fused.grad_rows(x, y, v, v, v, v, s, 0.0, 2.0, v, target_mask=mask, chunk_elems=20)
    assert g.shape == (rows, k)
    g = fused.grad_rows(x, y, v, v, v, v, None, 0.1, None, v, out=x)
    assert g is x


# --- parity through the public API ----------------------------------------------------------------

OPTIONS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.1},
    "others": {"label_smoothing": 0.2, "spread": "others"},
    "prior": {"label_smoothing": 0.3, "prior": "prior"},
    "weight-torch": {"label_smoothing": 0.2, "weight": "w"},
    "weight-target": {"label_smoothing": 0.2, "weight": "w", "weight_mode": "target"},
    "ignore": {"label_smoothing": 0.1, "ignore_index": 3},
    "ignore-out-of-range": {"label_smoothing": 0.1, "weight": "w", "ignore_index": 1000},
    "ignore-negative": {"label_smoothing": 0.1, "ignore_index": -1},
    "zloss": {"label_smoothing": 0.1, "z_loss": 1e-2, "weight": "w"},
    "softcap": {"label_smoothing": 0.1, "softcap": 4.0},
    "everything": {
        "label_smoothing": 0.25,
        "weight": "w",
        "weight_mode": "target",
        "z_loss": 3e-3,
        "softcap": 5.0,
        "ignore_index": 2,
        "prior": "prior",
    },
}
TORCH_KEYS = {"weight", "ignore_index", "label_smoothing"}


def _materialise(opts, k, dtype):
    out = dict(opts)
    gen = torch.Generator().manual_seed(1)
    if out.get("weight") == "w":
        out["weight"] = (torch.rand(k, generator=gen, dtype=torch.float64) + 0.2).to(dtype)
    if out.get("prior") == "prior":
        out["prior"] = torch.softmax(torch.randn(k, generator=gen, dtype=torch.float64), 0)
    return out


def _targets(n, k, opts, spatial=()):
    y = torch.randint(0, k, (n, *spatial))
    ii = opts.get("ignore_index")
    if ii is not None:
        y = torch.where(torch.rand(y.shape) < 0.25, torch.full_like(y, ii), y)
    return y


def _loss_grad(fn, x, y, g, **kw):
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf, y, **kw)
    (gx,) = torch.autograd.grad(out, leaf, g.to(out.dtype))
    return out.detach(), gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_index_parity(dtype, name, reduction):
    n, k = 24, 11
    opts = OPTIONS[name]
    x = (torch.randn(n, k, dtype=torch.float64) * 3).to(dtype)
    y = _targets(n, k, opts)
    if name == "ignore":
        y[0] = 3  # at least one ignored, one kept
        y[1] = 0
    g = torch.randn(n, dtype=torch.float64) if reduction == "none" else torch.tensor(1.7)
    kw = _materialise(opts, k, dtype)
    kw64 = _materialise(opts, k, torch.float64)
    # truth: the literal float64 formula for the value, float64 autograd (reference op) for the grad
    truth_l = dense_reference(x.double(), y, reduction=reduction, **kw64)
    ref_l, truth_g = _loss_grad(
        ls.cross_entropy, x.double(), y, g.double(), reduction=reduction, impl="reference", **kw64
    )
    torch.testing.assert_close(ref_l, truth_l, equal_nan=True)
    ours_l, ours_g = _loss_grad(ls.cross_entropy, x, y, g, reduction=reduction, impl="fused", **kw)
    if set(opts) <= TORCH_KEYS:
        peer_l, peer_g = _loss_grad(F.cross_entropy, x, y, g, reduction=reduction, **kw)
    else:
        peer_l, peer_g = _loss_grad(
            ls.cross_entropy, x, y, g, reduction=reduction, impl="reference", **kw
        )
    assert ours_l.dtype == dtype and ours_g.dtype == dtype
    assert_no_worse_than(ours_l, peer_l, truth_l, TOL[dtype], f"{name} loss")
    assert_no_worse_than(ours_g, peer_g, truth_g, TOL[dtype], f"{name} grad")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["smooth", "zloss", "everything"])
def test_index_parity_spatial(dtype, name):
    n, k, d = 3, 7, (4, 5)
    opts = OPTIONS[name]
    x = (torch.randn(n, k, *d, dtype=torch.float64) * 2).to(dtype)
    y = _targets(n, k, opts, d)
    g = torch.randn(n, *d, dtype=torch.float64)
    kw, kw64 = _materialise(opts, k, dtype), _materialise(opts, k, torch.float64)
    truth = _loss_grad(
        ls.cross_entropy, x.double(), y, g, reduction="none", impl="reference", **kw64
    )
    torch.testing.assert_close(truth[0], dense_reference(x.double(), y, reduction="none", **kw64))
    ours = _loss_grad(ls.cross_entropy, x, y, g, reduction="none", impl="fused", **kw)
    peer = _loss_grad(ls.cross_entropy, x, y, g, reduction="none", impl="reference", **kw)
    for i, what in enumerate(("loss", "grad")):
        assert_no_worse_than(ours[i], peer[i], truth[i], TOL[dtype], what)


def test_one_dimensional_input_and_all_ignored():
    x = torch.randn(5, dtype=torch.float64)
    y = torch.tensor(2)
    a = _loss_grad(ls.cross_entropy, x, y, torch.tensor(1.0), label_smoothing=0.1, impl="fused")
    b = _loss_grad(F.cross_entropy, x, y, torch.tensor(1.0), label_smoothing=0.1)
    torch.testing.assert_close(a, b)
    x2 = torch.randn(3, 4)
    yi = torch.full((3,), -100)
    assert torch.isnan(ls.cross_entropy(x2, yi, impl="fused")) == torch.isnan(
        F.cross_entropy(x2, yi)
    )


PROB_OPTIONS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.1},
    "weight": {"label_smoothing": 0.2, "weight": "w"},
    "weight-target": {"label_smoothing": 0.2, "weight": "w", "weight_mode": "target"},
    "everything": {
        "label_smoothing": 0.3,
        "weight": "w",
        "z_loss": 1e-2,
        "softcap": 3.0,
        "prior": "prior",
        "spread": "all",
    },
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(PROB_OPTIONS))
@pytest.mark.parametrize("spatial", [(), (3,)])
def test_prob_parity(dtype, name, spatial):
    n, k = 10, 9
    opts = PROB_OPTIONS[name]
    x = (torch.randn(n, k, *spatial, dtype=torch.float64) * 2).to(dtype)
    t = torch.softmax(torch.randn(n, k, *spatial, dtype=torch.float64), 1).to(dtype)
    g = torch.randn(n, *spatial, dtype=torch.float64)
    kw, kw64 = _materialise(opts, k, dtype), _materialise(opts, k, torch.float64)
    truth = _loss_grad(
        ls.cross_entropy, x.double(), t.double(), g, reduction="none", impl="reference", **kw64
    )
    ours = _loss_grad(ls.cross_entropy, x, t, g, reduction="none", impl="fused", **kw)
    if set(opts) <= TORCH_KEYS:
        peer = _loss_grad(F.cross_entropy, x, t, g, reduction="none", **kw)
    else:
        peer = _loss_grad(ls.cross_entropy, x, t, g, reduction="none", impl="reference", **kw)
    for i, what in enumerate(("loss", "grad")):
        assert_no_worse_than(ours[i], peer[i], truth[i], TOL[dtype], f"{name} {what}")
    for red in ("mean", "sum"):
        a = ls.cross_entropy(x, t, reduction=red, impl="fused", **kw)
        b = ls.cross_entropy(x.double(), t.double(), reduction=red, impl="reference", **kw64)
        assert_no_worse_than(
            a,
            ls.cross_entropy(x, t, reduction=red, impl="reference", **kw),
            b,
            TOL[dtype],
            f"{name} {red}",
        )


def test_prob_target_gradient():
    """Gradients also flow to probability targets (distillation), in place or not."""
    x = torch.randn(6, 5, dtype=torch.float64)
    t = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    w = torch.rand(5, dtype=torch.float64)
    g = torch.randn(6, dtype=torch.float64)
    res = {}
    for impl, inplace in (("reference", False), ("fused", False), ("fused", True)):
        xl = (x * 1).requires_grad_()
        xi = xl * 1  # non-leaf logits, as in a model
        tl = t.clone().requires_grad_()
        out = ls.cross_entropy(
            xi,
            tl,
            w,
            label_smoothing=0.1,
            reduction="none",
            softcap=2.0,
            impl=impl,
            inplace_backward=inplace,
        )
        res[impl, inplace] = torch.autograd.grad(out, (xl, tl), g)
    for key in (("fused", False), ("fused", True)):
        torch.testing.assert_close(res[key], res["reference", False])


def test_prob_target_gradient_only_leaves_logits_alone():
    """Targets needing a gradient while the logits do not: the logits are never overwritten."""
    x = torch.randn(4, 6, dtype=torch.float64)
    keep = x.clone()
    t = torch.softmax(torch.randn(4, 6, dtype=torch.float64), 1).requires_grad_()
    out = ls.cross_entropy(x, t, label_smoothing=0.1, impl="fused", inplace_backward=True)
    (dt,) = torch.autograd.grad(out, t)
    assert torch.equal(x, keep)
    t2 = t.detach().clone().requires_grad_()
    ref = ls.cross_entropy(x, t2, label_smoothing=0.1, impl="reference")
    torch.testing.assert_close(dt, torch.autograd.grad(ref, t2)[0])


def test_stats_parity():
    x = torch.randn(12, 8)
    y = _targets(12, 8, {"ignore_index": 1})
    w = torch.rand(8) + 0.5
    kw = {"weight": w, "ignore_index": 1, "label_smoothing": 0.2, "z_loss": 1e-2, "softcap": 6.0}
    a = ls.cross_entropy_with_stats(x, y, impl="fused", **kw)
    b = ls.cross_entropy_with_stats(x, y, impl="reference", **kw)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


# --- float64 gradcheck of the hand-written backward -----------------------------------------------


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_gradcheck_index_rows(softcap):
    rows, k = 4, 6
    x = torch.randn(rows, k, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, k, (rows,))
    ct, cs, cz = (torch.rand(rows, dtype=torch.float64) for _ in range(3))
    s = torch.rand(k, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a: fused.index_rows(a, y, ct, cs, s, 0.0, cz, softcap)[0], (x,)
    )
    assert torch.autograd.gradcheck(
        lambda a: fused.index_rows(a, y, ct, cs, None, 0.07, None, softcap)[0], (x,)
    )


def test_gradcheck_prob_rows():
    rows, k = 3, 5
    x = torch.randn(rows, k, dtype=torch.float64, requires_grad=True)
    t = torch.rand(rows, k, dtype=torch.float64, requires_grad=True)
    w, b = torch.rand(k, dtype=torch.float64), torch.rand(k, dtype=torch.float64)
    rs, cz = torch.rand(rows, dtype=torch.float64), torch.rand(rows, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, c: fused.prob_rows(a, c, w, 0.8, b, 0.0, rs, cz, 1.5)[0], (x, t)
    )


def test_double_backward_gradgradcheck():
    """create_graph=True gives a differentiable gradient (unfused), for index and prob targets."""
    rows, k = 3, 5
    x = torch.randn(rows, k, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, k, (rows,))
    ct, cs, cz = (torch.rand(rows, dtype=torch.float64) for _ in range(3))
    s = torch.rand(k, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda a: fused.index_rows(a, y, ct, cs, s, 0.0, cz, 2.0)[0], (x,)
    )
    assert torch.autograd.gradgradcheck(
        lambda a: fused.index_rows(a, y, ct, cs, None, 0.1, None, None, True)[0], (x,)
    )
    t = torch.rand(rows, k, dtype=torch.float64, requires_grad=True)
    w, rs = torch.rand(k, dtype=torch.float64), torch.rand(rows, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda a, c: fused.prob_rows(a, c, w, 0.8, None, 0.05, rs, cz, 1.5)[0], (x, t)
    )


def test_opcheck_registrations():
    """Schema, fake (meta) implementations and autograd registration agree with the real ops."""
    x = torch.randn(5, 7, requires_grad=True)
    y = torch.randint(0, 7, (5,))
    ct, cs, cz = torch.rand(5), torch.rand(5), torch.rand(5)
    torch.library.opcheck(
        torch.ops.labelsmooth.fused_index_rows.default,
        (x, y, ct, cs, torch.rand(7), 0.0, cz, 2.0, False),
    )
    torch.library.opcheck(
        torch.ops.labelsmooth.fused_index_rows.default, (x, y, ct, cs, None, 0.1, None, None, False)
    )
    t = torch.rand(5, 7, requires_grad=True)
    torch.library.opcheck(
        torch.ops.labelsmooth.fused_prob_rows.default,
        (x, t, torch.rand(7), 0.9, None, 0.01, torch.rand(5), cz, None, False),
    )
    # the terms' forward ops (flsd-53 and a fractional γ) and the destination-passing backwards
    for gamma, flsd in ((None, True), (0.5, False)):
        torch.library.opcheck(
            torch.ops.labelsmooth.fused_index_terms_fwd.default,
            (x, y, ct, cs, torch.rand(7), 0.0, cz, 2.0, torch.rand(5), 0.3, 0.5, gamma, flsd,
             False),
        )
        torch.library.opcheck(
            torch.ops.labelsmooth.fused_prob_terms_fwd.default,
            (x, t, None, 0.9, None, 0.01, torch.rand(5), None, None, 0.3, 0.5, gamma, flsd, False),
        )
    xd = x.detach()
    loss, ref, lse = fused._index_fwd(xd, y, ct, cs, None, 0.1, None, None, False)
    g = torch.rand(5)
    torch.library.opcheck(
        torch.ops.labelsmooth.fused_index_bwd_out.default,
        (g, xd, y, ref, lse, ct, cs, None, 0.1, None, None, torch.empty_like(xd)),
    )
    _, ref, lse, big_q = fused._prob_fwd(xd, t.detach(), None, 0.9, None, 0.01, ct, cz, None,
                                         False)
    torch.library.opcheck(
        torch.ops.labelsmooth.fused_prob_bwd_out.default,
        (g, xd, t.detach(), ref, lse, big_q, None, 0.9, None, 0.01, ct, cz, None, True,
         torch.empty_like(xd), torch.empty_like(xd)),
    )


# --- in-place backward ----------------------------------------------------------------------------


def _model_logits(n=6, k=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(4, k, generator=gen, requires_grad=True)
    h = torch.randn(n, 4, generator=gen)
    return w, h


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_gradient_matches_and_reuses_storage(dtype):
    w, h = _model_logits()
    y = torch.randint(0, 9, (6,))
    grads = {}
    for inplace in (False, True):
        logits = (h @ w).to(dtype)
        loss = ls.cross_entropy(
            logits, y, label_smoothing=0.1, z_loss=1e-3, impl="fused", inplace_backward=inplace
        )
        (gl,) = torch.autograd.grad(loss, logits, retain_graph=False)
        if inplace:
            assert gl.data_ptr() == logits.data_ptr()  # the gradient lives in the logits' memory
        grads[inplace] = gl.clone()
    torch.testing.assert_close(grads[True], grads[False], rtol=0, atol=0)


def test_inplace_other_saved_use_raises():
    """A node that saved the logits and runs after our backward raises, never reads the gradient."""
    w, h = _model_logits()
    logits = h @ w
    other = (logits**2).sum()  # saves the logits; created first, so its backward runs after ours
    loss = ls.cross_entropy(logits, torch.randint(0, 9, (6,)), impl="fused", inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_inplace_other_saved_use_before_ours_is_correct():
    """If the other node runs first it reads the logits intact: no error, correct gradients."""
    y = torch.randint(0, 9, (6,))
    res = []
    for inplace in (False, True):
        w, h = _model_logits()
        logits = h @ w
        loss = ls.cross_entropy(logits, y, impl="fused", inplace_backward=inplace)
        other = (logits**2).sum()  # created after ours: autograd runs it first
        (loss + other).backward()
        res.append(w.grad)
    torch.testing.assert_close(res[0], res[1])


def test_inplace_reuse_through_labelsmooth_raises():
    w, h = _model_logits()
    y = torch.randint(0, 9, (6,))
    logits = h @ w
    ls.cross_entropy(logits, y, impl="fused", inplace_backward=True).backward()
    for view, target in (
        (logits, y),
        (logits.view(2, 3, 9).movedim(2, 1), y.view(2, 3)),
        (logits[0], y[0]),
    ):
        with pytest.raises(RuntimeError, match="overwritten by the gradient"):
            ls.cross_entropy(view, target, impl="fused")
    with torch.no_grad():
        logits.copy_(h @ w)  # writing fresh logits (a version bump) makes it usable again
    ls.cross_entropy(logits, y, impl="fused")


def test_inplace_second_backward_raises():
    w, h = _model_logits()
    logits = h @ w
    loss = ls.cross_entropy(logits, torch.randint(0, 9, (6,)), impl="fused", inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_non_contiguous_falls_back():
    """A non-contiguous logits view is never overwritten: the gradient goes to fresh memory."""
    base = torch.randn(9, 6, requires_grad=True)
    logits = base * 1
    keep = logits.detach().clone()
    y = torch.randint(0, 9, (6,))
    loss = ls.cross_entropy(logits.t(), y, impl="fused", inplace_backward=True)
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.equal(logits.detach(), keep)
    ref = torch.autograd.grad(F.cross_entropy(logits.t(), y), logits)[0]
    torch.testing.assert_close(g, ref)


# --- precision: confident logits (Liger #1268) ----------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("p_target", [0.99, 0.999])
def test_confident_logits_target_gradient_bf16(eps, p_target):
    n, k = 64, 1000
    x = torch.randn(n, k, dtype=torch.float64)
    y = torch.randint(0, k, (n,))
    rest = torch.logsumexp(x.scatter(1, y[:, None], -math.inf), 1)
    x.scatter_(1, y[:, None], (rest + math.log(p_target / (1 - p_target)))[:, None])
    xb = x.bfloat16()

    def target_grad(fn, dtype):
        leaf = xb.to(dtype).requires_grad_()
        fn(leaf, y, label_smoothing=eps).backward()
        return leaf.grad.double().gather(1, y[:, None])[:, 0]

    truth = target_grad(F.cross_entropy, torch.float64)
    ours = target_grad(
        lambda a, b, **kw: ls.cross_entropy(a, b, impl="fused", **kw), torch.bfloat16
    )
    peer = target_grad(F.cross_entropy, torch.bfloat16)
    rel = lambda v: ((v - truth).abs() / truth.abs()).max().item()
    assert rel(ours) <= rel(peer)
    assert rel(ours) <= 2.0**-8 * 1.01  # one bfloat16 rounding of an fp32-exact value


# --- 64-bit indexing ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernels", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_more_than_2_to_31_elements_forward(monkeypatch, kernels):
    """N·K > 2³¹ through an expanded (stride-0) bfloat16 view: no memory, every row the same."""
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", kernels)
    k = 1 << 15
    n = (1 << 16) + 3
    assert n * k > 2**31
    row = torch.randn(1, k).bfloat16() * 4
    x = row.expand(n, k)
    y = torch.full((n,), 12345)
    y[-1] = k - 1
    loss = ls.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4, reduction="none", impl="fused")
    ref = ls.cross_entropy(
        row.expand(2, k),
        y[[0, -1]],
        label_smoothing=0.1,
        z_loss=1e-4,
        reduction="none",
        impl="reference",
    )
    torch.testing.assert_close(
        loss[[0, n - 2, n - 1]], torch.stack([ref[0], ref[0], ref[1]]), rtol=0, atol=0
    )


def _mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


@pytest.mark.slow
@pytest.mark.parametrize("kernels", ["eager", "inductor"])
def test_more_than_2_to_31_elements_backward_inplace(monkeypatch, kernels):
    """Forward + in-place backward over 2³¹ + 2¹⁵ bfloat16 elements (4 GiB)."""
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", kernels)
    if _mem_available_gib() < 12:
        pytest.skip("needs ~12 GiB of free memory")
    k = 1 << 15
    n = (1 << 16) + 1
    row = torch.randn(1, k).bfloat16()
    # an activation (not a leaf): in-place backward never writes into a leaf
    x = row.requires_grad_().expand(n, k).contiguous()
    y = torch.arange(n) % k
    loss = ls.cross_entropy(
        x, y, label_smoothing=0.1, impl="fused", inplace_backward=True, reduction="sum"
    )
    (g,) = torch.autograd.grad(loss, x)
    assert g.data_ptr() == x.data_ptr()
    last = row.detach().float().requires_grad_()
    (gl,) = torch.autograd.grad(F.cross_entropy(last, y[-1:], label_smoothing=0.1), last)
    torch.testing.assert_close(g[-1].float(), gl[0], rtol=1e-2, atol=1e-4)


# --- compiled kernels and torch.compile -----------------------------------------------------------


def test_inductor_kernels_match_eager(monkeypatch):
    """The compiled stats/gradient kernels agree with the chunked eager path (compiles twice)."""
    x = torch.randn(16, 50) * 3
    y = torch.randint(0, 50, (16,))
    w = torch.rand(50) + 0.5
    g = torch.randn(16)
    kw = {
        "weight": w,
        "label_smoothing": 0.2,
        "z_loss": 1e-2,
        "ignore_index": 3,
        "reduction": "none",
    }
    y[0] = 3
    eager = _loss_grad(ls.cross_entropy, x, y, g, impl="fused", inplace_backward=True, **kw)
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "inductor")
    if ind.STATE.broken:
        pytest.skip("compiled kernels unavailable in this process")
    compiled = _loss_grad(ls.cross_entropy, x, y, g, impl="fused", inplace_backward=True, **kw)
    assert not ind.STATE.broken
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_compiler_failure_falls_back_to_eager(monkeypatch):
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "inductor")
    monkeypatch.setattr(ind, "STATE", ind.KernelState())

    def no_compiler(*a, **k):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    x = torch.randn(5, 8)
    y = torch.randint(0, 8, (5,))
    with pytest.warns(RuntimeWarning, match="chunked eager path"):
        a = _loss_grad(ls.cross_entropy, x, y, torch.tensor(1.0), label_smoothing=0.1, impl="fused")
    b = _loss_grad(F.cross_entropy, x, y, torch.tensor(1.0), label_smoothing=0.1)
    torch.testing.assert_close(a, b)
    assert ind.STATE.broken


def test_kernel_setting_is_validated(monkeypatch):
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "fast")
    with pytest.raises(ValueError, match="LABELSMOOTH_FUSED_KERNELS"):
        ind.mode()


def test_compile_fullgraph_linear_model(monkeypatch):
    """Linear → labelsmooth.cross_entropy under torch.compile(fullgraph=True), in place or not
    (every fresh gradient counts as large: the eager huge-page buffer must not be traced)."""
    monkeypatch.setattr(chunks, "HUGEPAGE_MIN_BYTES", 0)
    torch._dynamo.reset()
    lin = torch.nn.Linear(8, 13)
    h = torch.randn(10, 8)
    y = torch.randint(0, 13, (10,))

    def model(h, y, inplace: bool):
        return ls.cross_entropy(
            lin(h), y, label_smoothing=0.1, z_loss=1e-3, impl="fused", inplace_backward=inplace
        )

    compiled = torch.compile(model, fullgraph=True)
    for inplace in (False, True):
        loss_c = compiled(h, y, inplace)
        (gw_c,) = torch.autograd.grad(loss_c, lin.weight)
        loss_e = model(h, y, inplace)
        (gw_e,) = torch.autograd.grad(loss_e, lin.weight)
        torch.testing.assert_close(loss_c, loss_e)
        torch.testing.assert_close(gw_c, gw_e)


def test_compile_fullgraph_op_level():
    """The registered op itself traces without graph breaks (Linear → fused.index_rows)."""
    lin = torch.nn.Linear(8, 13)
    h = torch.randn(10, 8)
    y = torch.randint(0, 13, (10,))
    one = torch.ones(10)

    def model(h):
        loss, _lse = fused.index_rows(
            lin(h), y, 0.9 * one, one, None, 0.1 / 13, 1e-3 * one, 3.0, True
        )
        return loss.mean()

    loss_c = torch.compile(model, fullgraph=True)(h)
    (gc,) = torch.autograd.grad(loss_c, lin.weight)
    loss_e = model(h)
    (ge,) = torch.autograd.grad(loss_e, lin.weight)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(gc, ge)


# ------------------------------------------------------------------------------------------------
# In-place safety, non-finite ignored rows, saved Q, compile-failure scope, shared formulas.


def test_inplace_backward_never_overwrites_a_leaf_or_a_view_of_one():
    # A parameter (or any leaf) holds data the caller owns: the gradient goes to fresh memory.
    p = torch.nn.Parameter(torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]))
    want = p.detach().clone()
    ls.cross_entropy(p, torch.tensor([0, 2]), inplace_backward=True, impl="fused").backward()
    assert torch.equal(p.detach(), want)
    g1 = p.grad.clone()
    p.grad = None
    ls.cross_entropy(p[:1], torch.tensor([0]), inplace_backward=True, impl="fused").backward()
    assert torch.equal(p.detach(), want)
    assert torch.allclose(p.grad[0], g1[0] * 2)  # mean over one row instead of two
    # a non-leaf activation is still written in place
    h = p * 1.0
    ls.cross_entropy(h, torch.tensor([0, 2]), inplace_backward=True, impl="fused").backward()
    assert torch.equal(h.detach(), g1)


def test_consumed_check_only_refuses_the_written_region():
    x = torch.randn(4, 5, requires_grad=True)
    logits = x * 1.0
    ls.cross_entropy(logits[:2], torch.tensor([0, 1]), inplace_backward=True,
                     impl="fused").backward(retain_graph=True)
    ls.cross_entropy(logits[2:], torch.tensor([0, 1]), impl="fused")  # other rows: fine
    for view in (logits, logits[1:3], logits[:, 1:]):
        with pytest.raises(RuntimeError, match="`input`.*overwritten"):
            ls.cross_entropy(view, torch.zeros(view.shape[0], dtype=torch.long), impl="fused")
    with torch.no_grad():
        logits.copy_(x)  # a new write retires the record
    ls.cross_entropy(logits, torch.zeros(4, dtype=torch.long), impl="fused")


@pytest.mark.parametrize("kernels", ["eager", "inductor", "native"])
@pytest.mark.parametrize("bad", [-math.inf, math.inf, math.nan])
def test_ignored_rows_get_zero_gradient_whatever_their_logits(monkeypatch, kernels, bad):
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", kernels)
    x = torch.tensor([[1.0, 2.0, 0.5], [bad, bad, bad], [0.0, bad, 1.0]], requires_grad=True)
    y = torch.tensor([0, -100, -100])
    for opts in (dict(), dict(label_smoothing=0.1, z_loss=1e-2), dict(softcap=5.0)):
        x.grad = None
        loss = ls.cross_entropy(x, y, impl="fused", **opts)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.equal(x.grad[1:], torch.zeros(2, 3)), (opts, x.grad)
        assert torch.isfinite(x.grad[0]).all()


def test_grad_rows_zero_rows_when_coefficients_vanish():
    x = torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]])
    lse = torch.tensor([math.log(1 + math.e), -math.inf])
    one, zero = torch.ones(2), torch.zeros(2)
    coef = torch.tensor([1.0, 0.0])
    g = chunks.grad_rows(x, torch.tensor([1, 0]), lse, coef, coef, zero, None, 0.0, None, one,
                         chunk_elems=2)
    assert torch.equal(g[1], torch.zeros(2))
    assert torch.allclose(g[0], torch.softmax(x[0], 0) - torch.tensor([0.0, 1.0]))


def test_prob_backward_uses_the_saved_target_mass(monkeypatch):
    x = torch.randn(3, 4, requires_grad=True)
    t = torch.softmax(torch.randn(3, 4), 1)
    w = torch.rand(4) + 0.5
    (want,) = torch.autograd.grad(
        ls.cross_entropy(x, t, label_smoothing=0.2, weight=w, z_loss=0.1, impl="reference"), x)
    loss = ls.cross_entropy(x, t, label_smoothing=0.2, weight=w, z_loss=0.1, impl="fused")
    calls = []
    orig = fused._prob_sums
    monkeypatch.setattr(fused, "_prob_sums", lambda *a, **k: calls.append(1) or orig(*a, **k))
    loss.backward()
    assert calls == []  # Q comes from the forward: the backward does not re-read t for it
    assert torch.allclose(x.grad, want, atol=1e-6)


def test_compiled_kernel_failures_switch_off_only_for_compile_errors(monkeypatch):
    monkeypatch.setattr(ind, "STATE", ind.KernelState())

    def boom(exc):
        def f(*args):
            raise exc
        return f

    monkeypatch.setattr(ind, "_compiled", lambda name, fn: boom(MemoryError("oom")))
    with pytest.raises(MemoryError):
        ind._run("k", None)
    assert not ind.STATE.broken
    ind.STATE.worked.add("k")  # a kernel that already ran: its errors are real errors
    monkeypatch.setattr(ind, "_compiled", lambda name, fn: boom(RuntimeError("bad input")))
    with pytest.raises(RuntimeError, match="bad input"):
        ind._run("k", None)
    assert not ind.STATE.broken
    with pytest.warns(RuntimeWarning, match="unavailable"):
        assert ind._run("fresh", None) == (False, None)  # a first-call failure: fall back
    assert ind.STATE.broken


def test_merge_max_sumexp_guards_infinite_and_empty_parts():
    from labelsmooth.ops._math import merge_max_sumexp

    inf = math.inf
    m1, e1 = torch.tensor([1.0, -inf, inf, 0.0]), torch.tensor([2.0, 0.0, 1.0, 1.0])
    m2, e2 = torch.tensor([inf, 3.0, -inf, -inf]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    m, e = merge_max_sumexp(m1, e1, m2, e2)
    assert m.tolist() == [inf, 3.0, inf, 0.0]
    assert e[1] == 1.0 and e[3] == 1.0  # an all −inf or empty part adds exactly 0
    assert torch.isnan(e[[0, 2]]).all()  # a row holding +inf is NaN, as torch's log_softmax


def test_row_loss_and_grad_coef_by_hand():
    from labelsmooth.ops._math import grad_coef, row_loss

    lse, xy = torch.tensor([2.0, -math.inf]), torch.tensor([1.0, 0.0])
    ref, lse_rel = torch.tensor([1.5, 0.0]), torch.tensor([0.5, -math.inf])  # lse = ref + L
    dsx = torch.tensor([0.0, 0.0])  # Σ s(ref − x) = S·ref − Σ s·x = 2·1.5 − 3
    ct, cs, cz = torch.tensor([0.9, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0])
    # 0.9·((1.5−1) + 0.5) + 1·(0 + 2·0.5) + 0.5·2² = 3.9, i.e. 0.9·(2−1) + (2·2 − 3) + 0.5·4
    assert torch.allclose(row_loss(ref, lse_rel, xy, dsx, 2.0, ct, cs, cz)[0], torch.tensor(3.9))
    # a target term with ct = 0 is 0 at a −inf target logit (0·log 0 = 0), not NaN
    one = torch.ones(1)
    zero_t = row_loss(torch.zeros(1), torch.zeros(1), torch.tensor([-math.inf]), None, 1.0,
                      0 * one, None, None)
    assert zero_t.tolist() == [0.0]
    cp = grad_coef(lse, 2.0, ct, cs, cz)
    assert torch.allclose(cp[0], torch.tensor(4.9)) and cp[1] == 0.0  # not 0·inf = nan


# ------------------------------------------------------------------------------------------------
# The optional terms (issue 16 item 1): chunked and compiled passes, in place, compile, edges.

from labelsmooth.ops import _terms as T  # noqa: E402
from labelsmooth.ops import reference  # noqa: E402
from labelsmooth.ops._math import row_ref  # noqa: E402

TERM_SETS = {
    "cp": dict(confidence_penalty=0.7),
    "poly": dict(poly=1.5),
    "focal2": dict(focal_gamma=2.0),
    "focal-frac": dict(focal_gamma=0.5),
    "flsd": dict(focal_gamma="flsd-53"),
    "all": dict(confidence_penalty=0.3, poly=0.5, focal_gamma=1.0),
}


def _term_block_case(dtype, shares, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows, k = 11, 37
    x = (torch.randn(rows, k, generator=g, dtype=torch.float64) * 4).to(dtype)
    y = torch.randint(0, k, (rows,), generator=g)
    mask = torch.rand(rows, generator=g) > 0.3
    s = torch.rand(k, generator=g, dtype=torch.float64) * 0.01 if shares == "vector" else None
    if s is not None:
        s[4] = 0.0
    su = 0.01 if shares == "uniform" else 0.0
    return x, y, mask, s, su


@pytest.mark.parametrize("tname", list(TERM_SETS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shares", ["uniform", "vector"])
@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("blocks", ["rows", "columns"])
def test_term_primitives_match_the_reference_in_chunks(monkeypatch, tname, dtype, shares,
                                                       softcap, blocks):
    """row_partials(terms) / focal_partials / grad_rows(terms) over several row and column
    blocks equal the dense reference primitives in float64 (the contract's oracle)."""
    terms = T.check_terms(**TERM_SETS[tname])
    x, y, mask, s, su = _term_block_case(dtype, shares)
    if blocks == "columns":
        monkeypatch.setattr(chunks, "MAX_COLS", 8)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    tol = {"rtol": 1e-12, "atol": 1e-12} if acc == torch.float64 else {"rtol": 2e-6, "atol": 2e-5}
    got = fused.row_partials(x, y, s, su, softcap, target_mask=mask, chunk_elems=24, terms=terms)
    want = reference.row_partials(x.double(), y, s, su, softcap, mask, terms=terms)
    assert len(got) == 6 and got[1].dtype == torch.float64 and got[4].dtype == acc
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, **tol)
    ref = row_ref(want[0])
    lse = torch.log(want[1])
    low = T.flsd_rows(terms, ref, lse, want[2])
    if terms.focal:
        fs = fused.focal_partials(x, lse.to(acc), terms.focal_gamma, s, su, softcap,
                                  ref=ref.to(acc), low=low, chunk_elems=24)
        fs_ref = reference.focal_partials(x.double(), lse, terms.focal_gamma, s, su, softcap,
                                          ref=ref, low=low)
        for a, b in zip(fs, fs_ref):
            torch.testing.assert_close(a.double(), b, **tol)
    # stage two with coefficients of both signs, in place and fresh
    gen = torch.Generator().manual_seed(5)
    ct, cs, w, gr = (torch.rand(x.shape[0], generator=gen, dtype=torch.float64) for _ in range(4))
    gr = gr - 0.5
    coefs = T.TermCoefs(cps=-0.5 * cs if s is not None else None,
                        cpx=w if terms.wants_sex else None,
                        cpt=-0.5 * ct if terms.poly else None, cpd=ct - 0.3,
                        gamma=terms.focal_gamma, low=low)
    cp = ct + 0.7
    want_g = reference.grad_rows(x.double(), y, lse, cp, ct, cs, s, su, softcap, gr, mask, ref=ref,
                                 terms=coefs)
    cast = lambda v: None if v is None or v.dtype == torch.bool else v.to(acc)  # noqa: E731
    coefs_a = T.TermCoefs(cast(coefs.cps), cast(coefs.cpx), cast(coefs.cpt), cast(coefs.cpd),
                          coefs.gamma, coefs.low)
    for inplace in (False, True):
        xx = x.clone()
        got_g = fused.grad_rows(xx, y, lse.to(acc), cp.to(acc), ct.to(acc), cs.to(acc), s, su,
                                softcap, gr.to(acc), target_mask=mask, out=xx if inplace else None,
                                chunk_elems=24, ref=ref.to(acc), terms=coefs_a)
        assert got_g.dtype == dtype and (got_g.data_ptr() == xx.data_ptr()) == inplace
        bound = {torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
        err = (got_g.double() - want_g).abs().max().item()
        assert err <= bound * max(1.0, want_g.abs().max().item()), err


def test_term_primitives_do_not_read_values_on_the_host():
    rows, k = 6, 10
    x = torch.empty(rows, k, device="meta")
    y = torch.empty(rows, dtype=torch.long, device="meta")
    mask = torch.empty(rows, dtype=torch.bool, device="meta")
    v = torch.empty(rows, device="meta")
    s = torch.empty(k, device="meta")
    terms = T.check_terms(0.1, 0.2, "flsd-53")
    out = fused.row_partials(x, y, s, 0.0, 2.0, target_mask=mask, chunk_elems=20, terms=terms)
    assert len(out) == 6 and all(t.shape == (rows,) for t in out)
    fs, a_s = fused.focal_partials(x, v, "flsd-53", s, 0.0, 2.0, ref=v, low=mask, chunk_elems=20)
    assert fs.shape == a_s.shape == (rows,)
    coefs = T.TermCoefs(v, v, v, v, "flsd-53", mask)
    g = fused.grad_rows(x, y, v, v, v, v, s, 0.0, 2.0, v, target_mask=mask, chunk_elems=20,
                        ref=v, terms=coefs)
    assert g.shape == (rows, k)


def _terms_loss_grad(x, y, g, **kw):
    leaf = x.detach().clone().requires_grad_()
    act = leaf * 1.0  # an activation: in-place backward may write it
    loss = ls.cross_entropy(act, y, impl="fused", reduction="none", **kw)
    (gx,) = torch.autograd.grad(loss, act, g)
    return torch.cat([loss.detach().flatten(), gx.flatten()])


@pytest.mark.parametrize("tname", ["all", "flsd",
                                   pytest.param("prior-frac", marks=pytest.mark.slow)])
def test_inductor_term_kernels_match_eager(monkeypatch, tname):
    """The compiled stats(+focal)/gradient kernels with terms agree with the chunked path (the
    compiled ones take one exponential per element where it cannot show: see focal_elems)."""
    x = torch.randn(16, 50) * 3
    y = torch.randint(0, 50, (16,))
    y[0] = 3
    g = torch.randn(16)
    if tname == "prior-frac":  # share vector with a zero share, fractional γ, every term
        prior = torch.rand(50) + 0.1
        prior[7] = 0.0
        terms = dict(prior=prior / prior.sum(), confidence_penalty=0.3, poly=0.5, focal_gamma=0.5)
    else:
        terms = TERM_SETS[tname]
    kw = dict(weight=torch.rand(50) + 0.5, label_smoothing=0.2, z_loss=1e-2, ignore_index=3,
              inplace_backward=True, **terms)
    eager = _terms_loss_grad(x, y, g, **kw)
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "inductor")
    if ind.STATE.broken:
        pytest.skip("compiled kernels unavailable in this process")
    compiled = _terms_loss_grad(x, y, g, **kw)
    assert not ind.STATE.broken
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernels", ["eager", pytest.param("inductor", marks=pytest.mark.slow),
                                     "native"])
@pytest.mark.parametrize("tname", list(TERM_SETS))
@pytest.mark.parametrize("bad", [-math.inf, math.inf, math.nan])
def test_terms_ignored_rows_get_exactly_zero_gradient(monkeypatch, kernels, tname, bad):
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", kernels)
    x = torch.tensor([[1.0, 2.0, 0.5], [bad, bad, bad], [0.0, bad, 1.0]], requires_grad=True)
    y = torch.tensor([0, -100, -100])
    for opts in (dict(label_smoothing=0.1, z_loss=1e-2), dict(softcap=5.0)):
        x.grad = None
        loss = ls.cross_entropy(x, y, impl="fused", **opts, **TERM_SETS[tname])
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.equal(x.grad[1:], torch.zeros(2, 3))


@pytest.mark.parametrize("tname", list(TERM_SETS))
def test_terms_inplace_backward_writes_the_logits(tname):
    x = torch.randn(6, 9, dtype=torch.float64)
    y = torch.randint(0, 9, (6,))
    kw = dict(label_smoothing=0.1, **TERM_SETS[tname])
    want = _loss_grad(ls.cross_entropy, x, y, torch.tensor(1.0), impl="reference", **kw)
    h = x.clone().requires_grad_()
    act = h * 1.0
    loss = ls.cross_entropy(act, y, impl="fused", inplace_backward=True, **kw)
    (g,) = torch.autograd.grad(loss, act)
    assert g.data_ptr() == act.data_ptr()
    torch.testing.assert_close((loss.detach(), g), want)
    with pytest.raises(RuntimeError, match="overwritten"):
        ls.cross_entropy(act, y, impl="fused", **kw)


@pytest.mark.parametrize("tname", ["all", "flsd"])
def test_terms_probability_targets_inplace_and_target_gradient(tname):
    x = torch.randn(5, 7, dtype=torch.float64)
    t = torch.rand(5, 7, dtype=torch.float64).softmax(1)
    kw = dict(label_smoothing=0.1, **TERM_SETS[tname])
    leaf, tl = x.clone().requires_grad_(), t.clone().requires_grad_()
    ref = ls.cross_entropy(leaf, tl, impl="reference", **kw)
    gx_ref, gt_ref = torch.autograd.grad(ref, (leaf, tl))
    h = x.clone().requires_grad_()
    act, tf = h * 1.0, t.clone().requires_grad_()
    loss = ls.cross_entropy(act, tf, impl="fused", inplace_backward=True, **kw)
    gx, gt = torch.autograd.grad(loss, (act, tf))
    assert gx.data_ptr() == act.data_ptr()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gt, gt_ref)


def test_compile_fullgraph_with_terms(monkeypatch):
    """Linear → cross_entropy with every term under torch.compile(fullgraph=True); every fresh
    gradient counts as large (the eager huge-page buffer must not be traced)."""
    monkeypatch.setattr(chunks, "HUGEPAGE_MIN_BYTES", 0)
    torch._dynamo.reset()
    lin = torch.nn.Linear(8, 13)
    h = torch.randn(10, 8)
    y = torch.randint(0, 13, (10,))
    t = torch.rand(10, 13).softmax(1)

    def model(h, target, inplace: bool):
        return ls.cross_entropy(lin(h), target, label_smoothing=0.1, z_loss=1e-3, impl="fused",
                                inplace_backward=inplace, confidence_penalty=0.2, poly=0.5,
                                focal_gamma="flsd-53")

    compiled = torch.compile(model, fullgraph=True)
    for target in (y, t):
        for inplace in (False, True):
            loss_c = compiled(h, target, inplace)
            (gw_c,) = torch.autograd.grad(loss_c, lin.weight)
            loss_e = model(h, target, inplace)
            (gw_e,) = torch.autograd.grad(loss_e, lin.weight)
            torch.testing.assert_close(loss_c, loss_e)
            torch.testing.assert_close(gw_c, gw_e)


def test_focal_integer_gamma_uses_no_pow(monkeypatch):
    """Integer γ and FLSD-53 raise 1 − p by multiplication (torch.pow is never called)."""
    calls = []
    real = torch.pow
    monkeypatch.setattr(torch, "pow", lambda *a, **k: calls.append(a) or real(*a, **k))
    u = torch.tensor([0.5, 0.25, 0.0])
    for gamma in (1.0, 2.0, 3.0, 5.0, 7.0):
        torch.testing.assert_close(T.focal_pow(u, gamma), real(u, gamma))
    torch.testing.assert_close(T.focal_pow(u, "flsd-53", torch.tensor([True, False, True])),
                               torch.stack([u[0] ** 5, u[1] ** 3, u[2] ** 5]))
    x = torch.randn(4, 6)
    ls.cross_entropy(x, torch.tensor([0, 1, 2, 3]), impl="fused", focal_gamma=2.0,
                     label_smoothing=0.1)
    assert calls == []
    T.focal_pow(u, 0.5)
    assert len(calls) == 1


@pytest.mark.parametrize("kernels", ["eager", "inductor", "native"])
@pytest.mark.parametrize("kw", [dict(focal_gamma=2.0), dict(focal_gamma="flsd-53", poly=1.0),
                                dict(focal_gamma=1.0, confidence_penalty=0.5)], ids=str)
def test_terms_confident_rows_with_smoothing_compiled(monkeypatch, kernels, kw):
    """p_y → 1 with smoothing (the focal sums run; the compiled kernels take p = 1 − u in the
    statistics kernel and u = 1 − p in the gradient for integer γ): loss and gradient still
    match float64 truth per element, relative (focal_elems' precision argument)."""
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", kernels)
    if kernels == "inductor" and ind.STATE.broken:
        pytest.skip("compiled kernels unavailable in this process")
    x = torch.zeros(4, 12)
    x[torch.arange(4), torch.tensor([2, 5, 7, 0])] = torch.tensor([20.0, 16.0, 3.0, 25.0])
    x[1] += 1e4  # and a large offset
    y = torch.tensor([2, 5, 1, 0])  # row 2: the confident class is not the target
    opts = dict(label_smoothing=0.1, reduction="sum", **kw)
    truth_x = x.double().requires_grad_()
    from tests.test_terms import dense_terms

    truth = dense_terms(truth_x, y, **opts)
    (truth_g,) = torch.autograd.grad(truth, truth_x)
    leaf = x.clone().requires_grad_()
    loss = ls.cross_entropy(leaf, y, impl="fused", **opts)
    loss.backward()
    assert not ind.STATE.broken
    torch.testing.assert_close(loss.double(), truth, rtol=2e-6, atol=0)
    torch.testing.assert_close(leaf.grad.double(), truth_g, rtol=2e-4, atol=1e-12)


# --- focal sums from power sums (the compiled statistics pass, integer γ ≤ FOCAL_MOMENTS_MAX) ---


def _focal_dense(z, w, gamma, low=None):
    """(Σ w fg, Σ w a) per row in float64 straight from focal_elems on the exact lse."""
    lse = torch.logsumexp(z, 1, keepdim=True)
    lw = None if low is None else low[:, None]
    _, fg, a = T.focal_elems(z, lse, gamma, lw)
    fg = torch.where(w == 0, torch.zeros_like(fg), w * fg)
    a = torch.where(w == 0, torch.zeros_like(a), w * a)
    return fg.sum(1), a.sum(1)


def _moment_sums(z, w, order):
    """The kernel's sums in float64: non-tie sum, tie count/weight, E_0…E_k, Z_0…Z_k."""
    tie = z == 0
    e = torch.where(tie, torch.zeros_like(z), z.exp())
    zc = torch.where(e > 0, z, torch.zeros_like(z))
    nt = ~tie
    E = [torch.where(nt & (w != 0), w, torch.zeros_like(w)).sum(1)]
    Z = [torch.where(nt & (w != 0), w * z, torch.zeros_like(z)).sum(1)]
    for k in range(1, order + 1):
        E.append((w * e ** k).sum(1))
        Z.append((w * e ** k * zc).sum(1))
    return e.sum(1), tie.double().sum(1), torch.where(tie, w, torch.zeros_like(w)).sum(1), E, Z


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0, 4.0, 5.0, "flsd-53"])
def test_focal_from_moments_is_the_focal_sum(gamma):
    """In float64 the power-sum form equals Σ w fg and Σ w a of focal_elems: rows with ties at the
    max, a runner-up sharing the mass, a confident row, a −inf column with a zero weight, and a
    weight vector with zeros."""
    torch.manual_seed(0)
    z = torch.randn(6, 7, dtype=torch.float64) * 2
    z[0, :3] = 1.5  # three-way tie at the max
    z[1, 1] = z[1, 0] + 1e-3  # runner-up with p ≈ ½
    z[2, 4] = 40.0  # confident
    z[3, 2] = -math.inf
    z = z - z.amax(1, keepdim=True)
    w = torch.rand(6, 7, dtype=torch.float64) + 0.1
    w[3, 2] = 0.0
    w[5, ::2] = 0.0
    s1, t, st, E, Z = _moment_sums(z, w, 5)
    low = torch.tensor([True, False, True, False, True, False])
    F, A = T.focal_from_moments(gamma, low, s1, t, st, E, Z)
    Fd, Ad = _focal_dense(z, w, gamma, low)
    torch.testing.assert_close(F, Fd, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(A, Ad, rtol=1e-12, atol=1e-14)


def _compiled_with_focal_spy(monkeypatch) -> list:
    """Force the compiled kernels (skip where they are unavailable) and record every call of the
    separate focal pass (``_fused_inductor.focal``) into the returned list."""
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "inductor")
    if ind.STATE.broken:
        pytest.skip("compiled kernels unavailable in this process")
    called = []
    real_focal = ind.focal
    monkeypatch.setattr(ind, "focal", lambda *a: called.append(1) or real_focal(*a))
    return called


def _focal_rows_truth(x, y, eps, shares, gamma):
    """Per-row smoothed focal loss in float64 with the log-softmax taken as z − log1p(Σ_{c≠max}
    e^z): exact for confident rows too, where z − logsumexp loses the tiny 1 − p of the max class
    to float64's rounding of 1 + 1e-14 (a relative error of ~1% in a 1e-28 loss)."""
    z = x - x.amax(1, keepdim=True)
    top = F.one_hot(z.argmax(1), z.shape[1]).bool()
    L = torch.log1p(torch.where(top, torch.zeros_like(z), z.exp()).sum(1, keepdim=True))
    logp = z - L
    u = -torch.expm1(logp)
    q = (1 - eps) * F.one_hot(y, z.shape[1]).double() + eps * shares[None, :]
    return (q * T.focal_pow(u, gamma) * -logp).sum(1)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("k", [2, 3, 21, 1000])
@pytest.mark.parametrize("prior", [False, True])
def test_compiled_focal_moments_precision(monkeypatch, gamma, k, prior):
    """float32 through the compiled statistics pass (power sums): per-row loss and gradient
    against float64 truth, on the rows that condition the power sums worst (a runner-up with
    p ≈ ½, few classes), confident rows and large offsets. Measured worst relative error of the
    row sums ~4e-7 (γ = 3, K = 2); the bound is 3^γ·2^-24 times 8. Absolute 1e-15: a confident
    row's loss (down to 1e-56 here) is taken relative to the shared float64 ``sumexp`` = 1 + 1e-14,
    whose rounding (2^-53) limits every engine's target term, not the power sums."""
    called = _compiled_with_focal_spy(monkeypatch)
    torch.manual_seed(k)
    rows = 64
    x = torch.randn(rows, k) * 3
    x[: rows // 2, 1 % k] = x[: rows // 2, 0] - torch.rand(rows // 2) * 0.3  # runner-up
    x[rows // 2: rows // 2 + 8, 0] = 30.0  # confident
    x[-8:] += 1e4  # large offset
    y = torch.randint(0, k, (rows,))
    shares = torch.full((k,), 1.0 / k, dtype=torch.float64)
    opts = dict(label_smoothing=0.2, reduction="none", focal_gamma=gamma)
    if prior:
        pr = torch.rand(k) + 0.1
        pr[-1] = 0.0
        opts["prior"] = pr / pr.sum()
        shares = opts["prior"].double()
    truth_x = x.double().requires_grad_()
    truth = _focal_rows_truth(truth_x, y, 0.2, shares, gamma)
    (truth_g,) = torch.autograd.grad(truth.sum(), truth_x)
    leaf = x.clone().requires_grad_()
    loss = ls.cross_entropy(leaf, y, impl="fused", **opts)
    loss.sum().backward()
    assert not ind.STATE.broken
    assert called == []  # the power sums, not the focal pass
    bound = 3.0 ** gamma * 2.0 ** -24 * 8
    torch.testing.assert_close(loss.double(), truth, rtol=bound, atol=1e-15)
    torch.testing.assert_close(leaf.grad.double(), truth_g, rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("gamma", [0.5, 5.0, "flsd-53"])
def test_compiled_focal_other_gamma_takes_the_focal_pass(monkeypatch, gamma):
    """Non-integer γ, γ above FOCAL_MOMENTS_MAX and FLSD-53 run the focal kernel after the lse;
    same numbers as the chunked path."""
    x = torch.randn(16, 50) * 3
    y = torch.randint(0, 50, (16,))
    opts = dict(label_smoothing=0.1, reduction="none", focal_gamma=gamma)
    eager = ls.cross_entropy(x, y, impl="fused", **opts)
    called = _compiled_with_focal_spy(monkeypatch)
    compiled = ls.cross_entropy(x, y, impl="fused", **opts)
    assert called == [1]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
