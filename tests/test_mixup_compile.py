"""Mixup with λ as a float, a 0-d tensor or per sample; under torch.compile; CutMix's box and λ."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import labelsmooth as ls
from labelsmooth.targets import cutmix, cutmix_box

YA, YB = torch.tensor([0, 1, 2, 4]), torch.tensor([3, 4, 0, 4])


def reference(ya, yb, lam, k, eps):
    """float64 oracle: mix the one-hots, then torch's smoothing (ε/K to every class)."""
    lam = torch.as_tensor(lam, dtype=torch.float64)
    lam = lam.reshape(lam.shape + (1,) * (ya.dim() + 1 - lam.dim()))
    mixed = lam * F.one_hot(ya, k).double() + (1 - lam) * F.one_hot(yb, k).double()
    return mixed * (1 - eps) + eps / k


@pytest.mark.parametrize("lam", [0.3, torch.tensor(0.3), torch.tensor(0.3, dtype=torch.float64),
                                 torch.tensor([0.0, 0.25, 0.5, 1.0])])
def test_lam_as_float_scalar_tensor_or_per_sample(lam):
    got = ls.mixup_targets(YA, YB, lam, 5, 0.1)
    want = reference(YA, YB, lam, 5, 0.1)
    assert got.dtype == (torch.float64 if isinstance(lam, torch.Tensor)
                         and lam.dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), want, atol=1e-7, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(4, dtype=got.dtype))


def test_per_sample_lam_hand_values_and_beta_sample():
    # λ = (1, 0.25): row 0 is y_a; row 1 is 0.25·e_0 + 0.75·e_2, then ε = 0.3 over K = 3.
    got = ls.mixup_targets(torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([1.0, 0.25]),
                           3, 0.3)
    torch.testing.assert_close(got, torch.tensor([[0.8, 0.1, 0.1], [0.275, 0.1, 0.625]]))
    lam = torch.distributions.Beta(0.4, 0.4).sample()  # a 0-d tensor
    torch.testing.assert_close(ls.mixup_targets(YA, YB, lam, 5).double(),
                               reference(YA, YB, lam, 5, 0.0), atol=1e-7, rtol=0)
    per_sample = torch.distributions.Beta(0.4, 0.4).sample((4,))
    rows = [ls.mixup_targets(YA[i:i + 1], YB[i:i + 1], float(per_sample[i]), 5, 0.1)
            for i in range(4)]
    torch.testing.assert_close(ls.mixup_targets(YA, YB, per_sample, 5, 0.1), torch.cat(rows))


def test_per_sample_lam_broadcasts_over_sequence_positions():
    ya, yb = torch.randint(0, 6, (3, 7)), torch.randint(0, 6, (3, 7))
    lam = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(ls.mixup_targets(ya, yb, lam, 6, 0.2).double(),
                               reference(ya, yb, lam, 6, 0.2), atol=1e-7, rtol=0)


@pytest.mark.parametrize("lam, exc, words", [
    (1.2, ValueError, ["lam", "1.2"]),
    (float("nan"), ValueError, ["lam", "nan"]),
    (torch.tensor(1.5), ValueError, ["lam", "[0, 1]", "1.5"]),
    (torch.tensor([0.5, float("nan"), 0.5, 0.5]), ValueError, ["lam", "nan"]),
    (torch.tensor([0.5, 0.5]), ValueError, ["lam", "(4,)", "(2,)"]),
    (torch.ones(4, 1), ValueError, ["lam", "(4, 1)"]),
    (torch.tensor(1), TypeError, ["lam", "floating", "int64"]),
    (True, TypeError, ["lam", "bool"]),
    ("0.5", TypeError, ["lam", "str"]),
])
def test_bad_lam_names_argument_value_and_expectation(lam, exc, words):
    with pytest.raises(exc) as info:
        ls.mixup_targets(YA, YB, lam, 5, 0.1)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_validate_false_reads_no_lam_value():
    # The hot-path contract: with validate=False nothing is read, so a bad λ is not caught.
    out = ls.mixup_targets(YA, YB, torch.tensor(1.5), 5, validate=False)
    assert out.shape == (4, 5)


def _compiled(counter):
    return torch.compile(lambda a, b, lam: ls.mixup_targets(a, b, lam, 5, 0.1), backend=counter,
                         fullgraph=True)


def test_compiled_mixup_float_lam_recompiles_at_most_once_and_never_breaks():
    torch._dynamo.reset()
    counters.clear()
    cnt = CompileCounter()
    fn = _compiled(cnt)
    for lam in (0.3, 0.6, 0.9, 0.05, 1.0):
        torch.testing.assert_close(fn(YA, YB, lam), ls.mixup_targets(YA, YB, lam, 5, 0.1))
    assert cnt.frame_count <= 2  # the first λ is specialised, the second makes it symbolic
    assert not counters["graph_break"]


