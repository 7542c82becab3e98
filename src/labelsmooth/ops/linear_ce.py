r"""Chunked fused linear + label-smoothed cross-entropy: the (tokens × vocabulary) logits never exist.

For hidden states :math:`h` (N, H), a projection :math:`W` (V, H) and an optional bias :math:`b`,
the loss of :func:`labelsmooth.cross_entropy` on the logits :math:`x = hW^\top + b` is computed
token chunk by token chunk (and, when one chunk of full rows would not fit the memory budget,
vocabulary block by vocabulary block), so at most one chunk of logits is alive at any time:

* statistics: ``x_c = h_c W^T + b`` then the per-row statistics (max, Σexp, target logit,
  :math:`\sum_c s_c x_c`) of each vocabulary block, by the ``row_partials`` of the implementation
  :func:`labelsmooth.ops.resolve` picks (the two-stage contract of :mod:`labelsmooth.ops`: the
  fused CPU engine, Triton on CUDA, or the reference), merged across blocks by
  :func:`~labelsmooth.ops._math.merge_partials`, give :math:`\mathrm{lse}` and the per-row loss
  (the per-row coefficients ``ct, cs, cz, s`` come from :func:`labelsmooth._plan.plan_index`, the
  reduction from :func:`labelsmooth._plan.finish_index`, so no formula is written twice);
* gradient: the implementation's ``grad_rows`` writes :math:`g_n\,\partial\ell_n/\partial x`
  over the logits chunk in place, then three matmuls accumulate :math:`\partial h_c = G W`,
  :math:`\partial W \mathrel{+}= G^\top h_c` (in float32, or float64 for float64 inputs) and
  :math:`\partial b \mathrel{+}= \sum_n G_n`.

One chunk-sized buffer of logits is allocated per call and reused by every chunk (the gradient
overwrites it), whatever the implementation. A masked vocabulary (``class_mask``) sets each
block's masked columns to −inf by selection before the engine sees them (exactly zero gradient
there); with a soft-cap as well, the engine gets the capped block in the accumulation dtype (one
more block-sized temporary), since the cap of −inf would be −c.

**Optional terms** (``confidence_penalty``, ``poly``, ``focal_gamma``): stage one also gives the
contract's ``sex``/``ses`` of each block (merged by the same
:func:`~labelsmooth.ops._math.merge_partials`), the row loss is
:func:`~labelsmooth.ops._terms.row_terms_loss` and the gradient the engine's generalised
``grad_rows`` with :func:`~labelsmooth.ops._terms.term_coefs`. Focal needs the lse before its
per-row sums, so the engine's ``focal_partials`` runs over the chunk once more after stage one:
on the logits still in the buffer when the vocabulary is not split, else on each block recomputed
(one more logits matmul per vocabulary block: 5 matmuls instead of 4, whether the gradient is
computed in forward or recomputed in backward, which reuses the saved focal coefficients).
Without smoothing shares it sums nothing and is skipped. The per-row coefficients are kept for a recomputing backward (O(N)). No term set: the
path is the one above, unchanged.

**When the gradient is computed.** With ``reduction="mean"`` or ``"sum"`` the upstream gradient is
a scalar, so the gradients are computed during the forward (3 matmuls in all) and the backward
only scales them by ``grad_output`` — in place, no sync, no extra memory. With
``reduction="none"`` the per-row upstream gradient must be folded in before the sum over tokens
inside :math:`G^\top h`, so the forward keeps only ``lse`` (one float per row) and the backward
recomputes each chunk of logits (4 matmuls in all); ``grad_in_forward=False`` selects that path
for every reduction. A second backward through the same graph (``retain_graph=True``) also takes
the recompute path, because the first one handed its buffers to autograd. Measured on the CPU
(2 cores shared with other jobs, 4096 tokens × H 1024 × V 32000, float32,
``benchmarks/bench_linear_cross_entropy.py``, medians of 3 in three runs): gradients in forward
9.4 / 20.2 / 24.4 s, recompute 12.4 / 29.8 / 32.3 s — the fourth matmul costs ×1.3–1.5 — at the
same peak memory (63 MiB, 13% of the logits).

**Memory budget.** ``memory_budget`` bytes bound the logits chunk: a chunk holds
``rows × cols`` logits of ``bytes_per_logit`` bytes (the input dtype's size for the fused and Triton
paths, whose gradient overwrites the chunk; 12 more for the reference's float32 temporaries).
``rows = budget // (V · bytes_per_logit)`` rounded down to a multiple of 8; if that is below
:data:`MIN_ROWS`, the chunk is :data:`MIN_ROWS` rows by as many vocabulary columns as fit (a
multiple of 128), at the price of recomputing each logits block once more (4 matmuls instead of 3).
Defaults: :data:`DEFAULT_MEMORY_BUDGET` (64 MiB, CPU) and :data:`DEFAULT_MEMORY_BUDGET_CUDA`
(128 MiB). ``chunk_size`` overrides the rows per chunk (then the vocabulary is split only if a
``memory_budget`` is also given). Beyond the chunk, the extra memory is the float32 accumulator of
the weight's gradient when the weight is not float32 (the gradient itself otherwise), one
``(rows, H)`` float32 accumulator when the vocabulary is split, O(N) per-row vectors and, for a
low-precision weight without a mixed-dtype GEMM (``torch.addmm(..., out_dtype=float32)``:
CUDA only, probed once per device and dtype, a warning where it is missing), float32 copies of the chunk's hidden
states and of one 16 MiB block of its logits gradient, multiplied straight into the accumulator. The float32
accumulator is what keeps a long sum of chunk products exact (half-precision accumulation drifts),
but for a bfloat16 weight it costs 4·V·H bytes next to the 2·V·H-byte gradient — at 8192 tokens ×
H 4096 × V 128256 that is as much as the full bfloat16 logits.

**Internal API** (shared with :mod:`labelsmooth.distributed`, whose vocabulary-parallel linear
loss reuses the same GEMMs and float32 accumulation): :func:`logits`, :class:`Grads`,
:func:`accumulate`, :func:`dw_block_cols`, :func:`check_chunking` and the default budgets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

from labelsmooth import _validation as V
from labelsmooth import ops
from labelsmooth._plan import IndexPlan, LossOptions, finish_index, reduction_scale
from labelsmooth.ops._terms import (
    FLSD,
    NO_TERMS,
    Terms,
    check_impl_supports,
    flsd_low,
    row_terms_loss,
    term_coefs,
)
from labelsmooth.ops._math import (
    acc_dtype,
    apply_softcap,
    grad_coef,
    merge_partials,
    row_loss,
    row_ref,
)

MiB = 1 << 20
#: Default bytes for one chunk of logits on the CPU and other non-CUDA devices.
DEFAULT_MEMORY_BUDGET = 64 * MiB
#: Default bytes for one chunk of logits on CUDA.
DEFAULT_MEMORY_BUDGET_CUDA = 128 * MiB
#: Fewest rows per chunk before the vocabulary is split instead (small matmuls are inefficient).
MIN_ROWS = 64


@dataclass(frozen=True)
class ChunkPlan:
    """How the (N, V) logits are walked: ``rows`` tokens × ``cols`` vocabulary entries at a time."""

    rows: int
    cols: int
    bytes_per_logit: int

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one chunk of logits."""
        return self.rows * self.cols * self.bytes_per_logit


