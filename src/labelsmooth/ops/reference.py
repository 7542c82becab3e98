"""Plain-PyTorch reference: the oracle every other implementation is tested against.

It materialises the accumulation-dtype copy of the logits and lets autograd derive the gradient,
so its backward is independent of the hand-written gradients of the fused kernels. It never writes
in place: ``inplace_backward`` is accepted for signature parity and has no effect here.
See :mod:`labelsmooth.ops` for the contract.
"""

from __future__ import annotations

import torch

from labelsmooth.ops._math import acc_dtype, apply_softcap, row_loss, row_ref, sum_exp
from labelsmooth.ops._terms import (
    NO_TERMS,
    TermCoefs,
    Terms,
    focal_elems,
    grad_elems,
    target_grad,
    term_rows,
)


def _prepare(x: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return apply_softcap(x.to(acc_dtype(x.dtype)), softcap)


def _shifted(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ref, z, L): the row reference (its max), z = x − ref (differentiable), L = logsumexp(z).

    Every quantity relative to the row max, as in the other engines: the loss is then accurate to
    the scale of the loss, not of the logits (a float32 lse near 1e6 is off by up to 0.03).
    """
    ref = row_ref(xf.detach().amax(-1)) if xf.shape[-1] > 0 else xf.detach().sum(-1)
    z = xf - ref[:, None]
    return ref, z, torch.log(sum_exp(z)).to(xf.dtype)


def _zero_mass(v: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``v`` with 0 where ``mass`` is 0 and ``v`` is infinite: 0·log 0 counts as 0."""
    return torch.where((mass == 0) & torch.isinf(v), torch.zeros((), dtype=v.dtype), v)


def index_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    ct: torch.Tensor,
    cs: torch.Tensor,
    s: torch.Tensor | None,
    s_uniform: float,
    cz: torch.Tensor | None,
    softcap: float | None,
    inplace_backward: bool = False,
    *,
    terms: Terms = NO_TERMS,
    row_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :mod:`labelsmooth.ops`; ``terms`` (reference only) adds the focal / Poly-1 /
    confidence-penalty terms of :mod:`labelsmooth.ops._terms`, the penalty scaled by
    ``row_scale`` (R,) (the rows' target weights ``w_y``, 0 on ignored rows)."""
    ref_out, _, lse_out = _shifted(_prepare(x.detach(), softcap))
    # Rows without coefficients (ignored rows) are computed on zeroed logits, so that neither
    # their loss nor their gradient depends on what they hold (±inf padding would give nan).
    # Selected before the soft-cap: its derivative at a NaN logit times 0 would be NaN.
    live = (ct != 0) | (cs != 0) if cz is None else (ct != 0) | (cs != 0) | (cz != 0)
    if terms.confidence_penalty:
        live = live | (row_scale != 0)
    xf = _prepare(torch.where(live[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device)),
                  softcap)
    ref, z, lse_rel = _shifted(xf)
    x_y = xf.gather(1, y[:, None])[:, 0]
    dsx, big_s = None, 0.0
    if s is not None:
        s = s.to(xf.dtype)
        dsx, big_s = _zero_mass(-z, s[None, :]) @ s, s.sum()
    elif s_uniform != 0.0:
        dsx, big_s = s_uniform * (-z).sum(-1), s_uniform * xf.shape[-1]
    if terms.active:
        # the target mass m_c = ct [c = y] + cs s_c, dense (this is the oracle, not the fast path)
        mass = torch.zeros_like(xf).scatter(1, y[:, None], ct[:, None].to(xf.dtype))
        if s is not None:
            mass = mass + cs[:, None].to(xf.dtype) * s[None, :]
        elif s_uniform != 0.0:
            mass = mass + cs[:, None].to(xf.dtype) * s_uniform
        p_y = torch.exp(z.gather(1, y[:, None])[:, 0] - lse_rel).detach()
        focal, extra = term_rows(z, lse_rel, mass, terms, row_scale, p_y)
        if focal is not None:  # the focal part replaces the cross-entropy; the z-loss stays
            loss = focal if cz is None else focal + cz * (ref + lse_rel).square()
        else:
            loss = row_loss(ref, lse_rel, x_y, dsx, big_s, ct, cs, cz)
        return loss + extra, ref_out + lse_out
    loss = row_loss(ref, lse_rel, x_y, dsx, big_s, ct, cs, cz)
    return loss, ref_out + lse_out


def prob_rows(
    x: torch.Tensor,
    t: torch.Tensor,
    w: torch.Tensor | None,
    a: float,
    b: torch.Tensor | None,
    b_uniform: float,
    rs: torch.Tensor,
    cz: torch.Tensor | None,
    softcap: float | None,
    inplace_backward: bool = False,
    *,
    terms: Terms = NO_TERMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """See :mod:`labelsmooth.ops`; ``terms`` (reference only) as in :func:`index_rows`, on the
    mass ``rs·q`` (q below), the confidence penalty scaled by ``rs`` and ``focal_gamma="flsd-53"``
    reading :math:`p_y = \\sum_c t_c p_c` (the unsmoothed target's probability)."""
    xf = _prepare(x, softcap)
    q = a * t.to(xf.dtype) + (b.to(xf.dtype) if b is not None else b_uniform)
    if w is not None:
        q = q * w.to(xf.dtype)
    ref, z, lse_rel = _shifted(xf)
    focal = extra = None
    if terms.active:
        p_y = (t.to(xf.dtype) * torch.exp(z - lse_rel[:, None])).sum(-1).detach()
        focal, extra = term_rows(z, lse_rel, rs[:, None] * q, terms, rs, p_y)
    if focal is not None:
        loss = focal
    else:
        # Σ_c q_c (lse − x_c) = Σ_c q_c (ref − x_c) + Q·L, with 0·log 0 = 0 where q_c = 0
        loss = rs * ((q * _zero_mass(-z, q)).sum(-1) + q.sum(-1) * lse_rel)
    if extra is not None:
        loss = loss + extra
    if cz is not None:
        loss = loss + cz * (ref + lse_rel).square()
    return loss, (ref + lse_rel).detach()


# --------------------------------------------------------------------------------------------
# The two-stage contract (see labelsmooth.ops), dense and plain: the oracle of the block engines.


def row_partials(
    x: torch.Tensor,
    y: torch.Tensor,
    s: torch.Tensor | None,
    s_uniform: float,
    softcap: float | None,
    target_mask: torch.Tensor | None = None,
    *,
    terms: Terms = NO_TERMS,
) -> tuple[torch.Tensor, ...]:
    r"""Stage one on a block of columns: per row ``(m, sumexp, x_y, dsx)`` relative to the row max.

    As :func:`labelsmooth.ops.fused.row_partials`, in dense plain PyTorch. Differentiable with
    respect to ``x`` (the max is taken as a constant), so the vocabulary-parallel reference lets
    autograd derive its gradient through the collectives. With active ``terms`` also
    ``(sex, ses)`` = :math:`\sum_c e_c (x'_c - r)` (0 unless ``confidence_penalty``) and
    :math:`\sum_c s_c e_c` (0 unless ``poly``; :math:`s_u\,\mathrm{sumexp}` for uniform shares).

    Examples:
        >>> x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
        >>> m, se, xy, dsx = row_partials(x, torch.tensor([2, 0]), None, 0.5, None)
        >>> m, xy, dsx
        (tensor([2., 3.]), tensor([2., 3.]), tensor([1.5000, 0.0000]))
    """
    xf = _prepare(x, softcap)
    acc = xf.dtype
    if xf.shape[1] == 0:  # an empty block contributes nothing
        z = xf.sum(-1)
        out = (torch.full_like(z, -torch.inf).detach(), z.to(torch.float64), z, z)
        return out + (z, z) if terms.active else out
    m = xf.detach().amax(-1)
    d = row_ref(m)[:, None] - xf  # relative to the block's max (precision)
    se = sum_exp(-d)
    ys = y.to(torch.long) if target_mask is None else torch.where(target_mask, y.to(torch.long), 0)
    xy = xf.gather(1, ys[:, None])[:, 0]
    if target_mask is not None:  # a select: 0·(−inf) at a placeholder column would be NaN
        xy = torch.where(target_mask, xy, torch.zeros((), dtype=acc, device=xy.device))
    if s is not None:  # a zero share counts 0 even at a −inf logit (0·log 0 = 0)
        s = s.to(device=xf.device, dtype=acc)
        sx = torch.where((s != 0)[None, :] | ~torch.isinf(d), d, 0.0) @ s
    elif s_uniform != 0.0:
        sx = s_uniform * d.sum(-1)
    else:  # no smoothing term (ε = 0): 0·Σx would be NaN at a −inf logit
        sx = torch.zeros_like(m)
    if not terms.active:
        return m, se, xy, sx
    e = torch.exp(-d)
    zero = torch.zeros_like(m)
    # e·(x' − r) is 0 where e is 0 (a −inf logit), never NaN
    sex = -torch.where(e > 0, e * d, 0.0).sum(-1) if terms.wants_sex else zero
    if not terms.wants_ses:
        ses = zero
    elif s is not None:
        ses = e @ s
    else:
        ses = (s_uniform * se).to(acc)
    return m, se, xy, sx, sex, ses


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
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Stage 1b (focal only) on a block of columns: per row ``(Fs, As)`` over the block's shares.

    .. math::

        F_s = \sum_c s_c\,(1 - p_c)^\gamma (\mathrm{lse} - x'_c), \qquad
        A_s = \sum_c s_c\,a_c

    with :math:`a_c` of :func:`~labelsmooth.ops._terms.focal_elems` and :math:`p` from the
    merged ``lse`` (relative to ``ref`` when given, as in ``grad_rows``); ``low`` (R,) bool is
    FLSD-53's per-row switch (:func:`~labelsmooth.ops._terms.flsd_low`). A zero share counts 0
    even at a −inf logit. Merge: SUM (blocks, ranks). Dense; no autograd.

    Examples:
        >>> x = torch.zeros(1, 2)
        >>> fs, a_s = focal_partials(x, torch.logsumexp(x, 1), 2.0, None, 0.5, None)
        >>> fs, a_s  # two classes at p = ½, share ½ each: ¼·log 2 and ¼(−log 2 − 1)
        (tensor([0.1733]), tensor([-0.5966]))
    """
    xf = _prepare(x.detach(), softcap)
    acc = xf.dtype
    lse = lse.to(acc)
    z = xf if ref is None else xf - ref.to(acc)[:, None]
    _, fg, a = focal_elems(z, lse[:, None], gamma, None if low is None else low[:, None])
    if s is not None:
        s = s.to(device=xf.device, dtype=acc)[None, :]
        on = s != 0
        return torch.where(on, s * fg, 0.0).sum(-1), torch.where(on, s * a, 0.0).sum(-1)
    if s_uniform == 0.0:
        zero = torch.zeros(xf.shape[0], dtype=acc, device=xf.device)
        return zero, zero.clone()
    return s_uniform * fg.sum(-1), s_uniform * a.sum(-1)


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
    ref: torch.Tensor | None = None,
    terms: TermCoefs | None = None,
) -> torch.Tensor:
    r"""Stage two on a block of columns: its gradient given the merged row statistics.

    As :func:`labelsmooth.ops.fused.grad_rows`, dense: ``g·(cp·p − ct·[j = y] − cs·s)`` times
    the soft-cap's derivative, rows with no coefficient exactly 0; into ``out`` when given. With
    ``terms`` (:class:`~labelsmooth.ops._terms.TermCoefs`, needs ``ref``) the generalised form
    :func:`~labelsmooth.ops._terms.grad_elems` / :func:`~labelsmooth.ops._terms.target_grad`.

    Examples:
        >>> x = torch.tensor([[0.0, 1.0, 2.0]])
        >>> one, lse = torch.ones(1), torch.logsumexp(x, 1)
        >>> grad_rows(x, torch.tensor([2]), lse, one, one, 0 * one, None, 0.0, None, one)
        tensor([[ 0.0900,  0.2447, -0.3348]])
    """
    acc = acc_dtype(x.dtype)
    xa = x.to(acc)
    xf = apply_softcap(xa, softcap)
    lse, coef_p, ct, cs, grad = (v.to(acc) for v in (lse, coef_p, ct, cs, grad))
    tgt = ct if target_mask is None else torch.where(target_mask, ct, torch.zeros_like(ct))
    ys = y.to(torch.long) if target_mask is None else torch.where(target_mask, y.to(torch.long), 0)
    smoothing = s is not None or s_uniform != 0.0
    if terms is not None:
        g = _grad_terms(xf, ys, lse, coef_p, tgt, cs, s, s_uniform, terms, target_mask, ref)
    else:
        z = xf - lse[:, None] if ref is None else (xf - ref.to(acc)[:, None]) - lse[:, None]
        g = coef_p[:, None] * torch.exp(z)
        if x.shape[1] > 0:
            g.scatter_add_(1, ys[:, None], -tgt[:, None])
        if s is not None:
            g = g - cs[:, None] * s.to(device=x.device, dtype=acc)[None, :]
        elif smoothing:
            g = g - (cs * s_uniform)[:, None]
    g = g * grad[:, None]
    if softcap is not None:
        g = g * (1 - torch.tanh(xa / softcap).square())
    live = (grad * coef_p != 0) | (grad * tgt != 0) | ((grad * cs != 0) & smoothing)
    if terms is not None and terms.cpx is not None:
        live = live | (grad * terms.cpx != 0)
    g = torch.where(live[:, None], g, torch.zeros((), dtype=acc, device=x.device))
    if out is None:
        return g.to(x.dtype)
    return out.copy_(g)


def _grad_terms(xf, ys, lse, cp, tgt, cs, s, s_uniform, terms, target_mask, ref):
    """The generalised stage two, dense: every column by grad_elems, the target by target_grad."""
    if ref is None:
        raise ValueError("Expected `ref` (the reference of `lse`) with `terms`, but got None.")
    acc = xf.dtype
    ref = ref.to(acc)
    if target_mask is not None and terms.cpt is not None:
        terms = terms._replace(cpt=torch.where(target_mask, terms.cpt, 0.0))
    col = lambda v: None if v is None else v.to(acc)[:, None]  # noqa: E731
    low = None if terms.low is None else terms.low[:, None]
    cterms = TermCoefs(cps=col(terms.cps), cpx=col(terms.cpx), gamma=terms.gamma, low=low)
    sv = s.to(device=xf.device, dtype=acc) if s is not None else None
    if sv is not None:
        cs_s, s_row = cs[:, None] * sv[None, :], sv[None, :]
    elif s_uniform != 0.0:
        cs_s, s_row = (cs * s_uniform)[:, None], s_uniform
    else:
        cs_s, s_row = None, 0.0
    g = grad_elems(xf - ref[:, None], lse[:, None], cp[:, None], cs_s, cterms, s_row)
    if xf.shape[1] == 0:
        return g
    x_y = xf.gather(1, ys[:, None])[:, 0]
    s_y = sv[ys] if sv is not None else s_uniform
    cs_sy = None if cs_s is None else cs * s_y
    gy = target_grad(ref, lse, x_y, cp, tgt, cs_sy, terms, s_y)
    return g.scatter(1, ys[:, None], gy[:, None])
