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
    assert "| c1 | held | inconclusive |" in md and "| c2 | did not hold | – |" in md
    assert "skipped: no data" in md and "0.900" in md


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
    assert "## Claims × testbeds" in (tmp_path / "o" / "suite.md").read_text()


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
