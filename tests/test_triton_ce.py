"""impl="triton": the Triton kernels against the reference op, float64 truth and PyTorch.

Without a GPU the kernels run on CPU tensors under Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 when there is no CUDA device), ~0.5 µs per element and pass, so the shapes are
small and deliberately unaligned (3×7, 5×1000, 17×4099) and ``MAX_BLOCK`` is lowered where a row
must span several loop iterations with a masked tail. Tests marked ``gpu`` run the same parity
on CUDA, plus torch.compile, CUDA-graph capture and 64-bit offsets; they skip without a GPU.

Tolerance rule (tests/helpers.py): against float64 truth computed from the same rounded inputs,
our error may exceed the peer's (the reference op, or PyTorch, in the same dtype) by at most a
small tolerance, for the loss and for the gradient under a random upstream gradient.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import labelsmooth as ls  # noqa: E402
from labelsmooth import ops  # noqa: E402
from labelsmooth.ops import reference, triton_ce  # noqa: E402
from tests.helpers import (  # noqa: E402
    TOL,
    assert_no_worse_than,
    assert_within_truth,
    torch_loss_and_grad,
)

CPU = torch.device("cpu")
HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA and not triton_ce.is_available(CPU):
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

DEV = torch.device("cuda") if HAS_CUDA else CPU
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (GPU-only Triton checks)")

# fp32 gradient tolerance: gradients are O(1/R) numbers, far below the loss-scale TOL.
GRAD_TOL32 = 2e-6


@pytest.fixture
def small_block(monkeypatch):
    """Force several loop iterations and a masked tail per row."""
    monkeypatch.setattr(triton_ce, "MAX_BLOCK", 256)


def _logits(r, k, dtype, scale=3.0, device=DEV):
    return (torch.randn(r, k, dtype=torch.float64) * scale).to(dtype).to(device)


def _target(r, k, ignore=True, device=DEV):
    y = torch.randint(0, k, (r,))
    if ignore and r > 1:
        y[1::4] = -100
    return y.to(device)


def _upstream(r, reduction, device=DEV):
    shape = (r,) if reduction == "none" else ()
    return (torch.rand(shape, dtype=torch.float64) + 0.5).to(device)


def _options(name, k, device=DEV):
    w = (torch.rand(k, dtype=torch.float64) * 2 + 0.1).to(device)
    prior = torch.softmax(torch.randn(k, dtype=torch.float64), 0).to(device)
    return {
        "plain": dict(),
        "eps": dict(label_smoothing=0.1),
        "others": dict(label_smoothing=0.2, spread="others"),
        "prior": dict(label_smoothing=0.3, prior=prior),
        "w-torch-sum": dict(label_smoothing=0.1, weight=w, reduction="sum"),
        "w-target-prior": dict(label_smoothing=0.2, weight=w, weight_mode="target", prior=prior),
        "zloss": dict(label_smoothing=0.1, z_loss=1e-2, weight=w),
        "softcap": dict(label_smoothing=0.1, softcap=4.0, z_loss=1e-3),
        "none-eps1": dict(label_smoothing=1.0, reduction="none"),
        "zloss-only": dict(z_loss=1e-2, reduction="sum"),  # no smoothing term (SMOOTH=0)
        "softcap-only": dict(softcap=2.5, weight=w),
    }[name]


OPTION_NAMES = ["plain", "eps", "others", "prior", "w-torch-sum", "w-target-prior", "zloss",
                "softcap", "none-eps1", "zloss-only", "softcap-only"]


def _cast(kw, dtype):
    """Class vectors in the logits' dtype (as a user would pass them)."""
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and k == "weight" else v)
            for k, v in kw.items()}


def _three_way(x, target, reduction, kw, impl="triton"):
    """(ours, peer=reference in x's dtype, truth=reference in float64) as (loss, grad) pairs."""
    g = _upstream(x.shape[0], reduction, x.device)
    kw = dict(kw, reduction=reduction)
    fn = ls.cross_entropy
    t64 = target.double() if target.is_floating_point() else target
    truth = torch_loss_and_grad(x.double(), t64, g, fn=fn, impl="reference",
                                **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                   for k, v in kw.items()})
    peer = torch_loss_and_grad(x, target, g, fn=fn, impl="reference", **kw)
    ours = torch_loss_and_grad(x, target, g, fn=fn, impl=impl, **kw)
    return ours, peer, truth


def _check(ours, peer, truth, dtype, grad_tol=None):
    assert ours[0].dtype == peer[0].dtype == dtype and ours[1].dtype == dtype
    assert_no_worse_than(ours[0], peer[0], truth[0], TOL[dtype], "loss")
    assert_no_worse_than(ours[1], peer[1], truth[1],
                         grad_tol if grad_tol is not None else TOL[dtype], "grad")


# --- the GPU judge (issue 17 item 5) --------------------------------------------------------------
# Every GPU test judges loss and gradient per element against float64 truth computed from the same
# rounded inputs: error ≤ the peer's own error (PyTorch where it has the options, else the
# reference op in the same dtype) + RTOL·|truth|, plus, in half precision, error ≤ RTOL·|truth| on
# its own (the kernels work in float32 and round once). A kernel that scales small gradient entries
# by 1 % fails; test_gpu_judge_rejects_a_one_percent_perturbation proves it under the interpreter.

RTOL = {torch.float32: 2.0 ** -14, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -10}
TORCH_OPTIONS = {"weight", "label_smoothing", "reduction", "ignore_index"}


def _judge(ours, peer, truth, dtype):
    rtol = RTOL[dtype]
    for i, what in ((0, "loss"), (1, "grad")):
        assert_within_truth(ours[i], truth[i], rtol=rtol, peer=peer[i], what=what)
        if dtype != torch.float32:
            # fp16 gradients of ~1/(R·K) are subnormal: half its step is the floor there
            floor = 2.0 ** -25 / max(float(truth[i].abs().max()), 1e-30) if dtype == torch.float16 \
                else 2.0 ** -20
            assert_within_truth(ours[i], truth[i], rtol=rtol, atol_of_max=max(floor, 2.0 ** -20),
                                what=f"{what} (own bound)")


def _judged_case(x, target, reduction, kw, dtype):
    """Run triton, the float64 truth and the peer (PyTorch when it has every option), then judge.

    The upstream gradient reaches the losses in their dtype, so the truth gets it rounded alike."""
    g = _upstream(x.shape[0], reduction, x.device).to(dtype).double()
    kw = dict(kw, reduction=reduction)
    t64 = target.double() if target.is_floating_point() else target
    truth = torch_loss_and_grad(x.double(), t64, g, fn=ls.cross_entropy, impl="reference",
                                **{k: (v.double() if isinstance(v, torch.Tensor) else v)
                                   for k, v in kw.items()})
    if set(kw) <= TORCH_OPTIONS:
        peer = torch_loss_and_grad(x, target, g, **kw)
    else:
        peer = torch_loss_and_grad(x, target, g, fn=ls.cross_entropy, impl="reference", **kw)
    ours = torch_loss_and_grad(x, target, g, fn=ls.cross_entropy, impl="triton", **kw)
    _judge(ours, peer, truth, dtype)


def _gpu_index_case(dtype, name, r, k, device=DEV):
    kw = _cast(_options(name, k, device), dtype)
    red = kw.pop("reduction", "none")
    torch.manual_seed(0)
    x, y = _logits(r, k, dtype, device=device), _target(r, k, device=device)
    _judged_case(x, y, red, kw, dtype)


def _gpu_prob_case(name, r, k, dtype=torch.float32, device=DEV):
    torch.manual_seed(0)
    x = _logits(r, k, dtype, device=device)
    t = torch.softmax(torch.randn(r, k, device=device) * 2, 1)
    _judged_case(x, t, "none", _prob_options(name, k), dtype)


@pytest.fixture
def perturbed_backward(monkeypatch):
    """The index backward kernel's output with every non-target entry scaled by 1.01."""
    real = triton_ce._index_bwd_launch

    def launch(dx, x, y, *args):
        real(dx, x, y, *args)
        with torch.no_grad():
            scale = torch.full(dx.shape, 1.01, device=dx.device)
            scale[torch.arange(dx.shape[0], device=dx.device), y] = 1.0
            dx.copy_(dx.float() * scale)

    monkeypatch.setattr(triton_ce, "_index_bwd_launch", launch)


