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

Kernels. Each pass exists three times with the same semantics: a chunked pure-PyTorch version
(blocks of ~1 Mi elements in a reused workspace; works everywhere, no compiler), hand-written C++
kernels for float32 whole rows (:mod:`._fused_native`: inline exponential, every running sum in
a register, each row walked while it is in cache) and an Inductor-compiled version (one
vectorised loop nest per pass, no temporaries) for the other dtypes and options. The compiled
ones run on CPU logits of at least 4 Mi elements when a C++ compiler works —
:func:`._fused_chunks.fast_kernels` picks, :mod:`._fused_inductor` has the rule and the
``LABELSMOOTH_FUSED_KERNELS`` switch. A fresh (not in-place) gradient of at least 32 MiB is
allocated in transparent huge pages where Linux allows it (``LABELSMOOTH_HUGEPAGES=0`` turns that
off), because first-touch page faults otherwise dominate the time of a multi-GiB gradient.

The ops are registered with :mod:`torch.library` with fake implementations and autograd formulas,
so ``torch.compile(fullgraph=True)`` traces a model calling the loss without graph breaks: per
target kind one forward (``labelsmooth::fused_index_rows``, ``fused_prob_rows``; with the optional
terms ``fused_index_terms_fwd``, ``fused_prob_terms_fwd``) and one destination-passing backward
(``fused_index_bwd_out`` …, mutating ``out``: the logits themselves for the in-place backward, else
a fresh buffer). The forward ops were renamed with that change: AOTAutograd's on-disk cache keys a
graph by its forward, so a graph cached under the old forward name would replay the old backward
ops. Nothing here reads a tensor value on the host.

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
    empty_grad,
    focal_partials,
    grad_rows,
    row_partials,
    row_partials_focal,
)
from labelsmooth.ops._math import (
    apply_softcap,
    grad_coef,
    index_grad_dense,
    row_loss,
    row_ref,
    softcap_with_grad,
)
from labelsmooth.ops._terms import (
    FLSD,
    NO_TERMS,
    TermCoefs,
    Terms,
    flsd_low,
    flsd_rows,
    focal_elems,
    focal_pow,
    grad_elems,
    prob_terms,
    row_terms_loss,
    term_coefs,
)

__all__ = ["focal_partials", "grad_rows", "index_rows", "is_available", "prob_rows", "row_partials"]


def is_available(device: torch.device) -> bool:
    """The chunked engine is plain PyTorch: available on every device (tuned for CPU)."""
    return True


# Tracking of logits whose storage now holds a gradient: labelsmooth.ops._consumed (shared with
# triton_ce and functional; re-exported here).


# --------------------------------------------------------------------------------------------
# Index targets.


def _shares_sum(s: Optional[Tensor], s_uniform: float, k: int, acc: torch.dtype) -> Tensor | float:
    return s.to(acc).sum() if s is not None else s_uniform * k


@torch.library.custom_op("labelsmooth::fused_index_rows", mutates_args=())
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


@torch.library.custom_op("labelsmooth::fused_index_bwd_out", mutates_args=("out",))
def _index_bwd_out(
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
    out: Tensor,
) -> None:
    """Destination-passing backward: the gradient into ``out`` — a fresh buffer, or ``x`` itself
    for the in-place backward (the declared mutation bumps its version counter)."""
    _index_grad(grad, x, y, ref, lse, ct, cs, s, s_uniform, cz, softcap, out)


@_index_bwd_out.register_fake
def _(grad, x, y, ref, lse, ct, cs, s, s_uniform, cz, softcap, out):
    return None


def _grad_buffer(x: Tensor, inplace: bool) -> Tensor:
    """Where a backward writes the logits' gradient: ``x`` itself in place, else fresh memory
    (transparent huge pages for a large eager buffer, :func:`._fused_chunks.empty_grad`; a plain
    empty tensor while torch.compile traces)."""
    if inplace:
        return x
    if torch.compiler.is_compiling():
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return empty_grad(x.shape[0], x.shape[1], x.dtype, x.device)


