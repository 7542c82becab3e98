r"""Chunked per-row primitives of the fused engine, in plain PyTorch (no compiler needed).

Both primitives walk the ``(R, K)`` logits in blocks of at most :data:`CHUNK_ELEMS` elements (a
few rows at a time, and column blocks of :data:`MAX_COLS` when a row alone is wider), so every
temporary lives in a small reusable workspace that stays in cache: the log-probabilities, the
smoothed targets and the exponentials are never materialised at full size.

Numerics: float64 logits accumulate in float64, every other dtype in float32; low-precision logits
are read in their own dtype and converted one block at a time.

These functions are the shared building blocks of the single-device loss, the fused linear loss
and the vocabulary-parallel loss; their names and semantics are fixed (see :mod:`.fused`).
"""

from __future__ import annotations

import mmap
import os

import torch

from labelsmooth.ops import _fused_inductor as _ind
from labelsmooth.ops import _fused_native as _nat
from labelsmooth.ops._math import (
    acc_dtype,
    apply_softcap,
    softcap_with_grad,
    merge_max_sumexp,
    rebase_partials,
    row_ref,
    shift_sum,
)
from labelsmooth.ops._terms import (
    NO_TERMS,
    TermCoefs,
    Terms,
    focal_elems,
    grad_elems,
    target_grad,
)

#: Elements per block (rows × columns): 4 MiB of float32, cache-resident on the reference machine.
CHUNK_ELEMS = 1 << 20
#: Column block width when a single row is wider than this (online merge of the statistics).
MAX_COLS = 1 << 18


#: Fresh gradient buffers at least this large (bytes) are backed by transparent huge pages.
HUGEPAGE_MIN_BYTES = 1 << 25


