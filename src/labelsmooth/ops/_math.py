r"""Small formulas shared by every engine (single-device, fused linear, vocabulary-parallel).

One home for each so that the engines cannot drift apart:

* :func:`acc_dtype` — the accumulation dtype rule;
* :func:`apply_softcap` — :math:`c\tanh(x/c)`;
* :func:`row_ref` — the reference point (the row max, 0 for an all −inf row) that every row
  statistic is taken relative to, so float32 keeps its precision at large logits;
* :func:`sum_exp` — the sum of exponentials of a max-shifted row, in float64 with the max's 1
  counted apart (confident rows keep their tiny loss);
* :func:`shift_sum` — move a share-weighted sum :math:`\sum_c s_c(r - x_c)` to another reference;
* :func:`merge_max_sumexp` — the online merge of two (max, sum of exponentials) partials;
* :func:`rebase_partials` — move one block's row statistics to another reference (the rescale
  every merge, within a device or across ranks before the SUM all-reduce, applies);
* :func:`merge_partials` — the merge of two blocks' row statistics (stage one of the two-stage
  contract of :mod:`labelsmooth.ops`, with the optional terms' ``sex``/``ses``) into those of
  their union;
* :func:`row_loss` — :math:`ct(\mathrm{lse}-x_y) + cs(S\,\mathrm{lse}-\sum_c s_c x_c) + cz\,\mathrm{lse}^2`,
  evaluated relative to the row max;
* :func:`grad_coef` — the coefficient of :math:`p` in the gradient,
  :math:`ct + cs\,S + 2\,cz\,\mathrm{lse}`;
* :func:`index_grad_dense` — the dense gradient of index-target rows (the compiled CPU kernel
  and the differentiable double-backward both evaluate it).

All are plain differentiable tensor expressions with no host-device sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "acc_dtype",
    "apply_softcap",
    "grad_coef",
    "index_grad_dense",
    "merge_max_sumexp",
    "merge_partials",
    "rebase_partials",
    "row_loss",
    "row_ref",
    "shift_sum",
    "softcap_with_grad",
    "sum_exp",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, every other dtype accumulates in float32.

    Examples:
        >>> acc_dtype(torch.bfloat16), acc_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def apply_softcap(x: Tensor, c: float | None) -> Tensor:
    r"""Soft-capped logits :math:`c\tanh(x/c)`; ``x`` itself when ``c`` is None.

    Examples:
        >>> apply_softcap(torch.tensor([0.0, 100.0]), 2.0)
        tensor([0., 2.])
    """
    return x if c is None else c * torch.tanh(x / c)


def softcap_with_grad(x: Tensor, c: float | None) -> tuple[Tensor, Tensor | None]:
    r"""(:math:`c\tanh(x/c)`, its derivative :math:`1 - \tanh^2(x/c)`) sharing one tanh; ``(x, None)``
    when ``c`` is None (the chain-rule factor of every engine's soft-capped gradient).

    Examples:
        >>> softcap_with_grad(torch.tensor([0.0, 100.0]), 2.0)
        (tensor([0., 2.]), tensor([1., 0.]))
    """
    if c is None:
        return x, None
    t = torch.tanh(x / c)
    return c * t, 1 - t * t


def row_ref(m: Tensor) -> Tensor:
    r"""The reference point of a row's exponentials: its max ``m``, with −inf replaced by 0.

    Every engine takes the row's statistics relative to it — :math:`\sum_c e^{x_c - r}`,
    :math:`r - x_y`, :math:`\sum_c s_c (r - x_c)` — so their rounding errors stay at the scale of
    the loss, not of the logits (a row offset by 1e6 loses nothing). An all −inf row gets 0
    (sum 0, lse −inf, as :func:`torch.logsumexp`). A row holding +inf or NaN keeps its max, so
    its sum of exponentials is NaN and so are its loss and gradient, as in PyTorch.

    Examples:
        >>> row_ref(torch.tensor([1.5, -float("inf"), float("inf")]))
        tensor([1.5000, 0.0000,    inf])
    """
    return torch.where(m == -torch.inf, torch.zeros_like(m), m)


def sum_exp(z: Tensor) -> Tensor:
    r""":math:`\sum_c e^{z_c}` over the last dimension of a row shifted by its max (z ≤ 0), in float64.

    The terms at the max (:math:`e^0 = 1`, ties included) are summed apart from the rest, and the
    two sums are added in float64: a confident row's sum :math:`1 + r` keeps its excess
    :math:`r \approx 10^{-7}`, which float32 would round to a multiple of 1.2e-7 (or lose, when
    the small terms are added one by one to the 1). Its log is then the row's loss to float32
    precision, where torch's log_softmax keeps only an ulp of 1. Differentiable; no host sync.

    Examples:
        >>> s = sum_exp(torch.tensor([[0.0, -20.0, -21.0]]))
        >>> s.dtype, float(s.log()) > 0
        (torch.float64, True)
    """
    e = torch.exp(z)
    tie = z == 0
    zero = torch.zeros((), dtype=e.dtype, device=e.device)
    return (torch.where(tie, e, zero).sum(-1).to(torch.float64)
            + torch.where(tie, zero, e).sum(-1).to(torch.float64))


def shift_sum(d: Tensor, S: Tensor | float, old: Tensor, new: Tensor) -> Tensor:
    r"""Move :math:`d = \sum_c s_c (r_{old} - x_c)` to the reference ``new``: :math:`d + S(r_{new} - r_{old})`.

    ``S`` is :math:`\sum_c s_c` over the same classes; a part with ``S == 0`` (no smoothing mass,
    an empty block) is returned unchanged, so no ``0·inf`` appears.

    Examples:
        >>> shift_sum(torch.tensor([1.0]), 2.0, torch.tensor([3.0]), torch.tensor([5.0]))
        tensor([5.])
    """
    moved = d + S * (new - old)
    if isinstance(S, Tensor):
        return torch.where(S == 0, d, moved)
    return d if S == 0 else moved


def merge_max_sumexp(m1: Tensor, e1: Tensor, m2: Tensor, e2: Tensor) -> tuple[Tensor, Tensor]:
    r"""Merge two partials (max, Σexp relative to ``row_ref(max)``) of the same rows.

    .. math::

        m = \max(m_1, m_2), \quad e = e_1 e^{\bar m_1 - \bar m} + e_2 e^{\bar m_2 - \bar m},
        \quad \bar m = \mathrm{row\_ref}(m)

    A part with sum 0 (all −inf, or empty) adds exactly 0; :math:`\bar m + \log e` is then the
    lse of the union (NaN when a part holds +inf, as :func:`row_ref` says).

    Examples:
        >>> a, b = torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, -float("inf")]])
        >>> m, e = merge_max_sumexp(a.amax(1), (a - 1).exp().sum(1), b.amax(1), (b - 3).exp().sum(1))
        >>> torch.allclose(m + e.log(), torch.logsumexp(torch.cat([a, b], 1), 1))
        True
    """
    m = torch.maximum(m1, m2)
    ref = row_ref(m)
    zero = torch.zeros_like(e1)
    e = torch.where(e1 == 0, zero, e1 * torch.exp(row_ref(m1) - ref)) + torch.where(
        e2 == 0, zero, e2 * torch.exp(row_ref(m2) - ref)
    )
    return m, e


def rebase_partials(
    part: tuple[Tensor, ...], s_part: Tensor | float, new: Tensor
) -> tuple[Tensor, ...]:
    r"""One block's statistics moved from the reference of its own max to the reference ``new``.

    ``part`` is ``(m, sumexp, x_y, dsx)`` or, with the optional terms,
    ``(m, sumexp, x_y, dsx, sex, ses)`` (see :mod:`labelsmooth.ops`), all relative to
    :math:`r_1` = :func:`row_ref` of its max ``m``; ``s_part`` is the block's share sum. With
    :math:`
ho = e^{r_1 - r}`:

    .. math::

        \mathrm{sumexp} 	o 
