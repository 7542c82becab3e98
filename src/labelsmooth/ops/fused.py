r"""Fused, memory-lean label-smoothed cross-entropy for CPU (``impl="fused"``).

Implements the per-row contract of :mod:`labelsmooth.ops` without materialising log-probabilities,
one-hot or smoothed targets:

* **forward** — one chunked pass (:func:`row_partials`) gives per row the max, the sum of
  exponentials, the target logit and the (share-weighted) logit sum; the loss is
  :math:`ct(\mathrm{lse} - x_y) + cs(S\,\mathrm{lse} - \sum_c s_c x_c) + cz\,\mathrm{lse}^2`.
* **backward** — the gradient :math:`g_n\,(cp_n p_{n,j} - ct_n[j=y_n] - cs_n s_j)` is recomputed
  from the saved logits and lse block by block (:func:`grad_rows`), so the forward keeps nothing
  but (R,) vectors. The reduction is applied outside (:mod:`labelsmooth._plan`), so the
  backward receives the per-row upstream gradient and works for every reduction.
* **in place** (``inplace_backward=True``) — the backward writes the gradient into the logits'
  own storage: forward + backward need no memory of the logits' size.

Kernels. Each pass exists twice with the same semantics: a chunked pure-PyTorch version (blocks
of ~1 Mi elements in a reused workspace; works everywhere, no compiler) and an Inductor-compiled
version (one vectorised loop nest per pass, no temporaries) used for CPU logits of at least 4 Mi
elements when a C++ compiler works — see :mod:`._fused_inductor` for the rule and the
``LABELSMOOTH_FUSED_KERNELS`` switch. A fresh (not in-place) gradient of at least 32 MiB is
allocated in transparent huge pages where Linux allows it (``LABELSMOOTH_HUGEPAGES=0`` turns that
off), because first-touch page faults otherwise dominate the time of a multi-GiB gradient.

The ops are registered with :mod:`torch.library` (``labelsmooth::fused_index_fwd`` …) with fake
implementations and autograd formulas, so ``torch.compile(fullgraph=True)`` traces a model calling
the loss without graph breaks. Nothing here reads a tensor value on the host.

In-place safety. Overwriting the logits is safe for autograd because the write goes through a
custom op that declares the mutation, which bumps the logits' version counter: any other autograd
node that saved the logits (a second loss, a metric computed with grad, ``retain_graph`` reuse)
raises "modified by an inplace operation" instead of reading the gradient. Passing overwritten
logits to a labelsmooth loss again raises :class:`RuntimeError`. What cannot be caught: plain reads
of the logits after ``backward()`` outside autograd (``logits.argmax(-1)`` for an accuracy
metric, ``logits.detach()`` copies taken before backward and read after): they see the gradient.
Take such metrics before ``backward()`` or leave ``inplace_backward`` off. Under
``torch.compile`` the labelsmooth reuse check is not applied (it is a Python-side registry); the
version-counter protection is. The check covers the written bytes only: a loss on another
slice of the same base is accepted. A non-contiguous logits view (e.g. the class-last view of an
(N, C, d...) input, which functional.py copies anyway), a leaf (an ``nn.Parameter``, any tensor the
caller created) and a view of a leaf are never written in place: the gradient goes to fresh memory.

Ignored rows (all coefficients zero) get an exactly zero gradient by selection, whatever their
logits hold (±inf or NaN padding would otherwise give 0·inf = NaN).
"""

# torch.library.custom_op infers the op schemas from the annotations: keep typing.Optional there.
# ruff: noqa: UP045
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from labelsmooth.ops._consumed import (
    _check_not_consumed,
    _mark_consumed,
    may_write_in_place,
)
from labelsmooth.ops._fused_chunks import (  # noqa: F401  (re-exported primitives)
    CHUNK_ELEMS,
    MAX_COLS,
    acc_dtype,
    block_shape,
    grad_rows,
    row_partials,
)
from labelsmooth.ops._math import apply_softcap, grad_coef, row_loss, row_ref

__all__ = ["grad_rows", "index_rows", "is_available", "prob_rows", "row_partials"]


def is_available(device: torch.device) -> bool:
    """The chunked engine is plain PyTorch: available on every device (tuned for CPU)."""
    return True


# Tracking of logits whose storage now holds a gradient: labelsmooth.ops._consumed (shared with
# triton_ce and functional; re-exported here).


# --------------------------------------------------------------------------------------------
# Index targets.


def _shares_sum(s: Optional[Tensor], s_uniform: float, k: int, acc: torch.dtype) -> Tensor | float:
    return s.to(acc).sum() if s is not None else s_uniform * k


