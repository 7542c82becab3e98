"""Bad input raises ValueError/TypeError naming the argument, the bad value and what was expected.

Every case of issue item 6 is covered for the functional form and for the module form (bad
hyper-parameters fail at construction, bad tensors at call time). ``validate=False`` skips the
value checks; the default reads values only on the CPU. A ``meta`` tensor stands in for an
accelerator: reading its values raises, so a call that succeeds on meta tensors provably reads no
tensor data (no host-device sync on CUDA).
"""

from __future__ import annotations

import math

import pytest
import torch

import labelsmooth as ls

C = 4
X = torch.randn(3, C)
Y = torch.tensor([0, 1, 3])
NAN = float("nan")


def call_both(**kw):
    """Yield (form, callable) for the functional and the module form with the same arguments."""
    x, y = kw.pop("input", X), kw.pop("target", Y)
    yield "functional", lambda: ls.cross_entropy(x, y, **kw)
    yield "module", lambda: ls.CrossEntropyLoss(**kw)(x, y)


# (id, kwargs for cross_entropy / CrossEntropyLoss, exception, words the message must contain)
CASES = [
    # a class index outside [0, C) that is not ignore_index
    ("index-too-large", dict(target=torch.tensor([0, 4, 1])), ValueError,
     ["`target`", "[0, 4)", "ignore_index=-100", "4."]),
    ("index-negative", dict(target=torch.tensor([0, -1, 1])), ValueError, ["`target`", "[0, 4)", "-1"]),
    ("index-vs-other-ignore", dict(target=torch.tensor([0, -100, 1]), ignore_index=-1), ValueError,
     ["`target`", "ignore_index=-1", "-100"]),
    ("index-spatial", dict(input=torch.randn(2, C, 3), target=torch.tensor([[0, 1, 9], [0, 0, 0]])),
     ValueError, ["`target`", "[0, 4)", "9"]),
    # label_smoothing outside [0, 1], NaN, not a number
    ("eps-above-1", dict(label_smoothing=1.5), ValueError, ["`label_smoothing`", "[0, 1]", "1.5"]),
    ("eps-negative", dict(label_smoothing=-0.1), ValueError, ["`label_smoothing`", "[0, 1]", "-0.1"]),
    ("eps-nan", dict(label_smoothing=NAN), ValueError, ["`label_smoothing`", "[0, 1]", "nan"]),
    ("eps-inf", dict(label_smoothing=math.inf), ValueError, ["`label_smoothing`", "inf"]),
    ("eps-str", dict(label_smoothing="0.1"), TypeError, ["`label_smoothing`", "float", "'0.1'"]),
    ("eps-none", dict(label_smoothing=None), TypeError, ["`label_smoothing`", "None"]),
    ("eps-bool", dict(label_smoothing=True), TypeError, ["`label_smoothing`", "True"]),
    # probability target of another shape
    ("prob-shape", dict(target=torch.rand(3, C + 1)), ValueError,
     ["`target`", "(3, 4)", "(3, 5)", "probabilities"]),
    ("prob-shape-spatial", dict(input=torch.randn(2, C, 3), target=torch.rand(2, C, 2)), ValueError,
     ["`target`", "(2, 4, 3)", "(2, 4, 2)"]),
    # index target of a non-integer type
    ("index-float", dict(target=torch.tensor([0.0, 1.0, 3.0])), TypeError,
     ["`target`", "integer", "torch.float32"]),
    ("index-bool", dict(target=torch.tensor([True, False, True])), TypeError,
     ["`target`", "integer", "torch.bool"]),
    ("prob-int", dict(target=torch.zeros(3, C, dtype=torch.long)), TypeError,
     ["`target`", "floating", "torch.int64"]),
    # batch / spatial shape mismatch
    ("batch-shape", dict(target=torch.tensor([0, 1])), ValueError, ["`target`", "(3,)", "(2,)"]),
    ("spatial-shape", dict(input=torch.randn(2, C, 3), target=torch.zeros(2, 4, dtype=torch.long)),
     ValueError, ["`target`", "(2, 3)", "(2, 4)"]),
    ("1d-input-vector-target", dict(input=torch.randn(C), target=torch.tensor([1])), ValueError,
     ["`target`", "()", "(1,)"]),
    # weight of the wrong length / kind
    ("weight-length", dict(weight=torch.ones(C - 1)), ValueError, ["`weight`", "length 4", "(3,)"]),
    ("weight-2d", dict(weight=torch.ones(1, C)), ValueError, ["`weight`", "1-D", "(1, 4)"]),
    ("weight-int", dict(weight=torch.ones(C, dtype=torch.long)), TypeError,
     ["`weight`", "floating", "torch.int64"]),
    ("weight-list", dict(weight=[1.0] * C), TypeError, ["`weight`", "Tensor", "list"]),
    # spread="others" with one class
    ("others-one-class", dict(input=torch.randn(3, 1), target=torch.zeros(3, dtype=torch.long),
                              spread="others", label_smoothing=0.1), ValueError,
     ["`spread`", "'others'", "at least 2 classes"]),
    # prior not a distribution
    ("prior-negative", dict(prior=torch.tensor([0.5, 0.7, -0.2, 0.0]), label_smoothing=0.1),
     ValueError, ["`prior`", "non-negative", "-0.2"]),
    ("prior-sum", dict(prior=torch.tensor([0.5, 0.5, 0.5, 0.0]), label_smoothing=0.1), ValueError,
     ["`prior`", "summing to 1", "1.5"]),
    ("prior-length", dict(prior=torch.tensor([0.5, 0.5]), label_smoothing=0.1), ValueError,
     ["`prior`", "length 4", "(2,)"]),
    ("prior-nan", dict(prior=torch.tensor([NAN, 0.5, 0.5, 0.0]), label_smoothing=0.1), ValueError,
     ["`prior`", "finite", "nan"]),
    ("prior-int", dict(prior=torch.tensor([1, 0, 0, 0])), TypeError, ["`prior`", "floating", "int64"]),
    ("prior-with-others", dict(prior=torch.full((C,), 0.25), spread="others", label_smoothing=0.1),
     ValueError, ["`prior`", "others"]),
    # bad option strings
    ("reduction", dict(reduction="avg"), ValueError, ["`reduction`", "'avg'", "'mean'"]),
    ("reduction-type", dict(reduction=None), TypeError, ["`reduction`", "None"]),
    ("impl", dict(impl="cuda"), ValueError, ["`impl`", "'cuda'", "'reference'"]),
    ("spread", dict(spread="uniform"), ValueError, ["`spread`", "'uniform'", "'others'"]),
    ("weight-mode", dict(weight_mode="balanced"), ValueError, ["`weight_mode`", "'balanced'", "'target'"]),
    # other arguments
    ("ignore-index-float", dict(ignore_index=1.5), TypeError, ["`ignore_index`", "int", "1.5"]),
    ("ignore-index-prob", dict(target=torch.rand(3, C), ignore_index=1), ValueError,
     ["`ignore_index`", "negative", "1"]),
    ("z-loss", dict(z_loss=-1.0), ValueError, ["`z_loss`", "non-negative", "-1.0"]),
    ("softcap", dict(softcap=0.0), ValueError, ["`softcap`", "positive", "0.0"]),
    ("validate", dict(validate="yes"), TypeError, ["`validate`", "'yes'"]),
    ("inplace", dict(inplace_backward=1), TypeError, ["`inplace_backward`", "bool", "1"]),
    ("input-int", dict(input=torch.ones(3, C, dtype=torch.long)), TypeError,
     ["`input`", "floating", "torch.int64"]),
    ("input-0d", dict(input=torch.tensor(1.0), target=torch.tensor(0)), ValueError, ["`input`", "()"]),
    ("input-no-class", dict(input=torch.randn(3, 0), target=torch.zeros(3, dtype=torch.long)),
     ValueError, ["`input`", "class", "(3, 0)"]),
    ("target-list", dict(target=[0, 1, 3]), TypeError, ["`target`", "Tensor", "list"]),
]


