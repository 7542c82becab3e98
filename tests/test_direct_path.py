"""The small-input direct path of ``impl="auto"`` (issue 15.3): torch's own kernels where the
options allow it, with labelsmooth's semantics kept (float32 accumulation, ignored elements'
gradient exactly 0 whatever their logits hold, labelsmooth's error messages).

"Taken" is observed by making the general path raise; "equal" compares values and gradients with
the general path (``impl="fused"`` and ``impl="reference"``) in every dtype. No timing here:
``benchmarks/bench_latency.py`` measures what the path buys.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import functional as LF
from tests.helpers import TOL, torch_loss_and_grad

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


class _GeneralPathUsed(AssertionError):
    pass


@pytest.fixture
def no_general_path(monkeypatch):
    """Make the general path fail loudly, so a passing call proves the direct path served it."""

    def boom(*args, **kwargs):
        raise _GeneralPathUsed("the general path was used")

    monkeypatch.setattr(LF, "_cross_entropy", boom)


def _general_used(fn) -> bool:
    try:
        fn()
    except _GeneralPathUsed:
        return True
    return False


def _loss_grad(x, target, g, **kw):
    return torch_loss_and_grad(x, target, g, fn=ls.cross_entropy, **kw)


def _close(a, b, dtype):
    tol = TOL[dtype] * 4 if dtype in (torch.float16, torch.bfloat16) else TOL[dtype]
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True)


CASES = {  # name → (input shape, target maker, options)
    "NC-eps0.1": ((16, 7), None, dict(label_smoothing=0.1)),
    "NC-eps0": ((16, 7), None, dict(label_smoothing=0.0)),
    "NC-sum": ((16, 7), None, dict(label_smoothing=0.2, reduction="sum")),
    "NC-none": ((16, 7), None, dict(label_smoothing=0.3, reduction="none")),
    "NC-others": ((16, 7), None, dict(label_smoothing=0.1, spread="others")),
    "NC-eps1": ((16, 7), None, dict(label_smoothing=1.0)),
    "NC-ignored": ((16, 7), "ignore", dict(label_smoothing=0.1)),
    "NC-ignored-none": ((16, 7), "ignore", dict(label_smoothing=0.1, reduction="none")),
    "NC-ignore-a-class": ((16, 7), None, dict(label_smoothing=0.1, ignore_index=2)),
    "NC-weight-eps0": ((16, 7), "ignore", dict(weight=True)),
    "NC-weight-eps0-target": ((16, 7), None, dict(weight=True, weight_mode="target")),
    "C": ((7,), None, dict(label_smoothing=0.1)),
    "NCd": ((4, 7, 3), "ignore", dict(label_smoothing=0.1)),
    "NCdd-none": ((2, 7, 3, 2), None, dict(label_smoothing=0.1, reduction="none")),
    "int32-target": ((16, 7), "int32", dict(label_smoothing=0.1)),
    "validate-False": ((16, 7), "ignore", dict(label_smoothing=0.1, validate=False)),
    "validate-True": ((16, 7), None, dict(label_smoothing=0.1, validate=True)),
}


def _case(name, dtype):
    shape, kind, kw = CASES[name]
    kw = dict(kw)
    k = shape[1] if len(shape) > 1 else shape[0]
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    tshape = () if len(shape) == 1 else (shape[0],) + shape[2:]
    y = torch.randint(0, k, tshape)
    if kind == "ignore":
        y.view(-1)[::3] = kw.get("ignore_index", -100)
    elif kind == "int32":
        y = y.int()
    if kw.get("weight") is True:
        kw["weight"] = (torch.rand(k, dtype=torch.float64) + 0.5).to(dtype)
    return x, y, kw


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_direct_path_is_taken_and_equals_the_general_path(name, dtype, monkeypatch):
    x, y, kw = _case(name, dtype)
    red = kw.get("reduction", "mean")
    g = (torch.rand(y.shape if red == "none" else (), dtype=torch.float64) + 0.5)
    fused = _loss_grad(x, y, g, impl="fused", **kw)
    ref = _loss_grad(x, y, g, impl="reference", **kw)
    with monkeypatch.context() as m:
        m.setattr(LF, "_cross_entropy", lambda *a, **k: (_ for _ in ()).throw(_GeneralPathUsed()))
        auto = _loss_grad(x, y, g, **kw)
        mod = torch_loss_and_grad(x, y, g, fn=ls.CrossEntropyLoss(**kw))
    for ours in (auto, mod):
        assert ours[0].dtype == fused[0].dtype == dtype
        assert ours[1].dtype == dtype
        _close(ours[0], fused[0], dtype)
        _close(ours[1], fused[1], dtype)
        _close(ours[0], ref[0], dtype)
        _close(ours[1], ref[1], dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_accumulates_in_float32(dtype, no_general_path):
    """The value is torch's float32 loss rounded once, not torch's half-precision loss."""
    x = (torch.randn(64, 50) * 4).to(dtype)
    y = torch.randint(0, 50, (64,))
    ours = ls.cross_entropy(x, y, label_smoothing=0.1)
    want = F.cross_entropy(x.float(), y, label_smoothing=0.1).to(dtype)
    assert torch.equal(ours, want)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("validate", [None, False])
def test_ignored_rows_get_zero_gradient_whatever_their_logits(bad, validate, no_general_path):
    """torch's log_softmax backward gives NaN for an ignored row holding NaN/inf; labelsmooth 0."""
    x = torch.randn(5, 4)
    x[1, 2] = bad
    x[3] = bad
    y = torch.tensor([0, -100, 3, -100, 1])
    leaf = x.clone().requires_grad_()
    loss = ls.cross_entropy(leaf, y, label_smoothing=0.1, validate=validate)
    (g,) = torch.autograd.grad(loss, leaf)
    assert torch.isfinite(loss)
    assert torch.equal(g[[1, 3]], torch.zeros(2, 4))
    keep = [0, 2, 4]
    want = torch_loss_and_grad(x[keep], y[keep], torch.tensor(1.0), label_smoothing=0.1)
    torch.testing.assert_close(loss.detach(), want[0])
    torch.testing.assert_close(g[keep], want[1])