JUDGE_CASES = [pytest.param(torch.float32, "eps", id="f32-eps"),
               pytest.param(torch.float32, "prior", id="f32-prior", marks=pytest.mark.slow),
               pytest.param(torch.bfloat16, "eps", id="bf16-eps"),
               pytest.param(torch.float16, "zloss", id="f16-zloss", marks=pytest.mark.slow)]


@pytest.mark.parametrize("dtype, name", JUDGE_CASES)
def test_gpu_judge_accepts_the_kernel(dtype, name, small_block):
    """The GPU tests' judge, run here on the interpreted kernels: it accepts them …"""
    _gpu_index_case(dtype, name, 8, 1000)


@pytest.mark.parametrize("dtype, name", JUDGE_CASES)
def test_gpu_judge_rejects_a_one_percent_perturbation(dtype, name, small_block,
                                                      perturbed_backward):
    """… and rejects them once the backward's non-target entries are off by 1 % (the old
    absolute tolerance, 1.6e-2 in bf16 on entries of ~1e-4, accepted a 10 % error)."""
    with pytest.raises(AssertionError, match="grad"):
        _gpu_index_case(dtype, name, 8, 1000)


def test_old_absolute_tolerance_accepted_the_perturbation(small_block, perturbed_backward):
    """What the tightening buys: the old bf16 check passes the same 1 %-perturbed kernel."""
    kw = _cast(_options("eps", 1000), torch.bfloat16)
    x, y = _logits(8, 1000, torch.bfloat16), _target(8, 1000)
    _check(*_three_way(x, y, "none", kw), torch.bfloat16)  # no AssertionError


# --- availability and registration ---------------------------------------------------------------


def test_is_available_rules(monkeypatch):
    assert triton_ce.is_available("meta") is False
    if not HAS_CUDA:
        assert triton_ce.is_available(CPU) is True  # TRITON_INTERPRET=1 from conftest
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert triton_ce.is_available(CPU) is False
        monkeypatch.setitem(sys.modules, "triton", None)  # "not installed"
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert triton_ce.is_available(CPU) is False
    else:
        assert triton_ce.is_available(torch.device("cuda")) is True
        assert ops.resolve("auto", torch.device("cuda")) is triton_ce


def test_launch_configuration(monkeypatch):
    monkeypatch.setattr(triton_ce, "MAX_BLOCK", 4096)
    monkeypatch.setattr(triton_ce, "ELEMS_PER_THREAD", 8)
    assert triton_ce._launch_cfg(7) == (16, 1)
    assert triton_ce._launch_cfg(1000) == (1024, 4)
    assert triton_ce._launch_cfg(128256) == (4096, 16)
    monkeypatch.setattr(triton_ce, "MAX_BLOCK", 32768)
    assert triton_ce._launch_cfg(128256) == (32768, 32)  # capped at 32 warps
    monkeypatch.setattr(triton_ce, "MAX_BLOCK", 3000)
    with pytest.raises(ValueError, match="LABELSMOOTH_TRITON_MAX_BLOCK"):
        triton_ce._launch_cfg(128256)


def test_dispatcher_resolves_triton():
    assert ops.resolve("triton", DEV) is triton_ce


