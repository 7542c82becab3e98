r"""Inductor-generated kernels for the fused engine's two passes, used where a C++ compiler exists.

:func:`torch.compile` turns each pass into one vectorised C++ kernel. The statistics pass is
plain row reductions with every per-row combination (float64 sum, masks, focal sums) left to the
caller: Inductor then runs one loop over rows that reads each row from memory once (its max) and
again from cache (the sum of exponentials, target logit, share-weighted sums), instead of one loop
over all rows per dependent reduction, which it does as soon as any per-row operation sits between
two reductions (the second read then comes from memory once the logits outgrow the cache; checked
in the generated C++ of torch 2.13). The gradient pass reads the logits once and writes them once,
in float32 before the single rounding; the target column is written afterwards by the caller
from its own (expm1) form (a per-element column test inside the loop cost 150 against 90 ms at
8192 × 32000). No temporary of the logits' size is ever created. Measured on the reference machine
(2 threads, 8192 × 32000 float32, medians, 2026-12-02): statistics 104–133 ms, against 149–158 ms
with the per-row operations inside the kernel (two loops over all rows). Earlier (one thread,
2048 × 32000): statistics 32 ms and in-place gradient 25 ms, against 72–75 ms and 61–63 ms for
the chunked eager path (2.4× in all) and 46 ms for one ``torch.exp(out=)`` pass. With two threads
on a shared machine the eager path suffers more (many short parallel regions);
``benchmarks/bench_cross_entropy.py`` measures both (``fused`` vs ``fused-eager``).

Focal sums of whole rows: integer γ ≤ :data:`~labelsmooth.ops._terms.FOCAL_MOMENTS_MAX` take them
from power sums in the same statistics pass (:func:`~labelsmooth.ops._terms.focal_from_moments`);
other γ (and FLSD-53) run the :func:`focal` kernel after the lse, one more read of the logits.

When it is used (see :func:`use_inductor`): CPU tensors of at least :data:`MIN_NUMEL` elements
that the hand-written kernels of :mod:`._fused_native` do not take (they run first: float32
without soft-cap, integer focal γ; see :func:`._fused_chunks.fast_kernels`),
``LABELSMOOTH_FUSED_KERNELS`` unset or ``"auto"`` (``"eager"`` and ``"native"`` disable it,
``"inductor"`` forces it at every size), and only while compiling works: the first failure (no
compiler, an unsupported platform) switches it off for the process with a warning, and the
chunked eager path takes over. The first call per (dtype, option set) compiles; small inputs — tests, toy
models — never pay it.

First-call cost and the cache. The compiled kernels are stored by Inductor's FX graph cache and
AOTAutograd cache under ``TORCHINDUCTOR_CACHE_DIR`` (default ``/tmp/torchinductor_<user>``; set
it to a persistent directory to survive reboots), so later processes load them instead of
compiling. Measured 2026-12-02 in new processes, 8192 × 32000 float32, 2 cores shared at load
average 10–14: first forward + backward 79 s beyond a warm call with an empty cache directory,
27–33 s with the cache populated (16–18 s at load 3–6). The cached first call still pays torch's
per-process compiler start-up — importing ``torch._dynamo`` (~7 s here) and ``torch._inductor``
(~5.5 s) and re-tracing both kernels (~10 s) — which no cache setting removes
(``TORCH_CACHING_PRECOMPILE=1`` did not shorten it).
"""

from __future__ import annotations

import os
import subprocess
import warnings

import torch

from labelsmooth.ops._math import acc_dtype, apply_softcap, index_grad_dense, row_ref
from labelsmooth.ops._terms import (
    TermCoefs,
    flsd_low,
    focal_elems,
    focal_from_moments,
    focal_moments_order,
    grad_elems,
)

#: Smallest logits (elements) for which the compiled kernels are used under "auto": 4 Mi elements.
MIN_NUMEL = 1 << 22

#: Compiled variants allowed per kernel (dtypes × softcap × option flags), above dynamo's 8.
_RECOMPILE_LIMIT = 64

