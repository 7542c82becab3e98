"""Temperature scaling (Guo et al., 2017) with a solver that converges.

Scaling logits ``z`` by ``1/T`` never changes the argmax, so accuracy is unchanged, and with
``beta = 1/T`` the validation NLL

.. math::
    \\mathcal L(\\beta) = \\frac1N\\sum_i \\Bigl[\\log\\sum_k e^{\\beta z_{ik}}
    - \\beta z_{i y_i}\\Bigr]

is convex in ``beta`` (a log-sum-exp of linear functions), with derivative
``L'(beta) = mean_i(E_{p_beta}[z_i] - z_{i y_i})`` and curvature
``L''(beta) = mean_i Var_{p_beta}[z_i] >= 0``.  :func:`fit_temperature` brackets the root of
``L'`` and runs Newton steps safeguarded by bisection, in float64, until a step changes ``beta`` by
less than 1e-13 relative -- instead of a fixed budget of LBFGS steps, which is known to stop
early.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from labelsmooth._validation import _Shown, check_choice, fail, should_check_values, tensor_value
from labelsmooth.calibration._stats import (
    as_tensor,
    bin_stats,
    ce_from_stats,
    check_n_bins,
    checked,
    width_bins,
)

__all__ = ["TemperatureFit", "apply_temperature", "fit_temperature"]

_OBJECTIVES = ("nll", "ece")


class TemperatureFit(NamedTuple):
    """Result of :func:`fit_temperature`; all fields are Python floats.

    NLL and ECE are evaluated on the fitting data with the logits in float64.

    Attributes:
        temperature: fitted ``T > 0`` (divide logits by it).
        nll_before: mean NLL at ``T = 1`` on the fitting data.
        nll_after: mean NLL at the fitted ``T``.
        ece_before: top-label ECE (``n_bins`` equal-width bins) at ``T = 1``.
        ece_after: the same ECE at the fitted ``T``.
    """

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float


def _check_temperature(temperature: Any, validate: bool | None = None) -> None:
    expected = "a positive finite float or a one-element float tensor"
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise fail(
                "temperature",
                expected,
                tensor_value(temperature, limit=0),
            )
        # Reading the value is a host-device sync on accelerators: CPU by default, as the losses.
        if should_check_values(validate, temperature):
            t = float(temperature.detach().reshape(()))
            if not (math.isfinite(t) and t > 0):
                raise fail("temperature", expected, tensor_value(temperature))
        return
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise fail("temperature", expected, type(temperature).__name__, TypeError)
    if not (math.isfinite(temperature) and temperature > 0):
        raise fail("temperature", expected, temperature)


def apply_temperature(
    logits: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    validate: bool | None = None,
) -> torch.Tensor:
    """Return ``logits / temperature`` (calibrated probabilities are its softmax).

    Args:
        logits: tensor of logits, classes in the last dimension.
        temperature: ``T > 0`` (float or one-element tensor).
        validate: check a tensor temperature's value (``T > 0``, finite): ``None`` on CPU only
            (no host-device sync on accelerators), ``True`` always, ``False`` never.

    Example:
        >>> apply_temperature(torch.tensor([[2.0, -1.0]]), 2.0)
        tensor([[ 1.0000, -0.5000]])
    """
    logits = as_tensor(logits, "logits")
    if not logits.is_floating_point():
        raise fail("logits", "a floating-point tensor", logits.dtype, TypeError)
    _check_temperature(temperature, validate)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.reshape(()).to(device=logits.device)
    return logits / temperature


def _validate(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    # The metrics' shape, dtype and value checks, always (fitting reads values to the host anyway,
    # so checking costs no extra sync), then finiteness: a fit needs finite logits.
    z, y = checked(logits, labels, True, check=True, arg="logits")
    bad = ~torch.isfinite(z).all(dim=1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise fail(
            "logits",
            "finite (pass logits, not log-probabilities that can be -inf)",
            _Shown(f"logits[{i}] = {tensor_value(z[i])}"),
        )
    return z.to(torch.float64), y


def _nll_terms(z: torch.Tensor, zy: torch.Tensor, beta: float) -> tuple[float, float, float]:
    """NLL(beta), dNLL/dbeta and d2NLL/dbeta2, each a mean over samples."""
    s = beta * z
    lse = torch.logsumexp(s, dim=1)
    p = torch.exp(s - lse[:, None])
    ez = (p * z).sum(dim=1)
    ez2 = (p * z * z).sum(dim=1)
    nll = (lse - beta * zy).mean()
    grad = (ez - zy).mean()
    curv = (ez2 - ez * ez).clamp_min(0.0).mean()
    return float(nll), float(grad), float(curv)


def _fit_nll(z: torch.Tensor, zy: torch.Tensor, t_min: float, t_max: float) -> float:
    b_lo, b_hi = 1.0 / t_max, 1.0 / t_min
    beta = min(max(1.0, b_lo), b_hi)
    _, g, h = _nll_terms(z, zy, beta)
    if g == 0.0:
        return 1.0 / beta
    # Bracket the root of the (non-decreasing) derivative, growing geometrically from beta = 1.
    if g < 0:
        lo, hi = beta, beta
        while True:
            if hi >= b_hi:
                _, g_hi, _ = _nll_terms(z, zy, b_hi)
                if g_hi <= 0:
                    return t_min  # NLL still decreasing at the bound: separable data
                hi = b_hi
                break
            lo, hi = hi, min(hi * 4.0, b_hi)
            _, g_hi, _ = _nll_terms(z, zy, hi)
            if g_hi > 0:  # g == 0 here is underflow on separable data, not a root: keep going
                break
    else:
        lo, hi = beta, beta
        while True:
            if lo <= b_lo:
                _, g_lo, _ = _nll_terms(z, zy, b_lo)
                if g_lo >= 0:
                    return t_max  # NLL still increasing at the bound: logits carry no signal
                lo = b_lo
                break
            hi, lo = lo, max(lo / 4.0, b_lo)
            _, g_lo, _ = _nll_terms(z, zy, lo)
            if g_lo < 0:
                break
    # Safeguarded Newton on [lo, hi] with g(lo) <= 0 <= g(hi): quadratic convergence near the
    # root, bisection whenever a Newton step would leave the bracket.
    beta = 0.5 * (lo + hi)
    for _ in range(200):
        _, g, h = _nll_terms(z, zy, beta)
        if g == 0.0:
            break
        if g < 0:
            lo = beta
        else:
            hi = beta
        step = beta - g / h if h > 0 else math.nan
        new = step if lo < step < hi else 0.5 * (lo + hi)
        done = abs(new - beta) <= 1e-13 * beta
        beta = new
        if done:
            break
    return 1.0 / beta


def _ece_at(z: torch.Tensor, labels: torch.Tensor, temperature: float, n_bins: int) -> float:
    # The argmax does not depend on T; only the confidence 1 / sum_k exp((z_k - z_max) / T) moves.
    pred = z.argmax(dim=1)  # first index on ties, as in the metrics
    zmax = z.gather(1, pred[:, None]).squeeze(1)
    conf = 1.0 / torch.exp((z - zmax[:, None]) / temperature).sum(dim=1)
    correct = (pred == labels).to(torch.float64)
    stats = bin_stats(width_bins(conf, n_bins), conf, correct, n_bins)
    return float(ce_from_stats(*stats, "l1"))


def _fit_ece(
    z: torch.Tensor, labels: torch.Tensor, n_bins: int, t_min: float, t_max: float
) -> float:
    # ECE(T) is piecewise smooth with jumps: search a log grid, then refine twice around the best.
    # The grid T in {0.1, 0.2, ..., 10} of Mukhoti et al.'s code is included, so the result is never
    # worse than theirs.
    lo, hi = math.log(t_min), math.log(t_max)
    best_t, best = math.nan, math.inf
    if t_min <= 1.0 <= t_max:  # T = 1 (no change) is a candidate only inside the bounds
        best_t, best = 1.0, _ece_at(z, labels, 1.0, n_bins)
    for t in (i / 10 for i in range(1, 101)):
        if t_min <= t <= t_max:
            e = _ece_at(z, labels, t, n_bins)
            if e < best:
                best_t, best = t, e
    for points in (201, 41, 41):
        grid = torch.linspace(lo, hi, points, dtype=torch.float64).exp().tolist()
        for t in grid:
            t = min(max(t, t_min), t_max)  # exp(log(t)) can round just past a bound
            e = _ece_at(z, labels, t, n_bins)
            if e < best:
                best_t, best = t, e
        step = (hi - lo) / (points - 1)
        # refine around the best point, never past the bounds
        lo = max(math.log(best_t) - step, math.log(t_min))
        hi = min(math.log(best_t) + step, math.log(t_max))
    return best_t


def fit_temperature(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    objective: str = "nll",
    n_bins: int = 15,
    t_min: float = 1e-2,
    t_max: float = 1e2,
) -> TemperatureFit:
    r"""Fit one temperature ``T`` on held-out logits (Guo et al., 2017).

    ``objective="nll"`` minimises the mean NLL of ``softmax(logits / T)``: a 1-D convex problem in
    ``beta = 1/T`` solved by bracketing plus bisection-safeguarded Newton in float64 (converged to
    ~1e-12 relative in ``beta``).  ``objective="ece"`` minimises the top-label ECE with
    ``n_bins`` equal-width bins over ``T = 1``, the grid ``{0.1, 0.2, ..., 10}`` of Mukhoti et al.
    and a log-spaced grid of ``T`` in ``[t_min, t_max]`` refined twice around the best point (ECE is
    discontinuous in ``T``, so no gradient method applies); ties keep the earliest ``T`` found.
    The result lies in ``[t_min, t_max]``: ``t_min`` is returned for separable data whose NLL keeps
    decreasing, ``t_max`` for logits whose NLL keeps decreasing as they flatten.

    Fit on a validation split, never on the test data.  Accuracy is unchanged by construction.

    Args:
        logits: ``(N, K)`` logits (not probabilities).
        labels: ``(N,)`` integer class indices.
        objective: ``"nll"`` (default) or ``"ece"``.
        n_bins: bins for the reported ECE (and for ``objective="ece"``).
        t_min: smallest temperature considered.
        t_max: largest temperature considered.

    Returns:
        :class:`TemperatureFit` with the temperature and NLL/ECE before and after.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> true_logits = 2.0 * torch.randn(2000, 3, generator=g)
        >>> labels = torch.multinomial(true_logits.softmax(-1), 1, generator=g).squeeze(1)
        >>> fit = fit_temperature(3.0 * true_logits, labels)  # over-confident by 3x
        >>> 2.5 < fit.temperature < 3.5, fit.nll_after < fit.nll_before
        (True, True)
    """
    check_choice("objective", objective, _OBJECTIVES)
    n_bins = check_n_bins(n_bins)
    for name, v in (("t_min", t_min), ("t_max", t_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise fail(name, "a positive finite float", v, TypeError)
        if not (math.isfinite(v) and v > 0):
            raise fail(name, "a positive finite float", v)
    if not t_min < t_max:
        raise fail("t_min", f"smaller than t_max = {t_max!r}", t_min)
    z, y = _validate(logits, labels)
    zy = z.gather(1, y[:, None]).squeeze(1)
    if objective == "nll":
        t = _fit_nll(z, zy, float(t_min), float(t_max))
    else:
        t = _fit_ece(z, y, n_bins, float(t_min), float(t_max))
    nll_before = _nll_terms(z, zy, 1.0)[0]
    nll_after = _nll_terms(z, zy, 1.0 / t)[0]
    return TemperatureFit(
        temperature=float(t),
        nll_before=nll_before,
        nll_after=nll_after,
        ece_before=_ece_at(z, y, 1.0, n_bins),
        ece_after=_ece_at(z, y, t, n_bins),
    )
