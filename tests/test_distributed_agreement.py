"""Ranks that disagree: every rank raises the same ValueError, quickly, never a hang or an abort.

Each test spawns ONE gloo group (2 or 3 processes on 127.0.0.1) that runs the whole battery of
cases in turn, for both vocabulary-parallel losses; an error case must leave the group usable for
the next case (all ranks made the same collectives before raising). The parent kills the group
and fails if it has not finished within ``TIMEOUT`` seconds, so a hang fails the test instead of
hanging the suite; a native abort shows as a dead process.

``python tests/test_distributed_agreement.py [--each] [--world 2 3]`` prints, per case, what each
rank did and how long it took; ``--each`` runs every case in its own group under a timeout (so a
hang in one case does not hide the others: how the "before" numbers were taken).
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import socket
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labelsmooth.distributed import (
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

N, K, H = 6, 11, 4
WIDTHS = {2: [7, 4], 3: [5, 2, 4]}
TIMEOUT = 90.0  # seconds for a whole battery (a few s when nothing hangs)
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
FNS = ("ce", "linear")


# --------------------------------------------------------------------------------------------
# The cases: (name, what the odd rank does differently, substrings every rank's error must hold)
# --------------------------------------------------------------------------------------------


def _base(fn: str, rank: int, world: int) -> dict:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, K, generator=g, dtype=torch.float64)
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    W = torch.randn(K, H, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 10, 5, 7, 2])
    widths = WIDTHS[world]
    s0 = sum(widths[:rank])
    sl = slice(s0, s0 + widths[rank])
    kw: dict = dict(label_smoothing=0.1)
    if fn == "ce":
        return dict(args=[x[:, sl].clone().requires_grad_(), y], kw=kw, sl=sl)
    return dict(args=[h.clone().requires_grad_(), W[sl].clone().requires_grad_(), y], kw=kw,
                sl=sl)


def _fewer_rows(c: dict) -> None:
    c["args"][0] = c["args"][0][:-1].detach().clone().requires_grad_(c["args"][0].requires_grad)
    c["args"][-1] = c["args"][-1][:-1]


def _set(**kw):
    def f(c: dict) -> None:
        c["kw"].update(kw)
    return f


def _shard_vector(key: str, value: float):
    def f(c: dict) -> None:
        width = c["sl"].stop - c["sl"].start
        name = "class_weight" if key == "weight" and len(c["args"]) == 3 else key
        c["kw"][name] = torch.full((width,), value, dtype=torch.float64)
    return f


def _target(pos: int, value: int):
    def f(c: dict) -> None:
        y = c["args"][-1].clone()
        y[pos] = value
        c["args"][-1] = y
    return f


def _dtype32(c: dict) -> None:
    c["args"] = [a.detach().float().requires_grad_() if a.is_floating_point() else a
                 for a in c["args"]]


def _no_grad_hidden(c: dict) -> None:
    c["args"][0] = c["args"][0].detach()


def _bad_shape(c: dict) -> None:
    c["args"][-1] = c["args"][-1][:-1]  # the target only


def _shard_mask(c: dict) -> None:
    width = c["sl"].stop - c["sl"].start
    c["kw"]["class_mask"] = torch.ones(width, dtype=torch.bool)


def _rows_arg(fn: str) -> str:
    return "`local_logits`" if fn == "ce" else "`hidden`"


# name, odd-rank change, [expected substrings] (the callable gets fn), only for fn, extra kw
CASES = [
    ("batch", _fewer_rows, lambda fn: [_rows_arg(fn), "rows"], None, {}),
    ("prior_on_one_rank", _shard_vector("prior", 1.0 / K), lambda fn: ["`prior`"], None, {}),
    ("weight_on_one_rank", _shard_vector("weight", 2.0),
     lambda fn: ["`weight`" if fn == "ce" else "`class_weight`"], None, {}),
    ("label_smoothing", _set(label_smoothing=0.2), lambda fn: ["`label_smoothing`", "0.2"],
     None, {}),
    ("ignore_index", _set(ignore_index=3), lambda fn: ["`ignore_index`", "3"], None, {}),
    ("reduction", _set(reduction="sum"), lambda fn: ["`reduction`", "'sum'"], None, {}),
    ("spread", _set(spread="others"), lambda fn: ["`spread`"], None, {}),
    ("weight_mode", _set(weight_mode="target"), lambda fn: ["`weight_mode`"], None, {}),
    ("z_loss", _set(z_loss=1e-3), lambda fn: ["`z_loss`"], None, {}),
    ("softcap", _set(softcap=5.0), lambda fn: ["`softcap`"], None, {}),
    ("dtype", _dtype32, lambda fn: [_rows_arg(fn), "dtype"], None, {}),
    ("validate", _set(validate=False), lambda fn: ["`validate`"], None, {}),
    ("class_mask_on_one_rank", _shard_mask, lambda fn: ["`class_mask`"], None, {}),
    ("num_classes", _set(num_classes=10), lambda fn: ["`num_classes`", "10"], None, {}),
    ("bad_class_mask", _set(class_mask=torch.ones(2, dtype=torch.int64)),
     lambda fn: ["`class_mask`", "rejected"], None, {}),
    ("hidden_requires_grad", _no_grad_hidden, lambda fn: ["`hidden`", "grad"], "linear", {}),
    ("confidence_penalty", _set(confidence_penalty=0.5),
     lambda fn: ["`confidence_penalty`", "0.5"], None, {}),
    ("poly", _set(poly=-1.0), lambda fn: ["`poly`", "-1.0"], None, {}),
    ("focal_gamma", _set(focal_gamma="flsd-53"), lambda fn: ["`focal_gamma`", "'flsd-53'"],
     None, {}),
    ("bad_focal_gamma", _set(focal_gamma=-2.0), lambda fn: ["`focal_gamma`", "rejected"], None,
     {}),
    ("bad_poly_type", _set(poly="1"), lambda fn: ["`poly`", "rejected"], None, {}),
    ("fixed_focal_gamma", _set(focal_gamma=2.0), lambda fn: ["`focal_gamma`"], None,
     dict(fixed=True)),
    ("bad_value", _set(label_smoothing=1.5), lambda fn: ["`label_smoothing`", "rejected"], None,
     {}),
    ("bad_type", _set(label_smoothing="0.1"), lambda fn: ["`label_smoothing`", "rejected"],
     None, {}),
    ("bad_target_shape", _bad_shape, lambda fn: ["`target`", "rejected"], None, {}),
    ("target_out_of_range", _target(2, K), lambda fn: ["`target`", f"[0, {K})"], None, {}),
    ("target_negative", _target(1, -5), lambda fn: ["`target`", f"[0, {K})"], None, {}),
    ("target_differs", _target(0, 1), lambda fn: ["`target`", "checksums"], None, {}),
    # vocab_start/vocab_size given: no exchange; options and targets compared inside the MAX
    ("fixed_class_mask_on_one_rank", _shard_mask, lambda fn: ["`class_mask`"], None,
     dict(fixed=True)),
    ("fixed_label_smoothing", _set(label_smoothing=0.2), lambda fn: ["`label_smoothing`"],
     None, dict(fixed=True)),
    ("fixed_prior_on_one_rank", _shard_vector("prior", 1.0 / K), lambda fn: ["`prior`"], None,
     dict(fixed=True)),
    ("fixed_target_out_of_range", _target(2, K), lambda fn: ["`target`", f"[0, {K})"], None,
     dict(fixed=True)),
    # ... and with validate=True the fingerprint is exchanged there as well (batch sizes too)
    ("fixed_validate_batch", _fewer_rows, lambda fn: [_rows_arg(fn), "rows"], None,
     dict(fixed=True, validate=True)),
]
# the rank named in the message: the odd one (rank world-1), except where the MAX cannot tell
NO_RANK = {"fixed_label_smoothing", "fixed_prior_on_one_rank", "fixed_class_mask_on_one_rank",
           "fixed_focal_gamma"}


def _cases(fns=FNS) -> list[tuple[str, str]]:
    return [(fn, name) for name, _, _, only, _ in CASES for fn in fns if only in (None, fn)]


def _call(fn: str, c: dict):
    if fn == "ce":
        return vocab_parallel_cross_entropy(*c["args"], **c["kw"])
    h, w, y = c["args"]
    return vocab_parallel_linear_cross_entropy(h, w, y, chunk_size=4, **c["kw"])


def _run_case(fn: str, name: str, rank: int, world: int) -> dict:
    spec = next(s for s in CASES if s[0] == name)
    c = _base(fn, rank, world)
    if spec[4].get("fixed"):
        c["kw"].update(vocab_start=c["sl"].start, vocab_size=K)
    if "validate" in spec[4]:
        c["kw"]["validate"] = spec[4]["validate"]
    if rank == world - 1:
        spec[1](c)
    gathers = []
    orig = dist.all_gather

    def counted(*a, **k):
        gathers.append(1)
        return orig(*a, **k)

    dist.all_gather = counted
    t0 = time.perf_counter()
    try:
        loss = _call(fn, c)
        out = dict(error=None, loss=loss.detach())
    except Exception as e:  # noqa: BLE001 - recorded for the parent
        out = dict(error=str(e), types=[t.__name__ for t in type(e).__mro__])
    finally:
        dist.all_gather = orig
    out.update(seconds=time.perf_counter() - t0, all_gathers=len(gathers))
    return out


def _ok_case(fn: str, rank: int, world: int) -> dict:
    """A valid call after all the errors: the group is still in step."""
    c = _base(fn, rank, world)
    loss = _call(fn, c)
    loss.backward()
    return dict(loss=loss.detach())


# --------------------------------------------------------------------------------------------
# Spawning under a timeout
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, cases: list, workdir: str) -> None:
    faulthandler.enable(open(Path(workdir) / f"fault{rank}.txt", "w"))  # noqa: SIM115
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=30))
    dist.barrier()  # connections made: the times below are the cases' own
    results: list = []
    try:
        for fn, name in cases:
            if name == "ok":
                results.append(((fn, name), _ok_case(fn, rank, world)))
            elif name == "__hang__":
                results.append(((fn, name), _hang_case(fn, name, rank, world)))
            else:
                results.append(((fn, name), _run_case(fn, name, rank, world)))
            tmp = Path(workdir) / f"tmp{rank}.pt"  # progress, for a hang report; atomic
            torch.save(results, tmp)
            tmp.replace(Path(workdir) / f"out{rank}.pt")
    except BaseException:
        (Path(workdir) / f"err{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _spawn(world: int, cases: list, timeout: float = TIMEOUT) -> tuple[str, list]:
    """('ok' | 'hang' | 'crash: ...', per-rank results so far) of running ``cases`` on a group."""
    with tempfile.TemporaryDirectory() as d:
        ctx = mp.start_processes(_entry, args=(world, _free_port(), cases, d), nprocs=world,
                                 join=False, start_method=START_METHOD)
        deadline, status = time.monotonic() + timeout, "ok"
        try:
            while not ctx.join(timeout=0.2):
                if time.monotonic() > deadline:
                    status = "hang"
                    for p in ctx.processes:
                        if p.is_alive():
                            p.kill()
                    for p in ctx.processes:
                        p.join()
                    break
        except Exception as e:  # noqa: BLE001 - a rank raised or died (e.g. SIGABRT)
            status = f"crash: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join()
            errs = [f.read_text() for f in sorted(Path(d).glob("err*.txt"))]
            status += "".join(f"\n{t}" for t in errs)
        res = []
        for r in range(world):
            f = Path(d) / f"out{r}.pt"
            res.append(dict(torch.load(f, weights_only=False)) if f.exists() else {})
        return status, res


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def _check(world: int, cases: list, status: str, res: list) -> None:
    assert status == "ok", f"{world} processes: {status}; finished: {list(res[0])}"
    odd = world - 1
    for fn, name in cases:
        outs = [res[r][(fn, name)] for r in range(world)]
        what = f"{world} procs, {fn}, {name}"
        if name == "ok":
            for o in outs[1:]:
                assert torch.equal(o["loss"], outs[0]["loss"]), what
            continue
        spec = next(s for s in CASES if s[0] == name)
        for r, o in enumerate(outs):
            assert o["error"] is not None, f"{what}: rank {r} returned {o.get('loss')}"
            assert "ValueError" in o["types"], f"{what}: rank {r} raised {o['types'][0]}"
            assert o["error"] == outs[0]["error"], f"{what}: rank {r}: {o['error']!r} != " \
                                                   f"rank 0: {outs[0]['error']!r}"
        msg = outs[0]["error"]
        for sub in spec[2](fn):
            assert sub in msg, f"{what}: {sub!r} not in {msg!r}"
        if name not in NO_RANK:
            assert f"rank {odd}" in msg, f"{what}: the odd rank {odd} is not named: {msg!r}"
        if name == "bad_type":
            assert "TypeError" in outs[0]["types"], what
        if spec[4].get("fixed") and "validate" not in spec[4]:
            assert all(o["all_gathers"] == 0 for o in outs), f"{what}: an all_gather was added"


def _reference_loss(fn: str) -> torch.Tensor:
    import labelsmooth as ls
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, K, generator=g, dtype=torch.float64)
    h = torch.randn(N, H, generator=g, dtype=torch.float64)
    W = torch.randn(K, H, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 10, 5, 7, 2])
    return ls.cross_entropy(x if fn == "ce" else h @ W.T, y, label_smoothing=0.1)


@pytest.mark.parametrize("world", [2, 3])
def test_disagreeing_ranks_raise_the_same_error_everywhere(world: int) -> None:
    """Different batch sizes, a prior/weight on one rank only, different options, a bad argument
    or target on one rank, with and without vocab_start/vocab_size: the same ValueError on every
    rank naming the argument (and the odd rank), then a valid call still works (no desync)."""
    cases = _cases() + [(fn, "ok") for fn in FNS]
    status, res = _spawn(world, cases)
    _check(world, cases, status, res)
    for fn in FNS:
        ref = _reference_loss(fn)
        assert abs(float(res[0][(fn, "ok")]["loss"]) - float(ref)) < 1e-12


def test_the_spawn_helper_reports_a_hang() -> None:
    """The timeout works: a group whose ranks enter different collectives is killed, not waited
    for (so the battery above can fail rather than hang)."""
    status, _ = _spawn(2, [("ce", "__hang__")], timeout=5.0)
    assert status == "hang" or status.startswith("crash"), status


def _hang_case(fn: str, name: str, rank: int, world: int) -> dict:  # pragma: no cover
    if rank == 0:
        dist.all_reduce(torch.zeros(3))  # waits for a partner that never comes
    else:
        time.sleep(60)
    return {}


# --------------------------------------------------------------------------------------------
# Report (before/after numbers)
# --------------------------------------------------------------------------------------------


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--each", action="store_true", help="one group per case, 20 s timeout each")
    ap.add_argument("--world", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    for world in args.world:
        batches = [[c] for c in _cases()] if args.each else [_cases()]
        for cases in batches:
            t0 = time.perf_counter()
            status, res = _spawn(world, cases, args.timeout if args.each else TIMEOUT)
            wall = time.perf_counter() - t0
            for fn, name in cases:
                got = []
                for r in range(world):
                    o = res[r].get((fn, name))
                    if o is None:
                        got.append("-")
                    elif o["error"] is None:
                        got.append(f"loss {float(o['loss']):.6f} ({o['seconds']:.2f} s)")
                    else:
                        got.append(f"{o['types'][0]} ({o['seconds']:.2f} s)")
                short = status.splitlines()[0][:60]
                print(f"{world} procs {fn:6s} {name:26s} [{short}, {wall:.1f} s wall] "
                      + " | ".join(got))
                if not args.each and o is not None and o["error"]:
                    print(f"      {o['error'][:300]}")


if __name__ == "__main__":
    _main()