@pytest.mark.parametrize("shape", [(), (4,)], ids=["scalar", "per-sample"])
def test_compiled_mixup_tensor_lam_compiles_once(shape):
    torch._dynamo.reset()
    counters.clear()
    cnt = CompileCounter()
    fn = _compiled(cnt)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        lam = torch.rand(shape, generator=g)
        torch.testing.assert_close(fn(YA, YB, lam), ls.mixup_targets(YA, YB, lam, 5, 0.1))
    assert cnt.frame_count == 1
    assert not counters["graph_break"]


def test_compiled_training_step_with_mixup_and_the_loss():
    # The whole mixup step (targets + loss + backward) in one graph: what docs/mixup.md shows.
    torch._dynamo.reset()
    counters.clear()
    cnt = CompileCounter()
    model = torch.nn.Linear(6, 5)

    @torch.compile(backend=cnt, fullgraph=True)
    def step(x, y, perm, lam):
        mixed_x = lam * x + (1 - lam) * x[perm]
        q = ls.mixup_targets(y, y[perm], lam, 5, 0.1)
        return ls.cross_entropy(model(mixed_x), q)

    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(4, 6, generator=g), torch.randint(0, 5, (4,), generator=g)
        perm, lam = torch.randperm(4, generator=g), torch.rand((), generator=g)
        loss = step(x, y, perm, lam)
        loss.backward()
        want = F.cross_entropy(model(lam * x + (1 - lam) * x[perm]),
                               ls.mixup_targets(y, y[perm], lam, 5, 0.1))
        torch.testing.assert_close(loss, want)
    assert cnt.frame_count == 1
    assert not counters["graph_break"]


# --- CutMix ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(32, 32), (7, 13), (1, 1)])
def test_cutmix_box_lam_is_the_uncovered_share(h, w):
    g = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.1, 0.5, 0.77, 1.0):
        for _ in range(20):
            (y0, y1, x0, x1), lam_area = cutmix_box(h, w, lam, generator=g)
            assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
            assert lam_area == pytest.approx(1 - (y1 - y0) * (x1 - x0) / (h * w))
            assert lam_area >= lam - 1e-12  # clipping only shrinks the box
    assert cutmix_box(h, w, 1.0, generator=g)[1] == 1.0  # λ = 1: nothing pasted


def test_cutmix_box_clipped_at_the_border_recomputes_lam():
    # Find a draw whose box is clipped: its λ is larger than asked, and exactly the uncovered share.
    g = torch.Generator().manual_seed(0)
    seen = False
    for _ in range(200):
        (y0, y1, x0, x1), lam_area = cutmix_box(10, 10, 0.36, generator=g)  # 8×8 unclipped
        if (y1 - y0) * (x1 - x0) < 64:
            assert lam_area > 0.36
            seen = True
    assert seen


def test_cutmix_pastes_the_box_and_mixes_the_targets():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 8, 8, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    perm = torch.tensor([3, 2, 1, 0])
    mixed, q, lam = cutmix(x, y, 4, 0.6, 0.1, perm=perm, generator=torch.Generator().manual_seed(1))
    (y0, y1, x0, x1), lam2 = cutmix_box(8, 8, 0.6, generator=torch.Generator().manual_seed(1))
    assert lam == lam2
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    torch.testing.assert_close(mixed[..., inside], x[perm][..., inside])
    torch.testing.assert_close(mixed[..., ~inside], x[..., ~inside])
    torch.testing.assert_close(q, ls.mixup_targets(y, y[perm], lam, 4, 0.1))
    # the share of each image that is the other one's pixels equals 1 − λ
    assert float(inside.float().mean()) == pytest.approx(1 - lam)
    with pytest.raises(ValueError, match="perm"):
        cutmix(x, y, 4, 0.5, perm=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lam"):
        cutmix_box(8, 8, 1.5)
    with pytest.raises(TypeError, match="height"):
        cutmix_box(8.0, 8, 0.5)


def test_compiled_loss_with_a_changing_smoothing_factor_does_not_break_the_graph():
    # The range check on ε used math.isnan, which fails on the symbolic float torch.compile traces
    # once ε changes (a schedule): fullgraph=True raised on the second ε.
    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(lambda x, y, eps: ls.cross_entropy(x, y, label_smoothing=eps),
                       backend=CompileCounter(), fullgraph=True)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    for eps in (0.1, 0.2, 0.3):
        torch.testing.assert_close(fn(x, y, eps), F.cross_entropy(x, y, label_smoothing=eps))
    assert not counters["graph_break"]
    for bad in (float("nan"), 1.5, -0.1):  # eager checks are unchanged
        with pytest.raises(ValueError, match="label_smoothing"):
            ls.cross_entropy(x, y, label_smoothing=bad)
