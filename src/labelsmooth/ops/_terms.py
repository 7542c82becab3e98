r"""The optional terms of the cross-entropy: confidence penalty, Poly-1 and focal modulation.

One home for their validation and their per-row formulas (the reference engine evaluates them
with autograd; no other engine implements them yet, see :data:`SUPPORTED_IMPLS`).

Every term is written on the per-class **target mass** :math:`m_c` the cross-entropy already
uses, :math:`\ell_{CE} = \sum_c m_c(\mathrm{lse} - x_c)`: for index targets
:math:`m_c = ct\,[c=y] + cs\,s_c` (so under ``weight_mode="torch"`` :math:`m_c = w_c q_c`, under
``"target"`` :math:`m_c = w_y q_c`), for probability targets :math:`m_c = w_c q_c` (``"torch"``)
or :math:`q_c` times the row scale (``"target"``). With :math:`p = \mathrm{softmax}(x)`:

* focal (γ): :math:`\sum_c m_c (1-p_c)^\gamma(\mathrm{lse}-x_c)` replaces the cross-entropy term;
* Poly-1 (ε₁): adds :math:`\varepsilon_1 \sum_c m_c (1 - p_c)`, which is
  :math:`\varepsilon_1(1 - p_t)`, :math:`p_t = \sum_c q_c p_c`, whenever the mass sums to 1;
* confidence penalty (β): adds :math:`-\beta\, r\, H(p)`, :math:`H(p) = -\sum_c p_c\log p_c`,
  with the row scale :math:`r` of the z-loss (:math:`w_y` for index targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import torch

from labelsmooth import _validation as V

FocalGamma = Union[float, str, None]
FLSD = "flsd-53"
#: the implementations that evaluate the terms (``impl="auto"`` picks the first when a term is set)
SUPPORTED_IMPLS = ("reference",)

__all__ = ["FLSD", "SUPPORTED_IMPLS", "Terms", "check_terms", "term_rows"]


@dataclass(frozen=True)
class Terms:
    """Validated term options: ``confidence_penalty`` β ≥ 0, ``poly`` ε₁ (any finite real),
    ``focal_gamma`` γ ≥ 0, ``"flsd-53"`` or None (0 and None mean no term)."""

    confidence_penalty: float = 0.0
    poly: float = 0.0
    focal_gamma: float | str | None = None

    @property
    def active(self) -> bool:
        return bool(self.confidence_penalty or self.poly or self.focal_gamma)

    def names(self) -> list[str]:
        """The names of the arguments that are set (for error messages)."""
        out = []
        if self.confidence_penalty:
            out.append("confidence_penalty")
        if self.poly:
            out.append("poly")
        if self.focal_gamma:
            out.append("focal_gamma")
        return out


NO_TERMS = Terms()


def check_terms(confidence_penalty: Any = 0.0, poly: Any = 0.0, focal_gamma: Any = None) -> Terms:
    """Check the term options (ValueError/TypeError naming the argument otherwise).

    Examples:
        >>> check_terms(0.5, 0.0, "flsd-53").active
        True
        >>> check_terms(focal_gamma=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `focal_gamma` to be a finite float >= 0 or 'flsd-53', but got -1.0.
    """
    beta = V.check_nonnegative("confidence_penalty", confidence_penalty)
    if not V._is_real(poly):
        raise V.fail("poly", "a finite float", poly, TypeError)
    eps1 = float(poly)
    if not math.isfinite(eps1):
        raise V.fail("poly", "a finite float", eps1)
    gamma: float | str | None
    if focal_gamma is None or isinstance(focal_gamma, str):
        if focal_gamma is not None and focal_gamma != FLSD:
            raise V.fail("focal_gamma", f"a finite float >= 0 or {FLSD!r}", focal_gamma)
        gamma = focal_gamma
    elif V._is_real(focal_gamma):
        gamma = float(focal_gamma)
        if not (math.isfinite(gamma) and gamma >= 0.0):
            raise V.fail("focal_gamma", f"a finite float >= 0 or {FLSD!r}", gamma)
        gamma = gamma or None  # γ = 0 is the cross-entropy itself
    else:
        raise V.fail("focal_gamma", f"a float >= 0, {FLSD!r} or None", focal_gamma, TypeError)
    return Terms(beta, eps1, gamma)


def check_impl_supports(impl: str, terms: Terms) -> str:
    """``impl`` resolved for a call with ``terms``: "auto" → the reference; an engine without the
    terms raises a ValueError naming them and the implementations that have them."""
    if not terms.active:
        return impl
    if impl == "auto":
        return SUPPORTED_IMPLS[0]
    if impl not in SUPPORTED_IMPLS:
        raise V.fail("impl", f"one of {('auto',) + SUPPORTED_IMPLS} when "
                     f"{', '.join(terms.names())} is set (the fused and Triton engines do not "
                     "implement these terms yet)", impl)
    return impl


def _safe_pow(u: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """u**γ for u in [0, 1] with a finite gradient at u = 0 (where the modulated term's true
    gradient vanishes: (1−p)^(γ−1)·log p → 0 as p → 1)."""
    pos = u > 0
    return torch.where(pos, torch.where(pos, u, torch.ones_like(u)) ** gamma, torch.zeros_like(u))


def term_rows(
    z: torch.Tensor,
    lse_rel: torch.Tensor,
    mass: torch.Tensor,
    terms: Terms,
    cp_scale: torch.Tensor | None,
    p_y: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    r"""(focal part or None, added terms) per row, differentiable in ``z``.

    The focal part replaces the cross-entropy :math:`\sum_c m_c(\mathrm{lse}-x_c)` (None when
    ``focal_gamma`` is not set: the caller keeps its own cross-entropy); the added terms are
    Poly-1's and the confidence penalty's.

    Args:
        z: (R, K) logits relative to the row reference (:math:`x - r`), differentiable.
        lse_rel: (R,) :math:`L = \log\sum_c e^{z_c}`, differentiable.
        mass: (R, K) target mass :math:`m` (0·log 0 = 0 where it is 0).
        terms: the validated options.
        cp_scale: (R,) row scale of the confidence penalty (β is applied here).
        p_y: (R,) the target's probability, read (detached) by ``focal_gamma="flsd-53"``.
    """
    logp = z - lse_rel[:, None]
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    one_minus_p = -torch.expm1(logp)  # 1 − p_c without cancellation when p_c → 1
    main = None
    if terms.focal_gamma is not None:
        nlogp = torch.where((mass == 0) & torch.isinf(logp), zero, -logp)  # 0·log 0 = 0
        if terms.focal_gamma == FLSD:
            gamma = torch.where(p_y.detach() < 0.2, 5.0, 3.0).to(z.dtype)[:, None]
        else:
            gamma = float(terms.focal_gamma)
        main = (mass * _safe_pow(one_minus_p, gamma) * nlogp).sum(-1)
    extra = torch.zeros_like(lse_rel)
    if terms.poly:
        extra = extra + terms.poly * (mass * one_minus_p).sum(-1)
    if terms.confidence_penalty:
        p = torch.exp(logp)
        safe = torch.where(torch.isinf(logp), zero, logp)
        entropy = -(p * safe).sum(-1)
        extra = extra - terms.confidence_penalty * cp_scale * entropy
    return main, extra
