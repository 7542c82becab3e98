"""The two-stage contract of labelsmooth.ops, provided by every implementation.

Stage one (``row_partials``) on column blocks, merged with ``_math.merge_partials``, must give the
whole row's statistics; stage two (``grad_rows``) on each block, given the merged statistics, must
give that block's slice of the whole row's gradient. Judged against float64 truth computed
densely here; Triton runs under TRITON_INTERPRET=1 on CPU tensors (small shapes).
"""

from __future__ import annotations

import pytest
import torch

from labelsmooth import ops
from labelsmooth.ops._math import grad_coef, merge_partials, rebase_partials, row_loss, row_ref

R, K = 6, 37
BLOCKS = [(0, 16), (16, 17), (17, 37)]  # uneven, one a single column


def _engines():
    out = ["reference", "fused"]
    if ops._available("triton", torch.device("cpu"), ops.BLOCKS):
        out.append("triton")
    return out


def _truth(x, y, valid, s, softcap, ct, cs, g):
    """Dense float64 loss rows and gradient of ct(lse − x_y) + cs Σ s_c (lse − x_c)."""
    x = x.double().clone().requires_grad_()
    xc = softcap * torch.tanh(x / softcap) if softcap is not None else x
    lse = torch.logsumexp(xc, 1)
    xy = torch.where(valid, xc.gather(1, torch.where(valid, y, 0)[:, None])[:, 0], 0.0)
    loss = ct.double() * (lse - xy) + cs.double() * ((lse[:, None] - xc) @ s.double())
    (dx,) = torch.autograd.grad((loss * g.double()).sum(), x)
    return loss.detach(), dx


@pytest.mark.parametrize("impl", _engines())
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("shares", ["uniform", "vector"])
def test_blocks_merge_to_the_whole_row(impl, softcap, shares):
    mod = ops.resolve(impl, torch.device("cpu"), ops.BLOCKS)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(R, K, generator=g) * 3 + 100.0  # an offset: statistics relative to the max
    y = torch.randint(0, K, (R,), generator=g)
    y[2] = 16  # the single-column block holds a target
    valid = torch.ones(R, dtype=torch.bool)
    valid[4] = False  # an "ignored" row: zero coefficients
    ct = torch.where(valid, 0.9, 0.0)
    cs = torch.where(valid, 1.0, 0.0)
    if shares == "uniform":
        s_vec, s, s_uniform = torch.full((K,), 0.1 / K), None, 0.1 / K
    else:
        s_vec = torch.rand(K, generator=g) * 0.01
        s_vec[5] = 0.0
        s, s_uniform = s_vec, 0.0
    gout = torch.rand(R, generator=g) + 0.5
    want_loss, want_dx = _truth(x, y, valid, s_vec, softcap, ct, cs, gout)

    stats, seen = None, None
    for c0, c1 in BLOCKS:
        mask = valid & (y >= c0) & (y < c1)
        part = mod.row_partials(x[:, c0:c1], torch.where(mask, y - c0, 0),
                                s[c0:c1] if s is not None else None, s_uniform, softcap, mask)
        assert part[1].dtype == torch.float64  # the sum of exponentials travels in float64
        s_b = float(s_vec[c0:c1].sum())
        stats, seen = (part, s_b) if stats is None else (merge_partials(stats, seen, part, s_b),
                                                          seen + s_b)
    m, se, xy, dsx = stats
    ref, lse_rel = row_ref(m), torch.log(se).float()
    big_s = float(s_vec.sum())
    loss = row_loss(ref, lse_rel, xy, dsx, big_s, ct, cs, None)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=2e-5)

    coef = grad_coef(ref + lse_rel, big_s, ct, cs, None)
    parts = []
    for c0, c1 in BLOCKS:
        mask = valid & (y >= c0) & (y < c1)
        xb = x[:, c0:c1].clone()
        out = mod.grad_rows(xb, torch.where(mask, y - c0, 0), lse_rel, coef, ct, cs,
                            s[c0:c1] if s is not None else None, s_uniform, softcap, gout, mask,
                            out=xb, ref=ref)  # in place, over the block's own logits
        assert out.data_ptr() == xb.data_ptr()
        parts.append(out)
    dx = torch.cat(parts, 1)
    torch.testing.assert_close(dx.double(), want_dx, rtol=1e-4, atol=1e-6)
    assert torch.equal(dx[4], torch.zeros(K))  # no coefficient: exactly zero