def test_import_without_triton_and_without_interpreter():
    """`import labelsmooth` and the module itself import where triton cannot (lazy import)."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import labelsmooth, torch\n"
            "from labelsmooth.ops import triton_ce\n"
            "print(triton_ce.is_available('cpu'), "
            "labelsmooth.ops.resolve('auto', torch.device('cpu')).__name__)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "False"
    assert "triton" not in out.stdout.split()[1]


def test_ops_are_registered_apart_from_the_fused_engine():
    """One destination-passing backward op per kind (issue 15 item 5): `out` is declared written,
    so an in-place backward (out = the logits) bumps their version counter."""
    names = ["triton_index_fwd", "triton_index_bwd_out", "triton_prob_fwd", "triton_prob_bwd_out",
             "triton_block_partials", "triton_block_grad_out", "triton_block_partials_terms",
             "triton_block_focal", "triton_index_terms_fwd", "triton_prob_terms_fwd"]
    for n in names:
        assert hasattr(torch.ops.labelsmooth, n), n
    for n in ("triton_index_bwd", "triton_index_bwd_inplace", "triton_prob_bwd",
              "triton_prob_bwd_inplace"):
        assert not hasattr(torch.ops.labelsmooth, n), n  # retired
    for n, written in (("triton_index_bwd_out", {"out"}), ("triton_prob_bwd_out", {"out", "dt"}),
                       ("triton_block_grad_out", {"out"})):
        args = getattr(torch.ops.labelsmooth, n).default._schema.arguments
        assert {a.name for a in args if a.alias_info is not None and a.alias_info.is_write} \
            == written, n


# --- hand values ---------------------------------------------------------------------------------


def test_hand_value_uniform_logits():
    # Uniform logits over K=4: lse − x_c = log 4 for every class, whatever the smoothing.
    x = torch.zeros(2, 4, device=DEV, requires_grad=True)
    y = torch.tensor([1, 3], device=DEV)
    loss = ls.cross_entropy(x, y, label_smoothing=0.2, impl="triton")
    assert math.isclose(float(loss.detach()), math.log(4), rel_tol=1e-6)
    loss.backward()
    # dℓ/dx_j = (p_j − q_j)/N with p = 1/4, q_y = 0.8 + 0.05, q_other = 0.05.
    expect = torch.full((2, 4), (0.25 - 0.05) / 2, device=DEV)
    expect[0, 1] = expect[1, 3] = (0.25 - 0.85) / 2
    torch.testing.assert_close(x.grad, expect, rtol=0, atol=1e-7)


# --- parity: index targets, every option, unaligned shapes ---------------------------------------


@pytest.mark.parametrize("name", OPTION_NAMES)
@pytest.mark.parametrize("shape", [(3, 7), (5, 1000)], ids=["3x7", "5x1000"])
def test_index_parity_float32(name, shape, small_block):
    r, k = shape
    kw = _options(name, k)
    red = kw.pop("reduction", "mean")
    x, y = _logits(r, k, torch.float32), _target(r, k)
    _check(*_three_way(x, y, red, kw), torch.float32, GRAD_TOL32)


@pytest.mark.parametrize("name", ["eps", "w-target-prior", "softcap", "none-eps1"])
def test_index_parity_17x4099(name):
    kw = _options(name, 4099)
    red = kw.pop("reduction", "mean")
    x, y = _logits(17, 4099, torch.float32), _target(17, 4099)
    _check(*_three_way(x, y, red, kw), torch.float32, GRAD_TOL32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", ["eps", "zloss", "softcap", "w-target-prior"])
def test_index_parity_half_precision(dtype, name, small_block):
    kw = _cast(_options(name, 1000), dtype)
    red = kw.pop("reduction", "none")  # per-row random upstream gradient
    x, y = _logits(5, 1000, dtype), _target(5, 1000)
    _check(*_three_way(x, y, red, kw), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_index_against_torch(dtype, reduction):
    """Against PyTorch's own result in the same dtype (its error is the allowance)."""
    r, k = 6, 517
    x, y = _logits(r, k, dtype), _target(r, k)
    w = (torch.rand(k, dtype=torch.float64) + 0.5).to(dtype).to(DEV)
    g = _upstream(r, reduction)
    kw = dict(weight=w, label_smoothing=0.1, reduction=reduction)
    truth = torch_loss_and_grad(x.double(), y, g, weight=w.double(), label_smoothing=0.1,
                                reduction=reduction)
    peer = torch_loss_and_grad(x, y, g, **kw)
    ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton", **kw)
    _check(ours, peer, truth, dtype)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_confident_bf16_target_column_gradient(eps):
    """p_y → 1: the target column's p_y − 1 + … is formed in fp32 before rounding (Liger #1268)."""
    r, k = 32, 1000
    x = torch.randn(r, k, dtype=torch.float64)
    y = torch.randint(0, k, (r,))
    x[torch.arange(r), y] += torch.linspace(3.0, 12.0, r, dtype=torch.float64)  # p_y ≈ 0.2 … 0.99+
    x = x.to(torch.bfloat16).to(DEV)
    y = y.to(DEV)
    g = torch.ones((), dtype=torch.float64, device=DEV)
    truth = torch_loss_and_grad(x.double(), y, g, label_smoothing=eps)[1]
    peer = torch_loss_and_grad(x, y, g, label_smoothing=eps)[1]
    ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton",
                               label_smoothing=eps)[1]
    rows = torch.arange(r, device=DEV)
    t_truth, t_peer, t_ours = (v[rows, y].double() for v in (truth, peer, ours))
    err_ours = (t_ours - t_truth).abs()
    err_peer = (t_peer - t_truth).abs()
    # Only the final rounding to bf16 (half an ulp, 2**-9 relative) plus fp32 noise remains.
    assert (err_ours <= 2.0 ** -8 * t_truth.abs()).all(), (err_ours / t_truth.abs()).max()
    assert err_ours.max() <= err_peer.max()
    assert_no_worse_than(ours, peer, truth, 2.0 ** -8 / r, "grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_extremely_confident_rows_no_worse_than_torch(dtype):
    """1 − p_y down to ~3e-6: the gradient keeps p_y − 1 from (m, log d), not a rounded lse."""
    r, k = 32, 1000
    x = torch.randn(r, k, dtype=torch.float64)
    y = torch.randint(0, k, (r,))
    x[torch.arange(r), y] += torch.linspace(3.0, 20.0, r, dtype=torch.float64)
    x, y = x.to(dtype).to(DEV), y.to(DEV)
    g = torch.ones((), dtype=torch.float64, device=DEV)
    truth = torch_loss_and_grad(x.double(), y, g)[1]
    rows = torch.arange(r, device=DEV)
    errs = {}
    for name, kw in (("ours", dict(fn=ls.cross_entropy, impl="triton")), ("torch", {}),
                     ("reference", dict(fn=ls.cross_entropy, impl="reference"))):
        grad = torch_loss_and_grad(x, y, g, **kw)[1]
        errs[name] = float(((grad[rows, y].double() - truth[rows, y]) / truth[rows, y]).abs().max())
    # no worse than torch; the reference now keeps these rows' sum of exponentials in float64
    # (more exact than both), so it is no longer the bar
    assert errs["ours"] <= errs["torch"], errs
    assert errs["ours"] < 0.05, errs


# --- ignored rows --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the NaN row, interpreted
def test_ignored_rows_have_exactly_zero_gradient_and_loss():
    r, k = 9, 37
    x, y = _logits(r, k, torch.float32), _target(r, k)
    x[1, :] = float("nan")  # an ignored row is never read in the backward …
    x[1, 0] = -math.inf  # … and its placeholder target logit may be -inf
    xx = x.clone().requires_grad_()
    loss = ls.cross_entropy(xx, y, reduction="none", label_smoothing=0.1, z_loss=1e-3,
                            impl="triton")
    loss.sum().backward()
    ignored = y == -100
    assert (loss[ignored] == 0).all() and torch.isfinite(loss[~ignored]).all()
    assert (xx.grad[ignored] == 0).all()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_all_ignored_batch(reduction):
    r, k = 4, 11
    x = _logits(r, k, torch.float32)
    y = torch.full((r,), -100, device=DEV)
    kw = dict(label_smoothing=0.1)
    ours, peer, truth = _three_way(x, y, reduction, kw)
    ref = torch_loss_and_grad(x, y, _upstream(r, reduction), reduction=reduction, **kw)
    assert torch.equal(ours[0].isnan(), ref[0].isnan())  # mean: NaN like PyTorch; else zeros
    _check(ours, peer, truth, torch.float32, GRAD_TOL32)
    if reduction != "mean":
        assert not ours[0].any() and not ours[1].any()


def test_masked_leading_chunk_of_minus_inf(small_block):
    """A whole 256-wide chunk of -inf logits (a masked vocabulary slice) before any finite one."""
    r, k = 3, 700
    x = _logits(r, k, torch.float32)
    x[:, :300] = -math.inf
    y = torch.tensor([400, 650, 301], device=DEV)
    g = _upstream(r, "none")
    ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton", reduction="none")
    ref = torch_loss_and_grad(x, y, g, reduction="none")
    assert torch.isfinite(ours[0]).all()
    torch.testing.assert_close(ours[0], ref[0])
    torch.testing.assert_close(ours[1], ref[1])


# --- layouts, empty input, float64 ---------------------------------------------------------------


def test_non_contiguous_logits():
    k = 29
    views = {
        "strided rows": _logits(12, k, torch.float32)[::2],
        "strided cols": _logits(6, 2 * k, torch.float32)[:, ::2],
        "transposed": _logits(k, 6, torch.float32).t(),
    }
    y = _target(6, k)
    for name, v in views.items():
        assert not v.is_contiguous(), name
        ours, peer, truth = _three_way(v, y, "none", dict(label_smoothing=0.1))
        _check(ours, peer, truth, torch.float32, GRAD_TOL32)


def test_empty_batch():
    x = torch.randn(0, 7, device=DEV, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long, device=DEV)
    loss = ls.cross_entropy(x, y, reduction="sum", label_smoothing=0.1, impl="triton")
    loss.backward()
    assert float(loss.detach()) == 0.0 and x.grad.shape == (0, 7)


def test_stats_use_the_kernel_lse():
    x, y = _logits(6, 301, torch.float32), _target(6, 301)
    out = ls.cross_entropy_with_stats(x, y, label_smoothing=0.1, z_loss=1e-3, reduction="none",
                                      impl="triton")
    keep = y != -100
    torch.testing.assert_close(out.lse[keep], torch.logsumexp(x[keep], 1))
    torch.testing.assert_close(out.nll[keep], F.cross_entropy(x[keep], y[keep], reduction="none"))


def test_float64_falls_back_to_the_reference():
    x, y = _logits(4, 9, torch.float64), _target(4, 9, ignore=False)
    args = (y, torch.full((4,), 0.9, dtype=torch.float64, device=DEV),
            torch.ones(4, dtype=torch.float64, device=DEV), None, 0.1 / 9, None, 2.0)
    ours = triton_ce.index_rows(x, *args, inplace_backward=True)
    ref = reference.index_rows(x, *args)
    assert ours[0].dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


# --- in-place gradient ---------------------------------------------------------------------------


def _mlp_head(r, k, dtype=torch.float32):
    h = torch.randn(r, 8, device=DEV, requires_grad=True)
    w = torch.randn(8, k, device=DEV, dtype=torch.float64).to(dtype).requires_grad_()
    return h, w


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_inplace_matches_out_of_place_and_overwrites_the_logits(dtype):
    r, k = 6, 45
    h, w = _mlp_head(r, k, dtype)
    y = _target(r, k)
    kw = dict(label_smoothing=0.1, z_loss=1e-3, softcap=6.0, impl="triton")
    grads = {}
    for inplace in (False, True):
        h.grad = w.grad = None
        x = h.to(dtype) @ w  # mm saves its inputs, not its output: in place is safe here
        v0 = x._version
        loss = ls.cross_entropy(x, y, inplace_backward=inplace, **kw)
        x_copy = x.detach().clone()
        loss.backward()
        grads[inplace] = (h.grad.clone(), w.grad.clone(), x.detach().clone(), x_copy, v0,
                          x._version)
    h0, w0, x_after0, x_before0, _, v_after0 = grads[False]
    h1, w1, x_after1, x_before1, v_before1, v_after1 = grads[True]
    assert torch.equal(h0, h1) and torch.equal(w0, w1)
    assert torch.equal(x_after0, x_before0) and v_after0 == 0  # untouched out of place
    assert v_after1 > v_before1  # the write is visible to autograd
    # The logits' storage now holds d loss / d logits: compare with the out-of-place gradient.
    xx = x_before1.clone().requires_grad_()
    ls.cross_entropy(xx, y, **kw).backward()
    assert torch.equal(x_after1, xx.grad)


def test_inplace_misuse_raises_instead_of_reading_gradients():
    r, k = 4, 13
    z = torch.randn(r, k, device=DEV, requires_grad=True)
    y = _target(r, k, ignore=False)
    x = z.exp()  # exp saves its output: its backward would read the gradient
    loss = ls.cross_entropy(x, y, impl="triton", inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_inplace_second_backward_raises():
    z = torch.randn(4, 13, device=DEV, requires_grad=True)
    x = z * 1.0
    loss = ls.cross_entropy(x, _target(4, 13), impl="triton", inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_overwritten_logits_are_refused_by_a_second_loss():
    z = torch.randn(4, 13, device=DEV, requires_grad=True)
    x = z * 1.0
    ls.cross_entropy(x, _target(4, 13), impl="triton", inplace_backward=True).backward()
    with pytest.raises(RuntimeError, match="overwritten by the gradient"):
        ls.cross_entropy(x, _target(4, 13), impl="triton")


def test_inplace_on_a_non_contiguous_view_writes_fresh_memory():
    leaf = _logits(10, 6, torch.float32).t().clone().requires_grad_()  # (6, 10), strided
    x = leaf * 1.0  # elementwise ops keep the strided layout
    assert not x.is_contiguous()
    y = _target(6, 10)
    before, v0 = x.detach().clone(), x._version
    ls.cross_entropy(x, y, impl="triton", inplace_backward=True, label_smoothing=0.1).backward()
    assert torch.equal(x.detach(), before) and x._version == v0
    ref = torch_loss_and_grad(before, y, torch.ones((), device=DEV), fn=ls.cross_entropy,
                              impl="reference", label_smoothing=0.1)
    torch.testing.assert_close(leaf.grad, ref[1], rtol=1e-5, atol=1e-7)


# --- probability targets -------------------------------------------------------------------------


def _prob_options(name, k):
    w = (torch.rand(k, dtype=torch.float64) + 0.5).to(DEV)
    prior = torch.softmax(torch.randn(k, dtype=torch.float64), 0).to(DEV)
    return {
        "plain": dict(),
        "eps-w": dict(label_smoothing=0.1, weight=w),
        "target-mode": dict(label_smoothing=0.2, weight=w, weight_mode="target", prior=prior),
        "softcap-z": dict(label_smoothing=0.1, softcap=3.0, z_loss=1e-2, spread="others"),
    }[name]


@pytest.mark.parametrize("name", ["plain", "eps-w", "target-mode", "softcap-z"])
@pytest.mark.parametrize("shape", [(3, 7), (5, 1000)], ids=["3x7", "5x1000"])
def test_prob_parity_float32(name, shape, small_block):
    r, k = shape
    x = _logits(r, k, torch.float32)
    t = torch.softmax(torch.randn(r, k, dtype=torch.float64) * 2, 1).float().to(DEV)
    # weights in the logits' dtype: a float64 weight promotes the loss to float64, as torch's
    _check(*_three_way(x, t, "none", _cast(_prob_options(name, k), torch.float32)), torch.float32,
           GRAD_TOL32)


def test_prob_target_gradient_and_inplace(small_block):
    """Gradients reach trainable targets (distillation); in place they match out of place."""
    r, k = 4, 300
    x0 = _logits(r, k, torch.float32)
    t0 = torch.softmax(torch.randn(r, k, dtype=torch.float64), 1).float().to(DEV)
    w = (torch.rand(k, dtype=torch.float64) + 0.5).float().to(DEV)
    g = torch.rand(r, device=DEV) + 0.5
    kw = dict(weight=w, label_smoothing=0.1, softcap=5.0, reduction="none")
    results = {}
    for impl, inplace in (("reference", False), ("triton", False), ("triton", True)):
        x = (x0 * 1.0).requires_grad_()  # a leaf copy per run
        t = t0.clone().requires_grad_()
        xi = x * 1.0
        loss = ls.cross_entropy(xi, t, impl=impl, inplace_backward=inplace, **kw)
        loss.backward(g)
        results[(impl, inplace)] = (loss.detach(), x.grad, t.grad, xi._version)
    ref, out = results[("reference", False)], results[("triton", False)]
    inp = results[("triton", True)]
    for a, b in ((out, ref), (inp, ref)):
        torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-6)
    assert torch.equal(out[1], inp[1]) and inp[3] > 0 and out[3] == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_prob_against_torch_half_precision(dtype):
    r, k = 5, 333
    x = _logits(r, k, dtype)
    t = torch.softmax(torch.randn(r, k, dtype=torch.float64) * 2, 1).to(dtype).to(DEV)
    g = _upstream(r, "none")
    truth = torch_loss_and_grad(x.double(), t.double(), g, label_smoothing=0.1, reduction="none")
    peer = torch_loss_and_grad(x, t, g, label_smoothing=0.1, reduction="none")
    ours = torch_loss_and_grad(x, t, g, fn=ls.cross_entropy, impl="triton", label_smoothing=0.1,
                               reduction="none")
    _check(ours, peer, truth, dtype)


# --- torch.library: fake implementations, compile ------------------------------------------------


def _index_args(r=5, k=37, dtype=torch.float32):
    x = _logits(r, k, dtype).requires_grad_()
    y = _target(r, k, ignore=False)
    f = dict(dtype=torch.float32, device=DEV)
    return (x, y, torch.full((r,), 0.9, **f), torch.ones(r, **f), None, 0.1 / k,
            torch.full((r,), 1e-3, **f), 4.0, False)


OPCHECKS = ("test_schema", "test_faketensor", "test_autograd_registration")


def test_opcheck_index_forward():
    torch.library.opcheck(torch.ops.labelsmooth.triton_index_fwd.default, _index_args(),
                          test_utils=OPCHECKS)


def test_opcheck_prob_forward():
    r, k = 3, 11
    x = _logits(r, k, torch.float32).requires_grad_()
    t = torch.softmax(torch.randn(r, k, device=DEV), 1)
    args = (x, t, None, 0.9, None, 0.1 / k, torch.ones(r, device=DEV), None, None, False)
    torch.library.opcheck(torch.ops.labelsmooth.triton_prob_fwd.default, args,
                          test_utils=OPCHECKS)


def test_opcheck_backward_out_ops():
    """The `_out` ops: schema (declared mutation of `out`), fake impl, no autograd on a
    mutating op; both for a fresh buffer and for out = the logits themselves (in place)."""
    x, y, ct, cs, s, su, cz, cap, _ = _index_args()
    x = x.detach()
    stats = torch.ops.labelsmooth.triton_index_fwd(x, y, ct, cs, s, su, cz, cap, False)[2]
    g = torch.rand(x.shape[0], device=DEV)
    fresh = torch.empty_like(x)
    torch.library.opcheck(torch.ops.labelsmooth.triton_index_bwd_out.default,
                          (x, y, ct, cs, s, su, cz, cap, stats, g, fresh), test_utils=OPCHECKS)
    torch.ops.labelsmooth.triton_index_bwd_out(x, y, ct, cs, s, su, cz, cap, stats, g, fresh)
    want = fresh.clone()
    xi = x.clone()
    torch.ops.labelsmooth.triton_index_bwd_out(xi, y, ct, cs, s, su, cz, cap, stats, g, xi)
    torch.testing.assert_close(xi, want, rtol=0, atol=0)  # in place: the same bits
    r, k = 3, 11
    xp = _logits(r, k, torch.float32)
    t = torch.softmax(torch.randn(r, k, device=DEV), 1)
    pargs = (xp, t, None, 0.9, None, 0.1 / k, torch.ones(r, device=DEV), None, 2.0)
    pstats = torch.ops.labelsmooth.triton_prob_fwd(*pargs, False)[2]
    gp = torch.rand(r, device=DEV)
    for dt in (None, torch.empty_like(t)):
        torch.library.opcheck(torch.ops.labelsmooth.triton_prob_bwd_out.default,
                              (*pargs, pstats, gp, torch.empty_like(xp), dt),
                              test_utils=OPCHECKS)


def _op_level_loss(inplace):
    def fn(x, y, ct, cs, cz):
        xx = x * 2.0  # an intermediate, so the in-place write has a non-leaf to overwrite
        loss, _ = triton_ce.index_rows(xx, y, ct, cs, None, 0.1 / x.shape[1], cz, 4.0, inplace)
        return loss.sum() / x.shape[0]
    return fn


@pytest.mark.parametrize("inplace", [False, True])
def test_compile_fullgraph_op_level(inplace):
    """Dynamo + AOTAutograd trace the ops (fake impls, autograd formula, declared mutation)."""
    backend = "inductor" if HAS_CUDA else "aot_eager"  # inductor's CPU codegen is slow to build
    x, y, ct, cs, _, _, cz, _, _ = _index_args()
    compiled = torch.compile(_op_level_loss(inplace), fullgraph=True, backend=backend)
    loss = compiled(x, y, ct, cs, cz)
    (g,) = torch.autograd.grad(loss, x)
    loss_e = _op_level_loss(False)(x, y, ct, cs, cz)
    (g_e,) = torch.autograd.grad(loss_e, x)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(g, g_e)


def test_compile_fullgraph_public_api():
    x = _logits(4, 9, torch.float32).requires_grad_()
    y = _target(4, 9, ignore=False)
    fn = torch.compile(lambda a, b: ls.cross_entropy(a, b, label_smoothing=0.1, impl="triton"),
                       fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    loss = fn(x, y)
    (g,) = torch.autograd.grad(loss, x)
    ref = torch_loss_and_grad(x, y, torch.ones((), device=DEV), fn=ls.cross_entropy,
                              impl="triton", label_smoothing=0.1)
    torch.testing.assert_close(loss, ref[0])
    torch.testing.assert_close(g, ref[1])


# --- the kernels compile for a GPU (ahead of time, no GPU needed) --------------------------------

@pytest.mark.slow
def test_kernels_compile_for_sm90_with_128bit_accesses_and_no_spills():
    """The interpreter does not type-check like the compiler: compile every variant for an H100.

    ``benchmarks/triton_resources.py`` (a fresh interpreter: under TRITON_INTERPRET=1 `triton.jit`
    yields objects the compiler cannot take) compiles each variant ahead of time for sm_90a with
    unit column stride and 16-divisible pointers and row stride (what Triton specialises at launch
    when K is a multiple of 16) and assembles it with ``ptxas -v``. The logits must be read and the
    gradient written in 128-bit accesses (``ld/st.global.v4.b32``), the precondition for running at
    bandwidth, and no variant may spill registers.
    """
    import json

    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as err:  # pragma: no cover - other Triton layouts
        pytest.skip(f"Triton without the ahead-of-time API: {err}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "triton_resources.py"),
                          "--json"], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode == 3:
        pytest.skip(out.stderr.strip())
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(rows) == 36
    for r in rows:
        assert r["v4_load"] and r["v4_store"] is not False, r
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r
        assert r["registers"] is not None and r["registers"] <= 128, r


# --- GPU only ------------------------------------------------------------------------------------


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["f32", "bf16", "f16"])
@pytest.mark.parametrize("name", OPTION_NAMES)
def test_gpu_index_parity_large_vocab(dtype, name):
    _gpu_index_case(dtype, name, 64, 32003)  # unaligned, several chunks and a masked tail


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_gpu_confident_bf16_at_32k(eps):
    r, k = 256, 32000
    x = torch.randn(r, k, device=DEV, dtype=torch.float64)
    y = torch.randint(0, k, (r,), device=DEV)
    # Down to 1 − p_y ≈ 3e-5. The fp32 sum d = Σ e^{x−m} ≈ 1 + (1 − p_y) resolves 1 − p_y to
    # about ulp(1) absolute: the bound below is bf16's rounding (2**-8 relative) plus 2 ulp(1)/r.
    x[torch.arange(r, device=DEV), y] += torch.linspace(3.0, 20.0, r, device=DEV,
                                                        dtype=torch.float64)
    x = x.to(torch.bfloat16)
    g = torch.ones((), dtype=torch.float64, device=DEV)
    truth = torch_loss_and_grad(x.double(), y, g, label_smoothing=eps)[1]
    peer = torch_loss_and_grad(x, y, g, label_smoothing=eps)[1]
    ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton", label_smoothing=eps)[1]
    rows = torch.arange(r, device=DEV)
    t_truth, t_peer, t_ours = (v[rows, y].double() for v in (truth, peer, ours))
    err_ours, err_peer = (t_ours - t_truth).abs(), (t_peer - t_truth).abs()
    assert (err_ours <= 2.0 ** -8 * t_truth.abs() + 2.0 ** -22 / r).all()
    assert err_ours.max() <= err_peer.max()


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ["plain", "eps-w", "target-mode", "softcap-z"])
def test_gpu_prob_parity(name, dtype):
    _gpu_prob_case(name, 32, 32003, dtype)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("inplace", [False, True])
def test_gpu_cuda_graph_capture_of_forward_and_backward(inplace):
    """Public API, eager: no host sync anywhere, so forward + backward capture into a CUDA graph."""
    r, k = 128, 32000
    src = torch.randn(r, k, device=DEV, dtype=torch.bfloat16)
    y = torch.randint(0, k, (r,), device=DEV)
    y[::7] = -100

    def step():
        x = src * 1.0  # fresh logits each replay (in place overwrites them)
        loss = ls.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4, impl="triton",
                                inplace_backward=inplace)
        loss.backward()
        return loss

    src.requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            src.grad = None
            step()
    torch.cuda.current_stream().wait_stream(stream)
    src.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    with torch.no_grad():
        src.copy_(torch.randn_like(src))
    graph.replay()
    torch.cuda.synchronize()
    one = torch.ones((), device=DEV)
    kw = dict(fn=ls.cross_entropy, impl="reference", label_smoothing=0.1, z_loss=1e-4)
    truth = torch_loss_and_grad(src.detach().double(), y, one, **kw)
    peer = torch_loss_and_grad(src.detach(), y, one, **kw)
    # the replay computed on the new logits: judged per element like every GPU test
    _judge((static_loss.detach(), src.grad), peer, truth, torch.bfloat16)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("inplace", [False, True])
