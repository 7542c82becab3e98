"""Distillation: the student trains on the teacher's soft targets; the claim's statuses."""

from __future__ import annotations

import json

import pytest
import torch

from labelsmooth.experiments import TrainSettings
from labelsmooth.experiments.data import make_splits
from labelsmooth.experiments.distill import distill_claims, distill_student, distill_sweep
from labelsmooth.experiments.models import MLP


def _rows(student_base, student_smooth, seeds=5, teacher=(0.90, 0.92)):
    rows = []
    for s in range(seeds):
        w = 0.01 * ((s * 3) % 5 - 2) / 2
        j = 0.004 * ((s * 2) % 5 - 2) / 2  # the smoothed students' own seed noise (sums to 0)
        for f, st, te, v in ((0.0, student_base, teacher[0], 1.0),
                             (0.1, student_smooth + j, teacher[1], 0.9),
                             (0.3, student_smooth - 0.05 + j, teacher[1], 0.95)):
            rows.append({"smoothing": f, "seed": s, "teacher_val_nll": v,
                         "teacher_test_accuracy": te + w, "teacher_test_nll": 0.3 + w,
                         "student_test_accuracy": st + w, "student_test_nll": 1 - st + w})
    return rows


def test_claim_statuses_on_planted_truths():
    worse = distill_claims(_rows(0.85, 0.80))[0]
    better = distill_claims(_rows(0.80, 0.85))[0]
    tie = distill_claims(_rows(0.80, 0.80) + [])[0]
    assert worse["status"] == "held" and better["status"] == "did not hold"
    assert worse["factor"] == 0.1  # chosen on the teachers' validation NLL, not on test
    assert worse["selected_on"] == {"split": "val", "metric": "nll", "of": "teachers"}
    assert worse["teacher_test_accuracy"]["mean"] == pytest.approx(0.02)
    assert [e["factor"] for e in worse["per_factor"]] == [0.1, 0.3]
    # a tie: differences that straddle 0
    rows = _rows(0.80, 0.80)
    for r in rows:
        if r["smoothing"] == 0.1:
            r["student_test_accuracy"] += 0.003 * (-1) ** r["seed"]
    assert distill_claims(rows)[0]["status"] == "inconclusive"
    assert tie["status"] in ("inconclusive",)
    only = [r for r in _rows(0.8, 0.7) if r["smoothing"] > 0]
    assert distill_claims(only)[0]["status"] == "inconclusive"


def _splits():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(150) % 3
    x = torch.randn(150, 4, generator=g) + 4 * torch.nn.functional.one_hot(y, 4).float()
    return make_splits(x, y, split_seed=0)


def test_student_learns_from_soft_targets_only():
    s = _splits()
    # teacher logits that encode the true labels: the student must learn them with no labels
    z = 5.0 * torch.nn.functional.one_hot(s.y_train, 3).float()
    settings = TrainSettings(epochs=15, batch_size=16, lr=1e-2, n_bootstrap=0)
    good = distill_student(lambda: MLP(4, 3, hidden=(16,)), s, z, 0, settings)
    # teacher logits that encode a wrong permutation: the student follows the teacher
    bad = distill_student(lambda: MLP(4, 3, hidden=(16,)), s, z[:, [1, 2, 0]], 0, settings)
    assert good["test"]["accuracy"] > 0.8 and bad["test"]["accuracy"] < 0.4
    with pytest.raises(ValueError, match="temperature"):
        distill_student(lambda: MLP(4, 3), s, z, 0, settings, temperature=0.0)


@pytest.mark.slow
def test_distill_sweep_end_to_end(tmp_path):
    res = distill_sweep(
        _splits(), smoothing=[0.0, 0.2], seeds=2, model="mlp", student="mlp-small",
        settings=TrainSettings(epochs=2, batch_size=32, n_bootstrap=0), out=str(tmp_path),
    )
    assert len(res["rows"]) == 4 and res["config"]["temperature"] == 2.0
    assert {"teacher_test_accuracy", "student_test_nll"} <= set(res["rows"][0])
    doc = json.loads((tmp_path / "distill.json").read_text())
    assert doc["claims"][0]["claim"] == "smoothed_teachers_distil_worse_students"
    assert "| 0.2 |" in (tmp_path / "distill.md").read_text()
    with pytest.raises(ValueError, match="ε = 0"):
        distill_sweep(_splits(), smoothing=[0.1], seeds=1)


def test_teachers_follow_the_smoothing_schedule_students_do_not(tmp_path):
    res = distill_sweep(
        _splits(), smoothing=[0.0, 0.2], seeds=1, student="mlp-small", smoothing_schedule="step",
        settings=TrainSettings(epochs=4, batch_size=32, n_bootstrap=0), out=str(tmp_path),
    )
    run = next(r for r in res["result"].runs if r["smoothing"] == 0.2)
    floors = [h["entropy_floor"] for h in run["history"]]
    assert floors[:2] == [floors[0]] * 2 and floors[0] > 0 and floors[2:] == [0.0, 0.0]
    assert run["smoothing_schedule"] == "step" and "student" in run
    assert res["config"]["smoothing_schedule"] == "step"
    assert res["result"].config["smoothing_schedule"] == "step"


def test_cli_flags():
    from labelsmooth.cli import build_parser, resolve_sweep_config

    p = build_parser()
    cfg = resolve_sweep_config(p.parse_args(
        ["sweep", "--distill", "--distill-temperature", "4", "--student", "mlp-small"]))
    assert cfg["distill"] is True and cfg["distill_temperature"] == 4.0
    assert cfg["student"] == "mlp-small"
    assert resolve_sweep_config(p.parse_args(["sweep"]))["distill"] is False
    with pytest.raises(SystemExit):
        p.parse_args(["sweep", "--student", "resnet"])


@pytest.mark.slow
def test_distill_runs_through_the_executor_and_resumes(tmp_path):
    """Teacher/student runs are sweep runs: 2 worker processes give the serial numbers, a re-run
    reuses them, and results.json carries the claim in its verdict."""
    kw = dict(smoothing=[0.0, 0.2], seeds=2, model="mlp", student="mlp-small",
              settings=TrainSettings(epochs=2, batch_size=32, n_bootstrap=0), threads=1)
    serial = distill_sweep(_splits(), out=str(tmp_path / "a"), workers=1, **kw)
    pool = distill_sweep(_splits(), out=str(tmp_path / "b"), workers=2, **kw)
    key = ("smoothing", "seed", "teacher_test_accuracy", "student_test_accuracy", "student_test_nll")
    assert [[r[k] for k in key] for r in serial["rows"]] == [[r[k] for k in key] for r in pool["rows"]]
    again = distill_sweep(_splits(), out=str(tmp_path / "a"), workers=1, **kw)
    assert again["result"].reused == 4 and again["rows"] == serial["rows"]
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["config"]["distill"] == {"student": "mlp-small", "temperature": 2.0}
    assert doc["verdict"][-1]["claim"] == "smoothed_teachers_distil_worse_students"
    assert "student_test_accuracy" in (tmp_path / "a" / "results.csv").read_text()
    # a plain sweep cannot reuse a distillation's runs (different run identity)
    from labelsmooth.experiments.sweep import sweep

    with pytest.raises(ValueError, match="different configuration"):
        sweep(data=_splits(), smoothing=[0.0], seeds=1, model="mlp", out=str(tmp_path / "a"),
              settings=TrainSettings(epochs=2, batch_size=32, n_bootstrap=0), progress=False,
              report=False)
