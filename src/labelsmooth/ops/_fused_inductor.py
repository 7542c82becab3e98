r"""Inductor-generated kernels for the fused engine's two passes, used where a C++ compiler exists.

:func:`torch.compile` turns each pass into one vectorised C++ kernel: the statistics pass reads
the logits twice (max, then sum of exponentials, target logit and share-weighted sum — Inductor
gives each dependent row reduction its own loop over all rows, so the second read comes from
memory, not from cache, once the logits outgrow it; checked in the generated C++ of torch 2.13;
the focal sums of whole rows are a third such loop), the gradient pass reads them once and writes
them once, with the target
column handled by a select inside the same loop, in float32 before the single rounding. No
temporary of the logits' size is ever created. Measured on the reference machine (one thread,
CPU time, 2048 × 32000 float32): statistics 32 ms and in-place gradient 25 ms, against 72–75 ms
and 61–63 ms for the chunked eager path (2.4× in all) and 46 ms for one ``torch.exp(out=)`` pass.
With two threads on a shared machine the eager path suffers more (many short parallel regions);
``benchmarks/bench_cross_entropy.py`` measures both (``fused`` vs ``fused-eager``).

When it is used (see :func:`use_inductor`): CPU tensors of at least :data:`MIN_NUMEL` elements,
``LABELSMOOTH_FUSED_KERNELS`` unset or ``"auto"`` (``"eager"`` disables it, ``"inductor"``
forces it at every size), and only while compiling works: the first failure (no compiler, an
unsupported platform) switches it off for the process with a warning, and the chunked eager path
takes over. The first call per (dtype, option set) compiles; small inputs — tests, toy
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
from labelsmooth.ops._terms import TermCoefs, focal_elems, grad_elems

#: Smallest logits (elements) for which the compiled kernels are used under "auto": 4 Mi elements.
MIN_NUMEL = 1 << 22

#: Compiled variants allowed per kernel (dtypes × softcap × option flags), above dynamo's 8.
_RECOMPILE_LIMIT = 64

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


def mode() -> str:
    """The ``LABELSMOOTH_FUSED_KERNELS`` setting: ``"auto"`` (default), ``"eager"``, ``"inductor"``."""
    value = os.environ.get("LABELSMOOTH_FUSED_KERNELS", "auto").strip().lower()
    if value not in ("auto", "eager", "inductor"):
        raise ValueError(
            f"Expected `LABELSMOOTH_FUSED_KERNELS` to be one of ('auto', 'eager', 'inductor'), "
            f"but got {value!r}."
        )
    return value


def use_inductor(x: torch.Tensor) -> bool:
    """Whether the compiled kernels should process ``x`` (shape, device, setting, health)."""
    if STATE.broken or x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    m = mode()
    if m == "eager":
        return False
    return m == "inductor" or x.numel() >= MIN_NUMEL


def _stats(x, y, s, share_on, mask, softcap: float | None, want_sx: bool):
    xf = apply_softcap(x.to(acc_dtype(x.dtype)), softcap)
    m = xf.amax(1)
    # everything relative to the row's reference (its max; 0 for an all −inf row, whose sumexp
    # is then 0 and lse −inf as torch.logsumexp's): float32 keeps its digits at large offsets
    ref = row_ref(m)
    d = ref[:, None] - xf
    # the terms at the max (e^0 = 1) apart, then float64: a confident row keeps its tiny excess
    tie = d == 0
    sumexp = torch.where(tie, torch.zeros((), dtype=d.dtype), torch.exp(-d)).sum(1).to(
        torch.float64
    ) + tie.sum(1).to(torch.float64)
    x_y = xf.gather(1, y[:, None])[:, 0]
    if mask is not None:
        x_y = torch.where(mask, x_y, torch.zeros_like(x_y))
    if not want_sx:
        sx = torch.zeros_like(m)
    elif s is None:
        sx = d.sum(1)
    elif share_on is None:
        sx = (d * s[None, :]).sum(1)
    else:  # a zero share counts 0 even at a −inf logit (0·log 0 = 0)
        sx = torch.where(share_on[None, :], d * s[None, :], torch.zeros((), dtype=d.dtype)).sum(1)
    return m, sumexp, x_y, sx


def _grad_value(x, y, ref, a, bt, b, s, bu, live, softcap: float | None):
    return index_grad_dense(x, y, ref, a, bt, b, s, bu, live, softcap)  # the one dense formula


def _grad_into(x, y, ref, a, bt, b, s, bu, live, out, softcap: float | None):
    out.copy_(_grad_value(x, y, ref, a, bt, b, s, bu, live, softcap))


def _grad_inplace(x, y, ref, a, bt, b, s, bu, live, softcap: float | None):
    x.copy_(_grad_value(x, y, ref, a, bt, b, s, bu, live, softcap))


def _stats_terms(x, y, s, share_on, mask, softcap: float | None, want_sx: bool, want_sex: bool,
                 want_ses: bool, gamma=None, flsd_rows: bool = False):
    """:func:`_stats` plus the terms' Σ e·(x' − r) and Σ s·e from the same exponentials and, with
    ``gamma`` (whole rows only: the lse is the row's own), the focal stage's (Σ s fg, Σ s a) — one
    compiled kernel, one exponential and one expm1 per element for focal (``one_exp="u"``)."""
    acc = acc_dtype(x.dtype)
    xf = apply_softcap(x.to(acc), softcap)
    m = xf.amax(1)
    ref = row_ref(m)
    z = xf - ref[:, None]
    zero = torch.zeros((), dtype=acc)
    tie = z == 0
    e = torch.exp(z)
    sumexp = torch.where(tie, zero, e).sum(1).to(torch.float64) + tie.sum(1).to(torch.float64)
    x_y = xf.gather(1, y[:, None])[:, 0]
    if mask is not None:
        x_y = torch.where(mask, x_y, torch.zeros_like(x_y))
    d = -z
    if not want_sx:
        sx = torch.zeros_like(m)
    elif s is None:
        sx = d.sum(1)
    elif share_on is None:
        sx = (d * s[None, :]).sum(1)
    else:
        sx = torch.where(share_on[None, :], d * s[None, :], zero).sum(1)
    sex = torch.where(e > 0, e * z, zero).sum(1) if want_sex else torch.zeros_like(m)
    ses = (e * s[None, :]).sum(1) if want_ses else torch.zeros_like(m)
    if gamma is None:
        return m, sumexp, x_y, sx, sex, ses
    lse = sumexp.log().to(acc)
    low = torch.exp((x_y - ref) - lse) < 0.2 if flsd_rows else None
    _, fg, a = focal_elems(z, lse[:, None], gamma, None if low is None else low[:, None],
                           one_exp="u")
    if s is not None:
        fg, a = fg * s[None, :], a * s[None, :]
        if share_on is not None:  # a zero share counts 0 even at a −inf logit (0·inf)
            fg = torch.where(share_on[None, :], fg, zero)
            a = torch.where(share_on[None, :], a, zero)
    low = low if low is not None else torch.zeros_like(m, dtype=torch.bool)
    return m, sumexp, x_y, sx, sex, ses, fg.sum(1), a.sum(1), low


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
        with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
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
    return _run("stats", _stats, x, y, s, share_on, mask, softcap, want_sx)


def grad(x, y, ref, a, bt, b, s, bu, softcap, out, live):
    r"""ok — writes ``out`` (which may be ``x``); rows where ``live`` is False get 0.

    The probability term is :math:`a_n e^{x'_{n,j} - \mathrm{ref}_n}` (the caller folds the
    1/sumexp of a row-relative lse into ``a``).
    """
    if out is x:
        ok, _ = _run("grad_inplace", _grad_inplace, x, y, ref, a, bt, b, s, bu, live, softcap)
    else:
        ok, _ = _run("grad_into", _grad_into, x, y, ref, a, bt, b, s, bu, live, out, softcap)
    return ok


def stats_terms(x, y, s, share_on, mask, softcap, want_sx, want_sex, want_ses, gamma=None,
                flsd_rows=False):
    """(ok, (m, sumexp, x_y, dsx_unscaled, sex, ses[, Fs, As, low])) — :func:`stats` with the
    terms' partials; with ``gamma`` also the focal sums over the shares (unscaled when ``s`` is
    None),
    FLSD-53's per-row γ from the row's own p_y when ``flsd_rows``. γ is a compile-time constant."""
    return _run("stats_terms", _stats_terms, x, y, s, share_on, mask, softcap, want_sx, want_sex,
                want_ses, gamma, flsd_rows)


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