#: Inductor settings of every kernel here. ``cpp.dynamic_threads``: Inductor otherwise decides
#: at compile time, from the first call's shape, whether a kernel runs in parallel and on how many
#: threads — and its on-disk cache replays that decision for every later shape and process: a
#: kernel first compiled on a small input (a test) then ran single-threaded on 8192 × 32000
#: (measured 2026-12-02 with fresh cache directories, after a first call on 16 × 50: the in-place
#: focal gradient pass 0.21 s, against 0.12 s with it). With it, every kernel has a parallel loop
#: over rows sized by OpenMP at run time (and follows ``torch.set_num_threads``).
_INDUCTOR_CONFIG = {"cpp.dynamic_threads": True}

class KernelState:
    """The compiled kernels' process-wide state, in one place (tests replace it whole).

    Attributes:
        broken: set by the first compiler failure: the chunked eager path then takes over for the
            rest of the process (see :func:`_run`).
        compiled: kernel name → its ``torch.compile``-d function, built on first use.
        worked: names of the kernels that compiled and ran at least once in this process: their
            later errors are real errors (re-raised), not compiler failures.
    """

    def __init__(self) -> None:
        self.broken = False
        self.compiled: dict[str, object] = {}
        self.worked: set[str] = set()


#: The one instance (module-level, as torch.compile's own caches are).
STATE = KernelState()


#: The values of ``LABELSMOOTH_FUSED_KERNELS``: ``"native"`` forces the hand-written kernels of
#: :mod:`._fused_native` at every size (the chunked eager path where they do not apply),
#: ``"inductor"`` these compiled ones, ``"eager"`` neither.
MODES = ("auto", "eager", "inductor", "native")


def mode() -> str:
    """The ``LABELSMOOTH_FUSED_KERNELS`` setting, one of :data:`MODES` (default ``"auto"``)."""
    value = os.environ.get("LABELSMOOTH_FUSED_KERNELS", "auto").strip().lower()
    if value not in MODES:
        raise ValueError(
            f"Expected `LABELSMOOTH_FUSED_KERNELS` to be one of {MODES}, but got {value!r}."
        )
    return value


def use_inductor(x: torch.Tensor) -> bool:
    """Whether the compiled kernels should process ``x`` (shape, device, setting, health)."""
    if STATE.broken or x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    m = mode()
    if m in ("eager", "native"):
        return False
    return m == "inductor" or x.numel() >= MIN_NUMEL


#: Below this many columns the tie count is a float32 sum (exact up to 2^24; cheaper than int64).
_FLOAT_COUNT_MAX = 1 << 24


def _row_sums(x, y, s, share_on, softcap: float | None, want_sx: bool, want_sex: bool,
              want_ses: bool, order: int):
    """The statistics pass: plain row reductions only, every per-row combination left to the
    caller — a per-row operation between two reductions makes Inductor give each its own loop over
    all rows, while plain reductions share one loop over rows that walks each row from memory once
    (its max) and again from cache (outer-loop fusion, checked in the generated C++).

    Returns ``(m, s1, t, x_y, sx, sex, ses, st, *moments)``: the max, the sum of exponentials
    relative to the reference without the ties (columns at the max: their count ``t``, their share
    sum ``st`` for focal with a share vector), the target logit, Σ s (r − x'), Σ e (x' − r),
    Σ s e (None where not wanted), and for ``order`` k > 0 the focal power sums
    ``E_1, Z_1, …, E_k, Z_k`` of :func:`labelsmooth.ops._terms.focal_from_moments` (``E_1`` None
    for uniform shares: it is ``s1``)."""
    acc = acc_dtype(x.dtype)
    xf = apply_softcap(x.to(acc), softcap)
    m = xf.amax(1, keepdim=True)
    # everything relative to the row's reference (its max; 0 for an all −inf row, whose sumexp
    # is then 0 and lse −inf as torch.logsumexp's): float32 keeps its digits at large offsets
    z = xf - row_ref(m)
    zero = torch.zeros((), dtype=acc)
    # the terms at the max (e^0 = 1) apart: a confident row keeps its tiny excess (float64 later)
    tie = z == 0
    e = torch.exp(z)
    en = torch.where(tie, zero, e)
    t = tie.to(acc).sum(1) if x.shape[1] < _FLOAT_COUNT_MAX else tie.sum(1)
    x_y = xf.gather(1, y[:, None])[:, 0]
    sx = sex = ses = st = None
    if want_sx:
        if s is None:
            sx = (-z).sum(1)
        elif share_on is None:
            sx = (-z * s[None, :]).sum(1)
        else:  # a zero share counts 0 even at a −inf logit (0·log 0 = 0)
            sx = torch.where(share_on[None, :], -z * s[None, :], zero).sum(1)
    # z clamped to the lowest float: e·z is then 0 at a −inf logit (e = 0), with one max per
    # element instead of a compare and a select
    zc = torch.clamp_min(z, torch.finfo(acc).min)
    if want_sex:
        sex = (e * zc).sum(1)
    if want_ses:
        ses = (e * s[None, :]).sum(1)
    moments = []
    if order:
        w = en if s is None else en * s[None, :]
        if s is not None:
            st = torch.where(tie, s[None, :], zero).sum(1)
        for k in range(1, order + 1):
            if k > 1:
                w = w * en
            moments.append(w.sum(1) if k > 1 or s is not None else None)
            moments.append((w * zc).sum(1))
    return (m[:, 0], en.sum(1), t, x_y, sx, sex, ses, st, *moments)


