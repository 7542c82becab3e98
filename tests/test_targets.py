"""Smoothed targets, mixup targets, binary targets and the entropy floor: hand-computed values.

Every expected number below is worked out by hand from the definitions in the docstrings
(spread="all": 1−ε+ε/K and ε/K; spread="others": 1−ε and ε/(K−1); prior: (1−ε)·e_y + ε·p), or
taken from the table in ../shared/notes/label-smoothing-variants.md §0 (rounded to 3 decimals there).
"""

from __future__ import annotations

import math

import pytest
import torch

import labelsmooth as ls


def close(actual: torch.Tensor, expected, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64),
                               atol=atol, rtol=0)


# --- smooth_targets --------------------------------------------------------------------------------


def test_worked_example_from_the_issue():
    out = ls.smooth_targets(torch.tensor([0, 2, 3]), 4, 0.1)
    close(out, [[0.925, 0.025, 0.025, 0.025],
                [0.025, 0.025, 0.925, 0.025],
                [0.025, 0.025, 0.025, 0.925]])
    assert out.dtype == torch.float32 and out.shape == (3, 4)


def test_no_smoothing_is_one_hot_and_full_smoothing_is_uniform():
    y = torch.tensor([1, 0])
    close(ls.smooth_targets(y, 3, 0.0), [[0, 1, 0], [1, 0, 0]])
    close(ls.smooth_targets(y, 4, 1.0), [[0.25] * 4] * 2)
    # integer smoothing values are accepted like floats
    close(ls.smooth_targets(y, 4, 1), [[0.25] * 4] * 2)


def test_spread_others_gives_the_target_exactly_one_minus_eps():
    # K=4, ε=0.3: target 0.7, the three others 0.1 each.
    close(ls.smooth_targets(torch.tensor([2]), 4, 0.3, spread="others"), [[0.1, 0.1, 0.7, 0.1]])
    # K=2, ε=0.1 (pytorch#148884): others → [0.9, 0.1]; all → [0.95, 0.05].
    close(ls.smooth_targets(torch.tensor([0]), 2, 0.1, spread="others"), [[0.9, 0.1]])
    close(ls.smooth_targets(torch.tensor([0]), 2, 0.1), [[0.95, 0.05]])


def test_others_equals_all_with_rescaled_eps():
    y = torch.tensor([0, 3, 1, 4])
    for k, eps in ((5, 0.1), (5, 0.6), (2, 0.3)):
        others = ls.smooth_targets(y % k, k, eps, spread="others")
        all_ = ls.smooth_targets(y % k, k, eps * k / (k - 1))
        torch.testing.assert_close(others, all_, atol=1e-6, rtol=0)


def test_prior_replaces_the_uniform_share():
    p = torch.tensor([0.5, 0.25, 0.25, 0.0])
    # y=1, ε=0.2: 0.8·e_1 + 0.2·p = [0.1, 0.85, 0.05, 0]
    close(ls.smooth_targets(torch.tensor([1]), 4, 0.2, prior=p), [[0.1, 0.85, 0.05, 0.0]])
    # ε=1: the prior itself, whatever the label
    close(ls.smooth_targets(torch.tensor([3]), 4, 1.0, prior=p), [p.tolist()])
    # the uniform prior is spread="all"
    y = torch.tensor([0, 2])
    torch.testing.assert_close(ls.smooth_targets(y, 4, 0.3, prior=torch.full((4,), 0.25)),
                               ls.smooth_targets(y, 4, 0.3))


def test_float64_prior_gives_float64_targets():
    p = torch.tensor([0.2, 0.8], dtype=torch.float64)
    out = ls.smooth_targets(torch.tensor([0]), 2, 0.5, prior=p)
    assert out.dtype == torch.float64
    close(out, [[0.6, 0.4]], atol=1e-15)


def test_targets_of_any_shape_and_integer_dtype():
    y = torch.tensor([[0, 1, 2], [2, 1, 0]], dtype=torch.int32)
    out = ls.smooth_targets(y, 3, 0.3)
    assert out.shape == (2, 3, 3)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 3))
    close(out[1, 0], [0.1, 0.1, 0.8])
    assert ls.smooth_targets(torch.tensor(2, dtype=torch.uint8), 3, 0.3).shape == (3,)
    assert ls.smooth_targets(torch.zeros(0, dtype=torch.long), 3, 0.3).shape == (0, 3)


