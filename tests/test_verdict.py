"""The verdict as data: seed-level paired statistics, validation selection, claim statuses.

The synthetic results are built so that the truth is known: smoothing helps, hurts, or changes
nothing beyond noise; the statuses must follow. A reviewer's recomputation from results.csv
(scipy's paired t-test and a hand-written Holm step) must give the statuses the report prints.
"""

from __future__ import annotations

import ast
import csv
import math
import os

import numpy as np
import pytest

from labelsmooth.experiments import render, stats
from labelsmooth.experiments.sweep import summarize, write_csv
from labelsmooth.experiments.verdict import CLAIMS, STATUSES, select, verdict

SEEDS = range(5)
METRICS = ("nll", "brier", "ece", "ece_debiased", "accuracy", "gap")


def _rows(effects, *, seeds=SEEDS, noise=0.002, base=None, rng=0, seed_spread=0.05):
    """Per-run rows: value = baseline + effect(ε) + seed effect (shared by all factors, i.e.
    paired) + independent noise of size ``noise``."""
    g = np.random.default_rng(rng)
    base = base or {
        "test_nll": 1.20,
        "test_brier": 0.50,
        "test_ece": 0.15,
        "test_ece_debiased": 0.16,
        "test_accuracy": 0.65,
        "test_gap": 0.15,
        "ts_nll": 1.00,
        "ts_brier": 0.46,
        "ts_ece": 0.03,
        "ts_ece_debiased": 0.035,
        "val_nll": 1.25,
        "val_ece": 0.14,
        "train_nll": 0.30,
        "train_accuracy": 0.95,
    }
    seed_fx = {s: np.full(len(base), g.normal(0, seed_spread)) for s in seeds}
    rows = []
    for eps, fx in effects.items():
        for s in seeds:
            r = {"smoothing": eps, "seed": s, "selected_epoch": 10, "epochs_run": 25}
            for j, (k, v) in enumerate(base.items()):
                r[k] = v + fx.get(k, 0.0) + seed_fx[s][j] + g.normal(0, noise)
            rows.append(r)
    return rows


def _status(v, name):
    c = v.claim(name)
    return None if c is None else c.status


HELPS = {
    0.0: {},
    0.1: {
        "test_nll": -0.15, "test_brier": -0.04, "test_ece": -0.11, "test_ece_debiased": -0.11,
        "test_gap": -0.13, "ts_nll": -0.03, "ts_brier": -0.02, "ts_ece": -0.005,
        "val_nll": -0.15, "train_nll": 0.20, "test_accuracy": 0.02, "train_accuracy": -0.01,
    },
    0.5: {
        "test_nll": 0.10, "test_brier": 0.05, "test_ece": 0.10, "test_gap": -0.30,
        "val_nll": 0.05, "train_nll": 0.9, "test_accuracy": -0.05, "train_accuracy": -0.10,
    },
}
# ts_* of the baseline is 1.00 / 0.46 / 0.03: the smoothed model as trained (1.05 / 0.46 / 0.04)
# is compared against these in the *_ts claims.


def test_smoothing_that_helps_holds_and_the_large_factor_underfits():
    v = verdict(_rows(HELPS))
    assert v.selection["split"] == "val" and v.selection["metric"] == "nll"
    assert v.selection["best_smoothing"] == 0.1 and v.selection["smoothed_choice"] == 0.1
    assert _status(v, "baseline_overconfident") == "held"
    for name in ("lower_nll_than_baseline", "lower_brier_than_baseline", "lower_ece_than_baseline",
                 "better_refinement_than_baseline", "higher_accuracy_than_baseline",
                 "higher_train_nll_than_baseline", "large_factor_underfits",
                 "large_factor_underconfident"):
        assert _status(v, name) == "held", name
    # against the temperature-scaled baseline the smoothed model is worse on NLL (1.05 vs 1.00)
    assert _status(v, "lower_nll_than_baseline_ts") == "did not hold"
    assert _status(v, "lower_ece_than_baseline_ts") == "did not hold"  # 0.04 vs 0.03
    assert {c.status for c in v.claims} <= set(STATUSES)
    assert [c.claim for c in v.claims] == [c for c in CLAIMS if v.claim(c) is not None]
    assert v.scope["n_seeds"] == 5 and v.scope["warnings"] == []


