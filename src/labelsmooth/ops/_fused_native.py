r"""Hand-written CPU kernels for the fused engine's two passes (float32), built at first use.

``_fused_native.cpp`` holds three kernels — the statistics pass (with the terms' row sums and
the focal sums), the plain gradient pass and the gradient pass with terms — written with GCC/Clang
vector extensions and compiled once per machine with the system C++ compiler (``-O3
-march=native -fopenmp``; about 9 s for its template variants, no torch headers), then
called through :mod:`ctypes` with the tensors' data pointers (the GIL is released, OpenMP runs
the rows on ``torch.get_num_threads()`` threads).

Why they exist next to the Inductor kernels (:mod:`._fused_inductor`): Inductor's loops call an
out-of-line vector ``exp``, so each running sum around it is spilled and reloaded per iteration
— every extra row statistic of a term cost 25–35 ms at 8192 × 32000 on the 2-core reference
machine. Here ``exp`` is inline (Cody–Waite reduction and a degree-7 polynomial, ≤ 2 ulp), every
sum stays in a register, and each row is walked while it sits in cache: once from memory for its
max (and tie count), then from cache for all its sums. Focal with integer γ ≤
:data:`~labelsmooth.ops._terms.FOCAL_MOMENTS_MAX` takes its sums from power sums of that same
walk (:func:`~labelsmooth.ops._terms.focal_from_moments`); FLSD-53 and larger γ walk the row a
third time, from cache, once its lse is known (the Inductor path reads the logits from memory
again for those). Measured with ``benchmarks/bench_terms.py`` (see there): the plain loss 1.6×
faster than with the Inductor kernels.

Semantics are those of the Inductor kernels (the tests check both against the chunked eager
path): statistics relative to the row reference, the terms at the max counted apart, a zero share
counting 0 at a −inf logit, NaN and ±inf as in PyTorch.

When they are used (:func:`use_native`): float32 CPU logits with unit column stride, no soft-cap,
focal γ absent, an integer in [1, 16] or FLSD-53; at least :data:`~._fused_inductor.MIN_NUMEL`
elements under ``LABELSMOOTH_FUSED_KERNELS=auto`` (every size under ``native``; never under
``inductor`` or ``eager``); not while :func:`torch.compile` traces. Everything else takes the
Inductor kernels, then the chunked eager path. A failed build (no compiler, no OpenMP, another
platform) warns once and switches them off for the process.

The compiler is ``$CXX`` (default ``c++``); ``LABELSMOOTH_NATIVE_CXXFLAGS`` appends flags (e.g.
``-mno-avx512f`` to build the portable path on an AVX-512 machine, as the tests do). The built
library is cached under ``LABELSMOOTH_CACHE_DIR`` (default ``$XDG_CACHE_HOME/labelsmooth`` or
``~/.cache/labelsmooth``; a private directory under the system's temporary one when that is not
writable), keyed by the source, the compiler, its flags and the CPU's feature flags, and written
atomically (ranks of one job may build at once).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from labelsmooth.ops import _fused_inductor as _ind
from labelsmooth.ops._terms import FLSD, _int_gamma, focal_moments_order

_SOURCE = Path(__file__).with_name("_fused_native.cpp")

#: Flag sets tried in order; the first that builds is used.
_FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"),
    ("-O3", "-mcpu=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"),
    ("-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17"),
)

_F = ctypes.c_void_p  # every pointer argument (null: None)
_L, _I = ctypes.c_int64, ctypes.c_int


class NativeState:
    """The native kernels' process-wide state (tests replace it whole).

    Attributes:
        broken: set when building or loading failed: the Inductor / eager kernels take over.
        lib: the loaded library, or None before the first use.
        calls: kernel name → number of calls in this process (read by the tests).
    """

    def __init__(self) -> None:
        self.broken = False
        self.lib: ctypes.CDLL | None = None
        self.calls: dict[str, int] = {}


STATE = NativeState()
_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Where the built library is kept (see the module docstring)."""
    env = os.environ.get("LABELSMOOTH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "labelsmooth"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _writable_dir() -> Path:
    """:func:`cache_dir`, or a private directory under the system's temporary one when that
    cannot be created or written (a read-only home)."""
    for d in (cache_dir(), Path(tempfile.gettempdir()) / f"labelsmooth-{os.getuid()}"):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            if d.stat().st_uid == os.getuid() and os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise OSError(f"no writable directory for the native kernels (tried {cache_dir()})")


def _build() -> ctypes.CDLL:
    """Compile (or find in the cache) and load the library; raises on failure."""
    src = _SOURCE.read_bytes()
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, check=True, timeout=60)
    errors = []
    where = _writable_dir()
    extra = tuple(shlex.split(os.environ.get("LABELSMOOTH_NATIVE_CXXFLAGS", "")))
    for base in _FLAG_SETS:
        flags = base + extra
        key = hashlib.sha256(
            b"\0".join([src, cxx.encode(), version.stdout, " ".join(flags).encode(),
                        platform.machine().encode(), _cpu_flags().encode()])
        ).hexdigest()[:24]
        path = where / f"fused_native_{key}.so"
        if not path.exists():
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=where)
            os.close(fd)
            proc = subprocess.run([cxx, *flags, "-o", tmp, str(_SOURCE)], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode != 0:
                os.unlink(tmp)
                errors.append(f"{' '.join(flags)}: {proc.stderr.strip()[-300:]}")
                continue
            os.replace(tmp, path)  # atomic: a concurrent builder writes the same bytes
        lib = ctypes.CDLL(str(path))
        for name in ("ls_stats", "ls_grad", "ls_grad_terms"):
            getattr(lib, name).restype = None
        lib.ls_stats.argtypes = [_F, _L, _L, _L, _F, _F, _I, _I] + [_F] * 11 + [_I]
        lib.ls_grad.argtypes = [_F, _L, _L, _L] + [_F] * 7 + [_L, _I]
        lib.ls_grad_terms.argtypes = [_F, _L, _L, _L] + [_F] * 9 + [_I, _F, _F, _L, _I]
        return lib
    raise OSError("building the native kernels failed: " + " | ".join(errors))


def _lib() -> ctypes.CDLL | None:
    if STATE.lib is not None or STATE.broken:
        return STATE.lib
    with _LOCK:
        if STATE.lib is None and not STATE.broken:
            try:
                STATE.lib = _build()
            except (OSError, subprocess.SubprocessError, AttributeError) as exc:
                STATE.broken = True
                warnings.warn(
                    f"labelsmooth: the native fused kernels are unavailable "
                    f"({type(exc).__name__}: {str(exc)[:300]}); using the compiled (Inductor) "
                    f"or chunked eager path.",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return STATE.lib


def native_gamma(gamma) -> int | None:
    """The kernels' γ code: 0 none, k for integer γ = k in [1, FOCAL_INT_MAX], −1 FLSD-53; None
    where they do not handle it (fractional γ, which needs a power per element).

    Examples:
        >>> [native_gamma(g) for g in (None, 2.0, 3, "flsd-53", 0.5, 17)]
        [0, 2, 3, -1, None, None]
    """
    if gamma is None:
        return 0
    if not _int_gamma(gamma):  # the one rule of which γ are raised by multiplication
        return None
    return -1 if gamma == FLSD else int(float(gamma))


def use_native(x: torch.Tensor, softcap: float | None = None, gamma=None) -> bool:
    """Whether the native kernels should process ``x`` (see the module docstring)."""
    if (
        STATE.broken
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or softcap is not None
        or x.dim() != 2
        or not _rows_ok(x)
        or native_gamma(gamma) is None
        or torch.compiler.is_compiling()
    ):
        return False
    m = _ind.mode()
    if m in ("eager", "inductor"):
        return False
    return m == "native" or x.numel() >= _ind.MIN_NUMEL


def _rows_ok(t: torch.Tensor) -> bool:
    """Rows of unit column stride that do not overlap (what the kernels index)."""
    rows, cols = t.shape
    return (cols <= 1 or t.stride(1) == 1) and (rows <= 1 or t.stride(0) >= cols)


def _p(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _vec(t: torch.Tensor | None, dtype=torch.float32):
    """A contiguous (R,) / (K,) float32 (or uint8 for masks) copy, or None."""
    if t is None:
        return None
    if dtype is torch.uint8:
        t = t.to(torch.bool)
    return t.to(dtype).contiguous()


def _count(name: str) -> None:
    STATE.calls[name] = STATE.calls.get(name, 0) + 1


def _stats_raw(x, y, s, want_sx, want_sex=False, want_ses=False, gamma=None, order: int = 0):
    """(m, s1, t, x_y, sx, sex, ses, fs, fa, low, moments, st) or None when the library is
    unavailable. ``gamma``: the focal walk after the lse; ``order`` > 0 instead: the focal power
    sums up to it (E_1, Z_1, …; E_1 None without shares) and ``st``."""
    lib = _lib()
    if lib is None:
        return None
    rows, cols = x.shape
    new = lambda: torch.empty(rows, dtype=torch.float32)  # noqa: E731
    m, s1, t = new(), new(), new()
    sx = new() if want_sx or order else None
    sex, ses = (new() if want_sex else None), (new() if want_ses else None)
    code = 0 if order else native_gamma(gamma)
    x_y = x.gather(1, y[:, None].to(torch.long))[:, 0]  # out-of-range targets raise here
    fs, fa = (new(), new()) if code else (None, None)
    low = torch.zeros(rows, dtype=torch.uint8) if code == -1 else None
    mom = torch.empty(2 * order, rows, dtype=torch.float32) if order else None
    st = new() if order and s is not None else None
    sv = _vec(s)
    if rows:
        lib.ls_stats(x.data_ptr(), rows, cols, x.stride(0) if rows > 1 else cols, _p(sv),
                     x_y.data_ptr(), code, order, m.data_ptr(), s1.data_ptr(), t.data_ptr(),
                     _p(sx), _p(sex), _p(ses), _p(fs), _p(fa), _p(low), _p(mom), _p(st),
                     torch.get_num_threads())
    _count("stats")
    moments = []
    for k in range(order):
        moments += [mom[2 * k] if k or s is not None else None, mom[2 * k + 1]]
    return m, s1, t, x_y, sx, sex, ses, fs, fa, low, moments, st


def stats(x, y, s, share_on, mask, softcap, want_sx):
    """(ok, (m, sumexp, x_y, dsx_unscaled)) — as :func:`._fused_inductor.stats`."""
    res = _stats_raw(x, y, s, want_sx)
    if res is None:
        return False, None
    m, s1, t, x_y, sx = res[:5]
    return True, _ind.row_stats(m, s1, t, x_y, mask, sx)


def stats_terms(x, y, s, share_on, mask, softcap, want_sx, want_sex, want_ses, gamma=None,
                flsd_rows=False):
    """As :func:`._fused_inductor.stats_terms` (integer γ and FLSD-53 only). Integer γ ≤
    :data:`~labelsmooth.ops._terms.FOCAL_MOMENTS_MAX` take the focal sums from power sums of the
    same walk (:func:`._fused_inductor.focal_sums`, about four operations per element more);
    FLSD-53 and larger γ from a third walk over each row while it is in cache, with the row's
    own lse (where only the row's unique max can have p > ½: its terms are redone exactly)."""
    order = focal_moments_order(gamma)
    res = _stats_raw(x, y, s, want_sx, want_sex, want_ses, gamma, order)
    if res is None:
        return False, None
    m, s1, t, x_y, sx, sex, ses, fs, fa, low, moments, st = res
    base = _ind.row_stats(m, s1, t, x_y, mask, sx, sex, ses)
    if gamma is None:
        return True, base
    if order:
        fs, fa = _ind.focal_sums(gamma, None, x.shape[1], s, s1, t, st, sx, moments, m.dtype)
    low = low.to(torch.bool) if low is not None else torch.zeros_like(m, dtype=torch.bool)
    return True, (*base, fs, fa, low)


def _out_ok(x: torch.Tensor, out: torch.Tensor) -> bool:
    return out.dtype == torch.float32 and out.shape == x.shape and _rows_ok(out)


def grad(x, ref, a, b, s, bu, softcap, out, live):
    """ok — as :func:`._fused_inductor.grad` (the target column left to the caller)."""
    lib = _lib()
    if lib is None or not _out_ok(x, out):
        return False
    rows, cols = x.shape
    if rows:
        lv = _vec(live, torch.uint8)
        ref, a, b, bu, sv = _vec(ref), _vec(a), _vec(b), _vec(bu), _vec(s)
        lib.ls_grad(x.data_ptr(), rows, cols, x.stride(0) if rows > 1 else cols, ref.data_ptr(),
                    a.data_ptr(), _p(b), _p(sv), _p(bu), lv.data_ptr(), out.data_ptr(),
                    out.stride(0) if rows > 1 else cols, torch.get_num_threads())
    _count("grad")
    return True


def grad_terms(x, ref, lse, g, cp, cs, s, cps, cpx, low, live, out, gamma, softcap):
    """ok — as :func:`._fused_inductor.grad_terms` (integer γ and FLSD-53 only)."""
    lib = _lib()
    code = native_gamma(gamma)
    if lib is None or code is None or not _out_ok(x, out):
        return False
    rows, cols = x.shape
    if rows:
        lv = _vec(live, torch.uint8)
        lo = _vec(low, torch.uint8) if code == -1 else None
        ref, lse, g, cp, cs, sv, cps, cpx = (_vec(v) for v in (ref, lse, g, cp, cs, s, cps, cpx))
        lib.ls_grad_terms(x.data_ptr(), rows, cols, x.stride(0) if rows > 1 else cols,
                          ref.data_ptr(), lse.data_ptr(), g.data_ptr(), cp.data_ptr(), _p(cs),
                          _p(sv), _p(cps), _p(cpx), _p(lo), code, lv.data_ptr(), out.data_ptr(),
                          out.stride(0) if rows > 1 else cols, torch.get_num_threads())
    _count("grad_terms")
    return True
