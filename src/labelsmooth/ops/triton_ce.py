r"""Triton implementation of the per-row label-smoothed cross-entropy (``impl="triton"``).

Same contract as :mod:`labelsmooth.ops.reference` (see :mod:`labelsmooth.ops`), computed by the
two-pass kernels of :mod:`labelsmooth.ops._triton_kernels`:

* forward — one read of the logits: online softmax, target logit and the smoothing sum, in
  float32; saves only (R,) vectors: the row max ``m`` and :math:`\log\sum_c e^{x_c-m}` (their sum
  is ``lse``; kept apart so that :math:`p_y` of a confident row is not limited by the rounding of
  ``lse``), plus :math:`Q=\sum_c q_c` for probability targets;
* backward — one more read: :math:`p` recomputed from those statistics, the gradient scaled by
  the per-row upstream gradient and written once (the reduction's normaliser arrives inside that
  gradient: reductions happen outside, in :mod:`labelsmooth._plan`).

With ``inplace_backward=True`` the backward writes the gradient over the logits' own memory and
returns that tensor as the gradient, so the loss needs no memory beyond (R,) vectors. The write
goes through a ``torch.library`` op declared as mutating the logits, which bumps their version
counter: any other autograd node that saved the logits (or a second backward through this loss)
then fails with PyTorch's "modified by an inplace operation" error instead of silently reading
gradients. Afterwards the logits tensor holds the gradient, and passing it to a labelsmooth loss
again raises (the check is shared with :mod:`labelsmooth.ops.fused`). Plain reads of the logits
after ``backward()`` outside autograd (an accuracy metric) see the gradient: take them before.
A non-contiguous logits view, a leaf (e.g. an ``nn.Parameter``) or a view of a leaf is never
written in place (the gradient goes to fresh memory): only an activation's memory is reused.
With ``create_graph=True`` the backward returns a differentiable (unfused) gradient, so double
backward works as with the fused engine.

Memory traffic: the forward reads the logits once, the backward reads them once more and writes
the gradient once, i.e. 3 × the logits' bytes against a device copy's 2 ×, so at equal bandwidth
forward + backward cannot take less than 1.5 × a copy. Getting below that needs the gradient in
the forward (one read, one write) and a backward that skips the rescale when the upstream scalar is
1, which the per-row contract of :mod:`labelsmooth.ops` cannot express (the reduction's normaliser
is applied outside the op).

Dtypes: float32, bfloat16 and float16 logits are read as is and accumulated in float32; the
gradient is written in the logits' dtype. float64 logits are not run by the kernels: they fall back
to :mod:`labelsmooth.ops.reference` (float64 throughout, never in place).

The ops are registered as ``labelsmooth::triton_index_fwd``, ``labelsmooth::triton_prob_fwd``
and, for the backward, one destination-passing op each (as quack does),
``labelsmooth::triton_index_bwd_out`` / ``labelsmooth::triton_prob_bwd_out``, declared as mutating
their ``out`` argument: a fresh buffer, or the logits themselves for the in-place backward (the
declared mutation is what bumps their version counter); the blocks' stage two is
``labelsmooth::triton_block_grad_out`` in the same form. The optional terms
(``confidence_penalty``, ``poly``, ``focal_gamma``) add ``triton_block_partials_terms`` and
``triton_block_focal`` (the block contract) and ``triton_index_terms_fwd`` /
``triton_prob_terms_fwd`` (whole rows, whose backward writes through the ``_out`` ops above); the
plain ops are untouched by them (constexpr flags: the plain kernels compile as before). With fake (meta) implementations and
autograd formulas, so ``torch.compile(fullgraph=True)`` traces through
them and, with no host synchronisation anywhere, CUDA graphs can capture them. Triton itself is
imported only when a kernel is launched; this module imports without it.

On CPU tensors the kernels run under Triton's interpreter, available only when the environment
variable ``TRITON_INTERPRET=1`` is set before the first launch (``triton.jit`` reads it when the
kernels module is imported, lazily, at that launch); tests/conftest.py sets it when there is no
GPU. The interpreter casts fp32 to bf16 by truncation; the kernels then round to nearest
explicitly so CPU tests see the GPU's rounding.
"""

import contextlib
import os
from typing import Optional

import torch
from torch import Tensor

from labelsmooth.ops import _terms, reference
from labelsmooth.ops._math import row_ref
from labelsmooth.ops._terms import FLSD, FOCAL_INT_MAX, NO_TERMS, TermCoefs, Terms

__all__ = ["focal_partials", "grad_rows", "index_rows", "is_available", "prob_rows",
           "row_partials"]

