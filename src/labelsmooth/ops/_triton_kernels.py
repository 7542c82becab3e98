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
def _online_max_step(m, xb):
    # One step of the online softmax: the new running max, the shift the chunk's exponentials
    # are taken against, the factor alpha moving earlier per-lane sums to it, and e = e^{x − shift}
    # (the caller updates Σexp as d·alpha + e). Shift by 0 while all logits so far are -inf (a
    # masked vocabulary slice), so no exp(-inf - -inf); one cross-warp reduction (the max) per
    # chunk, the sums at the end.
    m_new = tl.maximum(m, tl.max(xb, 0))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, shift, tl.exp(m - shift), tl.exp(xb - shift)


@triton.jit
def _sum_exp_step(d_vec, n_vec, m, m_new, alpha, xb, e, TIES: tl.constexpr):
    # The per-lane Σ e^{x − max} after a chunk: d·alpha + e. With TIES the terms at the running
    # max (e^0 = 1) are counted apart in n (the caller adds n + d in float64, so a confident
    # row's sum 1 + δ keeps its δ, which float32 rounds to a multiple of 1.2e-7 or loses); the
    # old ties become ordinary terms when the max grows (alpha = 1 otherwise).
    if TIES:
        grew = m_new != m
        d_vec = d_vec * alpha + tl.where(grew, n_vec * alpha, 0.0)
        n_vec = tl.where(grew, 0.0, n_vec)
        tie = (xb == m_new) & (xb != float("-inf"))
        n_vec += tl.where(tie, 1.0, 0.0)
        d_vec += tl.where(tie, 0.0, e)
    else:
        d_vec = d_vec * alpha + e
    return d_vec, n_vec


@triton.jit
def _sex_step(sex_vec, d_vec, m, shift, alpha, xb, e):
    # Per-lane Σ e^{x − shift}·(x − shift) (the confidence penalty's statistic), moved from the
    # old shift s0 to the new one: alpha·(sex + (s0 − shift)·d) (d the per-lane Σexp before this
    # chunk). A −inf logit adds 0, never 0·(−inf).
    s0 = tl.where(m == float("-inf"), 0.0, m)
    return alpha * (sex_vec + (s0 - shift) * d_vec) + tl.where(e > 0.0, e * (xb - shift), 0.0)


@triton.jit
def _expm1(v):
    # e^v − 1 from tanh (no libdevice under the interpreter): 2t/(1 − t), t = tanh(v/2), with
    # _tanh's relative precision near 0, where exp(v) − 1 cancels; −1 at v = −inf.
    t = _tanh(0.5 * v)
    return 2.0 * t / (1.0 - t)


@triton.jit
def _focal_pow(u, gamma, low, POW: tl.constexpr):
    # u^γ for u = 1 − p ∈ [0, 1] (ops._terms.focal_pow), POW = 0: any γ > 0 by exp/log (0 at
    # u ≤ 0); the integer γ (POW = n ≥ 1) and FLSD-53 (POW = −1) go through _focal_elems' u^(γ−1).
    return tl.where(u > 0.0, tl.exp(gamma * tl.log(tl.where(u > 0.0, u, 1.0))), 0.0)


