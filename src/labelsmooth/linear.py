r"""Fused linear + label-smoothed cross-entropy: the loss of ``hidden @ weight.T + bias`` without its logits.

The implementation (chunking, memory budget, when gradients are computed) is in
:mod:`labelsmooth.ops.linear_ce`; this module validates arguments and exposes the public API.
"""

from __future__ import annotations

import torch
from torch import nn

from labelsmooth import _validation as V
from labelsmooth import _vocab
from labelsmooth._plan import (
    Impl,
    Reduction,
    WeightMode,
    check_at_construction,
    check_options,
    plan_index,
)
from labelsmooth.ops import linear_ce
from labelsmooth.ops._math import acc_dtype
from labelsmooth.ops._terms import check_impl_supports, check_terms
from labelsmooth.targets import Spread

__all__ = ["LinearCrossEntropyLoss", "linear_cross_entropy"]


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    spread: Spread = "all",
    prior: torch.Tensor | None = None,
    weight_mode: WeightMode = "torch",
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: Impl = "auto",
    validate: bool | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    num_classes: int | None = None,
    class_mask: torch.Tensor | None = None,
    confidence_penalty: float = 0.0,
    poly: float = 0.0,
    focal_gamma: float | str | None = None,
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy of a linear projection, computed chunk by chunk.

    Equals ``labelsmooth.cross_entropy(hidden @ weight.T + bias, target, class_weight, …)`` — loss
    and gradients with respect to ``hidden``, ``weight`` and ``bias`` — but the (tokens × V)
    logits are never held: at most one chunk of them exists at a time (see
    :mod:`labelsmooth.ops.linear_ce` for how the chunk is chosen from the memory budget). With
    :math:`x_n = W h_n + b` and the smoothed target :math:`q = a\,e_y + b'`
    (:func:`labelsmooth.smoothing_coefficients`), each token contributes

    .. math::

        \ell_n = a\,w_{y_n}(\mathrm{lse}(x_n) - x_{n,y_n})
                 + \sum_c b'_c\,w_c\,(\mathrm{lse}(x_n) - x_{n,c}) + z\,w_{y_n}\,\mathrm{lse}(x_n)^2

    (``weight_mode="torch"``; ``"target"`` scales the whole row by :math:`w_{y_n}` instead), and
    ``mean`` divides by :math:`\sum_n w_{y_n}` over non-ignored tokens (all ignored: NaN loss and
    zero gradients, as in PyTorch).

    The optional terms of :func:`labelsmooth.cross_entropy` — ``confidence_penalty=β``
    (:math:`-\beta\,w_y H(p)`), ``poly=ε₁`` (:math:`\varepsilon_1\sum_c m_c(1-p_c)`) and
    ``focal_gamma=γ`` or ``"flsd-53"`` (:math:`\sum_c m_c(1-p_c)^\gamma(\mathrm{lse}-x_c)` in
    place of the cross-entropy), on the target mass :math:`m_c` of the loss above — have the same
    formulas, gradients and composition rules as there, on the logits :math:`x_n = W h_n + b`.
    The penalty and Poly-1 add one or two per-row statistics to each block's pass
    (:math:`\sum_c e^{x_c-r}(x_c-r)`, :math:`\sum_c s_c e^{x_c-r}`); focal needs the lse first,
    so it costs one more pass over each chunk of logits and, when the vocabulary is split into
    blocks, one more logits matmul per block (the block is recomputed). No term set: no extra work.

    PyTorch equivalent (without ``spread``, ``prior``, ``weight_mode``, ``z_loss``, ``softcap``):
    ``F.cross_entropy(F.linear(hidden, weight, bias).flatten(0, -2), target.flatten(),
    class_weight, ignore_index=ignore_index, label_smoothing=label_smoothing)``.

    Args:
        hidden: (*, H) hidden states; any leading dimensions (e.g. batch, sequence), float32,
            bfloat16, float16 or float64.
        weight: (V, H) projection (the output embedding), same dtype and device as ``hidden``.
        target: (*) class indices, the leading shape of ``hidden``.
        bias: optional (V,) bias.
        class_weight: optional (V,) class weights (PyTorch's ``weight`` of the loss).
        ignore_index, reduction, label_smoothing, spread, prior, weight_mode, z_loss, softcap,
            validate: as in :func:`labelsmooth.cross_entropy`.
        impl: per-chunk row engine: ``"auto"`` (Triton on CUDA when available, else the fused CPU
            engine), ``"fused"``, ``"triton"`` or ``"reference"`` (plain PyTorch, chunked).
        chunk_size: tokens per chunk (overrides the budget's choice).
        memory_budget: bytes allowed for one chunk of logits (default 64 MiB on CPU, 128 MiB on
            CUDA); when not even :data:`labelsmooth.ops.linear_ce.MIN_ROWS` full rows fit, the
            vocabulary is split too.
        num_classes: V for a padded output layer: only the first V rows of ``weight`` (and
            entries of ``bias``) are classes. The projection is narrowed to them (a view, zero
            cost: the padded rows are never multiplied) and their gradients are exactly 0.
        class_mask: optional bool tensor with one entry per row of ``weight``, True for a class:
            masked classes are excluded from the softmax and the smoothing mass, each logits
            block selected to −inf there before the engine sees it; their weight and bias
            gradients are exactly 0. Masked rows of
            ``weight`` must hold finite values (they still enter ∂hidden = G·W, with G's masked
            columns 0; padding past ``num_classes`` is never read at all). Both options follow
            :func:`labelsmooth.cross_entropy`'s rules (shares over the valid classes, prior
            renormalised there, targets at masked classes refused when values are checked).
        confidence_penalty, poly, focal_gamma: the optional terms, as in
            :func:`labelsmooth.cross_entropy` (β ≥ 0; ε₁ finite; γ ≥ 0, ``"flsd-53"`` or None; a
            zero strength is no term). They need an ``impl`` whose two-stage contract evaluates
            them (``"auto"`` picks one; others raise a ValueError naming the argument).

    Returns:
        The loss in ``hidden``'s dtype: a scalar for ``mean``/``sum``, else ``target``'s shape.

    Raises:
        TypeError: non-tensor or non-floating inputs, non-integer targets, bad option types.
        ValueError: shape, dtype or device mismatches, out-of-range targets, bad option values.

    Examples:
        >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> w = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
        >>> y = torch.tensor([0, 1, 2])
        >>> linear_cross_entropy(h, w, y, label_smoothing=0.1)
        tensor(1.1798)
        >>> torch.nn.functional.cross_entropy(h @ w.T, y, label_smoothing=0.1)
        tensor(1.1798)
    """
    return _linear_cross_entropy(
        hidden, weight, target, bias, class_weight=class_weight, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, spread=spread, prior=prior,
        weight_mode=weight_mode, z_loss=z_loss, softcap=softcap, impl=impl, validate=validate,
        chunk_size=chunk_size, memory_budget=memory_budget, num_classes=num_classes,
        class_mask=class_mask, confidence_penalty=confidence_penalty, poly=poly,
        focal_gamma=focal_gamma,
    )


def _linear_cross_entropy(
    hidden, weight, target, bias=None, *, class_weight=None, ignore_index=-100, reduction="mean",
    label_smoothing=0.0, spread="all", prior=None, weight_mode="torch", z_loss=0.0, softcap=None,
    impl="auto", validate=None, chunk_size=None, memory_budget=None, grad_in_forward=True,
    num_classes=None, class_mask=None, confidence_penalty=0.0, poly=0.0, focal_gamma=None,
) -> torch.Tensor:
    # ``grad_in_forward=False`` always recomputes the logits in backward (measured in the benchmark).
    hidden = V.check_floating("hidden", V.check_tensor("hidden", hidden))
    weight = V.check_floating("weight", V.check_tensor("weight", weight))
    target = V.check_tensor("target", target)
    if hidden.dim() < 1:
        raise V.fail("hidden", "a tensor of shape (*, H)", tuple(hidden.shape))
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise V.fail("weight", f"a (V, {hidden.shape[-1]}) tensor to match hidden "
                     f"{tuple(hidden.shape)}", tuple(weight.shape))
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise V.fail("weight", f"of hidden's dtype {hidden.dtype} and device {hidden.device}",
                     f"{weight.dtype} on {weight.device}")
    vocab = weight.shape[0]
    if bias is not None:
        bias = V.check_floating("bias", V.check_tensor("bias", bias))
        if bias.shape != (vocab,) or bias.dtype != hidden.dtype or bias.device != hidden.device:
            raise V.fail("bias", f"a ({vocab},) tensor of dtype {hidden.dtype} on {hidden.device}",
                         f"{tuple(bias.shape)} {bias.dtype} on {bias.device}")
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise V.fail("target", f"of shape {tuple(hidden.shape[:-1])} (hidden's leading "
                     "dimensions)", tuple(target.shape))
    opts = check_options(ignore_index, reduction, label_smoothing, spread, prior, weight_mode,
                         z_loss, softcap, impl, False, validate, num_classes, class_mask)
    terms = check_terms(confidence_penalty, poly, focal_gamma)
    linear_ce.check_chunking(chunk_size, memory_budget)
    if opts.num_classes is not None or opts.class_mask is not None:
        # padded / masked vocabulary: the projection narrowed to its first V rows (views)
        class_weight, opts = _vocab.narrow_options(
            opts, vocab, class_weight, device=hidden.device,
            check_values=V.should_check_values(validate, hidden, target))
        if opts.num_classes is not None and opts.num_classes < vocab:
            vocab = opts.num_classes
            weight = weight[:vocab]
            bias = bias[:vocab] if bias is not None else None
    if class_weight is not None:
        class_weight = V.check_class_vector("class_weight", class_weight, vocab)
    if not isinstance(grad_in_forward, bool):
        raise V.fail("grad_in_forward", "a bool", grad_in_forward, TypeError)
    check_values = V.should_check_values(validate, hidden, target)
    acc = acc_dtype(hidden.dtype)
    plan = plan_index(target.reshape(-1), vocab, opts, class_weight, device=hidden.device, acc=acc,
                      check_values=check_values)
    h = hidden.reshape(-1, hidden.shape[-1])
    return linear_ce.linear_index_loss(
        h, weight, bias, plan, opts, tuple(target.shape), chunk_size=chunk_size,
        memory_budget=memory_budget, grad_in_forward=grad_in_forward, terms=terms,
    )


class LinearCrossEntropyLoss(nn.Module):
    """Module form of :func:`linear_cross_entropy`: ``loss_fn(hidden, weight, target, bias=None)``.

    The projection stays a parameter of the model (e.g. the tied output embedding); the module holds
    the loss configuration, with ``class_weight`` and ``prior`` as buffers that follow ``.to()``.

    Examples:
        >>> loss_fn = LinearCrossEntropyLoss(label_smoothing=0.1)
        >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> w = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
        >>> loss_fn(h, w, torch.tensor([0, 1, 2]))
        tensor(1.1798)
    """

    class_weight: torch.Tensor | None
    prior: torch.Tensor | None
    class_mask: torch.Tensor | None

    def __init__(
        self,
        class_weight: torch.Tensor | None = None,
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
        validate: bool | None = None,
        chunk_size: int | None = None,
        memory_budget: int | None = None,
        num_classes: int | None = None,
        class_mask: torch.Tensor | None = None,
        confidence_penalty: float = 0.0,
        poly: float = 0.0,
        focal_gamma: float | str | None = None,
    ) -> None:
        super().__init__()
        # Fail where the configuration is written, not at the first forward.
        opts = check_options(ignore_index, reduction, label_smoothing, spread, prior, weight_mode,
                             z_loss, softcap, impl, False, validate, num_classes, class_mask)
        terms = check_terms(confidence_penalty, poly, focal_gamma)
        check_impl_supports(opts.impl, terms)
        linear_ce.check_chunking(chunk_size, memory_budget)
        class_weight = check_at_construction(class_weight, prior, opts, weight_arg="class_weight")
        self.ignore_index = opts.ignore_index
        self.reduction = opts.reduction
        self.label_smoothing = opts.label_smoothing
        self.spread = opts.spread
        self.weight_mode = opts.weight_mode
        self.z_loss = opts.z_loss
        self.softcap = opts.softcap
        self.impl = opts.impl
        self.validate = opts.validate
        self.chunk_size = chunk_size
        self.memory_budget = memory_budget
        self.num_classes = opts.num_classes
        self.confidence_penalty = terms.confidence_penalty
        self.poly = terms.poly
        self.focal_gamma = terms.focal_gamma
        self.register_buffer("class_weight", class_weight)
        self.register_buffer("prior", prior)
        self.register_buffer("class_mask", opts.class_mask)

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        return linear_cross_entropy(
            hidden, weight, target, bias, class_weight=self.class_weight,
            ignore_index=self.ignore_index, reduction=self.reduction,
            label_smoothing=self.label_smoothing, spread=self.spread, prior=self.prior,
            weight_mode=self.weight_mode, z_loss=self.z_loss, softcap=self.softcap, impl=self.impl,
            validate=self.validate, chunk_size=self.chunk_size, memory_budget=self.memory_budget,
            num_classes=self.num_classes, class_mask=self.class_mask,
            confidence_penalty=self.confidence_penalty, poly=self.poly,
            focal_gamma=self.focal_gamma,
        )

    def extra_repr(self) -> str:
        return (f"label_smoothing={self.label_smoothing}, spread={self.spread!r}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
                f"impl={self.impl!r}, chunk_size={self.chunk_size}, "
                f"memory_budget={self.memory_budget}"
                + (f", num_classes={self.num_classes}" if self.num_classes is not None else "")
                + (", class_mask=<set>" if self.class_mask is not None else "")
                + "".join(f", {name}={getattr(self, name)!r}"
                          for name in ("confidence_penalty", "poly", "focal_gamma")
                          if getattr(self, name)))
