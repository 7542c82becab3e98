r"""Smoothing conventions: the one home of every smoothed-target formula.

Every smoothed target in this library is an affine map of the (one-hot or soft) target ``t``:

.. math::

    q_c = a \, t_c + b_c

with ``(a, b)`` from :func:`smoothing_coefficients`:

==================  =====================  ==========================  =============================
convention          :math:`a`              :math:`b_c`                 one-hot target gets
==================  =====================  ==========================  =============================
``spread="all"``    :math:`1-\varepsilon`  :math:`\varepsilon/K`        :math:`1-\varepsilon+\varepsilon/K`
``spread="others"`` :math:`1-\varepsilon K/(K-1)`  :math:`\varepsilon/(K-1)`  :math:`1-\varepsilon`
``prior=p``         :math:`1-\varepsilon`  :math:`\varepsilon p_c`      :math:`1-\varepsilon+\varepsilon p_y`
==================  =====================  ==========================  =============================

``spread="all"`` is PyTorch's (Szegedy et al. 2016); ``spread="others"`` is fairseq's and Megatron's.
They are one family: ``others`` with ε equals ``all`` with ε·K/(K−1).
"""

from __future__ import annotations

import numbers
from typing import Literal

import torch

from labelsmooth import _validation as V

Spread = Literal["all", "others"]

__all__ = [
    "Spread",
    "binary_targets",
    "entropy_floor",
    "mixup_targets",
    "smooth_probabilities",
    "smooth_targets",
    "smoothing_coefficients",
]


def smoothing_coefficients(
    num_classes: int,
    smoothing: float,
    *,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
    check_values: bool = True,
    arg: str = "smoothing",
) -> tuple[float, float | torch.Tensor]:
    r"""Coefficients ``(a, b)`` of the smoothed target :math:`q = a\,t + b`.

    Args:
        num_classes: K, the number of classes.
        smoothing: ε in [0, 1].
        spread: ``"all"`` spreads ε over all K classes (ε/K each, PyTorch); ``"others"`` over the
            K−1 non-target classes (ε/(K−1) each, fairseq/Megatron).
        prior: optional length-K distribution replacing the uniform share: :math:`b = \varepsilon p`.
            Only with ``spread="all"``.
        check_values: check that ``prior`` is a distribution (reads its values).
        arg: the name under which ``smoothing`` is reported in errors.

    Returns:
        ``a`` as a float and ``b`` as a float (uniform share) or a (K,) tensor (prior).

    Examples:
        >>> smoothing_coefficients(4, 0.1)
        (0.9, 0.025)
        >>> a, b = smoothing_coefficients(4, 0.3, spread="others")
        >>> round(a, 6), round(b, 6)
        (0.6, 0.1)
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise V.fail("num_classes", "a positive int", num_classes, TypeError)
    num_classes = int(num_classes)
    if num_classes < 1:
        raise V.fail("num_classes", "a positive int", num_classes)
    eps = V.check_smoothing(smoothing, arg)
    spread = V.check_choice("spread", spread, V.SPREADS)
    if spread == "others":
        if prior is not None:
            raise V.fail("prior", 'None when spread="others" (a prior replaces the uniform share of '
                         'spread="all")', V.tensor_value(prior))
        if num_classes < 2:
            raise V.fail("spread", f'"all" with {num_classes} class (spread="others" puts the mass on '
                         "the K-1 other classes, so it needs at least 2 classes)", spread)
        share = eps / (num_classes - 1)
        return 1.0 - eps - share, share
    if prior is not None:
        prior = V.check_prior(prior, num_classes, check_values=check_values)
        return 1.0 - eps, eps * prior
    return 1.0 - eps, eps / num_classes


def _check_index_target(
    target: torch.Tensor, num_classes: int, arg: str = "target", validate: bool | None = None,
) -> torch.Tensor:
    target = V.check_tensor(arg, target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise V.fail(arg, "an integer tensor of class indices", target.dtype, TypeError)
    if V.should_check_values(validate, target) and target.numel() > 0:
        bad = (target < 0) | (target >= num_classes)
        if bool(bad.any()):
            raise V.fail(arg, f"class indices in [0, {num_classes})", int(target[bad][0]))
    return target.long()


def smooth_probabilities(
    probs: torch.Tensor,
    smoothing: float,
    *,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Smooth soft targets along the last dimension: :math:`q = a\,t + b` (see module docstring).

    For ``spread="others"`` this is :math:`(1-\varepsilon)t + \varepsilon(1-t)/(K-1)`.

    Examples:
        >>> smooth_probabilities(torch.tensor([0.5, 0.5, 0.0, 0.0]), 0.2)
        tensor([0.4500, 0.4500, 0.0500, 0.0500])
    """
    probs = V.check_floating("probs", V.check_tensor("probs", probs))
    a, b = smoothing_coefficients(probs.shape[-1], smoothing, spread=spread, prior=prior)
    if isinstance(b, torch.Tensor):
        b = b.to(device=probs.device, dtype=probs.dtype)
    return probs * a + b