# Widest chunk of a row one program handles per loop iteration (a power of two), and the values
# per thread that set num_warps = BLOCK / (32 · ELEMS_PER_THREAD), at most 32. Defaults 4096 and
# 8: 16 warps, 128-bit accesses for bf16 and fp32. Registers and spills per variant, compiled
# ahead of time for sm_90a (`python benchmarks/triton_resources.py`; Triton 3.9.0 and its ptxas):
# no variant spills (0 bytes; the 8-byte spill once reported for _prob_fwd with every option on
# was not reproduced there, and the slow test test_kernels_compile_for_sm90_* now fails on any
# spill); registers allow 64 resident warps per SM for the index backward and the
# unsmoothed index forward, 32 for the smoothed index forward and the plain probability forward,
# and 16 (one CTA) for the probability forward with weights, prior, z-loss and softcap
# (72-75 registers). The optional terms' variants (every flag on) need up to 105 registers (the
# probability forward with the penalty's and Poly-1's sums and the ties counted apart; 99 for the
# block statistics): 16 resident warps, no spills; their focal and gradient passes 40-64
# (32-48 warps). Untuned: no GPU was available. A GPU session can sweep both without editing
# code through LABELSMOOTH_TRITON_MAX_BLOCK and LABELSMOOTH_TRITON_ELEMS_PER_THREAD (read once,
# at import). Tests lower MAX_BLOCK to exercise the loop and the masked tail on small rows.
MAX_BLOCK = int(os.environ.get("LABELSMOOTH_TRITON_MAX_BLOCK", "4096"))
ELEMS_PER_THREAD = int(os.environ.get("LABELSMOOTH_TRITON_ELEMS_PER_THREAD", "8"))


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def is_available(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on ``device``.

    True for CUDA devices when triton imports; True for CPU only when ``TRITON_INTERPRET=1`` is
    set (Triton's interpreter) and triton imports; False otherwise.

    Examples:
        >>> is_available("meta")
        False
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and _triton_importable()
    if dev.type == "cpu":
        return os.environ.get("TRITON_INTERPRET") == "1" and _triton_importable()
    return False


def _kernels():
    import triton  # noqa: F401  (a clear ImportError here, not a stub failing later)

    from labelsmooth.ops import _triton_kernels

    return _triton_kernels


def _launch_cfg(k: int) -> tuple[int, int]:
    """(BLOCK, num_warps): a power-of-two chunk ≤ MAX_BLOCK, ~ELEMS_PER_THREAD values a thread."""
    if MAX_BLOCK < 16 or MAX_BLOCK & (MAX_BLOCK - 1) or ELEMS_PER_THREAD < 1:
        raise ValueError(f"Expected `LABELSMOOTH_TRITON_MAX_BLOCK` to be a power of two >= 16 and "
                         f"`LABELSMOOTH_TRITON_ELEMS_PER_THREAD` >= 1, but got {MAX_BLOCK!r} and "
                         f"{ELEMS_PER_THREAD!r}.")
    block = max(16, min(1 << max(k - 1, 0).bit_length(), MAX_BLOCK))
    return block, max(1, min(32, block // (32 * ELEMS_PER_THREAD)))


def _round_bf16(dx: Tensor) -> bool:
    """Round bf16 gradients explicitly under the interpreter, whose fp32→bf16 cast truncates."""
    return dx.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def _staged(dst: Tensor) -> Tensor:
    """Where a kernel writes ``dst``: ``dst`` itself, or — under the interpreter only, for bfloat16,
    whose cast there truncates where a GPU's rounds to nearest — a float32 stand-in that
    :func:`_unstage` copies back (torch's cast rounds). The kernels carry no interpreter shim."""
    if _round_bf16(dst):
        return torch.empty(dst.shape, dtype=torch.float32, device=dst.device)
    return dst


def _unstage(stand_in: Tensor, dst: Tensor) -> None:
    if stand_in is not dst:
        dst.copy_(stand_in)


def _on_device(x: Tensor):
    """Launch on the logits' GPU, whatever the current device (Triton uses the current one)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _mark_consumed(x: Tensor) -> None:
    # Shared with the fused engine: a labelsmooth loss refuses logits overwritten by a gradient.
    if not torch.compiler.is_compiling():
        from labelsmooth.ops import fused

        fused._mark_consumed(x)


def _may_write_in_place(x: Tensor) -> bool:
    # contiguous (never write through overlapping views) and not a leaf or a view of one
    from labelsmooth.ops import fused

    return fused.may_write_in_place(x)


def _double_backward() -> bool:
    """backward(create_graph=True): the gradient must itself be differentiable (no kernel)."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def _check_not_consumed(x: Tensor) -> None:
    if not torch.compiler.is_compiling():
        from labelsmooth.ops import fused

        fused._check_not_consumed(x)


# -------------------------------------------------------------------------------------------------
# Index targets
# -------------------------------------------------------------------------------------------------

def _smooth_mode(s: Optional[Tensor], s_uniform: float) -> int:
    if s is not None:
        return 2
    return 1 if s_uniform != 0.0 else 0


@torch.library.custom_op("labelsmooth::triton_index_fwd", mutates_args=())
def _index_fwd(
    x: Tensor, y: Tensor, ct: Tensor, cs: Tensor, s: Optional[Tensor], s_uniform: float,
    cz: Optional[Tensor], softcap: Optional[float], inplace_backward: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    r, k = x.shape
    loss = torch.empty(r, dtype=torch.float32, device=x.device)
    lse = torch.empty(r, dtype=torch.float32, device=x.device)
    stats = torch.empty(2, r, dtype=torch.float32, device=x.device)  # row max m, log Σ e^{x-m}
    if r == 0:
        return loss, lse, stats
    block, warps = _launch_cfg(k)
    ct, cs = ct.contiguous(), cs.contiguous()
    s_sum = s.sum(dtype=torch.float32) if s is not None else ct
    with _on_device(x):
        _kernels()._index_fwd[(r,)](
            x, x.stride(0), x.stride(1),
            y.contiguous(), ct, cs, cz.contiguous() if cz is not None else ct,
            s.contiguous() if s is not None else ct, s_sum,
            loss, lse, stats[0], stats[1],
            k, float(s_uniform), float(softcap) if softcap is not None else 1.0,
            SMOOTH=_smooth_mode(s, s_uniform), HAS_Z=cz is not None, SOFTCAP=softcap is not None,
            BLOCK=block, num_warps=warps,
        )
    return loss, lse, stats


@_index_fwd.register_fake
def _(x, y, ct, cs, s, s_uniform, cz, softcap, inplace_backward):
    r = x.shape[0]
    return (x.new_empty(r, dtype=torch.float32), x.new_empty(r, dtype=torch.float32),
            x.new_empty((2, r), dtype=torch.float32))


def _index_bwd_launch(dx, x, y, ct, cs, s, s_uniform, cz, softcap, stats, g) -> None:
    r, k = x.shape
    if r == 0:
        return
    block, warps = _launch_cfg(k)
    ct, cs = ct.contiguous(), cs.contiguous()
    s_sum = s.sum(dtype=torch.float32) if s is not None else ct
    out = _staged(dx)
    with _on_device(x):
        _kernels()._index_bwd[(r,)](
            x, x.stride(0), x.stride(1),
            out, out.stride(0), out.stride(1),
            y.contiguous(), ct, cs, cz.contiguous() if cz is not None else ct,
            s.contiguous() if s is not None else ct, s_sum, stats[0], stats[1],
            g.to(torch.float32).contiguous(),
            k, float(s_uniform), float(softcap) if softcap is not None else 1.0,
            SMOOTH=_smooth_mode(s, s_uniform), HAS_Z=cz is not None, SOFTCAP=softcap is not None,
            BLOCK=block, num_warps=warps,
        )
    _unstage(out, dx)


@torch.library.custom_op("labelsmooth::triton_index_bwd_out", mutates_args=("out",))
def _index_bwd_out(
    x: Tensor, y: Tensor, ct: Tensor, cs: Tensor, s: Optional[Tensor], s_uniform: float,
    cz: Optional[Tensor], softcap: Optional[float], stats: Tensor, g: Tensor, out: Tensor,
) -> None:
    """Destination-passing backward: writes the gradient into ``out`` (fresh, or ``x`` itself)."""
    _index_bwd_launch(out, x, y, ct, cs, s, s_uniform, cz, softcap, stats, g)


@_index_bwd_out.register_fake
def _(x, y, ct, cs, s, s_uniform, cz, softcap, stats, g, out):
    return None


def _grad_buffer(x: Tensor, inplace: bool) -> Tensor:
    """Where a backward writes the logits' gradient: ``x`` itself in place, else fresh memory."""
    return x if inplace else torch.empty_like(x, memory_format=torch.contiguous_format)


def _index_setup(ctx, inputs, output) -> None:
    x, y, ct, cs, s, s_uniform, cz, softcap, inplace_backward = inputs
    ctx.save_for_backward(x, y, ct, cs, s, cz, output[2])
    ctx.s_uniform, ctx.softcap = s_uniform, softcap
    ctx.inplace = inplace_backward and _may_write_in_place(x)
    ctx.mark_non_differentiable(output[1], output[2])


def _index_backward(ctx, g_loss, g_lse, g_stats):
    x, y, ct, cs, s, cz, stats = ctx.saved_tensors
    if _double_backward():
        from labelsmooth.ops import fused

        dx = fused._index_grad_differentiable(g_loss, x, y, ct, cs, s, ctx.s_uniform, cz,
                                              ctx.softcap)
        return dx, None, None, None, None, None, None, None, None
    dx = _grad_buffer(x, ctx.inplace)
    _index_bwd_out(x, y, ct, cs, s, ctx.s_uniform, cz, ctx.softcap, stats, g_loss, dx)
    if ctx.inplace:
        _mark_consumed(x)
    return dx, None, None, None, None, None, None, None, None


_index_fwd.register_autograd(_index_backward, setup_context=_index_setup)


# --- index targets with the optional terms: the block contract over the whole row ---------------

def _terms_args(terms: Terms) -> tuple[float, float, Optional[float], bool]:
    """(β, ε₁, γ or None, is FLSD-53): the terms as the ops' schemas take them."""
    flsd = terms.focal_gamma == FLSD
    gamma = None if terms.focal_gamma is None or flsd else float(terms.focal_gamma)
    return float(terms.confidence_penalty), float(terms.poly), gamma, flsd


def _terms_of(beta: float, eps1: float, gamma: Optional[float], flsd: bool) -> Terms:
    return Terms(beta, eps1, FLSD if flsd else gamma)


def _index_terms_rows(x, y, ct, cs, s, s_uniform, cz, softcap, w, terms):
    """(loss, lse, saved): the row loss with the terms and the stage-two coefficients, composed
    from the block contract over the whole row and the row formulas of :mod:`._terms`.

    ``saved`` (7, R) holds ``ref, L, cp, cps, cpx, cpd, low`` (0 where unused). Rows without a
    coefficient (ignored rows) get loss 0 and every coefficient 0 by selection, so ±inf/NaN
    padding in them reaches neither the loss nor the gradient."""
    r, k = x.shape
    smoothing = s is not None or s_uniform != 0.0
    m, se, xy, dsx, sex, ses = row_partials(x, y, s, s_uniform, softcap, terms=terms)
    ref = row_ref(m)
    L = torch.log(se).to(torch.float32)
    big_s = s.sum(dtype=torch.float32) if s is not None else s_uniform * k
    low = _terms.flsd_rows(terms, ref, L, xy)
    focal = None
    if terms.focal:
        focal = focal_partials(x, L, terms.focal_gamma, s, s_uniform, softcap, ref=ref, low=low)
    csn = cs if smoothing else None
    stats = dict(w=w, sex=sex, ses=ses, sumexp=se, focal=focal, low=low)
    loss = _terms.row_terms_loss(ref, L, xy, dsx if smoothing else None, big_s, ct, csn, cz,
                                 terms, **stats)
    cp, co = _terms.term_coefs(ref, L, xy, big_s, ct, csn, cz, terms,
                               shares_vector=s is not None, s_uniform=s_uniform, **stats)
    live = ct != 0
    if smoothing:
        live = live | (cs != 0)
    if cz is not None:
        live = live | (cz != 0)
    if terms.confidence_penalty:
        live = live | (w != 0)
    zero = torch.zeros_like(ref)

    def keep(v):
        return zero if v is None else torch.where(live, v.to(torch.float32), zero)

    saved = torch.stack([ref, L, keep(cp), keep(co.cps), keep(co.cpx), keep(co.cpd),
                         zero if low is None else low.to(torch.float32)])
    return keep(loss), ref + L, saved


@torch.library.custom_op("labelsmooth::triton_index_terms_fwd", mutates_args=())
def _index_terms_fwd(
    x: Tensor, y: Tensor, ct: Tensor, cs: Tensor, s: Optional[Tensor], s_uniform: float,
    cz: Optional[Tensor], softcap: Optional[float], row_scale: Optional[Tensor], beta: float,
    eps1: float, gamma: Optional[float], flsd: bool, inplace_backward: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _index_terms_rows(x, y, ct, cs, s, s_uniform, cz, softcap, row_scale,
                             _terms_of(beta, eps1, gamma, flsd))


@_index_terms_fwd.register_fake
def _(x, y, ct, cs, s, s_uniform, cz, softcap, row_scale, beta, eps1, gamma, flsd,
      inplace_backward):
    r = x.shape[0]
    return (x.new_empty(r, dtype=torch.float32), x.new_empty(r, dtype=torch.float32),
            x.new_empty((7, r), dtype=torch.float32))


def _index_terms_setup(ctx, inputs, output) -> None:
    (x, y, ct, cs, s, s_uniform, cz, softcap, row_scale, beta, eps1, gamma, flsd,
     inplace_backward) = inputs
    ctx.save_for_backward(x, y, ct, cs, s, cz, row_scale, output[2])
    ctx.s_uniform, ctx.softcap = s_uniform, softcap
    ctx.terms = _terms_of(beta, eps1, gamma, flsd)
    ctx.inplace = inplace_backward and _may_write_in_place(x)
    ctx.mark_non_differentiable(output[1], output[2])


def _index_terms_backward(ctx, g_loss, g_lse, g_saved):
    x, y, ct, cs, s, cz, w, saved = ctx.saved_tensors
    terms, none = ctx.terms, (None,) * 13
    if _double_backward():  # a differentiable gradient: autograd through the dense oracle
        loss, _ = reference.index_rows(x, y, ct, cs, s, ctx.s_uniform, cz, ctx.softcap,
                                       terms=terms, row_scale=w)
        (dx,) = torch.autograd.grad(loss, x, g_loss, create_graph=True)
        return (dx, *none)
    ref, L, cp, cps, cpx, cpd, low = saved.unbind(0)
    coefs = TermCoefs(cps=cps if terms.poly and s is not None else None,
                      cpx=cpx if terms.confidence_penalty else None, cpd=cpd,
                      gamma=terms.focal_gamma,
                      low=low != 0 if terms.focal_gamma == FLSD else None)
    dx = _grad_buffer(x, ctx.inplace)
    grad_rows(x, y, L, cp, ct, cs, s, ctx.s_uniform, ctx.softcap, g_loss, None, dx, ref=ref,
              terms=coefs)
    if ctx.inplace:
        _mark_consumed(x)
    return (dx, *none)


_index_terms_fwd.register_autograd(_index_terms_backward, setup_context=_index_terms_setup)


def index_rows(
    x: Tensor,
    y: Tensor,
    ct: Tensor,
    cs: Tensor,
    s: Optional[Tensor],
    s_uniform: float,
    cz: Optional[Tensor],
    softcap: Optional[float],
    inplace_backward: bool = False,
    *,
    terms: Terms = NO_TERMS,
    row_scale: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    r"""Per-row smoothed cross-entropy for index targets (contract: :mod:`labelsmooth.ops`).

    .. math::

        \ell_n = ct_n(\mathrm{lse}_n - x_{n,y_n}) + cs_n\sum_c s_c(\mathrm{lse}_n - x_{n,c})
                 + cz_n\,\mathrm{lse}_n^2

    PyTorch equivalent (``ct = 1-ε``, ``cs = 1``, ``s_uniform = ε/K``):
    ``F.cross_entropy(x, y, label_smoothing=ε, reduction="none")``.

    Args:
        x: (R, K) logits, float32/bfloat16/float16 (float64 runs the reference op).
        y: (R,) int64 target indices, already safe (ignored rows: any valid index, zero coefs).
            An out-of-range index (possible only with value checks off: ``validate=False``, or
            the CUDA default) is never read past its row: that row's loss and gradient are NaN.
        ct, cs: (R,) coefficients of the target and smoothing terms.
        s: (K,) smoothing shares, or None for the uniform share ``s_uniform``.
        s_uniform: the uniform share (0 with ``s=None``: no smoothing term).
        cz: (R,) z-loss coefficients or None.
        softcap: c > 0 to replace every logit by ``c·tanh(x/c)`` first, or None.
        inplace_backward: write the gradient over ``x`` in the backward (contiguous ``x`` only).
        terms: the optional terms (:mod:`labelsmooth.ops._terms`); when active the row is the
            composition of the block contract over the whole row (:func:`row_partials` with the
            terms' statistics, :func:`focal_partials` for focal, the row formulas
            ``_terms.row_terms_loss`` / ``_terms.term_coefs``, :func:`grad_rows` in the
            backward): one read more than without terms for focal, none more otherwise.
        row_scale: (R,) the confidence penalty's row scale (the targets' weights, 0 on ignored
            rows); needed with ``confidence_penalty``.

    Returns:
        ``(loss, lse)``, both (R,) float32 (float64 for float64 ``x``); ``loss`` is
        differentiable with respect to ``x``.

    Examples:
        The kernels need CUDA, or CPU under ``TRITON_INTERPRET=1``; elsewhere this example runs
        the reference op, which gives the same numbers:

        >>> from labelsmooth.ops import reference
        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
        >>> y, one = torch.tensor([0, 1]), torch.ones(2)
        >>> rows = index_rows if is_available(x.device) else reference.index_rows
        >>> loss, lse = rows(x, y, 0.9 * one, one, None, 0.1 / 3, None, None)
        >>> loss
        tensor([0.3365, 0.5477])
        >>> torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1, reduction="none")
        tensor([0.3365, 0.5477])
    """
    _check_not_consumed(x)
    if x.dtype == torch.float64:  # no fp64 kernel (functional.py rejects zero classes)
        tkw = dict(terms=terms, row_scale=row_scale) if terms.active else {}
        return reference.index_rows(x, y, ct, cs, s, s_uniform, cz, softcap, inplace_backward,
                                    **tkw)
    f32 = torch.float32
    if terms.active:
        beta, eps1, gamma, flsd = _terms_args(terms)
        loss, lse, _ = _index_terms_fwd(
            x, y, ct.to(f32), cs.to(f32), s.to(f32) if s is not None else None,
            float(s_uniform), cz.to(f32) if cz is not None else None,
            None if softcap is None else float(softcap),
            row_scale.to(f32) if row_scale is not None else None, beta, eps1, gamma, flsd,
            bool(inplace_backward))
        return loss, lse
    loss, lse, _ = _index_fwd(
        x, y, ct.to(torch.float32), cs.to(torch.float32),
        s.to(torch.float32) if s is not None else None, float(s_uniform),
        cz.to(torch.float32) if cz is not None else None,
        None if softcap is None else float(softcap), bool(inplace_backward))
    return loss, lse


# -------------------------------------------------------------------------------------------------
# Probability targets
# -------------------------------------------------------------------------------------------------

def _prob_fwd_launch(x, t, w, a, b, b_uniform, rs, cz, softcap, terms: Terms = NO_TERMS):
    """(loss, lse, stats, extras): the statistics pass. ``stats`` (3, R) = (m, log Σ e^{x−m}, Q);
    with active ``terms`` ``extras`` = (Σ q (m − x'), sex, Σ q e, Σ t e, (d, n)) ((0,) where
    unneeded; Σ e^{x−m} = d + n with the ties with the max counted apart in n)."""
    r, k = x.shape
    f32 = dict(dtype=torch.float32, device=x.device)
    loss, lse = torch.empty(r, **f32), torch.empty(r, **f32)
    stats = torch.empty(3, r, **f32)  # m, log Σ e^{x-m}, Σ_c q_c
    wants = (terms.active, terms.wants_sex, terms.wants_ses, terms.focal_gamma == FLSD)
    # no allocation at all without terms (the kernel's pointers are then unused placeholders)
    extras = tuple(torch.empty(r if want else 0, **f32) for want in wants) if wants[0] else \
        (None,) * 4
    dn = torch.empty(2, r, **f32) if wants[0] else None  # Σexp = d + n, the ties apart
    if r == 0:
        return loss, lse, stats, extras + (dn,)
    block, warps = _launch_cfg(k)
    rs = rs.contiguous()
    with _on_device(x):
        _kernels()._prob_fwd[(r,)](
            x, x.stride(0), x.stride(1),
            t, t.stride(0), t.stride(1),
            w.contiguous() if w is not None else rs, b.contiguous() if b is not None else rs,
            rs, cz.contiguous() if cz is not None else rs,
            loss, lse, stats[2], stats[0], stats[1],
            *(e if want else loss for e, want in zip(extras, wants)),
            dn if dn is not None else loss,
            k, float(a), float(b_uniform), float(softcap) if softcap is not None else 1.0,
            HAS_W=w is not None, HAS_B=b is not None, HAS_Z=cz is not None,
            SOFTCAP=softcap is not None, TERMS=wants[0], SEX=wants[1], QE=wants[2], TE=wants[3],
            BLOCK=block, num_warps=warps,
        )
    return loss, lse, stats, extras + (dn,)


@torch.library.custom_op("labelsmooth::triton_prob_fwd", mutates_args=())
def _prob_fwd(
    x: Tensor, t: Tensor, w: Optional[Tensor], a: float, b: Optional[Tensor], b_uniform: float,
    rs: Tensor, cz: Optional[Tensor], softcap: Optional[float], inplace_backward: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    loss, lse, stats, _ = _prob_fwd_launch(x, t, w, a, b, b_uniform, rs, cz, softcap)
    return loss, lse, stats


@_prob_fwd.register_fake
def _(x, t, w, a, b, b_uniform, rs, cz, softcap, inplace_backward):
    r = x.shape[0]
    return (x.new_empty(r, dtype=torch.float32), x.new_empty(r, dtype=torch.float32),
            x.new_empty((3, r), dtype=torch.float32))


def _prob_bwd_launch(dx, dt, x, t, w, a, b, b_uniform, rs, cz, softcap, stats, g,
                     cp=None, cpq=None, cpx=None, low=None, gamma=None, flsd=False,
                     eps1=0.0) -> None:
    r, k = x.shape
    if r == 0:
        return
    block, warps = _launch_cfg(k)
    rs = rs.contiguous()
    out = _staged(dx)
    dt_arg = _staged(dt) if dt is not None else out
    terms = cp is not None
    with _on_device(x):
        _kernels()._prob_bwd[(r,)](
            x, x.stride(0), x.stride(1),
            t, t.stride(0), t.stride(1),
            out, out.stride(0), out.stride(1),
            dt_arg, dt_arg.stride(0), dt_arg.stride(1),
            w.contiguous() if w is not None else rs, b.contiguous() if b is not None else rs,
            rs, cz.contiguous() if cz is not None else rs, stats[0], stats[1], stats[2],
            g.to(torch.float32).contiguous(),
            *(_f32(v) if v is not None else rs for v in (cp, cpq, cpx)),
            low.to(torch.int8).contiguous() if low is not None else rs,
            k, float(a), float(b_uniform), float(softcap) if softcap is not None else 1.0,
            float(gamma) if gamma is not None else 0.0, float(eps1),
            HAS_W=w is not None, HAS_B=b is not None, HAS_Z=cz is not None,
            SOFTCAP=softcap is not None, NEED_DT=dt is not None, TERMS=terms,
            HAS_CPQ=terms and cpq is not None, HAS_CPX=terms and cpx is not None,
            POW=_pow_mode(FLSD if flsd else gamma), FOCAL=terms and (flsd or gamma is not None),
            POLY=terms and eps1 != 0.0, BLOCK=block, num_warps=warps,
        )
    _unstage(out, dx)
    if dt is not None:
        _unstage(dt_arg, dt)


@torch.library.custom_op("labelsmooth::triton_prob_bwd_out", mutates_args=("out", "dt"))
def _prob_bwd_out(
    x: Tensor, t: Tensor, w: Optional[Tensor], a: float, b: Optional[Tensor], b_uniform: float,
    rs: Tensor, cz: Optional[Tensor], softcap: Optional[float], stats: Tensor, g: Tensor,
    out: Tensor, dt: Optional[Tensor], cp: Optional[Tensor] = None,
    cpq: Optional[Tensor] = None, cpx: Optional[Tensor] = None, low: Optional[Tensor] = None,
    gamma: Optional[float] = None, flsd: bool = False, eps1: float = 0.0,
) -> None:
    """Destination-passing backward: the logits' gradient into ``out`` (fresh, or ``x`` itself)
    and, when ``dt`` is given, the targets' gradient into ``dt``; with ``cp`` given (the optional
    terms: ``stats`` then holds the reference and L) the generalised form with ``cpq``/``cpx``,
    focal ``gamma``/``flsd``/``low`` and Poly-1's ``eps1`` (for ``dt``)."""
    _prob_bwd_launch(out, dt, x, t, w, a, b, b_uniform, rs, cz, softcap, stats, g,
                     cp, cpq, cpx, low, gamma, flsd, eps1)


@_prob_bwd_out.register_fake
def _(x, t, w, a, b, b_uniform, rs, cz, softcap, stats, g, out, dt, cp=None, cpq=None,
      cpx=None, low=None, gamma=None, flsd=False, eps1=0.0):
    return None


def _prob_setup(ctx, inputs, output) -> None:
    x, t, w, a, b, b_uniform, rs, cz, softcap, inplace_backward = inputs
    ctx.save_for_backward(x, t, w, b, rs, cz, output[2])
    ctx.a, ctx.b_uniform, ctx.softcap = a, b_uniform, softcap
    ctx.inplace = inplace_backward and _may_write_in_place(x)
    ctx.mark_non_differentiable(output[1], output[2])


def _prob_backward(ctx, g_loss, g_lse, g_stats):
    x, t, w, b, rs, cz, stats = ctx.saved_tensors
    need_dt = ctx.needs_input_grad[1]
    if _double_backward():
        from labelsmooth.ops import fused

        dx, dt = fused._prob_grad_differentiable(g_loss, x, t, w, ctx.a, b, ctx.b_uniform, rs,
                                                 cz, ctx.softcap, need_dt)
        return dx, dt, None, None, None, None, None, None, None, None
    dx = _grad_buffer(x, ctx.inplace)
    dt = torch.empty_like(t, memory_format=torch.contiguous_format) if need_dt else None
    _prob_bwd_out(x, t, w, ctx.a, b, ctx.b_uniform, rs, cz, ctx.softcap, stats, g_loss, dx, dt)
    if ctx.inplace:
        _mark_consumed(x)
    return dx, dt, None, None, None, None, None, None, None, None


_prob_fwd.register_autograd(_prob_backward, setup_context=_prob_setup)


# --- probability targets with the optional terms ------------------------------------------------

def _prob_terms_rows(x, t, w, a, b, b_uniform, rs, cz, softcap, terms):
    r"""(loss, lse, saved): the terms on the mass rs·q, by the index formulas of :mod:`._terms`
    with no target term (ct = 0), shares q (a per-row vector, so cps is q's coefficient),
    S = Q and cs = the penalty's row scale = rs. ``saved`` (6, R) = ``ref, L, cp, cpq, cpx, low``;
    rows without a coefficient get loss 0 and every coefficient 0 by selection.

    The row formulas run in float64 on (R,) vectors: with all the mass in the shares, Poly-1's
    :math:`Q - \sum_c q_c p_c` of a confident row (1 − p_y ≈ 1e-8) cancels in float32."""
    _, _, stats, (qx, sex, qe, te, dn) = _prob_fwd_launch(x, t, w, a, b, b_uniform, rs, cz,
                                                           softcap, terms)
    d64 = torch.float64
    ref = row_ref(stats[0])
    se = dn[1].to(d64) + dn[0].to(d64)  # the ties apart: a confident row keeps 1 − p_y
    L = torch.log(se)
    low = _terms.flsd_low(te.to(d64) / se) if terms.focal_gamma == FLSD else None
    focal = None
    if terms.focal:
        fs, a_s = _prob_focal_launch(x, t, w, a, b, b_uniform, softcap, ref, L, terms.focal_gamma,
                                     low)
        focal = (fs.to(d64), a_s.to(d64))
    ref64, zero64, rs64 = ref.to(d64), torch.zeros_like(se), rs.to(d64)
    cz64 = cz.to(d64) if cz is not None else None
    kw = dict(w=rs64, sex=sex.to(d64) if terms.wants_sex else None,
              ses=qe.to(d64) if terms.wants_ses else None, sumexp=se, focal=focal, low=low)
    big_q = stats[2].to(d64)
    loss = _terms.row_terms_loss(ref64, L, zero64, qx.to(d64), big_q, zero64, rs64, cz64, terms,
                                 **kw)
    cp, co = _terms.term_coefs(ref64, L, zero64, big_q, zero64, rs64, cz64, terms,
                               shares_vector=True, **kw)
    live = rs != 0
    if cz is not None:
        live = live | (cz != 0)
    zero = torch.zeros_like(ref)

    def keep(v):
        return zero if v is None else torch.where(live, v.to(torch.float32), zero)

    L32 = L.to(torch.float32)
    saved = torch.stack([ref, L32, keep(cp), keep(co.cps), keep(co.cpx),
                         zero if low is None else low.to(torch.float32)])
    return keep(loss), ref + L32, saved


def _prob_focal_launch(x, t, w, a, b, b_uniform, softcap, ref, L, gamma, low):
    r, k = x.shape
    fs, a_s = (torch.zeros(r, dtype=torch.float32, device=x.device) for _ in range(2))
    if r == 0:
        return fs, a_s
    block, warps = _launch_cfg(k)
    g, _ = _gamma_args(gamma)
    with _on_device(x):
        _kernels()._prob_focal[(r,)](
            x, x.stride(0), x.stride(1), t, t.stride(0), t.stride(1),
            w.contiguous() if w is not None else fs, b.contiguous() if b is not None else fs,
            _f32(ref), _f32(L), low.to(torch.int8).contiguous() if low is not None else fs,
            fs, a_s, k, float(a), float(b_uniform),
            float(softcap) if softcap is not None else 1.0, g,
            HAS_W=w is not None, HAS_B=b is not None, SOFTCAP=softcap is not None,
            POW=_pow_mode(gamma), BLOCK=block, num_warps=warps,
        )
    return fs, a_s


@torch.library.custom_op("labelsmooth::triton_prob_terms_fwd", mutates_args=())
def _prob_terms_fwd(
    x: Tensor, t: Tensor, w: Optional[Tensor], a: float, b: Optional[Tensor], b_uniform: float,
    rs: Tensor, cz: Optional[Tensor], softcap: Optional[float], beta: float, eps1: float,
    gamma: Optional[float], flsd: bool, inplace_backward: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _prob_terms_rows(x, t, w, a, b, b_uniform, rs, cz, softcap,
                            _terms_of(beta, eps1, gamma, flsd))


@_prob_terms_fwd.register_fake
def _(x, t, w, a, b, b_uniform, rs, cz, softcap, beta, eps1, gamma, flsd, inplace_backward):
    r = x.shape[0]
    return (x.new_empty(r, dtype=torch.float32), x.new_empty(r, dtype=torch.float32),
            x.new_empty((6, r), dtype=torch.float32))


def _prob_terms_setup(ctx, inputs, output) -> None:
    x, t, w, a, b, b_uniform, rs, cz, softcap, beta, eps1, gamma, flsd, inplace_backward = inputs
    ctx.save_for_backward(x, t, w, b, rs, cz, output[2])
    ctx.a, ctx.b_uniform, ctx.softcap = a, b_uniform, softcap
    ctx.terms = _terms_of(beta, eps1, gamma, flsd)
    ctx.inplace = inplace_backward and _may_write_in_place(x)
    ctx.mark_non_differentiable(output[1], output[2])


def _prob_terms_backward(ctx, g_loss, g_lse, g_saved):
    x, t, w, b, rs, cz, saved = ctx.saved_tensors
    terms, need_dt, none = ctx.terms, ctx.needs_input_grad[1], (None,) * 12
    if _double_backward():  # a differentiable gradient: autograd through the dense oracle
        loss, _ = reference.prob_rows(x, t, w, ctx.a, b, ctx.b_uniform, rs, cz, ctx.softcap,
                                      terms=terms)
        grads = torch.autograd.grad(loss, (x, t) if need_dt else (x,), g_loss,
                                    create_graph=True)
        return (grads[0], grads[1] if need_dt else None, *none)
    ref, L, cp, cpq, cpx, low = saved.unbind(0)
    beta, eps1, gamma, flsd = _terms_args(terms)
    dx = _grad_buffer(x, ctx.inplace)
    dt = torch.empty_like(t, memory_format=torch.contiguous_format) if need_dt else None
    _prob_bwd_out(x, t, w, ctx.a, b, ctx.b_uniform, rs, cz, ctx.softcap,
                  torch.stack([ref, L, L]), g_loss, dx, dt, cp,
                  cpq if terms.poly else None, cpx if terms.confidence_penalty else None,
                  low if flsd else None, gamma, flsd, eps1)
    if ctx.inplace:
        _mark_consumed(x)
    return (dx, dt, *none)


_prob_terms_fwd.register_autograd(_prob_terms_backward, setup_context=_prob_terms_setup)


def prob_rows(
    x: Tensor,
    t: Tensor,
    w: Optional[Tensor],
    a: float,
    b: Optional[Tensor],
    b_uniform: float,
    rs: Tensor,
    cz: Optional[Tensor],
    softcap: Optional[float],
    inplace_backward: bool = False,
    *,
    terms: Terms = NO_TERMS,
) -> tuple[Tensor, Tensor]:
    r"""Per-row smoothed cross-entropy for probability targets (contract: :mod:`labelsmooth.ops`).

    .. math::

        q_{n,c} = w_c\,(a\,t_{n,c} + b_c), \qquad
        \ell_n = rs_n \sum_c q_{n,c}(\mathrm{lse}_n - x_{n,c}) + cz_n\,\mathrm{lse}_n^2

    PyTorch equivalent (``a = 1-ε``, ``b_uniform = ε/K``, ``rs = 1``, no ``w``):
    ``F.cross_entropy(x, t, label_smoothing=ε, reduction="none")``. Gradients reach ``t`` too
    when it requires grad (:math:`\partial\ell_n/\partial t_{n,c} = rs_n a w_c(\mathrm{lse}_n
    - x_{n,c})`).

    Args:
        x: (R, K) logits, float32/bfloat16/float16 (float64 runs the reference op).
        t: (R, K) target probabilities (any float dtype).
        w: (K,) class weights or None; a: target scale; b: (K,) offsets or None (``b_uniform``).
        rs: (R,) row scales; cz: (R,) z-loss coefficients or None; softcap: c or None.
        inplace_backward: write the gradient over ``x`` in the backward (contiguous ``x`` only).
        terms: the optional terms on the mass :math:`rs\,q` (:mod:`labelsmooth.ops._terms`; the
            penalty scaled by ``rs``, FLSD-53 reading :math:`p_y = \sum_c t_c p_c`): the
            statistics pass gathers their sums too (constexpr flags), focal adds one read, and
            the row formulas are ``_terms.row_terms_loss`` / ``_terms.term_coefs`` with no target
            term and the row's own shares q.

    Returns:
        ``(loss, lse)``, both (R,) float32 (float64 for float64 ``x``).

    Examples:
        >>> from labelsmooth.ops import reference
        >>> x = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
        >>> t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
        >>> rows = prob_rows if is_available(x.device) else reference.prob_rows
        >>> loss, lse = rows(x, t, None, 0.9, None, 0.1 / 3, torch.ones(2), None, None)
        >>> loss
        tensor([0.3365, 1.2227])
        >>> torch.nn.functional.cross_entropy(x, t, label_smoothing=0.1, reduction="none")
        tensor([0.3365, 1.2227])
    """
    _check_not_consumed(x)
    if x.dtype == torch.float64:
        tkw = dict(terms=terms) if terms.active else {}
        return reference.prob_rows(x, t, w, a, b, b_uniform, rs, cz, softcap, inplace_backward,
                                   **tkw)
    f32 = torch.float32
    if terms.active:
        beta, eps1, gamma, flsd = _terms_args(terms)
        loss, lse, _ = _prob_terms_fwd(
            x, t, w.to(f32) if w is not None else None, float(a),
            b.to(f32) if b is not None else None, float(b_uniform), rs.to(f32),
            cz.to(f32) if cz is not None else None, None if softcap is None else float(softcap),
            beta, eps1, gamma, flsd, bool(inplace_backward))
        return loss, lse
    loss, lse, _ = _prob_fwd(
        x, t, w.to(f32) if w is not None else None, float(a), b.to(f32) if b is not None else None,
        float(b_uniform), rs.to(f32), cz.to(f32) if cz is not None else None,
        None if softcap is None else float(softcap), bool(inplace_backward))
    return loss, lse


# -------------------------------------------------------------------------------------------------
# The two-stage contract (labelsmooth.ops): block statistics, then a block's gradient
# -------------------------------------------------------------------------------------------------

def _f32(v: Tensor) -> Tensor:
    return v.to(torch.float32).contiguous()


def _mask_arg(y: Tensor, target_mask: Optional[Tensor]) -> tuple[Tensor, bool]:
    if target_mask is None:
        return y, False
    return target_mask.to(torch.int8).contiguous(), True


def _block_partials_launch(x, y, s, s_uniform, softcap, target_mask, want_sex=False,
                           want_ses=False, ties=False):
    """Stage one: (m, d, x_y, dsx) and, when asked, sex / ses (``ses`` only with a share vector:
    uniform shares give ``s_uniform·sumexp``) and n, the ties with the max counted apart
    (Σexp = d + n); what is not asked is neither allocated nor computed (constexpr flags)."""
    r, k = x.shape
    m, d, xy, sx = (torch.empty(r, dtype=torch.float32, device=x.device) for _ in range(4))
    extra = [torch.empty(r, dtype=torch.float32, device=x.device) if want else None
             for want in (want_sex, want_ses, ties)]
    if r == 0:
        return m, d, xy, sx, *extra
    y = y.to(torch.long).contiguous()
    on, has_mask = _mask_arg(y, target_mask)
    block, warps = _launch_cfg(k)
    with _on_device(x):
        _kernels()._block_partials[(r,)](
            x, x.stride(0), x.stride(1), y, on, _f32(s) if s is not None else y,
            m, d, xy, sx, *(e if e is not None else m for e in extra),
            k, float(s_uniform), float(softcap) if softcap is not None else 1.0,
            SMOOTH=_smooth_mode(s, s_uniform), SOFTCAP=softcap is not None, HAS_MASK=has_mask,
            SEX=want_sex, SES=want_ses, TIES=ties, BLOCK=block, num_warps=warps,
        )
    return m, d, xy, sx, *extra


@torch.library.custom_op("labelsmooth::triton_block_partials", mutates_args=())
def _block_partials(
    x: Tensor, y: Tensor, s: Optional[Tensor], s_uniform: float, softcap: Optional[float],
    target_mask: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _block_partials_launch(x, y, s, s_uniform, softcap, target_mask)[:4]


@_block_partials.register_fake
def _(x, y, s, s_uniform, softcap, target_mask):
    r = x.shape[0]
    return tuple(x.new_empty(r, dtype=torch.float32) for _ in range(4))


@torch.library.custom_op("labelsmooth::triton_block_partials_terms", mutates_args=())
def _block_partials_terms(
    x: Tensor, y: Tensor, s: Optional[Tensor], s_uniform: float, softcap: Optional[float],
    target_mask: Optional[Tensor], want_sex: bool, want_ses: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Stage one with the terms: ``(m, d, n, x_y, dsx, [sex; ses])`` with Σexp = d + n (the ties
    with the max apart, added in float64 by :func:`row_partials`); ``sex``/``ses`` 0 where not
    wanted."""
    want_ses = want_ses and s is not None
    m, d, xy, sx, sex, ses, n = _block_partials_launch(x, y, s, s_uniform, softcap, target_mask,
                                                       want_sex, want_ses, True)
    zero = torch.zeros_like(m)
    return (m, d, n, xy, sx, torch.stack([sex if sex is not None else zero,
                                          ses if ses is not None else zero]))


@_block_partials_terms.register_fake
def _(x, y, s, s_uniform, softcap, target_mask, want_sex, want_ses):
    r = x.shape[0]
    return (*(x.new_empty(r, dtype=torch.float32) for _ in range(5)),
            x.new_empty((2, r), dtype=torch.float32))


@torch.no_grad()
def row_partials(
    x: Tensor, y: Tensor, s: Optional[Tensor], s_uniform: float, softcap: Optional[float],
    target_mask: Optional[Tensor] = None, *, terms: Terms = NO_TERMS,
) -> tuple[Tensor, ...]:
    r"""Stage one on a block of columns: per row ``(m, sumexp, x_y, dsx)`` relative to the row max.

    The contract of :func:`labelsmooth.ops.reference.row_partials` (see :mod:`labelsmooth.ops`),
    one Triton program per row; with active ``terms`` also ``(sex, ses)`` =
    :math:`\sum_c e_c (x'_c - r)` (0 unless ``confidence_penalty``) and :math:`\sum_c s_c e_c`
    (0 unless ``poly``; :math:`s_u\,\mathrm{sumexp}` for uniform shares), accumulated in the same
    pass (no extra read; constexpr flags, so the plain variant does no extra work).
    ``sumexp`` is accumulated in float32 and returned as float64. Without terms a confident
    row's excess :math:`\delta` = sumexp − 1 is kept only to float32's step (1.2e-7, where the
    fused engine's float64 :func:`~labelsmooth.ops._math.sum_exp` keeps it). With active terms
    (which need :math:`1 - p_y` of confident rows) the terms at the max are counted apart in the
    kernel and added in float64, as ``sum_exp`` does: δ is kept (one more per-lane register
    vector, so the plain variant does not pay it). float64 logits run the fused engine's
    plain-PyTorch passes (no float64 kernel; the reference's with terms).

    Examples:
        >>> from labelsmooth.ops import fused
        >>> x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 3.0, 3.0]])
        >>> partials = row_partials if is_available(x.device) else fused.row_partials
        >>> m, se, xy, dsx = partials(x, torch.tensor([2, 0]), None, 0.5, None)
        >>> m, xy, dsx
        (tensor([2., 3.]), tensor([2., 3.]), tensor([1.5000, 0.0000]))
    """
    if x.dtype == torch.float64:
        if terms.active:
            return reference.row_partials(x, y, s, s_uniform, softcap, target_mask, terms=terms)
        from labelsmooth.ops import _fused_chunks

        return _fused_chunks.row_partials(x, y, s, s_uniform, softcap, target_mask,
                                          chunk_elems=_fused_chunks.CHUNK_ELEMS)
    cap = None if softcap is None else float(softcap)
    if not terms.active:
        m, d, xy, sx = _block_partials(x, y, s, float(s_uniform), cap, target_mask)
        return m, d.double(), xy, sx
    m, d, n, xy, sx, extra = _block_partials_terms(x, y, s, float(s_uniform), cap, target_mask,
                                                   terms.wants_sex, terms.wants_ses)
    se = n.double() + d.double()  # the ties with the max apart: a confident row keeps 1 − p_y
    sex, ses = extra[0], extra[1]
    if terms.wants_ses and s is None and s_uniform != 0.0:
        ses = (float(s_uniform) * se).to(torch.float32)  # uniform: Σ s_u e = s_u·sumexp
    return m, se, xy, sx, sex, ses


def _pow_mode(gamma: float | str | None) -> int:
    """The kernels' POW constexpr for focal γ: −1 FLSD-53, n an integer γ ≤ FOCAL_INT_MAX
    (raised by multiplication), 0 any other γ (exp/log)."""
    if gamma == FLSD:
        return -1
    g = float(gamma) if gamma is not None else 1.0
    return int(g) if g.is_integer() and 0 < g <= FOCAL_INT_MAX else 0


def _gamma_args(gamma: float | str | None) -> tuple[float, bool]:
    """(γ as a float, is FLSD-53) for the ops' schemas (γ unused for FLSD-53)."""
    if gamma == FLSD:
        return 0.0, True
    return (0.0 if gamma is None else float(gamma)), False


def _gamma_of(gamma: float, flsd: bool) -> float | str:
    return FLSD if flsd else gamma


@torch.library.custom_op("labelsmooth::triton_block_focal", mutates_args=())
def _block_focal(
    x: Tensor, lse: Tensor, gamma: float, flsd: bool, s: Optional[Tensor], s_uniform: float,
    softcap: Optional[float], ref: Tensor, low: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    r, k = x.shape
    fs, a_s = (torch.zeros(r, dtype=torch.float32, device=x.device) for _ in range(2))
    if r == 0 or _smooth_mode(s, s_uniform) == 0:
        return fs, a_s  # no shares: the focal stage has nothing to sum
    block, warps = _launch_cfg(k)
    low_arg = low.to(torch.int8).contiguous() if low is not None else fs
    with _on_device(x):
        _kernels()._block_focal[(r,)](
            x, x.stride(0), x.stride(1), _f32(s) if s is not None else fs, _f32(ref), _f32(lse),
            low_arg, fs, a_s, k, float(s_uniform),
            float(softcap) if softcap is not None else 1.0, float(gamma),
            SMOOTH=_smooth_mode(s, s_uniform), SOFTCAP=softcap is not None,
            POW=_pow_mode(_gamma_of(gamma, flsd)), BLOCK=block, num_warps=warps,
        )
    return fs, a_s


@_block_focal.register_fake
def _(x, lse, gamma, flsd, s, s_uniform, softcap, ref, low):
    r = x.shape[0]
    return x.new_empty(r, dtype=torch.float32), x.new_empty(r, dtype=torch.float32)


@torch.no_grad()
def focal_partials(
    x: Tensor, lse: Tensor, gamma: float | str, s: Optional[Tensor], s_uniform: float,
    softcap: Optional[float], *, ref: Optional[Tensor] = None, low: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    r"""Stage 1b (focal only) on a block of columns: per row ``(Fs, As)`` over the block's shares.

    The contract of :func:`labelsmooth.ops.reference.focal_partials`: one more read of the block
    (the elementwise focal quantities need the merged ``lse``), one Triton program per row,
    float32. Merge: SUM. float64 logits run the reference's dense pass.

    Examples:
        >>> from labelsmooth.ops import reference
        >>> x = torch.zeros(1, 2)
        >>> focal = focal_partials if is_available(x.device) else reference.focal_partials
        >>> fs, a_s = focal(x, torch.logsumexp(x, 1), 2.0, None, 0.5, None)
        >>> fs, a_s  # two classes at p = ½, share ½ each: ¼·log 2 and ¼(−log 2 − 1)
        (tensor([0.1733]), tensor([-0.5966]))
    """
    if x.dtype == torch.float64:
        return reference.focal_partials(x, lse, gamma, s, s_uniform, softcap, ref=ref, low=low)
    g, flsd = _gamma_args(gamma)
    return _block_focal(x, lse, g, flsd, s, float(s_uniform),
                        None if softcap is None else float(softcap),
                        torch.zeros_like(lse) if ref is None else ref, low)


@torch.library.custom_op("labelsmooth::triton_block_grad_out", mutates_args=("out",))
def _block_grad_out(
    x: Tensor, y: Tensor, lse: Tensor, coef_p: Tensor, ct: Tensor, cs: Tensor,
    s: Optional[Tensor], s_uniform: float, softcap: Optional[float], grad: Tensor,
    target_mask: Optional[Tensor], ref: Tensor, out: Tensor,
    cps: Optional[Tensor] = None, cpx: Optional[Tensor] = None, cpd: Optional[Tensor] = None,
    gamma: Optional[float] = None, flsd: bool = False, low: Optional[Tensor] = None,
) -> None:
    """Destination-passing stage two: writes the block's gradient into ``out`` (may alias ``x``);
    with the terms' coefficients (``cps``/``cpx``/``cpd``, focal ``gamma``/``flsd``/``low``) the
    generalised form of :class:`~labelsmooth.ops._terms.TermCoefs` (``cpd`` given: terms on)."""
    r, k = x.shape
    if r == 0:
        return
    dst = _staged(out)
    y = y.to(torch.long).contiguous()
    on, has_mask = _mask_arg(y, target_mask)
    block, warps = _launch_cfg(k)
    focal = flsd or gamma is not None
    terms = cpd is not None
    lse = _f32(lse)
    with _on_device(x):
        _kernels()._block_grad[(r,)](
            x, x.stride(0), x.stride(1), dst, dst.stride(0), dst.stride(1),
            y, on, _f32(s) if s is not None else y, _f32(ref), lse, _f32(coef_p),
            _f32(ct), _f32(cs), _f32(grad),
            *(_f32(v) if v is not None else lse for v in (cps, cpx, cpd)),
            low.to(torch.int8).contiguous() if low is not None else y,
            k, float(s_uniform), float(softcap) if softcap is not None else 1.0,
            float(gamma) if gamma is not None else 0.0,
            SMOOTH=_smooth_mode(s, s_uniform), SOFTCAP=softcap is not None, HAS_MASK=has_mask,
            TERMS=terms, HAS_CPS=terms and cps is not None, HAS_CPX=terms and cpx is not None,
            POW=_pow_mode(FLSD if flsd else gamma), FOCAL=terms and focal,
            BLOCK=block, num_warps=warps,
        )
    _unstage(dst, out)


@torch.no_grad()
def grad_rows(
    x: Tensor, y: Tensor, lse: Tensor, coef_p: Tensor, ct: Tensor, cs: Tensor,
    s: Optional[Tensor], s_uniform: float, softcap: Optional[float], grad: Tensor,
    target_mask: Optional[Tensor] = None, out: Optional[Tensor] = None, *,
    ref: Optional[Tensor] = None, terms: Optional[TermCoefs] = None,
) -> Tensor:
    r"""Stage two on a block of columns: its gradient given the merged row statistics, into ``out``.

    The contract of :func:`labelsmooth.ops.reference.grad_rows` (``out`` may be ``x``: in place),
    through the destination-passing op ``labelsmooth::triton_block_grad_out``; with ``terms``
    (:class:`~labelsmooth.ops._terms.TermCoefs`, needs ``ref``) the generalised form, each term's
    part behind a constexpr flag of the kernel. float64 logits run the fused engine's
    plain-PyTorch passes (the reference's with terms).

    Examples:
        >>> from labelsmooth.ops import fused
        >>> x = torch.tensor([[0.0, 1.0, 2.0]])
        >>> one, lse = torch.ones(1), torch.logsumexp(x, 1)
        >>> grads = grad_rows if is_available(x.device) else fused.grad_rows
        >>> grads(x, torch.tensor([2]), lse, one, one, 0 * one, None, 0.0, None, one)
        tensor([[ 0.0900,  0.2447, -0.3348]])
    """
    if terms is not None and ref is None:
        raise ValueError("Expected `ref` (the reference of `lse`) with `terms`, but got None.")
    if x.dtype == torch.float64:
        if terms is not None:
            return reference.grad_rows(x, y, lse, coef_p, ct, cs, s, s_uniform, softcap, grad,
                                       target_mask, out, ref=ref, terms=terms)
        from labelsmooth.ops import _fused_chunks

        return _fused_chunks.grad_rows(x, y, lse, coef_p, ct, cs, s, s_uniform, softcap, grad,
                                       target_mask, out, chunk_elems=_fused_chunks.CHUNK_ELEMS,
                                       ref=ref)
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    kw = {}
    if terms is not None:
        gamma, flsd = _gamma_args(terms.gamma)
        # the target column's D (TermCoefs.cpd); target_grad's own default without it
        cpd = terms.cpd if terms.cpd is not None else coef_p - ct
        kw = dict(cps=terms.cps, cpx=terms.cpx, cpd=cpd,
                  gamma=None if terms.gamma is None or flsd else gamma, flsd=flsd,
                  low=terms.low if flsd else None)
    _block_grad_out(x, y, lse, coef_p, ct, cs, s, float(s_uniform),
                    None if softcap is None else float(softcap), grad, target_mask,
                    torch.zeros_like(lse) if ref is None else ref, out, **kw)
    return out