def _index_setup(ctx, inputs, output):
    x, y, ct, cs, s, s_uniform, cz, softcap, inplace = inputs
    _, ref, lse_rel = output
    ctx.mark_non_differentiable(ref, lse_rel)
    ctx.save_for_backward(x, y, ref, lse_rel, ct, cs, s, cz)
    ctx.s_uniform, ctx.softcap = s_uniform, softcap
    ctx.inplace = inplace and may_write_in_place(x)


def _capped(x: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """(x' in the accumulation dtype, dx'/dx or None), differentiable."""
    return softcap_with_grad(x.to(acc_dtype(x.dtype)), softcap)


def _index_grad_differentiable(grad, x, y, ct, cs, s, s_uniform, cz, softcap):
    """The gradient as a differentiable expression of x, for double backward (create_graph=True).

    The dense formula :func:`~labelsmooth.ops._math.index_grad_dense` (the compiled kernel's),
    with the lse and its coefficient recomputed differentiably. Materialises (R, K) temporaries
    like the reference: higher-order derivatives are a rare, small-scale use (gradient
    penalties, gradcheck), so only the first order is fused.
    """
    xf, _ = _capped(x, softcap)
    ref = row_ref(xf.detach().amax(1))
    lse_rel = torch.logsumexp(xf - ref[:, None], 1)
    coef = grad_coef(ref + lse_rel, _shares_sum(s, s_uniform, x.shape[1], xf.dtype), ct, cs, cz)
    g = grad.to(xf.dtype)
    sv = s.to(xf.dtype) if s is not None else None
    bu = g * cs * s_uniform if s is None and s_uniform != 0.0 else None
    return index_grad_dense(x, y, ref, g * coef * torch.exp(-lse_rel), g * ct,
                            g * cs if sv is not None else None, sv, bu, None, softcap)


def _index_backward(ctx, grad_loss, grad_ref, grad_lse):
    x, y, ref, lse, ct, cs, s, cz = ctx.saved_tensors
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: a differentiable (unfused, never in-place) gradient
        gx = _index_grad_differentiable(grad_loss, x, y, ct, cs, s, ctx.s_uniform, cz, ctx.softcap)
        return gx, None, None, None, None, None, None, None, None
    gx = _grad_buffer(x, ctx.inplace)
    torch.ops.labelsmooth.fused_index_bwd_out(
        grad_loss, x, y, ref, lse, ct, cs, s, ctx.s_uniform, cz, ctx.softcap, gx
    )
    if ctx.inplace and not torch.compiler.is_compiling():
        _mark_consumed(x)
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
    *,
    terms: Terms = NO_TERMS,
    row_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Per-row smoothed cross-entropy for index targets (contract: :mod:`labelsmooth.ops`).

    .. math::

        \ell_n = ct_n(\mathrm{lse}_n - x_{n,y_n})
                 + cs_n\Big(S\,\mathrm{lse}_n - \sum_c s_c x_{n,c}\Big)
                 + cz_n\,\mathrm{lse}_n^2

    PyTorch equivalent (``ct = 1-ε``, ``cs = 1``, ``s_uniform = ε/K``):
    ``F.cross_entropy(x, y, label_smoothing=ε, reduction="none")``.

    With active ``terms`` (confidence penalty scaled by ``row_scale``, Poly-1, focal) the loss is
    :func:`labelsmooth.ops._terms.row_terms_loss` of the block contract's statistics over the
    whole row: one statistics pass (with ``sex``/``ses``), a focal pass when focal is set, and
    one gradient pass (:func:`grad_rows` with the coefficients of
    :func:`labelsmooth.ops._terms.term_coefs`), through the ops
    ``labelsmooth::fused_index_terms_fwd`` / ``fused_index_terms_bwd_out``.

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
    if terms.active:
        loss, ref, lse_rel, _ = _index_terms_fwd(
            x, y, ct, cs, s, float(s_uniform), cz, softcap, row_scale, *_term_args(terms),
            bool(inplace_backward),
        )
        return loss, ref + lse_rel
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


@torch.library.custom_op("labelsmooth::fused_prob_rows", mutates_args=())
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


def _prob_grad(grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, out, dt):
    """Write dx = g (cp p − rs q) x'′ into ``out`` and dt = g rs a w (lse − x') into ``dt``
    (either None to skip), cp = rs Q + 2 cz lse; return ``(out, dt)``.

    ``lse`` is relative to ``ref`` (the row max): p = exp((x' − ref) − lse). ``out`` may be ``x``:
    each block's dt is computed from the block's logits before dx overwrites them.
    """
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    grad = grad.to(acc)
    coef = grad_coef(ref + lse, 1.0, torch.zeros_like(lse), rs * big_q, cz)
    gp = (grad * coef)[:, None]
    gq = (grad * rs)[:, None]
    wv = w.to(acc) if w is not None else None
    bv = b.to(acc) if b is not None else None
    br, bc = block_shape(rows, cols)
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            xf, d = softcap_with_grad(x[r0:r1, c0:c1].to(acc), softcap)
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


@torch.library.custom_op("labelsmooth::fused_prob_bwd_out", mutates_args=("out", "dt"))
def _prob_bwd_out(
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
    want_dx: bool,
    out: Tensor,
    dt: Tensor,
) -> None:
    """Destination-passing backward: dx into ``out`` (fresh, or ``x`` itself for in place;
    skipped unless ``want_dx``), dt into ``dt`` (skipped when empty), in one pass."""
    _prob_grad(grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap,
               out if want_dx else None, dt if dt.numel() else None)


@_prob_bwd_out.register_fake
def _(grad, x, t, ref, lse, big_q, w, a, b, b_uniform, rs, cz, softcap, want_dx, out, dt):
    return None


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
    need_x, need_t = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        dx, dt = _prob_grad_differentiable(
            grad_loss, x, t, w, ctx.a, b, ctx.b_uniform, rs, cz, ctx.softcap, need_t
        )
        return (dx if need_x else None), dt, None, None, None, None, None, None, None, None
    # only the targets need a gradient: never touch (let alone overwrite) the logits
    inplace = ctx.inplace and need_x
    dx = _grad_buffer(x, inplace) if need_x else x.new_empty(0)
    dt = torch.empty(t.shape, dtype=t.dtype, device=t.device) if need_t else t.new_empty(0)
    torch.ops.labelsmooth.fused_prob_bwd_out(
        grad_loss, x, t, ref, lse, big_q, w, ctx.a, b, ctx.b_uniform, rs, cz, ctx.softcap,
        need_x, dx, dt,
    )
    if inplace and not torch.compiler.is_compiling():
        _mark_consumed(x)
    return (dx if need_x else None), (dt if need_t else None), None, None, None, None, None, None, \
        None, None


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
    *,
    terms: Terms = NO_TERMS,
) -> tuple[Tensor, Tensor]:
    r"""Per-row smoothed cross-entropy for probability targets (contract: :mod:`labelsmooth.ops`).

    .. math::

        q_{n,c} = w_c(a\,t_{n,c} + b_c), \qquad
        \ell_n = rs_n \Big(\mathrm{lse}_n \sum_c q_{n,c} - \sum_c q_{n,c} x_{n,c}\Big)
                 + cz_n\,\mathrm{lse}_n^2

    PyTorch equivalent (``a = 1-ε``, ``b_uniform = ε/K``, ``rs = 1``):
    ``F.cross_entropy(x, t, label_smoothing=ε, reduction="none")``.

    With active ``terms``: on the mass :math:`rs\,q` (:func:`labelsmooth.ops._terms.prob_terms`),
    the penalty scaled by ``rs``, FLSD-53 switching on :math:`p_y = \sum_c t_c p_c`; ops
    ``labelsmooth::fused_prob_terms_fwd`` / ``fused_prob_terms_bwd_out`` (chunked passes).

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
    if terms.active:
        loss, ref, lse_rel, _ = _prob_terms_fwd(
            x, t, w, float(a), b, float(b_uniform), rs, cz, softcap, *_term_args(terms),
            bool(inplace_backward),
        )
        return loss, ref + lse_rel
    loss, ref, lse_rel, _ = _prob_fwd(
        x, t, w, float(a), b, float(b_uniform), rs, cz, softcap, bool(inplace_backward)
    )
    return loss, ref + lse_rel



# --------------------------------------------------------------------------------------------
# The optional terms (confidence_penalty, poly, focal_gamma): their own ops, so that the path
# without terms (the hot path) is untouched. Terms cross the op boundary as plain scalars.


def _term_args(terms: Terms) -> tuple[float, float, Optional[float], bool]:
    gamma = terms.focal_gamma
    flsd = gamma == FLSD
    return (float(terms.confidence_penalty), float(terms.poly),
            None if gamma is None or flsd else float(gamma), flsd)


def _terms_of(beta: float, eps1: float, gamma: Optional[float], flsd: bool) -> Terms:
    return Terms(beta, eps1, FLSD if flsd else gamma)


#: rows of the coefficient stack saved by the forward: cp, cps, cpx, cpt, cpd, low (flsd)
_NCOEF = 6


def _stack_coefs(cp: Tensor, c: TermCoefs) -> Tensor:
    zero = torch.zeros_like(cp)
    parts = [cp] + [zero if v is None else v.to(cp.dtype) for v in (c.cps, c.cpx, c.cpt, c.cpd)]
    parts.append(zero if c.low is None else c.low.to(cp.dtype))
    return torch.stack(parts)


def _unstack_coefs(stack: Tensor, terms: Terms, vector_shares: bool) -> tuple[Tensor, TermCoefs]:
    cp, cps, cpx, cpt, cpd, low = stack.unbind(0)
    return cp, TermCoefs(
        cps=cps if terms.poly and vector_shares else None,
        cpx=cpx if terms.confidence_penalty else None,
        cpt=cpt if terms.poly else None,
        cpd=cpd,
        gamma=terms.focal_gamma,
        low=(low != 0) if terms.focal_gamma == FLSD else None,
    )


@torch.library.custom_op("labelsmooth::fused_index_terms_fwd", mutates_args=())
def _index_terms_fwd(
    x: Tensor,
    y: Tensor,
    ct: Tensor,
    cs: Tensor,
    s: Optional[Tensor],
    s_uniform: float,
    cz: Optional[Tensor],
    softcap: Optional[float],
    w: Optional[Tensor],
    beta: float,
    eps1: float,
    gamma: Optional[float],
    flsd: bool,
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, ref, lse_rel, coefficient stack (6, R)) — the block contract over whole rows."""
    terms = _terms_of(beta, eps1, gamma, flsd)
    acc = acc_dtype(x.dtype)
    smoothing = s is not None or s_uniform != 0.0
    focal = low = None
    if terms.focal and smoothing:  # statistics and focal sums together (one compiled kernel)
        parts, focal, low = row_partials_focal(x, y, s, s_uniform, softcap, terms)
    else:
        parts = row_partials(x, y, s, s_uniform, softcap, terms=terms)
    m, sumexp, x_y, dsx, sex, ses = parts
    ref, lse_rel = row_ref(m), sumexp.log().to(acc)
    big_s = _shares_sum(s, s_uniform, x.shape[1], acc)
    csn = cs if smoothing else None
    if focal is None:
        low = flsd_rows(terms, ref, lse_rel, x_y)
    wv = w.to(acc) if w is not None else torch.zeros_like(lse_rel)
    kw = dict(w=wv, sex=sex, ses=ses, sumexp=sumexp, focal=focal, low=low)
    loss = row_terms_loss(ref, lse_rel, x_y, dsx if smoothing else None, big_s, ct, csn, cz,
                          terms, **kw)
    cp, coefs = term_coefs(ref, lse_rel, x_y, big_s, ct, csn, cz, terms,
                           shares_vector=s is not None, s_uniform=s_uniform, **kw)
    return loss, ref, lse_rel, _stack_coefs(cp, coefs)