def test_gpu_compile_fullgraph_reduce_overhead(inplace):
    """torch.compile(fullgraph=True) with CUDA graphs (mode="reduce-overhead") at the op level:
    judged against the float64 reference (not against Triton itself), and the graphs must really
    have been captured (no cudagraph skip, at least one recorded graph)."""
    from torch._dynamo.utils import counters
    from torch._inductor import cudagraph_trees

    torch._dynamo.reset()
    counters.clear()
    x, y, ct, cs, _, _, cz, _, _ = _index_args(64, 32000, torch.bfloat16)
    compiled = torch.compile(_op_level_loss(inplace), fullgraph=True, mode="reduce-overhead")
    for _ in range(3):  # record, then replay
        loss = compiled(x, y, ct, cs, cz)
        (g,) = torch.autograd.grad(loss, x)
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    mgr = cudagraph_trees.get_manager(x.device.index or 0, create_if_none_exists=False)
    assert mgr is not None and next(mgr.graph_counter) >= 1, "no CUDA graph was recorded"

    def op_loss(xx, rows):
        xx = xx * 2.0
        loss, _ = rows(xx, y, ct, cs, None, 0.1 / x.shape[1], cz, 4.0, False)
        return loss.sum() / x.shape[0]

    x64 = x.detach().double().requires_grad_()
    truth = op_loss(x64, reference.index_rows)
    truth = (truth.detach(), torch.autograd.grad(truth, x64)[0])
    xp = x.detach().clone().requires_grad_()
    peer = op_loss(xp, reference.index_rows)
    peer = (peer.detach(), torch.autograd.grad(peer, xp)[0])
    _judge((loss.detach(), g), peer, truth, torch.bfloat16)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("inplace", [False, True])