def test_smoothing_that_hurts_does_not_hold():
    hurts = {
        0.0: {"test_gap": -0.13},  # a calibrated baseline (gap ~ +0.02)
        0.2: {"test_nll": 0.2, "test_brier": 0.05, "test_ece": 0.10, "test_ece_debiased": 0.1,
              "test_gap": -0.30, "val_nll": 0.2, "ts_nll": 0.05, "train_nll": -0.05},
    }
    v = verdict(_rows(hurts))
    assert v.selection["best_smoothing"] == 0.0  # validation chose no smoothing
    for name in ("lower_nll_than_baseline", "lower_brier_than_baseline", "lower_ece_than_baseline",
                 "lower_nll_than_baseline_ts", "better_refinement_than_baseline",
                 "higher_train_nll_than_baseline"):
        assert _status(v, name) == "did not hold", name
    assert _status(v, "baseline_overconfident") == "inconclusive"  # gap 0.02 ± seed spread
    assert _status(v, "higher_accuracy_than_baseline") == "inconclusive"
    assert v.claim("large_factor_underfits") is None  # no factor >= 0.3: not tested


def test_a_tie_names_no_best_and_every_comparison_is_inconclusive():
    tie = {0.0: {}, 0.05: {}, 0.1: {}}
    v = verdict(_rows(tie, noise=0.01, seed_spread=0.0))
    assert v.selection["best_smoothing"] is None
    assert v.selection["candidate"] is not None and v.selection["tied_with"]
    for c in v.claims:  # (the *_ts claims compare against a different, lower baseline)
        if c.claim != "baseline_overconfident" and not c.claim.endswith("_ts"):
            assert c.status == "inconclusive", (c.claim, c.numbers)
    text = render.render_text(v)
    assert "No best" in render.verdict_blocks(v)[2 + 0][1] or "no factor is best" in text


def test_holm_turns_a_marginal_difference_into_a_tie():
    # One factor differs at p ~ 0.02 unadjusted; with 4 factors Holm needs p < 0.0125.
    d = [0.010, 0.004, 0.012, 0.002, 0.007]
    base = {"test_ece": 0.10}
    rows = []
    for s, x in enumerate(d):
        rows.append({"smoothing": 0.0, "seed": s, "test_ece": base["test_ece"], "val_nll": 1.0})
        rows.append({"smoothing": 0.1, "seed": s, "test_ece": 0.10 - x, "val_nll": 0.9})
        for f in (0.2, 0.3, 0.4):
            rows.append({"smoothing": f, "seed": s, "test_ece": 0.10 + (-1) ** s * 0.01,
                         "val_nll": 1.0 + f})
    raw = stats.paired_diff([0.10 - x for x in d], [0.10] * 5, metric="ece", factor=0.1,
                            reference=0.0)
    assert raw.different  # p < 0.05 on its own
    v = verdict(rows)
    c = v.claim("lower_ece_than_baseline")
    assert c.numbers["family"] == 4 and c.numbers["p_holm"] > 0.05 > c.numbers["p"]
    assert c.status == "inconclusive"


def test_one_seed_is_inconclusive_and_warned():
    v = verdict(_rows(HELPS, seeds=[0]))
    assert "one_seed" in v.scope["warnings"]
    assert all(c.status == "inconclusive" for c in v.claims if c.claim != "large_factor_underfits")
    assert any("Only one seed" in w for w in render.warning_sentences(v))


def test_underfitting_needs_train_and_test_accuracy_below_the_chosen_factor():
    fx = {k: dict(v) for k, v in HELPS.items()}
    fx[0.5]["train_accuracy"] = -0.01  # as accurate on train as the chosen ε = 0.1 ...
    fx[0.5]["test_accuracy"] = -0.05  # ... only test accuracy lower
    assert _status(verdict(_rows(fx)), "large_factor_underfits") == "inconclusive"
    fx[0.5]["test_accuracy"] = 0.08  # clearly more accurate than the chosen ε = 0.1
    assert _status(verdict(_rows(fx)), "large_factor_underfits") == "did not hold"
    fx[0.5]["val_nll"] = -0.5  # validation chose ε = 0.5 itself
    v = verdict(_rows(fx))
    assert v.selection["candidate"] == 0.5
    assert _status(v, "large_factor_underfits") == "did not hold"


