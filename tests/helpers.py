"""Shared test helpers: an independent dense float64 oracle and the tolerance rule.

Tolerance rule (apple/ml-cross-entropy's): against a float64 ground truth, an implementation's error
must be no larger than PyTorch's own error in the same dtype plus a small absolute tolerance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import ops

# Absolute slack added to torch's own error, per dtype (float64: exactness up to rounding).
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

#: the optional terms' settings every parity test runs (each alone, a negative Poly-1, a fractional
#: and the sample-dependent focal γ, and all three at once)
TERMS = {
    "cp": dict(confidence_penalty=0.7),
    "poly": dict(poly=1.5),
    "poly-neg": dict(poly=-0.5),
    "focal": dict(focal_gamma=2.0),
    "focal-frac": dict(focal_gamma=0.5),
    "flsd": dict(focal_gamma="flsd-53"),
    "all": dict(confidence_penalty=0.3, poly=0.5, focal_gamma=1.0),
}


def dense_reference(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    spread: str = "all",
    prior: torch.Tensor | None = None,
    weight_mode: str = "torch",
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """The literal formula in float64 with materialised smoothed targets (index targets only).

    torch mode:  l = -sum_c w_c q_c log p_c ; target mode: l = -w_y sum_c q_c log p_c ;
    z-loss: + z * w_y * lse^2 ; mean divides by sum of w_y over non-ignored elements.
    Independent of labelsmooth's coefficient plan: only smooth_targets is shared.
    """
    x = input.detach().double()
    k = x.shape[1] if x.dim() >= 2 else x.shape[0]
    x = x.unsqueeze(0) if x.dim() == 1 else x.movedim(1, -1).reshape(-1, k)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    y = target.reshape(-1).long()
    valid = y != ignore_index
    y0 = torch.where(valid, y, 0)
    q = ls.smooth_targets(y0, k, label_smoothing, spread=spread, dtype=torch.float64,
                          prior=None if prior is None else prior.double())
    logp = torch.log_softmax(x, -1)
    lse = torch.logsumexp(x, -1)
    w = torch.ones(k, dtype=torch.float64) if weight is None else weight.double()
    w_y = w[y0] * valid
    if weight_mode == "torch":
        rows = -(w * q * logp).sum(-1) * valid
    else:
        rows = -(q * logp).sum(-1) * w_y
    rows = rows + z_loss * w_y * lse**2
    if reduction == "none":
        return rows.reshape(target.shape)
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / w_y.sum()


def assert_no_worse_than(
    ours: torch.Tensor, peer: torch.Tensor, truth: torch.Tensor, tol: float, what: str = "value",
) -> None:
    """Element-wise |ours − truth| ≤ |peer − truth| + tol·max(1, |truth|); NaNs must agree."""
    ours, peer, truth = ours.detach().double(), peer.detach().double(), truth.detach().double()
    assert ours.shape == truth.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
    nan = truth.isnan()
    assert torch.equal(ours.isnan(), nan), f"{what}: NaN pattern differs from ground truth"
    err = (ours - truth).abs().masked_fill(nan, 0)
    allowed = (peer - truth).abs().masked_fill(nan, 0).nan_to_num(0) + tol * truth.abs().clamp_min(1).masked_fill(nan, 1)
    bad = err > allowed
    if bad.any():
        i = int(torch.argmax((err - allowed).flatten()))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements worse than the peer by more than "
            f"{tol:g}; worst at flat index {i}: ours={float(ours.flatten()[i])!r} "
            f"peer={float(peer.flatten()[i])!r} truth={float(truth.flatten()[i])!r}"
        )


def torch_loss_and_grad(x: torch.Tensor, target: torch.Tensor, grad_out: torch.Tensor, fn=None, **kw):
    """(loss, d loss/d x) for ``fn`` (default: torch's F.cross_entropy) on a fresh leaf copy of x."""
    fn = fn or F.cross_entropy
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf, target, **kw)
    (g,) = torch.autograd.grad(out, leaf, grad_out.to(out.dtype))
    return out.detach(), g


def need_impl(impl: str) -> None:
    """Skip cleanly when an implementation is not available on this machine (e.g. no triton)."""
    if impl == "reference":
        return
    try:
        ops.resolve(impl, torch.device("cpu"))
    except ValueError as err:
        pytest.skip(f"impl={impl!r} not available: {err}")


def assert_within_truth(
    ours: torch.Tensor, truth: torch.Tensor, *, rtol: float, peer: torch.Tensor | None = None,
    atol_of_max: float = 2.0 ** -20, what: str = "value", scale: torch.Tensor | None = None,
) -> None:
    """Per element: |ours − truth| ≤ |peer − truth| + rtol·|truth| + atol_of_max·max|truth|.

    The judge of the GPU tests (issue 17): relative per element, so a kernel that scales small
    entries (a gradient's non-target columns, ~1/K) by 1 % fails, where an absolute tolerance at
    the scale of the largest entry would not. ``peer`` (PyTorch, or the reference op, in the same
    dtype) adds its own error as allowance; without it the bound is absolute (what a kernel that
    rounds once from float32 must meet). The ``atol_of_max`` floor (default 2**-20 of the
    largest |truth|) covers float32 cancellation where the truth itself is nearly 0. NaN and ±inf
    must sit where the truth has them. For a sum of rounded products (a matmul's output: dW, dh),
    pass ``scale`` = the same sum of absolute values (e.g. ``|G|ᵀ|H|``): the relative tolerance
    then applies to it instead of to ``|truth|``, which cancellation can make arbitrarily small.
    """
    ours, truth = ours.detach().double(), truth.detach().double()
    assert ours.shape == truth.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
    assert torch.equal(ours.isnan(), truth.isnan()), f"{what}: NaN pattern differs from the truth"
    inf = truth.isinf()
    assert torch.equal(ours.isinf(), inf) and torch.equal(ours[inf], truth[inf]), (
        f"{what}: ±inf pattern differs from the truth")
    fin = truth.isfinite()
    mag = truth.abs() if scale is None else scale.detach().double().abs()
    ours, truth, mag = ours[fin], truth[fin], mag[fin]
    if truth.numel() == 0:
        return
    err = (ours - truth).abs()
    allowed = rtol * mag + atol_of_max * mag.max()
    if peer is not None:
        allowed = allowed + (peer.detach().double()[fin] - truth).abs().nan_to_num(0)
    bad = err > allowed
    if bad.any():
        i = int(torch.argmax(err - allowed))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements off the truth by more than "
            f"{'the peer’s error + ' if peer is not None else ''}{rtol:g}·|truth|; worst: "
            f"ours={float(ours[i])!r} truth={float(truth[i])!r} "
            f"(relative error {float(err[i] / truth[i].abs().clamp_min(1e-300)):.3g})")
