"""--suite: several testbeds, one report with a claims × testbeds table."""

from __future__ import annotations

import json

import pytest

from labelsmooth.experiments.suite import SUITES, Testbed, render_suite, run_suite, suite_claims


def test_default_suite_is_documented_set():
    names = [(t.dataset, t.model) for t in SUITES["default"]]
    assert names == [("mnist1d", "mlp"), ("mnist1d", "cnn"), ("digits", "mlp"),
                     ("fashion-mnist", "mlp")]
    assert all(t.reference.get("accuracy") for t in SUITES["default"])


def test_claims_table_and_render():
    table = suite_claims({"a": [("c1", "held"), ("c2", "did not hold")], "b": [("c1", "inconclusive")]})
    assert table == {"c1": {"a": "held", "b": "inconclusive"}, "c2": {"a": "did not hold"}}
    md = render_suite({
        "suite": "x", "smoothing": [0.0, 0.1], "seeds": 2, "claims": table,
        "testbeds": [
            {"name": "a", "dataset": "d", "model": "mlp", "baseline_accuracy": 0.9,
             "reference": {"accuracy": 0.95, "source": "s"}, "seconds": 3.0},
            {"name": "b", "dataset": "e", "model": "cnn", "baseline_accuracy": float("nan"),
             "reference": {}, "seconds": 0.0, "error": "skipped: no data"},
        ],
    })
    # b was skipped: the table has a column for every testbed that ran
    assert "| c1 | held |" in md and "| c2 | did not hold |" in md
    assert "skipped: no data" in md and "0.900" in md
    assert "## Verdict per testbed" in md and "### a" in md


def test_unknown_suite():
    with pytest.raises(ValueError, match="suite must be one of"):
        run_suite("nope")


@pytest.mark.slow
def test_run_suite_tiny(tmp_path):
    beds = (
        Testbed("digits-tiny", "digits", "mlp", settings={"epochs": 1, "n_bootstrap": 0},
                reference={"accuracy": 0.97, "source": "typical"}),
        Testbed("missing", str(tmp_path / "absent.csv"), "mlp"),
    )
    s = run_suite("tiny", out=str(tmp_path / "o"), smoothing=[0.0, 0.1], seeds=2, workers=1,
                  progress=False, report=False, testbeds=beds)
    assert s["testbeds"][0]["baseline_accuracy"] > 0.3
    assert s["testbeds"][1]["error"].startswith("skipped:")
    assert s["claims"] and all(set(v) == {"digits-tiny"} for v in s["claims"].values())
    doc = json.loads((tmp_path / "o" / "suite.json").read_text())
    assert doc["suite"] == "tiny" and (tmp_path / "o" / "digits-tiny" / "results.json").exists()
    md = (tmp_path / "o" / "report.md").read_text()
    assert md == (tmp_path / "o" / "suite.md").read_text()
    assert "## Claims × testbeds" in md and "### digits-tiny" in md and "Scope: mlp on digits" in md
    assert doc["testbeds"][0]["verdict"]["verdict"][0]["status"] in ("held", "did not hold",
                                                                     "inconclusive")


def test_modes_do_not_combine(capsys):
    from labelsmooth.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sweep", "--suite", "default", "--distill", "--no-report"])
    assert e.value.code == 2
    assert "--suite and --distill cannot be combined" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--distill", "--label-noise", "0.2", "--no-report"])


def test_suite_cli_passes_only_typed_factors(monkeypatch, tmp_path):
    import labelsmooth.experiments.suite as suite_mod
    from labelsmooth.cli import main

    seen = {}

    def fake(name, **kw):
        seen.update(kw, name=name)
        return {"testbeds": [], "seconds": 0.0, "paths": {}}

    monkeypatch.setattr(suite_mod, "run_suite", fake)
    assert main(["sweep", "--suite", "default", "--no-report", "--out", str(tmp_path)]) == 0
    assert seen["name"] == "default" and seen["smoothing"] is None and seen["seeds"] is None
    assert main(["sweep", "--suite", "default", "--no-report", "--seeds", "2",
                 "--smoothing", "0", "0.2", "--out", str(tmp_path)]) == 0
    assert seen["seeds"] == 2 and seen["smoothing"] == [0.0, 0.2]
    assert seen["smoothing_schedule"] == "constant"
    assert main(["sweep", "--suite", "default", "--no-report", "--smoothing-schedule", "cosine",
                 "--out", str(tmp_path)]) == 0
    assert seen["smoothing_schedule"] == "cosine"


def test_run_suite_passes_the_smoothing_schedule_to_every_testbed(monkeypatch, tmp_path):
    import importlib

    sweep_mod = importlib.import_module("labelsmooth.experiments.sweep")
    seen = []

    def fake(**kw):
        seen.append(kw.get("smoothing_schedule"))
        raise ValueError("not trained in this test")  # the suite skips the testbed

    monkeypatch.setattr(sweep_mod, "sweep", fake)
    beds = (Testbed("a", "digits", "mlp"), Testbed("b", "mnist1d", "mlp"))
    s = run_suite("tiny", out=str(tmp_path), testbeds=beds, progress=False,
                  smoothing_schedule="step")
    assert seen == ["step", "step"] and s["smoothing_schedule"] == "step"
    assert "(schedule step: the starting ε of each run)" in (tmp_path / "suite.md").read_text()