def test_baseline_far_below_its_reference_is_warned():
    cfg = {"dataset": "mnist1d", "model": "mlp",
           "recipe": {"name": "mnist1d-mlp",
                      "reference": {"accuracy": 0.68, "minimum": 0.66, "source": "README"}}}
    v = verdict(_rows(HELPS), cfg)  # baseline accuracy 0.65 < 0.66
    assert "baseline_below_reference" in v.scope["warnings"]
    s = render.scope_sentence(v)
    assert "0.68" in s and "mnist1d" in s and "5 paired seeds" in s


def test_selection_on_validation_ece_is_reported_beside_nll():
    rows = _rows(HELPS)
    for r in rows:  # validation ECE prefers the large factor
        r["val_ece"] = 0.01 if r["smoothing"] == 0.5 else 0.2 + 0.001 * r["seed"]
    v = verdict(rows, select_on=("nll", "ece"))
    assert [s["metric"] for s in v.selections] == ["nll", "ece"]
    assert v.selections[1]["best_smoothing"] == 0.5 and v.selection["best_smoothing"] == 0.1
    assert select(rows, "ece")["split"] == "val"


# --------------------------------------------------------------------------------------------
# a reviewer recomputes the statuses from results.csv
# --------------------------------------------------------------------------------------------
def _holm_by_hand(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    adj, run = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = run
    return adj


@pytest.mark.parametrize("effects", [HELPS, {0.0: {}, 0.05: {}, 0.1: {"test_ece": -0.003}}])
def test_statuses_recomputed_from_results_csv(tmp_path, effects):
    sp = pytest.importorskip("scipy.stats")
    rows = _rows(effects, noise=0.003)
    path = os.path.join(tmp_path, "results.csv")
    write_csv(path, rows, summarize(rows))
    with open(path) as fh:
        read = list(csv.DictReader(fh))
    v_mem, v_csv = verdict(rows), verdict(read)
    assert [(c.claim, c.status) for c in v_mem.claims] == [(c.claim, c.status) for c in v_csv.claims]
    # independent recomputation: scipy paired t-test per factor, Holm by hand
    runs = [r for r in read if r["kind"] == "run"]
    factors = sorted({float(r["smoothing"]) for r in runs} - {0.0})

    def col(f, key):
        return [float(r[key]) for r in sorted(runs, key=lambda r: int(r["seed"]))
                if float(r["smoothing"]) == f]

    for metric, want in (("test_nll", -1), ("test_ece", -1), ("test_accuracy", +1)):
        p = [sp.ttest_rel(col(f, metric), col(0.0, metric)).pvalue for f in factors]
        adj = _holm_by_hand(p)
        eps = v_csv.selection["smoothed_choice"]
        i = factors.index(eps)
        diff = np.mean(np.subtract(col(eps, metric), col(0.0, metric)))
        expect = ("inconclusive" if adj[i] >= 0.05 else
                  "held" if np.sign(diff) == want else "did not hold")
        name = {"test_nll": "lower_nll_than_baseline", "test_ece": "lower_ece_than_baseline",
                "test_accuracy": "higher_accuracy_than_baseline"}[metric]
        assert v_csv.claim(name).status == expect, (name, p, adj)
        assert v_csv.claim(name).numbers["p"] == pytest.approx(p[i], rel=1e-6, abs=1e-12)


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------
def test_t_interval_and_paired_test_match_scipy():
    sp = pytest.importorskip("scipy.stats")
    a = np.array([0.31, 0.29, 0.35, 0.30, 0.33])
    b = np.array([0.28, 0.27, 0.30, 0.29, 0.30])
    d = stats.paired_diff(a, b, metric="m", factor=0.1, reference=0.0)
    res = sp.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    assert d.p == pytest.approx(res.pvalue, rel=1e-9)
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert d.effect_size == pytest.approx((a - b).mean() / (a - b).std(ddof=1))
    one = stats.paired_diff([0.3], [0.2], metric="m", factor=0.1, reference=0.0)
    assert math.isnan(one.low) and not one.different  # one seed measures no noise
    same = stats.paired_diff([0.5, 0.75], [0.25, 0.5], metric="m", factor=0.1, reference=0.0)
    # Identical differences on every seed: no spread, so the exact sign test decides (p = 2^(1-n)),
    # not a t statistic of infinity (p = 0 called two seeds "different").
    assert same.p == 0.5 and same.low == same.high == 0.25 and not same.different
    five = stats.paired_diff([0.9778] * 5, [0.9667] * 5, metric="m", factor=0.1, reference=0.0)
    assert five.p == pytest.approx(0.0625) and not five.different
    six = stats.paired_diff([0.9778] * 6, [0.9667] * 6, metric="m", factor=0.1, reference=0.0)
    assert six.p == pytest.approx(2.0 ** -5) and six.different and six.direction == 1
    assert sp.binomtest(6, 6).pvalue == pytest.approx(six.p)  # scipy's exact sign test agrees


def test_holm_by_hand():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, float("nan")]) == pytest.approx([1.0, 1.0])
    assert stats.holm([0.001, 0.2, 0.01, 0.02]) == pytest.approx(_holm_by_hand([0.001, 0.2, 0.01, 0.02]))