ho\,\mathrm{sumexp}, \quad
        dsx 	o dsx + S_1 (r - r_1), \quad
        sex 	o 
ho\,ig(sex + (r_1 - r)\,\mathrm{sumexp}ig), \quad
        ses 	o 
ho\,ses

    (``m`` and ``x_y`` are absolute and stay). A block with ``sumexp == 0`` (all −inf, or empty)
    keeps exactly 0 in every exponential statistic, so no ``0·inf`` appears. This is the one
    rescale of every merge: within a device (:func:`merge_partials`) and across ranks, where each
    rank rebases to the global max before the SUM all-reduce.

    Examples:
        >>> x = torch.tensor([[0.0, 1.0]])
        >>> e = (x - 1).exp()
        >>> part = (x.amax(1), e.sum(1).double(), 0 * x[:, 0], (1 - x).sum(1),
        ...         (e * (x - 1)).sum(1), (0.5 * e).sum(1))
        >>> moved = rebase_partials(part, 1.0, torch.tensor([3.0]))
        >>> e3 = (x - 3).exp()
        >>> (torch.allclose(moved[4], (e3 * (x - 3)).sum(1)),
        ...  torch.allclose(moved[5], (0.5 * e3).sum(1)))
        (True, True)
    """
    old = row_ref(part[0])
    se = part[1]
    empty = se == 0
    rho = torch.exp(old.to(se.dtype) - new.to(se.dtype))
    zero = torch.zeros_like(se)
    out = [part[0], torch.where(empty, zero, se * rho), part[2],
           shift_sum(part[3], s_part, old, new)]
    if len(part) > 4:
        sex, ses = part[4], part[5]
        acc = sex.dtype
        r = rho.to(acc)
        zero = torch.zeros_like(sex)
        moved = r * (sex + ((old - new).to(se.dtype) * se).to(acc))
        out += [torch.where(empty, zero, moved), torch.where(empty, zero, r * ses)]
    return tuple(out)


def merge_partials(
    a: tuple[Tensor, ...], s_a: Tensor | float,
    b: tuple[Tensor, ...], s_b: Tensor | float,
) -> tuple[Tensor, ...]:
    r"""Merge the row statistics ``(m, sumexp, x_y, dsx[, sex, ses])`` of two column blocks.

    Each block's statistics are relative to :func:`row_ref` of its own max; ``s_a``/``s_b`` are
    the blocks' share sums :math:`\sum_c s_c`, with which ``dsx`` moves to the union's reference
    (:func:`shift_sum`). ``x_y`` adds (the target lies in one block; the others hold 0). With the
    optional terms' statistics (6-tuples, both blocks alike) ``sex`` and ``ses`` move as
    :func:`rebase_partials` says and add.

    Examples:
        >>> x = torch.tensor([[0.0, 1.0, 2.0, 5.0]])
        >>> def part(blk):  # m, Σ e^{x − m}, no target here, Σ ½ (m − x)
        ...     m = blk.amax(1)
        ...     return m, (blk - m[:, None]).exp().sum(1), 0 * m, 0.5 * (m[:, None] - blk).sum(1)
        >>> m, se, _, dsx = merge_partials(part(x[:, :3]), 1.5, part(x[:, 3:]), 0.5)
        >>> round(float(m + se.log()), 4), float(dsx)
        (5.0722, 6.0)
    """
    if len(a) != len(b):
        raise ValueError(f"Expected `b` to hold as many statistics as `a` ({len(a)}), "
                         f"but got {len(b)}.")
    m, se = merge_max_sumexp(a[0], a[1], b[0], b[1])
    new = row_ref(m)
    dsx = shift_sum(a[3], s_a, row_ref(a[0]), new) + shift_sum(b[3], s_b, row_ref(b[0]), new)
    if len(a) == 4:
        return m, se, a[2] + b[2], dsx
    ra, rb = rebase_partials(a, s_a, new), rebase_partials(b, s_b, new)
    return m, se, a[2] + b[2], dsx, ra[4] + rb[4], ra[5] + rb[5]


def row_loss(
    ref: Tensor,
    lse_rel: Tensor,
    x_y: Tensor,
    dsx: Tensor | None,
    S: Tensor | float,
    ct: Tensor,
    cs: Tensor | None,
    cz: Tensor | None,
) -> Tensor:
    r"""Per-row loss from statistics taken relative to the row's reference :math:`r` (its max).

    .. math::

        \ell = ct\,\big((r - x_y) + L\big) + cs\,\Big(\sum_c s_c (r - x_c) + S\,L\Big)
                + cz\,(r + L)^2, \qquad L = \log \sum_c e^{x_c - r}

    which is :math:`ct(\mathrm{lse}-x_y) + cs(S\,\mathrm{lse}-\sum_c s_c x_c) + cz\,\mathrm{lse}^2`
    without its cancellation: every term is at the scale of the loss, whatever the logits'
    offset. A target term with ``ct == 0`` is exactly 0 even at a −inf target logit (0·log 0 = 0).

    Args:
        ref: (R,) the reference :func:`row_ref` of the row max.
        lse_rel: (R,) :math:`L`, the log of the sum of exponentials relative to ``ref``.
        x_y: (R,) target logit (0 on ignored rows).
        dsx: (R,) :math:`\sum_c s_c (r - x_c)` (zero-share classes counting 0), or None when there
            is no smoothing term.
        S: :math:`\sum_c s_c` (tensor or float; global when the vocabulary is sharded).
        ct, cs, cz: (R,) coefficients; ``cs``/``cz`` None drop their term.

    Examples:
        >>> one = torch.ones(1)
        >>> row_loss(torch.tensor([1.5]), torch.tensor([0.5]), torch.tensor([1.0]),
        ...          torch.tensor([0.0]), 2.0, one, 0.5 * one, 0.25 * one)
        tensor([2.5000])
    """
    dy = ref - x_y
    dy = torch.where(ct == 0, torch.zeros_like(dy), dy)
    loss = ct * (dy + lse_rel)
    if dsx is not None and cs is not None:
        loss = loss + cs * (dsx + S * lse_rel)
    if cz is not None:
        loss = loss + cz * (ref + lse_rel).square()
    return loss


def grad_coef(
    lse: Tensor, S: Tensor | float, ct: Tensor, cs: Tensor | None, cz: Tensor | None
) -> Tensor:
    r"""Coefficient of :math:`p_{n,j}` in the gradient: :math:`ct + cs\,S + 2\,cz\,\mathrm{lse}`.

    The z-loss term is exactly 0 where ``cz`` is 0, even when ``lse`` is ±inf.

    Examples:
        >>> one = torch.ones(1)
        >>> grad_coef(torch.tensor([2.0]), 2.0, one, 0.5 * one, 0.25 * one)
        tensor([3.])
    """
    coef = ct if cs is None else ct + cs * S
    if cz is not None:
        # select: an ignored row has cz = 0 and may have lse = ±inf (0·inf would be nan)
        coef = coef + torch.where(cz == 0, torch.zeros_like(lse), 2 * cz * lse)
    return coef


def index_grad_dense(
    x: Tensor,
    y: Tensor | None,
    ref: Tensor,
    a: Tensor,
    bt: Tensor,
    b: Tensor | None,
    s: Tensor | None,
    bu: Tensor | None,
    live: Tensor | None,
    softcap: float | None,
) -> Tensor:
    r"""The gradient of index-target rows as one dense expression, in ``x``'s dtype.

    .. math::

        g_{n,j} = \big(a_n e^{x'_{n,j} - r_n} - b_n s_j - bu_n - bt_n [j = y_n]\big)\,
                  \frac{\partial x'_{n,j}}{\partial x_{n,j}}

    with the per-row factors already multiplied by the upstream gradient :math:`g_n`:
    :math:`a = g\,cp\,e^{-L}` (``ref`` = :math:`r`, the row reference; :math:`L` the log of the
    sum of exponentials relative to it), :math:`bt = g\,ct`, :math:`b = g\,cs` with a share
    vector ``s`` (else None) or :math:`bu = g\,cs\,s_u` with uniform shares (else None). Rows
    where ``live`` is False are exactly 0 by selection (None: every row). ``y`` None leaves out
    the target term (:math:`bt`) for a caller that writes the target column itself: the compiled
    CPU kernel, where the per-element column test costs about as much as the rest.
    Differentiable: the compiled CPU kernel (:mod:`labelsmooth.ops._fused_inductor`) and the
    double backward of the fused and Triton engines evaluate this one formula.

    Examples:
        >>> x = torch.tensor([[0.0, 0.0]])
        >>> one = torch.ones(1)  # p = (½, ½), target 0: (½ − 1, ½)
        >>> index_grad_dense(x, torch.tensor([0]), torch.zeros(1), 0.5 * one, one, None, None,
        ...                  None, None, None)
        tensor([[-0.5000,  0.5000]])
    """
    xf = x.to(acc_dtype(x.dtype))
    if softcap is not None:
        t = torch.tanh(xf / softcap)
        xf = softcap * t
    g = torch.exp(xf - ref[:, None]) * a[:, None]
    if s is not None:
        g = g - b[:, None] * s[None, :]
    elif bu is not None:
        g = g - bu[:, None]
    if y is not None:
        col = torch.arange(x.shape[1], device=x.device)
        g = torch.where(col[None, :] == y[:, None], g - bt[:, None], g)
    if softcap is not None:
        g = g * (1 - t * t)
    if live is not None:
        # rows without coefficients are 0 by selection, whatever their logits (0·inf is nan)
        g = torch.where(live[:, None], g, torch.zeros((), dtype=g.dtype, device=g.device))
    return g.to(x.dtype)
