"""spatial_smooth_targets (SVLS): against the paper's dense kernel applied with a full 2-D / 3-D
convolution (replicate padding, as the authors' code), hand values, ignore_index and properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls


def dense_kernel(ndim: int, size: int, sigma: float, kind: str) -> torch.Tensor:
    """The full kernel built on a grid, the way the SVLS code does (not separably), float64."""
    grids = torch.meshgrid(*[torch.arange(size, dtype=torch.float64)] * ndim, indexing="ij")
    mean = (size - 1) / 2
    d2 = sum((g - mean) ** 2 for g in grids)
    k = torch.exp(-d2 / (2 * sigma**2))
    k = k / k.sum()
    if kind == "svls":
        c = (size // 2,) * ndim
        neighbours = 1 - k[c]
        k[c] = neighbours
        k = k / k.sum()
    return k


def dense_svls(y: torch.Tensor, k: int, size: int, sigma: float, kind: str) -> torch.Tensor:
    ndim = y.dim() - 1
    onehot = F.one_hot(y, k).movedim(-1, 1).double()
    w = dense_kernel(ndim, size, sigma, kind)
    w = w.expand(k, 1, *w.shape).contiguous()
    r = size // 2
    padded = F.pad(onehot, (r,) * (2 * ndim), mode="replicate")
    conv = F.conv2d if ndim == 2 else F.conv3d
    return conv(padded, w, groups=k)


@pytest.mark.parametrize("kind", ["svls", "gaussian"])
@pytest.mark.parametrize("size,sigma", [(3, 1.0), (5, 0.7), (3, 3.0)])
def test_matches_dense_kernel_2d(kind, size, sigma):
    y = torch.randint(0, 4, (2, 9, 11))
    ours = ls.spatial_smooth_targets(y, 4, sigma, kernel_size=size, kernel=kind,
                                     dtype=torch.float64)
    torch.testing.assert_close(ours, dense_svls(y, 4, size, sigma, kind), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["svls", "gaussian"])
def test_matches_dense_kernel_3d(kind):
    y = torch.randint(0, 3, (2, 5, 6, 7))
    ours = ls.spatial_smooth_targets(y, 3, 1.0, kernel=kind, dtype=torch.float64)
    assert ours.shape == (2, 3, 5, 6, 7)
    torch.testing.assert_close(ours, dense_svls(y, 3, 3, 1.0, kind), rtol=1e-12, atol=1e-14)
    f32 = ls.spatial_smooth_targets(y, 3, 1.0, kernel=kind)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), ours, rtol=1e-6, atol=1e-7)


def test_hand_values():
    # σ = 1, 3×3 window: g = [e^-½, 1, e^-½]/(1 + 2e^-½) = [0.274069, 0.451863, 0.274069];
    # centre weight of G: g_c = 0.451863² = 0.204180.
    g0 = 1 / (1 + 2 * math.exp(-0.5))
    g1 = math.exp(-0.5) * g0
    gc = g0 * g0
    y = torch.zeros(1, 5, 5, dtype=torch.long)
    y[0, 2, 2] = 1
    q = ls.spatial_smooth_targets(y, 2, 1.0, dtype=torch.float64)
    assert abs(float(q[0, 1, 2, 2]) - 0.5) < 1e-15  # SVLS keeps half on the pixel's own label
    assert abs(float(q[0, 1, 2, 3]) - g1 * g0 / (2 * (1 - gc))) < 1e-15  # 0.077810
    assert abs(float(q[0, 1, 1, 1]) - g1 * g1 / (2 * (1 - gc))) < 1e-15  # 0.047193
    assert float(q[0, 1, 0, 0]) == 0.0
    gauss = ls.spatial_smooth_targets(y, 2, 1.0, kernel="gaussian", dtype=torch.float64)
    assert abs(float(gauss[0, 1, 2, 2]) - gc) < 1e-15


def test_properties():
    y = torch.randint(0, 5, (3, 8, 8))
    q = ls.spatial_smooth_targets(y, 5, 1.5)
    torch.testing.assert_close(q.sum(1), torch.ones(3, 8, 8))
    assert (q >= 0).all()
    # SVLS: at least half the mass on the pixel's own label, whatever its neighbours
    assert (q.gather(1, y.unsqueeze(1)) >= 0.5 - 1e-6).all()
    # a uniform region keeps its one-hot target (no smoothing inside objects)
    flat = torch.full((1, 6, 6), 2)
    torch.testing.assert_close(ls.spatial_smooth_targets(flat, 3, 2.0),
                               F.one_hot(flat, 3).movedim(-1, 1).float())
    # anisotropic σ: with the plain Gaussian, a map varying only along W is unaffected by σ along
    # H (the SVLS kernel is not: its centre weight depends on every σ)
    stripes = torch.arange(6).remainder(2).expand(1, 4, 6)
    a = ls.spatial_smooth_targets(stripes, 2, (0.3, 1.0), kernel="gaussian")
    b = ls.spatial_smooth_targets(stripes, 2, (5.0, 1.0), kernel="gaussian")
    torch.testing.assert_close(a, b)
    c = ls.spatial_smooth_targets(stripes, 2, (5.0, 1.0))
    assert not torch.allclose(c, b)


def test_ignore_index_renormalises_over_annotated_neighbours():
    y = torch.randint(0, 3, (2, 7, 7))
    y[0, 3, :] = 255
    y[1, 0, 0] = 255
    q = ls.spatial_smooth_targets(y, 3, 1.0, ignore_index=255, dtype=torch.float64)
    ignored = (y == 255).unsqueeze(1).expand_as(q)
    assert torch.equal(q[ignored], torch.zeros(int(ignored.sum()), dtype=torch.float64))
    kept = y != 255
    torch.testing.assert_close(q.sum(1)[kept], torch.ones(int(kept.sum()), dtype=torch.float64))
    # literal formula at one pixel next to the ignored row: Σ_v k(v) m(u+v)[y=c] / Σ_v k(v) m(u+v)
    k = dense_kernel(2, 3, 1.0, "svls")
    u = (2, 4)
    num = torch.zeros(3, dtype=torch.float64)
    den = 0.0
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            i, j = min(max(u[0] + di, 0), 6), min(max(u[1] + dj, 0), 6)
            if y[0, i, j] != 255:
                num[y[0, i, j]] += k[di + 1, dj + 1]
                den += float(k[di + 1, dj + 1])
    torch.testing.assert_close(q[0, :, u[0], u[1]], num / den)
    # usable as a probability target: ignored pixels add neither loss nor gradient
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    loss = ls.cross_entropy(x, q, reduction="sum") / kept.sum()
    loss.backward()
    assert torch.equal(x.grad[ignored], torch.zeros(int(ignored.sum()), dtype=torch.float64))
    ref = -(q * torch.log_softmax(x.detach(), 1)).sum(1)[kept].mean()
    torch.testing.assert_close(loss.detach(), ref)


def test_errors():
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="`target`"):
        ls.spatial_smooth_targets(y.float(), 2)
    with pytest.raises(ValueError, match="`target`"):
        ls.spatial_smooth_targets(torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        ls.spatial_smooth_targets(y + 2, 2)
    with pytest.raises(ValueError, match="`sigma`"):
        ls.spatial_smooth_targets(y, 2, 0.0)
    with pytest.raises(ValueError, match="`sigma`"):
        ls.spatial_smooth_targets(y, 2, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="`kernel_size`"):
        ls.spatial_smooth_targets(y, 2, kernel_size=4)
    with pytest.raises(ValueError, match="`kernel`"):
        ls.spatial_smooth_targets(y, 2, kernel="box")
    with pytest.raises(ValueError, match="`num_classes`"):
        ls.spatial_smooth_targets(y, 0)
    with pytest.raises(TypeError, match="`dtype`"):
        ls.spatial_smooth_targets(y, 2, dtype=torch.long)
