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
from labelsmooth.ops._math import grad_coef, merge_partials, row_loss, row_ref

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