def _stats(x, y, s, share_on, softcap: float | None, want_sx: bool):
    return _row_sums(x, y, s, share_on, softcap, want_sx, False, False, 0)


def _stats_terms(x, y, s, share_on, softcap: float | None, want_sx: bool, want_sex: bool,
                 want_ses: bool, order: int):
    """:func:`_stats` with the terms' partials (its own compiled function: its variants count
    against their own recompile limit)."""
    return _row_sums(x, y, s, share_on, softcap, want_sx, want_sex, want_ses, order)


def _sumexp(s1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Σ e^(x' − r) in float64, the ties (each exactly 1) added to the float32 rest."""
    return s1.to(torch.float64) + t.to(torch.float64)


def _masked(x_y: torch.Tensor, mask) -> torch.Tensor:
    return x_y if mask is None else torch.where(mask, x_y, torch.zeros_like(x_y))


def row_stats(m, s1, t, x_y, mask, *sums) -> tuple:
    """``(m, sumexp, x_y, *sums)`` as the statistics functions return them, from a kernel's raw
    row sums: the float64 sum of exponentials, the masked target logit, unwanted sums (None) as 0.
    Shared by these kernels and the native ones."""
    zeros = torch.zeros_like(m)
    return (m, _sumexp(s1, t), _masked(x_y, mask), *(zeros if v is None else v for v in sums))


def _grad_value(x, ref, a, b, s, bu, live, softcap: float | None):
    # the one dense formula, without the target term (the caller writes that column)
    return index_grad_dense(x, None, ref, a, None, b, s, bu, live, softcap)


def _grad_into(x, ref, a, b, s, bu, live, out, softcap: float | None):
    out.copy_(_grad_value(x, ref, a, b, s, bu, live, softcap))


def _grad_inplace(x, ref, a, b, s, bu, live, softcap: float | None):
    x.copy_(_grad_value(x, ref, a, b, s, bu, live, softcap))


def _focal(x, ref, lse, s, share_on, low, gamma, softcap: float | None):
    """Per row (Σ s fg, Σ s a) of the focal stage; ``s`` None: the plain sums (the caller
    scales)."""
    xf = apply_softcap(x.to(acc_dtype(x.dtype)), softcap)
    _, fg, a = focal_elems(xf - ref[:, None], lse[:, None], gamma,
                           None if low is None else low[:, None], one_exp="u")
    if s is None:
        return fg.sum(1), a.sum(1)
    zero = torch.zeros((), dtype=fg.dtype)
    fg, a = fg * s[None, :], a * s[None, :]
    if share_on is not None:  # a zero share counts 0 even at a −inf logit (0·inf)
        fg = torch.where(share_on[None, :], fg, zero)
        a = torch.where(share_on[None, :], a, zero)
    return fg.sum(1), a.sum(1)


def _grad_terms_value(x, ref, lse, g, cp, cs, s, cps, cpx, low, live, gamma,
                      softcap: float | None):
    """The generalised stage two of every column (target column fixed by the caller), × g,
    chain rule, rows without coefficients 0 — the one formula of _terms.grad_elems, compiled."""
    xf = x.to(acc_dtype(x.dtype))
    if softcap is not None:
        t = torch.tanh(xf / softcap)
        xf = softcap * t
    col = lambda v: None if v is None else v[:, None]  # noqa: E731
    coefs = TermCoefs(cps=col(cps), cpx=col(cpx), gamma=gamma, low=col(low))
    if s is not None:
        cs_s, s_row = cs[:, None] * s[None, :], s[None, :]
    else:  # uniform shares: cs·s_u per row (a tensor: a float argument would recompile per value)
        cs_s, s_row = (None if cs is None else cs[:, None]), 0.0
    out = grad_elems(xf - ref[:, None], lse[:, None], cp[:, None], cs_s, coefs, s_row,
                     one_exp="p") * g[:, None]
    if softcap is not None:
        out = out * (1 - t * t)
    out = torch.where(live[:, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.to(x.dtype)


def _grad_terms_into(x, ref, lse, g, cp, cs, s, cps, cpx, low, live, out, gamma,
                     softcap: float | None):
    out.copy_(_grad_terms_value(x, ref, lse, g, cp, cs, s, cps, cpx, low, live, gamma,
                                softcap))


def _grad_terms_inplace(x, ref, lse, g, cp, cs, s, cps, cpx, low, live, gamma,
                        softcap: float | None):
    x.copy_(_grad_terms_value(x, ref, lse, g, cp, cs, s, cps, cpx, low, live, gamma,
                              softcap))


def _compiled(name: str, fn):
    f = STATE.compiled.get(name)
    if f is None:
        STATE.worked.discard(name)  # a new compiled function: its first call compiles
        f = torch.compile(fn, dynamic=True, fullgraph=True)
        STATE.compiled[name] = f
    return f


def _is_compile_error(exc: BaseException) -> bool:
    """An error of the compiler stack: dynamo/inductor exceptions or a missing/failing toolchain."""
    mod = type(exc).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor")) or isinstance(
        exc, (OSError, ImportError, subprocess.CalledProcessError)
    )


def _run(name: str, fn, *args):
    """Run the compiled ``fn``; (False, None) and off for the process if compiling it fails.

    Switched off by a failure of a kernel's first (compiling) call, or by an error raised from
    the compiler stack (dynamo/inductor, a missing toolchain) at any call, e.g. when a new dtype
    recompiles. Never by an out-of-memory error, which says nothing about the compiler, nor by an
    ordinary error of a kernel that already ran: those are re-raised.
    """
    try:
        # each dtype/option combination is a guard variant of the same code object; dynamo's
        # default limit of 8 would switch the kernels off for the whole process (fullgraph raises)
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT), \
                torch._inductor.config.patch(_INDUCTOR_CONFIG):
            out = _compiled(name, fn)(*args)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # a compiler / backend failure falls back to eager (see above)
        if name in STATE.worked and not _is_compile_error(exc):
            raise
        STATE.broken = True
        warnings.warn(
            f"labelsmooth: the compiled fused kernels are unavailable ({type(exc).__name__}: "
            f"{str(exc)[:200]}); using the chunked eager path.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False, None
    STATE.worked.add(name)
    return True, out


def stats(x, y, s, share_on, mask, softcap, want_sx):
    """(ok, (m, sumexp, x_y, dsx_unscaled)) — see :func:`._fused_chunks.row_partials`.

    ``share_on``: (K,) bool, False where the share is 0 (None when no share is 0).
    """
    ok, res = _run("stats", _stats, x, y, s, share_on, softcap, want_sx)
    if not ok:
        return False, None
    m, s1, t, x_y, sx = res[:5]
    return True, row_stats(m, s1, t, x_y, mask, sx)


def grad(x, ref, a, b, s, bu, softcap, out, live):
    r"""ok — writes ``out`` (which may be ``x``); rows where ``live`` is False get 0.

    The probability term is :math:`a_n e^{x'_{n,j} - \mathrm{ref}_n}` (the caller folds the
    1/sumexp of a row-relative lse into ``a``). The target term is left out: the caller writes
    the target column afterwards from its own (expm1) form, so the kernel has no per-element
    column test (measured 150 → 90 ms at 8192 × 32000 float32, 2 threads, 2026-12-02).
    """
    if out is x:
        ok, _ = _run("grad_inplace", _grad_inplace, x, ref, a, b, s, bu, live, softcap)
    else:
        ok, _ = _run("grad_into", _grad_into, x, ref, a, b, s, bu, live, out, softcap)
    return ok


def stats_terms(x, y, s, share_on, mask, softcap, want_sx, want_sex, want_ses, gamma=None,
                flsd_rows=False):
    """(ok, (m, sumexp, x_y, dsx_unscaled, sex, ses[, Fs, As, low])) — :func:`stats` with the
    terms' partials; with ``gamma`` (whole rows only: the lse is the row's own) also the focal
    sums over the shares (unscaled when ``s`` is None) and FLSD-53's per-row switch ``low``
    (from the row's own p_y when ``flsd_rows``).

    Integer γ ≤ :data:`~labelsmooth.ops._terms.FOCAL_MOMENTS_MAX` take the focal sums from power
    sums of the same pass (:func:`~labelsmooth.ops._terms.focal_from_moments`); other γ and
    FLSD-53 run the :func:`focal` kernel once the lse is known (one more read of the logits).
    """
    order = focal_moments_order(gamma)
    want_sx = want_sx or bool(order)  # the focal sums' k = 0 term is −dsx
    ok, res = _run("stats_terms", _stats_terms, x, y, s, share_on, softcap, want_sx, want_sex,
                   want_ses, order)
    if not ok:
        return False, None
    m, s1, t, x_y, sx, sex, ses, st = res[:8]
    base = row_stats(m, s1, t, x_y, mask, sx, sex, ses)
    if gamma is None:
        return True, base
    ref, lse = row_ref(m), base[1].log().to(m.dtype)
    low = flsd_low(torch.exp((x_y - ref) - lse)) if flsd_rows else None
    if order:
        fs, a_s = focal_sums(gamma, low, x.shape[1], s, s1, t, st, sx, res[8:], m.dtype)
    else:
        ok, res = focal(x, ref, lse, s, share_on, low, gamma, softcap)
        if not ok:
            return False, None
        fs, a_s = res
    return True, (*base, fs, a_s, torch.zeros_like(m, dtype=torch.bool) if low is None else low)


def focal_sums(gamma, low, cols: int, s, s1, t, st, sx, moments, dtype):
    """(Fs, As) in ``dtype`` from a statistics pass's power sums (``moments`` = E_1, Z_1, E_2, …,
    E_1 None without a share vector: it is ``s1``): the k = 0 sums from the tie count (or the
    shares at the ties, ``st``) and ``sx``, then :func:`~labelsmooth.ops._terms.focal_from_moments`.
    Shared by these kernels and the native ones."""
    if s is None:
        st, e0 = t, cols - t.to(torch.float64)
    else:
        e0 = s.to(torch.float64).sum() - st.to(torch.float64)
    E = [e0] + [s1 if v is None else v for v in moments[0::2]]
    Z = [-sx] + list(moments[1::2])
    fs, a_s = focal_from_moments(gamma, low, s1, t, st, E, Z)
    return fs.to(dtype), a_s.to(dtype)


def focal(x, ref, lse, s, share_on, low, gamma, softcap):
    """(ok, (Fs, As)) of the focal stage; with ``s`` None the unscaled sums (× s_uniform).

    γ is a compile-time constant (integer γ unrolls into multiplications): each distinct γ
    compiles its own variant."""
    return _run("focal", _focal, x, ref, lse, s, share_on, low, gamma, softcap)


def grad_terms(x, ref, lse, g, cp, cs, s, cps, cpx, low, live, out, gamma, softcap):
    """ok — the generalised stage two into ``out`` (which may be ``x``); see
    :func:`labelsmooth.ops._terms.grad_elems`. ``cs``: with ``s`` the (R,) smoothing coefficient,
    without it the (R,) products cs·s_uniform, or None (no smoothing)."""
    if out is x:
        ok, _ = _run("grad_terms_inplace", _grad_terms_inplace, x, ref, lse, g, cp, cs, s,
                     cps, cpx, low, live, gamma, softcap)
    else:
        ok, _ = _run("grad_terms", _grad_terms_into, x, ref, lse, g, cp, cs, s, cps,
                     cpx, low, live, out, gamma, softcap)
    return ok
