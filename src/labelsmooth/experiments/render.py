"""Sentences from the verdict data: the one place the sweep's claims become prose.

:func:`labelsmooth.experiments.verdict.verdict` decides; this module only words its decisions,
for ``report.md`` / ``report.html`` (:func:`verdict_blocks`) and for the terminal
(:func:`render_text`). Every function accepts a :class:`~labelsmooth.experiments.verdict.Verdict`
or its JSON form (``Verdict.as_dict()``, as stored in ``results.json``), so a finished sweep can
be re-rendered from its file.

Example:
    >>> from labelsmooth.experiments.verdict import verdict
    >>> rows = [{"smoothing": e, "seed": s, "test_ece": ece + 0.001 * s * (1 + e), "val_nll": 1.0 - e}
    ...         for e, ece in ((0.0, 0.2), (0.1, 0.05)) for s in range(3)]
    >>> print(render_text(verdict(rows)).splitlines()[-1])
      held          smoothing at ε = 0.1 (the smoothed factor with the lowest validation NLL) gives a lower test ECE than the unsmoothed model: −0.1499 [−0.1501, −0.1497] (seed-level paired difference, 95% t-interval; Holm p = 0.000 over 1 factor)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "claim_label",
    "claim_sentence",
    "claim_title",
    "headline",
    "render_text",
    "scope_sentence",
    "verdict_blocks",
    "warning_sentences",
]

_METRIC_WORDS = {
    "nll": "test NLL",
    "brier": "test Brier score",
    "ece": "test ECE",
    "ece_debiased": "debiased test calibration error",
    "accuracy": "test accuracy",
    "gap": "signed gap",
    "train_nll": "hard-label training NLL",
    "train_accuracy": "training accuracy",
    "test_accuracy": "test accuracy",
    "val_nll": "validation NLL",
}

_WARNINGS = {
    "one_seed": (
        "Only one seed: there is no seed-to-seed spread to measure the noise, so every "
        "comparison is inconclusive. Use at least 3 seeds (default 5)."
    ),
    "few_seeds": (
        "Fewer than 5 seeds: the seed-level intervals are wide and few differences can be "
        "resolved."
    ),
    "no_baseline": (
        "No ε = 0 run: nothing to compare the smoothed models against; add 0 to the factors."
    ),
    "baseline_below_reference": (
        "The unsmoothed baseline is below the accuracy its recipe is checked against: it may be "
        "mis-trained, and claims that smoothing helps may only say that it repairs a poor "
        "baseline."
    ),
    "still_improving": (
        "In at least half the runs the kept checkpoint is the last epoch trained: validation NLL "
        "was still falling, so training may be too short (raise --epochs)."
    ),
}


def _d(v: Any) -> dict[str, Any]:
    if isinstance(v, Mapping):
        return dict(v)
    return v.as_dict()


def _eps(e: Any) -> str:
    if e is None:
        return "–"
    e = float(e)
    short = f"{e:g}"
    return short if float(short) == e else repr(e)


def _f(v: Any, nd: int = 3, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    s = f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"
    return s.replace("-", "−")


def _interval(c: Mapping[str, Any], nd: int = 4) -> str:
    """``mean [low, high]`` of a paired difference (seed-level t-interval)."""
    return (
        f"{_f(c.get('mean'), nd, True)} [{_f(c.get('low'), nd, True)}, "
        f"{_f(c.get('high'), nd, True)}]"
    )


def scope_sentence(v: Any) -> str:
    """Testbed, baseline accuracy against its reference, seeds and epochs, in one sentence."""
    s = _d(v)["scope"]
    ref = s.get("reference")
    acc = s.get("baseline_accuracy")
    acc_s = _f(acc) if acc is not None else "–"
    if s.get("baseline_accuracy_sd") is not None:
        acc_s += f" ± {_f(s['baseline_accuracy_sd'])}"
    if ref:
        ref_s = (
            f"reference {_f(ref.get('accuracy'), 2)} ({ref.get('source')}; this recipe is checked "
            f"to reach ≥ {_f(ref.get('minimum'), 2)})"
        )
    else:
        ref_s = "no published reference for this testbed"
    ep = s.get("epochs")
    sel = ""
    if s.get("selected_epoch_min") is not None:
        sel = (
            f", keeping each run's checkpoint with the lowest validation NLL (epochs "
            f"{s['selected_epoch_min']}–{s['selected_epoch_max']} kept"
            + (f", patience {s['patience']}" if s.get("patience") else "")
            + ")"
        )
    recipe = f" (recipe `{s['recipe']}`)" if s.get("recipe") else ""
    n = s.get("n_seeds", 0)
    targets = ""
    if s.get("label_noise") and s["label_noise"].get("rate"):
        targets = (
            f", trained on labels with {_noise_words(s['label_noise'])} (validation, "
            "calibration and test labels clean)"
        )
    if s.get("distill"):
        d = s["distill"]
        who = {"same": "a student of the teacher's architecture",
               "mlp-small": "a one-hidden-layer MLP student (128 units)"}
        targets += (
            f", each teacher distilled into {who.get(d.get('student'), 'a student')} at "
            f"T = {_f(d.get('temperature'), 1)}"
        )
    return (
        f"Scope: {s.get('model')} on {s.get('dataset')}{recipe}{targets}, factors "
        f"{', '.join(_eps(e) for e in s.get('factors', []))}, {n} paired seed{'s' if n != 1 else ''}, "
        f"up to {ep} epochs{sel}; unsmoothed test accuracy {acc_s} against a {ref_s}."
    )


def warning_sentences(v: Any) -> list[str]:
    """One sentence per warning code in the scope."""
    return [_WARNINGS.get(w, w) for w in _d(v)["scope"].get("warnings", [])]


def _selection_sentence(sel: Mapping[str, Any]) -> str:
    m = _METRIC_WORDS.get(sel["metric"], sel["metric"]).replace("test ", "")
    if sel.get("candidate") is None:
        return f"No factor could be chosen on validation {m} (no validation numbers)."
    means = sel.get("means", {})
    mv = means.get(repr(float(sel["candidate"])))
    if sel.get("best_smoothing") is not None:
        return (
            f"Chosen on the validation split by {m}: **ε = {_eps(sel['best_smoothing'])}** "
            f"(mean {_f(mv, 4)}), better than every other factor beyond the paired, "
            "Holm-adjusted interval."
        )
    tied = ", ".join(_eps(e) for e in sel.get("tied_with", []))
    return (
        f"No best factor on validation {m}: ε = {_eps(sel['candidate'])} has the lowest mean "
        f"({_f(mv, 4)}) but cannot be told from ε = {tied} (paired, Holm-adjusted); a tie "
        "names no best."
    )


def headline(v: Any) -> str:
    """The verdict in one sentence: what validation chose and how the main claims came out."""
    d = _d(v)
    sel = d["selection"]
    claims = {c["claim"]: c for c in d["verdict"]}
    if sel.get("candidate") is None:
        return "No verdict: the runs have no validation numbers."
    parts = []
    if sel.get("best_smoothing") is not None:
        parts.append(f"validation NLL chose ε = {_eps(sel['best_smoothing'])}")
    else:
        parts.append(
            f"no factor is best on validation NLL (ε = {_eps(sel['candidate'])} ties with "
            + ", ".join(_eps(e) for e in sel.get("tied_with", []))
            + ")"
        )
    eps = sel.get("smoothed_choice")
    if eps is not None:
        change = {"held": "lowers", "did not hold": "raises", "inconclusive": "does not clearly change"}
        words = [
            f"{change[claims[n]['status']]} the {what}"
            for n, what in (("lower_nll_than_baseline", "test NLL"), ("lower_ece_than_baseline", "ECE"))
            if n in claims
        ]
        ts = claims.get("lower_nll_than_baseline_ts")
        if ts is not None:
            words.append(
                {
                    "held": "beats",
                    "did not hold": "loses to",
                    "inconclusive": "ties with",
                }[ts["status"]]
                + " temperature scaling of the unsmoothed model on NLL"
            )
        if words:
            parts.append(
                f"smoothing at ε = {_eps(eps)} (the smoothed factor validation prefers) "
                + ", ".join(words[:-1])
                + (" and " if len(words) > 1 else "")
                + words[-1]
            )
    nc = claims.get("smoothing_helps_under_label_noise")
    if nc is not None and not nc.get("reason"):
        parts.append(
            f"under {_noise_words(nc)} it "
            + {"held": "raises", "did not hold": "lowers",
               "inconclusive": "does not clearly change"}[nc["status"]]
            + " the clean test accuracy"
        )
    dc = claims.get("smoothed_teachers_distil_worse_students")
    if dc is not None and not dc.get("reason"):
        parts.append(
            f"students of ε = {_eps(dc.get('factor'))} teachers are "
            + {"held": "less accurate than", "did not hold": "more accurate than",
               "inconclusive": "not clearly different from"}[dc["status"]]
            + " students of unsmoothed teachers"
        )
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _with_debiased(sentence: str, c: Mapping[str, Any]) -> str:
    """``sentence`` and, when the claim carries it, its debiased calibration error interval."""
    deb = c.get("debiased")
    return f"{sentence}; debiased calibration error (L2) {_interval(deb)}" if deb else sentence


def claim_sentence(c: Any) -> str:
    """The claim as a sentence with the numbers behind its status (no status word)."""
    c = _d(c) if not isinstance(c, Mapping) else dict(c)
    name, eps = c["claim"], _eps(c.get("factor"))
    chosen = f"smoothing at ε = {eps} (the smoothed factor with the lowest validation NLL)"
    holm = (
        f" (seed-level paired difference, 95% t-interval; Holm p = {_f(c.get('p_holm'), 3)} "
        f"over {c.get('family')} factor{'s' if c.get('family') != 1 else ''})"
        if c.get("p_holm") is not None
        else ""
    )
    if name == "baseline_overconfident":
        return (
            "the unsmoothed model is overconfident (mean confidence above accuracy on test): "
            f"signed gap {_interval(c)}"
        )
    if name.startswith("lower_") and name.endswith("_than_baseline"):
        m = name[len("lower_") : -len("_than_baseline")]
        return _with_debiased(
            f"{chosen} gives a lower {_METRIC_WORDS[m]} than the unsmoothed model: "
            f"{_interval(c)}{holm}",
            c,
        )
    if name.startswith("lower_") and name.endswith("_than_baseline_ts"):
        m = name[len("lower_") : -len("_than_baseline_ts")]
        return _with_debiased(
            f"{chosen}, as trained, gives a lower {_METRIC_WORDS[m]} than the unsmoothed model "
            f"after temperature scaling: {_interval(c)}{holm}",
            c,
        )
    if name == "better_refinement_than_baseline":
        return (
            f"{chosen} has a lower refinement loss (test NLL after temperature scaling) than the "
            f"unsmoothed model: {_interval(c)}{holm}; the calibration part (NLL − NLL after TS) "
            f"is {_f(c.get('calibration_nll'), 4)} at ε = {eps} and "
            f"{_f(c.get('baseline_calibration_nll'), 4)} at ε = 0"
        )
    if name == "higher_accuracy_than_baseline":
        return f"{chosen} has a higher test accuracy than the unsmoothed model: {_interval(c)}{holm}"
    if name == "higher_train_nll_than_baseline":
        return (
            f"{chosen} fits the training labels less well: its hard-label training NLL (kept "
            f"checkpoint, evaluation mode) is higher than the unsmoothed model's: "
            f"{_interval(c)}{holm}"
        )
    if name == "large_factor_underfits":
        if c.get("reason") == "is_chosen":
            return (
                f"ε = {eps} underfits: it is itself the factor validation NLL chose, so it does "
                "not fall below it"
            )
        tr, te = c.get("train_accuracy", {}), c.get("test_accuracy", {})
        return (
            f"ε = {eps} underfits: both its training and its test accuracy fall below those of "
            f"ε = {_eps(c.get('chosen'))} (chosen on validation NLL) beyond the paired 95% "
            f"interval: training {_interval(tr)}, test {_interval(te)}"
        )
    if name == "large_factor_underconfident":
        return (
            f"ε = {eps} leaves the model underconfident (mean confidence below accuracy on "
            f"test): signed gap {_interval(c)}"
        )
    if name == "smoothing_helps_under_label_noise":
        return _noise_sentence(c, chosen, holm)
    if name == "smoothed_teachers_distil_worse_students":
        return _distill_sentence(c, holm)
    return name.replace("_", " ")


def _noise_words(c: Mapping[str, Any]) -> str:
    """``20% symmetric label noise`` from a claim or a scope's ``label_noise``."""
    rate, kind = c.get("noise_rate", c.get("rate")), c.get("noise_kind", c.get("kind"))
    pct = "noisy labels" if rate is None else f"{100 * float(rate):.3g}% label noise"
    if kind and rate is not None:
        if str(kind).startswith("given"):  # the data's own noisy / clean labels (data.py)
            pct = f"{100 * float(rate):.3g}% label noise (the data's own noisy vs clean labels)"
        else:
            pct = f"{100 * float(rate):.3g}% {kind} label noise"
    return pct


