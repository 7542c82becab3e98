r"""Label-smoothed losses: the public functions, PyTorch-style keywords in, one loss out.

The per-row work is done by an implementation from :mod:`labelsmooth.ops` chosen by ``impl=``;
everything shared by all implementations (options, weights, ignore mask, reduction and its
normaliser) lives once in :mod:`labelsmooth._plan`, re-exported here.
"""

from __future__ import annotations

import math  # noqa: F401 (the docstring examples use it)

import torch
import torch.nn.functional as F

from labelsmooth import _validation as V
from labelsmooth import _vocab
from labelsmooth import ops
from labelsmooth._plan import (  # noqa: F401 - re-exported: the planning layer's public home
    CrossEntropyStats,
    Impl,
    IndexPlan,
    LossOptions,
    apply_reduction,
    as_rows,
    Reduction,
    WeightMode,
    check_at_construction,
    check_options,
    check_prior_values,
    finish_index,
    plan_index,
)
from labelsmooth.ops._consumed import _CONSUMED, _check_not_consumed
from labelsmooth.ops._math import acc_dtype, apply_softcap, row_ref, sum_exp
from labelsmooth.ops._terms import NO_TERMS, Terms, check_impl_supports, check_terms
from labelsmooth.targets import Spread, binary_targets, smoothing_coefficients

# the historical private names, kept for code that imported them
_rows, _reduce, _check_prior_values = as_rows, apply_reduction, check_prior_values

