"""The method comparison (issue 16 item 4): planted truths, selection on validation, runs, CLI."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import labelsmooth as ls
from labelsmooth import schedules
from labelsmooth.experiments.methods import (
    DEFAULT_GRIDS,
    Method,
    compare,
    compare_methods,
    parse_grid,
    render_comparison,
)

SEEDS = 5
BASE = np.array([1.00, 1.10, 0.95, 1.05, 1.20])  # per-seed baseline values
JITTER = np.array([0.01, -0.02, 0.015, -0.005, 0.0])


def _rows(effects: dict[tuple[str, object], dict[str, float]], seeds: int = SEEDS, ts_gain=0.2):
    """Rows with planted per-seed effects: metric = baseline + effect (+ jitter: full for ties)."""
    rows = []
    for k in range(seeds):
        base = {"val_nll": BASE[k], "test_nll": BASE[k] + 0.1, "test_ece": 0.10 + BASE[k] / 20,
                "test_brier": 0.3 + BASE[k] / 10, "test_accuracy": 0.7 - BASE[k] / 50}
        rows.append({"method": "baseline", "strength": 0.0, "seed": k, **base,
                     "ts_nll": base["test_nll"] - ts_gain, "ts_ece": base["test_ece"] - 0.08,
                     "ts_brier": base["test_brier"] - 0.01})
        for (name, strength), eff in effects.items():
            r = {"method": name, "strength": strength, "seed": k}
            for key, v in base.items():
                d = eff.get(key, 0.0)
                # a planted effect varies a little by seed, as trained models do (identical
                # differences on every seed are judged by the sign test, see stats._t_test)
                r[key] = v + (JITTER[k] if d == "tie" else d + (JITTER[k] / 10 if d else 0.0))
            rows.append(r)
    return rows


def test_planted_better_worse_and_tie():
    rows = _rows({
        ("focal", 2.0): {"val_nll": -0.05, "test_nll": -0.05, "test_ece": -0.03},
        ("poly", 1.0): {"val_nll": 0.05, "test_nll": 0.08, "test_accuracy": -0.04},
        ("confidence_penalty", 0.5): {"val_nll": 0.01, "test_nll": "tie"},
    })
    c = compare(rows)
    by = {e["method"]: e for e in c["methods"]}
    assert by["focal"]["vs_baseline"]["nll"]["status"] == "better"
    assert by["focal"]["vs_baseline"]["ece"]["status"] == "better"
    assert by["poly"]["vs_baseline"]["nll"]["status"] == "worse"
    assert by["poly"]["vs_baseline"]["accuracy"]["status"] == "worse"
    assert by["confidence_penalty"]["vs_baseline"]["nll"]["status"] == "indistinguishable"
    # ranked on validation NLL: focal (−0.05) < baseline < cp (+0.01) < poly (+0.05)
    assert [e["method"] for e in c["methods"]] == ["focal", "confidence_penalty", "poly"]
    assert [by[m]["rank"] for m in ("focal", "confidence_penalty", "poly")] == [1, 3, 4]
    assert c["baseline"]["rank"] == 2
    assert c["selection"]["split"] == "val" and c["ranking"]["split"] == "val"
    # the paired difference a reviewer recomputes from the rows
    d = by["poly"]["vs_baseline"]["nll"]
    assert d["mean"] == pytest.approx(0.08) and d["n"] == SEEDS and d["family"] == 3


def test_better_than_baseline_but_not_than_temperature_scaling():
    rows = _rows({("ls", 0.1): {"val_nll": -0.05, "test_nll": -0.05}}, ts_gain=0.2)
    e = compare(rows)["methods"][0]
    assert e["vs_baseline"]["nll"]["status"] == "better"
    assert e["vs_baseline_ts"]["nll"]["status"] == "worse"  # TS lowers NLL by 0.2 > 0.05
    assert e["vs_baseline_ts"]["nll"]["reference_kind"] == "baseline_ts"
    assert "accuracy" not in e["vs_baseline_ts"]  # temperature scaling keeps the argmax


def test_strength_is_chosen_on_validation_never_on_test():
    # strength 0.1 is better on validation, 0.5 much better on test: validation must win
    rows = _rows({("ls", 0.1): {"val_nll": -0.05, "test_nll": 0.02},
                  ("ls", 0.5): {"val_nll": 0.03, "test_nll": -0.3}})
    e = compare(rows)["methods"][0]
    assert e["strength"] == 0.1
    assert [g["strength"] for g in e["grid"]] == [0.1, 0.5]
    assert e["vs_baseline"]["nll"]["status"] == "worse"


def test_holm_adjustment_can_turn_a_lone_difference_into_a_tie():
    # focal's paired NLL difference is 0.02 + jitter: p ≈ 0.03 alone ("worse"), but Holm over
    # four methods multiplies the smallest p by 4 (≈ 0.12: "indistinguishable")
    def planted(others):
        rows = _rows({("focal", 2.0): {"test_nll": "tie"}, **{o: {"test_nll": "tie"} for o in others}})
        for r in rows:
            if r["method"] == "focal":
                r["test_nll"] += 0.02
        return {e["method"]: e for e in compare(rows)["methods"]}["focal"]["vs_baseline"]["nll"]

    alone = planted([])
    family = planted([("poly", 1.0), ("ls", 0.1), ("label_relaxation", 0.1)])
    assert 0.0125 < alone["p"] < 0.05 and alone["p"] == pytest.approx(family["p"])
    assert alone["status"] == "worse" and alone["family"] == 1
    assert family["status"] == "indistinguishable" and family["family"] == 4
    assert family["p_holm"] == pytest.approx(min(1.0, 4 * family["p"]))
    assert family["holm_low"] < 0 < family["holm_high"]


def test_one_seed_is_inconclusive_and_warned():
    rows = _rows({("focal", 2.0): {"val_nll": -0.1, "test_nll": -0.1}}, seeds=1)
    c = compare(rows)
    assert c["methods"][0]["vs_baseline"]["nll"]["status"] == "inconclusive"
    assert "one seed" in render_comparison(c)


def test_render_names_the_split_and_every_method():
    rows = _rows({("focal", "flsd-53"): {"val_nll": -0.05}, ("poly", 2.0): {"val_nll": 0.05}})
    text = render_comparison(compare(rows), {"testbed": "t"})
    assert "validation" in text and "focal γ=flsd-53" in text and "poly ε₁=2" in text
    assert "baseline + temperature scaling" in text


def test_compare_needs_the_baseline():
    with pytest.raises(ValueError, match="baseline"):
        compare([{"method": "focal", "strength": 2.0, "seed": 0, "val_nll": 1.0}])


# --- the objectives --------------------------------------------------------------------------

@pytest.mark.parametrize("method,kw", [
    (Method("ls", 0.1), dict(label_smoothing=0.1)),
    (Method("confidence_penalty", 0.5), dict(confidence_penalty=0.5)),
    (Method("focal", "flsd-53"), dict(focal_gamma="flsd-53")),
    (Method("poly", 2.0), dict(poly=2.0)),
])
def test_method_objectives_are_the_cross_entropy_options(method, kw):
    x, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(method(x, y), ls.cross_entropy(x, y, **kw))
    assert pickle.loads(pickle.dumps(method)) == method


def test_method_objectives_of_their_own():
    x, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(Method("label_relaxation", 0.1)(x, y),
                               ls.label_relaxation_loss(x, y, alpha=0.1))
    torch.testing.assert_close(Method("margin", 0.1)(x, y),
                               ls.margin_smoothing_loss(x, y, margin=10.0, lam=0.1))
    torch.testing.assert_close(Method("baseline")(x, y), torch.nn.functional.cross_entropy(x, y))


@pytest.mark.parametrize("name,value", [("ls", 0.0), ("ls", 1.5), ("focal", -1.0), ("focal", "x"),
                                        ("poly", float("nan")), ("nope", 1.0),
                                        ("label_relaxation", 0.0), ("confidence_penalty", True)])
def test_bad_methods_raise(name, value):
    with pytest.raises(ValueError):
        Method(name, value)


def test_parse_grid():
    assert parse_grid({"focal": [3, "flsd-53"], "poly": 1}) == {"focal": (3.0, "flsd-53"), "poly": (1.0,)}
    for bad in (["focal"], ["focal="], ["poly=a"], ["ls=2"]):
        with pytest.raises(ValueError, match="method"):
            parse_grid(bad)
    assert DEFAULT_GRIDS["focal"] == (1.0, 2.0, 3.0, "flsd-53")
    assert DEFAULT_GRIDS["confidence_penalty"] == (0.1, 0.5, 1.0)
    assert DEFAULT_GRIDS["label_relaxation"] == (0.05, 0.1)


# --- schedules -------------------------------------------------------------------------------

def test_named_schedules():
    assert [schedules.named("constant", 0.2, 4)(e) for e in range(5)] == [0.2] * 5
    lin = schedules.named("linear", 0.2, 4)
    assert [round(lin(e), 6) for e in range(5)] == [0.2, 0.15, 0.1, 0.05, 0.0]
    cos = schedules.named("cosine", 0.2, 4)
    assert cos(0) == 0.2 and cos(2) == pytest.approx(0.1) and cos(4) == 0.0
    assert [schedules.named("step", 0.2, 4)(e) for e in range(4)] == [0.2, 0.2, 0.0, 0.0]


# --- runs ------------------------------------------------------------------------------------

def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(150, 6, generator=g), torch.arange(150) % 3


def test_compare_methods_runs_resumes_and_writes(tmp_path):
    kw = dict(grids={"focal": [2.0], "ls": [0.2]}, seeds=2, epochs=3, n_bootstrap=0,
              progress=False, smoothing_schedule="step")
    res = compare_methods(_data(), ["focal", "ls"], out=tmp_path, **kw)
    assert len(res.rows) == 6 and res.reused == 0
    assert {(r["method"], r["seed"]) for r in res.rows} == {
        (m, k) for m in ("baseline", "focal", "ls") for k in (0, 1)}
    assert set(res.paths) == {"methods.json", "methods.csv", "methods.md"}
    assert (tmp_path / "methods.md").read_text() == res.text
    # the step schedule: ε = 0.2 in the first half of the epochs, 0 afterwards (entropy floor)
    ls_row = next(r for r in res.rows if r["method"] == "ls")
    assert ls_row["smoothing"] == 0.2
    rec = json.loads((tmp_path / "runs" / "ls0.2_seed0.json").read_text())
    floors = [h["entropy_floor"] for h in rec["history"]]
    assert floors[0] > 0 and floors[-1] == 0.0 and rec["smoothing_schedule"] == "step"
    focal = json.loads((tmp_path / "runs" / "focal2_seed0.json").read_text())
    assert focal["loss"]["method"] == "focal" and focal["history"][0]["entropy_floor"] == 0.0
    # a re-run reuses every run and gives the same comparison
    again = compare_methods(_data(), ["focal", "ls"], out=tmp_path, **kw)
    assert again.reused == 6
    assert again.comparison["methods"][0]["vs_baseline"]["nll"]["mean"] == pytest.approx(
        res.comparison["methods"][0]["vs_baseline"]["nll"]["mean"])
    # another configuration in the same directory is refused: other settings, or other data
    with pytest.raises(ValueError, match="another configuration"):
        compare_methods(_data(), ["focal"], out=tmp_path, **{**kw, "epochs": 2,
                                                               "grids": {"focal": [2.0]}})
    x, y = _data()
    with pytest.raises(ValueError, match="another configuration"):
        compare_methods((x + 1e-3, y), ["focal", "ls"], out=tmp_path, **kw)


def test_compare_methods_has_the_test_bootstrap_and_its_wall_time(tmp_path):
    kw = dict(grids={"focal": [2.0]}, seeds=2, epochs=2, progress=False, workers=1)
    res = compare_methods(_data(), ["focal"], out=tmp_path, n_bootstrap=200, **kw)
    (focal,) = res.comparison["methods"]
    for ref in ("vs_baseline", "vs_baseline_ts"):
        d = focal[ref]["nll"]
        assert d["boot_low"] <= d["mean"] <= d["boot_high"] and d["boot_low"] < d["boot_high"]
    assert focal["vs_baseline"]["accuracy"]["boot_low"] is not None
    assert "Paired test-set bootstrap" in res.text and "| focal γ=2 | " in res.text
    assert res.config["wall_seconds"] > 0 and "wall time: " in res.text
    saved = json.loads((tmp_path / "methods.json").read_text())
    assert saved["config"]["wall_seconds"] == res.config["wall_seconds"]
    # the interval is the ε sweep's bootstrap, computed on the method's and baseline's runs
    from labelsmooth.experiments.sweep import load_runs
    from labelsmooth.experiments.verdict import bootstrap_intervals

    recs, arrays = load_runs(str(tmp_path))
    want = bootstrap_intervals(
        [dict(r, smoothing=1.0 if r["method"]["method"] == "focal" else 0.0) for r in recs],
        arrays, n_resamples=200)
    assert (focal["vs_baseline"]["nll"]["boot_low"], focal["vs_baseline"]["nll"]["boot_high"]) \
        == pytest.approx(want[("baseline", "nll", 1.0)])
    # without resamples, none
    off = compare_methods(_data(), ["focal"], n_bootstrap=0, **kw)
    assert off.comparison["methods"][0]["vs_baseline"]["nll"]["boot_low"] is None
    assert "Paired test-set bootstrap" not in off.text


def test_compare_methods_names_a_damaged_run_and_trains_it_again(tmp_path, capsys):
    kw = dict(grids={"poly": [1.0]}, seeds=1, epochs=2, n_bootstrap=0, progress=False)
    first = compare_methods(_data(), ["poly"], out=tmp_path, **kw)
    path = tmp_path / "runs" / "poly1_seed0.json"
    rec = json.loads(path.read_text())
    del rec["test"]  # a record cut short: its metrics are missing
    path.write_text(json.dumps(rec))
    capsys.readouterr()
    again = compare_methods(_data(), ["poly"], out=tmp_path, **kw)
    err = capsys.readouterr().err
    assert "poly1_seed0.json is damaged" in err and "training run poly1_seed0 again" in err
    assert again.reused == 1 and len(again.rows) == 2
    assert [r["test_nll"] for r in again.rows] == [r["test_nll"] for r in first.rows]


def test_compare_methods_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        compare_methods(_data(), ["nope"], seeds=1, epochs=1)
    with pytest.raises(ValueError, match="not compared"):
        compare_methods(_data(), ["focal"], grids={"poly": [1.0]}, seeds=1, epochs=1)
    with pytest.raises(ValueError, match="smoothing_schedule"):
        compare_methods(_data(), ["ls"], smoothing_schedule="warm", seeds=1, epochs=1)
    with pytest.raises(ValueError, match="executor must be 'local' or 'ray'"):
        compare_methods(_data(), ["ls"], executor="dask", seeds=1, epochs=1)
    with pytest.raises(ValueError, match="needs executor='ray'"):
        compare_methods(_data(), ["ls"], ray_address="auto", seeds=1, epochs=1)


def test_sweep_smoothing_schedule_is_recorded_and_checked():
    from labelsmooth.experiments import sweep

    res = sweep(data=_data(), smoothing=[0.2], seeds=1, epochs=2, n_bootstrap=0, progress=False,
                report=False, smoothing_schedule="linear")
    assert res.config["smoothing_schedule"] == "linear"
    hist = res.runs[0]["history"]
    assert hist[0]["entropy_floor"] > hist[1]["entropy_floor"] > 0  # ε 0.2 → 0.1
    with pytest.raises(ValueError, match="smoothing_schedule"):
        sweep(data=_data(), smoothing=[0.2], seeds=1, epochs=1, smoothing_schedule="nope",
              progress=False, report=False)


def test_cli_method_flags(tmp_path, capsys):
    from labelsmooth.cli import main

    data = tmp_path / "d.npz"
    x, y = _data()
    np.savez(data, x=x.numpy(), y=y.numpy())
    out = tmp_path / "o"
    rc = main(["sweep", "--dataset", str(data), "--method", "poly", "--method-grid", "poly=1",
               "--seeds", "2", "--epochs", "2", "--workers", "1", "--out", str(out),
               "--no-progress", "--no-report"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ranked by that validation NLL" in printed and "poly ε₁=1" in printed
    with pytest.raises(SystemExit):
        main(["sweep", "--method", "focal", "--label-noise", "0.2", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["sweep", "--method-grid", "focal=2", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["sweep", "--method", "focal", "--smoothing-schedule", "warm"])


def test_cli_method_passes_the_executor_and_schedule_on(tmp_path, monkeypatch, capsys):
    import labelsmooth.experiments.methods as methods_mod
    from labelsmooth.cli import main

    seen = {}

    def fake(data, methods, **kw):
        seen.update(kw, methods=methods)
        raise ValueError("stop here")

    monkeypatch.setattr(methods_mod, "compare_methods", fake)
    data = tmp_path / "d.npz"
    x, y = _data()
    np.savez(data, x=x.numpy(), y=y.numpy())
    rc = main(["sweep", "--dataset", str(data), "--method", "ls", "--executor", "ray",
               "--workers", "3", "--smoothing-schedule", "cosine", "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 2 and "stop here" in capsys.readouterr().err
    assert (seen["executor"], seen["workers"], seen["smoothing_schedule"]) == ("ray", 3, "cosine")
    assert seen["methods"] == ["ls"] and seen["seeds"] is None  # the comparison's own 3 seeds