def test_resolve_is_the_one_dispatcher():
    cpu = torch.device("cpu")
    assert ops.resolve("auto", cpu, ops.BLOCKS) is ops.fused
    assert ops.resolve("reference", cpu, ops.BLOCKS) is ops.reference
    with pytest.raises(ValueError, match="`capability`"):
        ops.resolve("auto", cpu, "everything")
    with pytest.raises(ValueError, match="`impl`"):
        ops.resolve("cuda", cpu)
    assert not ops._available("triton", torch.device("meta"), ops.BLOCKS)


# --- the optional terms in the contract (issue 16 item 1) -----------------------------------------

from labelsmooth.ops import _terms as T  # noqa: E402

TERM_SETS = {
    "cp": dict(confidence_penalty=0.7),
    "poly": dict(poly=1.5),
    "poly-neg": dict(poly=-0.5),
    "focal2": dict(focal_gamma=2.0),
    "focal-frac": dict(focal_gamma=0.5),
    "flsd": dict(focal_gamma="flsd-53"),
    "all": dict(confidence_penalty=0.3, poly=0.5, focal_gamma=1.0),
}
SPLITS = {"whole": [(0, K)], "two": [(0, 20), (20, K)], "three": BLOCKS}


def _term_engines():
    return [e for e in _engines()
            if ops._available(e, torch.device("cpu"), ops.BLOCK_TERMS)]


