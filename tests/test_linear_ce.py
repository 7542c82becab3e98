"""Fused linear + label-smoothed cross-entropy: parity with the unfused path, chunking, gradients."""

from __future__ import annotations

import gc
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TERMS, TOL, assert_no_worse_than, dense_reference

import labelsmooth as ls
from labelsmooth.linear import LinearCrossEntropyLoss, _linear_cross_entropy, linear_cross_entropy
from labelsmooth.ops import linear_ce

N, H, V = 37, 8, 50  # 37 tokens: not a multiple of any chunk size used below


def _inputs(dtype=torch.float64, n=N, h=H, v=V, ignore_every=5, scale=0.5):
    g = torch.Generator().manual_seed(1234)
    hid = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(v, h, generator=g, dtype=torch.float64) * scale
    b = torch.randn(v, generator=g, dtype=torch.float64) * 0.1
    y = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        y[::ignore_every] = -100
    cw = torch.rand(v, generator=g, dtype=torch.float64) + 0.2
    prior = torch.rand(v, generator=g, dtype=torch.float64)
    prior = prior / prior.sum()
    return hid.to(dtype), w.to(dtype), b.to(dtype), y, cw.to(dtype), prior.to(dtype)


def _loss_and_grads(fn, hid, w, b, grad_out_seed=7):
    """(loss, dh, dW, db) for a random upstream gradient (never exactly 1)."""
    leaves = [t.detach().clone().requires_grad_() for t in (hid, w, b)]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(grad_out_seed)
    go = (torch.rand(out.shape, generator=g, dtype=torch.float64) + 0.5).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, go)
    return (out.detach(), *grads)


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "class_weight": True},
    {"label_smoothing": 0.2, "class_weight": True, "weight_mode": "target"},
    {"label_smoothing": 0.3, "spread": "others"},
    {"label_smoothing": 0.25, "prior": True},
    {"label_smoothing": 0.1, "prior": True, "class_weight": True},
    {"label_smoothing": 0.1, "z_loss": 1e-2},
    {"label_smoothing": 0.1, "softcap": 2.0, "z_loss": 1e-3, "class_weight": True},
    {"label_smoothing": 1.0},
]
CHUNKING = [
    {"chunk_size": 8},                            # tokens only; 37 = 4·8 + 5
    {"chunk_size": 6, "memory_budget": 6 * 16 * 8},  # 16-wide vocabulary blocks: 50 = 3·16 + 2
    {"impl": "reference", "chunk_size": 10},         # the op contract path
    {"chunk_size": 8, "grad_in_forward": False},     # always recompute in backward
]


# Every option × reduction, each with one chunking (rotated), and every chunking for the richest
# option: the full cross product would add nothing but time.
CASES = [(o, r, CHUNKING[(i * 3 + j) % len(CHUNKING)])
         for i, o in enumerate(OPTIONS) for j, r in enumerate(("mean", "sum", "none"))]
CASES += [(OPTIONS[8], r, c) for r in ("mean", "none") for c in CHUNKING]


def _case_id(case):
    o, r, c = case
    return "-".join([*(o or ["plain"]), r, *(f"{k}{v}" for k, v in c.items())])


@pytest.mark.parametrize("opt, reduction, chunking", CASES, ids=[_case_id(c) for c in CASES])
def test_parity_float64_every_option(opt, reduction, chunking):
    hid, w, b, y, cw, prior = _inputs()
    kw = dict(opt, reduction=reduction)
    cwv = cw if kw.pop("class_weight", False) else None
    kw["prior"] = prior if kw.pop("prior", False) else None

    def unfused(h_, w_, b_):
        return ls.cross_entropy(h_ @ w_.T + b_, y, cwv, **kw)

    def fused(h_, w_, b_):
        return _linear_cross_entropy(h_, w_, y, b_, class_weight=cwv, **kw, **chunking)

    ref = _loss_and_grads(unfused, hid, w, b)
    ours = _loss_and_grads(fused, hid, w, b)
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12, msg=what)
    # The independent dense oracle agrees on the value (its smoothed targets are built in float32).
    dense = dense_reference(hid @ w.T + b, y, cwv, **kw)
    torch.testing.assert_close(ours[0], dense, rtol=1e-6, atol=1e-7)


def test_hand_computed_value():
    # Two classes, one token: logits x = W h = (1, 0); ε = 0.2 puts 0.9 on class 0, 0.1 on class 1.
    hid = torch.tensor([[1.0, 2.0]])
    w = torch.tensor([[1.0, 0.0], [-2.0, 1.0]])
    lse = math.log(math.e + 1.0)
    expected = 0.9 * (lse - 1.0) + 0.1 * (lse - 0.0)
    out = linear_cross_entropy(hid, w, torch.tensor([0]), label_smoothing=0.2)
    assert abs(out.item() - expected) < 1e-6
    # ∂ℓ/∂x = p − q, so ∂ℓ/∂b = p − q and ∂ℓ/∂h = Wᵀ(p − q).
    b = torch.zeros(2, requires_grad=True)
    linear_cross_entropy(hid, w, torch.tensor([0]), b, label_smoothing=0.2).backward()
    p0 = math.e / (math.e + 1.0)
    assert torch.allclose(b.grad, torch.tensor([p0 - 0.9, (1 - p0) - 0.1]), atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_torch_float32_with_weights_and_ignore(reduction):
    hid, w, b, y, cw, _ = _inputs(torch.float32, n=45, v=70)
    truth_in = [t.double() for t in (hid, w, b)]

    def torch_fn(h_, w_, b_):
        return F.cross_entropy(F.linear(h_, w_, b_), y, cw.to(h_.dtype), reduction=reduction,
                               label_smoothing=0.1)

    truth = _loss_and_grads(torch_fn, *truth_in)
    peer = _loss_and_grads(torch_fn, hid, w, b)
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(
        h_, w_, y, b_, class_weight=cw, reduction=reduction, label_smoothing=0.1, chunk_size=16),
        hid, w, b)
    for what, o, p, t in zip(("loss", "dh", "dW", "db"), ours, peer, truth):
        assert o.dtype == torch.float32
        assert_no_worse_than(o, p, t, TOL[torch.float32], what)