def test_gpu_peak_memory_is_the_gradient_or_nothing(inplace):
    """Goal: extra memory of forward + backward ≤ the gradient, and ~0 with the in-place option."""
    r, k = 4096, 32000
    src = torch.randn(r, k, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    x = src * 1.0  # non-leaf logits, as produced by an output layer
    y = torch.randint(0, k, (r,), device=DEV)
    warm = x.detach()[:8].clone().requires_grad_()  # compile both kernels outside the window
    ls.cross_entropy(warm, y[:8], label_smoothing=0.1, z_loss=1e-4, impl="triton").backward()
    del warm
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = ls.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-4, impl="triton",
                            inplace_backward=inplace)
    (g,) = torch.autograd.grad(loss, x)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    grad_bytes = x.numel() * x.element_size()
    small = 64 * r * 4 + 2 ** 21  # (R,) vectors and allocator granularity
    if inplace:
        assert g.data_ptr() == x.data_ptr() and extra <= small, extra
    else:
        assert extra <= grad_bytes + small, (extra, grad_bytes)


@gpu
@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_64bit_offsets():
    """More than 2**31 elements: the last rows must be addressed correctly (int64 offsets)."""
    k = 65536
    r = 2 ** 31 // k + 3
    if torch.cuda.get_device_properties(0).total_memory < 3 * r * k * 2:
        pytest.skip("needs ~13 GB of GPU memory")
    x = torch.empty(r, k, device=DEV, dtype=torch.bfloat16)
    x[:-4].zero_()
    x[-4:] = torch.randn(4, k, device=DEV, dtype=torch.bfloat16) * 3
    y = torch.randint(0, k, (r,), device=DEV)
    xr = x.requires_grad_()
    loss = ls.cross_entropy(xr * 1.0, y, reduction="none", label_smoothing=0.1, impl="triton",
                            inplace_backward=True)
    kw = dict(fn=ls.cross_entropy, impl="reference", reduction="none", label_smoothing=0.1)
    one = torch.ones(4, device=DEV, dtype=torch.float64)
    tail = torch_loss_and_grad(x.detach()[-4:].double(), y[-4:], one, **kw)
    peer = torch_loss_and_grad(x.detach()[-4:], y[-4:], one, **kw)
    assert torch.allclose(loss[:-4].float(), torch.tensor(math.log(k), device=DEV), rtol=1e-2)
    g = torch.zeros(r, device=DEV, dtype=torch.bfloat16)
    g[-4:] = 1
    loss.backward(g)
    _judge((loss.detach()[-4:], xr.grad[-4:]), peer, tail, torch.bfloat16)


