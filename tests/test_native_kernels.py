"""The hand-written CPU kernels of the fused engine (labelsmooth/ops/_fused_native.cpp).

Forced at every size with LABELSMOOTH_FUSED_KERNELS=native and checked against the chunked eager
path (itself checked against the reference and torch elsewhere), against float64 truth where the
kernels claim more than the eager path, and for their fallbacks. Every test that claims the native
kernels ran checks their call counters."""

from __future__ import annotations

import math
import subprocess

import pytest
import torch

import labelsmooth as ls
from labelsmooth.ops import _fused_chunks as chunks
from labelsmooth.ops import _fused_native as nat
from labelsmooth.ops import _terms as T

pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")


def _native_or_skip():
    if nat._lib() is None:
        pytest.skip("native kernels unavailable here (no C++ compiler with OpenMP)")


def _calls() -> dict:
    return dict(nat.STATE.calls)


def _ran(before: dict, *names: str) -> bool:
    return all(nat.STATE.calls.get(n, 0) > before.get(n, 0) for n in names)


def _loss_grad(x, y, g, kernels, monkeypatch, **kw):
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", kernels)
    act = x.detach().clone().requires_grad_() * 1.0  # an activation: in place may write it
    loss = ls.cross_entropy(act, y, impl="fused", reduction="none", **kw)
    (gx,) = torch.autograd.grad(loss, act, g)
    return loss.detach(), gx


def _prior(k: int, zero_at: int | None = 1) -> torch.Tensor:
    p = torch.rand(k) + 0.1
    if zero_at is not None and k > zero_at:
        p[zero_at] = 0.0
    return p / p.sum()


OPTION_SETS = {
    "plain": lambda k: dict(),
    "ls": lambda k: dict(label_smoothing=0.1),
    "ls-others-weight-ignore-zloss": lambda k: dict(
        label_smoothing=0.2, spread="others", weight=torch.rand(k) + 0.5,
        ignore_index=0, z_loss=1e-2),
    "prior": lambda k: dict(label_smoothing=0.3, prior=_prior(k)),
    "penalty": lambda k: dict(label_smoothing=0.1, confidence_penalty=0.4),
    "poly": lambda k: dict(label_smoothing=0.1, poly=1.0),
    "poly-prior": lambda k: dict(label_smoothing=0.1, poly=0.5, prior=_prior(k)),
    "focal1": lambda k: dict(label_smoothing=0.1, focal_gamma=1),
    "focal2": lambda k: dict(label_smoothing=0.1, focal_gamma=2.0),
    "focal4-noeps": lambda k: dict(focal_gamma=4),
    "focal7": lambda k: dict(label_smoothing=0.2, focal_gamma=7),
    "flsd": lambda k: dict(label_smoothing=0.1, focal_gamma="flsd-53"),
    "all-prior": lambda k: dict(label_smoothing=0.2, prior=_prior(k), focal_gamma=3,
                                confidence_penalty=0.2, poly=0.3, z_loss=1e-3,
                                weight=torch.rand(k) + 0.5),
}