@pytest.mark.parametrize("chunking", [{"chunk_size": 4}, {"chunk_size": 16, "memory_budget": 16 * 128 * 2}])
def test_bfloat16_no_worse_than_torch(chunking):
    # 96 tokens in chunks of 4: the weight gradient sums 24 chunk products, in float32.
    hid, w, b, y, _, _ = _inputs(torch.bfloat16, n=96, h=32, v=300, ignore_every=7, scale=0.3)
    truth_in = [t.double() for t in (hid, w, b)]

    def torch_fn(h_, w_, b_):
        return F.cross_entropy(F.linear(h_, w_, b_), y, label_smoothing=0.1)

    truth = _loss_and_grads(torch_fn, *truth_in)
    peer = _loss_and_grads(torch_fn, hid, w, b)
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(
        h_, w_, y, b_, label_smoothing=0.1, **chunking), hid, w, b)
    for what, o, p, t in zip(("loss", "dh", "dW", "db"), ours, peer, truth):
        assert o.dtype == torch.bfloat16
        assert_no_worse_than(o, p, t, TOL[torch.bfloat16], what)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_every_token_ignored(reduction):
    hid, w, b, _, cw, _ = _inputs(torch.float32)
    y = torch.full((N,), -100)
    for cwv in (None, cw):
        def torch_fn(h_, w_, b_, cwv=cwv):
            return F.cross_entropy(F.linear(h_, w_, b_), y, cwv, reduction=reduction,
                                   label_smoothing=0.1)

        def ours_fn(h_, w_, b_, cwv=cwv):
            return linear_cross_entropy(h_, w_, y, b_, class_weight=cwv, reduction=reduction,
                                        label_smoothing=0.1, chunk_size=8)

        peer = _loss_and_grads(torch_fn, hid, w, b)
        ours = _loss_and_grads(ours_fn, hid, w, b)
        if reduction == "mean":
            assert ours[0].isnan() and peer[0].isnan()
        else:
            assert torch.equal(ours[0], torch.zeros_like(ours[0]))
        for g, pg in zip(ours[1:], peer[1:]):
            assert torch.equal(g, torch.zeros_like(g)) and torch.equal(pg, torch.zeros_like(pg))


def test_leading_dimensions_like_torch():
    hid, w, b, y, _, _ = _inputs(torch.float64, n=24)
    h3, y3 = hid.reshape(2, 3, 4, H), y.reshape(2, 3, 4)
    out = linear_cross_entropy(h3, w, y3, b, reduction="none", label_smoothing=0.1, chunk_size=5)
    expected = F.cross_entropy(F.linear(h3, w, b).movedim(-1, 1), y3, reduction="none",
                               label_smoothing=0.1)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out, expected)
    # A single token: hidden (H,), target 0-d.
    one = linear_cross_entropy(hid[1], w, y[1], b, label_smoothing=0.1)
    torch.testing.assert_close(one, F.cross_entropy(F.linear(hid[1], w, b), y[1], label_smoothing=0.1))


def test_non_contiguous_inputs():
    hid, w, b, y, _, _ = _inputs(torch.float64)
    hid_t, w_t = hid.t().contiguous().t(), w.t().contiguous().t()  # same values, column-major
    assert not hid_t.is_contiguous() and not w_t.is_contiguous()
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(h_, w_, y, b_, label_smoothing=0.1,
                                                                   chunk_size=8), hid_t, w_t, b)
    ref = _loss_and_grads(lambda h_, w_, b_: F.cross_entropy(F.linear(h_, w_, b_), y,
                                                             label_smoothing=0.1), hid, w, b)
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12, msg=what)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("chunking", [{"chunk_size": 3}, {"chunk_size": 2, "memory_budget": 2 * 4 * 8},
                                      {"chunk_size": 3, "grad_in_forward": False}])
def test_gradcheck_float64(reduction, chunking):
    hid, w, b, y, cw, _ = _inputs(torch.float64, n=7, h=3, v=9, ignore_every=3)
    leaves = [t.clone().requires_grad_() for t in (hid, w, b)]

    def fn(h_, w_, b_):
        return _linear_cross_entropy(h_, w_, y, b_, class_weight=cw, reduction=reduction,
                                     label_smoothing=0.2, z_loss=0.05, softcap=3.0, **chunking)

    assert torch.autograd.gradcheck(fn, leaves)