def test_inplace_backward_never_overwrites_a_leaf():
    p = torch.nn.Parameter(torch.tensor([[1.0, 2.0, 3.0]], device=DEV))
    want = p.detach().clone()
    ls.cross_entropy(p, torch.tensor([0], device=DEV), inplace_backward=True,
                     impl="triton").backward()
    assert torch.equal(p.detach(), want)
    p.grad = None
    t = torch.tensor([[0.2, 0.3, 0.5]], device=DEV)
    ls.cross_entropy(p, t, inplace_backward=True, impl="triton").backward()
    assert torch.equal(p.detach(), want)


@pytest.mark.parametrize("prob", [False, True])
def test_double_backward_matches_reference(prob):
    x = _logits(3, 5, torch.float32).requires_grad_(True)
    y = torch.softmax(torch.randn(3, 5, device=DEV), 1) if prob else torch.tensor([0, 4, 2], device=DEV)
    res = []
    for impl in ("triton", "reference"):
        loss = ls.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-2, softcap=4.0, impl=impl)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        (h,) = torch.autograd.grad(g.square().sum(), x)
        res.append((g.detach(), h))
    assert torch.allclose(res[0][0], res[1][0], atol=1e-6)
    assert torch.allclose(res[0][1], res[1][1], atol=1e-5)


# --- out-of-range targets, non-finite logits (issues 17 item 1, 13 item 2) ------------------------


@pytest.mark.parametrize("bad", [7, 8, -5], ids=["K", "K+1", "negative"])
def test_out_of_range_target_unchecked_gives_a_nan_row_and_reads_nothing_outside(bad):
    """validate=False (what CUDA does by default): the bad row is NaN, every other row exact.

    The old kernel loaded ``x_row + y`` unguarded: y == K read the next row's first logit (a
    finite, wrong loss) and the backward silently dropped the target term.
    """
    r, k = 4, 7
    x = _logits(r, k, torch.float32)
    y = torch.tensor([3, bad, 0, 6], device=DEV)
    x[2, 0] = 50.0  # the logit y == K on row 1 would read: a large, finite, wrong value
    xx = x.clone().requires_grad_()
    kw = dict(label_smoothing=0.1, reduction="none")
    loss = ls.cross_entropy(xx, y, impl="triton", validate=False, **kw)
    loss.backward(torch.ones(r, device=DEV))
    assert torch.isnan(loss[1]) and torch.isnan(xx.grad[1]).all()
    good = torch.tensor([0, 2, 3])
    ref = torch_loss_and_grad(x[good], y[good], torch.ones(3, device=DEV), **kw)
    torch.testing.assert_close(loss.detach()[good], ref[0])
    torch.testing.assert_close(xx.grad[good], ref[1])
    # reductions propagate the NaN; the checked path refuses the value instead
    assert torch.isnan(ls.cross_entropy(x, y, impl="triton", validate=False))
    with pytest.raises(ValueError, match="target"):
        ls.cross_entropy(x, y, impl="triton", validate=True)


def test_out_of_range_target_in_the_last_row_stays_inside_the_tensor():
    """y == K on the last row would read one element past the tensor's end."""
    base = _logits(3, 6, torch.float32)
    x = base[:2]  # a view: the element past row 1 exists in memory (base row 2)
    y = torch.tensor([1, 6], device=DEV)
    loss = ls.cross_entropy(x, y, impl="triton", validate=False, reduction="none")
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])


def test_minus_inf_target_logit_gives_inf_like_torch():
    """ε > 0 and x_y = -inf: the old target lane computed (-inf) − (-inf) = NaN."""
    x = _logits(3, 9, torch.float32)
    y = torch.tensor([2, 5, 0], device=DEV)
    x[0, 2] = -math.inf
    for kw in (dict(label_smoothing=0.1), dict(label_smoothing=0.1, weight=torch.rand(9) + 0.5),
               dict(label_smoothing=0.0)):
        kw = {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        g = torch.ones(3, device=DEV)
        ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton", reduction="none",
                                   **kw)
        ref = torch_loss_and_grad(x, y, g, reduction="none", **kw)
        assert ours[0][0] == math.inf, ours[0]
        torch.testing.assert_close(ours[0][1:], ref[0][1:])
        torch.testing.assert_close(ours[1], ref[1])  # the gradient is finite: p − q


@pytest.mark.parametrize("prob", [False, True], ids=["index", "prob"])
def test_minus_inf_column_without_smoothing_mass_is_finite(prob, small_block):
    """A masked (-inf) class whose prior is 0 carries no smoothing mass: 0·log 0 = 0, finite."""
    r, k = 3, 600
    x = _logits(r, k, torch.float32)
    x[:, 300] = -math.inf
    x[0, :280] = -math.inf  # and a leading all -inf chunk on one row …
    prior = torch.rand(k, dtype=torch.float64)
    prior[300] = 0
    prior[:280] = 0  # … masked there too (with a share, a -inf logit gives +inf)
    prior = (prior / prior.sum()).to(DEV)
    y = torch.tensor([290, 10, 599], device=DEV)
    eps = 0.2
    q = ls.smooth_targets(y.cpu(), k, eps, prior=prior.cpu(), dtype=torch.float64).to(DEV)
    x64 = x.double()
    logp = torch.log_softmax(x64, 1)
    truth = -torch.where(q != 0, q * logp, torch.zeros_like(q)).sum(1)  # 0·log 0 = 0
    g = torch.ones(r, device=DEV)
    if prob:
        ours = torch_loss_and_grad(x, q.float(), g, fn=ls.cross_entropy, impl="triton",
                                   reduction="none")
    else:
        ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton", reduction="none",
                                   label_smoothing=eps, prior=prior)
    assert torch.isfinite(ours[0]).all(), ours[0]
    torch.testing.assert_close(ours[0].double(), truth, rtol=1e-5, atol=1e-5)
    grad_truth = torch.softmax(x64, 1) - q
    torch.testing.assert_close(ours[1].double(), grad_truth, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
def test_large_logit_offsets_keep_loss_scale_precision(offset):
    """Row quantities are formed relative to the row max: the error scales with the loss."""
    r, k = 8, 10
    x64 = torch.randn(r, k, dtype=torch.float64) * 2 + offset
    x = x64.float().to(DEV)
    y = _target(r, k, ignore=False)
    for kw in (dict(label_smoothing=0.1), dict(label_smoothing=0.1, prior=torch.softmax(
            torch.randn(k, dtype=torch.float64), 0).to(DEV))):
        g = _upstream(r, "none")
        truth = torch_loss_and_grad(x.double(), y, g, fn=ls.cross_entropy, impl="reference",
                                    reduction="none", **kw)
        peer = torch_loss_and_grad(x, y, g, reduction="none", label_smoothing=0.1)
        ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton", reduction="none",
                                   **kw)
        # float32 rounding of the loss itself, not of the logits (|x| ~ offset)
        assert ((ours[0].double() - truth[0]).abs() <= 4e-7 * truth[0].abs() + 1e-6).all(), (
            ours[0] - truth[0])
        if "prior" not in kw:
            assert_no_worse_than(ours[1], peer[1], truth[1], GRAD_TOL32, "grad")


