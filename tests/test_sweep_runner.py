"""How the sweep runs: parallel workers, the progress display, the directory lock, damaged run
files, an unwritable output directory, data that cannot be trained on, and the checks a first
run makes before it loads data or trains."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelsmooth.cli import main
from labelsmooth.experiments import load_dataset, make_splits, sweep
from labelsmooth.experiments.executor import (
    ProcessExecutor,
    RunProgress,
    RunTask,
    SerialExecutor,
    check_device,
    make_executor,
)
from labelsmooth.experiments.rundir import (
    DirectoryLock,
    OutputDirError,
    SweepLockedError,
    read_run,
)

sweep_mod = importlib.import_module("labelsmooth.experiments.sweep")

FAST = {"epochs": 2, "n_bootstrap": 0, "batch_size": 32}


def _toy(n: int = 120, k: int = 3, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g) + 2.0 * F.one_hot(y, d).float()
    return x, y


def _strip_timings(rows):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def _counting(monkeypatch):
    calls = []
    real = sweep_mod.train_run

    def wrapped(build, splits, eps, seed, *args, **kwargs):
        calls.append((eps, seed))
        return real(build, splits, eps, seed, *args, **kwargs)

    monkeypatch.setattr(sweep_mod, "train_run", wrapped)
    return calls


def _children_alive() -> list[int]:
    return [p.pid for p in multiprocessing.active_children()]


# --------------------------------------------------------------------------------------------
# parallel runs
# --------------------------------------------------------------------------------------------
def test_two_workers_give_the_serial_numbers_and_resume(tmp_path):
    data = make_splits(*_toy(150))
    kw = dict(data=data, smoothing=[0.0, 0.2], seeds=2, threads=1, progress=False, report=False)
    serial = sweep(workers=1, epochs=2, n_bootstrap=5, batch_size=32, **kw)
    par = sweep(workers=2, out=tmp_path, epochs=2, n_bootstrap=5, batch_size=32, **kw)
    assert par.config["workers"] == 2 and par.reused == 0
    assert _strip_timings(par.rows) == _strip_timings(serial.rows)
    for key, arr in serial.arrays.items():
        for name, a in arr.items():
            np.testing.assert_array_equal(par.arrays[key][name], a)
    assert sorted(os.listdir(tmp_path / "runs")) == sorted(
        f"{k}.{ext}" for k in serial.arrays for ext in ("json", "npz")
    )  # every run saved, no temporary file left
    assert _children_alive() == []
    # a re-run reuses every run, in any number of workers
    again = sweep(workers=2, out=tmp_path, epochs=2, n_bootstrap=5, batch_size=32, **kw)
    assert again.reused == 4 and _strip_timings(again.rows) == _strip_timings(serial.rows)


def test_a_lambda_model_falls_back_to_serial_with_a_note(capsys):
    x, y = _toy(90, k=3)
    res = sweep(
        lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)),
        (x, y),
        smoothing=[0.0, 0.1],
        seeds=1,
        workers=2,
        progress=False,
        report=False,
        **FAST,
    )
    assert len(res.rows) == 2 and res.config["workers"] == 1
    assert any("cannot be sent to a worker process" in n for n in res.notes)
    assert "one at a time in this process" in capsys.readouterr().err


def test_make_executor_choices():
    from labelsmooth.experiments.executor import RunJob, default_workers
    from labelsmooth.experiments.sweep import BuiltinModel
    from labelsmooth.experiments.train import TrainSettings, train_run

    job = RunJob(train_run, BuiltinModel("mlp", (6,), 3), None, TrainSettings())
    assert isinstance(make_executor(1, job, 10), SerialExecutor)
    assert isinstance(make_executor(4, job, 1), SerialExecutor)  # one run: no pool
    ex = make_executor(3, job, 10, threads=2)
    assert isinstance(ex, ProcessExecutor) and (ex.workers, ex.threads) == (3, 2)
    assert make_executor(None, job, 10).workers == default_workers()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive int"):
            make_executor(bad, job, 10)
        with pytest.raises(ValueError, match="workers must be a positive int"):
            sweep(data=_toy(60), workers=bad, progress=False, report=False, **FAST)


@pytest.mark.slow
def test_a_failing_run_in_a_worker_stops_the_pool_and_keeps_finished_runs(tmp_path):
    # A factor > 1 cannot reach train_run through sweep(); call the executor with a bad task.
    from labelsmooth.experiments.executor import RunJob
    from labelsmooth.experiments.sweep import BuiltinModel
    from labelsmooth.experiments.train import TrainSettings, train_run

    data = make_splits(*_toy(90))
    job = RunJob(train_run, BuiltinModel("mlp", (6,), 3), data, TrainSettings(**FAST))
    tasks = [RunTask("a", 0.0, 0), RunTask("bad", 2.0, 0), RunTask("c", 0.1, 0)]
    done = []
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\], got 2.0"):
        ProcessExecutor(2).run(job, tasks, lambda t: None, lambda t, r, a: done.append(t.key))
    assert "bad" not in done
    assert _children_alive() == []


@pytest.mark.slow
def test_ctrl_c_with_workers_keeps_finished_runs_and_ends_the_workers(tmp_path, monkeypatch):
    data = make_splits(*_toy(150))
    kw = dict(data=data, smoothing=[0.0, 0.1, 0.2], seeds=1, out=tmp_path, report=False)
    real_finished = RunProgress.finished
    seen = []

    def interrupt_after_first(self, task):
        real_finished(self, task)
        seen.append(task.key)
        if len(seen) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunProgress, "finished", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        sweep(workers=2, progress=False, **kw, **FAST)
    assert _children_alive() == []  # no worker left behind
    files = sorted(p for p in os.listdir(tmp_path / "runs"))
    assert files == [f"{seen[0]}.json", f"{seen[0]}.npz"]  # the finished run, no temp file
    partial = json.loads((tmp_path / "results.json").read_text())
    assert partial["config"]["complete"] is False and len(partial["runs"]) == 1
    monkeypatch.setattr(RunProgress, "finished", real_finished)
    res = sweep(workers=2, progress=False, **kw, **FAST)
    assert res.complete and res.reused == 1 and len(res.rows) == 3


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_signal_to_the_cli_with_workers_leaves_no_process(tmp_path, sig):
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    # 8 seeds (40 runs): the signal must find the sweep still running.
    cmd = [sys.executable, "-m", "labelsmooth", "sweep", "--dataset", "digits", "--epochs", "30",
           "--seeds", "8", "--n-bootstrap", "0", "--workers", "2", "--no-report",
           "--no-progress", "--out", str(out)]  # fmt: skip
    # A test run started in the background (`make test &`, nohup) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: the sweep would run to the end. Give the
    # CLI the disposition an interactive user's process has.
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children: set[int] = set()
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == proc.pid:
                            children.add(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        if (out / "runs").is_dir() and any(p.endswith(".json") for p in os.listdir(out / "runs")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert children, "the sweep started no worker process"
    if sig == signal.SIGKILL:  # no clean-up in the parent: the workers notice it is gone
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "re-run the same command to resume" in err and "Traceback" not in err
    gone = time.time() + 10
    while time.time() < gone and any(os.path.exists(f"/proc/{c}") for c in children):
        time.sleep(0.2)
    alive = []
    for c in children:
        try:
            with open(f"/proc/{c}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":  # a zombie has exited
                    alive.append(c)
        except OSError:
            pass
    assert alive == []
    assert not [p for p in os.listdir(out / "runs") if p.startswith(".tmp")]
    saved = [p for p in os.listdir(out / "runs") if p.endswith(".json")]
    assert saved, "the finished run was not kept"


def _runs(settings, seeds, cost=None):
    return [RunTask(f"eps{e}_seed{s}", e, s, cost=(cost or {}).get(e)) for s in seeds for e in settings]


def test_dispatch_is_longest_first_within_each_seed():
    from labelsmooth.experiments.executor import DispatchOrder

    eps = (0.0, 0.05, 0.1, 0.2, 0.5)
    order = DispatchOrder(_runs(eps, (0, 1, 2)))
    first = [order.pop() for _ in range(5)]
    assert [t.key for t in first] == [f"eps{e}_seed0" for e in eps]  # nothing known: as given
    # measured (the shape of the default sweep: ε = 0 stops early, ε = 0.1 runs longest)
    took = {0.0: 3.0, 0.05: 5.0, 0.1: 6.5, 0.2: 6.0, 0.5: 4.5}
    for t in first:
        order.finished(t, took[t.setting])
    second = [order.pop() for _ in range(5)]
    assert [t.setting for t in second] == [0.1, 0.2, 0.05, 0.5, 0.0]
    assert {t.seed for t in second} == {1}  # seed by seed: an interruption keeps whole seeds
    order.finished(second[0], 10.5)  # ε = 0.1 now averages 8.5 s
    order.finished(second[-1], 1.0)
    assert [order.pop().setting for _ in range(5)] == [0.1, 0.2, 0.05, 0.5, 0.0]
    assert len(order) == 0


def test_dispatch_uses_known_costs_and_starts_unknown_runs_first():
    from labelsmooth.experiments.executor import DispatchOrder

    order = DispatchOrder(_runs((0.0, 0.1, 0.2, 0.3), (0,), cost={0.0: 2.0, 0.1: 9.0, 0.3: 4.0}))
    assert [order.pop().setting for _ in range(4)] == [0.2, 0.1, 0.3, 0.0]


def test_parallel_workers_start_the_longest_runs_first():
    """What the pool is handed, in order: with the costs known, longest first (numbers unchanged:
    see test_two_workers_give_the_serial_numbers_and_resume)."""
    from labelsmooth.experiments.executor import RunJob
    from labelsmooth.experiments.sweep import BuiltinModel
    from labelsmooth.experiments.train import TrainSettings, train_run

    data = make_splits(*_toy(90))
    job = RunJob(train_run, BuiltinModel("mlp", (6,), 3), data, TrainSettings(**FAST))
    tasks = _runs((0.0, 0.1, 0.2, 0.3), (0,), cost={0.0: 1.0, 0.1: 5.0, 0.2: 3.0, 0.3: 2.0})
    started, done = [], []
    ProcessExecutor(2).run(job, tasks, lambda t: started.append(t.setting),
                           lambda t, r, a: done.append(r["smoothing"]))
    assert started == [0.1, 0.2, 0.3, 0.0]
    assert sorted(done) == [0.0, 0.1, 0.2, 0.3]
    assert _children_alive() == []


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
def test_progress_counts_done_running_and_waiting(capsys):
    pytest.importorskip("tqdm")
    p = RunProgress(3, reused=2)
    a, b, c = RunTask("a", 0.0, 0), RunTask("b", 0.1, 0), RunTask("c", 0.2, 0)
    p.started(a)
    p.started(b)
    assert p._postfix() == {"running": 2, "waiting": 1}
    p.finished(a)
    p.started(c)
    p.finished(b)
    p.finished(c)
    p.close()
    err = capsys.readouterr().err
    assert "runs (2 reused)" in err and "3/3" in err and "running=0, waiting=0" in err


def test_progress_without_tqdm_prints_a_line_per_run(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    p = RunProgress(2)
    t = RunTask("eps0_seed0", 0.0, 0)
    p.started(t)
    p.finished(t)
    p.close()
    assert "run 1/2 done (eps0_seed0); running 0, waiting 1, ETA" in capsys.readouterr().err
    assert RunProgress(2, enabled=False).bar is None


# --------------------------------------------------------------------------------------------
# one sweep per output directory
# --------------------------------------------------------------------------------------------
def test_a_locked_directory_is_refused_before_anything_is_written(tmp_path):
    data = make_splits(*_toy(90))
    (tmp_path / "runs").mkdir()
    with DirectoryLock(str(tmp_path)):
        with pytest.raises(SweepLockedError, match=rf"in use by another sweep \(pid {os.getpid()}"):
            sweep(data=data, smoothing=[0.0], seeds=1, out=tmp_path, progress=False,
                  report=False, **FAST)  # fmt: skip
    assert os.listdir(tmp_path / "runs") == []
    res = sweep(data=data, smoothing=[0.0], seeds=1, out=tmp_path, progress=False, report=False,
                **FAST)  # fmt: skip
    assert len(res.rows) == 1


def test_the_lock_of_a_killed_sweep_does_not_block(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.argv = ["labelsmooth", "sweep", "--out", {str(tmp_path)!r}]
            from labelsmooth.experiments.rundir import DirectoryLock
            DirectoryLock({str(tmp_path)!r}).acquire()
            print("locked", flush=True)
            time.sleep(600)
        """)],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["sweep", "--dataset", "digits", "--epochs", "1", "--smoothing", "0", "--seeds",
                "1", "--n-bootstrap", "0", "--no-report", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {holder.pid}" in err, err
        assert "labelsmooth sweep --out" in err  # the other sweep's command
    finally:
        holder.kill()
        holder.wait()
    assert main(argv) == 0  # the kernel dropped the dead process's lock


# --------------------------------------------------------------------------------------------
# damaged run files, unwritable output
# --------------------------------------------------------------------------------------------
def test_damaged_run_files_are_named_and_trained_again(tmp_path, monkeypatch, capsys):
    data = make_splits(*_toy(120))
    kw = dict(data=data, seeds=1, smoothing=[0.0, 0.1, 0.2], out=tmp_path, progress=False,
              report=False, **FAST)  # fmt: skip
    first = sweep(**kw)
    runs = tmp_path / "runs"
    (runs / "eps0_seed0.json").write_text("[1, 2, 3]\n")
    (runs / "eps0.1_seed0.json").write_text('{"smoothing": 0.1, "seed": 0, "tes')
    npz = (runs / "eps0.2_seed0.npz").read_bytes()
    (runs / "eps0.2_seed0.npz").write_bytes(npz[: len(npz) // 2])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipping a damaged run file"):
        assert len(sweep_mod.load_runs(str(tmp_path))[0]) == 0
    calls = _counting(monkeypatch)
    res = sweep(**kw)
    assert sorted(calls) == [(0.0, 0), (0.1, 0), (0.2, 0)]
    err = capsys.readouterr().err
    for name in ("eps0_seed0.json", "eps0.1_seed0.json", "eps0.2_seed0.npz"):
        assert f"{name} is damaged" in err, err
    assert "not a run record (got list)" in err and "not valid JSON" in err
    assert "not a readable .npz" in err and "training run eps0.2_seed0 again" in err
    assert res.complete and res.reused == 0
    assert _strip_timings(res.rows) == _strip_timings(first.rows)
    assert len(sweep_mod.load_runs(str(tmp_path))[0]) == 3
    # A run of another configuration is never "repaired" (overwritten), even with bad arrays.
    (runs / "eps0_seed0.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"different configuration \(differs in \['epochs'\]"):
        sweep(**{**kw, "epochs": 3})


def test_a_record_missing_its_metrics_or_arrays_is_damaged(tmp_path):
    rec = {"smoothing": 0.1, "seed": 0, "history": []}
    (tmp_path / "r.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match=r"r.json: an incomplete run record \(KeyError"):
        read_run(str(tmp_path / "r.json"), check=sweep_mod.flatten_run)
    with pytest.raises(ValueError, match=r"r.npz: missing"):
        read_run(str(tmp_path / "r.json"))


def test_an_unwritable_output_directory_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="cannot write to the output directory"):
        sweep(data=_toy(60), out=blocker / "out", progress=False, report=False, **FAST)
    argv = ["sweep", "--dataset", "digits", "--epochs", "1", "--smoothing", "0", "--seeds", "1",
            "--no-report", "--no-progress", "--out", str(blocker / "out")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write to the output directory" in err


def test_a_read_only_output_directory_is_one_line(tmp_path, capsys, monkeypatch):
    if os.geteuid() == 0:  # root writes anywhere: make the write fail as on a read-only mount
        import tempfile

        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "runs"))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        (tmp_path / "ro" / "runs").mkdir(parents=True)
    else:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
    argv = ["sweep", "--dataset", "digits", "--epochs", "1", "--smoothing", "0", "--seeds", "1",
            "--no-report", "--no-progress", "--out", str(tmp_path / "ro")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "--out" in err, err


# --------------------------------------------------------------------------------------------
# data that cannot be trained on
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["nan", "inf", "-inf", "NaN"])
def test_a_non_finite_csv_cell_is_refused_with_its_line_and_column(tmp_path, cell):
    rows = ["a,b,label"] + [f"{i},{i % 3},{i % 2}" for i in range(20)]
    rows[6] = f"5,{cell},1"
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=rf"d.csv, line 7, column 'b': non-finite feature '{cell}'"):
        load_dataset(tmp_path / "d.csv")


def test_non_finite_npz_or_array_features_are_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[7, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    with pytest.raises(ValueError, match=r"d.npz: non-finite feature x\[7, 2\] = nan \(row 7"):
        load_dataset(tmp_path / "d.npz")
    xt = np.zeros((5, 3))
    xt[1, 0] = -np.inf
    with pytest.raises(ValueError, match=r"x_test\[1, 0\] = -inf"):
        make_splits(np.ones((40, 3)), np.arange(40) % 2, x_test=xt, y_test=np.arange(5) % 2)
    with pytest.raises(ValueError, match=r"label nan at row 3"):
        make_splits(np.ones((6, 1)), np.array([0.0, 1.0, 0.0, np.nan, 1.0, 0.0]))


def test_a_truncated_npz_dataset_names_the_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((40, 3)), y=np.arange(40) % 2)
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(raw[:100])
    with pytest.raises(ValueError, match=r"d.npz: not a readable .npz file"):
        load_dataset(tmp_path / "d.npz")


# --------------------------------------------------------------------------------------------
# first run: checks before data, class count, remapped labels
# --------------------------------------------------------------------------------------------
def test_device_and_report_dependencies_are_checked_before_data(tmp_path, monkeypatch, capsys):
    import labelsmooth.experiments as ex

    def no_loading(*a, **k):
        raise AssertionError("data loaded before the checks")

    monkeypatch.setattr(ex, "load_dataset", no_loading)
    monkeypatch.setattr(sweep_mod, "as_splits", no_loading)
    out = str(tmp_path / "o")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            main(["sweep", "--device", "cuda", "--out", out])
        assert e.value.code == 2
        assert "--device 'cuda': CUDA is not available" in capsys.readouterr().err
        with pytest.raises(ValueError, match="CUDA is not available"):
            sweep(data="mnist1d", device="cuda", report=False)
    with pytest.raises(SystemExit):
        main(["sweep", "--device", "gpu0", "--out", out])
    assert "is not a torch device" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["sweep", "--out", out]) == 1
    err = capsys.readouterr().err
    assert "the report needs matplotlib" in err and "--no-report" in err
    with pytest.raises(ImportError, match="report=False"):
        sweep(data="mnist1d", out=out)
    assert not os.path.exists(out)


def test_check_device_rejects_absent_backends():
    assert check_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="not a torch device"):
        check_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            check_device(f"cuda:{torch.cuda.device_count()}")


def _gapped_csv(path):
    rows = ["f1,f2,label"]
    for i in range(60):
        lab = (0, 1, 5)[i % 3]
        rows.append(f"{lab + 0.1 * (i % 7)},{(i * 37) % 11},{lab}")
    path.write_text("\n".join(rows) + "\n")


def test_num_classes_keeps_empty_classes_and_a_remap_is_noted(tmp_path, capsys):
    _gapped_csv(tmp_path / "g.csv")
    base = ["sweep", "--dataset", str(tmp_path / "g.csv"), "--epochs", "1", "--smoothing", "0",
            "0.1", "--seeds", "1", "--n-bootstrap", "0", "--no-report", "--no-progress",
            "--workers", "1"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "labels mapped to class indices 0..2 (0→0, 1→1, 5→2)" in err and "--num-classes" in err
    cfg = json.loads((tmp_path / "a" / "results.json").read_text())["config"]
    assert cfg["num_classes"] == 3 and cfg["label_values"] == [0, 1, 5]

    assert main([*base, "--num-classes", "6", "--out", str(tmp_path / "b")]) == 0
    assert "labels mapped" not in capsys.readouterr().err
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    assert res["config"]["num_classes"] == 6 and res["config"]["label_values"] is None
    npz = np.load(tmp_path / "b" / "runs" / "eps0_seed0.npz")
    assert npz["test_logits"].shape[1] == 6 and set(npz["test_labels"].tolist()) <= {0, 1, 5}

    with pytest.raises(SystemExit):
        main([*base, "--num-classes", "4", "--out", str(tmp_path / "c")])
    assert "num_classes=4 but labels from g.csv go up to 5" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the terminal at the end
# --------------------------------------------------------------------------------------------
def test_the_end_of_a_sweep_prints_the_verdict_the_report_and_what_was_reused(tmp_path, capsys):
    argv = ["sweep", "--dataset", "digits", "--epochs", "2", "--smoothing", "0", "0.1",
            "--seeds", "1", "--n-bootstrap", "10", "--no-progress", "--workers", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(2 trained;" in out and "reused" not in out
    assert str(tmp_path / "report.html") in out
    saved = json.loads((tmp_path / "results.json").read_text())
    claims = saved.get("verdict")
    if not isinstance(claims, list):  # the verdict before it was saved as typed claims
        from labelsmooth.experiments.report import verdict

        claims = verdict(saved["summary"])["claims"]
    status_lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert claims and len(status_lines) >= len(claims)
    for c in claims:  # each claim with its status
        assert any(c["status"] in line for line in status_lines), (c, out)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 reused from an earlier invocation, 0 trained" in out


def test_workers_and_num_classes_from_flags_and_config_files(tmp_path, capsys):
    from labelsmooth.cli import build_parser, resolve_sweep_config

    cfg = resolve_sweep_config(build_parser().parse_args(["sweep"]))
    assert cfg["workers"] is None and cfg["num_classes"] is None  # one per core; from labels
    (tmp_path / "c.toml").write_text("workers = 2\nnum-classes = 6\n")
    cfg = resolve_sweep_config(build_parser().parse_args(["sweep", "--config", str(tmp_path / "c.toml")]))
    assert (cfg["workers"], cfg["num_classes"]) == (2, 6)
    cfg = resolve_sweep_config(
        build_parser().parse_args(["sweep", "--config", str(tmp_path / "c.toml"), "--workers", "1"])
    )
    assert cfg["workers"] == 1 and cfg["sources"]["workers"] == "flag"
    for text, msg in [("workers = 0", "workers must be an integer >= 1"),
                      ("num-classes = 1", "num_classes must be an integer >= 2"),
                      ("workers = true", "workers must be an integer")]:  # fmt: skip
        (tmp_path / "bad.toml").write_text(text + "\n")
        with pytest.raises(ValueError, match=msg):
            resolve_sweep_config(
                build_parser().parse_args(["sweep", "--config", str(tmp_path / "bad.toml")])
            )
    for argv in (["--workers", "0"], ["--num-classes", "1"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["sweep", *argv])
        assert "must be >=" in capsys.readouterr().err