def empty_grad(rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fresh (rows, cols) buffer for a gradient, preferring transparent huge pages on Linux.

    A new multi-GiB tensor costs one page fault per 4 KiB page on first touch: for an 8192×32000
    float32 gradient that is most of the time of the whole loss. Backing large buffers by an
    anonymous mapping advised ``MADV_HUGEPAGE`` cuts the faults 512-fold (measured 115 → 14 ms per
    256 MiB here). Falls back to :func:`torch.empty` off Linux/CPU, for small buffers, when the
    kernel refuses, or when ``LABELSMOOTH_HUGEPAGES=0``. The memory is returned to the system
    when the tensor is freed, like any other.
    """
    nbytes = rows * cols * torch.empty((), dtype=dtype).element_size()
    if (
        device.type == "cpu"
        and nbytes >= HUGEPAGE_MIN_BYTES
        and os.environ.get("LABELSMOOTH_HUGEPAGES", "1") != "0"
        and hasattr(mmap, "MADV_HUGEPAGE")
    ):
        try:
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            buf.madvise(mmap.MADV_HUGEPAGE)
            return torch.frombuffer(buf, dtype=dtype).view(rows, cols)
        except (OSError, ValueError, AttributeError):
            pass
    return torch.empty((rows, cols), dtype=dtype, device=device)


def block_shape(rows: int, cols: int, chunk_elems: int | None = None) -> tuple[int, int]:
    """(rows per block, columns per block) for an (rows, cols) matrix."""
    budget = CHUNK_ELEMS if chunk_elems is None else chunk_elems
    bc = min(max(cols, 1), MAX_COLS)
    br = max(1, min(max(rows, 1), budget // bc))
    return br, bc


def fast_kernels(x: torch.Tensor, softcap: float | None = None, gamma=None) -> list:
    """The kernel modules that may process ``x``, in order of preference: the hand-written
    native kernels (:mod:`._fused_native`), then the Inductor ones (:mod:`._fused_inductor`);
    empty for the chunked eager path. Each module's functions answer ok = False when they
    cannot run (a failed build or compile), and the caller tries the next."""
    kernels = []
    if _nat.use_native(x, softcap, gamma):
        kernels.append(_nat)
    if _ind.use_inductor(x):
        kernels.append(_ind)
    return kernels


def _safe_index(y: torch.Tensor, target_mask: torch.Tensor | None) -> torch.Tensor:
    y = y.to(torch.long)
    if target_mask is None:
        return y
    return torch.where(target_mask, y, torch.zeros_like(y))


def _load(
    xb: torch.Tensor, acc: torch.dtype, ws: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    """The block in the accumulation dtype (soft-capped), in ``ws`` unless it can be a view."""
    if softcap is not None:
        # convert first: bf16 / float would round the quotient to bf16
        ws.copy_(xb).div_(softcap).tanh_().mul_(softcap)
        return ws
    if xb.dtype == acc:
        return xb
    ws.copy_(xb)
    return ws


@torch.no_grad()
def row_partials(
    x: torch.Tensor,
    y: torch.Tensor,
    s: torch.Tensor | None,
    s_uniform: float,
    softcap: float | None,
    target_mask: torch.Tensor | None = None,
    *,
    chunk_elems: int | None = None,
    terms: Terms = NO_TERMS,
) -> tuple[torch.Tensor, ...]:
    r"""Per-row statistics of the (soft-capped) logits in chunked passes, relative to the row max.

    For each row :math:`n` of ``x`` (R, K), with :math:`x'` the soft-capped logits
    (:math:`c\tanh(x/c)` when ``softcap=c``, else :math:`x`) and :math:`r_n` =
    :func:`~labelsmooth.ops._math.row_ref` of the row max (the max itself; 0 for an all −inf row):

    .. math::

        m_n = \max_c x'_{n,c}, \quad \mathrm{sumexp}_n = \sum_c e^{x'_{n,c} - r_n}, \quad
        x_{y,n} = x'_{n, y_n}\,[\mathrm{mask}_n], \quad dsx_n = \sum_c s_c\,(r_n - x'_{n,c})

    so that :math:`\mathrm{lse}_n = r_n + \log \mathrm{sumexp}_n`. ``sumexp`` is float64 for
    every input dtype, the terms at the max summed apart (as :func:`~labelsmooth.ops._math.sum_exp`):
    for a confident row it is :math:`1 + r` with :math:`r \approx 10^{-7}` the row's loss, which
    float32 cannot hold. ``dsx`` is taken relative to the
    max so that it keeps float32 precision when the logits carry a large offset; a class with a
    zero share counts 0 even at a −inf logit (0·log 0 = 0). A row holding +inf or NaN gets a NaN
    ``sumexp`` (its loss and gradient are NaN, as in PyTorch).

    Args:
        x: (R, K) logits, any floating dtype and strides.
        y: (R,) integer target columns; valid where ``target_mask`` is True, ignored elsewhere.
        s: (K,) smoothing shares, or None for the uniform share ``s_uniform`` (0 = no term, dsx = 0).
        s_uniform: the uniform share when ``s`` is None.
        softcap: soft-capping constant c, or None.
        target_mask: (R,) bool, None meaning all True; rows where False get ``x_y = 0``.
        chunk_elems: elements per block (default :data:`CHUNK_ELEMS`).
        terms: the optional terms; when active, two more statistics (see :mod:`labelsmooth.ops`):
            :math:`sex_n = \sum_c e^{x'_{n,c} - r_n}(x'_{n,c} - r_n)` (confidence penalty, else 0)
            and :math:`ses_n = \sum_c s_c e^{x'_{n,c} - r_n}` (Poly-1, else 0), in the same pass.

    Returns:
        ``(m, sumexp, x_y, dsx)``, each (R,) in the accumulation dtype but ``sumexp`` (float64);
        ``(m, sumexp, x_y, dsx, sex, ses)`` with active ``terms``.

    Examples:
        >>> x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
        >>> m, se, xy, dsx = row_partials(x, torch.tensor([2, 0]), None, 0.5, None)
        >>> m, xy, dsx
        (tensor([2., 3.]), tensor([2., 3.]), tensor([1.5000, 0.0000]))
        >>> torch.allclose((m + se.log()).float(), torch.logsumexp(x, 1))
        True
    """
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    dev = x.device
    ys = _safe_index(y, target_mask)
    x_y = apply_softcap(x.gather(1, ys[:, None])[:, 0].to(acc), softcap)
    if target_mask is not None:
        x_y = torch.where(target_mask, x_y, torch.zeros_like(x_y))
    m = torch.empty(rows, dtype=acc, device=dev)
    sumexp = torch.empty(rows, dtype=torch.float64, device=dev)
    want_sx = s is not None or s_uniform != 0.0
    sx = torch.zeros(rows, dtype=acc, device=dev)
    extras = terms.active
    want_sex, want_ses = terms.wants_sex, terms.wants_ses and s is not None
    sex = torch.zeros(rows, dtype=acc, device=dev) if extras else None
    ses = torch.zeros(rows, dtype=acc, device=dev) if extras else None
    if rows == 0:
        return (m, sumexp, x_y, sx, sex, ses) if extras else (m, sumexp, x_y, sx)
    share_on = None
    if s is not None:
        s = s.to(device=dev, dtype=acc)
        # zero shares must count 0 at a −inf logit; on the CPU, look once whether there are any
        if dev.type != "cpu" or bool((s == 0).any()):
            share_on = s != 0
    for kern in fast_kernels(x, softcap) if chunk_elems is None else ():
        if extras and (want_sex or want_ses):
            ok, res = kern.stats_terms(x, ys, s, share_on, target_mask, softcap, want_sx,
                                       want_sex, want_ses)
        else:
            ok, res = kern.stats(x, ys, s, share_on, target_mask, softcap, want_sx)
            res = res if not ok or not extras else res + (sex, ses)
        if ok:
            m, sumexp, x_y, sx = res[:4]
            if s is None and want_sx:
                sx = sx * s_uniform
            if not extras:
                return m, sumexp, x_y, sx
            sex, ses = res[4], res[5]
            if terms.wants_ses and s is None:
                ses = (s_uniform * sumexp).to(acc)
            return m, sumexp, x_y, sx, sex, ses
    br, bc = block_shape(rows, cols, chunk_elems)
    need_copy = softcap is not None or x.dtype != acc
    ws_x = torch.empty(br, bc, dtype=acc, device=dev) if need_copy else None
    ws_e = torch.empty(br, bc, dtype=acc, device=dev)
    ws_tie = torch.empty(br, bc, dtype=torch.bool, device=dev)
    want_t = want_sex or want_ses
    ws_t = torch.empty(br, bc, dtype=acc, device=dev) if want_t else None
    lowest = torch.finfo(acc).min
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        ref = None
        for c0 in range(0, max(cols, 1), bc):
            c1 = min(cols, c0 + bc)
            xb = x[r0:r1, c0:c1]
            xf = _load(xb, acc, ws_x[: r1 - r0, : c1 - c0], softcap) if need_copy else xb
            mb = (
                xf.amax(1) if c1 > c0 else torch.full((r1 - r0,), -torch.inf, dtype=acc, device=dev)
            )
            e = ws_e[: r1 - r0, : c1 - c0]
            refb = row_ref(mb)
            torch.sub(xf, refb[:, None], out=e)
            sxb = None
            if want_sx:
                # Σ s_c (ref − x_c) from the shifted block, before it turns into exponentials
                # (0 − Σ, not −Σ: a row of equal logits gets +0, not −0)
                if s is None:
                    sxb = 0.0 - e.sum(1)
                elif share_on is None:
                    sxb = 0.0 - e @ s[c0:c1]
                else:
                    sxb = 0.0 - torch.where(share_on[c0:c1], e, 0.0) @ s[c0:c1]
            # the terms at the block max (e^0 = 1) apart, summed in float64 (see sum_exp)
            tie = torch.eq(e, 0, out=ws_tie[: r1 - r0, : c1 - c0])
            ties = tie.sum(1).to(torch.float64)
            sexb = sesb = None
            if want_t:
                # the terms' partials from the same exponentials: e·z with z clamped to the
                # lowest finite value, so a −inf logit (e = 0) counts 0 and NaN stays NaN
                tb = torch.exp(e, out=ws_t[: r1 - r0, : c1 - c0])
                if want_ses:
                    sesb = tb @ s[c0:c1]
                if want_sex:
                    sexb = e.clamp_min_(lowest).mul_(tb).sum(1)
                seb = tb.masked_fill_(tie, 0).sum(1).to(torch.float64) + ties
            else:
                seb = e.exp_().masked_fill_(tie, 0).sum(1).to(torch.float64) + ties
            if extras:
                zero = torch.zeros(r1 - r0, dtype=acc, device=dev)
                sexb = zero if sexb is None else sexb
                sesb = zero if sesb is None else sesb
            if c0 == 0:
                m[r0:r1] = mb
                sumexp[r0:r1] = seb
                ref = refb
                if sxb is not None:
                    sx[r0:r1] = sxb
                    big_s = (c1 - c0) if s is None else s[c0:c1].sum()
                if extras:
                    sex[r0:r1], ses[r0:r1] = sexb, sesb
            else:
                if extras:
                    # the terms' partials move to the union's reference (one formula: _math)
                    new_ref = row_ref(torch.maximum(m[r0:r1], mb))
                    zero = torch.zeros_like(sexb)
                    old = rebase_partials((m[r0:r1], sumexp[r0:r1], zero, zero, sex[r0:r1],
                                           ses[r0:r1]), 0.0, new_ref)
                    blk = rebase_partials((mb, seb, zero, zero, sexb, sesb), 0.0, new_ref)
                    if want_sex:
                        sex[r0:r1] = old[4] + blk[4]
                    if want_ses:
                        ses[r0:r1] = old[5] + blk[5]
                # online merge: each sum is relative to the reference of its own max
                m[r0:r1], sumexp[r0:r1] = merge_max_sumexp(m[r0:r1], sumexp[r0:r1], mb, seb)
                new_ref = row_ref(m[r0:r1])
                if sxb is not None:
                    sb = (c1 - c0) if s is None else s[c0:c1].sum()
                    sx[r0:r1] = shift_sum(sx[r0:r1], big_s, ref, new_ref) + shift_sum(
                        sxb, sb, refb, new_ref
                    )
                    big_s = big_s + sb
                ref = new_ref
    if s is None and want_sx:
        sx.mul_(s_uniform)
    if not extras:
        return m, sumexp, x_y, sx
    if terms.wants_ses and s is None:
        ses = (s_uniform * sumexp).to(acc)
    return m, sumexp, x_y, sx, sex, ses


@torch.no_grad()
def grad_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    lse: torch.Tensor,
    coef_p: torch.Tensor,
    ct: torch.Tensor,
    cs: torch.Tensor,
    s: torch.Tensor | None,
    s_uniform: float,
    softcap: float | None,
    grad: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    chunk_elems: int | None = None,
    ref: torch.Tensor | None = None,
    terms: TermCoefs | None = None,
) -> torch.Tensor:
    r"""Write :math:`\partial \mathrm{loss}/\partial x` row block by row block.

    .. math::

        \mathrm{out}_{n,j} = g_n\,\big(cp_n\, p_{n,j} - ct_n\,[j = y_n \wedge \mathrm{mask}_n]
            - cs_n\, s_j\big)\, \frac{\partial x'_{n,j}}{\partial x_{n,j}},
        \qquad p_{n,j} = e^{x'_{n,j} - \mathrm{lse}_n}

    with :math:`x'` the soft-capped logits (derivative :math:`1 - \tanh^2(x/c)`), ``cp`` =
    ``coef_p`` (the caller folds :math:`ct + cs\,S + 2\,cz\,\mathrm{lse}` with S the sum of all
    shares, global when the vocabulary is sharded) and ``g`` = ``grad``. The target column is
    computed in the accumulation dtype from the original logit and rounded once, so confident
    rows (:math:`p_y \to 1`) keep their precision.

    With ``ref`` (the :func:`~labelsmooth.ops._math.row_ref` of the row max) ``lse`` is taken
    relative to it, :math:`p = e^{(x' - r) - L}`: at large logits an absolute float32 lse is off
    by up to half its ulp (0.03 at 1e6), every probability by as much relatively.

    Args:
        x: (R, K) logits. lse, coef_p, ct, cs, grad: (R,) in the accumulation dtype.
        y, s, s_uniform, softcap, target_mask: as in :func:`row_partials`.
        out: destination (R, K) in ``x.dtype``; allocated when None; may be ``x`` itself.
        ref: (R,) reference of ``lse`` (see above), or None for an absolute ``lse``.
        terms: the optional terms' coefficients (:func:`labelsmooth.ops._terms.term_coefs`;
            ``ref`` required): the generalised stage two of :mod:`labelsmooth.ops`.

    Returns:
        ``out``.

    Examples:
        >>> x = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
        >>> y, eps = torch.tensor([2]), 0.3
        >>> torch.nn.functional.cross_entropy(x, y, label_smoothing=eps).backward()
        >>> lse = torch.logsumexp(x.detach(), 1)
        >>> one = torch.ones(1)
        >>> g = grad_rows(x.detach(), y, lse, one, (1 - eps) * one, one, None, eps / 3, None, one)
        >>> torch.allclose(g, x.grad)
        True
    """
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    dev = x.device
    if out is None:
        out = empty_grad(rows, cols, x.dtype, dev)
    if rows == 0:
        return out
    if terms is not None:
        return _grad_rows_terms(x, y, lse, coef_p, ct, cs, s, s_uniform, softcap, grad,
                                target_mask, out, chunk_elems, ref, terms)
    ys = _safe_index(y, target_mask)
    lse, coef_p, ct, cs, grad = (v.to(acc) for v in (lse, coef_p, ct, cs, grad))
    # p = exp(x' − ref) · exp(−L): the shift by the row's own reference is exact, and 1/sumexp
    # folds into the per-row factor (no extra pass over the block)
    if ref is None:
        ref, inv = lse, None
    else:
        ref, inv = ref.to(acc), torch.exp(-lse)
    if s is not None:
        s = s.to(device=dev, dtype=acc)
    smoothing = s is not None or s_uniform != 0.0
    # The target column, from the original logit (read before ``out`` may overwrite it).
    xy = x.gather(1, ys[:, None])[:, 0].to(acc)
    xy, dy = softcap_with_grad(xy, softcap)
    tgt = ct if target_mask is None else torch.where(target_mask, ct, torch.zeros_like(ct))
    z = xy - ref if inv is None else (xy - ref) - lse
    # cp·e^z − tgt as cp·(e^z − 1) + (cp − tgt): a confident row (p_y → 1) keeps its digits
    gy = coef_p * torch.expm1(z) + (coef_p - tgt)
    if smoothing:
        gy = gy - cs * (s[ys] if s is not None else s_uniform)
    gy = gy * grad if dy is None else gy * grad * dy
    a = (grad * coef_p)[:, None]
    b = grad * cs
    bu = (b * s_uniform)[:, None] if s is None and smoothing else None
    # Rows with no coefficient (ignored rows, zero upstream gradient) get exactly 0 by selection:
    # multiplying would give 0·inf = nan when their (padding) logits hold ±inf or nan.
    live = (a[:, 0] != 0) | (b != 0) | (tgt * grad != 0)
    gy = torch.where(live, gy, torch.zeros_like(gy))
    ap = a if inv is None else a * inv[:, None]
    for kern in fast_kernels(x, softcap) if chunk_elems is None else ():
        ok = kern.grad(
            x,
            ref,
            ap[:, 0],
            b if s is not None else None,
            s,
            bu[:, 0] if bu is not None else None,
            softcap,
            out,
            live,
        )
        if ok:
            # the target column, from the expm1 form computed above (p_y → 1 keeps digits;
            # the kernel leaves it without its target term)
            out.scatter_(1, ys[:, None], gy.to(out.dtype)[:, None])
            return out

    # On the CPU, reading an (R,) flag costs no device sync: skip the fill when every row is live
    # (the common case). Elsewhere always fill (no host read in the backward).
    dead = None if dev.type == "cpu" and bool(live.all()) else ~live
    br, bc = block_shape(rows, cols, chunk_elems)
    direct = softcap is None and out.dtype == acc  # compute straight into ``out``
    ws = torch.empty(br, bc, dtype=acc, device=dev) if not direct else None
    ws_t = torch.empty(br, bc, dtype=acc, device=dev) if softcap is not None else None
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            xb, ob = x[r0:r1, c0:c1], out[r0:r1, c0:c1]
            w = ob if direct else ws[: r1 - r0, : c1 - c0]
            if softcap is not None:
                t = ws_t[: r1 - r0, : c1 - c0]
                t.copy_(xb).div_(softcap).tanh_()
                torch.mul(t, softcap, out=w)
                w.sub_(ref[r0:r1, None])
            else:
                torch.sub(xb, ref[r0:r1, None], out=w)
            w.exp_().mul_(ap[r0:r1])
            if s is not None:
                w.addr_(b[r0:r1], s[c0:c1], alpha=-1)
            elif bu is not None:
                w.sub_(bu[r0:r1])
            if softcap is not None:
                # chain rule: × (1 − tanh²), with t overwritten by −t² + 1
                w.mul_(t.square_().neg_().add_(1))
            if dead is not None:
                w.masked_fill_(dead[r0:r1, None], 0)
            if not direct:
                ob.copy_(w)
    out.scatter_(1, ys[:, None], gy.to(out.dtype)[:, None])
    return out


def _grad_rows_terms(x, y, lse, coef_p, ct, cs, s, s_uniform, softcap, grad, target_mask, out,
                     chunk_elems, ref, terms: TermCoefs):
    """:func:`grad_rows` with the optional terms: every column by ``_terms.grad_elems`` (compiled,
    or block by block), then the target column by ``_terms.target_grad``."""
    if ref is None:
        raise ValueError("Expected `ref` (the reference of `lse`) with `terms`, but got None.")
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    dev = x.device
    ys = _safe_index(y, target_mask)
    lse, coef_p, ct, cs, grad, ref = (v.to(acc) for v in (lse, coef_p, ct, cs, grad, ref))
    tgt = ct if target_mask is None else torch.where(target_mask, ct, torch.zeros_like(ct))
    if target_mask is not None and terms.cpt is not None:
        terms = terms._replace(cpt=torch.where(target_mask, terms.cpt, 0.0))
    if s is not None:
        s = s.to(device=dev, dtype=acc)
    smoothing = s is not None or s_uniform != 0.0
    # the target column from the original logit (read before ``out`` may overwrite it)
    xy = x.gather(1, ys[:, None])[:, 0].to(acc)
    xy, dy = softcap_with_grad(xy, softcap)
    s_y = s[ys] if s is not None else s_uniform
    cs_sy = cs * s_y if smoothing else None
    gy = target_grad(ref, lse, xy, coef_p, tgt, cs_sy, terms, s_y) * grad
    if dy is not None:
        gy = gy * dy
    live = (grad * coef_p != 0) | (grad * tgt != 0) | ((grad * cs != 0) & smoothing)
    if terms.cpx is not None:
        live = live | (grad * terms.cpx != 0)
    gy = torch.where(live, gy, torch.zeros_like(gy))
    cps = terms.cps.to(acc) if terms.cps is not None else None
    cpx = terms.cpx.to(acc) if terms.cpx is not None else None
    csk = cs if s is not None else (cs * s_uniform if smoothing else None)
    for kern in fast_kernels(x, softcap, terms.gamma) if chunk_elems is None else ():
        if kern.grad_terms(x, ref, lse, grad, coef_p, csk, s, cps, cpx, terms.low, live,
                           out, terms.gamma, softcap):
            out.scatter_(1, ys[:, None], gy.to(out.dtype)[:, None])
            return out
    br, bc = block_shape(rows, cols, chunk_elems)
    zero = torch.zeros((), dtype=acc, device=dev)
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        col = lambda v: None if v is None else v[r0:r1, None]  # noqa: E731, B023
        coefs = TermCoefs(cps=col(cps), cpx=col(cpx), gamma=terms.gamma, low=col(terms.low))
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            xf, d = softcap_with_grad(x[r0:r1, c0:c1].to(acc), softcap)
            if s is not None:
                cs_s, s_row = cs[r0:r1, None] * s[None, c0:c1], s[None, c0:c1]
            elif smoothing:
                cs_s, s_row = (cs[r0:r1] * s_uniform)[:, None], s_uniform
            else:
                cs_s, s_row = None, 0.0
            g = grad_elems(xf - ref[r0:r1, None], lse[r0:r1, None], coef_p[r0:r1, None], cs_s,
                           coefs, s_row) * grad[r0:r1, None]
            if d is not None:
                g = g * d
            out[r0:r1, c0:c1] = torch.where(live[r0:r1, None], g, zero)
    out.scatter_(1, ys[:, None], gy.to(out.dtype)[:, None])
    return out


@torch.no_grad()
def focal_partials(
    x: torch.Tensor,
    lse: torch.Tensor,
    gamma: float | str,
    s: torch.Tensor | None,
    s_uniform: float,
    softcap: float | None,
    *,
    ref: torch.Tensor | None = None,
    low: torch.Tensor | None = None,
    chunk_elems: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The focal stage on a block of columns: per row :math:`(\sum_c s_c f_c g_c, \sum_c s_c a_c)`.

    :math:`f_c g_c = (1 - p_c)^\gamma(L - z_c)` and :math:`a_c` as
    :func:`labelsmooth.ops._terms.focal_elems`, with :math:`z = x' - r` (``ref``; 0 when None) and
    ``lse`` = :math:`L` relative to it; shares only (the target's part is per-row math). A zero
    share counts 0 even at a −inf logit. One pass over the logits, compiled for large CPU inputs
    (see :mod:`._fused_inductor`), else chunked; integer γ and FLSD-53 (``low``: True where
    γ = 5) by multiplication.

    Examples:
        >>> x = torch.zeros(1, 2)
        >>> focal_partials(x, torch.logsumexp(x, 1), 2.0, None, 0.5, None)
        (tensor([0.1733]), tensor([-0.5966]))
    """
    rows, cols = x.shape
    acc = acc_dtype(x.dtype)
    dev = x.device
    fs = torch.zeros(rows, dtype=acc, device=dev)
    a_s = torch.zeros(rows, dtype=acc, device=dev)
    if rows == 0 or cols == 0 or (s is None and s_uniform == 0.0):
        return fs, a_s
    lse = lse.to(acc)
    ref = torch.zeros_like(lse) if ref is None else ref.to(acc)
    share_on = None
    if s is not None:
        s = s.to(device=dev, dtype=acc)
        if dev.type != "cpu" or bool((s == 0).any()):
            share_on = s != 0
    if chunk_elems is None and _ind.use_inductor(x):
        ok, res = _ind.focal(x, ref, lse, s, share_on, low, gamma, softcap)
        if ok:
            fs, a_s = res
            return (fs * s_uniform, a_s * s_uniform) if s is None else (fs, a_s)
    br, bc = block_shape(rows, cols, chunk_elems)
    zero = torch.zeros((), dtype=acc, device=dev)
    for r0 in range(0, rows, br):
        r1 = min(rows, r0 + br)
        lo = None if low is None else low[r0:r1, None]
        for c0 in range(0, cols, bc):
            c1 = min(cols, c0 + bc)
            xf = apply_softcap(x[r0:r1, c0:c1].to(acc), softcap)
            _, fg, a = focal_elems(xf - ref[r0:r1, None], lse[r0:r1, None], gamma, lo)
            if s is not None:
                fg, a = fg * s[None, c0:c1], a * s[None, c0:c1]
                if share_on is not None:
                    fg = torch.where(share_on[None, c0:c1], fg, zero)
                    a = torch.where(share_on[None, c0:c1], a, zero)
            fs[r0:r1] += fg.sum(1)
            a_s[r0:r1] += a.sum(1)
    if s is None:
        fs.mul_(s_uniform)
        a_s.mul_(s_uniform)
    return fs, a_s


@torch.no_grad()
def row_partials_focal(
    x: torch.Tensor,
    y: torch.Tensor,
    s: torch.Tensor | None,
    s_uniform: float,
    softcap: float | None,
    terms: Terms,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
    """Whole rows with focal and smoothing: ``(row_partials(terms=), focal sums, low)``.

    Large CPU inputs take the compiled kernels (:func:`._fused_inductor.stats_terms`): integer
    γ ≤ :data:`~labelsmooth.ops._terms.FOCAL_MOMENTS_MAX` in the statistics pass itself (power
    sums, :func:`~labelsmooth.ops._terms.focal_from_moments`), other γ in one more compiled pass
    once the lse is known. Otherwise :func:`row_partials` then :func:`focal_partials` (two chunked
    passes). ``low`` is FLSD-53's per-row switch (or None)."""
    from labelsmooth.ops._terms import FLSD, flsd_rows

    acc = acc_dtype(x.dtype)
    flsd = terms.focal_gamma == FLSD
    for kern in fast_kernels(x, softcap, terms.focal_gamma) if x.shape[0] else ():
        sv = s.to(device=x.device, dtype=acc) if s is not None else None
        share_on = None if sv is None or not bool((sv == 0).any()) else sv != 0
        want_sx = s is not None or s_uniform != 0.0
        ok, res = kern.stats_terms(x, _safe_index(y, None), sv, share_on, None, softcap, want_sx,
                                   terms.wants_sex, terms.wants_ses and s is not None,
                                   terms.focal_gamma, flsd)
        if ok:
            m, sumexp, x_y, sx, sex, ses, fs, a_s, low = res
            if s is None:
                sx, fs, a_s = sx * s_uniform, fs * s_uniform, a_s * s_uniform
                if terms.wants_ses:
                    ses = (s_uniform * sumexp).to(acc)
            return (m, sumexp, x_y, sx, sex, ses), (fs, a_s), (low if flsd else None)
    parts = row_partials(x, y, s, s_uniform, softcap, terms=terms)
    ref, lse = row_ref(parts[0]), parts[1].log().to(acc)
    low = flsd_rows(terms, ref, lse, parts[2])
    return parts, focal_partials(x, lse, terms.focal_gamma, s, s_uniform, softcap, ref=ref,
                                 low=low), low