@pytest.mark.parametrize("shape", [(5, 1), (3, 7), (9, 16), (7, 17), (6, 333)], ids=str)
@pytest.mark.parametrize("opt", list(OPTION_SETS))
@pytest.mark.parametrize("inplace", [False, True])
def test_native_matches_eager(shape, opt, inplace, monkeypatch):
    """Every lane layout (K < 16, a multiple of 16, a tail) × every term, in and out of place."""
    _native_or_skip()
    torch.manual_seed(hash((shape, opt)) % 2**31)
    r, k = shape
    x = torch.randn(r, k) * 3
    y = torch.randint(0, k, (r,))
    g = torch.randn(r)
    kw = OPTION_SETS[opt](k)
    if k == 1:
        kw.pop("spread", None)  # "others" needs two classes
    if kw.get("ignore_index") is not None and r > 1:
        y[1] = kw["ignore_index"]
    kw["inplace_backward"] = inplace
    want = _loss_grad(x, y, g, "eager", monkeypatch, **kw)
    before = _calls()
    got = _loss_grad(x, y, g, "native", monkeypatch, **kw)
    assert _ran(before, "stats")
    assert _ran(before, "grad") or _ran(before, "grad_terms")
    torch.testing.assert_close(got[0], want[0], rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


def _edge_rows() -> tuple[torch.Tensor, torch.Tensor]:
    k = 37
    x = torch.randn(8, k) * 2
    x[0, 3] = -math.inf                  # a masked column
    x[1] = -math.inf                     # an all −inf row
    x[2, 5] = math.inf                   # +inf: NaN row, as torch
    x[3, 6] = math.nan                   # NaN: NaN row
    x[4, :4] = 9.0                       # a four-way tie at the max
    x[5, 30] = x[5].amax() + 25.0        # confident: p_max ≈ 1 − 1e-10
    x[6] += 1e5                          # a large offset
    x[7, 36] = x[7].amax() + 3.0         # the max in the tail lanes
    y = torch.tensor([3, 0, 5, 1, 2, 30, 4, 36])
    return x, y


@pytest.mark.parametrize("opt", ["plain", "ls", "prior", "penalty", "focal2", "flsd",
                                 "all-prior"])
def test_native_edge_rows_match_eager(opt, monkeypatch):
    """Non-finite values, ties at the max, confident rows and offsets: the same loss and gradient
    (NaN where eager has NaN, inf where it has inf)."""
    _native_or_skip()
    torch.manual_seed(1)
    x, y = _edge_rows()
    g = torch.randn(8)
    kw = OPTION_SETS[opt](x.shape[1])
    want = _loss_grad(x, y, g, "eager", monkeypatch, **kw)
    before = _calls()
    got = _loss_grad(x, y, g, "native", monkeypatch, **kw)
    assert _ran(before, "stats")
    torch.testing.assert_close(got[0], want[0], rtol=2e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_native_row_statistics_of_edge_rows():
    """The raw statistics: the max (NaN for a NaN row), the tie count, and the sum without the
    ties, against float64."""
    _native_or_skip()
    x, y = _edge_rows()
    m, s1, t, x_y, sx = nat._stats_raw(x, y, None, True, False, False, None)[:5]
    x64 = x.double()
    assert torch.isnan(m[3]) and m[2] == math.inf and m[1] == -math.inf
    assert t.tolist()[:2] == [1.0, 0.0] and t[4] == 4.0 and t[5] == 1.0
    for r in (0, 4, 5, 6, 7):
        z = x64[r] - x64[r].max()
        assert float(s1[r]) == pytest.approx(float(z[z < 0].exp().sum()), rel=1e-6)
        assert float(sx[r]) == pytest.approx(float(-z.sum()), rel=1e-6)  # inf in row 0
    assert float(s1[5]) == pytest.approx(float((x64[5] - x64[5].max()).exp().sum() - 1), rel=1e-6)
    assert torch.equal(x_y, x.gather(1, y[:, None])[:, 0])


def test_native_exp_accuracy():
    """The inline exponential, through the plain gradient kernel (out = 1·e^(x − 0)): at most
    2 ulp from float64 over [−103, 0] (subnormals included), exactly 0 at and below −110 and at
    −inf, NaN kept."""
    _native_or_skip()
    xs = torch.cat([torch.linspace(-103.0, 0.0, 200_003), torch.tensor([-110.0, -500.0])])
    x = torch.cat([xs, torch.tensor([-math.inf, math.nan])])[None, :].contiguous()
    out = torch.empty_like(x)
    one = torch.ones(1)
    assert nat.grad(x, torch.zeros(1), one, None, None, None, None, out, torch.ones(1, dtype=bool))
    got, truth = out[0].double(), x[0].double().exp()
    normal = truth >= torch.finfo(torch.float32).tiny
    ulp = (truth[normal].float().nextafter(torch.tensor(math.inf)).double() - truth[normal])
    assert ((got[normal] - truth[normal]).abs() / ulp).max() <= 2.0
    sub = ~normal & (x[0] > -104)
    assert ((got[sub] - truth[sub]).abs() <= 2 * 2.0**-149).all()
    assert got[-4:-1].tolist() == [0.0, 0.0, 0.0] and math.isnan(got[-1])


@pytest.mark.parametrize("gamma, path", [(1, "walk"), (2, "walk"), (3, "walk"), (5, "walk"),
                                         (7, "walk"), ("flsd-53", "walk"), (1, "moments"),
                                         (2, "moments"), (3, "moments")])
@pytest.mark.parametrize("shares", ["uniform", "max-only", "prior"])
def test_native_focal_sums_against_float64(gamma, path, shares):
    """Σ s fg and Σ s a of the kernel against float64, from its focal walk after the lse and
    (integer γ ≤ 3, what stats_terms takes) from its power sums: a confident row whose max has
    p = 1 − 1e-5 (1 − p in float32 would keep one digit of u there: the walk swaps in u = s1/S,
    the power sums keep the ties apart), a row with ties, an ordinary row; with the shares on the
    max column only, that column is the whole sum."""
    _native_or_skip()
    torch.manual_seed(2)
    k = 40
    x = torch.randn(3, k)
    x[0, 17] = 0.0
    x[0] = x[0] - x[0].amax()
    x[0, 17] = math.log(1e5 * float(x[0].exp().sum() - 1))  # p_max ≈ 1 − 1e-5
    x[1, :3] = x[1].amax() + 1.0
    y = torch.tensor([17, 0, 5])
    s = {"uniform": None, "prior": _prior(k, zero_at=4),
         "max-only": torch.nn.functional.one_hot(torch.tensor(17), k).float()}[shares]
    if path == "walk":
        res = nat._stats_raw(x, y, s, True, False, False, gamma)
        fs, fa, low = res[7], res[8], res[9]
    else:
        before = _calls()
        ok, res = nat.stats_terms(x, y, s, None, None, None, True, False, False, gamma)
        assert ok and _ran(before, "stats")
        fs, fa, low = res[6], res[7], None
    z = x.double() - x.double().amax(1, keepdim=True)
    top = torch.nn.functional.one_hot(z.argmax(1), k).bool()
    L = torch.log1p(torch.where(top, torch.zeros_like(z), z.exp()).sum(1, keepdim=True))
    lw = None
    if gamma == "flsd-53":
        lw = T.flsd_low(torch.exp(z.gather(1, y[:, None]) - L))
        assert torch.equal(low.bool(), lw[:, 0])
    _, fg, a = T.focal_elems(z, L, gamma, lw)
    w = torch.ones(k, dtype=torch.float64) if s is None else s.double()
    rows = [0] if shares == "max-only" else [0, 1, 2]
    want_f = (w * fg).sum(1)
    want_a = (w * a).sum(1)
    torch.testing.assert_close(fs.double()[rows], want_f[rows], rtol=2e-6, atol=0)
    torch.testing.assert_close(fa.double()[rows], want_a[rows], rtol=2e-6, atol=0)


def test_native_strided_rows_and_fallbacks(monkeypatch):
    """Rows with a larger stride run native; column-strided, bfloat16, float64, soft-capped and
    fractional-γ inputs take the chunked path (same values, no native call)."""
    _native_or_skip()
    torch.manual_seed(3)
    wide = torch.randn(6, 40)
    x, y, g = wide[:, :33], torch.randint(0, 33, (6,)), torch.randn(6)
    want = _loss_grad(x.contiguous(), y, g, "eager", monkeypatch, label_smoothing=0.1)
    before = _calls()
    got = _loss_grad(x, y, g, "native", monkeypatch, label_smoothing=0.1)
    assert _ran(before, "stats", "grad")
    torch.testing.assert_close(got, want)
    assert nat.use_native(x) and nat.use_native(wide[:, :1])
    assert not nat.use_native(wide.t())  # column stride 40
    for case in (x.bfloat16(), x.double()):
        assert not nat.use_native(case)
    assert not nat.use_native(x, softcap=5.0)
    assert not nat.use_native(x, gamma=0.5)
    assert nat.use_native(x, gamma="flsd-53") and nat.use_native(x, gamma=16)
    for kw in (dict(focal_gamma=0.5), dict(softcap=5.0)):
        want = _loss_grad(x, y, g, "eager", monkeypatch, label_smoothing=0.1, **kw)
        before = _calls()
        got = _loss_grad(x, y, g, "native", monkeypatch, label_smoothing=0.1, **kw)
        torch.testing.assert_close(got, want)
        # fractional γ: the plain statistics may run native, the focal parts may not
        assert nat.STATE.calls.get("grad_terms") == before.get("grad_terms")
        if "softcap" in kw:
            assert _calls() == before


def test_native_follows_the_setting(monkeypatch):
    """auto: only from MIN_NUMEL elements; eager and inductor: never."""
    _native_or_skip()
    x = torch.randn(4, 8)
    for mode, want in (("auto", False), ("eager", False), ("inductor", False), ("native", True)):
        monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", mode)
        assert nat.use_native(x) is want
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "auto")
    monkeypatch.setattr(chunks._ind, "MIN_NUMEL", 32)
    assert nat.use_native(x)
    assert chunks.fast_kernels(x) == [nat, chunks._ind]


def test_native_results_do_not_depend_on_threads(monkeypatch):
    """Each row is one thread's work: 1 and 2 threads give bitwise the same loss and gradient."""
    _native_or_skip()
    torch.manual_seed(4)
    x, y, g = torch.randn(64, 300), torch.randint(0, 300, (64,)), torch.randn(64)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _loss_grad(x, y, g, "native", monkeypatch, label_smoothing=0.1, focal_gamma=2)
        torch.set_num_threads(2)
        two = _loss_grad(x, y, g, "native", monkeypatch, label_smoothing=0.1, focal_gamma=2)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_native_build_failure_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(nat, "STATE", nat.NativeState())
    monkeypatch.setenv("LABELSMOOTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # runs, fails
    monkeypatch.setenv("LABELSMOOTH_FUSED_KERNELS", "native")
    x, y = torch.randn(5, 8), torch.randint(0, 8, (5,))
    with pytest.warns(RuntimeWarning, match="native fused kernels are unavailable"):
        got = ls.cross_entropy(x, y, label_smoothing=0.1, impl="fused")
    assert nat.STATE.broken and not nat.use_native(x)
    want = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
    torch.testing.assert_close(got, want)
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # does not run at all
    monkeypatch.setattr(nat, "STATE", nat.NativeState())
    with pytest.warns(RuntimeWarning, match="native fused kernels are unavailable"):
        assert nat._lib() is None


_STUB = """
extern "C" {
void ls_stats() {}
void ls_grad() {}
void ls_grad_terms() {}
}
"""


def test_native_build_is_cached(monkeypatch, tmp_path):
    """A second process (a fresh state) loads the cached library without compiling (a stub source
    with the three entry points: the caching, not the kernels, is under test)."""
    _native_or_skip()
    stub = tmp_path / "stub.cpp"
    stub.write_text(_STUB)
    monkeypatch.setattr(nat, "_SOURCE", stub)
    monkeypatch.setenv("LABELSMOOTH_CACHE_DIR", str(tmp_path / "cache"))
    compiles = []
    real_run = subprocess.run

    def spy(cmd, *a, **k):
        if "-o" in cmd:
            compiles.append(cmd)
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(nat.subprocess, "run", spy)
    for _ in range(2):
        monkeypatch.setattr(nat, "STATE", nat.NativeState())
        assert nat._lib() is not None
    assert len(compiles) == 1
    assert len(list((tmp_path / "cache").glob("fused_native_*.so"))) == 1


def test_native_cache_dir_falls_back_when_unwritable(monkeypatch, tmp_path):
    _native_or_skip()
    stub = tmp_path / "stub.cpp"
    stub.write_text(_STUB)
    monkeypatch.setattr(nat, "_SOURCE", stub)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("LABELSMOOTH_CACHE_DIR", str(blocked / "sub"))
    monkeypatch.setattr(nat, "STATE", nat.NativeState())
    assert nat._lib() is not None and not nat.STATE.broken


def test_native_portable_path(monkeypatch):
    """The path without AVX-512 (exponent bits instead of vscalefps, as on AVX2 or ARM machines),
    built here with -mno-avx512f (in the usual cache: built once per machine, ~25 s): the same
    exponential accuracy and the same losses."""
    _native_or_skip()
    if "avx512f" not in nat._cpu_flags():
        pytest.skip("the default build already is the portable path here")
    monkeypatch.setenv("LABELSMOOTH_NATIVE_CXXFLAGS", "-mno-avx512f")
    monkeypatch.setattr(nat, "STATE", nat.NativeState())
    test_native_exp_accuracy()
    test_native_edge_rows_match_eager("all-prior", monkeypatch)
    test_native_focal_sums_against_float64("flsd-53", "walk", "max-only")
    test_native_focal_sums_against_float64(2, "moments", "max-only")
    assert not nat.STATE.broken