def _noise_sentence(c: Mapping[str, Any], chosen: str, holm: str) -> str:
    words = _noise_words(c)
    if c.get("reason"):
        return f"smoothing helps under {words}: not judged ({c['reason']})"
    s = (
        f"under {words} in the training labels, {chosen} reaches a higher clean test accuracy "
        f"than the unsmoothed model trained on the same noisy labels: {_interval(c)}{holm}"
    )
    for key, what in (("test_nll", "clean test NLL"), ("test_ece", "clean test ECE")):
        d = c.get(key)
        if d:
            s += f"; {what} {_interval(d)}"
    memo = c.get("memorisation") or {}
    noisy, true = memo.get("memo_noisy_label_accuracy"), memo.get("memo_true_label_accuracy")
    if noisy and true:
        s += (
            f"; memorisation (training accuracy on the flipped examples against their noisy "
            f"label / their true label): {_f(noisy.get('smoothed'))} / {_f(true.get('smoothed'))} "
            f"at ε = {_eps(c.get('factor'))} against {_f(noisy.get('baseline'))} / "
            f"{_f(true.get('baseline'))} at ε = 0"
        )
        d = memo.get("noisy_label_accuracy_diff")
        if d:
            s += f" (paired difference on the noisy label {_interval(d)})"
    return s


