r"""Spatially varying label smoothing for segmentation (Islam & Glocker, IPMI 2021, "SVLS").

A pixel's soft target is a Gaussian-weighted vote of the labels around it, so smoothing happens
where annotators disagree (object boundaries) and nowhere inside uniform regions:

.. math::

    q_{c}(u) = \frac{\sum_{v} k(v)\, m(u+v)\, [y(u+v) = c]}{\sum_{v} k(v)\, m(u+v)}

with :math:`m` the mask of non-ignored pixels, replicate padding at the borders (a border pixel
counts as its own neighbour), and the kernel :math:`k` one of

* ``kernel="svls"`` (the paper's): a normalised Gaussian :math:`G` (:math:`G(v) \propto
  \prod_d e^{-v_d^2/2\sigma_d^2}` on a ``kernel_size`` window) whose centre weight :math:`g_c` is
  raised to the neighbours' total :math:`1-g_c`, then renormalised:
  :math:`k = \tfrac12\,\delta + \tfrac12\,(G - g_c\delta)/(1-g_c)`. Half of the mass stays on the
  pixel's own label whatever σ, and a pixel with no differently-labelled neighbour keeps its
  one-hot target;
* ``kernel="gaussian"``: :math:`k = G`, a plain Gaussian blur of the one-hot map.

Both are computed with one 1-D pass per spatial axis (:math:`G` is separable; the SVLS kernel is
:math:`G` plus a multiple of the identity).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch

from labelsmooth import _validation as V

__all__ = ["spatial_smooth_targets"]

Kernel = Literal["svls", "gaussian"]


def _per_axis(arg: str, value: Any, ndim: int, check) -> list:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != ndim:
            raise V.fail(arg, f"a number or a sequence of {ndim} (one per spatial dimension)",
                         list(value))
        return [check(v) for v in value]
    return [check(value)] * ndim


def _check_sigma(value: Any) -> float:
    if not V._is_real(value):
        raise V.fail("sigma", "a positive float (or one per spatial dimension)", value, TypeError)
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise V.fail("sigma", "a finite positive float (or one per spatial dimension)", value)
    return value


def _check_kernel_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise V.fail("kernel_size", "an odd positive int (or one per spatial dimension)", value,
                     TypeError)
    value = int(value)
    if value < 1 or value % 2 == 0:
        raise V.fail("kernel_size", "an odd positive int (or one per spatial dimension)", value)
    return value


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    r = size // 2
    i = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(i**2) / (2.0 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, kernels: list[torch.Tensor], first_axis: int) -> torch.Tensor:
    """Separable correlation along axes first_axis, first_axis+1, ... with replicate padding."""
    for d, g in enumerate(kernels):
        r = g.numel() // 2
        if r == 0:
            x = x * g[0].item()
            continue
        axis = first_axis + d
        n = x.shape[axis]
        idx = torch.arange(-r, n + r, device=x.device).clamp_(0, n - 1)
        padded = x.index_select(axis, idx)
        w = g.tolist()
        out = padded.narrow(axis, 0, n) * w[0]
        for j in range(1, len(w)):
            out = out + padded.narrow(axis, j, n) * w[j]
        x = out
    return x


def spatial_smooth_targets(
    target: torch.Tensor,
    num_classes: int,
    sigma: float | Sequence[float] = 1.0,
    *,
    kernel_size: int | Sequence[int] = 3,
    kernel: Kernel = "svls",
    ignore_index: int = -100,
    dtype: torch.dtype | None = None,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Spatially varying soft targets from a label map (SVLS, Islam & Glocker 2021).

    See the module docstring for the formula. The result is a probability target for
    :func:`labelsmooth.cross_entropy` (``target.shape == input.shape``): classes in dimension 1,
    each non-ignored pixel's row summing to 1. Ignored pixels (``ignore_index``) get an all-zero
    row, so they add neither loss nor gradient, and they cast no vote on their neighbours (the
    vote is renormalised over the annotated ones). A probability-target ``mean`` divides by every
    pixel, ignored ones included; divide a ``"sum"`` by the number of annotated pixels instead.

    Args:
        target: integer label map (N, H, W) or (N, D, H, W) (any N ≥ 1 and, generally, any number
            of spatial dimensions after the batch dimension).
        num_classes: K.
        sigma: Gaussian standard deviation in pixels, one number or one per spatial dimension
            (anisotropic voxels).
        kernel_size: odd window size, one number or one per spatial dimension (the paper: 3).
        kernel: ``"svls"`` (the paper's kernel, half the mass on the centre) or ``"gaussian"``.
        ignore_index: label of unannotated pixels.
        dtype: floating dtype of the result (default float32).
        validate: check that labels lie in [0, K) or equal ``ignore_index`` (``None``: CPU only).

    Returns:
        (N, K, H, W) or (N, K, D, H, W) soft targets.

    Examples:
        >>> y = torch.zeros(1, 3, 3, dtype=torch.long)
        >>> y[0, 1, 1] = 1                       # one foreground pixel
        >>> q = spatial_smooth_targets(y, 2, sigma=1.0)
        >>> q[0, 1]                              # half its mass stays; neighbours get a share
        tensor([[0.0472, 0.0778, 0.0472],
                [0.0778, 0.5000, 0.0778],
                [0.0472, 0.0778, 0.0472]])
        >>> x = torch.randn(1, 2, 3, 3)
        >>> loss = torch.nn.functional.cross_entropy(x, q)   # or labelsmooth.cross_entropy
    """
    target = V.check_tensor("target", target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise V.fail("target", "an integer label map (N, H, W) or (N, D, H, W)", target.dtype,
                     TypeError)
    if target.dim() < 2:
        raise V.fail("target", "a label map (N, H, W) or (N, D, H, W)", tuple(target.shape))
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise V.fail("num_classes", "a positive int", num_classes, TypeError)
    num_classes = int(num_classes)
    if num_classes < 1:
        raise V.fail("num_classes", "a positive int", num_classes)
    ndim = target.dim() - 1
    sigmas = _per_axis("sigma", sigma, ndim, _check_sigma)
    sizes = _per_axis("kernel_size", kernel_size, ndim, _check_kernel_size)
    kernel = V.check_choice("kernel", kernel, ("svls", "gaussian"))
    ignore_index = V.check_ignore_index(ignore_index)
    if dtype is None:
        dtype = torch.float32
    elif not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise V.fail("dtype", "None or a floating torch.dtype", dtype, TypeError)
    y = target.long()
    valid = y != ignore_index
    if V.should_check_values(validate, target) and y.numel() > 0:
        bad = valid & ((y < 0) | (y >= num_classes))
        if bool(bad.any()):
            raise V.fail("target", f"labels in [0, {num_classes}) or ignore_index={ignore_index}",
                         int(y[bad][0]))
    y = torch.where(valid, y, torch.zeros_like(y))
    has_ignored = not bool(valid.all()) if y.device.type == "cpu" else True
    validf = valid.unsqueeze(1).to(dtype)
    onehot = torch.nn.functional.one_hot(y, num_classes).movedim(-1, 1).to(dtype) * validf

    kernels = [_gaussian_1d(s, sg) for s, sg in zip(sizes, sigmas)]
    center = math.prod(float(g[g.numel() // 2]) for g in kernels)

    def smooth(x: torch.Tensor) -> torch.Tensor:
        blurred = _blur(x, kernels, first_axis=2)
        if kernel == "gaussian":
            return blurred
        rest = 1.0 - center
        if rest <= 0.0:  # σ so small that the Gaussian is the identity
            return x
        return (blurred + (1.0 - 2.0 * center) * x) / (2.0 * rest)

    mass = smooth(onehot)
    if not has_ignored:
        return mass
    votes = smooth(validf)
    return torch.where(valid.unsqueeze(1), mass / torch.where(valid.unsqueeze(1), votes, 1.0),
                       torch.zeros((), dtype=dtype, device=mass.device))