def test_chunks_never_exceed_the_budget(monkeypatch):
    seen = []
    real = linear_ce.logits

    def spy(hc, w, b, out):
        seen.append(out.numel())
        return real(hc, w, b, out)

    monkeypatch.setattr(linear_ce, "logits", spy)
    hid, w, b, y, _, _ = _inputs(torch.float32, n=100, v=300)
    budget = 4096 * 4  # 4096 float32 logits: 64 rows × 64 columns of 300
    chunks = linear_ce.plan_chunks(100, 300, torch.float32, memory_budget=budget)
    assert chunks.rows == linear_ce.MIN_ROWS and chunks.cols == 64 and chunks.chunk_bytes <= budget
    hl, wl, bl = (t.clone().requires_grad_() for t in (hid, w, b))
    out = linear_cross_entropy(hl, wl, y, bl, label_smoothing=0.1, memory_budget=budget)
    out.backward()
    assert seen and max(seen) <= budget // 4
    ref = _loss_and_grads(lambda h_, w_, b_: F.cross_entropy(F.linear(h_, w_, b_), y,
                                                             label_smoothing=0.1), hid, w, b)
    torch.testing.assert_close(out.detach(), ref[0])


def test_plan_chunks_arithmetic():
    # Full rows fit: rows = budget // (V · bytes), rounded down to a multiple of 8.
    p = linear_ce.plan_chunks(4096, 32000, torch.float32, memory_budget=64 * 2**20)
    assert (p.rows, p.cols) == (520, 32000) and p.chunk_bytes <= 64 * 2**20
    p = linear_ce.plan_chunks(8192, 128256, torch.bfloat16, "cuda")
    assert (p.rows, p.cols) == (520, 128256) and p.chunk_bytes <= linear_ce.DEFAULT_MEMORY_BUDGET_CUDA
    # Fewer tokens than a chunk: one chunk.
    assert linear_ce.plan_chunks(10, 100, torch.float32).rows == 10


def test_second_backward_recomputes():
    hid, w, b, y, _, _ = _inputs(torch.float64)
    leaves = [t.clone().requires_grad_() for t in (hid, w, b)]
    out = linear_cross_entropy(*leaves[:2], y, leaves[2], label_smoothing=0.1, chunk_size=8)
    first = torch.autograd.grad(out, leaves, retain_graph=True)
    second = torch.autograd.grad(out, leaves, torch.tensor(2.0, dtype=torch.float64))
    for g1, g2 in zip(first, second):
        torch.testing.assert_close(g2, 2 * g1)


def test_no_grad_and_partial_requires_grad():
    hid, w, b, y, _, _ = _inputs(torch.float64)
    full = ls.cross_entropy(hid @ w.T + b, y, label_smoothing=0.1)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hid, w, y, b, label_smoothing=0.1), full)
    wl = w.clone().requires_grad_()  # only the weight is trained (frozen trunk, no bias grad)
    out = linear_cross_entropy(hid, wl, y, b, label_smoothing=0.1, chunk_size=8)
    out.backward()
    wr = w.clone().requires_grad_()
    ls.cross_entropy(hid @ wr.T + b, y, label_smoothing=0.1).backward()
    torch.testing.assert_close(wl.grad, wr.grad)


def test_module_matches_function():
    hid, w, b, y, cw, _ = _inputs(torch.float64)
    mod = LinearCrossEntropyLoss(cw, label_smoothing=0.1, z_loss=1e-3, chunk_size=8)
    torch.testing.assert_close(
        mod(hid, w, y, b),
        linear_cross_entropy(hid, w, y, b, class_weight=cw, label_smoothing=0.1, z_loss=1e-3))
    assert "chunk_size=8" in repr(mod)
    # class_weight is a buffer: it follows .to() (here to float32, with float32 inputs).
    mod32 = mod.to(torch.float32)
    assert mod32.class_weight.dtype == torch.float32
    torch.testing.assert_close(mod32(hid.float(), w.float(), y, b.float()),
                               mod(hid, w, y, b).float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunking", [{"chunk_size": 8},
                                      {"chunk_size": 8, "memory_budget": 8 * 16 * 4},
                                      {"chunk_size": 8, "memory_budget": 8 * 16 * 4,
                                       "impl": "reference"}],
                         ids=["tokens", "vocab-blocks", "reference-vocab-blocks"])
def test_triton_engine_per_chunk(chunking):
    """impl="triton" through the two-stage contract (and the reference through the same), over
    token chunks and over vocabulary blocks of 16 columns (40 = 16 + 16 + 8)."""
    pytest.importorskip("triton")
    from labelsmooth.ops import triton_ce

    if not triton_ce.is_available(torch.device("cpu")):
        pytest.skip("Triton interpreter not enabled")
    hid, w, b, y, cw, _ = _inputs(torch.float32, n=20, v=40)
    kw = {"class_weight": cw, "label_smoothing": 0.1, "z_loss": 1e-3}
    ref = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(h_ @ w_.T + b_, y, cw, label_smoothing=0.1,
                                                              z_loss=1e-3), hid, w, b)
    chunking = {"impl": "triton", **chunking}
    chunks = linear_ce.plan_chunks(20, 40, torch.float32, chunk_size=8,
                                   memory_budget=chunking.get("memory_budget"))
    assert chunks.cols == (16 if "memory_budget" in chunking else 40)
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(h_, w_, y, b_, **chunking,
                                                                   **kw), hid, w, b)
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("bad, err, name", [
    ({"weight": torch.zeros(5, 3)}, ValueError, "weight"),
    ({"weight": torch.zeros(5, 4, dtype=torch.float64)}, ValueError, "weight"),
    ({"target": torch.zeros(3, dtype=torch.long)}, ValueError, "target"),
    ({"target": torch.zeros(2)}, TypeError, "target"),
    ({"bias": torch.zeros(4)}, ValueError, "bias"),
    ({"class_weight": torch.ones(4)}, ValueError, "class_weight"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"memory_budget": 1.5}, TypeError, "memory_budget"),
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"hidden": torch.zeros(2, 4, dtype=torch.long)}, TypeError, "hidden"),
])
def test_errors_name_the_argument(bad, err, name):
    args = {"hidden": torch.zeros(2, 4), "weight": torch.zeros(5, 4), "target": torch.zeros(2, dtype=torch.long)}
    kw = {k: bad.pop(k) for k in list(bad) if k in args}
    args.update(kw)
    with pytest.raises(err, match=f"`{name}`"):
        linear_cross_entropy(args["hidden"], args["weight"], args["target"], **bad)