__all__ = [
    "CrossEntropyStats",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_with_stats",
]


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
    confidence_penalty: float = 0.0,
    poly: float = 0.0,
    focal_gamma: float | str | None = None,
    num_classes: int | None = None,
    class_mask: torch.Tensor | None = None,
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

    **Optional terms** (Pereyra et al. 2017; Leng et al. 2022; Lin et al. 2017, Mukhoti et al. 2020).
    Write the loss above as :math:`\ell_{CE} = \sum_c m_c(\mathrm{lse} - x_c)`, with the per-class
    target mass :math:`m_c = w_c q_c` (``"torch"``; index targets: :math:`a w_y[c=y] + b_c w_c`) or
    :math:`m_c = r\,q_c` (``"target"``, :math:`r = w_y`, or :math:`\sum_c w_c t_c` for
    probability targets), and :math:`p = \mathrm{softmax}(x)` (after the soft-cap). Each term
    composes with every option above (ignored elements get none; the z-loss is still added;
    reductions and normalisers are unchanged); :math:`r` below is the z-loss's row scale
    (:math:`w_y` for index targets, 1 for probability targets under ``"torch"``).

    * ``focal_gamma=γ`` replaces :math:`\ell_{CE}` by
      :math:`\sum_c m_c (1-p_c)^\gamma(\mathrm{lse}-x_c)`, i.e. :math:`-\sum_c q_c(1-p_c)^\gamma\log p_c`
      without weights; ``"flsd-53"`` uses γ = 5 where :math:`p_y < 0.2`, else 3 (per element,
      :math:`p_y` read without gradient; for probability targets :math:`p_y = \sum_c t_c p_c`).
      Gradient: with :math:`u_c = m_c[\gamma p_c(1-p_c)^{\gamma-1}\log p_c - (1-p_c)^\gamma]`,
      :math:`\partial\ell/\partial x_j = u_j - p_j\sum_c u_c` (γ = 0 gives :math:`p_j M - m_j`).
    * ``poly=ε₁`` (Poly-1) adds :math:`\varepsilon_1\sum_c m_c(1-p_c)`, which is
      :math:`\varepsilon_1(1-p_t)` with :math:`p_t = \sum_c q_c p_c` whenever the mass sums to 1
      (no class weights; normalised targets): the first coefficient of the cross-entropy's
      polynomial expansion raised by ε₁. Gradient: :math:`\varepsilon_1 p_j(\sum_c m_c p_c - m_j)`.
    * ``confidence_penalty=β`` adds :math:`-\beta\,r\,H(p)`,
      :math:`H(p) = -\sum_c p_c\log p_c = \mathrm{lse} - \sum_c p_c x_c`.
      Gradient: :math:`\beta\,r\,p_j(x_j - \sum_c p_c x_c)`.

    PyTorch equivalent without weights (index targets, ``q = smooth_targets(y, K, ε)``,
    ``logp = x.log_softmax(-1)``, ``p = logp.exp()``):
    ``(-(q * (1 - p)**γ * logp).sum(-1) + ε₁ * (1 - (q * p).sum(-1)) + β * (p * logp).sum(-1)).mean()``.
    Every engine evaluates them: the fused engine in its passes (the two-stage contract of
    :mod:`labelsmooth.ops`: one statistics pass with two more row sums, one more pass for focal,
    one gradient pass; the compiled CPU kernels for large inputs), Triton in its kernels, and
    ``impl="reference"`` differentiates the formula above with autograd; ``impl="auto"`` picks as
    without terms (Triton on CUDA, fused on CPU). An engine without the terms (see
    ``labelsmooth.ops._terms.SUPPORTED_IMPLS``) would raise a ValueError.

    Args:
        input: logits of shape (C), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (any integer dtype; moved to
            ``input``'s device if needed), or class probabilities of the same shape and device as
            ``input``.
        weight: optional (C,) class weights.
        ignore_index: index target value whose elements contribute nothing, neither loss nor
            gradient, whatever their logits hold (may lie outside [0, C)). Not supported (must be
            negative) with probability targets, as in PyTorch.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        label_smoothing: ε in [0, 1].
        spread: ``"all"`` (PyTorch, ε/K) or ``"others"`` (fairseq/Megatron, ε/(K−1)).
        prior: optional (C,) distribution replacing the uniform smoothing share (``spread="all"``).
        weight_mode: ``"torch"`` (PyTorch's semantics) or ``"target"`` (keeps the smoothed optimum).
        z_loss: coefficient z ≥ 0 of the z-loss :math:`z\,\mathrm{lse}^2`.
        softcap: if set to c > 0, logits are first soft-capped to :math:`c\tanh(x/c)` (Gemma 2).
        impl: ``"auto"``, ``"reference"`` (plain PyTorch, the test oracle), ``"fused"`` (chunked CPU
            engine) or ``"triton"`` (GPU kernel). ``"auto"`` hands small inputs (at most
            ``DIRECT_MAX_NUMEL`` = 2**18 logits) whose options torch expresses exactly (index
            targets; no prior, z-loss, soft-cap or in-place backward; class weights only at ε = 0)
            to torch's own ``F.cross_entropy``, where per-call overhead would dominate: same values
            as torch (a float32 copy for half-precision logits), ignored elements still get a
            zero gradient. The engines' float64 sum of exponentials, which keeps a confident
            row's ~1e-8 loss that float32 ``log_softmax`` rounds away, needs an explicit ``impl``.
        inplace_backward: let the backward write the gradient into ``input``'s memory (fused
            implementations only; using ``input`` again afterwards raises, whatever ``impl``).
            Only an activation is overwritten: a leaf (``nn.Parameter``, a tensor you created)
            or a view of one gets its gradient in fresh memory.
        validate: check values (indices in [0, C) or ``ignore_index``; ``prior`` a distribution):
            ``None`` (default) checks tensors on the CPU only, so accelerators never wait for a
            host-device sync; ``True`` always checks (one sync per call on CUDA); ``False`` never
            checks (an out-of-range index is then undefined behaviour, as in a raw gather).
        confidence_penalty: β ≥ 0, the weight of the entropy bonus :math:`-\beta H(p)`.
        poly: ε₁ (any finite real; public Poly-1 implementations default to 1 or 2) of
            :math:`\varepsilon_1(1 - p_t)`.
        focal_gamma: γ ≥ 0 of the focal modulation, ``"flsd-53"``, or None (0 or None: off).

        num_classes: V ≤ C for a padded vocabulary: only the first V columns are classes, the rest
            is padding, never read (the logits are narrowed, a view) and given exactly zero
            gradient. ``weight``, ``prior`` and ``class_mask`` may have length C or V;
            probability targets are narrowed like the logits.
        class_mask: optional (C,) bool tensor, True for a class: masked columns are excluded from
            the softmax and from the smoothing mass (selected away, so ±inf/NaN there is harmless,
            and their gradient is exactly 0). Put it on the logits' device.

            With either option the loss and gradient equal the dense loss on the valid
            sub-vocabulary of :math:`V` classes: shares :math:`\varepsilon/V`
            (``spread="all"``) or :math:`\varepsilon/(V-1)` (``"others"``); a ``prior`` is
            restricted to the valid classes and **renormalised** there (its mass on masked classes
            is redistributed in proportion; see :func:`labelsmooth.targets.restrict_prior`); class
            weights of masked classes are never read. An index target at a masked class raises
            where values are checked (``validate``); unchecked, its logit counts as −inf and that
            element's loss is +inf. Probability targets are restricted to the valid classes as
            given (mass on masked classes dropped, not renormalised). No host sync.

    Returns:
        The loss, a scalar for ``mean``/``sum``, else the target's shape (the input's shape
        without the class dimension for probability targets). Its dtype is ``input``'s; with
        probability targets it is promoted as PyTorch's, with the target's and ``weight``'s dtypes
        (float32 logits with float64 targets give a float64 loss, computed in float64). Gradients
        are always in ``input``'s dtype. (Index targets with a ``weight`` of another dtype, which
        PyTorch refuses, give ``input``'s dtype.)

    Non-finite values, one rule: the loss is NaN where PyTorch's is NaN — a row holding a NaN or
    +inf logit (its softmax is undefined; its gradient is NaN too), an all −inf row, and a
    ``mean`` whose normaliser :math:`\sum_n w_{y_n}` is 0 (all elements ignored: NaN loss, zero
    gradient; target weights summing to 0: NaN loss and gradient, even when ε > 0 would make the
    numerator positive). It is +inf where a −inf logit carries target or smoothing mass (a masked
    vocabulary: pass ``class_mask``/``num_classes``, which take the class out instead). A class
    whose mass is exactly 0 (a zero ``prior`` entry or class weight, a zero target probability,
    a target term with coefficient 0) contributes 0 even at a −inf logit: 0·log 0 = 0, so a
    masked vocabulary with a prior of 0 there gives a finite loss.

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

        The terms (a hand check: uniform logits over 2 classes give p = (½, ½), so the focal
        factor is ½ = 0.5 per γ, Poly-1 adds ε₁/2 and the penalty subtracts β·log 2):

        >>> u, t = torch.zeros(1, 2), torch.tensor([0])
        >>> cross_entropy(u, t, focal_gamma=1.0), 0.5 * math.log(2)
        (tensor(0.3466), 0.34657359027997264)
        >>> cross_entropy(u, t, poly=1.0), math.log(2) + 0.5
        (tensor(1.1931), 1.1931471805599454)
        >>> cross_entropy(u, t, confidence_penalty=0.5), math.log(2) - 0.5 * math.log(2)
        (tensor(0.3466), 0.34657359027997264)

        A vocabulary padded from 2 to 3 columns (the pad holds garbage): the loss and gradient
        of the 2 real classes, and no gradient for the pad:

        >>> xp = torch.tensor([[2.0, 0.0, float("nan")]], requires_grad=True)
        >>> loss = cross_entropy(xp, torch.tensor([0]), label_smoothing=0.1, num_classes=2)
        >>> dense = torch.nn.functional.cross_entropy(xp[:, :2], torch.tensor([0]), label_smoothing=0.1)
        >>> round(loss.item(), 4), round(dense.item(), 4)
        (0.2269, 0.2269)
        >>> mask = torch.tensor([True, True, False])
        >>> masked = cross_entropy(xp, torch.tensor([0]), label_smoothing=0.1, class_mask=mask)
        >>> round(masked.item(), 4)
        0.2269
        >>> loss.backward(); xp.grad
        tensor([[-0.0692,  0.0692,  0.0000]])
    """
    if (impl == "auto" and prior is None and softcap is None and inplace_backward is False
            and _zero(z_loss) and _zero(confidence_penalty) and _zero(poly)
            and (focal_gamma is None or _zero(focal_gamma))
            and num_classes is None and class_mask is None and type(input) in _PLAIN_TENSORS
            and input.numel() <= DIRECT_MAX_NUMEL):
        out = _direct(input, target, weight, ignore_index, reduction, label_smoothing, spread,
                      weight_mode, validate)
        if out is not None:
            return out
    _check_positional(ignore_index, reduction)
    input, target = _check_pair(input, target)
    opts = check_options(ignore_index, reduction, label_smoothing, spread, prior, weight_mode,
                         z_loss, softcap, impl, inplace_backward, validate, num_classes, class_mask)
    terms = check_terms(confidence_penalty, poly, focal_gamma)
    return _cross_entropy(input, target, weight, opts, stats=False, terms=terms).loss


#: Largest logits (elements) that ``impl="auto"`` hands to torch's own kernels when the options
#: allow it (:func:`_direct`): 256 Ki. Below it the engine's per-call overhead dominates (5–7×
#: torch at 128×10 and 256×100, ``benchmarks/bench_latency.py``). Not higher, although the chunked
#: eager kernels cost 1.2–2.6× torch's CPU time from 1024×1000 to 2048×2000: torch's float32
#: gradient drifts from the float64 truth as the vocabulary grows (1.4e-5 of the largest entry
#: at 64×50021, against the engines' one ulp of lse; tests/test_distributed.py holds the
#: vocabulary-parallel loss to the single-process engine at that precision).
DIRECT_MAX_NUMEL = 1 << 18
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _zero(value: object) -> bool:
    """A term strength that is a plain Python 0 (anything else goes through the checks)."""
    return type(value) in (int, float) and value == 0
_FLOATS = (torch.float32, torch.float64)
_HALVES = (torch.bfloat16, torch.float16)


def _direct(input, target, weight, ignore_index, reduction, label_smoothing, spread,
            weight_mode, validate) -> torch.Tensor | None:
    r"""The small-input path of ``impl="auto"``: torch's own ``F.cross_entropy``, or None.

    Taken only where torch's semantics are exactly labelsmooth's: index targets, no
    prior/z-loss/soft-cap/in-place backward, class weights only at ε = 0 (with ε > 0 torch weighs
    the smoothing mass by :math:`w_c` and makes 0·log 0 a NaN at a masked logit), ``spread="others"``
    as ``"all"`` with :math:`\varepsilon K/(K-1)` (the same target :math:`q`). Low-precision
    logits go through a float32 copy (labelsmooth accumulates in float32; the gradient is rounded
    once). Ignored elements' logits are zeroed first, so they get a zero gradient whatever they
    hold (torch's log_softmax backward gives NaN there). Index values are checked as
    :func:`plan_index` does (out-of-range indices return None: the general path raises).
    Anything unusual — a wrong type, a value out of range, another device — returns None and the
    general path checks and reports it.
    """
    if torch.compiler.is_compiling():
        return None  # compiled models keep the traced custom ops (one graph, no new guards)
    dtype = input.dtype
    if dtype not in _FLOATS and dtype not in _HALVES:
        return None
    if (type(target) not in _PLAIN_TENSORS or target.is_floating_point() or target.is_complex()
            or target.dtype == torch.bool or target.device != input.device):
        return None
    if (type(ignore_index) is not int or reduction not in V.REDUCTIONS
            or type(label_smoothing) not in (float, int) or validate not in (None, True, False)
            or spread not in V.SPREADS or weight_mode not in V.WEIGHT_MODES):
        return None
    nd = input.dim()
    if nd < 1:
        return None
    k = input.shape[1] if nd >= 2 else input.shape[0]
    if k < 1 or target.shape != ((input.shape[:1] + input.shape[2:]) if nd >= 2 else ()):
        return None
    eps = float(label_smoothing)
    if spread == "others" and eps != 0.0:
        if k < 2:
            return None
        eps = eps * k / (k - 1)
    if not 0.0 <= eps <= 1.0:
        return None
    acc = torch.float32 if dtype in _HALVES else dtype
    if weight is not None:
        if (eps != 0.0 or type(weight) not in _PLAIN_TENSORS or not weight.is_floating_point()
                or weight.shape != (k,) or weight.device != input.device
                or (weight.requires_grad and torch.is_grad_enabled())):
            return None
        weight = weight.detach().to(acc)
    if _CONSUMED:
        _check_not_consumed(input)
    y = target if target.dtype == torch.long else target.long()
    # validate=None reads values on the CPU only (V.should_check_values; not compiling here)
    check = validate if validate is not None else input.device.type == "cpu"
    if check and y.numel() > 0:
        lo, hi = torch.aminmax(y)
        # every index a class (no element ignored unless ignore_index is a class itself)
        masked = not (0 <= int(lo) and int(hi) < k) or 0 <= ignore_index < k
        if masked:
            ignored = y == ignore_index
            if bool((~ignored & ((y < 0) | (y >= k))).any()):
                return None  # the general path names the bad index
    else:
        masked, ignored = True, None
    x = input if acc == dtype else input.to(acc)
    if masked:
        if ignored is None:
            ignored = y == ignore_index
        x = x.masked_fill(ignored.unsqueeze(1) if nd >= 2 else ignored, 0.0)
    loss = F.cross_entropy(x, y, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=eps)
    return loss if acc == dtype else loss.to(dtype)


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
    confidence_penalty: float = 0.0,
    poly: float = 0.0,
    focal_gamma: float | str | None = None,
    num_classes: int | None = None,
    class_mask: torch.Tensor | None = None,
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
    _check_positional(ignore_index, reduction)
    input, target = _check_pair(input, target)
    opts = check_options(ignore_index, reduction, label_smoothing, spread, prior, weight_mode,
                         z_loss, softcap, impl, inplace_backward, validate, num_classes, class_mask)
    terms = check_terms(confidence_penalty, poly, focal_gamma)
    return _cross_entropy(input, target, weight, opts, stats=True, terms=terms)


def _check_positional(ignore_index: object, reduction: object) -> None:
    """Refuse torch's deprecated positional slots: ``F.cross_entropy(x, t, w, size_average,
    ignore_index, reduce, reduction)`` puts None/bools where labelsmooth has ``ignore_index`` and
    ``reduction``."""
    if (ignore_index is None or isinstance(ignore_index, bool)
            or reduction is None or isinstance(reduction, (bool, int))):
        raise TypeError(
            f"Expected `ignore_index` to be an int and `reduction` a string, but got "
            f"ignore_index={ignore_index!r}, reduction={reduction!r}: torch's deprecated "
            "`size_average`/`reduce` positional slots are not accepted. Pass the options by "
            "keyword, e.g. cross_entropy(input, target, weight, ignore_index=-100, "
            "reduction='mean', label_smoothing=0.0)."
        )


def _check_pair(input: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The checks of ``input`` and ``target`` that come before the options (error order)."""
    input = V.check_floating("input", V.check_tensor("input", input))
    target = V.check_tensor("target", target)
    if input.dim() < 1:
        raise V.fail("input", "a tensor of shape (C), (N, C) or (N, C, d1, ..., dk)", tuple(input.shape))
    return input, target


