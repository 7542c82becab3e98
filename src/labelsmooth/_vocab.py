r"""Padded and masked vocabularies: the ``num_classes=`` and ``class_mask=`` options.

One rule for every loss entry point (:func:`labelsmooth.cross_entropy` and its modules,
:func:`labelsmooth.linear_cross_entropy`, the vocabulary-parallel loss, the integrations):

* ``num_classes=V`` — only the first V of the K logit columns are classes; the rest is padding
  (Megatron pads the vocabulary to a multiple of 128·TP, many checkpoints ship padded embedding
  tables). The logits are narrowed to their first V columns, a view: zero cost, and the padded
  columns are never read. Per-class vectors (``weight``, ``prior``, ``class_mask``) may have
  length K or V; probability targets are narrowed like the logits.
* ``class_mask`` — a (K,) bool tensor, True for a class. Masked columns are replaced by −inf by
  selection (``torch.where``) before the per-row op, so whatever they hold (±inf, NaN) is never
  read, and their gradient is exactly 0.

With either, a masked class is outside the softmax and outside the smoothing mass: the shares
become ε/V_valid (``spread="all"``) or ε/(V_valid−1) (``"others"``), a ``prior`` is restricted to
the valid classes and renormalised there (:func:`labelsmooth.targets.restrict_prior`), and class
weights of masked classes are never read by the smoothing term. Loss and gradient equal the dense
loss on the valid sub-vocabulary. An index target pointing at a masked class is refused where
values are checked (``validate=True``, or CPU tensors by default); unchecked, its logit counts as
−inf, so that element's loss is +inf (as PyTorch with a −inf target logit). Probability targets
are restricted to the valid classes as given (mass on masked classes is dropped, not
renormalised). No host-device sync unless values are checked.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from labelsmooth import _validation as V
from labelsmooth.ops._math import acc_dtype, apply_softcap
from labelsmooth.targets import restrict_prior

__all__ = ["check_mask_targets", "mask_rows", "narrow_options", "narrow_vector", "restrict"]


def narrow_vector(
    arg: str, value: torch.Tensor | None, width: int, num_classes: int,
) -> torch.Tensor | None:
    """A per-class vector of length ``width`` (K) narrowed to its first ``num_classes`` (V) entries.

    A vector already of length V is returned as is; any other length is left for the caller's
    length check (which then names V).
    """
    if value is None or not isinstance(value, torch.Tensor) or value.dim() != 1:
        return value
    if value.shape[0] == width and num_classes < width:
        return value[:num_classes]
    return value


def narrow_options(
    opts: Any, width: int, weight: torch.Tensor | None, *, device: torch.device,
    check_values: bool,
) -> tuple[torch.Tensor | None, Any]:
    """Apply ``opts.num_classes`` to the per-class vectors and check ``opts.class_mask``.

    ``width`` is the number of logit columns K. Returns ``(weight, opts)`` for a dense problem
    over the first V columns (V = ``num_classes``, or K): the class weights, prior and mask
    narrowed when they have length K (a prior is then restricted and renormalised), the mask on
    ``device``. The caller narrows the logits (or the projection) to V columns itself.
    """
    nc = opts.num_classes
    prior = opts.prior
    mask = opts.class_mask
    if nc is not None:
        if nc > width:
            raise V.fail("num_classes", f"at most the logits' class dimension {width} (the first "
                         "num_classes columns are the classes, the rest padding)", nc)
        if nc < width:
            weight = narrow_vector("weight", weight, width, nc)
            mask = narrow_vector("class_mask", mask, width, nc)
            if prior is not None and prior.dim() == 1 and prior.shape[0] == width:
                # a prior over all K columns: checked as a distribution there, then restricted to
                # the first V classes and renormalised (one rule with class_mask)
                prior = V.check_prior(prior, width, check_values=check_values)
                prior = restrict_prior(prior, nc, check_values=check_values).to(prior.dtype)
        width = nc
    if mask is not None:
        mask = V.check_class_mask(mask, width)
        if mask.device != device:
            mask = mask.to(device)
        if check_values:
            V.check_mask_count(int(mask.sum()), 2 if opts.spread == "others" else 1, opts.spread)
    return weight, dataclasses.replace(opts, prior=prior, class_mask=mask)


def restrict(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: Any,
    width: int,
    *,
    class_dim: int,
    check_values: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Any]:
    """:func:`narrow_options`, and the logits narrowed to their first V columns (a view).

    Returns ``(input, target, weight, opts)`` for a dense problem over V columns; ``target`` is
    narrowed only when it holds probabilities (shaped like ``input``).
    """
    nc = opts.num_classes
    if nc is not None and nc < width:
        if target.shape == input.shape and target.dim() == input.dim():
            target = target.narrow(class_dim, 0, nc)
        input = input.narrow(class_dim, 0, nc)
    weight, opts = narrow_options(opts, width, weight, device=input.device,
                                  check_values=check_values)
    return input, target, weight, opts


def mask_rows(x: torch.Tensor, opts: Any) -> tuple[torch.Tensor, Any]:
    """Masked columns of the (R, K) rows replaced by −inf, by selection (exact zero gradient there).

    The soft-cap is applied first (in the accumulation dtype, as the ops do) and then dropped
    from the returned options: :math:`c\\tanh(-\\infty/c) = -c` would put a masked class back
    into the softmax.
    """
    mask = opts.class_mask
    if mask is None:
        return x, opts
    if opts.softcap is not None:
        # select before the cap too: tanh's backward would turn a NaN column's 0 into NaN
        x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
        x = apply_softcap(x.to(acc_dtype(x.dtype)), opts.softcap)
        opts = dataclasses.replace(opts, softcap=None)
    ninf = torch.full((), -torch.inf, dtype=x.dtype, device=x.device)
    return torch.where(mask, x, ninf), opts


def check_mask_targets(y: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raise if a non-ignored index target points at a masked class (reads values: checked only).

    ``y`` must already be safe indices in [0, K) (ignored rows pointing anywhere valid).
    """
    if mask is None or y.numel() == 0:
        return
    bad = valid & ~mask[y]
    if bool(bad.any()):
        cls = int(y[bad][0])
        raise V.fail("target", "class indices of valid classes (class_mask is False or the "
                     f"column lies past num_classes for class {cls})", cls)