@torch.library.custom_op("labelsmooth::fused_index_fwd", mutates_args=())
def _index_fwd(
    x: Tensor,
    y: Tensor,
    ct: Tensor,
    cs: Tensor,
    s: Optional[Tensor],
    s_uniform: float,
    cz: Optional[Tensor],
    softcap: Optional[float],
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    acc = acc_dtype(x.dtype)
    m, sumexp, x_y, dsx = row_partials(x, y, s, s_uniform, softcap)
    ref, lse_rel = row_ref(m), sumexp.log().to(acc)  # lse = ref + lse_rel, kept apart (precision)
    smoothing = s is not None or s_uniform != 0.0
    big_s = _shares_sum(s, s_uniform, x.shape[1], acc)
    loss = row_loss(ref, lse_rel, x_y, dsx if smoothing else None, big_s, ct, cs, cz)
    return loss, ref, lse_rel


@_index_fwd.register_fake
def _(x, y, ct, cs, s, s_uniform, cz, softcap, inplace):
    acc = acc_dtype(x.dtype)
    return tuple(x.new_empty(x.shape[:1], dtype=acc) for _ in range(3))


def _index_grad(grad, x, y, ref, lse_rel, ct, cs, s, s_uniform, cz, softcap, out):
    acc = acc_dtype(x.dtype)
    coef_p = grad_coef(ref + lse_rel, _shares_sum(s, s_uniform, x.shape[1], acc), ct, cs, cz)
    return grad_rows(x, y, lse_rel, coef_p, ct, cs, s, s_uniform, softcap, grad.to(acc), out=out,
                     ref=ref)


@torch.library.custom_op("labelsmooth::fused_index_bwd", mutates_args=())
def _index_bwd(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    ref: Tensor,
    lse: Tensor,
    ct: Tensor,
    cs: Tensor,
    s: Optional[Tensor],
    s_uniform: float,
    cz: Optional[Tensor],
    softcap: Optional[float],
) -> Tensor:
    return _index_grad(grad, x, y, ref, lse, ct, cs, s, s_uniform, cz, softcap, None)


@_index_bwd.register_fake
def _(grad, x, y, ref, lse, ct, cs, s, s_uniform, cz, softcap):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("labelsmooth::fused_index_bwd_", mutates_args=("x",))
def _index_bwd_inplace(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    ref: Tensor,
    lse: Tensor,
    ct: Tensor,
    cs: Tensor,
    s: Optional[Tensor],
    s_uniform: float,
    cz: Optional[Tensor],
    softcap: Optional[float],
) -> None:
    _index_grad(grad, x, y, ref, lse, ct, cs, s, s_uniform, cz, softcap, x)


@_index_bwd_inplace.register_fake
def _(grad, x, y, ref, lse, ct, cs, s, s_uniform, cz, softcap):
    return None


def _index_setup(ctx, inputs, output):
    x, y, ct, cs, s, s_uniform, cz, softcap, inplace = inputs
    _, ref, lse_rel = output
    ctx.mark_non_differentiable(ref, lse_rel)
    ctx.save_for_backward(x, y, ref, lse_rel, ct, cs, s, cz)
    ctx.s_uniform, ctx.softcap = s_uniform, softcap
    ctx.inplace = inplace and may_write_in_place(x)


def _capped(x: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """(x' in the accumulation dtype, dx'/dx or None), differentiable."""
    xf = x.to(acc_dtype(x.dtype))
    if softcap is None:
        return xf, None
    t = torch.tanh(xf / softcap)
    return softcap * t, 1 - t * t  # x' and its derivative share the tanh


def _index_grad_differentiable(grad, x, y, ct, cs, s, s_uniform, cz, softcap):
    """The gradient as a differentiable expression of x, for double backward (create_graph=True).

    Materialises (R, K) temporaries like the reference: higher-order derivatives are a rare,
    small-scale use (gradient penalties, gradcheck), so only the first order is fused.
    """
    xf, d = _capped(x, softcap)
    ref = row_ref(xf.detach().amax(1))
    z = xf - ref[:, None]
    lse_rel = torch.logsumexp(z, 1)
    coef = grad_coef(ref + lse_rel, _shares_sum(s, s_uniform, x.shape[1], xf.dtype), ct, cs, cz)
    g = coef[:, None] * torch.exp(z - lse_rel[:, None])
    if s is not None:
        g = g - cs[:, None] * s.to(xf.dtype)[None, :]
    elif s_uniform != 0.0:
        g = g - (cs * s_uniform)[:, None]
    g = g - torch.zeros_like(g).scatter(1, y[:, None], ct[:, None])
    if d is not None:
        g = g * d
    return (grad.to(xf.dtype)[:, None] * g).to(x.dtype)


def _index_backward(ctx, grad_loss, grad_ref, grad_lse):
    x, y, ref, lse, ct, cs, s, cz = ctx.saved_tensors
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: a differentiable (unfused, never in-place) gradient
        gx = _index_grad_differentiable(grad_loss, x, y, ct, cs, s, ctx.s_uniform, cz, ctx.softcap)
        return gx, None, None, None, None, None, None, None, None
    if ctx.inplace:
        torch.ops.labelsmooth.fused_index_bwd_(
            grad_loss, x, y, ref, lse, ct, cs, s, ctx.s_uniform, cz, ctx.softcap
        )
        if not torch.compiler.is_compiling():
            _mark_consumed(x)
        gx = x
    else:
        gx = torch.ops.labelsmooth.fused_index_bwd(
            grad_loss, x, y, ref, lse, ct, cs, s, ctx.s_uniform, cz, ctx.softcap
        )
    return gx, None, None, None, None, None, None, None, None


_index_fwd.register_autograd(_index_backward, setup_context=_index_setup)


def index_rows(
    x: Tensor,
    y: Tensor,
    ct: Tensor,
    cs: Tensor,
    s: Tensor | None,
    s_uniform: float,
    cz: Tensor | None,
    softcap: float | None,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Per-row smoothed cross-entropy for index targets (contract: :mod:`labelsmooth.ops`).

    .. math::

        \ell_n = ct_n(\mathrm{lse}_n - x_{n,y_n})
                 + cs_n\Big(S\,\mathrm{lse}_n - \sum_c s_c x_{n,c}\Big)
                 + cz_n\,\mathrm{lse}_n^2

    PyTorch equivalent (``ct = 1-ε``, ``cs = 1``, ``s_uniform = ε/K``):
    ``F.cross_entropy(x, y, label_smoothing=ε, reduction="none")``.

    Examples:
        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
        >>> y, one = torch.tensor([0, 1]), torch.ones(2)
        >>> loss, lse = index_rows(x, y, 0.9 * one, one, None, 0.1 / 3, None, None)
        >>> loss
        tensor([0.3365, 0.5477])
        >>> torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1, reduction="none")
        tensor([0.3365, 0.5477])
    """
    if not torch.compiler.is_compiling():
        _check_not_consumed(x)
    loss, ref, lse_rel = _index_fwd(
        x, y, ct, cs, s, float(s_uniform), cz, softcap, bool(inplace_backward)
    )
    return loss, ref + lse_rel


# --------------------------------------------------------------------------------------------
# Probability targets.


def _prob_sums(x, t, w, a, b, b_uniform, softcap, ref):
    """Per row Q = Σ_c q_c and Σ_c q_c (ref − x'_c) with q = w (a t + b), chunked.

    Relative to the row reference (its max) so that float32 keeps its digits at large logits; a
    class with q_c = 0 counts 0 even at a −inf logit (0·log 0 = 0).
    """
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    big_q = torch.zeros(rows, dtype=acc, device=x.device)
    qx = torch.zeros(rows, dtype=acc, device=x.device)
    wv = w.to(acc) if w is not None else None
    bv = b.to(acc) if b is not None else None
    br, bc = block_shape(rows, cols)
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            q = t[r0:r1, c0:c1].to(acc) * a
            q = q + (bv[c0:c1] if bv is not None else b_uniform)
            if wv is not None:
                q = q * wv[c0:c1]
            d = ref[r0:r1, None] - apply_softcap(x[r0:r1, c0:c1].to(acc), softcap)
            big_q[r0:r1] += q.sum(1)
            qx[r0:r1] += torch.where(q == 0, 0.0, q * d).sum(1)
    return big_q, qx


@torch.library.custom_op("labelsmooth::fused_prob_fwd", mutates_args=())
def _prob_fwd(
    x: Tensor,
    t: Tensor,
    w: Optional[Tensor],
    a: float,
    b: Optional[Tensor],
    b_uniform: float,
    rs: Tensor,
    cz: Optional[Tensor],
    softcap: Optional[float],
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    m, sumexp, _, _ = row_partials(
        x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), None, 0.0, softcap
    )
    ref, lse_rel = row_ref(m), sumexp.log().to(acc_dtype(x.dtype))
    big_q, qd = _prob_sums(x, t, w, a, b, b_uniform, softcap, ref)
    loss = rs * (qd + big_q * lse_rel)
    if cz is not None:
        loss = loss + cz * (ref + lse_rel).square()
    # Q is saved for the backward, which then never reads t for it
    return loss, ref, lse_rel, big_q


@_prob_fwd.register_fake
def _(x, t, w, a, b, b_uniform, rs, cz, softcap, inplace):
    acc = acc_dtype(x.dtype)
    return tuple(x.new_empty(x.shape[:1], dtype=acc) for _ in range(4))


def _prob_grad(
    grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, need_t, out, want_dx=True
):
    """(dx, dt): dx = g (cp p − rs q) x'′, cp = rs Q + 2 cz lse; dt = g rs a w (lse − x').

    ``lse`` is relative to ``ref`` (the row max): p = exp((x' − ref) − lse).
    """
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    grad = grad.to(acc)
    coef = grad_coef(ref + lse, 1.0, torch.zeros_like(lse), rs * big_q, cz)
    gp = (grad * coef)[:, None]
    gq = (grad * rs)[:, None]
    if out is None and want_dx:
        out = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
    dt = torch.empty(t.shape, dtype=t.dtype, device=t.device) if need_t else None
    wv = w.to(acc) if w is not None else None
    bv = b.to(acc) if b is not None else None
    br, bc = block_shape(rows, cols)
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            xf = x[r0:r1, c0:c1].to(acc)
            d = None
            if softcap is not None:
                th = torch.tanh(xf / softcap)
                xf, d = softcap * th, 1 - th * th
            tq = t[r0:r1, c0:c1].to(acc) * a
            q = tq + (bv[c0:c1] if bv is not None else b_uniform)
            if wv is not None:
                q = q * wv[c0:c1]
            xf = xf - ref[r0:r1, None]  # relative to the row max from here on
            if dt is not None:
                dtb = gq[r0:r1] * a * (lse[r0:r1, None] - xf)
                if wv is not None:
                    dtb = dtb * wv[c0:c1]
                dt[r0:r1, c0:c1] = dtb
            if out is None:
                continue
            g = gp[r0:r1] * torch.exp(xf - lse[r0:r1, None]) - gq[r0:r1] * q
            if d is not None:
                g = g * d
            out[r0:r1, c0:c1] = g
    return out, dt


@torch.library.custom_op("labelsmooth::fused_prob_bwd", mutates_args=())
def _prob_bwd(
    grad: Tensor,
    x: Tensor,
    t: Tensor,
    ref: Tensor,
    lse: Tensor,
    big_q: Tensor,
    w: Optional[Tensor],
    a: float,
    b: Optional[Tensor],
    b_uniform: float,
    rs: Tensor,
    cz: Optional[Tensor],
    softcap: Optional[float],
    need_t: bool,
) -> tuple[Tensor, Tensor]:
    dx, dt = _prob_grad(
        grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, need_t, None
    )
    return dx, (dt if dt is not None else t.new_empty(0))


@_prob_bwd.register_fake
def _(grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, need_t):
    dt = torch.empty_like(t, memory_format=torch.contiguous_format) if need_t else t.new_empty(0)
    return torch.empty_like(x, memory_format=torch.contiguous_format), dt


@torch.library.custom_op("labelsmooth::fused_prob_bwd_", mutates_args=("x",))
def _prob_bwd_inplace(
    grad: Tensor,
    x: Tensor,
    t: Tensor,
    ref: Tensor,
    lse: Tensor,
    big_q: Tensor,
    w: Optional[Tensor],
    a: float,
    b: Optional[Tensor],
    b_uniform: float,
    rs: Tensor,
    cz: Optional[Tensor],
    softcap: Optional[float],
    need_t: bool,
) -> Tensor:
    # the target gradient needs the original logits: compute it first, then overwrite x
    dt = None
    if need_t:
        _, dt = _prob_grad(
            grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, True, None,
            want_dx=False,
        )
    _prob_grad(grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, False, x)
    return dt if dt is not None else t.new_empty(0)


@_prob_bwd_inplace.register_fake
def _(grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, need_t):
    return torch.empty_like(t, memory_format=torch.contiguous_format) if need_t else t.new_empty(0)


def _prob_setup(ctx, inputs, output):
    x, t, w, a, b, b_uniform, rs, cz, softcap, inplace = inputs
    _, ref, lse, big_q = output
    ctx.mark_non_differentiable(ref, lse, big_q)
    ctx.save_for_backward(x, t, ref, lse, big_q, w, b, rs, cz)
    ctx.a, ctx.b_uniform, ctx.softcap = a, b_uniform, softcap
    ctx.inplace = inplace and may_write_in_place(x)


def _prob_grad_differentiable(grad, x, t, w, a, b, b_uniform, rs, cz, softcap, need_t):
    """Differentiable (dx, dt) for double backward; see :func:`_index_grad_differentiable`."""
    xf, d = _capped(x, softcap)
    ref = row_ref(xf.detach().amax(1))
    xf = xf - ref[:, None]  # relative to the row max (precision at large logits)
    lse = torch.logsumexp(xf, 1)
    q = a * t.to(xf.dtype) + (b.to(xf.dtype) if b is not None else b_uniform)
    if w is not None:
        q = q * w.to(xf.dtype)
    coef = grad_coef(ref + lse, 1.0, torch.zeros_like(lse), rs * q.sum(1), cz)
    g = grad.to(xf.dtype)[:, None]
    dx = g * (coef[:, None] * torch.exp(xf - lse[:, None]) - rs[:, None] * q)
    if d is not None:
        dx = dx * d
    dt = None
    if need_t:
        dt = g * rs[:, None] * a * (lse[:, None] - xf)
        if w is not None:
            dt = dt * w.to(xf.dtype)
        dt = dt.to(t.dtype)
    return dx.to(x.dtype), dt


def _prob_backward(ctx, grad_loss, grad_ref, grad_lse, grad_q):
    x, t, ref, lse, big_q, w, b, rs, cz = ctx.saved_tensors
    need_t = bool(ctx.needs_input_grad[1])
    if not ctx.needs_input_grad[0] and not torch.compiler.is_compiling():
        # only the targets need a gradient: never touch (let alone overwrite) the logits
        with torch.no_grad():
            _, dt = _prob_grad(
                grad_loss,
                x,
                t,
                ref,
                lse,
                big_q,
                w,
                ctx.a,
                b,
                ctx.b_uniform,
                rs,
                cz,
                ctx.softcap,
                True,
                None,
                want_dx=False,
            )
        return None, dt, None, None, None, None, None, None, None, None
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        dx, dt = _prob_grad_differentiable(
            grad_loss, x, t, w, ctx.a, b, ctx.b_uniform, rs, cz, ctx.softcap, need_t
        )
        return dx, dt, None, None, None, None, None, None, None, None
    args = (
        grad_loss, x, t, ref, lse, big_q, w, ctx.a, b, ctx.b_uniform, rs, cz, ctx.softcap, need_t
    )
    if ctx.inplace:
        dt = torch.ops.labelsmooth.fused_prob_bwd_(*args)
        if not torch.compiler.is_compiling():
            _mark_consumed(x)
        dx = x
    else:
        dx, dt = torch.ops.labelsmooth.fused_prob_bwd(*args)
    return dx, (dt if need_t else None), None, None, None, None, None, None, None, None


_prob_fwd.register_autograd(_prob_backward, setup_context=_prob_setup)


def prob_rows(
    x: Tensor,
    t: Tensor,
    w: Tensor | None,
    a: float,
    b: Tensor | None,
    b_uniform: float,
    rs: Tensor,
    cz: Tensor | None,
    softcap: float | None,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""Per-row smoothed cross-entropy for probability targets (contract: :mod:`labelsmooth.ops`).

    .. math::

        q_{n,c} = w_c(a\,t_{n,c} + b_c), \qquad
        \ell_n = rs_n \Big(\mathrm{lse}_n \sum_c q_{n,c} - \sum_c q_{n,c} x_{n,c}\Big)
                 + cz_n\,\mathrm{lse}_n^2

    PyTorch equivalent (``a = 1-ε``, ``b_uniform = ε/K``, ``rs = 1``):
    ``F.cross_entropy(x, t, label_smoothing=ε, reduction="none")``.

    Examples:
        >>> x = torch.tensor([[2.0, 0.0, -1.0]])
        >>> t = torch.tensor([[0.7, 0.3, 0.0]])
        >>> prob_rows(x, t, None, 0.9, None, 0.1 / 3, torch.ones(1), None, None)[0]
        tensor([0.8765])
        >>> torch.nn.functional.cross_entropy(x, t, label_smoothing=0.1, reduction="none")
        tensor([0.8765])
    """
    if not torch.compiler.is_compiling():
        _check_not_consumed(x)
    loss, ref, lse_rel, _ = _prob_fwd(
        x, t, w, float(a), b, float(b_uniform), rs, cz, softcap, bool(inplace_backward)
    )
    return loss, ref + lse_rel