def test_out_of_range_index_raises_labelsmooths_error():
    x = torch.randn(4, 5)
    for y in (torch.tensor([0, 5, 1, 2]), torch.tensor([0, -3, 1, -100])):
        with pytest.raises(ValueError, match=r"Expected `target` to be class indices in \[0, 5\)"):
            ls.cross_entropy(x, y, label_smoothing=0.1)


def test_all_ignored_and_empty_follow_the_general_path_rule(no_general_path):
    x = torch.randn(3, 4, requires_grad=True)
    loss = ls.cross_entropy(x, torch.full((3,), -100), label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, x)
    assert loss.isnan() and torch.equal(g, torch.zeros(3, 4))
    assert float(ls.cross_entropy(x.detach(), torch.full((3,), -100), reduction="sum")) == 0.0
    empty = torch.randn(0, 4, requires_grad=True)
    loss = ls.cross_entropy(empty, torch.zeros(0, dtype=torch.long), label_smoothing=0.1)
    (g,) = torch.autograd.grad(loss, empty)
    assert loss.isnan() and g.shape == (0, 4)


@pytest.mark.parametrize("kw", [
    dict(weight=True, label_smoothing=0.1),  # torch weighs the smoothing mass: 0·log 0 differs
    dict(prior=True, label_smoothing=0.1),
    dict(z_loss=1e-3),
    dict(softcap=5.0),
    dict(inplace_backward=True),
    dict(impl="fused"),
    dict(impl="reference"),
    dict(label_smoothing=0.95, spread="others"),  # ε·K/(K−1) > 1: not a torch ε
    dict(probabilities=True),  # 0·log 0 at a −inf logit: torch NaN, labelsmooth 0
    dict(large=True),
], ids=lambda kw: "-".join(kw))
def test_direct_path_not_taken_where_semantics_differ(kw, monkeypatch):
    kw = dict(kw)
    k = 10
    x = torch.randn(8, k) * 1.0
    x.requires_grad_()
    y = torch.randint(0, k, (8,))
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(k) + 0.5
    if kw.pop("prior", False):
        kw["prior"] = torch.full((k,), 1.0 / k)
    if kw.pop("probabilities", False):
        y = torch.softmax(torch.randn(8, k), 1)
    if kw.pop("large", False):
        monkeypatch.setattr(LF, "DIRECT_MAX_NUMEL", x.numel() - 1)
    monkeypatch.setattr(LF, "_cross_entropy", lambda *a, **k: (_ for _ in ()).throw(_GeneralPathUsed()))
    assert _general_used(lambda: ls.cross_entropy(x * 1.0, y, **kw))


def test_stats_and_compiled_calls_keep_the_general_path(monkeypatch):
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    monkeypatch.setattr(LF, "_cross_entropy", lambda *a, **k: (_ for _ in ()).throw(_GeneralPathUsed()))
    assert _general_used(lambda: ls.cross_entropy_with_stats(x, y, label_smoothing=0.1))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert LF._direct(x, y, None, -100, "mean", 0.1, "all", "torch", None) is None


def test_direct_path_keeps_the_argument_errors():
    """Bad arguments reach the general path's checks (same messages as before)."""
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match="z_loss"):
        ls.cross_entropy(x, y, z_loss=False)
    with pytest.raises(ValueError, match="label_smoothing"):
        ls.cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        ls.cross_entropy(x, y, reduction="avg")
    with pytest.raises(TypeError, match="ignore_index"):
        ls.cross_entropy(x, y, ignore_index=None)
    with pytest.raises(ValueError, match="spread"):
        ls.cross_entropy(x, y, spread="some")
    with pytest.raises(TypeError, match="target"):
        ls.cross_entropy(x, y.float(), label_smoothing=0.1)
    with pytest.raises(ValueError, match="target"):
        ls.cross_entropy(x, y[:3])
    with pytest.raises(ValueError, match="weight"):
        ls.cross_entropy(x, y, weight=torch.ones(4))
    w = torch.ones(5, requires_grad=True)
    with pytest.raises(ValueError, match="weight.requires_grad"):
        ls.cross_entropy(x, y, weight=w)


def test_direct_path_refuses_consumed_logits():
    """Logits overwritten by an in-place backward are refused on the direct path too."""
    src = torch.randn(6, 5, requires_grad=True)
    x = src * 1.0
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    ls.cross_entropy(x, y, label_smoothing=0.1, impl="fused", inplace_backward=True).backward()
    with pytest.raises(RuntimeError, match="overwritten"):
        ls.cross_entropy(x, y, label_smoothing=0.1)


@pytest.mark.slow  # a new interpreter importing torch: several seconds on 2 busy cores
def test_small_default_call_does_not_import_the_compiler():
    """A new process's first small loss must not pay for importing torch._dynamo (seconds): the
    custom ops' dispatch imports it on their first call, the direct path never calls them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, torch, labelsmooth as ls\n"
        "x = torch.randn(128, 10, requires_grad=True)\n"
        "y = torch.randint(0, 10, (128,))\n"
        "ls.cross_entropy(x * 1.0, y, label_smoothing=0.1).backward()\n"
        "ls.CrossEntropyLoss(label_smoothing=0.1, spread='others')(x * 1.0, y).backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    src = str(Path(ls.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