def test_out_of_range_target_is_rejected_on_cpu():
    with pytest.raises(ValueError, match="`target`"):
        linear_cross_entropy(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([0, 5]))


@pytest.mark.parametrize("kw", [
    {"prior": torch.full((4,), 0.25), "spread": "others", "label_smoothing": 0.1},
    {"prior": torch.full((4,), 0.5), "label_smoothing": 0.1},            # sums to 2
    {"prior": torch.full((2, 2), 0.25), "label_smoothing": 0.1},         # not 1-D
    {"prior": torch.tensor([0.5, -0.25, 0.75]), "label_smoothing": 0.1},  # negative entry
    {"prior": torch.full((4,), 0.25), "class_weight": torch.ones(5)},     # lengths differ
])
def test_module_checks_the_prior_when_built_like_cross_entropy_loss(kw):
    """A bad prior fails where LinearCrossEntropyLoss is written, as in CrossEntropyLoss."""
    with pytest.raises(ValueError, match="`prior`"):
        LinearCrossEntropyLoss(**kw)
    ce_kw = {("weight" if k == "class_weight" else k): v for k, v in kw.items()}
    with pytest.raises(ValueError, match="`prior`"):
        ls.CrossEntropyLoss(**ce_kw)


def test_module_accepts_a_good_prior_and_skips_values_without_validation():
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    loss_fn = LinearCrossEntropyLoss(prior=prior, label_smoothing=0.1, class_weight=torch.ones(4))
    assert torch.equal(loss_fn.prior, prior)
    LinearCrossEntropyLoss(prior=torch.full((4,), 0.5), label_smoothing=0.1, validate=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weight_gradient_is_summed_in_float32(dtype):
    """dW = Σ_n (p_n − e_{y_n}) h_nᵀ summed over one-token chunks: every chunk product must reach
    the float32 accumulator unrounded, so dW is the truth rounded once (within one ulp of its
    dtype). Equal logits (W = 0) and every class equally often make the large common part (64)
    of the hidden states cancel, leaving a sum much smaller than its terms; rounding each term to
    half precision first (as before) was off by ≥ 8 ulps."""
    n, h, v = 256, 4, 8
    g = torch.Generator().manual_seed(0)
    hid = (64 + torch.randn(n, h, generator=g)).to(dtype)
    y = torch.arange(n) % v
    w = torch.zeros(v, h, dtype=dtype, requires_grad=True)
    w64 = torch.zeros(v, h, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(hid.double() @ w64.T, y, reduction="sum").backward()
    linear_cross_entropy(hid, w, y, reduction="sum", chunk_size=1).backward()
    err = (w.grad.double() - w64.grad).abs().max()
    assert err <= torch.finfo(dtype).eps * w64.grad.abs().max(), err


def test_split_vocabulary_with_a_fully_masked_block_matches_torch():
    """A vocabulary block whose logits are all −inf (masked by the bias) adds exactly nothing to
    the online (max, Σexp) merge: loss and gradients equal PyTorch's and stay finite."""
    g = torch.Generator().manual_seed(4)
    n, h, v = 70, 8, 300
    hid = torch.randn(n, h, generator=g, dtype=torch.float64)
    w = torch.randn(v, h, generator=g, dtype=torch.float64)
    b = torch.zeros(v, dtype=torch.float64)
    b[128:256] = -math.inf  # the whole second 128-column block
    y = torch.randint(0, 128, (n,), generator=g)
    budget = 64 * 128 * 8  # 64 rows × 128 float64 columns: three vocabulary blocks
    assert linear_ce.plan_chunks(n, v, torch.float64, memory_budget=budget).cols == 128
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(
        h_, w_, y, b_, memory_budget=budget), hid, w, b)
    ref = _loss_and_grads(lambda h_, w_, b_: F.cross_entropy(F.linear(h_, w_, b_), y), hid, w, b)
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
        assert torch.isfinite(o).all(), what
        torch.testing.assert_close(o, r, atol=1e-12, rtol=1e-12, msg=what)


# --- the op-contract path (Triton on CUDA) writes each chunk's gradient in place ------------------


class _BigBuffers(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every fresh ``dtype`` tensor of at least ``nbytes`` an op returns (not an alias of
    an input) and the peak number of bytes of such buffers alive at once (storage weak refs)."""

    def __init__(self, nbytes, dtype):
        super().__init__()
        self.nbytes, self.dtype, self.allocs, self.live, self.peak = nbytes, dtype, 0, [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        kwargs = kwargs or {}
        ins = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
               if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.dtype == self.dtype
                    and t.untyped_storage().nbytes() >= self.nbytes):
                st = t.untyped_storage()
                if st.data_ptr() in ins:
                    continue
                self.allocs += 1
                # Triton's interpreter keeps each launch's arguments in reference cycles
                # (closures of GridExecutor._init_args_hst); a GPU launch does not: collect them.
                gc.collect()
                self.live = [(r, n) for r, n in self.live if not r.expired()]
                self.live.append((StorageWeakRef(st), st.nbytes()))
                self.peak = max(self.peak, sum(n for _, n in self.live))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_triton_chunks_write_their_gradient_in_place_within_the_budget(dtype):
    """Each chunk's gradient is written over its logits (the two-stage contract's ``grad_rows``
    with ``out=x``), so one chunk-sized buffer serves every chunk, i.e. the budget of
    ``plan_chunks`` (bytes_per_logit = the input dtype's size). Before: the chunk was made a leaf
    with ``requires_grad_``, the in-place rule refused it and every chunk also allocated its
    gradient (2 buffers per chunk, 2× the budget alive); then one buffer per chunk."""
    pytest.importorskip("triton")
    from labelsmooth.ops import triton_ce

    if not triton_ce.is_available(torch.device("cpu")):
        pytest.skip("Triton interpreter not enabled")
    n, h, v, rows = 40, 4, 64, 8
    hid, w, b, y, _, _ = _inputs(dtype, n=n, h=h, v=v)
    chunks = linear_ce.plan_chunks(n, v, dtype, chunk_size=rows, engine="triton_ce")
    assert chunks.chunk_bytes == rows * v * hid.element_size()
    leaves = [t.clone().requires_grad_() for t in (hid, w, b)]
    # Logits-dtype buffers only: off CUDA a low-precision dW also takes documented float32
    # blocks of the gradient (no mixed-dtype GEMM there), counted in the docstring separately.
    mode = _BigBuffers(chunks.chunk_bytes, dtype)
    with mode:
        out = linear_cross_entropy(*leaves[:2], y, leaves[2], impl="triton", chunk_size=rows,
                                   label_smoothing=0.1)
    assert math.ceil(n / rows) > 1 and mode.allocs == 1, mode.allocs
    assert mode.peak <= chunks.chunk_bytes, (mode.peak, chunks.chunk_bytes)
    go = torch.rand((), generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5
    out.backward(go.to(out.dtype))  # what _loss_and_grads feeds the reference
    ref = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(h_ @ w_.T + b_, y, label_smoothing=0.1,
                                                              impl="reference"), hid, w, b)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.detach(), ref[0], **tol)
    for got, want in zip((t.grad for t in leaves), ref[1:]):
        torch.testing.assert_close(got, want.to(got.dtype), **tol)


# --- the mixed-dtype dW GEMM: probed once, never on a real call; OOM propagates -------------------


def test_mixed_addmm_is_probed_once_per_device_and_dtype(monkeypatch):
    calls = []
    real = linear_ce._probe_mixed_addmm

    def probe(device, dtype):
        calls.append((device, dtype))
        return real(device, dtype)

    monkeypatch.setattr(linear_ce, "_MIXED_ADDMM", {})
    monkeypatch.setattr(linear_ce, "_probe_mixed_addmm", probe)
    hid, w, b, y, _, _ = _inputs(torch.bfloat16, n=20, v=16)
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (hid, w, b)]
        linear_cross_entropy(*leaves[:2], y, leaves[2], chunk_size=8).backward()
    assert calls == [(torch.device("cpu"), torch.bfloat16)]  # once, on a 1×1 problem
    assert linear_ce.mixed_addmm_supported(torch.device("cpu"), torch.bfloat16) is False


def test_mixed_addmm_probe_warns_on_cuda_and_lets_oom_through(monkeypatch):
    def missing(*args, **kwargs):
        raise NotImplementedError("Could not run 'aten::addmm.dtype_out'")

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    class FakeCuda:  # the probe only reads .type for the warning; tensors go to the CPU
        type, index = "cuda", 0

    real_ones, real_zeros = torch.ones, torch.zeros
    monkeypatch.setattr(torch, "ones", lambda *a, device=None, **k: real_ones(*a, **k))
    monkeypatch.setattr(torch, "zeros", lambda *a, device=None, **k: real_zeros(*a, **k))
    monkeypatch.setattr(torch, "addmm", missing)
    with pytest.warns(RuntimeWarning, match="out_dtype=torch.float32.*blocked float32"):
        assert linear_ce._probe_mixed_addmm(FakeCuda(), torch.bfloat16) is False
    monkeypatch.setattr(torch, "addmm", oom)
    with pytest.raises(torch.OutOfMemoryError):
        linear_ce._probe_mixed_addmm(FakeCuda(), torch.bfloat16)


def test_mixed_addmm_real_call_errors_propagate(monkeypatch):
    """Where the probe said yes, a real call's out-of-memory error reaches the caller (it was
    caught, and the mixed GEMM turned off for the whole process, with no warning)."""
    def oom(*args, **kwargs):
        if kwargs.get("out_dtype") is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(*args, **kwargs)

    real = torch.addmm
    monkeypatch.setattr(linear_ce, "_MIXED_ADDMM", {("cpu", None, torch.bfloat16): True})
    monkeypatch.setattr(torch, "addmm", oom)
    hid, w, b, y, _, _ = _inputs(torch.bfloat16, n=20, v=16)
    leaves = [t.clone().requires_grad_() for t in (hid, w, b)]
    with pytest.raises(torch.OutOfMemoryError):
        linear_cross_entropy(*leaves[:2], y, leaves[2], chunk_size=8)
    assert linear_ce._MIXED_ADDMM[("cpu", None, torch.bfloat16)] is True  # not switched off


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
@pytest.mark.parametrize("chunking", [{"chunk_size": 8}, {"chunk_size": 6, "memory_budget": 6 * 16 * 4},
                                      {"impl": "reference", "chunk_size": 10}],
                         ids=["tokens", "vocab-blocks", "op"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_large_logit_offsets(offset, chunking, eps):
    """float32 logits near 1e6 (through the bias), exactly representable so every engine sees the
    same logits: loss and gradients no worse than torch's (plus 1e-6) against float64. Before the
    row statistics were taken relative to the row max the loss was off by 5e-3 at 1e6."""
    g = torch.Generator().manual_seed(5)
    hid = torch.randint(-2, 3, (N, H), generator=g).float() / 2
    w = torch.randint(-4, 5, (V, H), generator=g).float() / 4
    b = offset + torch.randint(-8, 9, (V,), generator=g).float() / 8
    y = torch.randint(0, V, (N,), generator=g)
    kw = {"label_smoothing": eps}

    def torch_fn(h, w_, b_):
        return F.cross_entropy(F.linear(h, w_, b_), y, **kw)

    truth = _loss_and_grads(torch_fn, hid.double(), w.double(), b.double())
    peer = _loss_and_grads(torch_fn, hid, w, b)
    ours = _loss_and_grads(lambda h, w_, b_: linear_cross_entropy(h, w_, y, b_, **kw, **chunking),
                           hid, w, b)
    for name, o, p, t in zip(("loss", "dh", "dW", "db"), ours, peer, truth):
        assert_no_worse_than(o, p, t, 1e-6, name)


@pytest.mark.parametrize("impl", ["fused", "triton", "reference"])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_class_mask_over_vocabulary_blocks(impl, softcap):
    """A masked vocabulary through the two-stage path split into 16-column blocks (40 = 16 + 16
    + 8): the dense masked loss and gradients, exactly zero gradient at masked rows of W and b."""
    if impl == "triton":
        pytest.importorskip("triton")
        from labelsmooth.ops import triton_ce

        if not triton_ce.is_available(torch.device("cpu")):
            pytest.skip("Triton interpreter not enabled")
    hid, w, b, _, _, _ = _inputs(torch.float32, n=20, v=40)
    mask = torch.ones(40, dtype=torch.bool)
    mask[[3, 16, 17, 30, 39]] = False
    keep = mask.nonzero()[:, 0]
    y = keep[torch.randint(0, keep.numel(), (20,), generator=torch.Generator().manual_seed(1))]
    kw = dict(label_smoothing=0.1, softcap=softcap)
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(
        h_, w_, y, b_, class_mask=mask, impl=impl, chunk_size=8, memory_budget=8 * 16 * 4, **kw),
        hid, w, b)
    want = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(
        h_ @ w_.T + b_, y, class_mask=mask, impl="reference", **kw), hid, w, b)
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, want):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6, msg=what)
    assert torch.equal(ours[2][~mask], torch.zeros_like(ours[2][~mask]))
    assert torch.equal(ours[3][~mask], torch.zeros_like(ours[3][~mask]))


# ----------------------------------------------------------------------------------------------
# The optional terms (confidence_penalty, poly, focal_gamma): the same loss as cross_entropy's
# reference engine on the materialised logits, in both chunk modes and with every option.
# ----------------------------------------------------------------------------------------------

TERM_OPTIONS = {
    "plain": {},
    "ls": {"label_smoothing": 0.1},
    "others-w-target": {"label_smoothing": 0.2, "spread": "others", "class_weight": True,
                        "weight_mode": "target"},
    "prior-w": {"label_smoothing": 0.25, "prior": True, "class_weight": True},
    "zloss-softcap-w": {"label_smoothing": 0.1, "softcap": 2.0, "z_loss": 1e-2,
                        "class_weight": True},
}
TERM_CHUNKING = {
    "tokens": {"chunk_size": 8},
    "vocab": {"chunk_size": 6, "memory_budget": 6 * 16 * 8},  # 16-wide blocks: 50 = 3·16 + 2
    "reference": {"impl": "reference", "chunk_size": 10},
    "reference-vocab": {"impl": "reference", "chunk_size": 6, "memory_budget": 6 * 16 * 20},
    "recompute": {"chunk_size": 8, "grad_in_forward": False},
    "recompute-vocab": {"chunk_size": 6, "memory_budget": 6 * 16 * 8, "grad_in_forward": False},
}


def _term_cases():
    out = []
    chunkings = list(TERM_CHUNKING)
    reductions = ("mean", "sum", "none")
    for i, tname in enumerate(TERMS):
        for j, oname in enumerate(TERM_OPTIONS):
            ch = chunkings[(i + 2 * j) % len(chunkings)]
            red = reductions[(i + j) % 3]
            out.append(pytest.param(tname, oname, ch, red, id=f"{tname}-{oname}-{ch}-{red}"))
    # every chunking for the richest combination
    for ch in chunkings:
        out.append(pytest.param("all", "zloss-softcap-w", ch, "mean", id=f"all-rich-{ch}"))
        out.append(pytest.param("flsd", "prior-w", ch, "none", id=f"flsd-prior-{ch}"))
    return out


def _term_kwargs(oname, cw, prior):
    kw = dict(TERM_OPTIONS[oname])
    cwv = cw if kw.pop("class_weight", False) else None
    kw["prior"] = prior if kw.pop("prior", False) else None
    return kw, cwv


@pytest.mark.parametrize("tname, oname, chunking, reduction", _term_cases())
def test_terms_equal_cross_entropy_on_the_logits(tname, oname, chunking, reduction):
    """Loss and gradients w.r.t. hidden, weight and bias equal labelsmooth.cross_entropy's
    reference engine (autograd through the term formulas) on the materialised logits, float64."""
    hid, w, b, y, cw, prior = _inputs()
    kw, cwv = _term_kwargs(oname, cw, prior)
    kw["reduction"] = reduction
    term = TERMS[tname]

    def unfused(h_, w_, b_):
        return ls.cross_entropy(h_ @ w_.T + b_, y, cwv, impl="reference", **kw, **term)

    def fused(h_, w_, b_):
        return _linear_cross_entropy(h_, w_, y, b_, class_weight=cwv, **kw, **term,
                                     **TERM_CHUNKING[chunking])

    ref = _loss_and_grads(unfused, hid, w, b)
    ours = _loss_and_grads(fused, hid, w, b)
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-11, msg=what)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("tname", ["all", "flsd"])
def test_terms_over_a_masked_and_padded_vocabulary(impl, softcap, tname):
    """class_mask (with a fully masked vocabulary block) and num_classes compose with the terms:
    the same as cross_entropy on the logits with the same options."""
    from labelsmooth.ops._terms import SUPPORTED_IMPLS

    if impl not in SUPPORTED_IMPLS:
        pytest.skip(f"the {impl} engine does not evaluate the terms yet")
    hid, w, b, y, cw, prior = _inputs()
    mask = torch.ones(V, dtype=torch.bool)
    mask[16:32] = False  # the whole second block of 16 columns
    mask[3] = False
    y = torch.where(mask[y.clamp(min=0)] | (y < 0), y, torch.full_like(y, 5))
    kw = dict(label_smoothing=0.2, prior=prior, class_weight=cw, softcap=softcap, z_loss=1e-3)
    for vocab_kw in (dict(class_mask=mask), dict(num_classes=45), dict(class_mask=mask,
                                                                       num_classes=45)):
        yv = torch.where(y >= 45, torch.full_like(y, 7), y) if "num_classes" in vocab_kw else y
        cwv = kw["class_weight"]
        okw = {k: v for k, v in kw.items() if k != "class_weight"}
        ref = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(
            h_ @ w_.T + b_, yv, cwv, impl="reference", **okw, **vocab_kw, **TERMS[tname]),
            hid, w, b)
        for chunking in (dict(chunk_size=8), dict(chunk_size=8, memory_budget=8 * 16 * 8)):
            ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(
                h_, w_, yv, b_, impl=impl, **kw, **vocab_kw, **TERMS[tname], **chunking),
                hid, w, b)
            for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
                torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-11,
                                           msg=f"{what} {vocab_kw.keys()} {chunking}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunking", [dict(chunk_size=8), dict(chunk_size=6,
                                                               memory_budget=6 * 16 * 2)])
def test_terms_low_precision_no_worse_than_the_reference(dtype, chunking):
    """In float32/bfloat16 the fused linear loss with every term is no further from the float64
    truth than cross_entropy's reference engine in the same dtype (plus the usual slack)."""
    hid, w, b, y, cw, _ = _inputs(torch.float64)
    term = dict(confidence_penalty=0.3, poly=0.5, focal_gamma="flsd-53")
    kw = dict(label_smoothing=0.1, class_weight=cw.to(dtype), reduction="sum")
    truth = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(
        h_ @ w_.T + b_, y, cw, impl="reference", label_smoothing=0.1, reduction="sum", **term),
        hid, w, b)
    lo = [t.to(dtype) for t in (hid, w, b)]
    ref = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(
        (h_ @ w_.T + b_), y, cw.to(dtype), impl="reference", label_smoothing=0.1,
        reduction="sum", **term), *lo)
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(h_, w_, y, b_, **kw, **term,
                                                                   **chunking), *lo)
    for what, o, r, t in zip(("loss", "dh", "dW", "db"), ours, ref, truth):
        assert_no_worse_than(o, r, t, TOL[dtype], what)


