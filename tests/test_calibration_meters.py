"""Streaming calibration meters: equal to the one-shot functions, mergeable, constant-size state,
and reducible across two real gloo processes on 127.0.0.1."""

from __future__ import annotations

import datetime
import socket
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labelsmooth.calibration import (
    BinnedCalibrationMeter,
    SampleCalibrationMeter,
    accuracy,
    adaptive_calibration_error,
    bootstrap_ci,
    brier_score,
    calibration_gap,
    classwise_calibration_error,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    rms_calibration_error,
    smooth_calibration_error,
)


pytestmark = pytest.mark.usefixtures("one_thread")


SCALARS = (
    "ece",
    "mce",
    "rms_ce",
    "debiased_ce",
    "debiased_ce_squared",
    "gap",
    "accuracy",
    "nll",
    "brier",
)


def _case(seed: int, n: int, k: int, *, logits: bool = False):
    g = torch.Generator().manual_seed(seed)
    z = 2.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g)
    z[torch.arange(n), y] += 2 * torch.rand(n, generator=g, dtype=torch.float64)
    if n:  # saturated rows: confidence exactly 1.0 in the last bin
        z[: max(1, n // 20)] = 0.0
        z[: max(1, n // 20), 0] = 800.0
    return (z if logits else z.softmax(-1)), y


def _one_shot(p, y, n_bins, num_classes=None, from_logits=False):
    kw = {"from_logits": from_logits}
    gap = calibration_gap(p, y, n_bins, **kw)
    out = {
        "n": torch.tensor(float(len(y)), dtype=torch.float64),
        "ece": expected_calibration_error(p, y, n_bins, **kw),
        "mce": maximum_calibration_error(p, y, n_bins, **kw),
        "rms_ce": rms_calibration_error(p, y, n_bins, **kw),
        "debiased_ce": debiased_calibration_error(p, y, n_bins, **kw),
        "debiased_ce_squared": debiased_calibration_error(p, y, n_bins, squared=True, **kw),
        "gap": gap.overall,
        "accuracy": accuracy(p, y, **kw),
        "nll": negative_log_likelihood(p, y, **kw),
        "brier": brier_score(p, y, **kw),
        "bin_counts": gap.counts,
        "bin_confidence": gap.confidence,
        "bin_accuracy": gap.accuracy,
        "bin_gap": gap.per_bin,
    }
    if num_classes is not None:
        out["classwise_ece"] = classwise_calibration_error(p, y, n_bins, **kw)
    return out


def _assert_same(got: dict, want: dict, atol: float = 1e-12) -> None:
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(
            got[k].double() if k != "bin_counts" else got[k],
            want[k].double() if k != "bin_counts" else want[k],
            rtol=0,
            atol=atol,
            equal_nan=True,
            msg=k,
        )


def _random_splits(n: int, g: torch.Generator) -> list[int]:
    cuts = sorted(
        torch.randint(
            0, n + 1, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g
        ).tolist()
    )
    edges = [0, *cuts, n]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------------------------------------
# binned meter
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,n,k,n_bins", [(0, 500, 6, 15), (1, 37, 3, 40), (2, 1, 4, 15)])
@pytest.mark.parametrize("from_logits", [False, True])
def test_binned_meter_random_splits_equal_one_shot(seed, n, k, n_bins, from_logits):
    x, y = _case(seed, n, k, logits=from_logits)
    want = _one_shot(x, y, n_bins, num_classes=k, from_logits=from_logits)
    g = torch.Generator().manual_seed(100 + seed)
    for _ in range(4):
        meter = BinnedCalibrationMeter(n_bins, num_classes=k, from_logits=from_logits)
        start = 0
        for size in _random_splits(n, g):
            if size:  # empty batches are not updates
                meter.update(x[start : start + size], y[start : start + size])
            start += size
        _assert_same(meter.compute(), want)


def test_binned_meter_single_batch_is_bitwise_one_shot():
    x, y = _case(3, 400, 5)
    meter = BinnedCalibrationMeter(15)
    meter.update(x, y)
    got = meter.compute()
    assert got["ece"].item() == expected_calibration_error(x, y).item()
    assert got["mce"].item() == maximum_calibration_error(x, y).item()
    assert got["rms_ce"].item() == rms_calibration_error(x, y).item()
    assert got["debiased_ce"].item() == debiased_calibration_error(x, y).item()


def test_binned_meter_float32_logits_match_functional():
    x, y = _case(4, 300, 7, logits=True)
    x = x.float()
    meter = BinnedCalibrationMeter(10, from_logits=True)
    for chunk in range(0, 300, 64):
        meter.update(x[chunk : chunk + 64], y[chunk : chunk + 64])
    _assert_same(
        {k: v for k, v in meter.compute().items()}, _one_shot(x, y, 10, from_logits=True), atol=1e-9
    )


def test_binned_meter_merge_and_state_size():
    x, y = _case(5, 1000, 4)
    a, b, whole = (BinnedCalibrationMeter(15, num_classes=4) for _ in range(3))
    a.update(x[:300], y[:300])
    b.update(x[300:], y[300:])
    whole.update(x, y)
    _assert_same(a.merge(b).compute(), whole.compute())
    # merging an empty meter changes nothing, merging into an empty one copies
    _assert_same(a.merge(BinnedCalibrationMeter(15, num_classes=4)).compute(), whole.compute())
    c = BinnedCalibrationMeter(15, num_classes=4).merge(whole)
    _assert_same(c.compute(), whole.compute())
    # State does not grow with the number of samples: 3*M + 2 + 3*K*M values.
    small = BinnedCalibrationMeter(15, num_classes=4)
    small.update(x[:2], y[:2])
    sizes_small = {k: v.numel() for k, v in small.state_dict().items()}
    sizes_big = {k: v.numel() for k, v in whole.state_dict().items()}
    assert sizes_small == sizes_big
    assert sum(sizes_big.values()) == whole.state_numel == 3 * 15 + 2 + 3 * 4 * 15
    with pytest.raises(ValueError, match="n_bins and num_classes"):
        a.merge(BinnedCalibrationMeter(10, num_classes=4))
    with pytest.raises(TypeError, match="BinnedCalibrationMeter"):
        a.merge(SampleCalibrationMeter())


def test_binned_meter_state_dict_roundtrip_reset_and_errors():
    x, y = _case(6, 200, 3)
    m = BinnedCalibrationMeter(12, num_classes=3)
    m.update(x, y)
    r = BinnedCalibrationMeter(12, num_classes=3)
    r.load_state_dict(m.state_dict())
    _assert_same(r.compute(), m.compute())
    m.reset()
    with pytest.raises(ValueError, match="at least one sample"):
        m.compute()
    with pytest.raises(ValueError, match="num_classes = 3"):
        m.update(torch.rand(4, 5).softmax(-1), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_bins"):
        BinnedCalibrationMeter(0)
    with pytest.raises(ValueError, match="num_classes"):
        BinnedCalibrationMeter(15, num_classes=1)
    with pytest.raises(ValueError, match="state keys"):
        r.load_state_dict({"counts": torch.zeros(12)})
    with pytest.raises(RuntimeError, match="process group"):
        r.all_reduce()


# ---------------------------------------------------------------------------------------------
# sample meter
# ---------------------------------------------------------------------------------------------
def test_sample_meter_equals_functional():
    x, y = _case(7, 300, 5)
    m = SampleCalibrationMeter(10, keep_probs=True)
    g = torch.Generator().manual_seed(1)
    start = 0
    for size in _random_splits(300, g):
        if size:
            m.update(x[start : start + size], y[start : start + size])
        start += size
    assert len(m) == 300
    got = m.compute()
    checks = {
        "ece": expected_calibration_error(x, y, 10),
        "mce": maximum_calibration_error(x, y, 10),
        "rms_ce": rms_calibration_error(x, y, 10),
        "debiased_ce": debiased_calibration_error(x, y, 10),
        "adaptive_ece": adaptive_calibration_error(x, y, 10),
        "smooth_ece": smooth_calibration_error(x, y),
        "gap": calibration_gap(x, y, 10).overall,
        "accuracy": accuracy(x, y),
        "classwise_ece": classwise_calibration_error(x, y, 10),
        "nll": negative_log_likelihood(x, y),
        "brier": brier_score(x, y),
    }
    for k, v in checks.items():
        assert got[k].item() == pytest.approx(v.item(), abs=1e-12), k
    assert 0 < got["smooth_bandwidth"].item() <= 1
    # Named bootstrap from (confidence, correct) = the functional bootstrap on the probabilities.
    a = m.bootstrap_ci("ece", n_resamples=60, seed=3)
    b = bootstrap_ci(expected_calibration_error, x, y, n_resamples=60, seed=3, n_bins=10)
    assert a.estimate == pytest.approx(b.estimate, abs=1e-12)
    assert a.low == pytest.approx(b.low, abs=1e-12) and a.high == pytest.approx(b.high, abs=1e-12)
    c = m.bootstrap_ci(brier_score, n_resamples=20, seed=0)
    assert c == bootstrap_ci(brier_score, x, y, n_resamples=20, seed=0)


def test_sample_meter_merge_and_errors():
    x, y = _case(8, 100, 3)
    a, b = SampleCalibrationMeter(), SampleCalibrationMeter()
    a.update(x[:40], y[:40])
    b.update(x[40:], y[40:])
    whole = SampleCalibrationMeter()
    whole.update(x, y)
    got, want = a.merge(b).compute(), whole.compute()
    for k in want:
        assert got[k].item() == pytest.approx(want[k].item(), abs=1e-12), k
    with pytest.raises(ValueError, match="keep_probs"):
        a.probs_labels()
    with pytest.raises(ValueError, match="Expected `metric` to be one of"):
        a.bootstrap_ci("nope")
    with pytest.raises(ValueError, match="no samples"):
        SampleCalibrationMeter().compute()


# ---------------------------------------------------------------------------------------------
# torch.distributed: two gloo processes
# ---------------------------------------------------------------------------------------------
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, workdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        data = torch.load(Path(workdir) / "in.pt")
        x, y, bounds = data["x"], data["y"], data["bounds"]
        lo, hi = bounds[rank], bounds[rank + 1]
        binned = BinnedCalibrationMeter(15, num_classes=x.shape[1])
        sample = SampleCalibrationMeter(15, keep_probs=True)
        for s in range(lo, hi, 50):  # several local batches
            e = min(s + 50, hi)
            binned.update(x[s:e], y[s:e])
            sample.update(x[s:e], y[s:e])
        binned.all_reduce()
        sample.all_reduce()
        out = {
            "binned": binned.compute(),
            "sample": sample.compute(),
            "probs": sample.probs_labels()[0],
            "labels": sample.probs_labels()[1],
        }
        torch.save(out, Path(workdir) / f"out{rank}.pt")
    except BaseException:
        (Path(workdir) / f"err{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _edge_rows_float32(k: int, n_bins: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 rows whose confidence is exactly float32(m / n_bins): on a bin edge."""
    conf = (torch.arange(1, n_bins + 1, dtype=torch.float64) / n_bins).float().clamp_min(1 / k)
    probs = ((1 - conf.double()) / (k - 1))[:, None].expand(n_bins, k).float().clone()
    probs[:, 0] = conf
    return probs, torch.arange(n_bins) % 2


def test_sample_meter_keeps_float32_edges():
    probs, y = _edge_rows_float32(4)
    m = SampleCalibrationMeter(15)
    m.update(probs[:7], y[:7])
    m.update(probs[7:], y[7:])
    assert m.tensors()[0].dtype == torch.float32
    assert m.compute()["ece"].item() == expected_calibration_error(probs, y, 15).item()


def test_all_reduce_two_gloo_processes():
    x64, y64 = _case(9, 333, 6)
    e, ey = _edge_rows_float32(6)
    x32, y32 = torch.cat([x64.float(), e]), torch.cat([y64, ey])
    # rank 0 without samples (the meters must still reduce); then an uneven float32 split
    configs = [(x64, y64, [0, 0, 333]), (x32, y32, [0, 120, 348])]
    for x, y, bounds in configs:
        with tempfile.TemporaryDirectory() as d:
            torch.save({"x": x, "y": y, "bounds": bounds}, Path(d) / "in.pt")
            try:
                mp.start_processes(
                    _worker,
                    args=(2, _free_port(), d),
                    nprocs=2,
                    join=True,
                    start_method=START_METHOD,
                )
            except Exception:
                errs = sorted(Path(d).glob("err*.txt"))
                raise AssertionError("\n".join(f.read_text() for f in errs)) from None
            per_rank = [torch.load(Path(d) / f"out{r}.pt") for r in range(2)]
        want = _one_shot(x, y, 15, num_classes=6)
        want_sample = {
            "adaptive_ece": adaptive_calibration_error(x, y, 15),
            "smooth_ece": smooth_calibration_error(x, y),
            "ece": expected_calibration_error(x, y, 15),
        }
        for out in per_rank:
            _assert_same(out["binned"], want)
            assert out["probs"].dtype == x.dtype
            torch.testing.assert_close(out["probs"], x, rtol=0, atol=0)  # rank order preserved
            assert torch.equal(out["labels"], y)
            for k, v in want_sample.items():
                assert out["sample"][k].item() == pytest.approx(v.item(), abs=1e-12), k


def _mismatch_worker(rank: int, world: int, port: int, workdir: str, case: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    x, y = _case(11, 40, 4)
    try:
        if case == "n_bins":
            meter = BinnedCalibrationMeter(15 if rank == 0 else 10, num_classes=4)
        elif case == "num_classes":
            meter = BinnedCalibrationMeter(15, num_classes=4 if rank == 0 else None)
        else:  # keep_probs on one rank only: rows of different widths
            meter = SampleCalibrationMeter(15, keep_probs=rank == 0)
        meter.update(x[rank::world], y[rank::world])
        try:
            meter.all_reduce()
        except ValueError as exc:
            (Path(workdir) / f"msg{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("n_bins", r"same n_bins \(rank 0: 15\), but got n_bins = 10 on rank 1"),
        ("num_classes", r"same num_classes \(rank 0: 4\), but got num_classes = 0 on rank 1"),
        ("keep_probs", r"same keep_probs \(rank 0: 1\), but got keep_probs = 0 on rank 1"),
    ],
)
def test_all_reduce_of_differently_built_meters_raises_on_every_rank(case, pattern):
    # Before: mismatched buffers reached the collective (an error on one side, a hang or garbage
    # on the other). Now one small exchange of settings first; every rank raises the same error.
    import re

    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(
            _mismatch_worker,
            args=(2, _free_port(), d, case),
            nprocs=2,
            join=True,
            start_method=START_METHOD,
        )
        messages = [(Path(d) / f"msg{r}.txt").read_text() for r in range(2)]
    assert messages[0] == messages[1]
    assert re.search(pattern, messages[0]), messages[0]
    assert messages[0].startswith("Expected `meter on every rank` to be built with the same")