# --- the optional terms (issue 16 item 1): confidence_penalty, poly, focal_gamma ----------------
# Whole rows (index_rows / prob_rows with terms=) against the float64 dense oracle: the reference
# op with terms (autograd through ops._terms.term_rows). The block contract with terms is tested
# for every engine, Triton included, by tests/test_ops_contract.py (splits, merges, confident rows).

from labelsmooth.ops import _terms  # noqa: E402

TERM_SETS = {
    "penalty": dict(confidence_penalty=0.5),
    "poly": dict(poly=0.7),
    "poly-neg": dict(poly=-0.4),
    "focal2": dict(focal_gamma=2.0),
    "focal-frac": dict(focal_gamma=1.5),
    "flsd": dict(focal_gamma="flsd-53"),
    "all": dict(confidence_penalty=0.3, poly=0.4, focal_gamma=3.0),
}
TERM_VARIANTS = ["plain", "ignore-weights", "zloss-softcap-inplace"]


@pytest.fixture
def tiny_block(monkeypatch):
    """Three chunks per row at K = 37 (the loops' rescaling and the masked tail)."""
    monkeypatch.setattr(triton_ce, "MAX_BLOCK", 16)


def _index_terms_case(shares, variant, r=6, k=37):
    torch.manual_seed(1)
    x = (torch.randn(r, k, dtype=torch.float64) * 3).to(DEV)
    y = torch.randint(0, k, (r,), device=DEV)
    y[1] = 7
    f64 = dict(dtype=torch.float64, device=DEV)
    ct, cs = torch.full((r,), 0.8, **f64), torch.ones(r, **f64)
    w = torch.ones(r, dtype=torch.float64, device=DEV)
    if variant == "ignore-weights":
        w = torch.rand(r, dtype=torch.float64, device=DEV) + 0.5
        w[2] = 0.0
        x[2] = torch.nan  # an ignored row's padding: exactly 0 gradient whatever it holds
        x[2, :3] = torch.inf
        ct, cs = 0.8 * w, w.clone()
    s, su = None, 0.0
    if shares == "vector":
        s = torch.softmax(torch.randn(k, dtype=torch.float64), 0).to(DEV) * 0.2
        s[5] = 0.0
        x[1, 5] = -torch.inf  # a −inf logit where the mass is 0: finite, like torch
    elif shares == "uniform":
        su = 0.2 / k
    else:
        cs = torch.zeros_like(cs)
        x[1, 5] = -torch.inf
    cz = 1e-2 * w if variant.startswith("zloss") else None
    softcap = 4.0 if "softcap" in variant else None
    return x, y, ct, cs, s, su, cz, softcap, w, "inplace" in variant


def _run_index_rows(mod, dtype, case, terms, g):
    x, y, ct, cs, s, su, cz, softcap, w, inplace = case
    leaf = x.to(dtype).clone().requires_grad_()
    xi = leaf * 1.0 if inplace else leaf  # an activation: the only kind written in place
    cv = (lambda v: None if v is None else v.to(dtype)) if dtype == torch.float64 else \
        (lambda v: None if v is None else v.float())
    loss, lse = mod.index_rows(xi, y, cv(ct), cv(cs), cv(s), su, cv(cz), softcap, inplace,
                               terms=terms, row_scale=cv(w))
    (loss * g.to(loss.dtype)).sum().backward()
    return loss.detach().double(), leaf.grad.double(), xi


@pytest.mark.parametrize("variant", TERM_VARIANTS)
@pytest.mark.parametrize("shares", ["none", "uniform", "vector"])
@pytest.mark.parametrize("tname", list(TERM_SETS))
def test_terms_index_rows_match_the_float64_oracle(tname, shares, variant, tiny_block):
    """Each term × spreads × weights/ignored NaN rows × z-loss + softcap (+ in place), with
    MAX_BLOCK = 16 at K = 37 (three chunks per row, a masked tail)."""
    terms = _terms.check_terms(**TERM_SETS[tname])
    case = _index_terms_case(shares, variant)
    g = torch.rand(case[0].shape[0], dtype=torch.float64, device=DEV) + 0.5
    want, want_dx, _ = _run_index_rows(reference, torch.float64, case, terms, g)
    loss, dx, xi = _run_index_rows(triton_ce, torch.float32, case, terms, g)
    live = case[8] != 0
    torch.testing.assert_close(loss[live], want[live], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dx, want_dx, rtol=1e-4, atol=2e-6)
    if variant == "ignore-weights":
        assert torch.equal(dx[2], torch.zeros_like(dx[2]))  # selected, never 0·NaN
    if case[-1]:  # in place: the activation now holds the gradient
        torch.testing.assert_close(xi.detach().double(), dx, rtol=0, atol=0)


def _prob_terms_case(variant, r=5, k=29):
    torch.manual_seed(2)
    x = (torch.randn(r, k, dtype=torch.float64) * 3).to(DEV)
    t = torch.softmax(torch.randn(r, k, dtype=torch.float64) * 2, 1).to(DEV)
    rs = torch.rand(r, dtype=torch.float64, device=DEV) + 0.5
    rs[2] = 0.0
    x[2] = torch.nan  # a row without coefficients: exactly 0 gradient
    w = b = None
    bu = 0.1 / k
    if variant == "weights-prior":
        w = torch.rand(k, dtype=torch.float64, device=DEV) + 0.3
        b = torch.softmax(torch.randn(k, dtype=torch.float64), 0).to(DEV) * 0.05
        bu = 0.0
    cz = 1e-2 * rs if variant == "zloss-softcap" else None
    softcap = 4.0 if variant == "zloss-softcap" else None
    return x, t, w, 0.9, b, bu, rs, cz, softcap


@pytest.mark.parametrize("variant", ["plain", "weights-prior", "zloss-softcap"])
@pytest.mark.parametrize("tname", list(TERM_SETS))
def test_terms_prob_rows_match_the_float64_oracle(tname, variant, tiny_block):
    """Probability targets: the terms on the mass rs·q, gradients to the logits and the targets."""
    terms = _terms.check_terms(**TERM_SETS[tname])
    x, t, w, a, b, bu, rs, cz, softcap = _prob_terms_case(variant)
    g = torch.rand(x.shape[0], dtype=torch.float64, device=DEV) + 0.5
    res = {}
    for name, mod, dt in (("want", reference, torch.float64), ("got", triton_ce, torch.float32)):
        xl, tl_ = x.to(dt).clone().requires_grad_(), t.to(dt).clone().requires_grad_()
        cv = (lambda v: None if v is None else v.to(dt))  # noqa: E731
        loss, _ = mod.prob_rows(xl, tl_, cv(w), a, cv(b), bu, cv(rs), cv(cz), softcap,
                                terms=terms)
        (loss * g.to(dt)).sum().backward()
        res[name] = (loss.detach().double(), xl.grad.double(), tl_.grad.double())
    live = rs != 0
    for i in range(3):
        got, want = res["got"][i], res["want"][i]
        torch.testing.assert_close(got[live], want[live], rtol=1e-4, atol=2e-5)
    assert torch.equal(res["got"][1][2], torch.zeros_like(res["got"][1][2]))


def test_terms_confident_rows_keep_their_digits_in_whole_rows():
    """p_y → 1 at a margin of 20 (1 − p_y ≈ 2e-9, under float32's step at 1): the terms' small
    values come from the kernel's ties counted apart and expm1, not from 1 − p."""
    x = torch.zeros(3, 8, device=DEV)
    x[:, 2] = 20.0
    x[1] += 1e4
    y = torch.full((3,), 2, device=DEV)
    one = torch.ones(3, device=DEV)
    for kw in (dict(focal_gamma=1.0), dict(poly=1.0), dict(focal_gamma="flsd-53", poly=2.0)):
        terms = _terms.check_terms(**kw)
        case = (x.double(), y, one.double(), 0 * one.double(), None, 0.0, None, None,
                one.double(), False)
        want, want_dx, _ = _run_index_rows(reference, torch.float64, case, terms, one.double())
        loss, dx, _ = _run_index_rows(triton_ce, torch.float32, case, terms, one.double())
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=0)
        torch.testing.assert_close(dx, want_dx, rtol=1e-4, atol=1e-12)


