"""The Ray executor (issue 18 item 5): the same runs as Ray tasks give the serial sweep's numbers,
every run is saved by the parent (so a resume reuses them all), and Ray is optional."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from labelsmooth.experiments.executor import RayExecutor  # noqa: E402
from labelsmooth.experiments.sweep import sweep  # noqa: E402

TIMING = ("seconds",)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(150, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


KW = dict(
    smoothing=[0.0, 0.2], seeds=2, epochs=2, n_bootstrap=0, progress=False, report=False,
    threads=1,
)


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(t in k for t in TIMING)}


@pytest.fixture(scope="module")
def local_ray():
    """A small local Ray instance for this module (the sweep uses it and leaves it up)."""
    if ray.is_initialized():  # pragma: no cover - someone else's instance
        pytest.skip("Ray is already initialised in this process")
    ray.init(
        address="local",  # a new instance, even where a `ray start` cluster runs
        num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_sweep_equals_serial_and_resumes(local_ray, tmp_path):
    data = _data()
    out = tmp_path / "ray"
    res = sweep(data=data, out=out, executor="ray", **KW)
    assert ray.is_initialized(), "the sweep shut down a Ray instance it did not start"
    assert res.complete and len(res.runs) == 4 and res.reused == 0
    assert res.config["executor"] == "ray"
    for key in ("eps0_seed0", "eps0.2_seed1"):
        assert (out / "runs" / f"{key}.json").exists() and (out / "runs" / f"{key}.npz").exists()

    serial = sweep(data=data, workers=1, **KW)
    assert [_strip(r) for r in res.rows] == [_strip(r) for r in serial.rows]
    for key, arr in serial.arrays.items():
        assert sorted(arr) == sorted(res.arrays[key])
        for name, a in arr.items():
            np.testing.assert_array_equal(res.arrays[key][name], a, err_msg=f"{key}/{name}")

    again = sweep(data=data, out=out, executor="ray", **KW)
    assert again.reused == 4 and len(again.runs) == 4
    assert [_strip(r) for r in again.rows] == [_strip(r) for r in res.rows]


@pytest.mark.slow
def test_ray_run_error_reaches_caller_and_cancels(local_ray):
    """A run that raises stops the sweep with that error; the others are cancelled."""
    from labelsmooth.experiments.executor import RunJob, RunTask

    def boom(build, splits, smoothing, seed, settings, progress=None):
        # local, so Ray pickles it by value (workers cannot import this test module)
        if seed == 1:
            raise ValueError(f"boom at seed {seed}")
        return {"seed": seed}, {}

    done: list[str] = []
    job = RunJob(train_fn=boom, build=object, splits=None, settings=None)
    tasks = [RunTask(f"t{i}", 0.1 * i, i) for i in range(4)]
    with pytest.raises(ValueError, match="boom at seed 1"):
        RayExecutor(workers=2).run(job, tasks, lambda t: None, lambda t, r, a: done.append(t.key))
    assert "t1" not in done


def test_ray_arguments_are_checked():
    with pytest.raises(ValueError, match="executor"):
        sweep(data=_data(), executor="dask", **KW)
    with pytest.raises(ValueError, match="ray_address"):
        sweep(data=_data(), ray_address="auto", **KW)
    with pytest.raises(ValueError, match="workers"):
        RayExecutor(workers=0)
    with pytest.raises(ValueError, match="ray_address"):
        RayExecutor(address="")


def test_cli_without_ray_says_so_before_loading_data(monkeypatch, capsys, tmp_path):
    """No ray installed: one line naming the extra, exit 1, before any data is read."""
    import importlib.util

    from labelsmooth import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    loaded = []
    monkeypatch.setattr(
        "labelsmooth.experiments.load_dataset", lambda *a, **k: loaded.append(a)
    )
    rc = cli.main(["sweep", "--dataset", "digits", "--executor", "ray", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and not loaded
    assert "labelsmooth[ray]" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ImportError, match=r"labelsmooth\[ray\]"):
        sweep(data=_data(), executor="ray", **KW)


def test_cli_ray_address_needs_ray_executor(capsys, tmp_path):
    from labelsmooth import cli

    with pytest.raises(SystemExit):
        cli.main(["sweep", "--ray-address", "auto", "--out", str(tmp_path)])
    assert "--ray-address needs --executor ray" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_starts_the_longest_runs_first(local_ray):
    """Ray goes through the same dispatch order as the worker pool: longest expected first."""
    from labelsmooth.experiments.executor import RunJob, RunTask

    def quick(build, splits, setting, seed, settings, progress=None):
        return {"setting": setting}, {}

    job = RunJob(train_fn=quick, build=object, splits=None, settings=None)
    costs = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 2.0}
    tasks = [RunTask(f"{k}_seed0", k, 0, cost=c) for k, c in costs.items()]
    started: list[str] = []
    done: list[str] = []
    RayExecutor(workers=2).run(job, tasks, lambda t: started.append(t.setting),
                               lambda t, r, a: done.append(r["setting"]))
    assert started == ["b", "c", "d", "a"]
    assert sorted(done) == ["a", "b", "c", "d"]


@pytest.mark.slow
def test_ray_method_comparison_equals_serial_and_resumes(local_ray, tmp_path):
    """`sweep --method ... --executor ray`: the comparison's runs as Ray tasks, same numbers."""
    from labelsmooth.experiments.methods import compare_methods

    kw = dict(grids={"focal": [2.0]}, seeds=2, epochs=2, n_bootstrap=0, progress=False,
              threads=1)
    res = compare_methods(_data(), ["focal"], executor="ray", out=tmp_path, **kw)
    assert res.config["executor"] == "ray" and len(res.rows) == 4 and res.reused == 0
    serial = compare_methods(_data(), ["focal"], workers=1, **kw)
    assert [_strip(r) for r in res.rows] == [_strip(r) for r in serial.rows]
    again = compare_methods(_data(), ["focal"], executor="ray", out=tmp_path, **kw)
    assert again.reused == 4 and [_strip(r) for r in again.rows] == [_strip(r) for r in res.rows]