def _terms_fwd_fake(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The shapes of a terms forward: (loss, ref, lse_rel) (R,) and the coefficient stack."""
    acc = acc_dtype(x.dtype)
    rows = x.shape[:1]
    return (*(x.new_empty(rows, dtype=acc) for _ in range(3)),
            x.new_empty((_NCOEF, *rows), dtype=acc))


@_index_terms_fwd.register_fake
def _(x, y, ct, cs, s, s_uniform, cz, softcap, w, beta, eps1, gamma, flsd, inplace):
    return _terms_fwd_fake(x)


@torch.library.custom_op("labelsmooth::fused_index_terms_bwd_out", mutates_args=("out",))
def _index_terms_bwd_out(
    grad: Tensor,
    x: Tensor,
    y: Tensor,
    ref: Tensor,
    lse: Tensor,
    coefs: Tensor,
    ct: Tensor,
    cs: Tensor,
    s: Optional[Tensor],
    s_uniform: float,
    softcap: Optional[float],
    beta: float,
    eps1: float,
    gamma: Optional[float],
    flsd: bool,
    out: Tensor,
) -> None:
    """Destination-passing backward with the terms: the gradient into ``out`` (fresh, or ``x``)."""
    terms = _terms_of(beta, eps1, gamma, flsd)
    cp, tc = _unstack_coefs(coefs, terms, s is not None)
    grad_rows(x, y, lse, cp, ct, cs, s, s_uniform, softcap, grad.to(cp.dtype), out=out, ref=ref,
              terms=tc)


@_index_terms_bwd_out.register_fake
def _(grad, x, y, ref, lse, coefs, ct, cs, s, s_uniform, softcap, beta, eps1, gamma, flsd, out):
    return None


def _index_terms_setup(ctx, inputs, output):
    x, y, ct, cs, s, s_uniform, cz, softcap, w, beta, eps1, gamma, flsd, inplace = inputs
    _, ref, lse_rel, coefs = output
    ctx.mark_non_differentiable(ref, lse_rel, coefs)
    ctx.save_for_backward(x, y, ref, lse_rel, coefs, ct, cs, s, cz, w)
    ctx.args = (s_uniform, softcap, beta, eps1, gamma, flsd)
    ctx.inplace = inplace and may_write_in_place(x)


def _index_terms_backward(ctx, grad_loss, grad_ref, grad_lse, grad_coefs):
    x, y, ref, lse, coefs, ct, cs, s, cz, w = ctx.saved_tensors
    s_uniform, softcap, beta, eps1, gamma, flsd = ctx.args
    none = (None,) * 13
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: differentiate the dense formula (the reference's), never in place
        from labelsmooth.ops import reference

        loss, _ = reference.index_rows(x, y, ct, cs, s, s_uniform, cz, softcap,
                                       terms=_terms_of(beta, eps1, gamma, flsd), row_scale=w)
        (gx,) = torch.autograd.grad(loss, x, grad_loss.to(loss.dtype), create_graph=True)
        return (gx, *none)
    out = _grad_buffer(x, ctx.inplace)
    torch.ops.labelsmooth.fused_index_terms_bwd_out(
        grad_loss, x, y, ref, lse, coefs, ct, cs, s, s_uniform, softcap, beta, eps1, gamma, flsd,
        out,
    )
    if ctx.inplace and not torch.compiler.is_compiling():
        _mark_consumed(x)
    return (out, *none)


_index_terms_fwd.register_autograd(_index_terms_backward, setup_context=_index_terms_setup)


def _prob_terms_sums(x, t, w, a, b, b_uniform, softcap, ref, lse, terms: Terms):
    """The row sums of :func:`labelsmooth.ops._terms.prob_terms`, one chunked pass after lse."""
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    names = ["Q", "QD"]
    if terms.poly:
        names += ["QU", "QP"]
    if terms.confidence_penalty:
        names.append("PZ")
    flsd = terms.focal_gamma == FLSD
    if terms.focal:
        names += ["FQ", "AQ"] + (["FQ5", "AQ5", "TP"] if flsd else [])
    sums = {n: torch.zeros(rows, dtype=acc, device=x.device) for n in names}
    wv = w.to(acc) if w is not None else None
    bv = b.to(acc) if b is not None else None
    zero = torch.zeros((), dtype=acc, device=x.device)
    br, bc = block_shape(rows, cols)
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        L = lse[r0:r1, None]
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            tb = t[r0:r1, c0:c1].to(acc)
            q = tb * a + (bv[c0:c1] if bv is not None else b_uniform)
            if wv is not None:
                q = q * wv[c0:c1]
            z = apply_softcap(x[r0:r1, c0:c1].to(acc), softcap) - ref[r0:r1, None]
            on = q != 0  # 0·log 0 = 0 where the mass is 0
            def acc_sum(n, v, on=on, q=q, r0=r0, r1=r1):
                sums[n][r0:r1].add_(torch.where(on, q * v, zero).sum(1))
            sums["Q"][r0:r1] += q.sum(1)
            acc_sum("QD", -z)
            lp = z - L
            p = torch.exp(lp)
            if terms.poly:
                acc_sum("QU", -torch.expm1(lp))
                sums["QP"][r0:r1] += (q * p).sum(1)
            if terms.confidence_penalty:
                sums["PZ"][r0:r1] += torch.where(p > 0, p * z, zero).sum(1)
            if terms.focal:
                if flsd:  # γ per row depends on p_y = Σ t p, a sum of this pass: both γ, select
                    sums["TP"][r0:r1] += (tb * p).sum(1)
                    for g, sfx in ((3.0, ""), (5.0, "5")):
                        _, fg, av = focal_elems(z, L, g)
                        acc_sum("FQ" + sfx, fg)
                        acc_sum("AQ" + sfx, av)
                else:
                    _, fg, av = focal_elems(z, L, terms.focal_gamma)
                    acc_sum("FQ", fg)
                    acc_sum("AQ", av)
    if flsd:
        low = flsd_low(sums["TP"])
        sums["low"] = low
        sums["FQ"] = torch.where(low, sums["FQ5"], sums["FQ"])
        sums["AQ"] = torch.where(low, sums["AQ5"], sums["AQ"])
    return sums


@torch.library.custom_op("labelsmooth::fused_prob_terms_fwd", mutates_args=())
def _prob_terms_fwd(
    x: Tensor,
    t: Tensor,
    w: Optional[Tensor],
    a: float,
    b: Optional[Tensor],
    b_uniform: float,
    rs: Tensor,
    cz: Optional[Tensor],
    softcap: Optional[float],
    beta: float,
    eps1: float,
    gamma: Optional[float],
    flsd: bool,
    inplace: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, ref, lse_rel, coefficient stack (6, R)) for probability targets with terms."""
    terms = _terms_of(beta, eps1, gamma, flsd)
    m, sumexp, _, _ = row_partials(
        x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), None, 0.0, softcap
    )
    ref, lse_rel = row_ref(m), sumexp.log().to(acc_dtype(x.dtype))
    sums = _prob_terms_sums(x, t, w, a, b, b_uniform, softcap, ref, lse_rel, terms)
    loss, cp, coefs = prob_terms(sums, ref, lse_rel, rs, cz, terms)
    return loss, ref, lse_rel, _stack_coefs(cp, coefs)