def test_rows_sum_to_one_for_every_convention():
    y = torch.randint(0, 7, (20,))
    p = torch.softmax(torch.randn(7, dtype=torch.float64), 0)
    for kw in ({}, {"spread": "others"}, {"prior": p}):
        for eps in (0.0, 0.05, 0.5, 1.0):
            q = ls.smooth_targets(y, 7, eps, **kw)
            torch.testing.assert_close(q.sum(-1).double(), torch.ones(20, dtype=torch.float64),
                                       atol=1e-6, rtol=0)
            assert bool((q >= 0).all())


def test_smoothing_coefficients():
    assert ls.smoothing_coefficients(4, 0.1) == (0.9, 0.025)
    a, b = ls.smoothing_coefficients(4, 0.3, spread="others")
    assert a == pytest.approx(0.6) and b == pytest.approx(0.1)
    a, b = ls.smoothing_coefficients(2, 0.5, prior=torch.tensor([0.3, 0.7]))
    assert a == 0.5
    close(b, [0.15, 0.35])
    assert ls.smoothing_coefficients(1, 0.4) == (0.6, 0.4)  # K=1: every target is [1]


def test_smooth_probabilities():
    close(ls.smooth_probabilities(torch.tensor([0.5, 0.5, 0.0, 0.0]), 0.2), [0.45, 0.45, 0.05, 0.05])
    # spread="others" on a one-hot row equals smooth_targets(..., spread="others")
    close(ls.smooth_probabilities(torch.tensor([[0.0, 1.0, 0.0]]), 0.3, spread="others"),
          [[0.15, 0.7, 0.15]])


# --- mixup -----------------------------------------------------------------------------------------


def test_mixup_targets_hand_values():
    # λ=0.6, y_a=0, y_b=2, K=4, ε=0.2: 0.8·[0.6, 0, 0.4, 0] + 0.05
    out = ls.mixup_targets(torch.tensor([0]), torch.tensor([2]), 0.6, 4, 0.2)
    close(out, [[0.53, 0.05, 0.37, 0.05]])
    # spread="others", K=3, ε=0.3, λ=0.5: a = 1 − 0.3 − 0.15 = 0.55, b = 0.15
    out = ls.mixup_targets(torch.tensor([0]), torch.tensor([1]), 0.5, 3, 0.3, spread="others")
    close(out, [[0.425, 0.425, 0.15]])


def test_mixup_is_smooth_then_mix_and_reduces_to_smooth_targets():
    ya, yb = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 1, 0, 2])
    lam = 0.35
    mixed = ls.mixup_targets(ya, yb, lam, 3, 0.1)
    expect = lam * ls.smooth_targets(ya, 3, 0.1) + (1 - lam) * ls.smooth_targets(yb, 3, 0.1)
    torch.testing.assert_close(mixed, expect)
    torch.testing.assert_close(ls.mixup_targets(ya, yb, 1.0, 3, 0.1), ls.smooth_targets(ya, 3, 0.1))
    torch.testing.assert_close(ls.mixup_targets(ya, yb, 0.0, 3, 0.1), ls.smooth_targets(yb, 3, 0.1))


def test_mixup_target_trains_like_the_two_losses_mixed():
    """CE is linear in the target: CE(x, mix) = λ·CE(x, y_a, ε) + (1−λ)·CE(x, y_b, ε)."""
    x = torch.randn(5, 4, dtype=torch.float64)
    ya, yb = torch.randint(0, 4, (5,)), torch.randint(0, 4, (5,))
    q = ls.mixup_targets(ya, yb, 0.3, 4, 0.1).double()
    mixed = ls.cross_entropy(x, q)
    split = 0.3 * ls.cross_entropy(x, ya, label_smoothing=0.1) + 0.7 * ls.cross_entropy(
        x, yb, label_smoothing=0.1)
    torch.testing.assert_close(mixed, split, atol=1e-6, rtol=0)  # q is float32