@pytest.mark.parametrize("chunking", [dict(chunk_size=8), dict(chunk_size=6,
                                                               memory_budget=6 * 16 * 8)])
def test_terms_gradcheck_float64(chunking):
    hid, w, b, y, cw, _ = _inputs(n=9, v=20)
    leaves = [t.clone().requires_grad_() for t in (hid, w, b)]
    term = dict(confidence_penalty=0.4, poly=0.7, focal_gamma=1.5)
    fn = lambda h_, w_, b_: linear_cross_entropy(  # noqa: E731
        h_, w_, y, b_, label_smoothing=0.1, class_weight=cw[:20], reduction="sum", **term,
        **chunking)
    assert torch.autograd.gradcheck(fn, leaves)


def test_terms_hand_computed_value():
    """Uniform logits over 2 classes (h ⟂ W): p = (½, ½). Focal γ=1 halves the CE: ½·log 2;
    Poly-1 adds ε₁/2; the confidence penalty subtracts β·log 2 (cross_entropy's doctest values)."""
    hid = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    y = torch.tensor([0])
    half_log2 = 0.5 * math.log(2)
    assert abs(linear_cross_entropy(hid, w, y, focal_gamma=1.0).item() - half_log2) < 1e-6
    assert abs(linear_cross_entropy(hid, w, y, poly=1.0).item() - (math.log(2) + 0.5)) < 1e-6
    assert abs(linear_cross_entropy(hid, w, y, confidence_penalty=0.5).item() - half_log2) < 1e-6


