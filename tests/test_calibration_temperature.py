"""Temperature scaling: the fit agrees with a fine NumPy grid (T within 1 %), beats a fixed-budget
LBFGS, recovers a known temperature, leaves accuracy unchanged and reports consistent numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelsmooth.calibration import (
    TemperatureFit,
    accuracy,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from labelsmooth.calibration.temperature import _nll_terms


pytestmark = pytest.mark.usefixtures("one_thread")


def _calibrated(seed: int, n: int, k: int, spread: float = 1.5):
    """Logits ``z`` and labels drawn from ``softmax(z)``: calibrated at T = 1 by construction."""
    g = torch.Generator().manual_seed(seed)
    z = spread * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z, y


def _numpy_nll(z: np.ndarray, y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Mean NLL of softmax(z / t) for each temperature in ``t`` (float64, stable log-sum-exp)."""
    out = np.empty(len(t))
    zy = z[np.arange(len(y)), y]
    for i, ti in enumerate(t):
        s = z / ti
        m = s.max(1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(s - m).sum(1))
        out[i] = np.mean(lse - zy / ti)
    return out


def _grid_temperature(z: torch.Tensor, y: torch.Tensor) -> float:
    """argmin over a log grid of ratio 1.01 on [0.05, 20], then a 0.01 %-step grid around it."""
    zn, yn = z.double().numpy(), y.numpy()
    t = np.exp(np.arange(np.log(0.05), np.log(20.0), np.log(1.01)))
    i = int(np.argmin(_numpy_nll(zn, yn, t)))
    fine = np.linspace(t[max(i - 1, 0)], t[min(i + 1, len(t) - 1)], 201)
    return float(fine[np.argmin(_numpy_nll(zn, yn, fine))])


CASES = [  # (seed, n, k, logit scale): over-confident, under-confident (LS-like), calibrated
    (0, 2000, 10, 3.0),
    (1, 1000, 100, 0.4),
    (2, 1000, 3, 1.0),
    (3, 300, 2, 8.0),
]


@pytest.mark.parametrize("seed,n,k,scale", CASES)
def test_fit_matches_fine_grid_and_beats_lbfgs(seed, n, k, scale):
    z, y = _calibrated(seed, n, k)
    logits = (scale * z).float()
    fit = fit_temperature(logits, y)
    assert isinstance(fit, TemperatureFit)
    t_grid = _grid_temperature(logits, y)
    assert abs(fit.temperature - t_grid) / t_grid < 1e-2  # the bar (measured: ~1e-6)
    assert abs(fit.temperature - t_grid) / t_grid < 2e-4  # the grid's own resolution
    # The reference recipe (LBFGS, lr=0.01, max_iter=50, from T = 1.5) stops early on these data:
    # our NLL is never worse than what it reaches.
    t = torch.nn.Parameter(torch.tensor([1.5]))
    opt = torch.optim.LBFGS([t], lr=0.01, max_iter=50)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / t, y)
        loss.backward()
        return loss

    opt.step(closure)
    nll_lbfgs = F.cross_entropy(logits.double() / t.detach().double(), y).item()
    assert fit.nll_after <= nll_lbfgs + 1e-12


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
def test_recovers_known_temperature(scale):
    z, y = _calibrated(10, 20000, 5, spread=2.0)
    fit = fit_temperature(scale * z, y)
    assert fit.temperature == pytest.approx(scale, rel=0.05)


def test_reported_numbers_and_accuracy_unchanged():
    z, y = _calibrated(11, 1500, 8)
    logits = 2.5 * z
    fit = fit_temperature(logits, y, n_bins=10)
    scaled = apply_temperature(logits, fit.temperature)
    assert (
        accuracy(scaled, y, from_logits=True).item() == accuracy(logits, y, from_logits=True).item()
    )
    assert fit.nll_before == pytest.approx(
        negative_log_likelihood(logits, y, from_logits=True).item(), abs=1e-12
    )
    assert fit.nll_after == pytest.approx(
        negative_log_likelihood(scaled, y, from_logits=True).item(), abs=1e-12
    )
    assert fit.ece_before == pytest.approx(
        expected_calibration_error(logits, y, 10, from_logits=True).item(), abs=1e-12
    )
    assert fit.ece_after == pytest.approx(
        expected_calibration_error(scaled, y, 10, from_logits=True).item(), abs=1e-12
    )
    assert fit.nll_after < fit.nll_before and fit.ece_after < fit.ece_before
    # Over-confident by 2.5x: T > 1; under-confident: T < 1 (as for label-smoothed models).
    assert fit.temperature > 1.5
    assert fit_temperature(0.4 * z, y).temperature < 0.7