def _cross_entropy(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, opts: LossOptions,
    *, stats: bool, terms: Terms = NO_TERMS,
) -> CrossEntropyStats:
    """The loss for checked tensors and validated options (one typed object from here on)."""
    validate = opts.validate
    num_classes = input.shape[1] if input.dim() >= 2 else input.shape[0]
    if num_classes < 1:
        raise V.fail("input", "a tensor with at least one class (class dimension C >= 1)",
                     tuple(input.shape))
    if opts.num_classes is not None or opts.class_mask is not None:
        # padded / masked vocabulary: narrow to the first V columns (a view), check the mask
        input, target, weight, opts = _vocab.restrict(
            input, target, weight, opts, num_classes, class_dim=1 if input.dim() >= 2 else 0,
            check_values=V.should_check_values(validate, input, target))
        num_classes = input.shape[1] if input.dim() >= 2 else input.shape[0]
    if weight is not None:
        weight = V.check_class_vector("weight", weight, num_classes)
        if weight.requires_grad and torch.is_grad_enabled():
            # the ops take the weights as constants: a gradient would silently be dropped
            raise V.fail("weight.requires_grad", "False (no gradient flows to class weights; "
                         "pass weight.detach())", True)
    check_values = V.should_check_values(validate, input, target)
    # the optional terms: "auto" picks an engine that has them, an engine without them raises
    op = ops.resolve(check_impl_supports(opts.impl, terms), input.device)
    tkw = dict(terms=terms) if terms.active else {}
    if not torch.compiler.is_compiling():
        # every implementation refuses logits overwritten by an earlier in-place backward
        _check_not_consumed(input)
    x = as_rows(input, num_classes)
    acc = acc_dtype(input.dtype)
    # masked columns → −inf by selection (soft-cap applied first, then dropped from opts)
    x, opts = _vocab.mask_rows(x, opts)

    if target.shape == input.shape:
        return _prob_target(op, input, target, x, weight, opts, acc, num_classes, check_values,
                            stats, tkw)

    # 2. Index targets: dtype and shape first, then (optionally) values.
    expected = tuple(input.shape[:1] + input.shape[2:]) if input.dim() >= 2 else ()
    if target.is_floating_point() and tuple(target.shape) != expected:
        # Neither an index target (wrong shape) nor probabilities (wrong shape): report the shape.
        raise V.fail("target", f"class probabilities of the input's shape {tuple(input.shape)} "
                     f"(or integer class indices of shape {expected})", tuple(target.shape))
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise V.fail("target", f"an integer tensor of class indices (a target of shape {expected} "
                     f"holds indices; probabilities must be shaped like input {tuple(input.shape)})",
                     target.dtype, TypeError)
    if tuple(target.shape) != expected:
        raise V.fail("target", f"of shape {expected} to match input {tuple(input.shape)}",
                     tuple(target.shape))
    plan = plan_index(target.reshape(-1), num_classes, opts, weight, device=input.device, acc=acc,
                      check_values=check_values)
    if terms.active:
        tkw["row_scale"] = plan.w_y
    loss_rows, lse = op.index_rows(x, plan.y, plan.ct, plan.cs, plan.s, plan.s_uniform, plan.cz,
                                   opts.softcap, opts.inplace_backward, **tkw)
    nll_rows = None
    if stats:
        with torch.no_grad():
            # the unsmoothed NLL by the same op (relative to the row max: exact at large logits)
            nll_rows, _ = op.index_rows(x.detach(), plan.y, plan.w_y, torch.zeros_like(plan.w_y),
                                        None, 0.0, None, opts.softcap, False)
    return finish_index(loss_rows, lse, None, plan, opts, tuple(target.shape), input.dtype, stats,
                        nll_rows)