@_prob_terms_fwd.register_fake
def _(x, t, w, a, b, b_uniform, rs, cz, softcap, beta, eps1, gamma, flsd, inplace):
    return _terms_fwd_fake(x)


def _prob_terms_grad(grad, x, t, ref, lse, coefs, w, a, b, b_uniform, rs, softcap, terms,
                     out, dt):
    """Write dx (``out``, may be ``x``; None to skip) and dt (``dt`` or None) block by block.

    dx = g[(cp + cps q + cpx z) p − rs q h] x'′ (:func:`~labelsmooth.ops._terms.grad_elems` with
    the mass rs·q); dt = g rs a w (φ + ε₁ (1 − p)), φ = (1 − p)^γ (L − z) or L − z. dt is
    written first in each block, from the logits before ``out`` may overwrite them.
    """
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    grad = grad.to(acc)
    cp, tc = _unstack_coefs(coefs, terms, True)
    wv = w.to(acc) if w is not None else None
    bv = b.to(acc) if b is not None else None
    live = (grad * cp != 0) | (grad * rs != 0)
    zero = torch.zeros((), dtype=acc, device=x.device)
    br, bc = block_shape(rows, cols)
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        col = lambda v: None if v is None else v[r0:r1, None]  # noqa: E731, B023
        cb = TermCoefs(cps=col(tc.cps), cpx=col(tc.cpx), gamma=tc.gamma, low=col(tc.low))
        gr, rr, L = grad[r0:r1, None], rs[r0:r1, None], lse[r0:r1, None]
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            xf, d = softcap_with_grad(x[r0:r1, c0:c1].to(acc), softcap)
            z = xf - ref[r0:r1, None]
            if dt is not None:
                lp = z - L
                if terms.focal:
                    phi = focal_pow(-torch.expm1(lp), tc.gamma, cb.low) * (-lp)
                else:
                    phi = -lp
                if terms.poly:
                    phi = phi + terms.poly * -torch.expm1(lp)
                dtb = gr * rr * a * phi
                if wv is not None:
                    dtb = dtb * wv[c0:c1]
                dt[r0:r1, c0:c1] = dtb
            if out is None:
                continue
            q = t[r0:r1, c0:c1].to(acc) * a + (bv[c0:c1] if bv is not None else b_uniform)
            if wv is not None:
                q = q * wv[c0:c1]
            g = grad_elems(z, L, cp[r0:r1, None], rr * q, cb, q) * gr
            if d is not None:
                g = g * d
            out[r0:r1, c0:c1] = torch.where(live[r0:r1, None], g, zero)