def compose_terms(mod, x, y, valid, s, s_uniform, softcap, ct, cs, cz, w, terms, g, blocks,
                  inplace=True):
    """The single-device composition of the contract with terms, as every caller writes it:
    stage one per block + merge, focal stage per block (SUM), loss, coefficients, stage two."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    smoothing = s is not None or s_uniform != 0.0
    stats, seen = None, None
    big_s = (s.sum() if s is not None else s_uniform * x.shape[1])

    def sub(c0, c1):
        mask = valid & (y >= c0) & (y < c1)
        return mask, torch.where(mask, y - c0, 0), (s[c0:c1] if s is not None else None)

    for c0, c1 in blocks:
        mask, yb, sb = sub(c0, c1)
        part = mod.row_partials(x[:, c0:c1], yb, sb, s_uniform, softcap, mask, terms=terms)
        assert len(part) == 6 and part[1].dtype == torch.float64
        s_b = sb.sum() if sb is not None else s_uniform * (c1 - c0)
        stats, seen = (part, s_b) if stats is None else (merge_partials(stats, seen, part, s_b),
                                                          seen + s_b)
    m, se, xy, dsx, sex, ses = stats
    ref, L = row_ref(m.to(acc)), torch.log(se).to(acc)
    low = T.flsd_rows(terms, ref, L, xy.to(acc))
    focal = None
    if terms.focal:
        fs = a_s = 0.0
        for c0, c1 in blocks:
            _, _, sb = sub(c0, c1)
            f_b, a_b = mod.focal_partials(x[:, c0:c1], L, terms.focal_gamma, sb, s_uniform,
                                          softcap, ref=ref, low=low)
            fs, a_s = fs + f_b, a_s + a_b
        focal = (fs, a_s)
    kw = dict(w=w, sex=sex, ses=ses, sumexp=se, focal=focal, low=low)
    csn = cs if smoothing else None
    loss = T.row_terms_loss(ref, L, xy, dsx if smoothing else None, big_s, ct, csn, cz, terms,
                            **kw)
    cp, coefs = T.term_coefs(ref, L, xy, big_s, ct, csn, cz, terms, shares_vector=s is not None,
                             s_uniform=s_uniform, **kw)
    parts = []
    for c0, c1 in blocks:
        mask, yb, sb = sub(c0, c1)
        xb = x[:, c0:c1].clone()
        out = mod.grad_rows(xb, yb, L, cp, ct, cs, sb, s_uniform, softcap, g, mask,
                            out=xb if inplace else None, ref=ref, terms=coefs)
        if inplace:
            assert out.data_ptr() == xb.data_ptr()
        parts.append(out)
    return loss, torch.cat(parts, 1)


def _term_case(seed, shares, weights, ignore, zloss, offset=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(R, K, generator=g, dtype=torch.float64) * 3 + offset).to(dtype)
    x[1, 3] = -torch.inf  # a −inf logit on a live row (a masked class: zero share below)
    y = torch.randint(0, K, (R,), generator=g)
    y[2] = 16  # the single-column block holds a target
    y[1] = 0
    valid = torch.ones(R, dtype=torch.bool)
    if ignore:
        valid[4] = False
        x[4, :5] = torch.nan  # padding of an ignored row: its gradient must still be exactly 0
        x[4, 7] = torch.inf
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    wy = torch.ones(R, dtype=torch.float64)
    if weights:
        wy = torch.rand(R, generator=g, dtype=torch.float64) + 0.5
    wy = torch.where(valid, wy, 0.0)
    eps = 0.2
    ct, cs = ((1 - eps) * wy).to(acc), wy.to(acc)
    if shares == "none":
        s_vec, s, su, cs = torch.zeros(K, dtype=torch.float64), None, 0.0, torch.zeros_like(cs)
    elif shares == "uniform":
        s_vec, s, su = torch.full((K,), eps / K, dtype=torch.float64), None, eps / K
        x[1, 3] = -30.0  # uniform shares put mass on every class: no −inf logit then
    else:
        s_vec = torch.rand(K, generator=g, dtype=torch.float64)
        s_vec[3] = 0.0
        s_vec = eps * s_vec / s_vec.sum()
        s, su = s_vec.to(acc), 0.0
    cz = (1e-2 * wy).to(acc) if zloss else None
    gout = (torch.rand(R, generator=g, dtype=torch.float64) + 0.5).to(acc)
    return x, y, valid, s_vec, s, su, ct, cs, cz, wy.to(acc), gout


def _oracle(x, y, valid, s_vec, shares, su, softcap, ct, cs, cz, w, terms, gout):
    """float64 dense truth: reference.index_rows with terms, i.e. autograd through term_rows."""
    leaf = x.double().clone().requires_grad_()
    s64 = s_vec.double() if shares == "vector" else None
    su64 = su if shares == "uniform" else 0.0
    loss, _ = ops.reference.index_rows(
        leaf, torch.where(valid, y, 0), ct.double(), cs.double(), s64, su64,
        None if cz is None else cz.double(), softcap, terms=terms, row_scale=w.double())
    (dx,) = torch.autograd.grad((loss * gout.double()).sum(), leaf)
    return loss.detach(), dx


@pytest.mark.parametrize("impl", _term_engines())
@pytest.mark.parametrize("tname", list(TERM_SETS))
@pytest.mark.parametrize("shares", ["none", "uniform", "vector"])
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("variant", ["plain", "weights-ignore", "zloss-softcap"])
def test_terms_blocks_merge_to_the_dense_oracle(impl, tname, shares, split, variant):
    mod = ops.resolve(impl, torch.device("cpu"), ops.BLOCKS)
    terms = T.check_terms(**TERM_SETS[tname])
    weights = ignore = variant == "weights-ignore"
    zloss = softcap = None
    if variant == "zloss-softcap":
        zloss, softcap = True, 3.0
    x, y, valid, s_vec, s, su, ct, cs, cz, w, gout = _term_case(
        hash((tname, shares, split, variant)) % 1000, shares, weights, ignore, zloss,
        offset=100.0)
    want_loss, want_dx = _oracle(x, y, valid, s_vec, shares, su, softcap, ct, cs, cz, w, terms,
                                 gout)
    loss, dx = compose_terms(mod, x, y, valid, s, su, softcap, ct, cs, cz, w, terms, gout,
                             SPLITS[split])
    live = valid
    torch.testing.assert_close(loss[live].double(), want_loss[live], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dx.double(), want_dx, rtol=1e-4, atol=2e-6)
    if ignore:  # no coefficient: exactly zero, whatever the padding holds
        assert torch.equal(dx[4], torch.zeros(K))


@pytest.mark.parametrize("impl", _term_engines())
@pytest.mark.parametrize("tname", list(TERM_SETS))
def test_terms_float64_blocks_are_exact(impl, tname):
    """In float64 the composition equals the oracle to rounding (every formula, every split)."""
    mod = ops.resolve(impl, torch.device("cpu"), ops.BLOCKS)
    terms = T.check_terms(**TERM_SETS[tname])
    x, y, valid, s_vec, s, su, ct, cs, cz, w, gout = _term_case(
        7, "vector", True, True, True, dtype=torch.float64)
    want_loss, want_dx = _oracle(x, y, valid, s_vec, "vector", su, 2.0, ct, cs, cz, w, terms, gout)
    for blocks in SPLITS.values():
        loss, dx = compose_terms(mod, x, y, valid, s, su, 2.0, ct, cs, cz, w, terms, gout, blocks,
                                 inplace=False)
        torch.testing.assert_close(loss[valid], want_loss[valid], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dx, want_dx, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", _term_engines())
def test_terms_confident_rows_keep_their_digits(impl):
    """p_y → 1 (a margin of 20): the terms' 1 − p_y ≈ 2e-9 come from expm1, not from 1 − p."""
    mod = ops.resolve(impl, torch.device("cpu"), ops.BLOCKS)
    x = torch.zeros(3, 8)
    x[:, 2] = 20.0
    x[1] += 1e4  # and a large offset
    y = torch.full((3,), 2)
    one = torch.ones(3)
    valid = torch.ones(3, dtype=torch.bool)
    for kw in (dict(focal_gamma=1.0), dict(poly=1.0), dict(focal_gamma="flsd-53", poly=2.0)):
        terms = T.check_terms(**kw)
        loss, dx = compose_terms(mod, x, y, valid, None, 0.0, None, one, 0 * one, None, one,
                                 terms, one, [(0, 5), (5, 8)], inplace=False)
        want, want_dx = _oracle(x, y, valid, torch.zeros(8), "none", 0.0, None, one, 0 * one,
                                None, one, terms, one)
        torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)
        torch.testing.assert_close(dx.double(), want_dx, rtol=1e-4, atol=1e-12)