def test_ece_objective():
    z, y = _calibrated(12, 2000, 10)
    logits = 3.0 * z
    fit_e = fit_temperature(logits, y, objective="ece")
    fit_n = fit_temperature(logits, y)
    assert fit_e.ece_after <= fit_n.ece_after + 1e-15
    assert fit_e.ece_after <= fit_e.ece_before
    # never worse than the {0.1, ..., 10} grid of Mukhoti et al.'s evaluation code
    grid = [
        expected_calibration_error(logits / (i / 10), y, from_logits=True).item()
        for i in range(1, 101)
    ]
    assert fit_e.ece_after <= min(grid) + 1e-12
    assert fit_e.ece_after == pytest.approx(
        expected_calibration_error(logits / fit_e.temperature, y, from_logits=True).item(),
        abs=1e-12,
    )


@pytest.mark.parametrize("t_min, t_max", [(0.01, 0.5), (2.0, 10.0), (5.0, 100.0), (0.3, 0.7)])
def test_ece_objective_stays_inside_the_bounds(t_min, t_max):
    # Over-confident logits whose ECE optimum (T near 3) lies outside some of these ranges:
    # the fit must still be one of the allowed temperatures, not T = 1 or a refined point past
    # a bound.
    z, y = _calibrated(5, 2000, 5)
    fit = fit_temperature(3.0 * z, y, objective="ece", t_min=t_min, t_max=t_max)
    assert t_min <= fit.temperature <= t_max
    # and no worse than either bound itself
    for t in (t_min, t_max):
        ece_t = expected_calibration_error(3.0 * z / t, y, from_logits=True).item()
        assert fit.ece_after <= ece_t + 1e-12


def test_degenerate_data_hits_the_bounds():
    # Separable: NLL keeps falling as T -> 0.
    z = torch.tensor([[3.0, 0.0], [0.0, 2.0], [5.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    assert fit_temperature(z, y).temperature == 1e-2
    assert fit_temperature(z, y, t_min=0.1).temperature == 0.1
    # Always wrong: the flattest prediction is best, T -> t_max.
    assert fit_temperature(z, 1 - y, t_max=50.0).temperature == 50.0


def test_nll_derivatives_match_autograd():
    z, y = _calibrated(13, 50, 4)
    zy = z.gather(1, y[:, None]).squeeze(1)
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    nll = F.cross_entropy(beta * z, y)
    (g,) = torch.autograd.grad(nll, beta, create_graph=True)
    (h,) = torch.autograd.grad(g, beta)
    val, grad, curv = _nll_terms(z, zy, 0.7)
    assert val == pytest.approx(nll.item(), abs=1e-13)
    assert grad == pytest.approx(g.item(), abs=1e-13)
    assert curv == pytest.approx(h.item(), abs=1e-12)


def test_apply_temperature_and_validation():
    z = torch.tensor([[2.0, -1.0]])
    assert torch.equal(apply_temperature(z, 2.0), z / 2)
    assert torch.equal(apply_temperature(z, torch.tensor(4.0)), z / 4)
    with pytest.raises(ValueError, match="Expected `temperature` to be a positive finite float"):
        apply_temperature(z, 0.0)
    with pytest.raises(TypeError, match="Expected `temperature`.*but got 'str'"):
        apply_temperature(z, "2")
    # A tensor temperature's value is checked on CPU by default (no sync needed there).
    with pytest.raises(ValueError, match=r"Expected `temperature`.*tensor\(\[-1.0\]\)"):
        apply_temperature(z, torch.tensor([-1.0]))
    assert torch.equal(apply_temperature(z, torch.tensor(-1.0), validate=False), -z)
    y = torch.tensor([0])
    with pytest.raises(ValueError, match="Expected `objective`"):
        fit_temperature(z, y, objective="brier")
    with pytest.raises(ValueError, match=r"Expected `logits` to be logits without NaN.*\[0\]"):
        fit_temperature(torch.tensor([[float("nan"), 0.0]]), y)
    with pytest.raises(ValueError, match="Expected `logits` to be finite.*logits\\[0\\]"):
        fit_temperature(torch.tensor([[float("-inf"), 0.0]]), y)
    with pytest.raises(ValueError, match=r"`labels` to be class indices in \[0, 2\), .* = 2"):
        fit_temperature(z, torch.tensor([2]))
    with pytest.raises(ValueError, match="Expected `t_min` to be smaller than t_max"):
        fit_temperature(z, y, t_min=2.0, t_max=1.0)
    with pytest.raises(ValueError, match=r"Expected `logits` to be a 2-D tensor"):
        fit_temperature(z[0], y)