# --- binary ----------------------------------------------------------------------------------------


def test_binary_targets_keras_convention():
    close(ls.binary_targets(torch.tensor([1.0, 0.0, 0.5]), 0.2), [0.9, 0.1, 0.5])
    close(ls.binary_targets(torch.tensor([1.0, 0.0]), 0.0), [1.0, 0.0])
    close(ls.binary_targets(torch.tensor([1.0, 0.0]), 1.0), [0.5, 0.5])


# --- entropy floor ---------------------------------------------------------------------------------

# (K, ε, H(q') in nats, hard NLL at the optimum −log q'(y), optimal logit gap) from the notes' table.
FLOOR_TABLE = [
    (2, 0.1, 0.199, 0.051, 2.94),
    (10, 0.05, 0.282, 0.046, 5.25),
    (10, 0.1, 0.500, 0.094, 4.51),
    (10, 0.2, 0.867, 0.199, 3.71),
    (100, 0.1, 0.778, 0.104, 6.80),
    (1000, 0.1, 1.015, 0.105, 9.10),
    (32000, 0.1, 1.362, 0.105, 12.57),
]


@pytest.mark.parametrize("k,eps,floor,nll,gap", FLOOR_TABLE)
def test_entropy_floor_matches_the_notes_table(k, eps, floor, nll, gap):
    h = ls.entropy_floor(k, eps)
    assert h.dtype == torch.float64 and h.dim() == 0
    assert float(h) == pytest.approx(floor, abs=5e-4)
    # the same numbers from the target itself: −log q_y and log(q_y/q_other)
    q_y, q_o = 1 - eps + eps / k, eps / k
    # The notes round two entries the other way: −ln 0.82 = 0.1985 (table: 0.199) and
    # ln 9001 = 9.105 (table: 9.10); the slack below covers that, not more.
    assert -math.log(q_y) == pytest.approx(nll, abs=6e-4)
    assert math.log(q_y / q_o) == pytest.approx(gap, abs=6e-3)


def test_entropy_floor_hand_values():
    # K=10, ε=0.1: −(0.91·ln 0.91 + 9·0.01·ln 0.01) = 0.0858 + 0.4145 = 0.5003
    assert float(ls.entropy_floor(10, 0.1)) == pytest.approx(
        -(0.91 * math.log(0.91) + 9 * 0.01 * math.log(0.01)), abs=1e-12)
    assert float(ls.entropy_floor(10, 0.1)) == pytest.approx(0.5003, abs=5e-5)
    assert float(ls.entropy_floor(7, 0.0)) == 0.0
    assert float(ls.entropy_floor(7, 1.0)) == pytest.approx(math.log(7), abs=1e-12)
    # spread="others", K=2, ε=0.1: q = [0.9, 0.1]
    assert float(ls.entropy_floor(2, 0.1, spread="others")) == pytest.approx(
        -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), abs=1e-12)
    assert float(ls.entropy_floor(1, 0.3)) == 0.0


def test_entropy_floor_with_prior_is_per_target_class():
    p = torch.tensor([0.5, 0.5, 0.0])
    h = ls.entropy_floor(3, 0.2, prior=p)
    assert h.shape == (3,)

    def ent(q):
        return -sum(v * math.log(v) for v in q if v > 0)

    # y=0: [0.9, 0.1, 0]; y=2: [0.1, 0.1, 0.8]
    assert float(h[0]) == pytest.approx(ent([0.9, 0.1, 0.0]), abs=1e-7)
    assert float(h[1]) == pytest.approx(ent([0.1, 0.9, 0.0]), abs=1e-7)
    assert float(h[2]) == pytest.approx(ent([0.1, 0.1, 0.8]), abs=1e-7)


