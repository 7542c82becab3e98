"""Recompute a sweep's claim statuses from its results.csv, independently of labelsmooth's stats.

    python examples/recompute_verdict.py sweep-out

Reads the run rows of ``results.csv`` (not the mean/std rows), takes the factor chosen on
validation NLL (the smoothed factor with the lowest mean ``val_nll``), runs scipy's paired t-test
of every smoothed factor against ε = 0 per metric, applies Holm's step-down correction by hand,
and prints each claim's status next to the one in ``results.json``. Exits 1 on any mismatch.
Needs numpy and scipy only.
"""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
from scipy import stats

# claim -> (metric of the smoothed factor, metric of ε = 0, direction that makes it "held")
PAIRED = {
    "lower_nll_than_baseline": ("test_nll", "test_nll", -1),
    "lower_brier_than_baseline": ("test_brier", "test_brier", -1),
    "lower_ece_than_baseline": ("test_ece", "test_ece", -1),
    "lower_nll_than_baseline_ts": ("test_nll", "ts_nll", -1),
    "lower_brier_than_baseline_ts": ("test_brier", "ts_brier", -1),
    "lower_ece_than_baseline_ts": ("test_ece", "ts_ece", -1),
    "better_refinement_than_baseline": ("ts_nll", "ts_nll", -1),
    "higher_accuracy_than_baseline": ("test_accuracy", "test_accuracy", +1),
    "higher_train_nll_than_baseline": ("train_nll", "train_nll", +1),
}
# claims judged only when results.csv has their columns: (column that must be there, claim, ...)
OPTIONAL = {
    # trained on noisy labels: clean test accuracy of ε* against ε = 0 (memo_* columns present)
    "smoothing_helps_under_label_noise": (
        "memo_noisy_label_accuracy", "test_accuracy", "test_accuracy", +1),
    # --distill: the students of ε* teachers against the students of ε = 0 teachers
    "smoothed_teachers_distil_worse_students": (
        "student_test_accuracy", "student_test_accuracy", "student_test_accuracy", -1),
}


def paired_p(a, b):
    """Paired t-test; identical differences on every seed: the exact two-sided sign test."""
    d = a - b
    if d.size >= 2 and np.std(d) <= 1e-12 * max(1.0, abs(d.mean())):
        return 1.0 if d.mean() == 0 else stats.binomtest(d.size, d.size).pvalue
    return stats.ttest_rel(a, b).pvalue


def holm(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    adj, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def main(out: str) -> int:
    with open(os.path.join(out, "results.csv")) as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "run"]
    by: dict[float, dict[int, dict]] = {}
    for r in rows:
        by.setdefault(float(r["smoothing"]), {})[int(r["seed"])] = r
    smoothed = sorted(f for f in by if f > 0)
    seeds = sorted(set.intersection(*(set(by[f]) for f in by)))
    eps = min(smoothed, key=lambda f: np.mean([float(by[f][s]["val_nll"]) for s in by[f]]))

    def col(f, key):
        return np.array([float(by[f][s][key]) for s in seeds])

    mine = {}
    paired = dict(PAIRED)
    for claim, (needs, ka, kb, want) in OPTIONAL.items():
        if rows and rows[0].get(needs, "") != "":
            paired[claim] = (ka, kb, want)
    for claim, (ka, kb, want) in paired.items():
        p = [paired_p(col(f, ka), col(0.0, kb)) for f in smoothed]
        adj = holm([1.0 if np.isnan(x) else x for x in p])
        i = smoothed.index(eps)
        d = float(np.mean(col(eps, ka) - col(0.0, kb)))
        mine[claim] = (
            "inconclusive" if adj[i] >= 0.05 else ("held" if np.sign(d) == want else "did not hold")
        )
    reported = {}
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as fh:
            reported = {c["claim"]: c["status"] for c in json.load(fh).get("verdict", [])}
    bad = 0
    print(f"smoothed factor chosen on validation NLL: {eps:g}; {len(seeds)} paired seeds")
    for claim, status in mine.items():
        rep = reported.get(claim, "–")
        flag = "" if rep in ("–", status) else "   <-- MISMATCH"
        bad += bool(flag)
        print(f"  {claim:34s} recomputed: {status:13s} report: {rep}{flag}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "sweep-out"))
