"""The `labelsmooth` command: targets output, config precedence, bad arguments, a tiny sweep."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

import labelsmooth
from labelsmooth.cli import SWEEP_DEFAULTS, build_parser, main, resolve_sweep_config


def _parse_targets(out: str) -> dict[int, list[float]]:
    lines = out.strip().splitlines()
    assert lines[1].split()[0] == "label"
    return {int(r.split()[0]): [float(v) for v in r.split()[1:]] for r in lines[2:]}


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
def test_targets_prints_one_row_per_label(capsys):
    assert main(["targets", "--labels", "0", "2", "3", "--classes", "4", "--smoothing", "0.1"]) == 0
    out = capsys.readouterr().out
    rows = _parse_targets(out)
    # spread="all": target 1 - ε + ε/K = 0.925, others ε/K = 0.025 (hand-computed)
    assert rows == {
        0: [0.925, 0.025, 0.025, 0.025],
        2: [0.025, 0.025, 0.925, 0.025],
        3: [0.025, 0.025, 0.025, 0.925],
    }
    assert "0.9250" in out  # 4 decimals


def test_targets_spread_others_and_prior(capsys):
    main(["targets", "--labels", "1", "--classes", "4", "--smoothing", "0.1", "--spread", "others"])
    assert _parse_targets(capsys.readouterr().out) == {1: [0.0333, 0.9, 0.0333, 0.0333]}
    main(
        [
            "targets",
            "--labels",
            "0",
            "--classes",
            "2",
            "--smoothing",
            "0.2",
            "--prior",
            "0.25",
            "0.75",
        ]
    )
    # ε·p replaces the uniform share: [0.8 + 0.05, 0.15]
    assert _parse_targets(capsys.readouterr().out) == {0: [0.85, 0.15]}


def test_targets_agrees_with_the_library(capsys):
    import torch

    main(
        ["targets", "--labels", "4", "0", "--classes", "7", "--smoothing", "0.3", "--decimals", "6"]
    )
    rows = _parse_targets(capsys.readouterr().out)
    ref = labelsmooth.smooth_targets(torch.tensor([4, 0]), 7, 0.3)
    assert rows[4] == pytest.approx(ref[0].tolist(), abs=1e-6)
    assert rows[0] == pytest.approx(ref[1].tolist(), abs=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["targets", "--labels", "0", "--classes", "4", "--smoothing", "1.5"],
            "smoothing must be in [0, 1], got 1.5",
        ),
        (["targets", "--labels", "0", "--classes", "4", "--smoothing", "x"], "'x' is not a number"),
        (["targets", "--labels", "0", "5", "--classes", "4"], "--labels must be in [0, 3]"),
        (["targets", "--labels", "0", "--classes", "1"], "--classes must be >= 2"),
        (
            ["targets", "--labels", "0", "--classes", "3", "--prior", "0.5", "0.5"],
            "--prior needs 3 values",
        ),
        (["sweep", "--smoothing", "0", "1.2"], "smoothing must be in [0, 1], got 1.2"),
        (
            ["sweep", "--dataset", "cifar10", "--no-progress"],
            "dataset must be one of ('mnist1d', 'digits', 'fashion-mnist')",
        ),
        (["sweep", "--seeds", "0"], "must be >= 1, got 0"),
        (["sweep", "--model", "resnet"], "invalid choice: 'resnet'"),
        (["sweep", "--config", "/nonexistent.toml"], "does not exist"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_csv_without_label_column_and_single_class(tmp_path, capsys):
    p = tmp_path / "d.csv"
    p.write_text("a,b,target\n1,2,0\n3,4,1\n")
    with pytest.raises(SystemExit):
        main(["sweep", "--dataset", str(p), "--out", str(tmp_path / "o")])
    assert "no label column 'label'" in capsys.readouterr().err
    q = tmp_path / "one.csv"
    q.write_text("a,label\n" + "".join(f"{i},7\n" for i in range(20)))
    with pytest.raises(SystemExit):
        main(["sweep", "--dataset", str(q), "--out", str(tmp_path / "o")])
    assert "at least 2" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# config precedence
# --------------------------------------------------------------------------------------------
def test_config_precedence_defaults_file_flags(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("epochs = 7\nlr = 0.01\nsmoothing = [0.0, 0.3]\nbatch-size = 64\n")
    args = build_parser().parse_args(["sweep", "--config", str(cfg), "--epochs", "2"])
    r = resolve_sweep_config(args)
    assert r["epochs"] == 2 and r["sources"]["epochs"] == "flag"  # flag beats file
    assert r["lr"] == 0.01 and r["sources"]["lr"] == "config"  # file beats default
    assert r["smoothing"] == [0.0, 0.3] and r["batch_size"] == 64
    assert r["seeds"] == SWEEP_DEFAULTS["seeds"] and r["sources"]["seeds"] == "default"
    assert r["config"] == str(cfg)


def test_yaml_config_and_sweep_table(tmp_path):
    pytest.importorskip("yaml")
    y = tmp_path / "c.yaml"
    y.write_text("seeds: 2\nspread: others\n")
    r = resolve_sweep_config(build_parser().parse_args(["sweep", "--config", str(y)]))
    assert r["seeds"] == 2 and r["spread"] == "others"
    t = tmp_path / "c.toml"
    t.write_text("[sweep]\nmodel = 'cnn'\n")
    assert (
        resolve_sweep_config(build_parser().parse_args(["sweep", "--config", str(t)]))["model"]
        == "cnn"
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("epoch = 3\n", "unknown setting(s) ['epoch']"),
        ("smoothing = [0.1, 2.0]\n", "smoothing factors must be numbers in [0, 1], got 2.0"),
        ("seeds = 'three'\n", "seeds must be an integer"),
        ("model = 'vit'\n", "model must be one of ('mlp', 'cnn')"),
        ("epochs = [\n", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(cfg)])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_example_config_is_valid():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "examples", "sweep_config.toml")
    r = resolve_sweep_config(build_parser().parse_args(["sweep", "--config", path]))
    assert set(r["sources"].values()) >= {"config"}


# --------------------------------------------------------------------------------------------
# a tiny sweep end to end
# --------------------------------------------------------------------------------------------
def test_tiny_sweep_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "sweep",
        "--epochs",
        "2",
        "--smoothing",
        "0",
        "0.1",
        "--seeds",
        "1",
        "--n-bootstrap",
        "20",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed
    for name in (
        "config.json",
        "results.json",
        "results.csv",
        "report.md",
        "report.html",
        "reliability.png",
        "metrics.png",
        "training.png",
        "projection.png",
    ):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = json.loads((out / "results.json").read_text())
    cfg = res["config"]
    assert cfg["epochs"] == 2 and cfg["smoothing"] == [0.0, 0.1] and cfg["dataset"] == "mnist1d"
    # the mnist1d-mlp recipe supplies what no flag set; its reference rides along
    assert cfg["sources"]["epochs"] == "flag" and cfg["sources"]["lr"] == "recipe"
    assert cfg["recipe"]["name"] == "mnist1d-mlp" and cfg["recipe"]["reference"]["minimum"] == 0.66
    assert [(r["smoothing"], r["seed"]) for r in res["runs"]] == [(0.0, 0), (0.1, 0)]
    run = res["runs"][1]
    assert len(run["history"]) == 2
    assert run["history"][0]["entropy_floor"] == pytest.approx(
        float(labelsmooth.entropy_floor(10, 0.1))
    )
    t = run["test"]
    assert 0 <= t["ece"] <= 1 and 0 <= t["ece_debiased"] <= 1
    assert 1 <= run["selected_epoch"] <= 2
    assert 0.1 < t["accuracy"] < 1.0  # learnt something in 2 epochs (chance is 0.1)
    assert {"temperature", "temperature_scaled"} <= set(run)
    assert [s["smoothing"] for s in res["summary"]] == [0.0, 0.1]

    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["kind"] for r in rows] == ["run", "run", "mean", "std", "mean", "std"]
    assert float(rows[1]["test_ece"]) == pytest.approx(t["ece"], rel=1e-5)

    with open(out / "history.csv") as fh:
        hist = list(csv.DictReader(fh))
    assert len(hist) == 4 and [h["epoch"] for h in hist] == ["1", "2", "1", "2"]
    assert float(hist[3]["train_loss"]) == pytest.approx(run["history"][1]["train_loss"], rel=1e-5)
    assert float(hist[3]["entropy_floor"]) == pytest.approx(0.5003, abs=1e-4)  # H(q'), K=10, ε=0.1

    md = (out / "report.md").read_text()
    assert "## Verdict" in md and "validation" in md and "Scope:" in md
    assert "Best factor by test" not in md  # the test split chooses nothing
    assert [c["status"] for c in res["verdict"]] and res["selection"]["split"] == "val"
    assert "Müller" in md and "(reliability.png)" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert 'src="http' not in html and 'src="reliability.png' not in html  # self-contained
    assert 'href="reliability.png"' in html  # and each figure links to its full-size file

    # Re-running resumes: no run is trained again, the results are the same.
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["runs"] == res["runs"]


def test_python_dash_m_and_console_script_entry():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "labelsmooth",
            "targets",
            "--labels",
            "1",
            "--classes",
            "2",
            "--smoothing",
            "0.1",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "0.0500" in r.stdout and "0.9500" in r.stdout


def test_ctrl_c_exits_130_and_keeps_finished_runs(tmp_path, monkeypatch, capsys):
    import importlib

    sweep_mod = importlib.import_module("labelsmooth.experiments.sweep")
    real, calls = sweep_mod.train_run, []

    def interrupt_second(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_mod, "train_run", interrupt_second)
    out = tmp_path / "o"
    argv = [
        "sweep",
        "--epochs",
        "1",
        "--smoothing",
        "0",
        "0.1",
        "--seeds",
        "1",
        "--n-bootstrap",
        "0",
        "--out",
        str(out),
        "--no-progress",
        "--no-report",
    ]
    assert main(argv) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    assert (out / "runs" / "eps0_seed0.json").is_file()
    assert not (out / "runs" / "eps0.1_seed0.json").exists()


def test_projection_classes_must_exist(tmp_path, capsys):
    argv = [
        "sweep",
        "--proj-classes",
        "0",
        "1",
        "12",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "proj_classes must be 3 classes below num_classes=10" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
