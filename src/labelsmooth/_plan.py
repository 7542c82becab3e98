r"""The planning layer below the public losses: options, per-row plan, reduction.

Every entry point (:func:`labelsmooth.cross_entropy`, :func:`labelsmooth.linear_cross_entropy`,
the vocabulary-parallel losses, the modules) goes through the same three steps, and the
implementations in :mod:`labelsmooth.ops` only ever see their results:

1. :func:`check_options` — every option that needs no tensor data, validated once into one typed,
   immutable :class:`LossOptions` (the public signatures keep PyTorch-style keywords; inside the
   library the options travel as this one object);
2. :func:`plan_index` — the convention (ε/K, ε/(K−1), prior), the class weights, the ignore mask
   and the z-loss folded into per-row coefficients (:class:`IndexPlan`), the contract of
   :mod:`labelsmooth.ops`;
3. :func:`finish_index` — the reduction (none/sum/mean and its normaliser) applied once, outside
   the per-row work; :func:`reduction_scale` is its derivative with respect to each row's loss,
   for engines that compute gradients during the forward.

This module imports nothing from the public layer (:mod:`labelsmooth.functional` re-exports it), so
``ops/`` can depend on it without an upward arrow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from labelsmooth import _validation as V
from labelsmooth import _vocab
from labelsmooth.targets import smoothing_coefficients

Reduction = Literal["none", "mean", "sum"]
WeightMode = Literal["torch", "target"]
Impl = Literal["auto", "reference", "fused", "triton"]

#: The implementation names accepted by ``impl=`` (see :func:`labelsmooth.ops.resolve`).
IMPLS = ("auto", "reference", "fused", "triton")

class CrossEntropyStats(NamedTuple):
    """What :func:`cross_entropy_with_stats` returns.

    Attributes:
        loss: the differentiable objective (smoothed cross-entropy + z-loss), reduced.
        nll: the unsmoothed (hard-label) negative log-likelihood, reduced like ``loss``; detached.
        z_loss: the z-loss term included in ``loss``, reduced like ``loss``; detached.
        lse: per-element log-sum-exp of the (soft-capped) logits, shape of the loss before
            reduction; detached.
    """

    loss: torch.Tensor
    nll: torch.Tensor
    z_loss: torch.Tensor
    lse: torch.Tensor


def as_rows(t: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C) → (1, C); (N, C) as is; (N, C, d...) → (N·d..., C) with classes last."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() == 2:
        return t
    return t.movedim(1, -1).reshape(-1, num_classes)


def apply_reduction(
    rows: torch.Tensor, reduction: str, denom: torch.Tensor | float, shape: tuple[int, ...],
) -> torch.Tensor:
    if reduction == "none":
        return rows.reshape(shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    if isinstance(denom, torch.Tensor):
        # A zero normaliser (every element ignored, or target weights summing to 0) gives a NaN
        # mean and NaN gradients for the rows that count, as PyTorch, whose target term is then
        # 0/0, even when the smoothing term alone would give ±inf (one rule, no sync).
        denom = torch.where(denom == 0, torch.full_like(denom, float("nan")), denom)
    return total / denom


@dataclass(frozen=True)
class LossOptions:
    """Validated loss options shared by every entry point (cross_entropy, linear, distributed)."""

    ignore_index: int
    reduction: str
    label_smoothing: float
    spread: str
    prior: torch.Tensor | None
    weight_mode: str
    z_loss: float
    softcap: float | None
    impl: str
    inplace_backward: bool
    validate: bool | None
    num_classes: int | None = None  # padded vocabulary: only the first V columns are classes
    class_mask: torch.Tensor | None = None  # (K,) bool, True = a class (see labelsmooth._vocab)


def check_options(
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    spread: str = "all",
    prior: torch.Tensor | None = None,
    weight_mode: str = "torch",
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: str = "auto",
    inplace_backward: bool = False,
    validate: bool | None = None,
    num_classes: int | None = None,
    class_mask: torch.Tensor | None = None,
) -> LossOptions:
    """Check every option that needs no tensor data; raise ValueError/TypeError otherwise."""
    if not isinstance(inplace_backward, bool):
        raise V.fail("inplace_backward", "a bool", inplace_backward, TypeError)
    V.check_validate(validate)
    if prior is not None:
        V.check_floating("prior", V.check_tensor("prior", prior))
    return LossOptions(
        ignore_index=V.check_ignore_index(ignore_index),
        reduction=V.check_choice("reduction", reduction, V.REDUCTIONS),
        label_smoothing=V.check_smoothing(label_smoothing),
        spread=V.check_choice("spread", spread, V.SPREADS),
        prior=prior,
        weight_mode=V.check_choice("weight_mode", weight_mode, V.WEIGHT_MODES),
        z_loss=V.check_nonnegative("z_loss", z_loss),
        softcap=V.check_softcap(softcap),
        impl=V.check_choice("impl", impl, IMPLS),
        inplace_backward=inplace_backward,
        validate=validate,
        num_classes=V.check_num_classes(num_classes),
        class_mask=None if class_mask is None else V.check_class_mask(class_mask),
    )


@dataclass
class IndexPlan:
    r"""Per-row coefficients of the index-target loss (see :mod:`labelsmooth.ops` for the contract).

    Attributes:
        y: (R,) int64 safe target indices (ignored rows point at class 0 with zero coefficients).
        valid: (R,) bool, False for ignored rows.
        w_y: (R,) weight of each row's target class (1 without weights, 0 when ignored).
        ct, cs, cz: the ops' target, smoothing and z-loss coefficients (``cz`` None without z-loss).
        s, s_uniform: the smoothing shares, a (K,) vector or a uniform float.
        denom: the ``mean`` normaliser, :math:`\sum_n w_{y_n}` (0-d).
    """

    y: torch.Tensor
    valid: torch.Tensor
    w_y: torch.Tensor
    ct: torch.Tensor
    cs: torch.Tensor
    cz: torch.Tensor | None
    s: torch.Tensor | None
    s_uniform: float
    denom: torch.Tensor


def plan_index(
    target: torch.Tensor,
    num_classes: int,
    opts: LossOptions,
    weight: torch.Tensor | None,
    *,
    device: torch.device,
    acc: torch.dtype,
    check_values: bool,
    w_y: torch.Tensor | None = None,
) -> IndexPlan:
    """Fold the convention, class weights and ignore mask into per-row coefficients.

    Args:
        target: (R,) integer class indices (already flattened).
        num_classes: K, the full number of classes (the global vocabulary when sharded).
        opts: validated options.
        weight: (K,) class weights or None. Under vocabulary sharding pass the local shard here
            and the gathered target weights as ``w_y``.
        device, acc: where and in which dtype the coefficients live.
        check_values: check that indices lie in [0, K) (reads values).
        w_y: (R,) weights of each row's target class when they cannot be gathered locally.
    """
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise V.fail("target", "an integer tensor of class indices", target.dtype, TypeError)
    a, b = smoothing_coefficients(
        num_classes, opts.label_smoothing, spread=opts.spread, prior=opts.prior,
        check_values=check_prior_values(opts, check_values), class_mask=opts.class_mask,
    )
    y = target.to(device=device, dtype=torch.long)
    valid = y != opts.ignore_index
    if check_values and y.numel() > 0:
        bad = valid & ((y < 0) | (y >= num_classes))
        if bool(bad.any()):
            raise V.fail("target", f"class indices in [0, {num_classes}) or ignore_index="
                         f"{opts.ignore_index}", int(y[bad][0]))
    y_safe = torch.where(valid, y, torch.zeros_like(y))
    if check_values:
        _vocab.check_mask_targets(y_safe, valid, opts.class_mask)
    validf = valid.to(acc)
    w = weight.detach().to(device=device, dtype=acc) if weight is not None else None
    if isinstance(b, torch.Tensor):
        b = b.to(device=device, dtype=acc)
    if w_y is None:
        w_y = w[y_safe] * validf if w is not None else validf
    else:
        w_y = w_y.to(acc) * validf
    ct = a * w_y
    if opts.weight_mode == "torch":
        cs = validf
        if w is not None:
            # PyTorch: the smoothing mass of class c is weighted by w_c (pytorch#104776).
            b = b * w
            if opts.class_mask is not None:  # a masked class's weight is never read
                b = torch.where(opts.class_mask, b, torch.zeros((), dtype=b.dtype, device=b.device))
    else:
        cs = w_y
    if opts.label_smoothing == 0.0:
        # No smoothing term at all (not a term with zero shares): 0·(lse − x_c) is NaN where a
        # logit is −inf (masked vocabulary), while PyTorch's unsmoothed loss stays finite there.
        s, s_uniform = None, 0.0
    else:
        s, s_uniform = (b, 0.0) if isinstance(b, torch.Tensor) else (None, float(b))
    cz = opts.z_loss * w_y if opts.z_loss > 0.0 else None  # weighted and normalised like the loss
    return IndexPlan(y_safe, valid, w_y, ct, cs, cz, s, s_uniform, w_y.sum())


def check_at_construction(
    weight: torch.Tensor | None, prior: torch.Tensor | None, opts: LossOptions,
    weight_arg: str = "weight",
) -> torch.Tensor | None:
    """The class-weight and prior checks a loss module makes when it is built (one rule for all).

    The vocabulary is unknown before the first call, so the prior's own length stands for it:
    :func:`labelsmooth.smoothing_coefficients` checks spread/prior compatibility and (on the CPU
    unless ``validate=False``) that the prior is a distribution, as at call time. ``weight`` (named
    ``weight_arg`` in messages) must be a floating 1-D tensor of the prior's length. Returns it.

    Examples:
        >>> opts = check_options(label_smoothing=0.1)
        >>> check_at_construction(None, torch.tensor([0.5, 0.5]), opts)
        >>> check_at_construction(torch.ones(3), torch.tensor([0.5, 0.5]), opts)
        Traceback (most recent call last):
        ...
        ValueError: Expected `prior` to be of the weight's length 3, but got 2.
    """
    if weight is not None:
        weight = V.check_floating(weight_arg, V.check_tensor(weight_arg, weight))
        if weight.dim() != 1:
            raise V.fail(weight_arg, "a 1-D tensor (one entry per class)", tuple(weight.shape))
    if prior is not None:
        if prior.dim() != 1:
            raise V.fail("prior", "a 1-D tensor (one entry per class)", tuple(prior.shape))
        smoothing_coefficients(prior.shape[0], opts.label_smoothing, spread=opts.spread,
                               prior=prior, check_values=check_prior_values(opts, opts.validate is True),
                               arg="label_smoothing")
        if weight is not None and weight.shape != prior.shape:
            what = "the weight's" if weight_arg == "weight" else f"{weight_arg}'s"
            raise V.fail("prior", f"of {what} length {weight.shape[0]}", prior.shape[0])
    return weight


def check_prior_values(opts: LossOptions, check_values: bool) -> bool:
    # A prior on the CPU is read without a device sync, so the default (validate=None) checks it
    # even for CUDA inputs; validate=False skips every value check.
    if check_values:
        return True
    return opts.validate is None and opts.prior is not None and opts.prior.device.type == "cpu"


def finish_index(
    loss_rows: torch.Tensor,
    lse: torch.Tensor,
    x_y: torch.Tensor | None,
    plan: IndexPlan,
    opts: LossOptions,
    out_shape: tuple[int, ...],
    out_dtype: torch.dtype,
    stats: bool,
    nll_rows: torch.Tensor | None = None,
) -> CrossEntropyStats:
    """Apply the reduction once, outside the per-row work; optionally the logging statistics.

    ``x_y`` is the (soft-capped) target logit per row, needed only when ``stats`` is True and
    ``nll_rows`` (the per-row weighted NLL :math:`w_y(\\mathrm{lse} - x_y)`, computed by an op
    relative to the row max) is not given.
    """
    # Ignored rows carry zero coefficients, but 0·inf is NaN when their (padding) logits hold ±inf
    # at the placeholder class; PyTorch leaves them out, so zero them by selection (no sync).
    loss_rows = torch.where(plan.valid, loss_rows, torch.zeros((), dtype=loss_rows.dtype,
                                                               device=loss_rows.device))
    loss = apply_reduction(loss_rows, opts.reduction, plan.denom, out_shape).to(out_dtype)
    if not stats:
        return CrossEntropyStats(loss, loss, loss, lse)
    with torch.no_grad():
        if nll_rows is None:
            nll_rows = (lse - x_y.to(lse.dtype)) * plan.w_y
        nll_rows = torch.where(plan.valid, nll_rows, 0.0)
        # select, not multiply: an ignored row's lse may be ±inf (cz = 0 there, and 0·inf = nan)
        z_rows = (torch.where(plan.valid, plan.cz * lse.square(), 0.0) if plan.cz is not None
                  else torch.zeros_like(lse))
        nll = apply_reduction(nll_rows, opts.reduction, plan.denom, out_shape).to(out_dtype)
        zl = apply_reduction(z_rows, opts.reduction, plan.denom, out_shape).to(out_dtype)
    return CrossEntropyStats(loss, nll, zl, lse.reshape(out_shape))


def reduction_scale(plan: IndexPlan, opts: LossOptions) -> torch.Tensor:
    r"""The derivative of :func:`finish_index`'s reduced loss with respect to each row's loss.

    ``sum``: 1; ``mean``: :math:`1/\sum_n w_{y_n}` (NaN when that normaliser is 0, as the mean
    itself); ``none``: 1 (the upstream gradient is per row then). Ignored rows get exactly 0, so a
    batch in which every element is ignored has zero gradients (as in PyTorch), not 0·∞. For
    engines that compute gradients during the forward (:mod:`labelsmooth.ops.linear_ce`).

    Examples:
        >>> opts = check_options(reduction="mean")
        >>> plan = plan_index(torch.tensor([0, -100, 1]), 3, opts, None, device=torch.device("cpu"),
        ...                   acc=torch.float32, check_values=True)
        >>> reduction_scale(plan, opts)
        tensor([0.5000, 0.0000, 0.5000])
    """
    one = torch.ones_like(plan.w_y)
    if opts.reduction == "mean":
        denom = plan.denom.to(plan.w_y.dtype)
        denom = torch.where(denom == 0, torch.full_like(denom, float("nan")), denom)
        one = one / denom
    return torch.where(plan.valid, one, torch.zeros_like(one))