def _summary_with_verdicts():
    """Two testbeds with planted verdicts (from the verdict tests' synthetic rows)."""
    from test_verdict import HELPS, _noisy, _rows

    from labelsmooth.experiments.verdict import verdict

    va = verdict(_rows(HELPS)).as_dict()
    vb = verdict(_noisy(-0.05, noise=0.01), {"label_noise": {"rate": 0.2, "kind": "symmetric"}}).as_dict()
    per = {"a": [(c["claim"], c["status"]) for c in va["verdict"]],
           "b": [(c["claim"], c["status"]) for c in vb["verdict"]]}
    return {
        "suite": "x", "smoothing": [0.0, 0.1], "seeds": 5, "claims": suite_claims(per),
        "testbeds": [
            {"name": "a", "dataset": "d", "model": "mlp", "baseline_accuracy": 0.65,
             "reference": {}, "seconds": 1.0, "verdict": va},
            {"name": "b", "dataset": "e", "model": "cnn", "baseline_accuracy": 0.65,
             "reference": {}, "seconds": 1.0, "verdict": vb},
        ],
    }


def test_claims_by_testbeds_table_rows_are_claims_and_cells_statuses():
    from labelsmooth.experiments.suite import claims_table_rows, render_suite_text

    s = _summary_with_verdicts()
    head, rows = claims_table_rows(s)
    assert head == ["claim", "a", "b"]
    assert rows[0][1:] == ["0.1", "0.1"]  # ε* chosen on validation, per testbed
    by = {r[0]: r[1:] for r in rows}
    assert by["ε* has a lower test ECE than ε = 0"][0] == "held"  # planted on a: helps
    # the large-factor claims are about the largest ε, not ε*
    assert by["the largest ε underfits (train and test accuracy below ε chosen on validation)"][0] \
        == "held"
    # the noise claim is tested on b only, and did not hold there (planted: smoothing hurts)
    noise = by["ε* has a higher clean test accuracy than ε = 0 under label noise"]
    assert noise == ["–", "did not hold"]
    text = render_suite_text(s)
    assert text.splitlines()[0].split() == ["claim", "a", "b"]
    md = render_suite(s)
    assert "| ε* has a higher clean test accuracy than ε = 0 under label noise | – | did not hold |" in md
    assert md.count("Full report:") == 2 and "20% symmetric label noise" in md


def test_suite_cli_prints_the_claims_table(monkeypatch, tmp_path, capsys):
    import labelsmooth.experiments.suite as suite_mod
    from labelsmooth.cli import main

    s = _summary_with_verdicts()
    s.update(seconds=2.0, paths={"report.md": str(tmp_path / "report.md")})
    monkeypatch.setattr(suite_mod, "run_suite", lambda name, **kw: s)
    assert main(["sweep", "--suite", "default", "--no-report", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "claims × testbeds" in out
    line = next(x for x in out.splitlines() if "under label noise" in x)
    assert line.split()[-4:] == ["–", "did", "not", "hold"]  # not tested on a; did not hold on b


def test_budget_counts_waves_of_workers_per_testbed():
    from labelsmooth.experiments.suite import estimate_budget

    a = Testbed("a", "digits", "mlp", run_seconds=10.0, setup_seconds=1.0)
    b = Testbed("b", "mnist1d", "cnn", run_seconds=4.0)
    # 3 × 3 = 9 runs per testbed: 5 waves on 2 workers, 9 on 1, 1 on 9
    assert estimate_budget([a, b], 3, 3, 2)["testbeds"] == {"a": 51.0, "b": 20.0}
    assert estimate_budget([a, b], 3, 3, 1)["seconds"] == 91.0 + 36.0
    one = estimate_budget([a], 3, 3, 9)
    assert one["seconds"] == 11.0 and one["runs"] == 9 and one["known"]
    assert not estimate_budget([Testbed("c", "digits", "mlp")], 1, 1, 1)["known"]
    with pytest.raises(ValueError, match="workers must be a positive int, got 0"):
        estimate_budget([a], 3, 3, 0)


def test_default_suite_has_measured_costs_within_the_time_goal():
    """Every default testbed carries a measured per-run cost, and the default suite's estimate on
    2 workers stays inside the 15-minute goal (issue 18) with room for a loaded machine."""
    from labelsmooth.experiments.suite import _DEFAULT_SEEDS, _DEFAULT_SMOOTHING, estimate_budget

    beds = SUITES["default"]
    assert all(t.run_seconds > 0 and t.setup_seconds >= 0 for t in beds)
    b = estimate_budget(beds, len(_DEFAULT_SMOOTHING), _DEFAULT_SEEDS, 2)
    assert b["known"] and b["seconds"] <= 12 * 60, b


def test_run_suite_prints_its_estimated_budget(tmp_path, monkeypatch, capsys):
    import importlib

    sweep_mod = importlib.import_module("labelsmooth.experiments.sweep")

    def boom(**kw):
        raise ValueError("no data here")

    monkeypatch.setattr(sweep_mod, "sweep", boom)
    beds = (Testbed("t", "digits", "mlp", run_seconds=30.0, setup_seconds=0.0),)
    s = run_suite("tiny", out=str(tmp_path), smoothing=[0.0, 0.1], seeds=2, workers=2,
                  progress=True, report=False, testbeds=beds)
    err = capsys.readouterr().err
    assert "suite 'tiny': 4 runs (1 testbed × 2 factors × 2 seeds) on 2 workers" in err
    assert "estimated 1.0 min" in err
    assert s["estimated_seconds"] == 60.0 and s["testbeds"][0]["error"] == "skipped: no data here"
