"""Label noise: flipping only training labels, memorisation, and the claim's statuses."""

from __future__ import annotations

import json
import math

import pytest
import torch

from labelsmooth.experiments import TrainSettings
from labelsmooth.experiments.data import make_splits
from labelsmooth.experiments.noise import (
    add_label_noise,
    flip_labels,
    memorisation,
    noise_claims,
    noise_sweep,
    paired_status,
)


def _splits(n=200, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, 5, generator=g) + y[:, None].float()
    return make_splits(x, y, split_seed=seed)


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_flip_exact_count_always_wrong_and_seeded(kind):
    y = torch.arange(1000) % 10
    noisy, flipped = flip_labels(y, 0.2, num_classes=10, kind=kind, seed=3)
    assert int(flipped.sum()) == 200
    assert bool((noisy[flipped] != y[flipped]).all()) and bool((noisy[~flipped] == y[~flipped]).all())
    assert noisy.min() >= 0 and noisy.max() < 10
    again, _ = flip_labels(y, 0.2, num_classes=10, kind=kind, seed=3)
    other, _ = flip_labels(y, 0.2, num_classes=10, kind=kind, seed=4)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    if kind == "asymmetric":
        assert bool(((noisy[flipped] - y[flipped]) % 10 == 1).all())
    else:  # symmetric: every other class reachable
        off = (noisy[flipped] - y[flipped]) % 10
        assert set(off.tolist()) == set(range(1, 10))


def test_zero_rate_and_bad_arguments():
    y = torch.arange(10) % 3
    noisy, flipped = flip_labels(y, 0.0, num_classes=3)
    assert torch.equal(noisy, y) and not bool(flipped.any())
    for bad in (1.0, -0.1, float("nan"), True, "0.2"):
        with pytest.raises(ValueError, match="label noise rate"):
            flip_labels(y, bad, num_classes=3)
    with pytest.raises(ValueError, match="noise kind"):
        flip_labels(y, 0.1, num_classes=3, kind="pairwise")


def test_only_training_labels_are_flipped():
    s = _splits()
    n = add_label_noise(s, 0.25, kind="symmetric", seed=0)
    for part in ("val", "cal", "test"):
        assert torch.equal(getattr(n, f"y_{part}"), getattr(s, f"y_{part}"))
        assert torch.equal(getattr(n, f"x_{part}"), getattr(s, f"x_{part}"))
    assert torch.equal(n.y_train_clean, s.y_train)
    assert int((n.y_train != s.y_train).sum()) == round(0.25 * len(s.y_train))
    assert n.label_noise["clean_splits"] == ["val", "cal", "test"]
    with pytest.raises(ValueError, match="already carry label noise"):
        add_label_noise(n, 0.1)


def test_memorisation_counts():
    s = _splits(n=40)
    n = add_label_noise(s, 0.5, kind="asymmetric", seed=1)
    k = s.num_classes
    # a model that predicts the noisy labels memorised everything; one that predicts the true
    # labels memorised nothing
    m_noisy = memorisation(torch.nn.functional.one_hot(n.y_train, k).float(), n)
    m_true = memorisation(torch.nn.functional.one_hot(n.y_train_clean, k).float(), n)
    assert m_noisy["noisy_label_accuracy"] == 1.0 and m_noisy["true_label_accuracy"] == 0.0
    assert m_true["noisy_label_accuracy"] == 0.0 and m_true["true_label_accuracy"] == 1.0
    assert m_noisy["flipped"] == int((n.y_train != n.y_train_clean).sum())
    assert m_noisy["clean_example_accuracy"] == 1.0


def _rows(acc_base, acc_smooth, spread=0.01, seeds=5, val=(1.0, 0.9)):
    rows = []
    for s in range(seeds):
        wobble = spread * ((s * 7) % 5 - 2) / 2
        rows.append({"smoothing": 0.0, "seed": s, "test_accuracy": acc_base + wobble,
                     "test_nll": 1.0, "test_ece": 0.1, "val_nll": val[0]})
        rows.append({"smoothing": 0.1, "seed": s, "test_accuracy": acc_smooth + wobble
                     + (0.002 * (s % 2) if acc_smooth == acc_base
                        else 0.002 * ((s * 3) % 5 - 2) / 2),  # seed noise that sums to 0
                     "test_nll": 0.9, "test_ece": 0.05, "val_nll": val[1]})
    return rows


def test_claim_statuses_on_planted_truths():
    helps = noise_claims({0.2: _rows(0.70, 0.76)})[0]
    hurts = noise_claims({0.2: _rows(0.76, 0.70)})[0]
    tie = noise_claims({0.2: _rows(0.70, 0.70)})[0]
    assert (helps["status"], hurts["status"], tie["status"]) == ("held", "did not hold", "inconclusive")
    assert helps["factor"] == 0.1 and helps["selected_on"] == {"split": "val", "metric": "nll"}
    assert helps["mean"] == pytest.approx(0.06) and helps["noise_rate"] == 0.2
    # rate 0 is not a noise claim; one per positive rate
    both = noise_claims({0.0: _rows(0.9, 0.9), 0.2: _rows(0.7, 0.76), 0.4: _rows(0.6, 0.5)})
    assert [(c["noise_rate"], c["status"]) for c in both] == [(0.2, "held"), (0.4, "did not hold")]
    # one seed: never decided
    assert noise_claims({0.2: _rows(0.70, 0.90, seeds=1)})[0]["status"] == "inconclusive"
    # no baseline: inconclusive, with the reason
    only = [r for r in _rows(0.7, 0.8) if r["smoothing"] > 0]
    assert noise_claims({0.2: only})[0]["status"] == "inconclusive"


