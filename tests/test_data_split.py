"""User data marks its own splits: a CSV split column (and an NPZ ``split`` array); only the
train rows may be noisy, val / cal / test rows are assumed clean (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelsmooth.experiments.data import load_dataset


def _write_csv(path, n=120, noisy_train=0.3, split_col="split", with_val=True, clean_col=False,
               seed=0):
    """Rows with a feature ``id`` (the row number, to find each row again), two informative
    features, a label; train rows get ``noisy_train`` of their labels flipped, the others never."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    marks = np.array(["train"] * n, dtype=object)
    marks[n - 20:] = "test"
    if with_val:
        marks[n - 40:n - 30] = "Val"          # case-insensitive
        marks[n - 30:n - 20] = "calib"        # a documented spelling of cal
    noisy = y.copy()
    train_rows = np.flatnonzero(marks == "train")
    flip = g.choice(train_rows, size=int(noisy_train * train_rows.size), replace=False)
    noisy[flip] = (noisy[flip] + 1) % 3
    head = ["id", "a", "b", "label", split_col] + (["label_clean"] if clean_col else [])
    lines = [",".join(head)]
    for i in range(n):
        a, b = y[i] + g.normal(0, 0.3), -y[i] + g.normal(0, 0.3)
        row = [str(i), f"{a:.4f}", f"{b:.4f}", str(noisy[i]), marks[i]]
        if clean_col:
            row.append(str(y[i]))
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")
    return y, noisy, marks, flip


def _ids(splits, part, mean, sd):
    # the id feature was standardised with the training split's statistics: undo it
    return sorted(int(round(v)) for v in (getattr(splits, f"x_{part}")[:, 0] * sd + mean).tolist())


def test_csv_split_column_keeps_marked_rows_in_their_split(tmp_path):
    p = tmp_path / "d.csv"
    y, noisy, marks, _ = _write_csv(p)
    s = load_dataset(str(p))
    assert s.feature_shape == (3,)  # id, a, b: the split column is not a feature
    assert s.sizes() == {"train": 80, "val": 10, "cal": 10, "test": 20}
    train_ids = np.flatnonzero(marks == "train")
    mean, sd = train_ids.mean(), train_ids.std()
    assert _ids(s, "test", mean, sd) == list(range(100, 120))
    assert _ids(s, "val", mean, sd) == list(range(80, 90))
    assert _ids(s, "cal", mean, sd) == list(range(90, 100))
    # held-out labels are the clean ones (never flipped); train keeps its noisy labels
    order = torch.argsort(s.x_test[:, 0])
    assert s.y_test[order].tolist() == y[100:].tolist()
    order = torch.argsort(s.x_train[:, 0])
    assert s.y_train[order].tolist() == noisy[train_ids].tolist()
    # the same file loads the same way for any split_seed: the marking decides, not the seed
    s2 = load_dataset(str(p), split_seed=5)
    assert torch.equal(s2.y_test, s.y_test) and s2.sizes() == s.sizes()


def test_unmarked_val_and_cal_are_carved_from_the_train_rows(tmp_path):
    p = tmp_path / "d.csv"
    _, _, marks, _ = _write_csv(p, with_val=False)
    s = load_dataset(str(p), fractions=(0.6, 0.1, 0.1, 0.2))
    # 100 train rows split 6:1:1 (the test share does not apply: test is marked)
    assert s.sizes() == {"train": 75, "val": 12, "cal": 13, "test": 20}
    a = load_dataset(str(p), split_seed=1)
    assert not torch.equal(a.y_val, s.y_val) or not torch.equal(a.x_val, s.x_val)  # seeded


def test_clean_label_column_trains_on_noisy_labels_and_holds_out_clean_ones(tmp_path):
    p = tmp_path / "d.csv"
    y, noisy, marks, flip = _write_csv(p, clean_col=True, with_val=False)
    s = load_dataset(str(p))
    assert s.feature_shape == (3,)  # label_clean is not a feature either
    assert s.y_train_clean is not None
    assert int((s.y_train != s.y_train_clean).sum()) == s.label_noise["flipped"] > 0
    # val/cal carved from train rows take the clean labels there
    assert s.label_noise["clean_splits"] == ["val", "cal", "test"]
    order = torch.argsort(s.x_test[:, 0])
    assert s.y_test[order].tolist() == y[100:].tolist()


def test_bad_split_values_are_named(tmp_path):
    p = tmp_path / "d.csv"
    _write_csv(p)
    text = p.read_text().splitlines()
    text[3] = text[3].replace(",train", ",dev")
    p.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"line 4, column 'split': split 'dev'"):
        load_dataset(str(p))
    _write_csv(p)
    p.write_text(p.read_text().replace(",test", ",train"))
    with pytest.raises(ValueError, match="marks no 'test' rows"):
        load_dataset(str(p))


def test_custom_split_column_name_and_opting_out(tmp_path):
    p = tmp_path / "d.csv"
    _write_csv(p, split_col="part")
    s = load_dataset(str(p), split_column="part")
    assert s.sizes()["test"] == 20
    with pytest.raises(ValueError, match="non-numeric feature"):  # 'part' read as a feature
        load_dataset(str(p))


def test_npz_split_array(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(60, 2))
    y = np.arange(60) % 2
    split = np.array(["train"] * 40 + ["val"] * 5 + ["cal"] * 5 + ["test"] * 10)
    np.savez(tmp_path / "d.npz", x=x, y=y, split=split)
    s = load_dataset(str(tmp_path / "d.npz"))
    assert s.sizes() == {"train": 40, "val": 5, "cal": 5, "test": 10}
    with pytest.raises(ValueError, match="not both"):
        np.savez(tmp_path / "e.npz", x=x, y=y, split=split, x_test=x[:3], y_test=y[:3])
        load_dataset(str(tmp_path / "e.npz"))


def test_cli_split_column_flag(tmp_path):
    from labelsmooth.cli import build_parser, resolve_sweep_config

    p = build_parser()
    assert resolve_sweep_config(p.parse_args(["sweep"]))["split_column"] == "split"
    cfg = resolve_sweep_config(p.parse_args(["sweep", "--split-column", "part"]))
    assert cfg["split_column"] == "part"


def test_sweep_on_a_csv_with_clean_labels_judges_the_noise_claim(tmp_path):
    """The data's own noisy/clean labels reach the verdict: memorisation columns, the noise
    claim, and a scope that says which labels were noisy."""
    from labelsmooth.experiments import TrainSettings, sweep
    from labelsmooth.experiments.render import scope_sentence

    p = tmp_path / "d.csv"
    _write_csv(p, clean_col=True)
    res = sweep(data=load_dataset(str(p)), smoothing=[0.0, 0.2], seeds=2, model="mlp",
                settings=TrainSettings(epochs=2, batch_size=32, n_bootstrap=0),
                progress=False, report=False)
    assert all("memo_noisy_label_accuracy" in r for r in res.rows)
    c = res.verdict.claim("smoothing_helps_under_label_noise")
    assert c is not None and c.status in ("held", "did not hold", "inconclusive")
    assert c.numbers["noise_rate"] == pytest.approx(0.3, abs=0.01)
    assert "the data's own noisy vs clean labels" in scope_sentence(res.verdict)