def test_terms_no_term_path_is_unchanged():
    """A zero-strength term set is no term: the plain ops run (no terms op in the graph)."""
    case = _index_terms_case("uniform", "plain")
    g = torch.ones(case[0].shape[0], dtype=torch.float64, device=DEV)
    plain = _run_index_rows(triton_ce, torch.float32, case, _terms.NO_TERMS, g)
    zero = _run_index_rows(triton_ce, torch.float32, case, _terms.check_terms(0.0, 0.0, None), g)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])


def test_terms_double_backward_matches_the_reference():
    x = _logits(3, 9, torch.float64).float().requires_grad_()
    y = _target(3, 9, ignore=False)
    one = torch.ones(3, device=DEV)
    terms = _terms.check_terms(0.3, 0.5, 2.0)
    grads = []
    for mod, xx in ((triton_ce, x), (reference, x)):
        loss, _ = mod.index_rows(xx, y, 0.9 * one, one, None, 0.1 / 9, None, None,
                                 terms=terms, row_scale=one)
        (g,) = torch.autograd.grad(loss.sum(), xx, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), xx)
        grads.append((g.detach(), gg))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("inplace", [False, True])
def test_terms_compile_fullgraph_op_level(inplace):
    """The terms ops trace under torch.compile(fullgraph=True): fake impls, autograd formula."""
    backend = "inductor" if HAS_CUDA else "aot_eager"
    x, y, ct, cs, _, _, cz, _, _ = _index_args()
    terms = _terms.check_terms(0.2, 0.3, "flsd-53")

    def fn(x, y, ct, cs, cz):
        xx = x * 2.0
        loss, _ = triton_ce.index_rows(xx, y, ct, cs, None, 0.1 / x.shape[1], cz, 4.0, inplace,
                                       terms=terms, row_scale=ct)
        return loss.sum() / x.shape[0]

    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    loss = compiled(x, y, ct, cs, cz)
    (g,) = torch.autograd.grad(loss, x)
    loss_e = fn(x, y, ct, cs, cz)
    (g_e,) = torch.autograd.grad(loss_e, x)
    torch.testing.assert_close(loss, loss_e)
    torch.testing.assert_close(g, g_e)


def test_opcheck_terms_ops():
    x, y, ct, cs, s, su, cz, cap, _ = _index_args()
    torch.library.opcheck(torch.ops.labelsmooth.triton_index_terms_fwd.default,
                          (x, y, ct, cs, s, su, cz, cap, ct, 0.2, 0.3, None, True, False),
                          test_utils=OPCHECKS)
    r, k = 3, 11
    xp = _logits(r, k, torch.float32).requires_grad_()
    t = torch.softmax(torch.randn(r, k, device=DEV), 1)
    torch.library.opcheck(torch.ops.labelsmooth.triton_prob_terms_fwd.default,
                          (xp, t, None, 0.9, None, 0.1 / k, torch.ones(r, device=DEV), None, 2.0,
                           0.2, 0.3, 2.0, False, False), test_utils=OPCHECKS)


@pytest.mark.parametrize("target_kind", ["index", "prob"])
@pytest.mark.parametrize("tname", ["penalty", "poly", "flsd", "all"])
def test_terms_through_the_public_api(tname, target_kind):
    """cross_entropy(impl="triton", <term>) with weights, ignore_index (±inf/NaN padding in the
    ignored rows) and label smoothing equals impl="reference" in float64; ignored rows get
    exactly 0 gradient."""
    assert "triton" in _terms.SUPPORTED_IMPLS
    torch.manual_seed(3)
    n, k = 8, 13
    x = _logits(n, k, torch.float64)
    w = (torch.rand(k, dtype=torch.float64) + 0.5).to(DEV)
    kw = dict(label_smoothing=0.1, **TERM_SETS[tname])
    if target_kind == "index":
        target = _target(n, k)  # rows 1 and 5 ignored (-100)
        x[1] = torch.nan
        x[5, :4] = -torch.inf
        kw.update(weight=w)
    else:
        target = torch.softmax(torch.randn(n, k, dtype=torch.float64) * 2, 1).to(DEV)
    res = {}
    for impl, dt in (("reference", torch.float64), ("triton", torch.float32)):
        xl = x.to(dt).clone().requires_grad_()
        tt = target.to(dt) if target.is_floating_point() else target
        kk = {a: (v.to(dt) if isinstance(v, torch.Tensor) else v) for a, v in kw.items()}
        loss = ls.cross_entropy(xl, tt, impl=impl, **kk)
        loss.backward()
        res[impl] = (loss.detach().double(), xl.grad.double())
    torch.testing.assert_close(res["triton"][0], res["reference"][0], rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(res["triton"][1], res["reference"][1], rtol=1e-4, atol=1e-6)
    if target_kind == "index":
        assert torch.equal(res["triton"][1][1::4], torch.zeros_like(res["triton"][1][1::4]))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("tname", list(TERM_SETS))
def test_gpu_terms_large_vocab(dtype, tname):
    """The compiled term kernels (64 × 32003: several chunks, a masked tail; weights, ignored
    rows, label smoothing) against the float64 reference on the same rounded logits: loss and
    gradient to one rounding of their dtype (the gradient plus 1e-6 of its largest entry)."""
    torch.manual_seed(0)
    n, k = 64, 32003
    x = _logits(n, k, dtype)
    y = _target(n, k)
    w = (torch.rand(k, device=DEV) + 0.5).to(dtype)
    kw = dict(label_smoothing=0.1, weight=w, reduction="sum", **TERM_SETS[tname])
    g = _upstream(n, "sum").to(dtype).double()
    truth = torch_loss_and_grad(x.double(), y, g, fn=ls.cross_entropy, impl="reference",
                                **dict(kw, weight=w.double()))
    ours = torch_loss_and_grad(x, y, g, fn=ls.cross_entropy, impl="triton", **kw)
    # the loss comes back in the logits' dtype: one rounding of it
    torch.testing.assert_close(ours[0].double(), truth[0], rtol=max(1e-4, RTOL[dtype]), atol=0)
    err = (ours[1].double() - truth[1]).abs()
    bound = RTOL[dtype] * truth[1].abs() + 1e-6 * truth[1].abs().max()
    assert bool((err <= bound).all()), float((err - bound).max())


def test_terms_confident_rows_keep_their_digits_with_probability_targets():
    """The same confident rows as one-hot probability targets: all the mass is in the row's own
    shares, so Poly-1's Q − Σ q p (≈ 1.4e-8) needs the ties counted apart and the row formulas
    in float64 (float32 gave 0, half the loss). The gradient's p_j − q_j at the confident column
    is, as in torch and the plain probability kernel, float32's difference of two numbers near 1
    (an absolute error up to its step there, 6e-8)."""
    x = torch.zeros(3, 8, device=DEV)
    x[:, 2] = 20.0
    x[1] += 1e4
    t = torch.zeros(3, 8, device=DEV)
    t[:, 2] = 1.0
    rs = torch.ones(3, device=DEV)
    for kw in (dict(focal_gamma=1.0), dict(poly=1.0), dict(focal_gamma="flsd-53", poly=2.0),
               dict(confidence_penalty=1.0)):
        terms = _terms.check_terms(**kw)
        res = []
        for mod, dt in ((reference, torch.float64), (triton_ce, torch.float32)):
            xl = x.to(dt).clone().requires_grad_()
            loss, _ = mod.prob_rows(xl, t.to(dt), None, 1.0, None, 0.0, rs.to(dt), None, None,
                                    terms=terms)
            loss.sum().backward()
            res.append((loss.detach().double(), xl.grad.double()))
        torch.testing.assert_close(res[1][0], res[0][0], rtol=1e-5, atol=0)
        torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-4, atol=2.0 ** -24)