def test_paired_bootstrap_ece_matches_the_calibration_metric():
    import torch

    from labelsmooth.calibration import expected_calibration_error

    g = np.random.default_rng(1)
    z = g.normal(size=(300, 4)) * 2
    y = g.integers(0, 4, 300)
    m = stats.per_sample_metrics(z, y, 15)
    ece = stats._ece_resampled(m, np.arange(300)[None, :])[0]
    ref = float(expected_calibration_error(torch.from_numpy(z), torch.from_numpy(y), 15,
                                           from_logits=True))
    assert ece == pytest.approx(ref, abs=1e-12)
    z2 = z + g.normal(size=z.shape)
    m2 = stats.per_sample_metrics(z2, y, 15)
    lo, hi = stats.paired_bootstrap([m2], [m], "nll", n_resamples=300, seed=0)
    point = m2["nll"].mean() - m["nll"].mean()
    assert lo < point < hi


# --------------------------------------------------------------------------------------------
# rendering and structure
# --------------------------------------------------------------------------------------------
def test_render_accepts_the_json_form_and_words_every_claim():
    v = verdict(_rows(HELPS))
    d = v.as_dict()
    assert [set(c) >= {"claim", "status"} for c in d["verdict"]] == [True] * len(d["verdict"])
    import json

    d = json.loads(json.dumps(d))  # strict JSON round trip (no NaN)
    assert render.render_text(d) == render.render_text(v)
    for c in d["verdict"]:
        s = render.claim_sentence(c)
        assert s and "_" not in s.split(":")[0], s  # a sentence, not the claim's identifier
    assert render.headline(v).startswith("Validation NLL chose ε = 0.1")


def test_verdict_modules_do_not_import_the_sweep():
    here = os.path.dirname(os.path.abspath(__file__))
    pkg = os.path.join(here, "..", "src", "labelsmooth", "experiments")
    for name in ("report.py", "verdict.py", "render.py", "stats.py"):
        tree = ast.parse(open(os.path.join(pkg, name)).read())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "labelsmooth.experiments.sweep" not in mods, name


def test_resampled_statistics_are_the_metrics_of_the_resamples():
    g = np.random.default_rng(2)
    z = g.normal(size=(120, 3)) * 3
    y = g.integers(0, 3, 120)
    m = stats.per_sample_metrics(z, y, 10)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, 120, size=(7, 120))
    counts = np.zeros((7, 120))
    np.add.at(counts, (np.arange(7)[:, None], idx), 1.0)
    r = stats.resampled(m, counts)
    assert r["ece"] == pytest.approx(stats._ece_resampled(m, idx), abs=1e-12)
    assert r["nll"] == pytest.approx(m["nll"][idx].mean(axis=1), abs=1e-12)
    c = stats.resample_counts(120, 7, seed=5)
    assert c.sum(axis=1).tolist() == [120.0] * 7 and (c == counts).all()  # same draws


