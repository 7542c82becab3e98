r"""Triton kernels behind :mod:`labelsmooth.ops.triton_ce` (imported lazily: needs ``triton``).

One program per row of the (R, K) logits. Every kernel walks its row in ``BLOCK``-wide chunks,
loads the logits in their own dtype and does all arithmetic in float32.

* ``_index_fwd`` / ``_prob_fwd`` — the statistics pass, one read of the logits: online softmax
  (running row max ``m`` and per-lane running sums of :math:`e^{x-m}`, rescaled when the max
  grows, so each chunk costs one exponential per element and one cross-warp reduction), the
  target logit, and the smoothing sum :math:`\sum_c s_c (m - x_c)` relative to the running row
  max (terms ≥ 0, moved by :math:`S_\mathrm{seen}\,\Delta m` when the max grows), so the loss
  :math:`\sum_c s_c(\mathrm{lse}-x_c) = S\log d + \sum_c s_c(m-x_c)` carries no cancellation
  at any logit offset, a ``-inf`` logit gives ``+inf`` with a share and ``0`` without one
  (:math:`0\cdot\log 0 = 0`). Writes the per-row loss, ``lse``, the row max ``m`` and ``log d``
  (and, for probability targets, :math:`Q=\sum_c q_c`), nothing K-wide.
* Out-of-range targets (``y ≥ K`` or ``y < 0``; the callers map ``ignore_index`` to a valid
  placeholder, so only an unchecked bad target gets here) are never read: the target-logit load is
  clamped into the row, and that row's loss and gradient are NaN.
* ``_index_bwd`` / ``_prob_bwd`` — the gradient pass: re-reads the row, recomputes
  :math:`p = e^{(x - m) - \log d}` from the saved statistics, scales by the per-row upstream
  gradient and writes the gradient (into a fresh buffer, or over the logits themselves when in
  place: each element is read before it is written by the same lane). The target column's
  :math:`-ct` is folded in while still in float32, before rounding to the output dtype
  (Liger-Kernel #1268). Rows whose coefficients times the upstream gradient are all zero (ignored
  rows) read nothing and write zeros.

The loop bodies are written once, as ``@triton.jit`` helpers that Triton inlines (no call at run
time): ``_load_stats_chunk`` (soft-capped chunk, −inf padding), ``_online_max_step`` (running max
and rescaled Σexp), ``_share_dist_step`` (the share-weighted distance to the running max),
``_row_stats`` (the whole statistics loop of ``_index_fwd`` and ``_block_partials``), ``_grad_row``
(the gradient loop of ``_index_bwd`` and ``_block_grad``) and ``_prob_q`` (the probability
targets' mass).

Row offsets are int64 (``program_id`` cast before multiplying by the row stride), so tensors with
more than 2**31 elements index correctly. Variants are specialised by ``tl.constexpr`` flags:
``SMOOTH`` (0: no smoothing term, 1: uniform share, 2: a (K,) share vector), ``HAS_Z`` (z-loss),
``SOFTCAP``, and for probability targets ``HAS_W``/``HAS_B``/``NEED_DT``.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - only so that `pytest --doctest-modules` can import it
    # Without triton nothing here may run (triton_ce.is_available is False); the decorator
    # below just leaves the Python functions undecorated so the module imports.
    class _Missing:
        @staticmethod
        def jit(fn):
            return fn

    triton, tl = _Missing(), None


@triton.jit
def _tanh(u):
    # tanh from exp (no libdevice, so the same code runs under TRITON_INTERPRET=1): the closed
    # form loses relative precision near 0, where a short odd Taylor series is exact to fp32.
    a = tl.abs(u)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    u2 = a * a
    small = a * (1.0 + u2 * (-0.3333333333333333 + u2 * (0.13333333333333333
                 + u2 * (-0.05396825396825397 + u2 * 0.021869488536155203))))
    r = tl.where(a < 0.125, small, big)
    return tl.where(u < 0.0, -r, r)


# -------------------------------------------------------------------------------------------------
# Shared loop bodies: each formula once, inlined by Triton into every kernel that uses it.
# -------------------------------------------------------------------------------------------------

@triton.jit
def _load_stats_chunk(x_row, stride_xc, cols, mask, softcap, SOFTCAP: tl.constexpr):
    # A chunk of logits for the statistics pass: float32, soft-capped on the real lanes, −inf
    # padding (so the padding adds e^{-inf} = 0 to every sum).
    xb = tl.load(x_row + cols.to(tl.int64) * stride_xc, mask=mask,
                 other=float("-inf")).to(tl.float32)
    if SOFTCAP:  # cap the real lanes only; the padding stays -inf
        xb = tl.where(mask, softcap * _tanh(tl.where(mask, xb, 0.0) / softcap), float("-inf"))
    return xb


@triton.jit
def _online_max_step(m, d_vec, xb):
    # One step of the online softmax: the new running max, and the per-lane Σ e^{x − max}
    # rescaled to it. Shift by 0 while all logits so far are -inf (a masked vocabulary slice), so
    # no exp(-inf - -inf); one cross-warp reduction (the max) per chunk, the sum at the end.
    m_new = tl.maximum(m, tl.max(xb, 0))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    d_vec = d_vec * tl.exp(m - shift) + tl.exp(xb - shift)
    return m_new, d_vec


@triton.jit
def _share_dist_step(acc, s_lane, m, m_new, xb, sv):
    # Per-lane Σ s_c (m − x_c) relative to the running max: every term ≥ 0 (no cancellation
    # whatever the logits' offset), earlier terms moved to a new max by s_seen·(m_new − m).
    # A -inf logit contributes +inf with a share, 0 without one (0·log 0 = 0), so no
    # (-inf) − (-inf) NaN from a -inf target or a masked column.
    acc += s_lane * tl.where(m == float("-inf"), 0.0, m_new - m)
    dist = tl.where(xb == float("-inf"), float("inf"), m_new - xb)
    acc += tl.where(sv != 0.0, sv * dist, 0.0)
    return acc, s_lane + sv


@triton.jit
def _shares(s_ptr, cols, mask, s_uniform, SMOOTH: tl.constexpr):
    # The smoothing shares of a chunk: the uniform share, or the (K,) vector (0 on padding).
    if SMOOTH == 1:
        sv = tl.where(mask, s_uniform, 0.0)
    else:
        sv = tl.load(s_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return sv


@triton.jit
def _row_stats(x_row, stride_xc, K, s_ptr, s_uniform, softcap,
               SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    # One read of a row: (m, Σ e^{x' − m}, Σ s_c (m − x'_c)), m the row max (the sums taken
    # relative to 0 while the row is all −inf). The statistics of _index_fwd and _block_partials.
    m = float("-inf")
    d_vec = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ e^{x - m}, reduced once at the end
    acc = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ s_c (m - x_c) ≥ 0
    s_lane = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ s_c of the columns seen so far
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = _load_stats_chunk(x_row, stride_xc, cols, mask, softcap, SOFTCAP)
        m_new, d_vec = _online_max_step(m, d_vec, xb)
        if SMOOTH != 0:
            sv = _shares(s_ptr, cols, mask, s_uniform, SMOOTH)
            acc, s_lane = _share_dist_step(acc, s_lane, m, m_new, xb, sv)
        m = m_new
    return m, tl.sum(d_vec, 0), tl.sum(acc, 0)


@triton.jit
def _grad_row(x_row, stride_xc, dx_row, stride_dc, K, y, ref, L, gcp, gct, gcs,
              s_ptr, s_uniform, softcap, active, bad,
              SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK: tl.constexpr):
    # dx_j = (gcp·p_j − gct·[j = y] − gcs·s_j)·softcap'(x_j), p_j = e^{(x'_j − ref) − L}: as
    # precise as the per-row statistics allow (no rounded lse in between), so p_y − 1 keeps its
    # digits for confident rows; the target's −gct is subtracted in fp32, before rounding to the
    # output dtype (Liger-Kernel #1268). An inactive row (no coefficient: an ignored target) loads
    # nothing (a zero-length load bound) and writes exactly 0; a `bad` row (out-of-range target)
    # writes NaN. Each element is read before the same lane writes it, so dx may be x (in place).
    k_load = tl.where(active, K, 0)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = tl.load(x_row + cols.to(tl.int64) * stride_xc, mask=cols < k_load,
                     other=0.0).to(tl.float32)
        if SOFTCAP:
            th = _tanh(xb / softcap)
            xb = softcap * th
        grad = gcp * tl.exp((xb - ref) - L)
        grad -= tl.where(cols == y, gct, 0.0)
        if SMOOTH != 0:
            grad -= gcs * _shares(s_ptr, cols, mask, s_uniform, SMOOTH)
        if SOFTCAP:
            grad *= 1.0 - th * th
        grad = tl.where(active, tl.where(bad, float("nan"), grad), 0.0)
        tl.store(dx_row + cols.to(tl.int64) * stride_dc, grad.to(dx_row.dtype.element_ty),
                 mask=mask)


@triton.jit
def _prob_q(t_row, stride_tc, w_ptr, b_ptr, cols, mask, a, b_uniform,
            HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    # q_c = w_c (a t_c + b_c) of a chunk (0 on padding), and the chunk's class weights (1 without).
    c64 = cols.to(tl.int64)
    tb = tl.load(t_row + c64 * stride_tc, mask=mask, other=0.0).to(tl.float32)
    if HAS_B:
        q = a * tb + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        q = a * tb + b_uniform
    if HAS_W:
        wb = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        q = q * wb
    else:
        wb = tl.where(mask, 1.0, 0.0)
    return tl.where(mask, q, 0.0), wb


# -------------------------------------------------------------------------------------------------
# Whole rows (index_rows / prob_rows)
# -------------------------------------------------------------------------------------------------

@triton.jit
def _index_fwd(
    x_ptr, stride_xr, stride_xc,
    y_ptr, ct_ptr, cs_ptr, cz_ptr, s_ptr, s_sum_ptr,
    loss_ptr, lse_ptr, m_ptr, logd_ptr,
    K, s_uniform, softcap,
    SMOOTH: tl.constexpr, HAS_Z: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    y = tl.load(y_ptr + row)
    # An out-of-range target (== K, or negative and not ignore_index: only reachable with the
    # value checks off, e.g. on CUDA by default) never reads outside its row: the load is
    # clamped to column 0 and the row's loss is NaN instead (the backward writes a NaN row).
    y_ok = (y >= 0) & (y < K)
    x_y = tl.load(x_row + tl.where(y_ok, y, 0).to(tl.int64) * stride_xc).to(tl.float32)
    if SOFTCAP:
        x_y = softcap * _tanh(x_y / softcap)
    m, d, sdist = _row_stats(x_row, stride_xc, K, s_ptr, s_uniform, softcap, SMOOTH, SOFTCAP,
                             BLOCK)
    logd = tl.log(d)
    lse = m + logd
    # lse − x_y as (m − x_y) + log d: exact for a confident row (x_y = m), where rounding lse
    # first would cost ulp(lse) of absolute error in a tiny NLL.
    nll = (m - x_y) + logd
    # A zero coefficient drops its term even when the term is not finite (an ignored row whose
    # placeholder target logit is -inf), so masked padding rows never turn the loss into NaN.
    ct = tl.load(ct_ptr + row)
    loss = tl.where(ct != 0.0, ct * nll, 0.0)
    if SMOOTH != 0:
        # Σ_c s_c (lse − x_c) = S·log d + Σ_c s_c (m − x_c)
        cs = tl.load(cs_ptr + row)
        if SMOOTH == 1:
            big_s = s_uniform * K
        else:
            big_s = tl.load(s_sum_ptr).to(tl.float32)
        loss += tl.where(cs != 0.0, cs * (big_s * logd + sdist), 0.0)
    if HAS_Z:
        cz = tl.load(cz_ptr + row)
        loss += tl.where(cz != 0.0, cz * lse * lse, 0.0)
    loss = tl.where(y_ok, loss, float("nan"))
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)
    tl.store(m_ptr + row, m)
    tl.store(logd_ptr + row, logd)


@triton.jit
def _index_bwd(
    x_ptr, stride_xr, stride_xc,
    dx_ptr, stride_dr, stride_dc,
    y_ptr, ct_ptr, cs_ptr, cz_ptr, s_ptr, s_sum_ptr, m_ptr, logd_ptr, g_ptr,
    K, s_uniform, softcap,
    SMOOTH: tl.constexpr, HAS_Z: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    g = tl.load(g_ptr + row)
    m = tl.load(m_ptr + row)
    logd = tl.load(logd_ptr + row)
    y = tl.load(y_ptr + row)
    y_ok = (y >= 0) & (y < K)  # out of range (value checks off): a NaN row, see _index_fwd
    gct = g * tl.load(ct_ptr + row)
    gcs = g * tl.load(cs_ptr + row)
    coef = gct  # the factor of p_j: g·(ct + cs·S + 2·cz·lse)
    active = gct != 0.0
    if SMOOTH == 1:
        coef += gcs * s_uniform * K
        active = active | (gcs != 0.0)
    if SMOOTH == 2:
        coef += gcs * tl.load(s_sum_ptr).to(tl.float32)
        active = active | (gcs != 0.0)
    if HAS_Z:
        gz = g * tl.load(cz_ptr + row)
        coef += 2.0 * gz * (m + logd)
        active = active | (gz != 0.0)
    _grad_row(x_ptr + row * stride_xr, stride_xc, dx_ptr + row * stride_dr, stride_dc, K, y,
              m, logd, coef, gct, gcs, s_ptr, s_uniform, softcap, active, y_ok == 0,
              SMOOTH, SOFTCAP, BLOCK)


@triton.jit
def _prob_fwd(
    x_ptr, stride_xr, stride_xc,
    t_ptr, stride_tr, stride_tc,
    w_ptr, b_ptr, rs_ptr, cz_ptr,
    loss_ptr, lse_ptr, qsum_ptr, m_ptr, logd_ptr,
    K, a, b_uniform, softcap,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_Z: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    t_row = t_ptr + row * stride_tr
    m = float("-inf")
    d_vec = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ e^{x - m}, reduced once at the end
    acc_q = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ q_c of the columns seen so far
    acc_qx = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ q_c (m - x_c)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = _load_stats_chunk(x_row, stride_xc, cols, mask, softcap, SOFTCAP)
        m_new, d_vec = _online_max_step(m, d_vec, xb)
        q, _ = _prob_q(t_row, stride_tc, w_ptr, b_ptr, cols, mask, a, b_uniform, HAS_W, HAS_B)
        # Σ q_c (m − x_c) as the smoothing sum: no cancellation against Q·lse at any offset
        acc_qx, acc_q = _share_dist_step(acc_qx, acc_q, m, m_new, xb, q)
        m = m_new
    logd = tl.log(tl.sum(d_vec, 0))
    lse = m + logd
    qsum = tl.sum(acc_q, 0)
    loss = tl.load(rs_ptr + row) * (qsum * logd + tl.sum(acc_qx, 0))
    if HAS_Z:
        loss += tl.load(cz_ptr + row) * lse * lse
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)
    tl.store(qsum_ptr + row, qsum)
    tl.store(m_ptr + row, m)
    tl.store(logd_ptr + row, logd)


@triton.jit
def _prob_bwd(
    x_ptr, stride_xr, stride_xc,
    t_ptr, stride_tr, stride_tc,
    dx_ptr, stride_dr, stride_dc,
    dt_ptr, stride_er, stride_ec,
    w_ptr, b_ptr, rs_ptr, cz_ptr, m_ptr, logd_ptr, qsum_ptr, g_ptr,
    K, a, b_uniform, softcap,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_Z: tl.constexpr, SOFTCAP: tl.constexpr,
    NEED_DT: tl.constexpr, BLOCK: tl.constexpr,
):
    # dℓ/dx_j = g·[rs·(Q p_j − q_j) + 2 cz lse p_j]·softcap'(x_j);  dℓ/dt_j = g·rs·a·w_j·(lse − x_j)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    t_row = t_ptr + row * stride_tr
    dx_row = dx_ptr + row * stride_dr
    g = tl.load(g_ptr + row)
    m = tl.load(m_ptr + row)
    logd = tl.load(logd_ptr + row)
    lse = m + logd
    grs = g * tl.load(rs_ptr + row)
    coef = grs * tl.load(qsum_ptr + row)
    if HAS_Z:
        coef += 2.0 * g * tl.load(cz_ptr + row) * lse
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        c64 = cols.to(tl.int64)
        xb = tl.load(x_row + c64 * stride_xc, mask=mask, other=0.0).to(tl.float32)
        if SOFTCAP:
            th = _tanh(xb / softcap)
            xb = softcap * th
        q, wb = _prob_q(t_row, stride_tc, w_ptr, b_ptr, cols, mask, a, b_uniform, HAS_W, HAS_B)
        grad = coef * tl.exp((xb - m) - logd) - grs * q
        if SOFTCAP:
            grad *= 1.0 - th * th
        tl.store(dx_row + c64 * stride_dc, grad.to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_DT:
            dt = grs * a * (lse - xb)
            if HAS_W:
                dt = dt * wb
            tl.store(dt_ptr + row * stride_er + c64 * stride_ec, dt.to(dt_ptr.dtype.element_ty),
                     mask=mask)


# -------------------------------------------------------------------------------------------------
# The two-stage contract (see labelsmooth.ops): statistics of a block of columns, then the
# gradient of a block given the merged statistics. The caller (fused linear loss, vocabulary-
# parallel loss) merges the blocks' statistics (ops._math.merge_partials, or the all-reduces).
# -------------------------------------------------------------------------------------------------

@triton.jit
def _block_partials(
    x_ptr, stride_xr, stride_xc,
    y_ptr, on_ptr, s_ptr,
    m_ptr, d_ptr, xy_ptr, sx_ptr,
    K, s_uniform, softcap,
    SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    # Per row: m = max x', d = Σ e^{x' − r}, x'_y (0 where the target is not in this block) and
    # Σ s_c (r − x'_c), with r = the row max (0 for an all −inf row), as _index_fwd computes them.
    # d is summed in float32 (the caller widens it to float64): a confident row's d = 1 + δ keeps
    # δ only to fp32's step 1.2e-7, where the fused engine's float64 sum_exp keeps it exactly.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    y = tl.load(y_ptr + row)
    if HAS_MASK:
        on = tl.load(on_ptr + row) != 0
    else:
        on = y == y
    y_ok = (y >= 0) & (y < K)
    x_y = tl.load(x_row + tl.where(y_ok & on, y, 0).to(tl.int64) * stride_xc,
                  mask=K > 0, other=0.0).to(tl.float32)
    if SOFTCAP:
        x_y = softcap * _tanh(x_y / softcap)
    x_y = tl.where(on, tl.where(y_ok, x_y, float("nan")), 0.0)
    m, d, sdist = _row_stats(x_row, stride_xc, K, s_ptr, s_uniform, softcap, SMOOTH, SOFTCAP,
                             BLOCK)
    tl.store(m_ptr + row, m)
    tl.store(d_ptr + row, d)
    tl.store(xy_ptr + row, x_y)
    tl.store(sx_ptr + row, sdist)


@triton.jit
def _block_grad(
    x_ptr, stride_xr, stride_xc,
    dx_ptr, stride_dr, stride_dc,
    y_ptr, on_ptr, s_ptr, ref_ptr, lse_ptr, cp_ptr, ct_ptr, cs_ptr, g_ptr,
    K, s_uniform, softcap,
    SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    # dx_j = g·(cp·p_j − ct·[j = y] − cs·s_j)·softcap'(x_j), p_j = e^{(x'_j − r) − L} (_grad_row).
    row = tl.program_id(0).to(tl.int64)
    g = tl.load(g_ptr + row)
    y = tl.load(y_ptr + row)
    if HAS_MASK:
        on = tl.load(on_ptr + row) != 0
    else:
        on = y == y
    y_ok = (y >= 0) & (y < K)
    gcp = g * tl.load(cp_ptr + row)
    gct = tl.where(on, g * tl.load(ct_ptr + row), 0.0)
    gcs = g * tl.load(cs_ptr + row)
    active = (gcp != 0.0) | (gct != 0.0)
    if SMOOTH != 0:
        active = active | (gcs != 0.0)
    bad = on & (gct != 0.0) & (y_ok == 0)  # an out-of-range target (value checks off): NaN row
    _grad_row(x_ptr + row * stride_xr, stride_xc, dx_ptr + row * stride_dr, stride_dc, K, y,
              tl.load(ref_ptr + row), tl.load(lse_ptr + row), gcp, gct, gcs, s_ptr, s_uniform,
              softcap, active, bad, SMOOTH, SOFTCAP, BLOCK)