@pytest.mark.parametrize("name,kw,exc,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(name, kw, exc, words):
    for form, call in call_both(**kw):
        with pytest.raises(exc) as info:
            call()
        msg = str(info.value)
        for w in words:
            assert w in msg, f"{form}: {w!r} not in {msg!r}"


MODULE_INIT_CASES = ["eps-above-1", "eps-nan", "eps-str", "reduction", "impl", "spread", "weight-mode",
                     "z-loss", "softcap", "validate", "inplace", "ignore-index-float", "weight-int",
                     "weight-2d", "weight-list", "prior-negative", "prior-sum", "prior-nan", "prior-int",
                     "prior-with-others"]


@pytest.mark.parametrize("name", MODULE_INIT_CASES)
def test_module_rejects_bad_hyper_parameters_at_construction(name):
    kw, exc = next((dict(c[1]), c[2]) for c in CASES if c[0] == name)
    kw.pop("input", None)
    kw.pop("target", None)
    with pytest.raises(exc):
        ls.CrossEntropyLoss(**kw)


def test_module_rejects_a_2d_prior_naming_it():
    with pytest.raises(ValueError, match=r"`prior`.*1-D.*\(2, 2\)"):
        ls.CrossEntropyLoss(prior=torch.full((2, 2), 0.25))
    with pytest.raises(TypeError, match=r"`prior`.*Tensor.*list"):
        ls.CrossEntropyLoss(prior=[0.5, 0.5])


def test_validate_false_skips_value_checks():
    # A prior that does not sum to 1 is used as given: the loss is the literal formula with it.
    x = torch.randn(3, C, dtype=torch.float64)
    prior = torch.tensor([0.5, 0.5, 0.5, 0.0], dtype=torch.float64)
    out = ls.cross_entropy(x, Y, label_smoothing=0.2, prior=prior, validate=False, reduction="none")
    logp = torch.log_softmax(x, 1)
    expect = -(0.8 * logp.gather(1, Y[:, None])[:, 0] + 0.2 * (logp * prior).sum(1))
    torch.testing.assert_close(out, expect)
    # An out-of-range index is not looked at by us: whatever fails, it is not our ValueError.
    bad = torch.tensor([0, 7, 1])
    try:
        ls.cross_entropy(X, bad, validate=False, impl="reference")
    except ValueError as err:  # pragma: no cover - would mean we validated anyway
        pytest.fail(f"validate=False still checked values: {err}")
    except (RuntimeError, IndexError):
        pass
    # the module form passes validate through
    ls.CrossEntropyLoss(prior=prior, label_smoothing=0.2, validate=False)
    with pytest.raises(ValueError, match="prior"):
        ls.CrossEntropyLoss(prior=prior, label_smoothing=0.2)


def test_default_checks_on_cpu_and_validate_true_forces_checks():
    with pytest.raises(ValueError, match="target"):
        ls.cross_entropy(X, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="target"):
        ls.cross_entropy(X, torch.tensor([0, 7, 1]), validate=True)


def test_default_reads_no_values_off_the_cpu():
    """On a non-CPU device the default path must not read tensor data (it would sync on CUDA)."""
    x = torch.randn(3, C, device="meta")
    y = torch.zeros(3, dtype=torch.long, device="meta")
    w = torch.ones(C, device="meta")
    out = ls.cross_entropy(x, y, w, label_smoothing=0.1, impl="reference")
    assert out.device.type == "meta" and out.shape == ()
    # a prior on the accelerator is not read either
    out = ls.cross_entropy(x, y, label_smoothing=0.1, prior=torch.full((C,), 0.25, device="meta"),
                           impl="reference")
    assert out.device.type == "meta"
    # validate=True does read (and so cannot run on meta tensors)
    with pytest.raises((RuntimeError, NotImplementedError)):
        ls.cross_entropy(x, y, label_smoothing=0.1, validate=True, impl="reference")


def test_messages_follow_one_template():
    with pytest.raises(ValueError) as info:
        ls.cross_entropy(X, Y, label_smoothing=2.0)
    assert str(info.value) == "Expected `label_smoothing` to be a float in [0, 1], but got 2.0."


def test_prior_messages_summarise_a_large_prior_instead_of_printing_it():
    # 100k classes: the message names the length, the sum and the first bad index, not every entry
    k = 100_000
    p = torch.full((k,), 1.0 / k)
    p[7] = -1e-6
    with pytest.raises(ValueError, match=r"`prior`.*100000 entries.*prior\[7\]") as err:
        ls.cross_entropy(torch.zeros(1, k), torch.tensor([0]), label_smoothing=0.1, prior=p)
    assert len(str(err.value)) < 400
    with pytest.raises(ValueError, match=r"`prior`.*summing to 1.*100000 entries summing to 1\.99") as err:
        ls.cross_entropy(torch.zeros(1, k), torch.tensor([0]), label_smoothing=0.1, prior=2 * p.abs())
    assert len(str(err.value)) < 400


def test_prior_sum_tolerance_is_one_rule():
    from labelsmooth._validation import check_prior_sum, prior_sum_slack

    assert prior_sum_slack(torch.float32, 3) == 1e-4
    assert prior_sum_slack(torch.float16, 1000) == 1000 * torch.finfo(torch.float16).eps
    check_prior_sum(1 - 0.9 * prior_sum_slack(torch.float16, 1000), torch.float16, 1000)
    with pytest.raises(ValueError, match=r"`prior`.*summing to 1.*0\.9"):
        check_prior_sum(0.9, torch.float16, 3)


def test_prior_with_spread_others_reports_the_prior_values():
    with pytest.raises(ValueError, match=r"`prior`.*others.*got tensor\(\[0\.25, 0\.25, 0\.25, 0\.25\]\)"):
        ls.cross_entropy(X, torch.tensor([0, 1, 2]), prior=torch.full((C,), 0.25), spread="others",
                         label_smoothing=0.1)