def test_entropy_floor_is_the_minimum_of_the_smoothed_loss():
    """At logits log q the smoothed CE equals the floor; anywhere else it is larger."""
    k, eps = 6, 0.15
    q = ls.smooth_targets(torch.tensor([2]), k, eps).double()
    at_opt = ls.cross_entropy(q.log(), torch.tensor([2]), label_smoothing=eps)
    torch.testing.assert_close(at_opt, ls.entropy_floor(k, eps), atol=1e-12, rtol=0)
    away = ls.cross_entropy(q.log() + 0.1 * torch.randn(1, k, dtype=torch.float64),
                            torch.tensor([2]), label_smoothing=eps)
    assert float(away) > float(ls.entropy_floor(k, eps))


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,exc,words", [
    (lambda: ls.smooth_targets(torch.tensor([0, 4]), 4, 0.1), ValueError, ["target", "[0, 4)", "4"]),
    (lambda: ls.smooth_targets(torch.tensor([-1]), 4, 0.1), ValueError, ["target", "-1"]),
    (lambda: ls.smooth_targets(torch.tensor([0.0]), 4, 0.1), TypeError, ["target", "integer", "float32"]),
    (lambda: ls.smooth_targets([0, 1], 4, 0.1), TypeError, ["target", "Tensor", "list"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 4, 1.5), ValueError, ["smoothing", "[0, 1]", "1.5"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 4, float("nan")), ValueError, ["smoothing", "nan"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 4, "0.1"), TypeError, ["smoothing", "'0.1'"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 0, 0.1), ValueError, ["num_classes", "positive", "0"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 4.0, 0.1), TypeError, ["num_classes", "4.0"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 1, 0.1, spread="others"), ValueError,
     ["spread", "'others'", "2 classes"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 4, 0.1, spread="uniform"), ValueError,
     ["spread", "'uniform'", "'others'"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 2, 0.1, prior=torch.tensor([0.5, 0.6])), ValueError,
     ["prior", "summing to 1"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 2, 0.1, prior=torch.tensor([1.5, -0.5])), ValueError,
     ["prior", "non-negative", "-0.5"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 2, 0.1, prior=torch.tensor([float("nan"), 1.0])),
     ValueError, ["prior", "finite", "nan"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 3, 0.1, prior=torch.tensor([0.5, 0.5])), ValueError,
     ["prior", "length 3", "(2,)"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 2, 0.1, prior=torch.tensor([0.5, 0.5]),
                               spread="others"), ValueError, ["prior", "others"]),
    (lambda: ls.smooth_targets(torch.tensor([0]), 2, 0.1, prior=torch.tensor([1, 0])), TypeError,
     ["prior", "floating", "int64"]),
    (lambda: ls.mixup_targets(torch.tensor([0]), torch.tensor([1]), 1.2, 3), ValueError, ["lam", "1.2"]),
    (lambda: ls.mixup_targets(torch.tensor([0]), torch.tensor([1, 2]), 0.5, 3), ValueError,
     ["target_b", "(1,)", "(2,)"]),
    (lambda: ls.mixup_targets(torch.tensor([0]), torch.tensor([3]), 0.5, 3), ValueError,
     ["target_b", "[0, 3)", "3"]),
    (lambda: ls.binary_targets(torch.tensor([1, 0]), 0.1), TypeError, ["target", "floating", "int64"]),
    (lambda: ls.binary_targets(torch.tensor([1.0]), -0.1), ValueError, ["label_smoothing", "-0.1"]),
    (lambda: ls.entropy_floor(4, 2.0), ValueError, ["smoothing", "2.0"]),
])
def test_bad_input_names_argument_value_and_expectation(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_validate_false_skips_the_index_check():
    # validate=False reads no values: an out-of-range index then fails inside one_hot, not in ours.
    with pytest.raises(RuntimeError):
        ls.smooth_targets(torch.tensor([5]), 4, 0.1, validate=False)
    with pytest.raises(ValueError, match="target"):
        ls.smooth_targets(torch.tensor([5]), 4, 0.1, validate=True)


def test_float16_prior_of_thirds_is_accepted():
    p = torch.full((3,), 1 / 3, dtype=torch.float16)  # sums to 0.99976 in float16
    q = ls.smooth_targets(torch.tensor([0]), 3, 0.3, prior=p)
    close(q, [[0.8, 0.1, 0.1]], atol=1e-4)