@triton.jit
def _focal_elems(lp, gamma, low, POW: tl.constexpr):
    # (p, fg, a) of log-probabilities lp, as ops._terms.focal_elems: u = −expm1(lp) = 1 − p,
    # fg = u^γ·(−lp), a = d(fg)/d log p = γ p log p (1 − p)^(γ−1) − (1 − p)^γ. Integer γ
    # (POW = n ≥ 1) and FLSD-53 (POW = −1: γ = 5 where `low`, else 3) by multiplication,
    # a = u^(γ−1)·(γ·p·lp − u), no division; other γ (POW = 0) a = u^γ·(γ·p·lp/u − 1)
    # (lp/u → −1 as p → 1). p·lp → 0 as p → 0: a −inf logit gives p = 0, a = −1, fg = inf.
    p = tl.exp(lp)
    u = -_expm1(lp)
    pl = tl.where(p > 0.0, p * lp, 0.0)
    if POW == 0:
        ug = _focal_pow(u, gamma, low, POW)
        ratio = tl.where(u > 0.0, lp / tl.where(u > 0.0, u, 1.0), -1.0)
        pt = tl.where(p > 0.0, p * ratio, 0.0)
        fg = ug * (-lp)
        a = ug * (gamma * pt - 1.0)
    else:
        if POW == -1:
            u2 = u * u
            um1 = tl.where(low, u2 * u2, u2)
            gv = tl.where(low, 5.0, 3.0)
        else:
            if POW == 1:
                um1 = 1.0
            else:
                um1 = u
                for _ in tl.static_range(POW - 2):
                    um1 = um1 * u
            gv = gamma
        fg = um1 * u * (-lp)
        a = um1 * (gv * pl - u)
    return p, fg, a


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
               SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, SEX: tl.constexpr,
               SES: tl.constexpr, TIES: tl.constexpr, BLOCK: tl.constexpr):
    # One read of a row: (m, d, n, Σ s_c (m − x'_c), sex, ses), m the row max (the sums taken
    # relative to 0 while the row is all −inf); Σ e^{x' − m} = d + n. With TIES the terms at the
    # max are counted apart in n (_sum_exp_step: the optional terms need a confident row's
    # 1 − p_y); without, n = 0 and d holds everything. With SEX
    # also sex = Σ e^{x' − m}(x' − m) and with SES (share vector only) ses = Σ s_c e^{x' − m},
    # else 0. The statistics of _index_fwd and _block_partials.
    m = float("-inf")
    d_vec = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ e^{x - m}, reduced once at the end
    n_vec = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane count of x = m (TIES)
    acc = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ s_c (m - x_c) ≥ 0
    s_lane = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ s_c of the columns seen so far
    sex_vec = tl.zeros([BLOCK], dtype=tl.float32)
    ses_vec = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = _load_stats_chunk(x_row, stride_xc, cols, mask, softcap, SOFTCAP)
        m_new, shift, alpha, e = _online_max_step(m, xb)
        if SEX:
            sex_vec = _sex_step(sex_vec, d_vec + n_vec, m, shift, alpha, xb, e)
        d_vec, n_vec = _sum_exp_step(d_vec, n_vec, m, m_new, alpha, xb, e, TIES)
        if SMOOTH != 0:
            sv = _shares(s_ptr, cols, mask, s_uniform, SMOOTH)
            acc, s_lane = _share_dist_step(acc, s_lane, m, m_new, xb, sv)
            if SES:
                ses_vec = ses_vec * alpha + sv * e
        m = m_new
    return (m, tl.sum(d_vec, 0), tl.sum(n_vec, 0), tl.sum(acc, 0), tl.sum(sex_vec, 0),
            tl.sum(ses_vec, 0))