# --------------------------------------------------------------------------------------------
# label noise and distillation claims (issue 18): planted truths
# --------------------------------------------------------------------------------------------
NOISE = {"rate": 0.2, "kind": "symmetric", "seed": 0, "flipped": 100}


def _noisy(acc_gain, memo_drop=0.3, **kw):
    """ε = 0.1 is chosen on validation; its clean test accuracy differs from ε = 0's by
    ``acc_gain`` (0: a tie); it memorises fewer flipped labels by ``memo_drop``."""
    base = {"memo_noisy_label_accuracy": 0.9, "memo_true_label_accuracy": 0.05,
            "memo_clean_example_accuracy": 0.99}
    fx = {0.0: {}, 0.1: {"val_nll": -0.1, "test_accuracy": acc_gain,
                        "memo_noisy_label_accuracy": -memo_drop,
                        "memo_true_label_accuracy": memo_drop * 0.8},
          0.3: {"val_nll": 0.05, "test_accuracy": acc_gain / 2}}
    rows = _rows(fx, **kw)
    g = np.random.default_rng(7)
    for r in rows:
        for k, v in base.items():
            r[k] = v + fx[r["smoothing"]].get(k, 0.0) + g.normal(0, 0.002)
    return rows


@pytest.mark.parametrize("gain, expect", [(0.05, "held"), (-0.05, "did not hold"),
                                          (0.0, "inconclusive")])
def test_noise_claim_follows_the_planted_truth(gain, expect):
    cfg = {"label_noise": NOISE}
    v = verdict(_noisy(gain, noise=0.01), cfg)
    c = v.claim("smoothing_helps_under_label_noise")
    assert c is not None and c.status == expect
    assert c.numbers["factor"] == 0.1 and c.numbers["selected_on"] == {"split": "val", "metric": "nll"}
    assert c.numbers["noise_rate"] == 0.2 and c.numbers["mean"] == pytest.approx(gain, abs=0.02)
    memo = c.numbers["memorisation"]
    assert memo["memo_noisy_label_accuracy"]["baseline"] == pytest.approx(0.9, abs=0.01)
    assert memo["memo_noisy_label_accuracy"]["smoothed"] == pytest.approx(0.6, abs=0.01)
    assert memo["noisy_label_accuracy_diff"]["different"]  # memorises fewer flipped labels
    # the factor table carries the memorisation means (the report's memorisation table)
    f0 = next(f for f in v.factors if f["smoothing"] == 0.0)
    assert f0["memo_noisy_label_accuracy"] == pytest.approx(0.9, abs=0.01)
    # the JSON form and the renderer know the claim
    d = v.as_dict()
    import json

    j = json.loads(json.dumps(d))
    names = [x["claim"] for x in j["verdict"]]
    assert names.index("smoothing_helps_under_label_noise") == len(names) - 1
    text = render.render_text(j)
    assert "label noise" in text and "20%" in text
    assert render.claim_title(c.as_dict()).startswith("ε = 0.1 ")


def test_noise_claim_only_with_noise_and_one_seed_is_inconclusive():
    assert verdict(_rows(HELPS)).claim("smoothing_helps_under_label_noise") is None
    clean = verdict(_noisy(0.05), {"label_noise": {**NOISE, "rate": 0.0}})
    assert clean.claim("smoothing_helps_under_label_noise") is None  # rate 0: the clean run
    one = verdict(_noisy(0.05, seeds=range(1)), {"label_noise": NOISE})
    assert one.claim("smoothing_helps_under_label_noise").status == "inconclusive"
    no_base = [r for r in _noisy(0.05) if r["smoothing"] > 0]
    c = verdict(no_base, {"label_noise": NOISE}).claim("smoothing_helps_under_label_noise")
    assert c.status == "inconclusive" and "ε = 0" in c.numbers["reason"]