@torch.library.custom_op("labelsmooth::fused_prob_terms_bwd_out", mutates_args=("out", "dt"))
def _prob_terms_bwd_out(
    grad: Tensor,
    x: Tensor,
    t: Tensor,
    ref: Tensor,
    lse: Tensor,
    coefs: Tensor,
    w: Optional[Tensor],
    a: float,
    b: Optional[Tensor],
    b_uniform: float,
    rs: Tensor,
    softcap: Optional[float],
    beta: float,
    eps1: float,
    gamma: Optional[float],
    flsd: bool,
    want_dx: bool,
    out: Tensor,
    dt: Tensor,
) -> None:
    """Destination-passing backward with the terms: dx into ``out`` (fresh, or ``x``; skipped
    unless ``want_dx``), dt into ``dt`` (skipped when empty)."""
    terms = _terms_of(beta, eps1, gamma, flsd)
    _prob_terms_grad(grad, x, t, ref, lse, coefs, w, a, b, b_uniform, rs, softcap, terms,
                     out if want_dx else None, dt if dt.numel() else None)


@_prob_terms_bwd_out.register_fake
def _(grad, x, t, ref, lse, coefs, w, a, b, b_uniform, rs, softcap, beta, eps1, gamma, flsd,
      want_dx, out, dt):
    return None