def plan_chunks(
    n: int,
    vocab: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    *,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    engine: str = "fused",
) -> ChunkPlan:
    """Choose the chunk shape from the memory budget (see the module docstring).

    Examples:
        >>> plan_chunks(4096, 32000, torch.float32)   # 64 MiB / (32000 · 4 B) = 524 → 520 rows
        ChunkPlan(rows=520, cols=32000, bytes_per_logit=4)
        >>> plan_chunks(100, 32000, torch.float32, chunk_size=48)
        ChunkPlan(rows=48, cols=32000, bytes_per_logit=4)
        >>> plan_chunks(4096, 1_000_000, torch.float32, memory_budget=64 * MiB)  # split the vocabulary
        ChunkPlan(rows=64, cols=262144, bytes_per_logit=4)
    """
    device = torch.device(device)
    bpl = torch.empty((), dtype=dtype).element_size() + (12 if engine == "reference" else 0)
    vocab = max(int(vocab), 1)
    n = max(int(n), 1)
    if chunk_size is not None:
        rows = min(n, chunk_size)
        if memory_budget is None:
            return ChunkPlan(rows, vocab, bpl)
        cols = memory_budget // (rows * bpl)
        return ChunkPlan(rows, _round_cols(cols, vocab, engine), bpl)
    budget = memory_budget
    if budget is None:
        budget = DEFAULT_MEMORY_BUDGET_CUDA if device.type == "cuda" else DEFAULT_MEMORY_BUDGET
    rows = budget // (vocab * bpl)
    if rows >= min(n, MIN_ROWS):
        rows = max(1, min(n, rows))
        if rows < n and rows >= 8:
            rows -= rows % 8  # matmul-friendly
        return ChunkPlan(rows, vocab, bpl)
    rows = min(n, MIN_ROWS)
    return ChunkPlan(rows, _round_cols(budget // (rows * bpl), vocab, engine), bpl)


def _round_cols(cols: int, vocab: int, engine: str) -> int:
    if cols >= vocab:
        return vocab
    return max(1, cols - cols % 128 if cols >= 128 else cols)


# ----------------------------------------------------------------------------------------------
# The chunk loop
# ----------------------------------------------------------------------------------------------

@dataclass
class Grads:
    """Gradient destinations (None where not wanted), filled chunk by chunk."""

    dh: torch.Tensor | None
    dw: torch.Tensor | None  # float32 (float64) accumulator
    db: torch.Tensor | None  # float32 (float64) accumulator


def logits(hc: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``hc @ w.T + b`` (one fused GEMM); into ``out`` when given, else a fresh differentiable
    tensor (the vocabulary-parallel loss uses both)."""
    if b is None:
        return torch.mm(hc, w.t(), out=out) if out is not None else torch.mm(hc, w.t())
    return torch.addmm(b, hc, w.t(), out=out) if out is not None else torch.addmm(b, hc, w.t())


#: (device type, device index, input dtype) → whether ``torch.addmm(..., out_dtype=float32)``
#: runs there; filled once per key by :func:`mixed_addmm_supported`.
_MIXED_ADDMM: dict[tuple[str, int | None, torch.dtype], bool] = {}


def _probe_mixed_addmm(device: torch.device, dtype: torch.dtype) -> bool:
    """Run one 1×1 mixed-dtype ``addmm`` on ``device``: True when the kernel exists.

    Out-of-memory errors propagate (they say nothing about the kernel); a missing kernel
    (``NotImplementedError``, or a ``RuntimeError``/``TypeError`` from an older torch without the
    ``out_dtype`` argument) returns False, with a warning on CUDA, where the kernel is expected
    (torch >= 2.8) and its absence costs speed.
    """
    try:
        a = torch.ones(1, 1, dtype=dtype, device=device)
        acc = torch.zeros(1, 1, dtype=torch.float32, device=device)
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, TypeError, NotImplementedError) as err:
        if device.type == "cuda":
            first = str(err).splitlines()[0] if str(err) else ""
            warnings.warn(
                f"torch.addmm(..., out_dtype=torch.float32) is not available for {dtype} on "
                f"{device} (torch {torch.__version__}: {type(err).__name__}: {first}); "
                "linear_cross_entropy accumulates the weight gradient through blocked float32 "
                "products instead (same sums, slower, one more 16 MiB temporary).",
                RuntimeWarning, stacklevel=2)
        return False
    return True


def mixed_addmm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the weight gradient can use one mixed-dtype GEMM (``dtype`` in, float32 out).

    Probed once per (device, dtype) with a 1×1 problem (:func:`_probe_mixed_addmm`), never on a
    real call, so a real call's errors (out of memory included) always propagate.

    Examples:
        >>> mixed_addmm_supported(torch.device("cpu"), torch.bfloat16)  # no CPU kernel in torch
        False
    """
    key = (device.type, device.index, dtype)
    ok = _MIXED_ADDMM.get(key)
    if ok is None:
        ok = _MIXED_ADDMM[key] = _probe_mixed_addmm(device, dtype)
    return ok


def dw_block_cols(rows: int) -> int:
    """Vocabulary columns per float32 block of a low-precision logits gradient (16 MiB)."""
    return max(1, (DEFAULT_MEMORY_BUDGET // 4) // (max(1, rows) * 4))


def accumulate(g: torch.Tensor, hc: torch.Tensor, w: torch.Tensor, grads: Grads,
                rsl: slice, csl: slice, dh_acc: torch.Tensor | None, dw_cols: int) -> None:
    """dh[rows] (+)= g W[cols];  dW[cols] += gᵀ h_c;  db[cols] += Σ_n g  (g in the logits dtype)."""
    if grads.dh is not None:
        if dh_acc is None:
            torch.mm(g, w[csl], out=grads.dh[rsl])
        else:
            dh_acc += torch.mm(g, w[csl])
    if grads.dw is not None:
        dw = grads.dw[csl]
        if g.dtype == dw.dtype:
            dw.addmm_(g.t(), hc)
        elif dw.dtype == torch.float32 and mixed_addmm_supported(g.device, g.dtype):
            # One GEMM with float32 output accumulated in place (torch >= 2.8 on CUDA); whether
            # the kernel exists was probed once, so this call's errors (OOM) propagate.
            torch.addmm(dw, g.t(), hc, out_dtype=dw.dtype, out=dw)
        else:
            # Low precision without a mixed-dtype GEMM: multiply in float32, one block of
            # vocabulary rows at a time (bounded temporaries), straight into the accumulator, so
            # no chunk product is rounded to half precision before it is summed (that drifts).
            hc32 = hc.to(dw.dtype)
            for c0 in range(0, g.shape[1], dw_cols):
                c1 = min(g.shape[1], c0 + dw_cols)
                dw[c0:c1].addmm_(g[:, c0:c1].t().to(dw.dtype), hc32)
    if grads.db is not None:
        grads.db[csl] += g.sum(0, dtype=grads.db.dtype)


def run_chunks(
    engine: ModuleType,
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    plan: IndexPlan,
    opts: LossOptions,
    chunks: ChunkPlan,
    *,
    row_scale: torch.Tensor | None = None,
    grads: Grads | None = None,
    lse_known: tuple | None = None,
    terms: Terms = NO_TERMS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list | None]:
    """Walk the logits chunk by chunk; return the per-row ``(loss, ref, lse_rel, coefs)``.

    ``engine`` is an implementation module of :mod:`labelsmooth.ops` used through its two-stage
    contract (``row_partials``, ``grad_rows``): statistics of each vocabulary block, merged with
    :func:`~labelsmooth.ops._math.merge_partials`, then each block's gradient written over the
    block's own logits. All three results in the accumulation dtype;
    :math:`\\mathrm{lse} = \\mathrm{ref} + \\mathrm{lse\\_rel}` with ``ref`` the row max
    (:func:`~labelsmooth.ops._math.row_ref`), kept apart so that float32 keeps its digits at large
    logits.

    With active ``terms`` stage one also gives ``sex``/``ses``; focal adds stage 1b (the
    engine's ``focal_partials`` over every block once the lse is known: the chunk's logits are
    still in the buffer when the vocabulary is not split, else each block is recomputed, one
    more matmul per block; skipped without smoothing shares, where it sums nothing); the row
    loss and the generalised stage two's coefficients come from
    :func:`~labelsmooth.ops._terms.row_terms_loss` and :func:`~labelsmooth.ops._terms.term_coefs`.
    ``coefs`` is then the per-row-chunk list of ``(cp, TermCoefs)`` (None without terms), which a
    recomputing backward passes back in ``lse_known`` as ``(ref, lse_rel, coefs)``.

    With ``grads`` given, also write :math:`\\mathrm{row\\_scale}_n\\,\\partial\\ell_n/\\partial x`
    through the three matmuls into ``grads``. With ``lse_known`` (a recomputing backward) the
    statistics pass is skipped and the returned loss is meaningless; it is the ``(ref, lse_rel)``
    pair (``(ref, lse_rel, coefs)`` with terms) a forward returned.
    """
    n, _ = h.shape
    vocab = w.shape[0]
    acc = acc_dtype(h.dtype)
    loss = torch.zeros(n, dtype=acc, device=h.device)
    saved = [] if terms.active and lse_known is None else None
    if lse_known is None:
        ref = torch.zeros(n, dtype=acc, device=h.device)
        lse = torch.empty(n, dtype=acc, device=h.device)
    else:
        ref, lse = lse_known[0], lse_known[1]
        saved = lse_known[2] if terms.active else None
    if n == 0:
        return loss, ref, lse, saved
    big_s = plan.s.sum() if plan.s is not None else plan.s_uniform * vocab
    smoothing = plan.s is not None or plan.s_uniform != 0.0
    rows, cols = chunks.rows, chunks.cols
    buf = torch.empty(rows * cols, dtype=h.dtype, device=h.device)  # the one chunk of logits
    cmask = opts.class_mask
    if cmask is not None:
        cmask = cmask.to(device=h.device)
    # a soft-capped masked vocabulary hands the engine capped logits: no cap left to apply
    cap = None if cmask is not None and opts.softcap is not None else opts.softcap
    split = cols < vocab
    blocks = [(c0, min(vocab, c0 + cols)) for c0 in range(0, vocab, cols)]
    dw_cols = dw_block_cols(rows)
    # stage one's extra statistics, and stage 1b (focal) only where it sums something
    tkw = {"terms": terms} if terms.active else {}
    focal_stage = terms.active and terms.focal and smoothing
    for i, r0 in enumerate(range(0, n, rows)):
        r1 = min(n, r0 + rows)
        rsl = slice(r0, r1)
        hc = h[rsl]
        y, ct, cs = plan.y[rsl], plan.ct[rsl], plan.cs[rsl]
        cz = plan.cz[rsl] if plan.cz is not None else None

        def block(c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor | None, torch.Tensor | None]:
            """(engine logits, logits buffer, target column, shares, target mask) of block [c0, c1).

            With a class mask, masked columns become −inf by selection before the engine sees
            them; with a soft-cap too, the engine gets the capped logits in the accumulation
            dtype (the cap of −inf is −c, not −inf) and the chain rule is applied here.
            """
            x = logits(hc, w[c0:c1], b[c0:c1] if b is not None else None,
                       buf[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0))
            xe = x
            if cmask is not None:
                off = ~cmask[c0:c1]
                if opts.softcap is not None:
                    xe = apply_softcap(x.to(acc), opts.softcap)  # a new tensor
                xe.masked_fill_(off[None, :], -torch.inf)
            s_blk = plan.s[c0:c1] if plan.s is not None else None
            if not split:
                return xe, x, y, s_blk, None
            return xe, x, y - c0, s_blk, (y >= c0) & (y < c1)

        coefs = None
        if lse_known is None:
            stats = None
            for c0, c1 in blocks:
                blk = block(c0, c1)
                xe, _, yb, s_blk, mask = blk
                part = engine.row_partials(xe, yb, s_blk, plan.s_uniform, cap, mask, **tkw)
                # the block's share sum: its Σ s_c (ref − x_c) moves with the reference
                s_b = s_blk.sum() if s_blk is not None else plan.s_uniform * (c1 - c0)
                if stats is None:
                    stats, s_seen = part, s_b
                else:
                    stats, s_seen = merge_partials(stats, s_seen, part, s_b), s_seen + s_b
            m, se, xy, sx = stats[:4]
            ref_c = row_ref(m.to(acc))
            lse_c = torch.log(se).to(acc)  # se is float64 (the contract)
            if terms.active:
                loss[rsl], coefs = _term_rows(engine, block, blocks, blk, split, stats, ref_c,
                                              lse_c, big_s, plan, rsl, ct, cs, cz, terms,
                                              smoothing, focal_stage, cap)
                saved.append(coefs)
            else:
                loss[rsl] = row_loss(ref_c, lse_c, xy.to(acc), sx.to(acc) if smoothing else None,
                                     big_s, ct, cs, cz)
            ref[rsl], lse[rsl] = ref_c, lse_c
            keep = not split  # the single block's logits are still in the buffer
        else:
            ref_c, lse_c, keep = ref[rsl], lse[rsl], False
            if terms.active:
                coefs = saved[i]
        if grads is None:
            continue
        if coefs is None:
            coef_p, gkw = grad_coef(ref_c + lse_c, big_s, ct, cs if smoothing else None, cz), {}
        else:
            coef_p, gkw = coefs[0], {"terms": coefs[1]}
        dh_acc = torch.zeros(r1 - r0, h.shape[1], dtype=acc, device=h.device) \
            if split and grads.dh is not None else None
        for c0, c1 in blocks:
            # one block: its logits are still in the buffer (and the engine's view of them)
            xe, x, yb, s_blk, mask = blk if keep else block(c0, c1)
            g = engine.grad_rows(xe, yb, lse_c, coef_p, ct, cs, s_blk, plan.s_uniform, cap,
                                 row_scale[rsl], mask, out=xe, ref=ref_c, **gkw)
            if g is not x:  # soft-capped masked block: d/dx of c·tanh(x/c), masked columns 0
                t = torch.tanh(x.to(acc) / opts.softcap)
                g = torch.where(cmask[c0:c1], g * (1 - t * t), 0.0)
                g = x.copy_(g)
            accumulate(g, hc, w, grads, rsl, slice(c0, c1), dh_acc, dw_cols)
        if dh_acc is not None:
            grads.dh[rsl] = dh_acc
    return loss, ref, lse, saved


def _term_rows(engine, block, blocks, blk, split, stats, ref_c, lse_c, big_s, plan, rsl, ct, cs,
               cz, terms, smoothing, focal_stage, cap):
    """(row loss, (cp, TermCoefs)) of one row chunk with the optional terms, from its merged
    stage-one statistics (and stage 1b, focal, run here over the chunk's blocks)."""
    acc = lse_c.dtype
    _, se, xy, sx, sex, ses = stats
    xy = xy.to(acc)
    cs_t = cs if smoothing else None
    low = None
    if terms.focal_gamma == FLSD:  # γ per row from the target's probability (a constant)
        low = flsd_low(torch.exp((xy - ref_c) - lse_c))
    focal = None
    if focal_stage:
        fs = fa = None
        for c0, c1 in blocks:
            xe, _, _, s_blk, _ = blk if not split else block(c0, c1)  # split: one more matmul
            f0, f1 = engine.focal_partials(xe, lse_c, terms.focal_gamma, s_blk, plan.s_uniform,
                                           cap, ref=ref_c, low=low)
            fs, fa = (f0, f1) if fs is None else (fs + f0, fa + f1)
        focal = (fs.to(acc), fa.to(acc))
    kw = dict(w=plan.w_y[rsl], sex=sex.to(acc), ses=ses.to(acc), sumexp=se, focal=focal, low=low)
    loss = row_terms_loss(ref_c, lse_c, xy, sx.to(acc) if smoothing else None, big_s, ct, cs_t, cz,
                          terms, **kw)
    cp, coefs = term_coefs(ref_c, lse_c, xy, big_s, ct, cs_t, cz, terms,
                           shares_vector=plan.s is not None, s_uniform=plan.s_uniform, **kw)
    return loss, (cp, coefs)


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------

def _reduced(loss_rows, lse, plan, opts, out_shape, out_dtype):
    return finish_index(loss_rows, lse, None, plan, opts, out_shape, out_dtype, False).loss


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, engine, plan, opts, chunks, out_shape, out_dtype, grad_in_forward,
                terms):
        needs = ctx.needs_input_grad[:3]
        acc = acc_dtype(h.dtype)
        ctx.engine, ctx.plan, ctx.opts, ctx.chunks, ctx.terms = engine, plan, opts, chunks, terms
        ctx.out_shape, ctx.acc = out_shape, acc
        ctx.grads = None
        if grad_in_forward and opts.reduction != "none":
            scale = reduction_scale(plan, opts)
            grads = Grads(
                torch.empty_like(h) if needs[0] else None,
                torch.zeros(w.shape, dtype=acc, device=w.device) if needs[1] else None,
                torch.zeros(w.shape[0], dtype=acc, device=w.device) if needs[2] else None,
            )
            loss_rows, ref, lse, coefs = run_chunks(engine, h, w, b, plan, opts, chunks,
                                                    row_scale=scale, grads=grads, terms=terms)
            ctx.grads = grads
        else:
            loss_rows, ref, lse, coefs = run_chunks(engine, h, w, b, plan, opts, chunks,
                                                    terms=terms)
        ctx.coefs = coefs  # the terms' per-row coefficients, for a recomputing backward
        ctx.save_for_backward(h, w, b, ref, lse)
        return _reduced(loss_rows, ref + lse, plan, opts, out_shape, out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        h, w, b, ref, lse = ctx.saved_tensors
        grads, ctx.grads = ctx.grads, None  # hand the buffers to autograd exactly once
        if grads is None:
            # Recompute: the upstream gradient (per row for "none") is folded in before GᵀH.
            needs = ctx.needs_input_grad[:3]
            if ctx.opts.reduction == "none":
                scale = grad_out.reshape(-1).to(ctx.acc) * ctx.plan.valid
            else:
                scale = reduction_scale(ctx.plan, ctx.opts)
                scale = scale * grad_out.to(ctx.acc)
            grads = Grads(
                torch.empty_like(h) if needs[0] else None,
                torch.zeros(w.shape, dtype=ctx.acc, device=w.device) if needs[1] else None,
                torch.zeros(w.shape[0], dtype=ctx.acc, device=w.device) if needs[2] else None,
            )
            known = (ref, lse, ctx.coefs)
            run_chunks(ctx.engine, h, w, b, ctx.plan, ctx.opts, ctx.chunks, row_scale=scale,
                       grads=grads, lse_known=known, terms=ctx.terms)
        else:
            # Gradients were computed in forward for a unit upstream gradient: scale in place.
            g = grad_out.reshape(())
            for t in (grads.dh, grads.dw, grads.db):
                if t is not None:
                    t.mul_(g.to(t.dtype))
        dh = grads.dh
        dw = grads.dw.to(w.dtype) if grads.dw is not None else None
        db = grads.db.to(b.dtype) if grads.db is not None else None
        return dh, dw, db, None, None, None, None, None, None, None, None


def linear_index_loss(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    plan: IndexPlan,
    opts: LossOptions,
    out_shape: tuple[int, ...],
    *,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    grad_in_forward: bool = True,
    terms: Terms = NO_TERMS,
) -> torch.Tensor:
    """The reduced loss of ``cross_entropy(h @ w.T + b, …)`` for a validated plan (2-D ``h``).

    Differentiable with respect to ``h``, ``w`` and ``b``; see the module docstring for the
    chunking, for ``grad_in_forward`` and for the optional ``terms``.
    """
    engine = block_engine(opts.impl, h.device, terms)
    name = engine.__name__.rsplit(".", 1)[-1]
    chunks = plan_chunks(h.shape[0], w.shape[0], h.dtype, h.device, chunk_size=chunk_size,
                         memory_budget=memory_budget, engine=name)
    tensors = [t for t in (h, w, b) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _LinearCrossEntropy.apply(h, w, b, engine, plan, opts, chunks, out_shape, h.dtype,
                                         grad_in_forward, terms)
    loss_rows, ref, lse, _ = run_chunks(engine, h.detach(), w.detach(),
                                        b.detach() if b is not None else None, plan, opts, chunks,
                                        terms=terms)
    return _reduced(loss_rows, ref + lse, plan, opts, out_shape, h.dtype)


def block_engine(impl: str, device: torch.device, terms: Terms = NO_TERMS) -> ModuleType:
    """The implementation serving a composition of the two-stage contract (the fused linear and
    vocabulary-parallel losses), by the one dispatcher :func:`labelsmooth.ops.resolve`.

    With a term set (``confidence_penalty``, ``poly``, ``focal_gamma``) the capability asked for is
    :data:`labelsmooth.ops.BLOCK_TERMS` (the contract with ``focal_partials`` and the terms'
    statistics), and an explicit ``impl`` without the terms raises the ValueError of
    :func:`~labelsmooth.ops._terms.check_impl_supports` (the one rule of every entry point).

    Examples:
        >>> from labelsmooth.ops._terms import check_terms
        >>> block_engine("auto", torch.device("cpu"), check_terms(poly=1.0)).__name__
        'labelsmooth.ops.fused'
    """
    if not terms.active:
        return ops.resolve(impl, device, ops.BLOCKS)
    check_impl_supports(impl, terms)
    return ops.resolve(impl, device, ops.BLOCK_TERMS)


def check_chunking(chunk_size: object, memory_budget: object) -> None:
    """``chunk_size`` and ``memory_budget`` are None or positive ints."""
    for arg, value in (("chunk_size", chunk_size), ("memory_budget", memory_budget)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise V.fail(arg, "None or a positive int", value, TypeError)
        if value < 1:
            raise V.fail(arg, "None or a positive int", value)