def smooth_targets(
    target: torch.Tensor,
    num_classes: int,
    smoothing: float,
    *,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
    validate: bool | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""Turn class indices into smoothed target distributions.

    .. math::

        q_c = a\,[c = y] + b_c

    with :math:`(a, b)` from :func:`smoothing_coefficients`. PyTorch equivalent for ``spread="all"``:
    ``F.one_hot(target, K) * (1 - ε) + ε / K``.

    Args:
        target: integer class indices of any shape.
        num_classes: K.
        smoothing: ε in [0, 1].
        spread: ``"all"`` (ε/K to every class) or ``"others"`` (ε/(K−1) to every other class).
        prior: optional length-K distribution; ε·prior replaces the uniform share.
        validate: check that indices lie in [0, K): ``None`` on CPU only (no host-device sync on
            accelerators), ``True`` always, ``False`` never.
        dtype: floating dtype of the result; by default float32 (float64 if the prior is float64).

    Returns:
        A tensor of shape ``target.shape + (K,)`` whose rows sum to 1.

    Raises:
        TypeError: ``target`` is not an integer tensor.
        ValueError: an index outside [0, K), ε outside [0, 1], a bad spread or prior.

    Examples:
        >>> smooth_targets(torch.tensor([0, 2, 3]), 4, 0.1)
        tensor([[0.9250, 0.0250, 0.0250, 0.0250],
                [0.0250, 0.0250, 0.9250, 0.0250],
                [0.0250, 0.0250, 0.0250, 0.9250]])
        >>> smooth_targets(torch.tensor([1]), 2, 0.1, spread="others")
        tensor([[0.1000, 0.9000]])
    """
    a, b = smoothing_coefficients(num_classes, smoothing, spread=spread, prior=prior)
    target = _check_index_target(target, num_classes, validate=validate)
    if dtype is None:
        dtype = torch.float64 if isinstance(b, torch.Tensor) and b.dtype == torch.float64 else torch.float32
    elif not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise V.fail("dtype", "None or a floating torch.dtype", dtype, TypeError)
    onehot = torch.nn.functional.one_hot(target, num_classes).to(dtype)
    if isinstance(b, torch.Tensor):
        b = b.to(device=target.device, dtype=dtype)
    return onehot * a + b


def mixup_targets(
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    lam: float,
    num_classes: int,
    smoothing: float = 0.0,
    *,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Soft targets for mixup/cutmix: mix two label sets with λ, then smooth.

    .. math::

        q = a\,\big(\lambda\, e_{y_a} + (1-\lambda)\, e_{y_b}\big) + b

    Smoothing after mixing equals mixing two smoothed targets (the map is affine), so the order
    does not matter; pass the result to :func:`labelsmooth.cross_entropy` as a probability target
    with ``label_smoothing=0``.

    Args:
        target_a: class indices of the first images.
        target_b: class indices of the images mixed in (same shape).
        lam: λ in [0, 1], the weight of ``target_a``.
        num_classes: K.
        smoothing: ε in [0, 1].
        spread: see :func:`smooth_targets`.
        prior: see :func:`smooth_targets`.

    Examples:
        >>> mixup_targets(torch.tensor([0]), torch.tensor([1]), 0.7, 3, 0.3)
        tensor([[0.5900, 0.3100, 0.1000]])
    """
    lam = V.check_smoothing(lam, "lam")
    smoothing_coefficients(num_classes, smoothing, spread=spread, prior=prior)
    target_a = _check_index_target(target_a, num_classes, "target_a")
    target_b = _check_index_target(target_b, num_classes, "target_b")
    if target_a.shape != target_b.shape:
        raise V.fail("target_b", f"the shape of target_a {tuple(target_a.shape)}", tuple(target_b.shape))
    one_a = torch.nn.functional.one_hot(target_a, num_classes).float()
    one_b = torch.nn.functional.one_hot(target_b, num_classes).float()
    return smooth_probabilities(lam * one_a + (1.0 - lam) * one_b, smoothing, spread=spread, prior=prior)


def binary_targets(target: torch.Tensor, smoothing: float) -> torch.Tensor:
    r"""Smoothed binary / multi-label targets (Keras' convention): :math:`y(1-\varepsilon) + \varepsilon/2`.

    Each label is a two-class problem, so the uniform share is ε/2: 1 → 1−ε/2 and 0 → ε/2.
    PyTorch equivalent: ``target * (1 - ε) + ε / 2``.

    Examples:
        >>> binary_targets(torch.tensor([1.0, 0.0]), 0.1)
        tensor([0.9500, 0.0500])
    """
    target = V.check_floating("target", V.check_tensor("target", target))
    eps = V.check_smoothing(smoothing, "label_smoothing")
    return target * (1.0 - eps) + 0.5 * eps


def entropy_floor(
    num_classes: int,
    smoothing: float,
    *,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The lowest smoothed cross-entropy a model can reach: the entropy of the smoothed target.

    .. math::

        H(q) = -\sum_c q_c \log q_c

    The cross-entropy against q is H(q) + KL(q‖p) ≥ H(q), with equality at p = q, so a smoothed
    training loss never falls below this floor; logs should show it next to the loss.

    Returns:
        A 0-d float64 tensor (nats); with a prior, a (K,) tensor: the floor for each target class.

    Examples:
        >>> round(float(entropy_floor(10, 0.1)), 4)
        0.5003
        >>> float(entropy_floor(10, 0.0)) == 0.0
        True
    """
    a, b = smoothing_coefficients(num_classes, smoothing, spread=spread, prior=prior)
    if isinstance(b, torch.Tensor):
        q = torch.eye(num_classes, dtype=torch.float64, device=b.device) * a + b.double()
    else:
        q = torch.full((1, num_classes), b, dtype=torch.float64)
        q[0, 0] += a
    h = -torch.special.xlogy(q, q).sum(-1)
    return h if isinstance(b, torch.Tensor) else h[0]
