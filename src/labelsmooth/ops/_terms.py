r"""The optional terms of the cross-entropy: confidence penalty, Poly-1 and focal modulation.

One home for their validation, their dense formula (:func:`term_rows`, the oracle: the reference
engine's whole-row ops differentiate it with autograd) and the formulas of the block contract of
:mod:`labelsmooth.ops` that every other engine composes (:func:`row_terms_loss`,
:func:`term_coefs`, :func:`focal_elems`, :func:`grad_elems`, :func:`target_grad`).

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
from typing import Any, NamedTuple, Union

import torch
from torch import Tensor

from labelsmooth import _validation as V
from labelsmooth.ops._math import grad_coef, row_loss

FocalGamma = Union[float, str, None]
FLSD = "flsd-53"
#: the implementations that evaluate the terms, whole rows and blocks (``impl="auto"`` takes its
#: usual pick when it is in here for every device, else the first)
SUPPORTED_IMPLS = ("fused", "reference", "triton")

__all__ = [
    "FLSD",
    "SUPPORTED_IMPLS",
    "TermCoefs",
    "Terms",
    "check_terms",
    "flsd_low",
    "flsd_rows",
    "focal_elems",
    "focal_from_moments",
    "focal_moments_order",
    "focal_pow",
    "grad_elems",
    "prob_terms",
    "row_terms_loss",
    "target_grad",
    "term_coefs",
    "term_rows",
]


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

    @property
    def wants_sex(self) -> bool:
        """Whether stage one must give ``sex`` (the confidence penalty's Σ e (x' − r))."""
        return bool(self.confidence_penalty)

    @property
    def wants_ses(self) -> bool:
        """Whether stage one must give ``ses`` (Poly-1's Σ s e)."""
        return bool(self.poly)

    @property
    def focal(self) -> bool:
        """Whether the focal stage (:func:`focal_partials` of the engines) runs."""
        return self.focal_gamma is not None

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
    """``impl`` resolved for a call with ``terms``: "auto" stays "auto" when every engine it may
    pick (Triton on CUDA, fused) has the terms, else it becomes the first of
    :data:`SUPPORTED_IMPLS`; an engine without the terms raises a ValueError naming them and the
    implementations that have them."""
    if not terms.active:
        return impl
    if impl == "auto":
        every = all(e in SUPPORTED_IMPLS for e in ("triton", "fused"))
        return "auto" if every else SUPPORTED_IMPLS[0]
    if impl not in SUPPORTED_IMPLS:
        raise V.fail("impl", f"one of {('auto',) + SUPPORTED_IMPLS} when "
                     f"{', '.join(terms.names())} is set (the other engines do not implement "
                     "these terms yet)", impl)
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


# ------------------------------------------------------------------------------------------------
# The block contract's formulas (see labelsmooth.ops): one home, used by every engine.
#
# Notation per row: x' soft-capped logits, r the row reference (row_ref of the max), z = x' − r,
# e = exp(z), SE = Σ e, L = log SE (lse = r + L), l = z − L = log p, u = 1 − p = −expm1(l).
# Target mass m_c = ct [c = y] + cs s_c, M = ct + cs S.

#: Integer γ up to this are raised by repeated multiplication (no pow).
FOCAL_INT_MAX = 16


class TermCoefs(NamedTuple):
    r"""Per-row coefficients of the generalised stage two (:func:`grad_elems`).

    Computed by :func:`term_coefs`.

    The gradient of a row with respect to :math:`x'_j` is

    .. math::

        (cp + cps\,s_j + cpx\,(x'_j - r) + cpt\,[j = y])\,p_j - (ct\,[j = y] + cs\,s_j)\,h_j

    with :math:`h_j = 1` without focal and :math:`h_j = -a_j` (:func:`focal_elems`) with it.
    ``cp`` travels apart (the ``coef_p`` argument of ``grad_rows``).

    Attributes:
        cps: (R,) or None — Poly-1's :math:`-\varepsilon_1 cs` when the shares are a vector (with
            uniform shares it is folded into ``cp``).
        cpx: (R,) or None — the confidence penalty's :math:`\beta w`.
        cpt: (R,) or None — Poly-1's :math:`-\varepsilon_1 ct` (the target column only).
        cpd: (R,) or None — the target column's :math:`cp + cpt - ct\,\tau` (τ = 1, or
            :math:`-a_y` with focal) computed without cancellation, for :func:`target_grad`.
        gamma: focal γ (float), :data:`FLSD`, or None (no focal: :math:`h = 1`).
        low: (R,) bool or None — for :data:`FLSD`, True where γ = 5 (:func:`flsd_low`).
    """

    cps: Tensor | None = None
    cpx: Tensor | None = None
    cpt: Tensor | None = None
    cpd: Tensor | None = None
    gamma: float | str | None = None
    low: Tensor | None = None


def flsd_low(p_y: Tensor) -> Tensor:
    """FLSD-53's switch (Mukhoti et al. 2020): True (γ = 5) where the target's probability is
    below 0.2, else γ = 3. ``p_y`` is read as a constant (no gradient flows through γ)."""
    return p_y.detach() < 0.2


def flsd_rows(terms: Terms, ref: Tensor, L: Tensor, x_y: Tensor) -> Tensor | None:
    """The ``low`` argument of the focal formulas for merged statistics: :func:`flsd_low` of
    :math:`p_y = e^{(x'_y - r) - L}` under ``focal_gamma="flsd-53"``, None otherwise."""
    if terms.focal_gamma != FLSD:
        return None
    return flsd_low(torch.exp((x_y - ref) - L))


def focal_pow(u: Tensor, gamma: float | str, low: Tensor | None = None) -> Tensor:
    r""":math:`u^\gamma` for :math:`u = 1 - p \in [0, 1]`; integer γ by multiplication, never pow.

    ``gamma=FLSD`` takes γ = 5 where ``low`` (broadcast against ``u``) is True, else 3
    (:math:`u^3` and :math:`u^5 = u^3 u^2`). Other non-integer γ use :func:`torch.pow` (0 at u = 0).

    Examples:
        >>> focal_pow(torch.tensor([0.5, 0.0]), 3.0)
        tensor([0.1250, 0.0000])
        >>> focal_pow(torch.tensor([[0.5], [0.5]]), FLSD, torch.tensor([[True], [False]]))
        tensor([[0.0312],
                [0.1250]])
    """
    if gamma == FLSD:
        u2 = u * u
        u3 = u2 * u
        return torch.where(low, u3 * u2, u3)
    g = float(gamma)
    if g.is_integer() and 0 < g <= FOCAL_INT_MAX:
        n = int(g)
        out, base = None, u
        while n:  # square and multiply
            if n & 1:
                out = base if out is None else out * base
            n >>= 1
            if n:
                base = base * base
        return out
    return torch.pow(u, g)


def _gamma_value(gamma: float | str, low: Tensor | None) -> Tensor | float:
    if gamma == FLSD:
        return torch.where(low, 5.0, 3.0)
    return float(gamma)


def _int_gamma(gamma: float | str) -> bool:
    """Whether γ is raised by multiplication (integer γ ≥ 1, or FLSD-53's 3 and 5)."""
    if gamma == FLSD:
        return True
    g = float(gamma)
    return g.is_integer() and 1 <= g <= FOCAL_INT_MAX


def focal_elems(
    z: Tensor, L: Tensor, gamma: float | str, low: Tensor | None = None, *,
    one_exp: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Elementwise focal quantities ``(p, fg, a)`` of logits ``z`` relative to the row reference.

    .. math::

        l = z - L = \log p, \quad u = -\mathrm{expm1}(l) = 1 - p, \quad
        fg = u^\gamma\,(-l), \quad
        a = \frac{d(fg)}{d\log p} = \gamma p \log p\,(1-p)^{\gamma-1} - (1-p)^\gamma

    For integer γ (and FLSD-53) :math:`a = u^{\gamma-1}(\gamma\,p\,l - u)`, all by
    multiplication; for other γ :math:`a = u^\gamma(\gamma\,p\,l/u - 1)` (:math:`l/u \to -1` as
    :math:`p \to 1`), so no :math:`0\cdot\infty` appears; a −inf logit gives ``p = 0``,
    ``a = −u^γ = −1``, ``fg = inf``. ``L``, ``low`` broadcast against ``z``.

    ``one_exp`` trades one of the two exponentials for a subtraction where the lost relative
    precision cannot show: ``"u"`` takes :math:`p = 1 - u` (the focal stage's row sums, where
    :math:`p\,l` is a small correction beside the row's other terms), ``"p"`` takes
    :math:`u = 1 - p` for integer γ only (the gradient pass: its absolute error, 2⁻²⁴, moves
    :math:`a` by at most γ·2⁻²⁴ where :math:`cp\,p_j` keeps its relative precision; the target
    column and the per-row target terms always use expm1). None: both exact.

    Examples:
        >>> p, fg, a = focal_elems(torch.tensor([0.0, 0.0]), torch.tensor(0.6931471805599453), 2.0)
        >>> fg, a  # p = ½: ¼·log 2 and ½(2·½·(−log 2) − ½)
        (tensor([0.1733, 0.1733]), tensor([-0.5966, -0.5966]))
    """
    lp = z - L
    integer = _int_gamma(gamma)
    if one_exp == "u":
        u = -torch.expm1(lp)
        p = 1.0 - u
    elif one_exp == "p" and integer:
        p = torch.exp(lp)
        u = 1.0 - p
    else:
        p = torch.exp(lp)
        u = -torch.expm1(lp)
    # p log p → 0 at a −inf logit (0, not 0·(−inf)): the log clamped to the lowest float is
    # one max per element, cheaper than a compare and a select in the compiled passes
    pl = p * torch.clamp_min(lp, torch.finfo(lp.dtype).min)
    if integer:
        if gamma == FLSD:
            u2 = u * u
            um1 = torch.where(low, u2 * u2, u2)
        else:
            um1 = focal_pow(u, float(gamma) - 1.0) if float(gamma) > 1 else torch.ones_like(u)
        a = um1 * (_gamma_value(gamma, low) * pl - u)
        return p, um1 * u * (-lp), a
    ug = focal_pow(u, gamma, low)
    ratio = torch.where(u > 0, lp / torch.where(u > 0, u, 1.0), -1.0)
    pt = torch.where(p > 0, p * ratio, 0.0)
    a = ug * (_gamma_value(gamma, low) * pt - 1.0)
    return p, ug * (-lp), a


#: Integer γ up to this take the focal sums from power sums of the statistics pass
#: (:func:`focal_from_moments`; conditioning at most 3^γ, see there). Each power costs two more
#: row sums in that pass: measured on the 2-core reference machine (8192 × 32000 float32), γ = 1–3
#: cost less than the separate focal pass after the lse, γ = 5 about 1.6 times more.
FOCAL_MOMENTS_MAX = 3


def focal_moments_order(gamma: float | str | None) -> int:
    """The highest power sum :func:`focal_from_moments` needs for ``gamma``, or 0 when the engine
    takes the focal sums after the row's lse is known (non-integer γ, γ above
    :data:`FOCAL_MOMENTS_MAX`, and FLSD-53, whose γ = 5 rows would need the fifth power).

    Examples:
        >>> focal_moments_order(2.0), focal_moments_order(0.5), focal_moments_order("flsd-53")
        (2, 0, 0)
    """
    if gamma is None or gamma == FLSD:
        return 0
    g = float(gamma)
    return int(g) if g.is_integer() and 1 <= g <= FOCAL_MOMENTS_MAX else 0


def focal_from_moments(
    gamma: float | str, low: Tensor | None, s1: Tensor, t: Tensor, st: Tensor,
    E: list[Tensor], Z: list[Tensor],
) -> tuple[Tensor, Tensor]:
    r"""The focal stage's row sums :math:`(F_s, A_s) = (\sum_c w_c\,fg_c, \sum_c w_c\,a_c)` of
    :func:`focal_elems` from power sums that need no lse, so that one pass over a row suffices.

    With :math:`e_c = e^{z_c}` (:math:`z = x' - r`), the columns at the max (:math:`z_c = 0`,
    ties) kept apart, :math:`SE = s_1 + t` (:math:`s_1` the non-tie sum, :math:`t` the tie count),
    :math:`q = 1/SE`, :math:`L = \log SE` and, over the non-tie columns,
    :math:`E_k = \sum_c w_c e_c^k`, :math:`Z_k = \sum_c w_c e_c^k z_c` (:math:`k \ge 0`;
    :math:`p_c = q e_c`):

    .. math::

        F = \sum_{k=0}^{\gamma} \tbinom{\gamma}{k}(-q)^k (L E_k - Z_k), \quad
        A = \gamma \sum_{j=0}^{\gamma-1} \tbinom{\gamma-1}{j}(-1)^j q^{j+1}(Z_{j+1} - L E_{j+1})
            - \sum_{k=0}^{\gamma} \tbinom{\gamma}{k}(-q)^k E_k

    (the binomial expansion of :math:`u^\gamma = (1-p)^\gamma` in :math:`fg = u^\gamma (L - z)` and
    :math:`a = \gamma p\,(z - L)\,u^{\gamma-1} - u^\gamma`), plus the ties' own terms with
    :math:`p = q`, :math:`u = (s_1 + t - 1)\,q` and :math:`\log p = -L`, weighted by ``st`` =
    :math:`\sum_{\text{ties}} w_c`: a confident row keeps its tiny :math:`1 - p`.

    Conditioning: every non-tie column has :math:`p \le 1/2`, so the alternating sum of one column
    is at most :math:`((1+p)/(1-p))^\gamma \le 3^\gamma` times its value, and every :math:`k`-term
    of a row has one sign (:math:`L \ge 0 \ge z`). The float32 power sums of the kernel then give
    a relative error of about :math:`3^\gamma \cdot 2^{-24}` in the worst row (two classes sharing
    the mass), about that of the float32 lse itself in the typical one; the combination runs in
    float64. The engines use it for integer :math:`\gamma \le` :data:`FOCAL_MOMENTS_MAX`; it also
    takes FLSD-53 (3 and 5 from the same sums up to the fifth power, chosen per row by ``low``).

    Args:
        gamma: an integer γ (as float) or :data:`FLSD`; ``low`` (R,) bool for FLSD.
        s1, t, st: (R,) non-tie sum of exponentials, tie count and tie weight.
        E, Z: lists of (R,) power sums, index k = 0 … order (:func:`focal_moments_order`).

    Returns:
        ``(F, A)``, float64 (R,).

    Examples:
        >>> z = torch.tensor([[0.0, -1.0, -2.0]], dtype=torch.float64)
        >>> e = z[:, 1:].exp()
        >>> E = [torch.tensor([2.0], dtype=torch.float64)] + [(e ** k).sum(1) for k in (1, 2)]
        >>> Z = [z[:, 1:].sum(1)] + [(e ** k * z[:, 1:]).sum(1) for k in (1, 2)]
        >>> F, A = focal_from_moments(2.0, None, e.sum(1), torch.ones(1, dtype=torch.float64),
        ...                           torch.ones(1, dtype=torch.float64), E, Z)
        >>> lse = torch.logsumexp(z, 1)
        >>> _, fg, a = focal_elems(z, lse[:, None], 2.0)
        >>> torch.allclose(F, fg.sum(1)), torch.allclose(A, a.sum(1))
        (True, True)
    """
    f64 = torch.float64
    s1, t, st = s1.to(f64), t.to(f64), st.to(f64)
    E = [v.to(f64) for v in E]
    Z = [v.to(f64) for v in Z]
    se = s1 + t
    excess = s1 + (t - 1)  # SE − 1 without cancellation (a confident row: s1 ≈ its loss)
    L = torch.log1p(excess)
    q = 1.0 / se

    def one(g: int) -> tuple[Tensor, Tensor]:
        F = torch.zeros_like(se)
        U = torch.zeros_like(se)
        V = torch.zeros_like(se)
        qk = torch.ones_like(se)
        for k in range(g + 1):
            c = math.comb(g, k) * (-1) ** k
            F = F + c * qk * (L * E[k] - Z[k])
            U = U + c * qk * E[k]
            if k < g:
                cj = math.comb(g - 1, k) * (-1) ** k
                V = V + cj * (qk * q) * (Z[k + 1] - L * E[k + 1])
            qk = qk * q
        u_t = excess * q
        F = F + st * u_t ** g * L
        A = g * V - U + st * u_t ** (g - 1) * (g * q * (-L) - u_t)
        return F, A

    if gamma == FLSD:
        (f3, a3), (f5, a5) = one(3), one(5)
        return torch.where(low, f5, f3), torch.where(low, a5, a3)
    return one(int(float(gamma)))


def _target_lp(ref: Tensor, L: Tensor, x_y: Tensor, ct: Tensor) -> Tensor:
    """log p_y = (x'_y − r) − L, 0 where there is no target term (ct = 0: x_y is a placeholder)."""
    lp = (x_y - ref) - L
    return torch.where(ct == 0, torch.zeros_like(lp), lp)


def row_terms_loss(
    ref: Tensor,
    L: Tensor,
    x_y: Tensor,
    dsx: Tensor | None,
    S: Tensor | float,
    ct: Tensor,
    cs: Tensor | None,
    cz: Tensor | None,
    terms: Terms,
    *,
    w: Tensor | None = None,
    sex: Tensor | None = None,
    ses: Tensor | None = None,
    sumexp: Tensor | None = None,
    focal: tuple[Tensor, Tensor] | None = None,
    low: Tensor | None = None,
) -> Tensor:
    r"""Per-row loss with the optional terms, from merged statistics (all relative to ``ref``).

    .. math::

        \ell = \underbrace{ct\,(L - z_y) + cs\,(dsx + S L)}
                 _{\text{or focal: } ct\,u_y^\gamma(L - z_y) + cs\,F_s}
              + cz\,(r + L)^2
              + \varepsilon_1\big(ct\,u_y + cs\,(S - ses/SE)\big)
              + \beta\,w\,(sex/SE - L)

    with :math:`z_y = x'_y - r`, :math:`u_y = -\mathrm{expm1}(z_y - L)` (a confident row keeps its
    tiny :math:`1 - p_y`), :math:`F_s` the merged share sum of the focal stage. Poly-1's term is
    :math:`\varepsilon_1\sum_c m_c(1 - p_c)`; the penalty's is :math:`-\beta w H(p)` with
    :math:`H = L - sex/SE`. Target parts are exactly 0 where ``ct == 0``.

    Args:
        ref, L, x_y, dsx, S, ct, cs, cz: as :func:`~labelsmooth.ops._math.row_loss`.
        terms: the options; ``w`` (R,) the penalty's row scale (needed with a penalty).
        sex, ses, sumexp: merged stage-one statistics (``sumexp`` float64) when a penalty or
            Poly-1 is set.
        focal: merged ``(Fs, As)`` of the focal stage, with ``low`` for :data:`FLSD`.
    """
    acc = L.dtype
    if terms.focal:
        lp = _target_lp(ref, L, x_y, ct)
        fy = focal_pow(-torch.expm1(lp), terms.focal_gamma, low) * (-lp)
        loss = ct * fy
        if cs is not None:
            loss = loss + cs * focal[0]
        if cz is not None:
            loss = loss + cz * (ref + L).square()
    else:
        loss = row_loss(ref, L, x_y, dsx, S, ct, cs, cz)
    if terms.poly:
        uy = -torch.expm1(_target_lp(ref, L, x_y, ct))
        part = ct * uy
        if cs is not None:
            part = part + cs * (S - (ses / sumexp).to(acc))
        loss = loss + terms.poly * part
    if terms.confidence_penalty:
        loss = loss + terms.confidence_penalty * w * ((sex / sumexp).to(acc) - L)
    return loss


def term_coefs(
    ref: Tensor,
    L: Tensor,
    x_y: Tensor,
    S: Tensor | float,
    ct: Tensor,
    cs: Tensor | None,
    cz: Tensor | None,
    terms: Terms,
    *,
    shares_vector: bool,
    s_uniform: float = 0.0,
    w: Tensor | None = None,
    sex: Tensor | None = None,
    ses: Tensor | None = None,
    sumexp: Tensor | None = None,
    focal: tuple[Tensor, Tensor] | None = None,
    low: Tensor | None = None,
) -> tuple[Tensor, TermCoefs]:
    r"""``(cp, TermCoefs)``: the per-row coefficients of the generalised stage two, one home.

    .. math::

        cp = \begin{cases} ct + cs\,S \\ -A = -(ct\,a_y + cs\,A_s) & \text{focal} \end{cases}
             + 2\,cz\,\mathrm{lse} + \varepsilon_1 T - \beta w\,\frac{sex}{SE}
             \;[-\,\varepsilon_1 cs\,s_u], \qquad T = ct\,p_y + cs\,\frac{ses}{SE}

    :math:`cps = -\varepsilon_1 cs` (share vector; folded into ``cp`` with uniform shares),
    :math:`cpx = \beta w`, :math:`cpt = -\varepsilon_1 ct`. From
    :math:`\partial_j[\varepsilon_1(M - T)] = -\varepsilon_1 p_j (m_j - T)`,
    :math:`\partial_j[-\beta w H] = \beta w\,p_j(x'_j - r - sex/SE)` and
    :math:`\partial_j F = m_j a_j - p_j A`. Arguments as :func:`row_terms_loss`;
    ``shares_vector`` says whether the shares are a vector (else ``s_uniform``, 0 = none).
    """
    acc = L.dtype
    lp = _target_lp(ref, L, x_y, ct)
    # ``rest``: every part of cp but the target's (ct) parts, so that the target column's
    # cp + cpt − ct·τ (cpd) is formed without cancellation (a confident row's p_y → 1)
    if terms.focal:
        p_y, _, a_y = focal_elems(lp, torch.zeros((), dtype=acc, device=L.device),
                                  terms.focal_gamma, low)
        ct_part = -_times(ct, a_y)
        rest = torch.zeros_like(L) if cs is None else -_times(cs, focal[1])
        if cz is not None:
            rest = rest + _times(2 * cz, ref + L)
    else:
        ct_part = ct
        rest = grad_coef(ref + L, S, torch.zeros_like(ct), cs, cz)
    cpd = rest
    cps = cpx = cpt = None
    if terms.poly:
        ct_part = ct_part + terms.poly * ct * torch.exp(lp)
        cpd = cpd + terms.poly * ct * torch.expm1(lp)
        more = torch.zeros_like(rest)
        if cs is not None:
            more = _times(cs, (ses / sumexp).to(acc))
            if shares_vector:
                cps = -terms.poly * cs
            elif s_uniform != 0.0:
                more = more - s_uniform * cs
        rest, cpd = rest + terms.poly * more, cpd + terms.poly * more
        cpt = -terms.poly * ct
    if terms.confidence_penalty:
        cpx = terms.confidence_penalty * w
        pen = _times(cpx, (sex / sumexp).to(acc))
        rest, cpd = rest - pen, cpd - pen
    return rest + ct_part, TermCoefs(cps, cpx, cpt, cpd, terms.focal_gamma, low)


def _times(c: Tensor, v: Tensor) -> Tensor:
    """c·v, exactly 0 where c is 0 (a row without the term may hold ±inf/NaN statistics)."""
    return torch.where(c == 0, torch.zeros_like(v), c * v)


def grad_elems(
    z: Tensor, L: Tensor, cp: Tensor, cs_s: Tensor | float | None, coefs: TermCoefs,
    s: Tensor | float | None = None, *, one_exp: str | None = None,
) -> Tensor:
    r"""The generalised stage-two value of the non-target columns, elementwise (one home).

    .. math::

        (cp + cps\,s_j + cpx\,z_j)\,p_j - cs\,s_j\,h_j, \qquad p_j = e^{z_j - L},
        \quad h_j = 1 \text{ or } -a_j \text{ (focal)}

    ``z`` = :math:`x' - r` (R, B); ``L``, ``cp`` and the coefficients are (R, 1) columns;
    ``cs_s`` = :math:`cs\,s_j` broadcast to (R, B) (or a column, or None without smoothing);
    ``s`` = the shares :math:`s_j` (a (1, B) row or the uniform float) where ``cps`` is set.
    The target column is the caller's (:func:`target_grad`), as is the upstream gradient, the
    soft-cap's chain rule and the selection of rows without coefficients. A −inf logit gives 0.
    ``one_exp="p"`` (the compiled pass): see :func:`focal_elems`.
    """
    if coefs.gamma is not None:
        p, _, a = focal_elems(z, L, coefs.gamma, coefs.low, one_exp=one_exp)
    else:
        p = torch.exp(z - L)
    k = cp if coefs.cps is None else cp + coefs.cps * s
    g = k * p
    if coefs.cpx is not None:
        # z·p is 0 at a −inf logit (p = 0): z clamped to the lowest float, not a select
        g = g + coefs.cpx * (torch.clamp_min(z, torch.finfo(z.dtype).min) * p)
    if cs_s is not None:
        g = g + cs_s * a if coefs.gamma is not None else g - cs_s
    return g


def target_grad(
    ref: Tensor, L: Tensor, x_y: Tensor, cp: Tensor, ct: Tensor, cs_sy: Tensor | float | None,
    coefs: TermCoefs | None, s_y: Tensor | float | None = None,
) -> Tensor:
    r"""The target column's value per row, :math:`P p_y - (ct + cs\,s_y) h_y`, one home.

    :math:`P = cp + cpt + cps\,s_y + cpx\,z_y`, :math:`z_y = x'_y - r`, :math:`l_y = z_y - L`.
    Where ``ct`` is not 0 it is written so that a confident row (:math:`p_y \to 1`) keeps its
    digits, with :math:`D` = ``coefs.cpd`` (:math:`cp - ct` without terms) and
    :math:`X = cps\,s_y + cpx\,z_y`:

    * without focal (:math:`h = 1`): :math:`(ct + D + X)\,\mathrm{expm1}(l_y) + (D + X - cs\,s_y)`;
    * focal (:math:`h = -a`): :math:`(D + X)\,p_y + ct\,a_y (1 - p_y) + cs\,s_y\,a_y`.

    Where ``ct`` is 0 (an ignored target, or a block without the target: ``y`` is then a
    placeholder column and the caller passes ``ct`` and ``cpt`` as 0) it is the plain
    :math:`P p - cs\,s\,h` of that column. ``x_y`` is the soft-capped logit; ``cs_sy`` =
    :math:`cs\,s_y` (None without smoothing), ``s_y`` the share where ``cps`` is set. Rows (R,);
    upstream gradient, chain rule and the selection of rows without coefficients are the caller's.

    Examples:
        >>> z = torch.tensor([0.0])  # x = (0, −inf): p_y = 1, cross-entropy gradient 0
        >>> one = torch.ones(1)
        >>> target_grad(z, z, z, one, one, None, None)
        tensor([0.])
    """
    z = x_y - ref
    lp = z - L
    extra = torch.zeros_like(cp)
    focal = coefs is not None and coefs.gamma is not None
    if coefs is not None:
        if coefs.cps is not None:
            extra = extra + coefs.cps * s_y
        if coefs.cpx is not None:
            # the penalty's cpx·z multiplies p, which is 0 at a −inf logit (a masked column
            # standing in for a target held by another block or rank): 0 there, not −inf·0
            extra = extra + coefs.cpx * torch.where(torch.isneginf(z), torch.zeros_like(z), z)
    cpd = cp - ct if coefs is None or coefs.cpd is None else coefs.cpd
    big_p = cp + extra if coefs is None or coefs.cpt is None else cp + coefs.cpt + extra
    mass = ct if cs_sy is None else ct + cs_sy
    if focal:
        p, _, a = focal_elems(lp, torch.zeros((), dtype=L.dtype, device=L.device), coefs.gamma,
                              coefs.low)
        plain = big_p * p + mass * a
        exact = (cpd + extra) * p + ct * a * -torch.expm1(lp)
        if cs_sy is not None:
            exact = exact + cs_sy * a
    else:
        plain = big_p * torch.exp(lp) - mass
        exact = (ct + cpd + extra) * torch.expm1(lp) + (cpd + extra)
        if cs_sy is not None:
            exact = exact - cs_sy
    return torch.where(ct != 0, exact, plain)


def prob_terms(
    sums: dict[str, Tensor], ref: Tensor, L: Tensor, rs: Tensor, cz: Tensor | None, terms: Terms,
) -> tuple[Tensor, Tensor, TermCoefs]:
    r"""``(loss, cp, TermCoefs)`` of a probability-target row with the terms (mass :math:`rs\,q`).

    ``sums`` holds the row sums of one pass over the logits after the merge (:math:`p`, :math:`z`
    as in :func:`focal_elems`; :math:`q = w(a t + b)`): ``Q`` = :math:`\sum q`, ``QD`` =
    :math:`\sum q (r - x')`, ``QU`` = :math:`\sum q (1 - p)` (Poly-1, via expm1), ``QP`` =
    :math:`\sum q p` (Poly-1), ``PZ`` = :math:`\sum p z` (penalty), ``FQ``/``AQ`` =
    :math:`\sum q\,fg`, :math:`\sum q\,a` (focal). Then

    .. math::

        \ell = rs\,(QD + Q L)\ [\text{focal: } rs\,FQ] + cz (r + L)^2
               + \varepsilon_1 rs\,QU + \beta\,rs\,(PZ - L)

    and the gradient is :func:`grad_elems` with the mass :math:`rs\,q_j` in place of
    :math:`cs\,s_j`: :math:`cp = rs\,Q\ [-rs\,AQ] + 2 cz\,\mathrm{lse} + \varepsilon_1 rs\,QP -
    \beta rs\,PZ`, :math:`cps = -\varepsilon_1 rs` (times :math:`q_j`), :math:`cpx = \beta rs`.
    """
    lse = ref + L
    if terms.focal:
        loss, cp = rs * sums["FQ"], -_times(rs, sums["AQ"])
    else:
        loss, cp = rs * (sums["QD"] + sums["Q"] * L), rs * sums["Q"]
    if cz is not None:
        loss = loss + cz * lse.square()
        cp = cp + _times(2 * cz, lse)
    cps = cpx = None
    if terms.poly:
        loss = loss + terms.poly * rs * sums["QU"]
        cp = cp + terms.poly * rs * sums["QP"]
        cps = -terms.poly * rs
    if terms.confidence_penalty:
        cpx = terms.confidence_penalty * rs
        loss = loss + cpx * (sums["PZ"] - L)
        cp = cp - _times(cpx, sums["PZ"])
    return loss, cp, TermCoefs(cps=cps, cpx=cpx, gamma=terms.focal_gamma, low=sums.get("low"))