@triton.jit
def _grad_row(x_row, stride_xc, dx_row, stride_dc, K, y, ref, L, gcp, gct, gcs,
              s_ptr, s_uniform, softcap, active, bad, gcps, gcpx, gy, gamma, low,
              SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, TERMS: tl.constexpr,
              HAS_CPS: tl.constexpr, HAS_CPX: tl.constexpr, POW: tl.constexpr,
              FOCAL: tl.constexpr, BLOCK: tl.constexpr):
    # dx_j = (gcp·p_j − gct·[j = y] − gcs·s_j)·softcap'(x_j), p_j = e^{(x'_j − ref) − L}: as
    # precise as the per-row statistics allow (no rounded lse in between), so p_y − 1 keeps its
    # digits for confident rows; the target's −gct is subtracted in fp32, before rounding to the
    # output dtype (Liger-Kernel #1268). With TERMS the generalised stage two of ops._terms
    # (grad_elems): (gcp + gcps·s_j + gcpx·z_j)·p_j − gcs·s_j·h_j, z = x' − ref, h = 1, or −a_j
    # with FOCAL, and the target column's value gy (ops._terms.target_grad, computed per row by
    # the caller). An inactive row (no coefficient: an ignored target) loads nothing (a zero-length
    # load bound) and writes exactly 0; a `bad` row (out-of-range target) writes NaN. Each element
    # is read before the same lane writes it, so dx may be x (in place).
    k_load = tl.where(active, K, 0)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = tl.load(x_row + cols.to(tl.int64) * stride_xc, mask=cols < k_load,
                     other=0.0).to(tl.float32)
        if SOFTCAP:
            th = _tanh(xb / softcap)
            xb = softcap * th
        if SMOOTH == 1:
            sv = s_uniform  # a scalar: the padding lanes are never stored
        elif SMOOTH == 2:
            sv = tl.load(s_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if TERMS:
            z = xb - ref
            if FOCAL:
                p, _, a = _focal_elems(z - L, gamma, low, POW)
            else:
                p = tl.exp(z - L)
            k = gcp
            if HAS_CPS:
                k = k + gcps * sv
            grad = k * p
            if HAS_CPX:
                grad += gcpx * tl.where(p > 0.0, z * p, 0.0)
            if SMOOTH != 0:
                if FOCAL:
                    grad += gcs * sv * a
                else:
                    grad -= gcs * sv
            grad = tl.where(cols == y, gy, grad)
        else:
            grad = gcp * tl.exp((xb - ref) - L)
            grad -= tl.where(cols == y, gct, 0.0)
            if SMOOTH != 0:
                grad -= gcs * sv
        if SOFTCAP:
            grad *= 1.0 - th * th
        grad = tl.where(active, tl.where(bad, float("nan"), grad), 0.0)
        tl.store(dx_row + cols.to(tl.int64) * stride_dc, grad.to(dx_row.dtype.element_ty),
                 mask=mask)


@triton.jit
def _prob_q(t_row, stride_tc, w_ptr, b_ptr, cols, mask, a, b_uniform,
            HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    # q_c = w_c (a t_c + b_c) of a chunk, the chunk's class weights (1 without) and its targets
    # t_c. On padding lanes q = b_uniform: the sums select it away (the gradient never stores it).
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
    return q, wb, tb


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
    m, d, _, sdist, _, _ = _row_stats(x_row, stride_xc, K, s_ptr, s_uniform, softcap, SMOOTH,
                                      SOFTCAP, False, False, False, BLOCK)
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
              0.0, 0.0, 0.0, 0.0, False,
              SMOOTH, SOFTCAP, False, False, False, 1, False, BLOCK)


@triton.jit
def _prob_fwd(
    x_ptr, stride_xr, stride_xc,
    t_ptr, stride_tr, stride_tc,
    w_ptr, b_ptr, rs_ptr, cz_ptr,
    loss_ptr, lse_ptr, qsum_ptr, m_ptr, logd_ptr,
    qx_ptr, sex_ptr, qe_ptr, te_ptr, dn_ptr,
    K, a, b_uniform, softcap,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_Z: tl.constexpr, SOFTCAP: tl.constexpr,
    TERMS: tl.constexpr, SEX: tl.constexpr, QE: tl.constexpr, TE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # With TERMS (the optional terms, whose row formulas run outside: ops._terms) also the row's
    # Σ q_c (m − x'_c) and Σ e^{x' − m} as (d, n), the ties with the max apart (_sum_exp_step),
    # and with SEX / QE / TE: Σ e (x' − m) (penalty), Σ q e (Poly-1), Σ t e (FLSD-53's
    # p_y = Σ t p), all relative to the row max m, in the same read.
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    t_row = t_ptr + row * stride_tr
    m = float("-inf")
    d_vec = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ e^{x - m}, reduced once at the end
    n_vec = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane ties with the max (TERMS)
    acc_q = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ q_c of the columns seen so far
    acc_qx = tl.zeros([BLOCK], dtype=tl.float32)  # per-lane Σ q_c (m - x_c)
    sex_vec = tl.zeros([BLOCK], dtype=tl.float32)
    qe_vec = tl.zeros([BLOCK], dtype=tl.float32)
    te_vec = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = _load_stats_chunk(x_row, stride_xc, cols, mask, softcap, SOFTCAP)
        m_new, shift, alpha, e = _online_max_step(m, xb)
        if SEX:
            sex_vec = _sex_step(sex_vec, d_vec + n_vec, m, shift, alpha, xb, e)
        d_vec, n_vec = _sum_exp_step(d_vec, n_vec, m, m_new, alpha, xb, e, TERMS)
        q, _, tb = _prob_q(t_row, stride_tc, w_ptr, b_ptr, cols, mask, a, b_uniform, HAS_W,
                           HAS_B)
        q = tl.where(mask, q, 0.0)
        # Σ q_c (m − x_c) as the smoothing sum: no cancellation against Q·lse at any offset
        acc_qx, acc_q = _share_dist_step(acc_qx, acc_q, m, m_new, xb, q)
        if QE:
            qe_vec = qe_vec * alpha + q * e
        if TE:
            te_vec = te_vec * alpha + tl.where(mask, tb, 0.0) * e
        m = m_new
    d = tl.sum(d_vec, 0)
    if TERMS:
        n = tl.sum(n_vec, 0)
        tl.store(dn_ptr + row, d)
        tl.store(dn_ptr + row + tl.num_programs(0), n)
        d = d + n
    logd = tl.log(d)
    lse = m + logd
    qsum = tl.sum(acc_q, 0)
    qx = tl.sum(acc_qx, 0)
    loss = tl.load(rs_ptr + row) * (qsum * logd + qx)
    if HAS_Z:
        loss += tl.load(cz_ptr + row) * lse * lse
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)
    tl.store(qsum_ptr + row, qsum)
    tl.store(m_ptr + row, m)
    tl.store(logd_ptr + row, logd)
    if TERMS:
        tl.store(qx_ptr + row, qx)
    if SEX:
        tl.store(sex_ptr + row, tl.sum(sex_vec, 0))
    if QE:
        tl.store(qe_ptr + row, tl.sum(qe_vec, 0))
    if TE:
        tl.store(te_ptr + row, tl.sum(te_vec, 0))


@triton.jit
def _prob_focal(
    x_ptr, stride_xr, stride_xc,
    t_ptr, stride_tr, stride_tc,
    w_ptr, b_ptr, ref_ptr, lse_ptr, low_ptr, fs_ptr, as_ptr,
    K, a, b_uniform, softcap, gamma,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, SOFTCAP: tl.constexpr, POW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # The focal stage for probability targets: per row Σ q_c fg_c and Σ q_c a_c (_block_focal
    # with the row's own mass q instead of the shares).
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    t_row = t_ptr + row * stride_tr
    ref = tl.load(ref_ptr + row)
    L = tl.load(lse_ptr + row)
    if POW == -1:
        low = tl.load(low_ptr + row) != 0
    else:
        low = False
    fs = tl.zeros([BLOCK], dtype=tl.float32)
    a_s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = _load_stats_chunk(x_row, stride_xc, cols, mask, softcap, SOFTCAP)
        q, _, _ = _prob_q(t_row, stride_tc, w_ptr, b_ptr, cols, mask, a, b_uniform, HAS_W, HAS_B)
        q = tl.where(mask, q, 0.0)
        _, fg, ac = _focal_elems((xb - ref) - L, gamma, low, POW)
        fs += tl.where(q != 0.0, q * fg, 0.0)
        a_s += tl.where(q != 0.0, q * ac, 0.0)
    tl.store(fs_ptr + row, tl.sum(fs, 0))
    tl.store(as_ptr + row, tl.sum(a_s, 0))


@triton.jit
def _prob_bwd(
    x_ptr, stride_xr, stride_xc,
    t_ptr, stride_tr, stride_tc,
    dx_ptr, stride_dr, stride_dc,
    dt_ptr, stride_er, stride_ec,
    w_ptr, b_ptr, rs_ptr, cz_ptr, m_ptr, logd_ptr, qsum_ptr, g_ptr,
    cp_ptr, cpq_ptr, cpx_ptr, low_ptr,
    K, a, b_uniform, softcap, gamma, eps1,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_Z: tl.constexpr, SOFTCAP: tl.constexpr,
    NEED_DT: tl.constexpr, TERMS: tl.constexpr, HAS_CPQ: tl.constexpr, HAS_CPX: tl.constexpr,
    POW: tl.constexpr, FOCAL: tl.constexpr, POLY: tl.constexpr, BLOCK: tl.constexpr,
):
    # dℓ/dx_j = g·[rs·(Q p_j − q_j) + 2 cz lse p_j]·softcap'(x_j);
    # dℓ/dt_j = g·rs·a·w_j·(lse − x_j).
    # With TERMS (m_ptr/logd_ptr then hold the reference r and L; cp the row coefficient of
    # ops._terms.term_coefs on the mass rs·q): dℓ/dx_j = g·[(cp + cpq q_j + cpx z_j)·p_j
    # − rs q_j h_j]·softcap'(x_j), h = 1 or −a_j (FOCAL), z = x' − r; and
    # dℓ/dt_j = g·rs·a·w_j·(fg_j or (lse − x'_j), + ε₁(1 − p_j) with POLY).
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    t_row = t_ptr + row * stride_tr
    dx_row = dx_ptr + row * stride_dr
    g = tl.load(g_ptr + row)
    m = tl.load(m_ptr + row)
    logd = tl.load(logd_ptr + row)
    lse = m + logd
    grs = g * tl.load(rs_ptr + row)
    gcpq = 0.0
    gcpx = 0.0
    low = False
    if TERMS:
        coef = g * tl.load(cp_ptr + row)
        if HAS_CPQ:
            gcpq = g * tl.load(cpq_ptr + row)
        if HAS_CPX:
            gcpx = g * tl.load(cpx_ptr + row)
        if POW == -1:
            low = tl.load(low_ptr + row) != 0
        # a row without coefficients (rs = cz = 0: ignored) reads nothing and writes zeros
        active = (coef != 0.0) | (grs != 0.0) | (gcpx != 0.0)
        k_load = tl.where(active, K, 0)
    else:
        coef = grs * tl.load(qsum_ptr + row)
        if HAS_Z:
            coef += 2.0 * g * tl.load(cz_ptr + row) * lse
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        c64 = cols.to(tl.int64)
        if TERMS:
            ld_mask = cols < k_load
        else:
            ld_mask = mask
        xb = tl.load(x_row + c64 * stride_xc, mask=ld_mask, other=0.0).to(tl.float32)
        if SOFTCAP:
            th = _tanh(xb / softcap)
            xb = softcap * th
        q, wb, _ = _prob_q(t_row, stride_tc, w_ptr, b_ptr, cols, mask, a, b_uniform, HAS_W,
                           HAS_B)
        if TERMS:
            z = xb - m
            lp = z - logd
            if FOCAL:
                p, fg, ac = _focal_elems(lp, gamma, low, POW)
            else:
                p = tl.exp(lp)
            k = coef
            if HAS_CPQ:
                k = k + gcpq * q
            grad = k * p
            if HAS_CPX:
                grad += gcpx * tl.where(p > 0.0, z * p, 0.0)
            if FOCAL:
                grad += grs * q * ac
            else:
                grad -= grs * q
        else:
            grad = coef * tl.exp((xb - m) - logd) - grs * q
        if SOFTCAP:
            grad *= 1.0 - th * th
        if TERMS:
            grad = tl.where(active, grad, 0.0)
        tl.store(dx_row + c64 * stride_dc, grad.to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_DT:
            if TERMS:
                if FOCAL:
                    base = fg
                else:
                    base = -lp
                if POLY:
                    base += eps1 * (-_expm1(lp))
                dt = tl.where(active, grs * a * base, 0.0)
            else:
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
    m_ptr, d_ptr, xy_ptr, sx_ptr, sex_ptr, ses_ptr, n_ptr,
    K, s_uniform, softcap,
    SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, HAS_MASK: tl.constexpr, SEX: tl.constexpr,
    SES: tl.constexpr, TIES: tl.constexpr, BLOCK: tl.constexpr,
):
    # Per row: m = max x', d = Σ e^{x' − r}, x'_y (0 where the target is not in this block) and
    # Σ s_c (r − x'_c), with r = the row max (0 for an all −inf row), as _index_fwd computes them;
    # with SEX / SES also the terms' sex = Σ e^{x' − r}(x' − r) and ses = Σ s_c e^{x' − r}.
    # d is summed in float32 (the caller widens it to float64): a confident row's d = 1 + δ keeps
    # δ only to fp32's step 1.2e-7, where the fused engine's float64 sum_exp keeps it exactly;
    # with TIES (used with the optional terms) the ties with the max are counted apart in n, and
    # d + n is formed in float64 by the caller, which keeps δ.
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
    m, d, n, sdist, sex, ses = _row_stats(x_row, stride_xc, K, s_ptr, s_uniform, softcap,
                                          SMOOTH, SOFTCAP, SEX, SES, TIES, BLOCK)
    tl.store(m_ptr + row, m)
    tl.store(d_ptr + row, d)
    if TIES:
        tl.store(n_ptr + row, n)
    tl.store(xy_ptr + row, x_y)
    tl.store(sx_ptr + row, sdist)
    if SEX:
        tl.store(sex_ptr + row, sex)
    if SES:
        tl.store(ses_ptr + row, ses)


@triton.jit
def _block_focal(
    x_ptr, stride_xr, stride_xc,
    s_ptr, ref_ptr, lse_ptr, low_ptr, fs_ptr, as_ptr,
    K, s_uniform, softcap, gamma,
    SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, POW: tl.constexpr, BLOCK: tl.constexpr,
):
    # Stage 1b (focal only): per row Fs = Σ_c s_c fg_c and As = Σ_c s_c a_c over the block
    # (_focal_elems with p from the merged L relative to ref); a zero share counts 0 even at a
    # −inf logit (0·log 0 = 0). One more read of the block. SMOOTH != 0 (the caller returns zeros
    # without shares).
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
    ref = tl.load(ref_ptr + row)
    L = tl.load(lse_ptr + row)
    if POW == -1:
        low = tl.load(low_ptr + row) != 0
    else:
        low = False
    fs = tl.zeros([BLOCK], dtype=tl.float32)
    a_s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < K
        xb = _load_stats_chunk(x_row, stride_xc, cols, mask, softcap, SOFTCAP)
        sv = _shares(s_ptr, cols, mask, s_uniform, SMOOTH)
        _, fg, a = _focal_elems((xb - ref) - L, gamma, low, POW)
        fs += tl.where(sv != 0.0, sv * fg, 0.0)
        a_s += tl.where(sv != 0.0, sv * a, 0.0)
    tl.store(fs_ptr + row, tl.sum(fs, 0))
    tl.store(as_ptr + row, tl.sum(a_s, 0))


@triton.jit
def _block_grad(
    x_ptr, stride_xr, stride_xc,
    dx_ptr, stride_dr, stride_dc,
    y_ptr, on_ptr, s_ptr, ref_ptr, lse_ptr, cp_ptr, ct_ptr, cs_ptr, g_ptr,
    cps_ptr, cpx_ptr, cpd_ptr, low_ptr,
    K, s_uniform, softcap, gamma,
    SMOOTH: tl.constexpr, SOFTCAP: tl.constexpr, HAS_MASK: tl.constexpr, TERMS: tl.constexpr,
    HAS_CPS: tl.constexpr, HAS_CPX: tl.constexpr, POW: tl.constexpr, FOCAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # dx_j = g·(cp·p_j − ct·[j = y] − cs·s_j)·softcap'(x_j), p_j = e^{(x'_j − r) − L} (_grad_row);
    # with TERMS the generalised form (TermCoefs of ops._terms: cps, cpx, cpd, focal γ).
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xr
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
    ref = tl.load(ref_ptr + row)
    L = tl.load(lse_ptr + row)
    active = (gcp != 0.0) | (gct != 0.0)
    if SMOOTH != 0:
        active = active | (gcs != 0.0)
    bad = on & (gct != 0.0) & (y_ok == 0)  # an out-of-range target (value checks off): NaN row
    gcps = 0.0
    gcpx = 0.0
    gy = 0.0
    low = False
    if TERMS:
        if HAS_CPS:
            gcps = g * tl.load(cps_ptr + row)
        if HAS_CPX:
            gcpx = g * tl.load(cpx_ptr + row)
            active = active | (gcpx != 0.0)
        if POW == -1:
            low = tl.load(low_ptr + row) != 0
        # The target column where it has a target term (ops._terms.target_grad, its exact form
        # with D = cpd and X = cps s_y + cpx z_y, so a confident row keeps its digits):
        #   (ct + D + X)·expm1(l_y) + (D + X) − cs s_y                  without focal,
        #   (D + X)·p_y + ct·a_y·(1 − p_y) + cs s_y a_y                   with focal.
        # Elsewhere (ct = 0, or the target not in this block) the column takes the elementwise
        # value, which is target_grad's plain form there.
        yc = tl.where(y_ok & on, y, 0)
        z_y = tl.load(x_row + yc.to(tl.int64) * stride_xc, mask=K > 0, other=0.0).to(tl.float32)
        if SOFTCAP:
            z_y = softcap * _tanh(z_y / softcap)
        z_y = z_y - ref
        lp_y = z_y - L
        gcpd = g * tl.load(cpd_ptr + row)
        extra = 0.0
        gcs_y = 0.0
        if SMOOTH != 0:
            if SMOOTH == 1:
                s_y = s_uniform
            else:
                s_y = tl.load(s_ptr + yc).to(tl.float32)
            gcs_y = gcs * s_y
            if HAS_CPS:
                extra += gcps * s_y
        if HAS_CPX:
            extra += gcpx * z_y
        if FOCAL:
            p_y, _, a_y = _focal_elems(lp_y, gamma, low, POW)
            gy = (gcpd + extra) * p_y + gct * a_y * (-_expm1(lp_y)) + gcs_y * a_y
        else:
            gy = (gct + gcpd + extra) * _expm1(lp_y) + (gcpd + extra) - gcs_y
        y = tl.where(on & (gct != 0.0), y, -1)  # no column takes gy there
    _grad_row(x_row, stride_xc, dx_ptr + row * stride_dr, stride_dc, K, y, ref, L, gcp, gct, gcs,
              s_ptr, s_uniform, softcap, active, bad, gcps, gcpx, gy, gamma, low,
              SMOOTH, SOFTCAP, TERMS, HAS_CPS, HAS_CPX, POW, FOCAL, BLOCK)