def test_terms_zero_strength_is_the_plain_loss_bitwise():
    """A zero strength is no term: the same bits as the call without it (no extra work)."""
    hid, w, b, y, cw, _ = _inputs(torch.float32)
    kw = dict(label_smoothing=0.1, class_weight=cw, chunk_size=8)
    plain = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(h_, w_, y, b_, **kw),
                            hid, w, b)
    zero = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(
        h_, w_, y, b_, confidence_penalty=0.0, poly=0, focal_gamma=0.0, **kw), hid, w, b)
    for o, r in zip(zero, plain):
        assert torch.equal(o, r)


def test_terms_module_matches_function_and_shows_them():
    hid, w, b, y, cw, _ = _inputs()
    term = dict(confidence_penalty=0.2, poly=1.0, focal_gamma="flsd-53")
    mod = LinearCrossEntropyLoss(cw, label_smoothing=0.1, chunk_size=8, **term)
    got = mod(hid, w, y, b)
    want = linear_cross_entropy(hid, w, y, b, class_weight=cw, label_smoothing=0.1, chunk_size=8,
                                **term)
    assert torch.equal(got, want)
    text = repr(mod)
    assert "confidence_penalty=0.2" in text and "focal_gamma='flsd-53'" in text


@pytest.mark.parametrize("bad, err, name", [
    (dict(focal_gamma=-1.0), ValueError, "focal_gamma"),
    (dict(focal_gamma="flsd"), ValueError, "focal_gamma"),
    (dict(focal_gamma=[2.0]), TypeError, "focal_gamma"),
    (dict(confidence_penalty=-0.1), ValueError, "confidence_penalty"),
    (dict(poly=float("nan")), ValueError, "poly"),
    (dict(poly="1"), TypeError, "poly"),
])
def test_term_errors_name_the_argument(bad, err, name):
    hid, w, _, y, _, _ = _inputs()
    with pytest.raises(err, match=f"`{name}`"):
        linear_cross_entropy(hid, w, y, **bad)
    with pytest.raises(err, match=f"`{name}`"):
        LinearCrossEntropyLoss(**bad)


