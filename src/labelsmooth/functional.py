r"""Label-smoothed losses: argument validation, the coefficients of each convention, reductions.

The per-row work is done by an implementation from :mod:`labelsmooth.ops` chosen by ``impl=``;
everything shared by all implementations (validation, weights, ignore mask, reduction and its
normaliser) lives here, once.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from labelsmooth import _validation as V
from labelsmooth import ops
from labelsmooth.targets import Spread, binary_targets, smoothing_coefficients

Reduction = Literal["none", "mean", "sum"]
WeightMode = Literal["torch", "target"]
Impl = Literal["auto", "reference", "fused", "triton"]

__all__ = [
    "CrossEntropyStats",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_with_stats",
]


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


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
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
) -> torch.Tensor:
    r"""Label-smoothed cross-entropy between logits and class indices or class probabilities.

    With PyTorch's arguments alone this equals
    ``torch.nn.functional.cross_entropy(input, target, weight, ignore_index=ignore_index,
    reduction=reduction, label_smoothing=label_smoothing)``, loss and gradient, but index targets
    never build a one-hot or smoothed-target tensor and low-precision logits accumulate in float32.

    For an element with class index :math:`y`, logits :math:`x` over K classes,
    :math:`\mathrm{lse} = \log\sum_c e^{x_c}`, and the smoothed target :math:`q = a\,e_y + b`
    (``spread="all"``: :math:`a=1-\varepsilon, b_c=\varepsilon/K`; ``spread="others"``:
    :math:`a=1-\varepsilon K/(K-1), b_c=\varepsilon/(K-1)`; ``prior=p``: :math:`b_c=\varepsilon p_c`):

    .. math::

        \ell = a\,w_y\,(\mathrm{lse} - x_y) + \sum_c b_c\, w_c\,(\mathrm{lse} - x_c)
        \qquad (\texttt{weight\_mode="torch"})

        \ell = w_y \Big[a\,(\mathrm{lse} - x_y) + \sum_c b_c\,(\mathrm{lse} - x_c)\Big]
        \qquad (\texttt{weight\_mode="target"})

    Under ``"torch"`` (PyTorch's semantics) the class weights also reweight the smoothing mass class
    by class, so the minimiser is :math:`p^\ast_c \propto a w_y [c=y] + b_c w_c`, no longer the
    smoothed target (pytorch#104776). Under ``"target"`` the whole row is scaled by the target
    class's weight and the minimiser stays :math:`q`. ``mean`` divides by :math:`\sum_n w_{y_n}`
    over non-ignored elements in both modes (the element count without weights; all ignored → NaN,
    as in PyTorch). With ``z_loss=z`` the objective adds :math:`z\,\mathrm{lse}^2` per
    non-ignored element (PaLM), scaled by the element's weight :math:`w_y` and reduced like the loss,
    so ``mean`` is the same weighted average (without class weights: the plain mean).

    Probability targets (``target.shape == input.shape``) are smoothed as :math:`q = a\,t + b` and
    give :math:`\ell = \sum_c w_c q_c (\mathrm{lse} - x_c)`; ``mean`` divides by the number of
    elements (PyTorch). Under ``weight_mode="target"`` they give
    :math:`(\sum_c w_c t_c)\sum_c q_c(\mathrm{lse}-x_c)` and ``mean`` divides by
    :math:`\sum_n\sum_c w_c t_{n,c}`, so one-hot probabilities equal index targets.

    Args:
        input: logits of shape (C), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (any integer dtype), or class
            probabilities of the same shape as ``input``.
        weight: optional (C,) class weights.
        ignore_index: index target value whose elements contribute nothing (may lie outside
            [0, C)). Not supported (must be negative) with probability targets, as in PyTorch.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        label_smoothing: ε in [0, 1].
        spread: ``"all"`` (PyTorch, ε/K) or ``"others"`` (fairseq/Megatron, ε/(K−1)).
        prior: optional (C,) distribution replacing the uniform smoothing share (``spread="all"``).
        weight_mode: ``"torch"`` (PyTorch's semantics) or ``"target"`` (keeps the smoothed optimum).
        z_loss: coefficient z ≥ 0 of the z-loss :math:`z\,\mathrm{lse}^2`.
        softcap: if set to c > 0, logits are first soft-capped to :math:`c\tanh(x/c)` (Gemma 2).
        impl: ``"auto"``, ``"reference"`` (plain PyTorch, the test oracle), ``"fused"`` (chunked CPU
            engine) or ``"triton"`` (GPU kernel).
        inplace_backward: let the backward write the gradient into ``input``'s memory (fused
            implementations only; using ``input`` again afterwards raises).
        validate: check target values (indices in range): ``None`` checks on CPU only (no
            host-device sync on accelerators), ``True`` always (syncs on CUDA), ``False`` never.

    Returns:
        The loss in ``input``'s dtype: a scalar for ``mean``/``sum``, else the target's shape
        (the input's shape without the class dimension for probability targets).

    Raises:
        TypeError: non-tensor or non-floating input, non-integer index targets, wrong argument types.
        ValueError: shape mismatches, out-of-range indices, ε outside [0, 1], bad weight/prior length.

    Examples:
        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
        >>> y = torch.tensor([0, 1])
        >>> cross_entropy(x, y, label_smoothing=0.1)
        tensor(0.4421)
        >>> torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
        tensor(0.4421)

        ``spread="others"`` with ε equals ``spread="all"`` with ε·K/(K−1) (here 0.1·3/2):

        >>> cross_entropy(x, y, label_smoothing=0.1, spread="others")
        tensor(0.5046)
        >>> cross_entropy(x, y, label_smoothing=0.15)
        tensor(0.5046)
    """
    return _cross_entropy(
        input, target, weight, ignore_index, reduction, label_smoothing, spread, prior,
        weight_mode, z_loss, softcap, impl, inplace_backward, validate, stats=False,
    ).loss


def cross_entropy_with_stats(
    input: torch.Tensor,
    target: torch.Tensor,
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
) -> CrossEntropyStats:
    r""":func:`cross_entropy` plus the unsmoothed NLL, the z-loss and the log-sum-exp, for logging.

    The smoothed loss cannot fall below the entropy of the smoothed target
    (:func:`labelsmooth.entropy_floor`), so compare runs with different ε by ``nll``, not ``loss``.
    ``nll`` uses the same class weights and normaliser as ``loss`` (``weight_mode`` included).

    Examples:
        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
        >>> out = cross_entropy_with_stats(x, torch.tensor([0, 1]), label_smoothing=0.1, z_loss=1e-2)
        >>> out.loss, out.nll, out.z_loss
        (tensor(0.4849), tensor(0.3171), tensor(0.0428))
        >>> torch.nn.functional.cross_entropy(x, torch.tensor([0, 1]))
        tensor(0.3171)
    """
    return _cross_entropy(
        input, target, weight, ignore_index, reduction, label_smoothing, spread, prior,
        weight_mode, z_loss, softcap, impl, inplace_backward, validate, stats=True,
    )


def _rows(t: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C) → (1, C); (N, C) as is; (N, C, d...) → (N·d..., C) with classes last."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() == 2:
        return t
    return t.movedim(1, -1).reshape(-1, num_classes)


def _reduce(
    rows: torch.Tensor, reduction: str, denom: torch.Tensor | float, shape: tuple[int, ...],
) -> torch.Tensor:
    if reduction == "none":
        return rows.reshape(shape)
    total = rows.sum()
    return total / denom if reduction == "mean" else total


def _cross_entropy(
    input, target, weight, ignore_index, reduction, label_smoothing, spread, prior, weight_mode,
    z_loss, softcap, impl, inplace_backward, validate, *, stats: bool,
) -> CrossEntropyStats:
    # 1. Arguments that need no tensor data.
    input = V.check_floating("input", V.check_tensor("input", input))
    target = V.check_tensor("target", target)
    if input.dim() < 1:
        raise V.fail("input", "a tensor of shape (C), (N, C) or (N, C, d1, ..., dk)", tuple(input.shape))
    reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
    eps = V.check_smoothing(label_smoothing)
    weight_mode = V.check_choice("weight_mode", weight_mode, V.WEIGHT_MODES)
    ignore_index = V.check_ignore_index(ignore_index)
    z = V.check_nonnegative("z_loss", z_loss)
    softcap = V.check_softcap(softcap)
    if not isinstance(inplace_backward, bool):
        raise V.fail("inplace_backward", "a bool", inplace_backward, TypeError)
    num_classes = input.shape[1] if input.dim() >= 2 else input.shape[0]
    if weight is not None:
        weight = V.check_class_vector("weight", weight, num_classes)
    check_values = V.should_check_values(validate, input, target)
    a, b = smoothing_coefficients(
        num_classes, eps, spread=spread, prior=prior,
        check_values=check_values or (prior is not None and prior.device.type == "cpu"),
    )
    op = ops.resolve(impl, input.device)
    x = _rows(input, num_classes)
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    if isinstance(b, torch.Tensor):
        b = b.to(device=input.device, dtype=acc)
    w = weight.detach().to(device=input.device, dtype=acc) if weight is not None else None

    if target.shape == input.shape:
        return _prob_target(op, input, target, x, w, a, b, eps, ignore_index, reduction, weight_mode,
                            z, softcap, inplace_backward, acc, num_classes, stats)

    # 2. Index targets: shape and dtype first, then (optionally) values.
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise V.fail("target", "an integer tensor of class indices (or probabilities shaped like "
                     f"input {tuple(input.shape)})", target.dtype, TypeError)
    expected = tuple(input.shape[:1] + input.shape[2:]) if input.dim() >= 2 else ()
    if tuple(target.shape) != expected:
        raise V.fail("target", f"of shape {expected} to match input {tuple(input.shape)}",
                     tuple(target.shape))
    y = target.reshape(-1).to(device=input.device, dtype=torch.long)
    valid = y != ignore_index
    if check_values and y.numel() > 0:
        bad = valid & ((y < 0) | (y >= num_classes))
        if bool(bad.any()):
            raise V.fail("target", f"class indices in [0, {num_classes}) or ignore_index="
                         f"{ignore_index}", int(y[bad][0]))
    y_safe = torch.where(valid, y, torch.zeros_like(y))
    validf = valid.to(acc)

    # 3. Fold weights, ignore mask and the convention into per-row coefficients (see ops docs).
    w_y = w[y_safe] * validf if w is not None else validf
    ct = a * w_y
    if weight_mode == "torch":
        cs = validf
        if w is not None:
            b = b * w  # PyTorch: the smoothing mass of class c is weighted by w_c
    else:
        cs = w_y
    s, s_uniform = (b, 0.0) if isinstance(b, torch.Tensor) else (None, float(b))
    cz = z * w_y if z > 0.0 else None  # z-loss weighted and normalised like the loss
    loss_rows, lse = op.index_rows(x, y_safe, ct, cs, s, s_uniform, cz, softcap, inplace_backward)

    out_shape = tuple(target.shape)
    denom = w_y.sum()
    loss = _reduce(loss_rows, reduction, denom, out_shape).to(input.dtype)
    if not stats:
        return CrossEntropyStats(loss, loss, loss, lse)
    with torch.no_grad():
        x_y = x.gather(1, y_safe[:, None])[:, 0].to(acc)
        if softcap is not None:
            x_y = softcap * torch.tanh(x_y / softcap)
        nll_rows = (lse - x_y) * w_y
        z_rows = cz * lse.square() if cz is not None else torch.zeros_like(lse)
        nll = _reduce(nll_rows, reduction, denom, out_shape).to(input.dtype)
        zl = _reduce(z_rows, reduction, denom, out_shape).to(input.dtype)
    return CrossEntropyStats(loss, nll, zl, lse.reshape(out_shape))


def _prob_target(op, input, target, x, w, a, b, eps, ignore_index, reduction, weight_mode, z, softcap,
                 inplace_backward, acc, num_classes, stats) -> CrossEntropyStats:
    if not target.is_floating_point():
        raise V.fail("target", "a floating tensor of class probabilities when shaped like input",
                     target.dtype, TypeError)
    if ignore_index >= 0:
        raise V.fail("ignore_index", "negative (ignore_index is not supported for probability "
                     "targets)", ignore_index)
    t = _rows(target, num_classes)
    rows = x.shape[0]
    if weight_mode == "torch":
        rs = torch.ones(rows, dtype=acc, device=input.device)
        w_op, denom = w, float(rows)
    else:
        rs = (t.detach().to(acc) @ w) if w is not None else torch.ones(rows, dtype=acc, device=input.device)
        w_op, denom = None, rs.sum()
    b_vec, b_uniform = (b, 0.0) if isinstance(b, torch.Tensor) else (None, float(b))
    cz = z * rs if z > 0.0 else None  # z-loss weighted and normalised like the loss
    loss_rows, lse = op.prob_rows(x, t, w_op, a, b_vec, b_uniform, rs, cz, softcap, inplace_backward)
    out_shape = tuple(input.shape[:1] + input.shape[2:]) if input.dim() >= 2 else ()
    loss = _reduce(loss_rows, reduction, denom, out_shape).to(input.dtype)
    if not stats:
        return CrossEntropyStats(loss, loss, loss, lse)
    with torch.no_grad():
        xf = x.to(acc)
        if softcap is not None:
            xf = softcap * torch.tanh(xf / softcap)
        tq = t.to(acc) * w_op if w_op is not None else t.to(acc)
        nll_rows = rs * (lse * tq.sum(-1) - (tq * xf).sum(-1))
        z_rows = cz * lse.square() if cz is not None else torch.zeros_like(lse)
        nll = _reduce(nll_rows, reduction, denom, out_shape).to(input.dtype)
        zl = _reduce(z_rows, reduction, denom, out_shape).to(input.dtype)
    return CrossEntropyStats(loss, nll, zl, lse.reshape(out_shape))


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Binary / multi-label cross-entropy with logits on smoothed targets.

    Targets are smoothed as :math:`t' = t(1-\varepsilon) + \varepsilon/2` (Keras' convention: each
    label is a two-class problem), then

    .. math::

        \ell = -w\,[\,p_w\, t' \log\sigma(x) + (1 - t')\log(1-\sigma(x))\,]

    PyTorch equivalent: ``F.binary_cross_entropy_with_logits(input, target * (1 - ε) + ε / 2,
    weight, pos_weight=pos_weight, reduction=reduction)``.

    Args:
        input: logits, any shape.
        target: targets in [0, 1], same shape as ``input``.
        weight: optional rescaling broadcastable to ``input``.
        pos_weight: optional weight of positive examples, broadcastable along the last dimension.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        label_smoothing: ε in [0, 1].

    Examples:
        >>> x = torch.tensor([3.0, -2.0])
        >>> binary_cross_entropy_with_logits(x, torch.tensor([1.0, 0.0]), label_smoothing=0.1)
        tensor(0.2128)
        >>> F.binary_cross_entropy_with_logits(x, torch.tensor([0.95, 0.05]))
        tensor(0.2128)
    """
    input = V.check_floating("input", V.check_tensor("input", input))
    target = V.check_tensor("target", target)
    if target.shape != input.shape:
        raise V.fail("target", f"of the input's shape {tuple(input.shape)}", tuple(target.shape))
    reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
    smoothed = binary_targets(target, label_smoothing)
    return F.binary_cross_entropy_with_logits(
        input, smoothed, weight, reduction=reduction, pos_weight=pos_weight
    )
