r"""Small formulas shared by every engine (single-device, fused linear, vocabulary-parallel).

One home for each so that the engines cannot drift apart:

* :func:`acc_dtype` — the accumulation dtype rule;
* :func:`apply_softcap` — :math:`c\tanh(x/c)`;
* :func:`finite_or_zero` — the finite reference of a running max;
* :func:`merge_max_sumexp` — the online merge of two (max, sum of exponentials) partials;
* :func:`row_loss` — :math:`ct(\mathrm{lse}-x_y) + cs(S\,\mathrm{lse}-\sum_c s_c x_c) + cz\,\mathrm{lse}^2`;
* :func:`grad_coef` — the coefficient of :math:`p` in the gradient, :math:`ct + cs\,S + 2\,cz\,\mathrm{lse}`.

All are plain differentiable tensor expressions with no host-device sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "acc_dtype",
    "apply_softcap",
    "finite_or_zero",
    "grad_coef",
    "merge_max_sumexp",
    "row_loss",
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


def finite_or_zero(m: Tensor) -> Tensor:
    """``m`` with ±inf replaced by 0 (NaN kept): the reference point for exponentials.

    Exponentials taken relative to it stay finite for an all −inf row (sumexp 0, lse −inf).

    Examples:
        >>> finite_or_zero(torch.tensor([1.5, -float("inf"), float("inf")]))
        tensor([1.5000, 0.0000, 0.0000])
    """
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def merge_max_sumexp(m1: Tensor, e1: Tensor, m2: Tensor, e2: Tensor) -> tuple[Tensor, Tensor]:
    r"""Merge two partials (max, Σexp relative to ``finite_or_zero(max)``) of the same rows.

    .. math::

        m = \max(m_1, m_2), \quad e = e_1 e^{\bar m_1 - \bar m} + e_2 e^{\bar m_2 - \bar m},
        \quad \bar m = \mathrm{finite\_or\_zero}(m)

    A part with sum 0 (all −inf, or empty) adds exactly 0, so a ``+inf`` max or an empty block
    never produces ``0·inf = nan``; :math:`\bar m + \log e` is then the lse of the union.

    Examples:
        >>> a, b = torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, -float("inf")]])
        >>> m, e = merge_max_sumexp(a.amax(1), (a - 1).exp().sum(1), b.amax(1), (b - 3).exp().sum(1))
        >>> torch.allclose(m + e.log(), torch.logsumexp(torch.cat([a, b], 1), 1))
        True
    """
    m = torch.maximum(m1, m2)
    ref = finite_or_zero(m)
    zero = torch.zeros_like(e1)
    e = torch.where(e1 == 0, zero, e1 * torch.exp(finite_or_zero(m1) - ref)) + torch.where(
        e2 == 0, zero, e2 * torch.exp(finite_or_zero(m2) - ref)
    )
    return m, e


def row_loss(
    lse: Tensor,
    x_y: Tensor,
    sx: Tensor | None,
    S: Tensor | float,
    ct: Tensor,
    cs: Tensor | None,
    cz: Tensor | None,
) -> Tensor:
    r"""Per-row loss :math:`ct(\mathrm{lse}-x_y) + cs(S\,\mathrm{lse} - sx) + cz\,\mathrm{lse}^2`.

    Args:
        lse: (R,) log-sum-exp of the (soft-capped) logits.
        x_y: (R,) target logit (0 on ignored rows).
        sx: (R,) :math:`\sum_c s_c x_c`, or None when there is no smoothing term.
        S: :math:`\sum_c s_c` (tensor or float; global when the vocabulary is sharded).
        ct, cs, cz: (R,) coefficients; ``cs``/``cz`` None drop their term.

    Examples:
        >>> one = torch.ones(1)
        >>> row_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([3.0]), 2.0,
        ...          one, 0.5 * one, 0.25 * one)
        tensor([2.5000])
    """
    loss = ct * (lse - x_y)
    if sx is not None and cs is not None:
        loss = loss + cs * (S * lse - sx)
    if cz is not None:
        loss = loss + cz * lse.square()
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