def _distill_sentence(c: Mapping[str, Any], holm: str) -> str:
    eps = _eps(c.get("factor"))
    if c.get("reason"):
        return f"smoothed teachers distil worse students: not judged ({c['reason']})"
    how = ""
    if c.get("student") or c.get("temperature"):
        how = (
            f" ({'a student of the same architecture' if c.get('student') in (None, 'same') else 'a small MLP student'} on the teacher's soft targets at "
            f"T = {_f(c.get('temperature'), 1) if c.get('temperature') else '–'}, no smoothing)"
        )
    s = (
        f"the students of teachers trained at ε = {eps} (the smoothed teacher factor with the "
        f"lowest validation NLL of the teachers){how} are less accurate on test than the "
        f"students of unsmoothed teachers: {_interval(c)}{holm}"
    )
    nll = c.get("student_test_nll")
    if nll:
        s += f"; student test NLL {_interval(nll)}"
    t = c.get("teacher_test_accuracy")
    if t:
        s += f"; the teachers themselves, test accuracy {_interval(t)}"
    return s


_TITLES = {
    "baseline_overconfident": "the unsmoothed model is overconfident (signed gap > 0)",
    "lower_nll_than_baseline": "ε = {e} has a lower test NLL than ε = 0",
    "lower_brier_than_baseline": "ε = {e} has a lower test Brier score than ε = 0",
    "lower_ece_than_baseline": "ε = {e} has a lower test ECE than ε = 0",
    "lower_nll_than_baseline_ts": "ε = {e} has a lower test NLL than ε = 0 after temperature scaling",
    "lower_brier_than_baseline_ts": (
        "ε = {e} has a lower test Brier score than ε = 0 after temperature scaling"
    ),
    "lower_ece_than_baseline_ts": "ε = {e} has a lower test ECE than ε = 0 after temperature scaling",
    "better_refinement_than_baseline": "ε = {e} has a lower NLL after temperature scaling (refinement)",
    "higher_accuracy_than_baseline": "ε = {e} is more accurate on test than ε = 0",
    "higher_train_nll_than_baseline": "ε = {e} has a higher hard-label training NLL than ε = 0",
    "large_factor_underfits": "ε = {e} underfits (train and test accuracy below ε = {c})",
    "large_factor_underconfident": "ε = {e} is underconfident (signed gap < 0)",
    "smoothing_helps_under_label_noise": (
        "ε = {e} has a higher clean test accuracy than ε = 0 under label noise"
    ),
    "smoothed_teachers_distil_worse_students": (
        "ε = {e} teachers distil less accurate students than ε = 0 teachers"
    ),
}


