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

import math
import numbers
from typing import Literal

import torch

from labelsmooth import _validation as V

Spread = Literal["all", "others"]

__all__ = [
    "Spread",
    "binary_targets",
    "cutmix",
    "cutmix_box",
    "entropy_floor",
    "mixup_targets",
    "masked_scale",
    "masked_shares",
    "restrict_prior",
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
    class_mask: torch.Tensor | None = None,
) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    r"""Coefficients ``(a, b)`` of the smoothed target :math:`q = a\,t + b`.

    Args:
        num_classes: K, the number of classes.
        smoothing: ε in [0, 1].
        spread: ``"all"`` spreads ε over all K classes (ε/K each, PyTorch); ``"others"`` over the
            K−1 non-target classes (ε/(K−1) each, fairseq/Megatron).
        prior: optional length-K distribution replacing the uniform share: :math:`b = \varepsilon p`.
            Only with ``spread="all"``.
        check_values: check that ``prior`` is a distribution (reads its values); with a
            ``class_mask``, also that it leaves enough classes (reads the mask).
        arg: the name under which ``smoothing`` is reported in errors.
        class_mask: optional (K,) bool tensor, True for the classes that exist (a masked or padded
            vocabulary). The smoothing mass is then spread over the :math:`V` valid classes only:
            :math:`b_c = \varepsilon/V` (``"all"``) or :math:`\varepsilon/(V-1)` (``"others"``) on
            valid classes and exactly 0 on masked ones; a prior is restricted to the valid classes
            and renormalised there (:func:`restrict_prior`). :math:`V` is counted on the device,
            without a host sync, so ``b`` is then always a float64 (K,) tensor on the mask's device
            and ``a`` a 0-d tensor for ``"others"``.

    Returns:
        ``a`` as a float (0-d tensor for ``spread="others"`` with a ``class_mask``) and ``b`` as a
        float (uniform share) or a (K,) tensor (prior, or any ``class_mask``).

    Examples:
        >>> smoothing_coefficients(4, 0.1)
        (0.9, 0.025)
        >>> a, b = smoothing_coefficients(4, 0.3, spread="others")
        >>> round(a, 6), round(b, 6)
        (0.6, 0.1)

        Over a padded vocabulary only the valid classes share ε:

        >>> smoothing_coefficients(4, 0.3, class_mask=torch.tensor([True, True, True, False]))
        (0.7, tensor([0.1000, 0.1000, 0.1000, 0.0000], dtype=torch.float64))
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
    if class_mask is not None:
        return _masked_coefficients(num_classes, eps, spread, prior, check_values, class_mask)
    if spread == "others":
        share = eps / (num_classes - 1)
        return 1.0 - eps - share, share
    if prior is not None:
        prior = V.check_prior(prior, num_classes, check_values=check_values)
        return 1.0 - eps, eps * prior
    return 1.0 - eps, eps / num_classes


def _masked_coefficients(
    num_classes: int, eps: float, spread: str, prior: torch.Tensor | None, check_values: bool,
    class_mask: torch.Tensor,
) -> tuple[float | torch.Tensor, torch.Tensor]:
    """:func:`smoothing_coefficients` over the valid classes of ``class_mask`` (no host sync)."""
    mask = V.check_class_mask(class_mask, num_classes)
    n_valid = mask.sum(dtype=torch.float64)
    if check_values:
        V.check_mask_count(int(n_valid), 2 if spread == "others" else 1, spread)
    if prior is not None:
        prior = V.check_prior(prior, num_classes, check_values=check_values)
        return masked_shares(mask, eps, spread, n_valid,
                             restrict_prior(prior, mask, check_values=check_values), 1.0)
    return masked_shares(mask, eps, spread, n_valid)


def masked_scale(
    eps: float, spread: str, n_valid: torch.Tensor, prior_mass: torch.Tensor | float | None = None,
) -> tuple[float | torch.Tensor, torch.Tensor]:
    r"""``(a, k)`` over a masked vocabulary: the target coefficient and the factor of the unit shares.

    The shares are :math:`b_c = k\,u_c` with :math:`u_c = 1` on each valid class (or
    :math:`u_c = p_c`, a prior restricted to them) and 0 on masked ones: :math:`k = \varepsilon/V`
    (``"all"``), :math:`\varepsilon/(V-1)` (``"others"``, then :math:`a = 1-\varepsilon-k`, a
    0-d tensor) or :math:`\varepsilon/\sum_{\text{valid}} p` (a prior; ``prior_mass`` given).
    ``n_valid`` and ``prior_mass`` are tensors counted by the caller (summed over the ranks of a
    sharded vocabulary), so nothing is read on the host.

    Examples:
        >>> masked_scale(0.3, "others", torch.tensor(4.0))
        (tensor(0.6000), tensor(0.1000))
    """
    if spread == "others":
        k = eps / (n_valid - 1)
        return 1.0 - eps - k, k
    if prior_mass is not None:
        return 1.0 - eps, eps / prior_mass
    return 1.0 - eps, eps / n_valid


def masked_shares(
    mask: torch.Tensor, eps: float, spread: str, n_valid: torch.Tensor,
    prior: torch.Tensor | None = None, prior_mass: torch.Tensor | float | None = None,
) -> tuple[float | torch.Tensor, torch.Tensor]:
    r"""``(a, b)`` over the valid classes of ``mask``: :func:`masked_scale` times the unit shares.

    ``b`` is a float64 tensor of ``mask``'s length, exactly 0 on masked classes.

    Examples:
        >>> m = torch.tensor([True, False, True])
        >>> masked_shares(m, 0.2, "all", m.sum(dtype=torch.float64))
        (0.8, tensor([0.1000, 0.0000, 0.1000], dtype=torch.float64))
    """
    a, k = masked_scale(eps, spread, n_valid, prior_mass if prior is not None else None)
    zero = torch.zeros((), dtype=torch.float64, device=mask.device)
    u = (prior.to(device=mask.device, dtype=torch.float64) if prior is not None
         else torch.ones((), dtype=torch.float64, device=mask.device))
    return a, torch.where(mask, k * u, zero)


def restrict_prior(
    prior: torch.Tensor, keep: torch.Tensor | int, *, check_values: bool = True,
) -> torch.Tensor:
    r"""A prior restricted to the valid classes and renormalised there (the one rule).

    :math:`p'_c = p_c\,[c\ \text{valid}] / \sum_{c'\ \text{valid}} p_{c'}` in float64: masked
    classes get exactly 0, so a prior over a padded vocabulary (e.g. unigram counts with zeros on
    the padding) can be passed as is, and mass a prior puts on masked classes is redistributed in
    proportion over the others.

    Args:
        prior: (K,) distribution (checked by the caller).
        keep: (K,) bool mask of valid classes, or an int V: the first V classes are valid (the
            result then has length V).
        check_values: raise if the valid classes carry no prior mass (reads the values).

    Examples:
        >>> restrict_prior(torch.tensor([0.4, 0.4, 0.2]), 2)
        tensor([0.5000, 0.5000], dtype=torch.float64)
        >>> restrict_prior(torch.tensor([0.5, 0.25, 0.25]), torch.tensor([False, True, True]))
        tensor([0.0000, 0.5000, 0.5000], dtype=torch.float64)
    """
    if isinstance(keep, torch.Tensor):
        # to the mask's device (the logits'): a CUDA mask is never read back to the host
        p = prior.to(device=keep.device, dtype=torch.float64)
        p = torch.where(keep, p, torch.zeros((), dtype=p.dtype, device=p.device))
    else:
        p = prior.to(torch.float64)[:keep]
    total = p.sum()
    if check_values and not float(total) > 0.0:
        raise V.fail("prior", "a distribution with mass on the valid classes (num_classes / "
                     "class_mask leave only those)", V.tensor_value(prior))
    return p / total


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


def _check_lam(lam: float | torch.Tensor, batch_shape: torch.Size, device: torch.device,
               validate: bool | None) -> float | torch.Tensor:
    """λ: a float, a 0-d tensor or one value per sample (shape (N,)), in [0, 1].

    Type, shape and device are metadata (always checked). Values are read only where the losses
    read them: a float always (under ``torch.compile`` a changing float is symbolic and the range
    check becomes a guard on the range, not on the value), a tensor when
    :func:`~labelsmooth._validation.should_check_values` says so (CPU in eager mode, or
    ``validate=True``; never while compiling).
    """
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point():
            raise V.fail("lam", "a float, or a floating tensor of shape () or (N,)", lam.dtype,
                         TypeError)
        n = batch_shape[0] if len(batch_shape) else None
        if lam.dim() > 1 or (lam.dim() == 1 and (n is None or lam.shape[0] != n)):
            want = "()" if n is None else f"() or ({n},) (one λ per sample)"
            raise V.fail("lam", f"a tensor of shape {want}", tuple(lam.shape))
        if lam.dim() == 1 and lam.device != device:
            raise V.fail("lam", f"on the targets' device {device}", lam.device)
        if V.should_check_values(validate, lam) and lam.numel() > 0:
            bad = ~((lam >= 0) & (lam <= 1))  # NaN fails both comparisons
            if bool(bad.any()):
                raise V.fail("lam", "values in [0, 1]", float(lam.reshape(-1)[bad.reshape(-1)][0]))
        return lam
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise V.fail("lam", "a float in [0, 1], or a floating tensor of shape () or (N,)",
                     type(lam).__name__, TypeError)
    if validate is False:
        return lam
    return V.check_smoothing(lam, "lam")


def mixup_targets(
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    lam: float | torch.Tensor,
    num_classes: int,
    smoothing: float = 0.0,
    *,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
    validate: bool | None = None,
) -> torch.Tensor:
    r"""Soft targets for mixup/cutmix: mix two label sets with λ, then smooth.

    .. math::

        q = a\,\big(\lambda\, e_{y_a} + (1-\lambda)\, e_{y_b}\big) + b

    Smoothing after mixing equals mixing two smoothed targets (the map is affine), so the order
    does not matter; pass the result to :func:`labelsmooth.cross_entropy` as a probability target
    with ``label_smoothing=0``. PyTorch equivalent (``spread="all"``)::

        (lam * F.one_hot(y_a, K) + (1 - lam) * F.one_hot(y_b, K)) * (1 - ε) + ε / K

    Works under ``torch.compile(fullgraph=True)``: λ as a float or a tensor is traced, not read,
    so a new λ per batch recompiles at most once (a float becomes symbolic on the second value)
    and never breaks the graph.

    Args:
        target_a: class indices of the first images, shape (N, ...).
        target_b: class indices of the images mixed in (same shape).
        lam: λ in [0, 1], the weight of ``target_a``: a float, a 0-d tensor (what
            ``torch.distributions.Beta(α, α).sample()`` returns) or a (N,) tensor, one λ per
            sample (per-sample mixup).
        num_classes: K.
        smoothing: ε in [0, 1].
        spread: see :func:`smooth_targets`.
        prior: see :func:`smooth_targets`.
        validate: check the indices and a tensor λ's values: ``None`` on CPU in eager mode only (no
            host-device sync on accelerators, nothing read while compiling), ``True`` always,
            ``False`` never.

    Returns:
        A ``target_a.shape + (K,)`` tensor of float32 (float64 if λ is a float64 tensor) whose
        rows sum to 1.

    Examples:
        >>> mixup_targets(torch.tensor([0]), torch.tensor([1]), 0.7, 3, 0.3)
        tensor([[0.5900, 0.3100, 0.1000]])
        >>> mixup_targets(torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([1.0, 0.25]), 3)
        tensor([[1.0000, 0.0000, 0.0000],
                [0.2500, 0.0000, 0.7500]])
    """
    V.check_validate(validate)
    target_a = _check_index_target(target_a, num_classes, "target_a", validate)
    target_b = _check_index_target(target_b, num_classes, "target_b", validate)
    if target_a.shape != target_b.shape:
        raise V.fail("target_b", f"the shape of target_a {tuple(target_a.shape)}", tuple(target_b.shape))
    lam = _check_lam(lam, target_a.shape, target_a.device, validate)
    dtype = torch.float32
    if isinstance(lam, torch.Tensor):
        dtype = torch.promote_types(dtype, lam.dtype)
        # (N,) → (N, 1, ..., 1): one λ per sample, broadcast over its positions and classes.
        lam = lam.to(dtype).reshape(lam.shape + (1,) * (target_a.dim() + 1 - lam.dim()))
    one_a = torch.nn.functional.one_hot(target_a, num_classes).to(dtype)
    one_b = torch.nn.functional.one_hot(target_b, num_classes).to(dtype)
    mixed = lam * one_a + (1.0 - lam) * one_b
    return smooth_probabilities(mixed, smoothing, spread=spread, prior=prior)


def cutmix_box(
    height: int,
    width: int,
    lam: float,
    *,
    generator: torch.Generator | None = None,
) -> tuple[tuple[int, int, int, int], float]:
    r"""A CutMix box for an image of ``height`` × ``width``, and the λ its area gives.

    CutMix (Yun et al. 2019) pastes a box of another image, of area about (1−λ)·H·W, centred at a
    uniformly random pixel and clipped to the image. The label weight must be the share of the
    image that is still the original one, so λ is recomputed from the clipped box:

    .. math::

        \lambda' = 1 - \frac{(y_1 - y_0)(x_1 - x_0)}{H W}

    (the same rule as timm's ``cutmix_bbox_and_lam`` with ``correct_lam=True``). Runs on the host
    (Python ints), as data augmentation does: call it outside the compiled region.

    Args:
        height, width: the image size H, W.
        lam: the sampled λ in [0, 1] (e.g. ``Beta(1, 1)``): the intended share of the original.
        generator: optional ``torch.Generator`` for the box centre.

    Returns:
        ``((y0, y1, x0, x1), lam_area)``: paste ``other[..., y0:y1, x0:x1]`` into the images and
        pass ``lam_area`` to :func:`mixup_targets`.

    Examples:
        >>> box, lam = cutmix_box(32, 32, 0.75, generator=torch.Generator().manual_seed(0))
        >>> box, lam
        ((4, 20, 7, 23), 0.75)
        >>> (box[1] - box[0]) * (box[3] - box[2]) == round((1 - lam) * 32 * 32)
        True
    """
    for arg, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise V.fail(arg, "a positive int", v, TypeError)
        if v < 1:
            raise V.fail(arg, "a positive int", v)
    lam = V.check_smoothing(lam, "lam")
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    lam_area = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return (y0, y1, x0, x1), lam_area


def cutmix(
    images: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    lam: float,
    smoothing: float = 0.0,
    *,
    perm: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""CutMix a batch: paste a box of ``images[perm]`` into ``images``; smoothed soft targets.

    The box and λ come from :func:`cutmix_box`; the targets are
    ``mixup_targets(target, target[perm], λ_area, K, ε)``. The images are not modified in place.

    Args:
        images: (N, ..., H, W) images (channels anywhere before H, W).
        target: (N,) class indices.
        num_classes, smoothing, spread, prior: as in :func:`mixup_targets`.
        lam: the sampled λ in [0, 1].
        perm: which image is pasted into each one (default: a random permutation drawn
            from ``generator``).
        generator: optional ``torch.Generator`` for the permutation and the box.

    Returns:
        ``(mixed_images, soft_targets, lam_area)``.

    Examples:
        >>> x = torch.zeros(2, 1, 4, 4); x[1] = 1.0
        >>> mixed, q, lam = cutmix(x, torch.tensor([0, 1]), 2, 0.75, perm=torch.tensor([1, 0]),
        ...                        generator=torch.Generator().manual_seed(0))
        >>> lam, float(mixed[0].mean()), q[0].tolist()
        (0.875, 0.125, [0.875, 0.125])
    """
    images = V.check_floating("images", V.check_tensor("images", images))
    target = V.check_tensor("target", target)
    if images.dim() < 3 or target.dim() != 1 or images.shape[0] != target.shape[0]:
        raise V.fail("images", f"a (N, ..., H, W) tensor with N = len(target) = "
                     f"{target.shape[0] if target.dim() == 1 else '?'}", tuple(images.shape))
    n = images.shape[0]
    if perm is None:
        perm = torch.randperm(n, generator=generator).to(images.device)
    else:
        perm = V.check_tensor("perm", perm)
        if perm.shape != (n,):
            raise V.fail("perm", f"a ({n},) tensor of indices into the batch", tuple(perm.shape))
    (y0, y1, x0, x1), lam_area = cutmix_box(images.shape[-2], images.shape[-1], lam,
                                            generator=generator)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
    q = mixup_targets(target, target[perm.to(target.device)], lam_area, num_classes, smoothing,
                      spread=spread, prior=prior)
    return mixed, q, lam_area


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
