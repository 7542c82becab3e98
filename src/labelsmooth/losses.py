"""Thin ``nn.Module`` wrappers: they store the configuration and call :mod:`labelsmooth.functional`."""

from __future__ import annotations

import torch
from torch import nn

from labelsmooth import _validation as V
from labelsmooth.functional import (
    Impl,
    Reduction,
    WeightMode,
    _check_positional,
    binary_cross_entropy_with_logits,
    check_at_construction,
    check_options,
    cross_entropy,
)
from labelsmooth.ops._terms import check_impl_supports, check_terms
from labelsmooth.targets import Spread

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss"]


class CrossEntropyLoss(nn.Module):
    r"""Label-smoothed cross-entropy; a drop-in for :class:`torch.nn.CrossEntropyLoss`.

    For an element with target y and smoothed target :math:`q = a\,e_y + b` (``spread="all"``:
    :math:`a = 1-\varepsilon`, :math:`b_c = \varepsilon/K`),

    .. math::

        \ell = -\sum_c w_c\, q_c \log \mathrm{softmax}(x)_c

    reduced like PyTorch (``mean`` divides by :math:`\sum_n w_{y_n}` over kept elements). PyTorch
    equivalent with torch's arguments alone: ``torch.nn.CrossEntropyLoss(weight, ignore_index=...,
    reduction=..., label_smoothing=ε)``. See :func:`labelsmooth.cross_entropy` for every argument
    (``spread``, ``prior``, ``weight_mode``, ``z_loss``, ``softcap``, ``impl``, ``validate``,
    and the terms ``confidence_penalty``, ``poly``, ``focal_gamma``).

    Hyper-parameters are checked once, here (a bad value raises at construction); ``weight``,
    ``prior`` and ``class_mask`` are buffers, so they follow ``.to(device)`` and appear in the
    ``state_dict``. ``num_classes=V`` / ``class_mask`` treat a padded or masked vocabulary as in
    :func:`labelsmooth.cross_entropy`.

    Examples:
        >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
        >>> loss_fn(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
        tensor(0.3365)
    """

    weight: torch.Tensor | None
    prior: torch.Tensor | None
    class_mask: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        *,
        spread: Spread = "all",
        prior: torch.Tensor | None = None,
        weight_mode: WeightMode = "torch",
        z_loss: float = 0.0,
        softcap: float | None = None,
        impl: Impl = "auto",
        inplace_backward: bool = False,
        validate: bool | None = None,
        confidence_penalty: float = 0.0,
        poly: float = 0.0,
        focal_gamma: float | str | None = None,
        num_classes: int | None = None,
        class_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        # Check every hyper-parameter now, so a bad configuration fails where it is written.
        _check_positional(ignore_index, reduction)
        opts = check_options(ignore_index, reduction, label_smoothing, spread, prior, weight_mode,
                             z_loss, softcap, impl, inplace_backward, validate, num_classes,
                             class_mask)
        weight = check_at_construction(weight, prior, opts)
        terms = check_terms(confidence_penalty, poly, focal_gamma)
        check_impl_supports(opts.impl, terms)
        self.confidence_penalty = terms.confidence_penalty
        self.poly = terms.poly
        self.focal_gamma = terms.focal_gamma
        self.ignore_index = opts.ignore_index
        self.reduction = opts.reduction
        self.label_smoothing = opts.label_smoothing
        self.spread = opts.spread
        self.weight_mode = opts.weight_mode
        self.z_loss = opts.z_loss
        self.softcap = opts.softcap
        self.impl = opts.impl
        self.inplace_backward = opts.inplace_backward
        self.validate = opts.validate
        self.num_classes = opts.num_classes
        self.register_buffer("weight", weight)
        self.register_buffer("prior", prior)
        self.register_buffer("class_mask", opts.class_mask)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
            spread=self.spread, prior=self.prior, weight_mode=self.weight_mode, z_loss=self.z_loss,
            softcap=self.softcap, impl=self.impl, inplace_backward=self.inplace_backward,
            validate=self.validate, confidence_penalty=self.confidence_penalty, poly=self.poly,
            focal_gamma=self.focal_gamma, num_classes=self.num_classes, class_mask=self.class_mask,
        )

    def extra_repr(self) -> str:
        parts = [f"label_smoothing={self.label_smoothing}", f"spread={self.spread!r}",
                 f"reduction={self.reduction!r}", f"ignore_index={self.ignore_index}",
                 f"weight_mode={self.weight_mode!r}"]
        if self.z_loss:
            parts.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            parts.append(f"softcap={self.softcap}")
        if self.num_classes is not None:
            parts.append(f"num_classes={self.num_classes}")
        if self.class_mask is not None:
            parts.append(f"class_mask=<{int(self.class_mask.shape[0])} columns>")
        for name in ("confidence_penalty", "poly", "focal_gamma"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name)!r}")
        parts.append(f"impl={self.impl!r}")
        return ", ".join(parts)


class BCEWithLogitsLoss(nn.Module):
    r"""Binary / multi-label cross-entropy with logits on smoothed targets :math:`t(1-\varepsilon)+\varepsilon/2`.

    PyTorch equivalent: ``torch.nn.BCEWithLogitsLoss(weight, reduction=..., pos_weight=...)``
    applied to ``target * (1 - ε) + ε / 2``. See :func:`labelsmooth.binary_cross_entropy_with_logits`.

    Examples:
        >>> BCEWithLogitsLoss(label_smoothing=0.1)(torch.tensor([3.0]), torch.tensor([1.0]))
        tensor(0.1986)
    """

    weight: torch.Tensor | None
    pos_weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        reduction: Reduction = "mean",
        pos_weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
        self.label_smoothing = V.check_smoothing(label_smoothing)
        for name, value in (("weight", weight), ("pos_weight", pos_weight)):
            if value is not None:
                V.check_floating(name, V.check_tensor(name, value))
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, self.pos_weight, self.reduction, self.label_smoothing
        )