def claim_label(name: str) -> str:
    """A claim in a few words without its factor (``ε*`` is the validation-chosen one), for the
    rows of a claims × testbeds table.

    Example:
        >>> claim_label("lower_ece_than_baseline")
        'ε* has a lower test ECE than ε = 0'
    """
    t = _TITLES.get(name, name.replace("_", " "))
    # the large-factor claims test the largest ε ≥ 0.3, not the validation-chosen one
    mine = "the largest ε" if name.startswith("large_factor") else "ε*"
    return t.replace("ε = {e}", mine).replace("ε = {c}", "ε chosen on validation")


def claim_title(c: Any) -> str:
    """The claim in a few words, with its factor (for one terminal line).

    Example:
        >>> claim_title({"claim": "lower_ece_than_baseline", "status": "held", "factor": 0.1})
        'ε = 0.1 has a lower test ECE than ε = 0'
    """
    c = c if isinstance(c, Mapping) else _d(c)
    t = _TITLES.get(c["claim"], c["claim"].replace("_", " "))
    return t.format(e=_eps(c.get("factor")), c=_eps(c.get("chosen")))


def render_text(v: Any) -> str:
    """Plain text for the terminal: headline, scope, warnings, then ``status  claim`` lines."""
    d = _d(v)
    lines = [headline(d), scope_sentence(d).replace("**", "").replace("`", "")]
    lines += ["warning: " + w for w in warning_sentences(d)]
    for c in d["verdict"]:
        lines.append(f"  {c['status']:<13} {claim_sentence(c)}".replace("**", ""))
    return "\n".join(lines)


def verdict_blocks(v: Any) -> list[tuple]:
    """Report blocks (``("p", text)``, ``("li", text)``, ``("table", head, rows)``) of the
    verdict section, for :mod:`labelsmooth.experiments.report`."""
    d = _d(v)
    b: list[tuple] = [("p", scope_sentence(d))]
    for w in warning_sentences(d):
        b.append(("p", f"**Warning:** {w}"))
    b.append(("p", f"**{headline(d)}**"))
    b.append(("p", _selection_sentence(d["selection"])))
    for extra in d.get("selections", [])[1:]:
        b.append(("p", _selection_sentence(extra)))
    for c in d["verdict"]:
        b.append(("li", f"**{c['status'].capitalize()}:** {claim_sentence(c)}."))
    b.append(
        (
            "p",
            "A claim *held* when the paired seed-level interval of its difference excludes 0 in "
            "the claimed direction, *did not hold* when it excludes 0 the other way, and is "
            "*inconclusive* when it contains 0. Comparisons of several factors with the baseline "
            f"are Holm-adjusted (family-wise α = {d['scope'].get('alpha', 0.05):g}). "
            "Nothing is chosen on the test split.",
        )
    )
    return b
