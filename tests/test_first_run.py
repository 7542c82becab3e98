"""First-run friction: install levels, the README's tables, `--version`, `targets` with a large K."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import labelsmooth
from labelsmooth.cli import main

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _extra_closure(extras: dict, name: str) -> list[str]:
    """Requirement strings of an extra, with self-references (labelsmooth[a,b]) expanded."""
    out = []
    for req in extras[name]:
        m = re.fullmatch(r"labelsmooth\[([^\]]+)\]", req.strip())
        if m:
            for sub in m.group(1).split(","):
                out += _extra_closure(extras, sub.strip())
        else:
            out.append(req)
    return out


def _names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ ;\[]", r.strip(), maxsplit=1)[0].lower() for r in reqs}


# --- install levels ------------------------------------------------------------------------------


def test_demo_extra_is_only_what_the_demo_needs_and_test_has_the_integrations():
    extras = _pyproject()["project"]["optional-dependencies"]
    demo = _names(_extra_closure(extras, "demo"))
    # scipy: the verdict's seed-level t intervals (experiments/stats.py)
    assert {"matplotlib", "mnist1d", "scikit-learn", "scipy", "tqdm"} <= demo
    assert not demo & {"triton", "pytest", "transformers", "torchmetrics", "lightning", "ray"}
    dev = _names(_extra_closure(extras, "dev"))
    assert {"triton", "pytest", "transformers", "accelerate", "torchmetrics", "lightning"} <= dev
    assert not (dev | demo) & {"torchvision", "timm"}  # no CPU build of torchvision exists here


def test_license_is_an_spdx_string_read_by_a_new_enough_setuptools():
    # A TOML table here makes setuptools >= 77 print a deprecation banner on every install.
    data = _pyproject()
    assert data["project"]["license"] == "Apache-2.0"
    (req,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert tuple(int(x) for x in re.search(r">=\s*([\d.]+)", req).group(1).split(".")) >= (77,)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target, extra", [("demo", "demo"), ("test", "dev")])
def test_make_installs_its_level_with_torch_pinned(target, extra):
    out = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target], capture_output=True,
                         text=True, check=True).stdout
    installs = [ln for ln in out.splitlines() if "pip install" in ln and "--upgrade pip" not in ln]
    assert installs and all("-c constraints.txt" in ln for ln in installs)
    assert any(f'-e ".[{extra}]"' in ln for ln in installs)
    if target == "demo":
        assert "[dev]" not in out and "netcal" not in out


def test_ci_runs_make_test():
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


# --- README --------------------------------------------------------------------------------------


def test_every_readme_table_is_one_block_with_a_header():
    """A blank line inside a table cuts it: the rows after it render as plain text."""
    lines = (ROOT / "README.md").read_text().splitlines()
    in_code = False
    block: list[str] = []
    blocks = []
    for ln in lines + [""]:
        if ln.startswith("```"):
            in_code = not in_code
        if not in_code and ln.startswith("|"):
            block.append(ln)
        elif block:
            blocks.append(block)
            block = []
    assert blocks
    for b in blocks:
        assert len(b) >= 2 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", b[1]), b[:2]
        ncols = b[1].count("|")
        assert all(r.count("|") - r.count("\\|") >= ncols for r in b), b
    api = next(b for b in blocks if any("smooth_targets(" in r for r in b))
    for name in ("linear_cross_entropy", "vocab_parallel_cross_entropy", "labelsmooth.calibration"):
        assert any(name in r for r in api), name


def test_readme_large_k_example_is_what_the_command_prints(capsys):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"\$ labelsmooth targets --labels 0 --classes 32000 --smoothing 0.1\n"
                  r"((?:[^$`].*\n)+)", text)
    assert m, "the README shows `labelsmooth targets` with K = 32000"
    assert main(["targets", "--labels", "0", "--classes", "32000", "--smoothing", "0.1"]) == 0
    assert capsys.readouterr().out == m.group(1)


# --- the command ---------------------------------------------------------------------------------


def test_version_flag():
    r = subprocess.run([sys.executable, "-m", "labelsmooth", "--version"], capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"labelsmooth {labelsmooth.__version__} (torch ")


def _rows(out: str) -> tuple[list[str], dict[int, list[float]]]:
    lines = out.strip().splitlines()
    return lines, {int(r.split()[0]): [float(v) for v in r.split()[1:]] for r in lines[2:]}


@pytest.mark.parametrize("spread, target, other", [
    ("all", 1 - 0.1 + 0.1 / 32000, 0.1 / 32000),
    ("others", 0.9, 0.1 / 31999),
])
def test_targets_summarises_a_large_k(capsys, spread, target, other):
    main(["targets", "--labels", "0", "7", "31999", "--classes", "32000", "--spread", spread])
    lines, rows = _rows(capsys.readouterr().out)
    assert len(lines) == 5 and max(map(len, lines)) < 100
    assert lines[1].split() == ["label", "target", "each", "other"]
    assert re.search(r"\d\.\d{6}e[-+]\d\d", lines[2])  # scientific notation
    for y in (0, 7, 31999):
        assert rows[y] == pytest.approx([target, other], rel=1e-6)
    assert rows[0][0] != pytest.approx(0.9, rel=1e-7) or spread == "others"  # 1-ε+ε/K shows


def test_targets_summary_with_a_prior_shows_the_others_range(capsys):
    prior = ["0.5"] + ["0.05"] * 10 + ["0"]
    main(["targets", "--labels", "0", "11", "--classes", "12", "--smoothing", "0.2",
          "--prior", *prior])
    lines, rows = _rows(capsys.readouterr().out)
    assert lines[1].split() == ["label", "target", "other", "min", "other", "max"]
    assert rows[0] == pytest.approx([0.8 + 0.1, 0.0, 0.01])
    assert rows[11] == pytest.approx([0.8, 0.01, 0.1])


def test_targets_full_table_up_to_ten_classes_or_with_full(capsys):
    main(["targets", "--labels", "3", "--classes", "10"])
    lines, rows = _rows(capsys.readouterr().out)
    assert len(rows[3]) == 10 and lines[1].split()[1:3] == ["class", "0"]
    main(["targets", "--labels", "3", "--classes", "12", "--full"])
    lines, rows = _rows(capsys.readouterr().out)
    assert len(rows[3]) == 12 and rows[3][3] == pytest.approx(0.9 + 0.1 / 12, abs=1e-4)
