"""Thin ``nn.Module`` wrappers: they store the configuration and call :mod:`labelsmooth.functional`."""

from __future__ import annotations

import torch
from torch import nn

from labelsmooth import _validation as V
from labelsmooth.functional import (
    Impl,
    Reduction,
    WeightMode,
    binary_cross_entropy_with_logits,
    cross_entropy,
)
from labelsmooth.targets import Spread, smoothing_coefficients

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss"]


class CrossEntropyLoss(nn.Module):
    """Label-smoothed cross-entropy; a drop-in for :class:`torch.nn.CrossEntropyLoss`.

    See :func:`labelsmooth.cross_entropy` for the arguments and the maths. Hyper-parameters are
    checked once, here; ``weight`` and ``prior`` are buffers, so they follow ``.to(device)``.

    Examples:
        >>> loss_fn = CrossEntropyLoss(label_smoothing=0.1)
        >>> loss_fn(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]))
        tensor(0.3365)
    """

    weight: torch.Tensor | None
    prior: torch.Tensor | None

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
    ) -> None:
        super().__init__()
        self.ignore_index = V.check_ignore_index(ignore_index)
        self.reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
        self.label_smoothing = V.check_smoothing(label_smoothing)
        self.spread = V.check_choice("spread", spread, V.SPREADS)
        self.weight_mode = V.check_choice("weight_mode", weight_mode, V.WEIGHT_MODES)
        self.z_loss = V.check_nonnegative("z_loss", z_loss)
        self.softcap = V.check_softcap(softcap)
        self.impl = impl
        self.inplace_backward = inplace_backward
        self.validate = validate
        if weight is not None:
            weight = V.check_floating("weight", V.check_tensor("weight", weight))
        if prior is not None:
            smoothing_coefficients(prior.shape[0] if prior.dim() == 1 else -1, self.label_smoothing,
                                   spread=self.spread, prior=prior)
        self.register_buffer("weight", weight)
        self.register_buffer("prior", prior)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            input, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
            spread=self.spread, prior=self.prior, weight_mode=self.weight_mode, z_loss=self.z_loss,
            softcap=self.softcap, impl=self.impl, inplace_backward=self.inplace_backward,
            validate=self.validate,
        )

    def extra_repr(self) -> str:
        return (f"label_smoothing={self.label_smoothing}, spread={self.spread!r}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, impl={self.impl!r}")


class BCEWithLogitsLoss(nn.Module):
    """Binary / multi-label cross-entropy with smoothed targets.

    See :func:`labelsmooth.binary_cross_entropy_with_logits`.

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
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, self.pos_weight, self.reduction, self.label_smoothing
        )