def test_paired_status_directions():
    assert paired_status([1, 2, 3], [2, 3, 4], want=-1)["status"] == "held"
    assert paired_status([1, 2, 3], [2, 3, 4], want=+1)["status"] == "did not hold"
    r = paired_status([1.0, 2.0, 3.0], [1.1, 1.9, 3.05], want=+1)
    assert r["status"] == "inconclusive" and r["low"] < 0 < r["high"]
    assert math.isnan(paired_status([1.0], [0.0], want=+1)["low"])


@pytest.mark.slow
def test_noise_sweep_end_to_end(tmp_path):
    s = _splits(n=120, k=3)
    res = noise_sweep(
        s, [0.0, 0.3], out=str(tmp_path), smoothing=[0.0, 0.2], seeds=2, model="mlp",
        settings=TrainSettings(epochs=2, batch_size=32, n_bootstrap=0), workers=1,
        progress=False, report=False,
    )
    assert sorted(res["results"]) == [0.0, 0.3]
    noisy_rows = res["results"][0.3].rows
    assert all("memo_noisy_label_accuracy" in r for r in noisy_rows)
    assert all("memo_noisy_label_accuracy" not in r for r in res["results"][0.0].rows)
    assert res["results"][0.3].config["label_noise"]["rate"] == 0.3
    assert (tmp_path / "noise0.3" / "results.json").exists()
    doc = json.loads((tmp_path / "noise.json").read_text())
    assert doc["claims"][0]["claim"] == "smoothing_helps_under_label_noise"
    assert doc["claims"][0]["status"] in ("held", "did not hold", "inconclusive")
    assert "| 0.3 | 0.2 |" in (tmp_path / "noise.md").read_text()
    # several rates: out/report.md is the report over the rates, with each rate's verdict
    rep = (tmp_path / "report.md").read_text()
    assert "## Noise rate 0.3" in rep and "## Noise rate 0" in rep and "| 0.3 | 0.2 |" in rep
    # the claim is the noisy sweep's own verdict claim
    own = res["results"][0.3].verdict.claim("smoothing_helps_under_label_noise")
    assert doc["claims"][0]["status"] == own.status


def test_cli_flags_and_config(tmp_path):
    from labelsmooth.cli import build_parser, resolve_sweep_config

    p = build_parser()
    cfg = resolve_sweep_config(p.parse_args(["sweep", "--label-noise", "0", "0.2", "--noise-kind", "asymmetric"]))
    assert cfg["label_noise"] == [0.0, 0.2] and cfg["noise_kind"] == "asymmetric"
    assert resolve_sweep_config(p.parse_args(["sweep"]))["label_noise"] == []
    with pytest.raises(SystemExit):
        p.parse_args(["sweep", "--label-noise", "1.0"])
    f = tmp_path / "c.toml"
    f.write_text("label_noise = [0.1, 0.4]\nnoise_kind = 'symmetric'\n")
    cfg = resolve_sweep_config(p.parse_args(["sweep", "--config", str(f)]))
    assert cfg["label_noise"] == [0.1, 0.4]
    f.write_text("label_noise = [1.5]\n")
    with pytest.raises(ValueError, match="label_noise"):
        resolve_sweep_config(p.parse_args(["sweep", "--config", str(f)]))


def test_npz_marks_its_noisy_labels(tmp_path):
    import numpy as np

    from labelsmooth.experiments.data import load_dataset

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    y_clean = np.arange(100) % 4
    y = y_clean.copy()
    y[:30] = (y[:30] + 1) % 4
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y, y_clean=y_clean)
    s = load_dataset(str(p))
    plain = load_dataset(str(p).replace("d.npz", "d.npz"))  # same file, same split
    assert torch.equal(s.x_train, plain.x_train)
    np.savez(tmp_path / "c.npz", x=x, y=y_clean)
    clean = load_dataset(str(tmp_path / "c.npz"))
    for part in ("val", "cal", "test"):  # the held-out splits take the clean labels
        assert torch.equal(getattr(s, f"y_{part}"), getattr(clean, f"y_{part}"))
    assert torch.equal(s.y_train_clean, clean.y_train)
    assert s.label_noise["flipped"] == int((s.y_train != clean.y_train).sum()) > 0
    np.savez(p, x=x, y=y, y_clean=y_clean[:50])
    with pytest.raises(ValueError, match="y_clean has shape"):
        load_dataset(str(p))