def _need_triton_terms():
    pytest.importorskip("triton")
    from labelsmooth.ops import triton_ce
    from labelsmooth.ops._terms import SUPPORTED_IMPLS

    if not triton_ce.is_available(torch.device("cpu")):
        pytest.skip("Triton interpreter not enabled")
    if "triton" not in SUPPORTED_IMPLS:
        pytest.skip("the Triton engine does not evaluate the terms yet")


@pytest.mark.parametrize("chunking", [{"chunk_size": 8},
                                      {"chunk_size": 8, "memory_budget": 8 * 16 * 4},
                                      {"chunk_size": 8, "grad_in_forward": False}],
                         ids=["tokens", "vocab-blocks", "recompute"])
@pytest.mark.parametrize("tname", ["all", "flsd", "focal-frac"])
def test_terms_triton_engine_per_chunk(chunking, tname):
    """impl="triton" with the terms through the two-stage contract (interpreter on CPU), float32,
    against cross_entropy's reference engine on the logits."""
    _need_triton_terms()
    hid, w, b, y, cw, prior = _inputs(torch.float32, n=20, v=40)
    kw = {"label_smoothing": 0.1, "z_loss": 1e-3, "prior": prior[:40] / prior[:40].sum()}
    ref = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(
        h_ @ w_.T + b_, y, cw[:40], impl="reference", **kw, **TERMS[tname]), hid, w[:40], b[:40])
    ours = _loss_and_grads(lambda h_, w_, b_: _linear_cross_entropy(
        h_, w_, y, b_, class_weight=cw[:40], impl="triton", **kw, **TERMS[tname], **chunking),
        hid, w[:40], b[:40])
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_terms_triton_over_a_masked_vocabulary(softcap):
    """impl="triton" (interpreter) with every term over vocabulary blocks of 16 with a class mask
    that empties one block and masks column 0 of another, float32, prior and class weights."""
    _need_triton_terms()
    hid, w, b, y, cw, prior = _inputs(torch.float32)
    mask = torch.ones(V, dtype=torch.bool)
    mask[16:32] = False
    mask[3] = False
    y = torch.where(mask[y.clamp(min=0)] | (y < 0), y, torch.full_like(y, 5))
    term = dict(confidence_penalty=0.3, poly=0.5, focal_gamma="flsd-53")
    kw = dict(label_smoothing=0.2, class_mask=mask, softcap=softcap, prior=prior)
    ref = _loss_and_grads(lambda h_, w_, b_: ls.cross_entropy(
        h_ @ w_.T + b_, y, cw, impl="reference", **kw, **term), hid, w, b)
    ours = _loss_and_grads(lambda h_, w_, b_: linear_cross_entropy(
        h_, w_, y, b_, class_weight=cw, impl="triton", chunk_size=8, memory_budget=8 * 16 * 4,
        **kw, **term), hid, w, b)
    for what, o, r in zip(("loss", "dh", "dW", "db"), ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-6, msg=what)