def _prob_target(op, input, target, x, weight, opts, acc, num_classes, check_values,
                 stats, tkw) -> CrossEntropyStats:
    if not target.is_floating_point():
        raise V.fail("target", "a floating tensor of class probabilities when shaped like input",
                     target.dtype, TypeError)
    if opts.ignore_index >= 0:
        raise V.fail("ignore_index", "negative (ignore_index is not supported for probability "
                     "targets)", opts.ignore_index)
    if target.device != input.device:
        raise V.fail("target", f"on the input's device {input.device} (probability targets are "
                     "not copied across devices)", str(target.device))
    # The result dtype promotes as PyTorch's: logits, targets and weight together (float32 logits
    # with float64 targets give a float64 loss); the gradient stays in the input's dtype. A
    # float64 result is also computed in float64 (the logits are read through a float64 copy).
    out_dtype = torch.promote_types(input.dtype, target.dtype)
    if weight is not None:
        out_dtype = torch.promote_types(out_dtype, weight.dtype)
    if out_dtype == torch.float64 and acc != torch.float64:
        x, acc = x.to(torch.float64), torch.float64
    a, b = smoothing_coefficients(
        num_classes, opts.label_smoothing, spread=opts.spread, prior=opts.prior,
        check_values=_check_prior_values(opts, check_values), class_mask=opts.class_mask,
    )
    if isinstance(b, torch.Tensor):
        b = b.to(device=input.device, dtype=acc)
    w = weight.detach().to(device=input.device, dtype=acc) if weight is not None else None
    t = as_rows(target, num_classes)
    if opts.class_mask is not None:
        # probability mass on masked classes is dropped (their logits are −inf), as are their
        # weights
        zero = torch.zeros((), dtype=t.dtype, device=t.device)
        t = torch.where(opts.class_mask, t, zero)
        if w is not None:
            w = torch.where(opts.class_mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    t_op = t
    if isinstance(a, torch.Tensor):  # spread="others" over a mask: a 0-d tensor, folded into t
        t_op, a = t * a.to(device=t.device, dtype=torch.promote_types(t.dtype, acc)), 1.0
    rows = x.shape[0]
    ones = torch.ones(rows, dtype=acc, device=input.device)
    if opts.label_smoothing == 0.0:
        b_vec, b_uniform = None, 0.0
    else:
        b_vec, b_uniform = (b, 0.0) if isinstance(b, torch.Tensor) else (None, float(b))
    if opts.weight_mode == "torch" or w is None:
        rs, w_op = ones, (w if opts.weight_mode == "torch" else None)
        denom = float(rows) if opts.weight_mode == "torch" else rs.sum()
        cz = opts.z_loss * rs if opts.z_loss > 0.0 else None
        loss_rows, lse = op.prob_rows(x, t_op, w_op, a, b_vec, b_uniform, rs, cz, opts.softcap,
                                      opts.inplace_backward, **tkw)
    else:
        # The row scale Σ_c w_c t_c depends on the target, so it is applied here, outside the op:
        # autograd then carries its share of ∂ℓ/∂t (ops treat their rs argument as a constant).
        w_op = None
        rs = t.to(acc) @ w
        denom = rs.sum()
        cz_op = opts.z_loss * ones if opts.z_loss > 0.0 else None
        loss_rows, lse = op.prob_rows(x, t_op, None, a, b_vec, b_uniform, ones, cz_op, opts.softcap,
                                      opts.inplace_backward, **tkw)
        loss_rows = rs * loss_rows
        cz = opts.z_loss * rs.detach() if opts.z_loss > 0.0 else None  # for the stats
    out_shape = tuple(input.shape[:1] + input.shape[2:]) if input.dim() >= 2 else ()
    loss = apply_reduction(loss_rows, opts.reduction, denom, out_shape).to(out_dtype)
    if not stats:
        return CrossEntropyStats(loss, loss, loss, lse)
    with torch.no_grad():
        xf = apply_softcap(x.to(acc), opts.softcap)
        tq = t.to(acc) * w_op if w_op is not None else t.to(acc)
        # Σ_c t_c (lse − x_c) relative to the row max (precision at large logits); 0·log 0 = 0
        ref = row_ref(xf.amax(-1))
        d = ref[:, None] - xf
        lse_rel = torch.log(sum_exp(-d)).to(acc)
        d = torch.where((tq == 0) & torch.isinf(d), 0.0, d)
        nll_rows = rs.detach() * ((tq * d).sum(-1) + tq.sum(-1) * lse_rel)
        z_rows = cz * lse.square() if cz is not None else torch.zeros_like(lse)
        denom = denom.detach() if isinstance(denom, torch.Tensor) else denom
        nll = apply_reduction(nll_rows, opts.reduction, denom, out_shape).to(out_dtype)
        zl = apply_reduction(z_rows, opts.reduction, denom, out_shape).to(out_dtype)
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
    if not torch.compiler.is_compiling():
        # as every cross-entropy loss: logits overwritten by an in-place backward are refused
        _check_not_consumed(input)
    if target.shape != input.shape:
        raise V.fail("target", f"of the input's shape {tuple(input.shape)}", tuple(target.shape))
    reduction = V.check_choice("reduction", reduction, V.REDUCTIONS)
    for name, value in (("weight", weight), ("pos_weight", pos_weight)):
        if value is None:
            continue
        V.check_floating(name, V.check_tensor(name, value))
        try:
            shape = torch.broadcast_shapes(value.shape, input.shape)
        except RuntimeError:
            shape = None
        if shape != input.shape:
            raise V.fail(name, f"a tensor broadcastable to the input's shape {tuple(input.shape)}",
                         tuple(value.shape))
    smoothed = binary_targets(target, label_smoothing)
    return F.binary_cross_entropy_with_logits(
        input, smoothed, weight, reduction=reduction, pos_weight=pos_weight
    )
