"""benchmarks/gpu_check.sh runs in CI as a dry run (CPU, Triton's interpreter, tiny shapes), so the
script a GPU session runs is known to work; and its parity gate fails on a wrong gradient."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ, PYTHON=sys.executable, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def test_gpu_check_dry_run(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, env=_env(), timeout=900,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "PARITY: OK" in summary and "gpu_check: PASSED" in summary, summary
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    got = {(r["section"], r["provider"]): r for r in rows}
    for key in [("ce", "torch"), ("ce", "labelsmooth"), ("ce", "labelsmooth-inplace"),
                ("linear", "torch"), ("linear", "labelsmooth")]:
        assert got[key]["parity"] == "ok" and float(got[key]["median_ms"]) > 0, got[key]
    assert got[("ce", "liger")]["note"].startswith(("skipped", "")), got[("ce", "liger")]


def test_gpu_check_exits_non_zero_on_a_parity_failure(tmp_path):
    """--fault scales labelsmooth's logits gradient by 1.01 before judging: exit status 1."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run",
                          "--sections", "ce", "--fault", "--csv", str(tmp_path / "b.csv")],
                         capture_output=True, text=True, env=_env(), timeout=900, cwd=ROOT)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "PARITY: FAILED" in out.stdout and "ce labelsmooth" in out.stdout