def _distilled(student_change, **kw):
    """Teachers: ε = 0.1 is chosen on the teachers' validation NLL and is itself *more*
    accurate; its students differ from ε = 0's students by ``student_change``."""
    fx = {0.0: {}, 0.1: {"val_nll": -0.1, "test_accuracy": 0.02},
          0.3: {"val_nll": 0.05, "test_accuracy": 0.01}}
    rows = _rows(fx, **kw)
    g = np.random.default_rng(3)
    for r in rows:
        e = r["smoothing"]
        change = {0.0: 0.0, 0.1: student_change, 0.3: student_change}[e]
        r["student_test_accuracy"] = 0.80 + change + g.normal(0, 0.002)
        r["student_test_nll"] = 0.60 - change + g.normal(0, 0.002)
        r["student_test_ece"] = 0.05 + g.normal(0, 0.002)
    return rows


@pytest.mark.parametrize("change, expect", [(-0.04, "held"), (0.04, "did not hold"),
                                            (0.0, "inconclusive")])
def test_distill_claim_follows_the_planted_truth(change, expect):
    v = verdict(_distilled(change, noise=0.01), {"distill": {"student": "same", "temperature": 2.0}})
    c = v.claim("smoothed_teachers_distil_worse_students")
    assert c is not None and c.status == expect, c.numbers
    n = c.numbers
    assert n["factor"] == 0.1 and n["selected_on"]["of"] == "teachers" and n["temperature"] == 2.0
    assert 0 < n["teacher_test_accuracy"]["mean"] < 0.05  # planted +0.02, seed noise 0.01
    assert [p["factor"] for p in n["per_factor"]] == [0.1, 0.3]
    assert v.claim("smoothing_helps_under_label_noise") is None
    text = render.render_text(json_roundtrip(v.as_dict()))
    assert "distil" in text and "teacher" in text


def json_roundtrip(d):
    import json

    return json.loads(json.dumps(d))


def test_distill_claim_needs_a_baseline_teacher():
    rows = [r for r in _distilled(-0.04) if r["smoothing"] > 0]
    c = verdict(rows).claim("smoothed_teachers_distil_worse_students")
    assert c.status == "inconclusive" and "ε = 0" in c.numbers["reason"]
    assert verdict(_rows(HELPS)).claim("smoothed_teachers_distil_worse_students") is None


def test_new_claims_recomputed_from_results_csv(tmp_path):
    """results.csv carries memo_* and student_* columns: the statuses come back from it."""
    rows = _noisy(0.05)
    for r, d in zip(rows, _distilled(-0.04)):
        r.update({k: v for k, v in d.items() if k.startswith("student_")})
    path = os.path.join(tmp_path, "results.csv")
    write_csv(path, rows, summarize(rows))
    with open(path) as fh:
        read = list(csv.DictReader(fh))
    for name in ("smoothing_helps_under_label_noise", "smoothed_teachers_distil_worse_students"):
        assert verdict(read, {"label_noise": NOISE}).claim(name).status == \
            verdict(rows, {"label_noise": NOISE}).claim(name).status == "held"


def test_recompute_verdict_example_agrees_on_the_new_claims(tmp_path, capsys):
    """examples/recompute_verdict.py (scipy + a hand Holm) re-derives the noise and distillation
    statuses from results.csv and finds no mismatch with results.json."""
    pytest.importorskip("scipy")
    import importlib.util
    import json

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "recompute_verdict", os.path.join(here, "..", "examples", "recompute_verdict.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = _noisy(0.05)
    for r, d in zip(rows, _distilled(-0.04)):
        r.update({k: v for k, v in d.items() if k.startswith("student_")})
    write_csv(os.path.join(tmp_path, "results.csv"), rows, summarize(rows))
    v = verdict(rows, {"label_noise": NOISE})
    (tmp_path / "results.json").write_text(json.dumps({"verdict": v.as_dict()["verdict"]}))
    assert mod.main(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "smoothing_helps_under_label_noise  recomputed: held" in out
    assert "smoothed_teachers_distil_worse_students recomputed: held" in out
    # a wrong status in results.json is caught
    bad = v.as_dict()["verdict"]
    bad[-1]["status"] = "did not hold"
    (tmp_path / "results.json").write_text(json.dumps({"verdict": bad}))
    assert mod.main(str(tmp_path)) == 1
