"""labelsmooth.schedules: values at hand-computed epochs, argument checks, and use on the modules."""

from __future__ import annotations

import math

import pytest
import torch

import labelsmooth as ls
from labelsmooth import schedules as S


def test_values():
    assert [S.constant(0.1)(e) for e in (0, 3, 1e6)] == [0.1, 0.1, 0.1]
    lin = S.linear(0.2, 0.0, 4)
    assert [lin(e) for e in (0, 1, 2, 4, 9)] == pytest.approx([0.2, 0.15, 0.1, 0.0, 0.0])
    cos = S.cosine(0.0, 0.2, 10)
    # 0.2·(1 − cos(π t/10))/2 at t = 0, 2.5, 5, 10, 20
    assert [cos(e) for e in (0, 2.5, 5, 10, 20)] == pytest.approx(
        [0.0, 0.1 * (1 - math.cos(math.pi / 4)), 0.1, 0.2, 0.2])
    tsla = S.two_stage(0.1, until=2)
    assert [tsla(e) for e in (0, 1, 1.999, 2, 3)] == [0.1, 0.1, 0.1, 0.0, 0.0]
    st = S.step(0.4, [1, 3], gamma=0.5)
    assert [st(e) for e in (0, 1, 2, 3, 10)] == pytest.approx([0.4, 0.2, 0.2, 0.1, 0.1])
    nls = S.two_stage(0.0, 5, after=-0.2, allow_negative=True)
    assert (nls(4), nls(5)) == (0.0, -0.2)
    assert S.linear(0.0, -1.0, 2, allow_negative=True)(1) == -0.5


def test_cosine_is_monotone_and_bounded():
    s = S.cosine(0.3, 0.05, 17)
    vals = [s(e / 4) for e in range(100)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert vals[0] == 0.3 and vals[-1] == pytest.approx(0.05)


def test_endpoints_are_exact_and_values_stay_in_the_segment():
    # a + f·(b − a) misses the endpoints by an ulp (cosine(0.059, 1.0, 7)(0) gave 0.05899999999999994)
    for i in range(1, 200):
        a = i / 200
        for b in (0.0, 1.0, 0.3):
            for s in (S.linear(a, b, 7), S.cosine(a, b, 7)):
                assert s(0) == a and s(7) == b and s(100) == b
                assert all(min(a, b) <= s(e / 8) <= max(a, b) for e in range(60))


def test_argument_checks():
    with pytest.raises(ValueError, match=r"Expected `value` to be a float in \[0, 1\], but got 1.5"):
        S.constant(1.5)
    with pytest.raises(ValueError, match="`start`"):
        S.linear(-0.1, 0.1, 3)
    with pytest.raises(ValueError, match="`epochs`"):
        S.cosine(0.1, 0.0, 0)
    with pytest.raises(TypeError, match="`epochs`"):
        S.linear(0.1, 0.0, "10")
    with pytest.raises(ValueError, match="`until`"):
        S.two_stage(0.1, -1)
    with pytest.raises(ValueError, match="`after`"):
        S.two_stage(0.1, 3, after=1.1, allow_negative=True)
    with pytest.raises(ValueError, match="`milestones`"):
        S.step(0.1, [5, 2])
    with pytest.raises(TypeError, match="`milestones`"):
        S.step(0.1, 5)
    with pytest.raises(ValueError, match="`gamma`"):
        S.step(0.1, [1], gamma=2.0)
    with pytest.raises(TypeError, match="`allow_negative`"):
        S.constant(0.1, allow_negative=1)
    with pytest.raises(ValueError, match="`epoch`"):
        S.constant(0.1)(-1)
    with pytest.raises(ValueError, match="`epoch`"):
        S.constant(0.1)(float("nan"))
    with pytest.raises(TypeError, match="`epoch`"):
        S.constant(0.1)(torch.tensor(1))


def test_schedule_drives_cross_entropy_module():
    loss_fn = ls.CrossEntropyLoss(label_smoothing=0.1)
    schedule = S.two_stage(0.1, until=2)
    x = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    for epoch in range(4):
        loss_fn.label_smoothing = schedule(epoch)
        torch.testing.assert_close(loss_fn(x, y),
                                   ls.cross_entropy(x, y, label_smoothing=schedule(epoch)))
    assert float(loss_fn(x, y)) == pytest.approx(float(torch.nn.functional.cross_entropy(x, y)))
    # a value outside [0, 1] assigned to the module fails at the next call, naming the argument
    loss_fn.label_smoothing = S.constant(-0.2, allow_negative=True)(0)
    with pytest.raises(ValueError, match="`label_smoothing`"):
        loss_fn(x, y)
    # negative values go to the module that opts in
    nls = ls.SmoothedCrossEntropyLoss(0.0, allow_negative=True)
    nls.label_smoothing = S.two_stage(0.0, 1, after=-0.2, allow_negative=True)(1)
    torch.testing.assert_close(nls(x, y), ls.smoothed_cross_entropy(x, y, -0.2,
                                                                    allow_negative=True))


def test_schedule_drives_linear_and_binary_modules():
    schedule = S.linear(0.0, 0.2, 2)
    h, w = torch.randn(6, 4), torch.randn(5, 4)
    y = torch.randint(0, 5, (6,))
    lin = ls.LinearCrossEntropyLoss()
    bce = ls.BCEWithLogitsLoss()
    xb, tb = torch.randn(6, 3), torch.randint(0, 2, (6, 3)).float()
    for epoch in (0, 1, 2):
        eps = schedule(epoch)
        lin.label_smoothing = eps
        bce.label_smoothing = eps
        torch.testing.assert_close(lin(h, w, y), ls.cross_entropy(h @ w.T, y, label_smoothing=eps))
        torch.testing.assert_close(bce(xb, tb), ls.binary_cross_entropy_with_logits(
            xb, tb, label_smoothing=eps))


def test_repr_names_the_parameters():
    assert "until=3.0" in repr(S.two_stage(0.1, 3))
