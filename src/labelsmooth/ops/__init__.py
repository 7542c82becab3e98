r"""Implementations of the per-row label-smoothed cross-entropy, one per file, behind one dispatcher.

Every implementation module (``reference``, ``fused``, ``triton_ce``) provides the same contract,
in two parts, and :func:`resolve` is the one dispatcher that picks the module for every entry
point (single-device loss, fused linear loss, vocabulary-parallel loss). Reductions, weights'
normalisers and argument checks live in :mod:`labelsmooth._plan`; an op only does per-row work on
a 2-D ``(R, K)`` view.

* **Whole rows** (:data:`ROWS`): the autograd-aware ``index_rows`` and ``prob_rows`` below, for
  the single-device loss.
* **Blocks of columns** (:data:`BLOCKS`), the two-stage contract, for callers that never hold a
  whole row (the fused linear loss splits the vocabulary into blocks of its logits chunk; the
  vocabulary-parallel loss holds one shard per rank). No autograd: plain functions.

  1. *statistics* — ``row_partials(x, y, s, s_uniform, softcap, target_mask=None)`` on a block
     ``x`` (R, B) of columns ``[c0, c0 + B)``: the caller passes the target column relative to
     the block (``y − c0``) with ``target_mask`` True where the target lies in it, and the block's
     shares ``s[c0 : c0 + B]``. Returns per row, relative to :math:`r` =
     :func:`~labelsmooth.ops._math.row_ref` of the block max (0 for an all −inf row):
     ``(m, sumexp, x_y, dsx)`` = :math:`\max_c x'_c`, :math:`\sum_c e^{x'_c - r}` (float64),
     :math:`x'_y` (0 where the target is not in the block), :math:`\sum_c s_c (r - x'_c)`
     (a zero share counts 0 even at a −inf logit), with :math:`x'` the soft-capped logits; the
     others in the accumulation dtype.
  2. *combine* — :func:`~labelsmooth.ops._math.merge_partials` merges two blocks' statistics
     (one formula for every engine); across ranks the same merge runs as one MAX and one SUM
     all-reduce (:mod:`labelsmooth.distributed`). Then
     :math:`\mathrm{lse} = r + L`, :math:`L = \log \mathrm{sumexp}`, the row loss is
     :func:`~labelsmooth.ops._math.row_loss` and the gradient coefficient
     :math:`cp = ct + cs\,S + 2\,cz\,\mathrm{lse}` is :func:`~labelsmooth.ops._math.grad_coef`.
  3. *gradient* — ``grad_rows(x, y, lse, coef_p, ct, cs, s, s_uniform, softcap, grad,
     target_mask=None, out=None, *, ref=None)`` writes, for the block,
     :math:`g_n\,(cp_n\,p_{n,j} - ct_n[j = y_n] - cs_n s_j)\,\partial x'/\partial x` with
     :math:`p = e^{(x' - r) - L}` (``lse`` = :math:`L` relative to ``ref``; absolute when ``ref``
     is None) into ``out`` (the logits' dtype; may be ``x`` itself: in place) and returns it.
     Rows with no coefficient get exactly 0.

**The optional terms in the block contract** (``confidence_penalty`` β, ``poly`` ε₁,
``focal_gamma`` γ or ``"flsd-53"``; :class:`~labelsmooth.ops._terms.Terms`). Every formula has
one home, :mod:`labelsmooth.ops._terms` (merges in :mod:`labelsmooth.ops._math`); an engine provides
the three block functions below and every caller composes them the same way. Per row, with
:math:`z_c = x'_c - r`, :math:`e_c = e^{z_c}`, :math:`SE = \sum_c e_c`, :math:`L = \log SE`,
:math:`p_c = e_c/SE`, the target mass :math:`m_c = ct\,[c=y] + cs\,s_c`:

1. *statistics* — ``row_partials(..., *, terms=terms)`` with ``terms.active`` returns 6 values,
   ``(m, sumexp, x_y, dsx, sex, ses)``: :math:`sex = \sum_c e_c z_c` (0 where :math:`e_c = 0`;
   computed only for the penalty) and :math:`ses = \sum_c s_c e_c` (Poly-1 only;
   :math:`s_u\,\mathrm{sumexp}` for uniform shares), both in the accumulation dtype. A statistic
   whose term is off is returned as 0 and carries no meaning (a merge may move it off 0).
   :func:`~labelsmooth.ops._math.merge_partials` merges 6-tuples; across ranks each rank moves its
   statistics to the global max with :func:`~labelsmooth.ops._math.rebase_partials`
   (:math:`\rho = e^{r_1 - r}`: :math:`sex \to \rho(sex + (r_1 - r) SE)`, :math:`ses \to \rho\,ses`)
   and they join the SUM all-reduce.
2. *focal stage* (focal only, after the merge) — ``focal_partials(x, lse, gamma, s, s_uniform,
   softcap, *, ref=None, low=None)`` → ``(Fs, As)`` = :math:`\sum_c s_c (1-p_c)^\gamma (L - z_c)`
   and :math:`\sum_c s_c a_c` over the block's shares (:func:`~labelsmooth.ops._terms.focal_elems`),
   ``lse`` relative to ``ref`` as in stage three;
   ``low`` = :func:`~labelsmooth.ops._terms.flsd_rows`
   (FLSD-53's per-row γ = 5). Merge: SUM over blocks and ranks. It costs one more pass over the
   logits (and, in the fused linear loss, one more logits matmul per vocabulary chunk).
   The loss is then :func:`~labelsmooth.ops._terms.row_terms_loss` and the coefficients
   ``cp, coefs = ``:func:`~labelsmooth.ops._terms.term_coefs`.
3. *gradient* — ``grad_rows(..., ref=ref, terms=coefs)`` (``ref`` required) writes

   .. math::

       g\,\big[(cp + cps\,s_j + cpx\,z_j + cpt\,[j=y])\,p_j - (ct\,[j=y] + cs\,s_j)\,h_j\big]\,
       \partial x'_j/\partial x_j

   with :math:`h_j = 1`, or :math:`h_j = -a_j` with focal (elementwise:
   :func:`~labelsmooth.ops._terms.grad_elems`; the target column:
   :func:`~labelsmooth.ops._terms.target_grad`, which keeps a confident row's digits with
   ``coefs.cpd``). A block without the target passes ``target_mask`` False there; ``cpt`` then
   counts 0. Rows with no coefficient get exactly 0 (selection).

**Index targets** — ``index_rows(x, y, ct, cs, s, s_uniform, cz, softcap, inplace_backward)``

.. math::

    \ell_n = ct_n\,(\mathrm{lse}_n - x_{n,y_n}) + cs_n \sum_c s_c\,(\mathrm{lse}_n - x_{n,c})
             + cz_n\,\mathrm{lse}_n^2

    \frac{\partial \ell_n}{\partial x_{n,j}} = (ct_n + cs_n S + 2 cz_n \mathrm{lse}_n)\, p_{n,j}
             - ct_n [j = y_n] - cs_n s_j, \qquad S = \textstyle\sum_c s_c

* ``x`` (R, K) logits, any float dtype, read as is (accumulate in float32, float64 stays float64);
  with ``softcap=c`` every logit is first replaced by ``c·tanh(x/c)`` (chain rule in the gradient).
* ``y`` (R,) int64 target indices, already safe (ignored rows carry a valid index and zero coefs).
* ``ct``, ``cs`` (R,) accumulation-dtype coefficients of the target and smoothing terms
  (weights, ignore mask and convention folded in by the caller); ``cz`` (R,) or None: z-loss coef.
* ``s`` (K,) smoothing shares or None, in which case every share is the float ``s_uniform``
  (``s=None, s_uniform=0`` means no smoothing term at all).
* returns ``(loss, lse)``, both (R,) in the accumulation dtype; ``loss`` is differentiable w.r.t. ``x``.
* ``inplace_backward=True`` lets the backward write the gradient into ``x``'s storage (only when
  ``x`` is a contiguous activation: never a leaf such as an ``nn.Parameter`` or a view of one);
  the implementation must then make any later use of ``x`` by autograd fail loudly.
* keyword-only ``terms`` (:class:`~labelsmooth.ops._terms.Terms`) and ``row_scale`` (R,) (the
  confidence penalty's row scale, the rows' :math:`w_y`, 0 on ignored rows): the optional terms of
  :func:`~labelsmooth.ops._terms.row_terms_loss`, provided by every engine in
  :data:`~labelsmooth.ops._terms.SUPPORTED_IMPLS`; without active terms the call is the plain one.
* a row whose coefficients are all zero (an ignored row) must get a gradient of exactly 0,
  whatever its logits hold (±inf or NaN padding): implementations select, never multiply by 0.
  Its loss entry may be NaN; the caller discards it by selection (``_plan.finish_index``).

**Probability targets** — ``prob_rows(x, t, w, a, b, b_uniform, rs, cz, softcap, inplace_backward)``

.. math::

    q_{n,c} = w_c\,(a\,t_{n,c} + b_c), \qquad
    \ell_n = rs_n \sum_c q_{n,c}(\mathrm{lse}_n - x_{n,c}) + cz_n \mathrm{lse}_n^2

* ``t`` (R, K) targets; ``w`` (K,) or None (all ones); ``a`` float; ``b`` (K,) or None (then
  ``b_uniform``); ``rs`` (R,) row scales; gradients flow to ``x`` and, if it requires grad, ``t``.
* keyword-only ``terms``: the optional terms on the mass :math:`rs\,q`
  (:func:`~labelsmooth.ops._terms.prob_terms`), the penalty scaled by ``rs``, FLSD-53 switching
  on :math:`p_y = \sum_c t_c p_c`.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

from labelsmooth import _validation as V
from labelsmooth._plan import IMPLS

_MODULES = {"reference": "reference", "fused": "fused", "triton": "triton_ce"}
#: Capabilities: whole rows (index_rows/prob_rows), blocks of columns (row_partials/grad_rows),
#: blocks with the optional terms (the focal stage ``focal_partials`` too).
ROWS, BLOCKS, BLOCK_TERMS = "rows", "blocks", "block_terms"
_FUNCTIONS = {ROWS: ("index_rows", "prob_rows"), BLOCKS: ("row_partials", "grad_rows"),
              BLOCK_TERMS: ("row_partials", "grad_rows", "focal_partials")}


def _load(name: str) -> ModuleType:
    # sys.modules first: torch.compile (dynamo) cannot trace importlib, but a module that is
    # already imported is a plain lookup, so a compiled model resolves its op without a break.
    qualname = f"labelsmooth.ops.{_MODULES[name]}"
    module = sys.modules.get(qualname)
    return module if module is not None else importlib.import_module(qualname)


def _available(name: str, device: torch.device, capability: str = ROWS) -> bool:
    try:
        mod = _load(name)
    except ImportError:
        return False
    if not all(hasattr(mod, f) for f in _FUNCTIONS[capability]):
        return False
    check = getattr(mod, "is_available", None)
    return True if check is None else bool(check(device))


def resolve(impl: str, device: torch.device, capability: str = ROWS) -> ModuleType:
    """Pick the implementation module for ``impl`` on ``device``: the one dispatcher.

    ``"auto"`` picks Triton for CUDA tensors when triton is installed, else the fused CPU engine,
    else the reference. ``capability`` is the part of the contract the caller needs
    (:data:`ROWS` or :data:`BLOCKS`); every shipped implementation provides both.

    Examples:
        >>> resolve("auto", torch.device("cpu"), BLOCKS).__name__
        'labelsmooth.ops.fused'
    """
    impl = V.check_choice("impl", impl, IMPLS)
    if capability not in _FUNCTIONS:
        raise V.fail("capability", f"one of {tuple(_FUNCTIONS)}", capability)
    if impl == "auto":
        for name in (("triton", "fused") if device.type == "cuda" else ("fused",)):
            if _available(name, device, capability):
                return _load(name)
        return _load("reference")
    if not _available(impl, device, capability):
        raise V.fail("impl", f"an implementation available on device {device.type!r}", impl)
    return _load(impl)


# Import the implementations up front (none of them imports an optional package at import time):
# torch.compile must find them in sys.modules, since dynamo cannot trace an import.
from labelsmooth.ops import fused, reference, triton_ce  # noqa: E402, F401