def _prob_terms_setup(ctx, inputs, output):
    x, t, w, a, b, b_uniform, rs, cz, softcap, beta, eps1, gamma, flsd, inplace = inputs
    _, ref, lse, coefs = output
    ctx.mark_non_differentiable(ref, lse, coefs)
    ctx.save_for_backward(x, t, ref, lse, coefs, w, b, rs, cz)
    ctx.args = (a, b_uniform, softcap, beta, eps1, gamma, flsd)
    ctx.inplace = inplace and may_write_in_place(x)


def _prob_terms_backward(ctx, grad_loss, grad_ref, grad_lse, grad_coefs):
    x, t, ref, lse, coefs, w, b, rs, cz = ctx.saved_tensors
    a, b_uniform, softcap, beta, eps1, gamma, flsd = ctx.args
    need_x, need_t = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    none = (None,) * 12
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        from labelsmooth.ops import reference

        loss, _ = reference.prob_rows(x, t, w, a, b, b_uniform, rs, cz, softcap,
                                      terms=_terms_of(beta, eps1, gamma, flsd))
        wrt = [v for v, need in ((x, need_x), (t, need_t)) if need]
        got = list(torch.autograd.grad(loss, wrt, grad_loss.to(loss.dtype), create_graph=True))
        dx = got.pop(0) if need_x else None
        dt = got.pop(0) if need_t else None
        return (dx, dt, *none)
    if need_x:
        out = _grad_buffer(x, ctx.inplace)
    else:
        out = x.new_empty(0)
    dt = torch.empty(t.shape, dtype=t.dtype, device=t.device) if need_t else t.new_empty(0)
    torch.ops.labelsmooth.fused_prob_terms_bwd_out(
        grad_loss, x, t, ref, lse, coefs, w, a, b, b_uniform, rs, softcap, beta, eps1, gamma,
        flsd, need_x, out, dt,
    )
    if need_x and ctx.inplace and not torch.compiler.is_compiling():
        _mark_consumed(x)
    return (out if need_x else None, dt if need_t else None, *none)


_prob_terms_fwd.register_autograd(_prob_terms_backward, setup_context=_prob_terms_setup)