def test_rebase_partials_is_the_merge_rescale():
    """merge = rebase both blocks to the union's reference and add (the all-reduce's form)."""
    x = torch.randn(4, 9, dtype=torch.float64) * 4
    x[0, :4] = -torch.inf  # an all −inf block row: it contributes exactly 0
    s = torch.rand(9, dtype=torch.float64)
    terms = T.check_terms(confidence_penalty=1.0, poly=1.0)
    y = torch.zeros(4, dtype=torch.long)
    a = ops.reference.row_partials(x[:, :4], y, s[:4], 0.0, None, terms=terms)
    b = ops.reference.row_partials(x[:, 4:], y, s[4:], 0.0, None, torch.zeros(4, dtype=torch.bool),
                                   terms=terms)
    whole = ops.reference.row_partials(x, y, s, 0.0, None, terms=terms)
    merged = merge_partials(a, s[:4].sum(), b, s[4:].sum())
    for got, want in zip(merged[1:], whole[1:]):
        torch.testing.assert_close(got, want)
    new = row_ref(whole[0])
    ra = rebase_partials(a, s[:4].sum(), new)
    rb = rebase_partials(b, s[4:].sum(), new)
    for i in (1, 3, 4, 5):
        torch.testing.assert_close(ra[i] + rb[i], whole[i])
    assert torch.isfinite(ra[4]).all() and ra[4][0] == 0 and ra[5][0] == 0
