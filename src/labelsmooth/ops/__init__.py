r"""Implementations of the per-row label-smoothed cross-entropy, one per file, behind one dispatcher.

Every implementation module (``reference``, ``fused``, ``triton_ce``) provides the same two
autograd-aware functions. Reductions, weights' normalisers and argument checks live in
:mod:`labelsmooth._plan`; an op only does per-row work on a 2-D ``(R, K)`` view.

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
* a row whose coefficients are all zero (an ignored row) must get a gradient of exactly 0,
  whatever its logits hold (±inf or NaN padding): implementations select, never multiply by 0.
  Its loss entry may be NaN; the caller discards it by selection (``_plan.finish_index``).

**Probability targets** — ``prob_rows(x, t, w, a, b, b_uniform, rs, cz, softcap, inplace_backward)``

.. math::

    q_{n,c} = w_c\,(a\,t_{n,c} + b_c), \qquad
    \ell_n = rs_n \sum_c q_{n,c}(\mathrm{lse}_n - x_{n,c}) + cz_n \mathrm{lse}_n^2

* ``t`` (R, K) targets; ``w`` (K,) or None (all ones); ``a`` float; ``b`` (K,) or None (then
  ``b_uniform``); ``rs`` (R,) row scales; gradients flow to ``x`` and, if it requires grad, ``t``.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

from labelsmooth import _validation as V
from labelsmooth._plan import IMPLS
_MODULES = {"reference": "reference", "fused": "fused", "triton": "triton_ce"}


def _load(name: str) -> ModuleType:
    # sys.modules first: torch.compile (dynamo) cannot trace importlib, but a module that is
    # already imported is a plain lookup, so a compiled model resolves its op without a break.
    qualname = f"labelsmooth.ops.{_MODULES[name]}"
    module = sys.modules.get(qualname)
    return module if module is not None else importlib.import_module(qualname)


def _available(name: str, device: torch.device) -> bool:
    try:
        mod = _load(name)
    except ImportError:
        return False
    check = getattr(mod, "is_available", None)
    return True if check is None else bool(check(device))


def resolve(impl: str, device: torch.device) -> ModuleType:
    """Pick the implementation module for ``impl`` on ``device``.

    ``"auto"`` picks Triton for CUDA tensors when triton is installed, else the fused CPU engine,
    else the reference.
    """
    impl = V.check_choice("impl", impl, IMPLS)
    if impl == "auto":
        for name in (("triton", "fused") if device.type == "cuda" else ("fused",)):
            if _available(name, device):
                return _load(name)
        return _load("reference")
    if not _available(impl, device):
        raise V.fail("impl", f"an implementation available on device {device.type!r}", impl)
    return _load(impl)


# Import the implementations up front (none of them imports an optional package at import time):
# torch.compile must find them in sys.modules, since dynamo cannot trace an import.
from labelsmooth.ops import fused, reference, triton_ce  # noqa: E402, F401
