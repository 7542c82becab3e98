"""Vocabulary-parallel loss on real gloo process groups (127.0.0.1), against one process.

Spawning a group costs ~1.5 s, so each spawn runs a whole battery of cases: the parent builds the
cases (full logits, targets, full class weights and prior), every rank takes its slice, and the
parent compares each rank's loss and gradient slice with the single-process
``labelsmooth.cross_entropy`` on the full logits (the plain-PyTorch reference op, autograd-derived
gradient) and with the dense float64 formula of ``tests/helpers.py``. Inside the workers the
collectives of ``torch.distributed`` are wrapped to count them and their sizes.
"""

from __future__ import annotations

import datetime
import faulthandler
import math
import re
import socket
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import labelsmooth as ls
from helpers import TOL, assert_no_worse_than
from labelsmooth.distributed import (
    copy_to_vocab_parallel,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
    vocab_shard_range,
)

N, D, K, H = 7, 3, 11, 5  # rows, spatial size, global classes, hidden size
WIDTHS = {1: [[K]], 2: [[7, 4], [3, 8]], 3: [[5, 2, 4], [6, 0, 5]]}
# fork: the children inherit the imported modules (a spawned child spends seconds importing torch)
START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


# --------------------------------------------------------------------------------------------
# Spawning
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, job: str, workdir: str) -> None:
    # a hard crash (no Python traceback) still leaves the C-level stack for the parent to show
    crash_log = open(Path(workdir) / f"fault{rank}.txt", "w")  # noqa: SIM115 (lives with the process)
    faulthandler.enable(crash_log)
    torch.set_num_threads(1)  # fork-safe: no OpenMP pool in the child
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        data = torch.load(Path(workdir) / "in.pt", weights_only=False)
        out = JOBS[job](rank, world, data)
        torch.save(out, Path(workdir) / f"out{rank}.pt")
    except BaseException:
        (Path(workdir) / f"err{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


SPAWN_TIMEOUT = 600.0  # seconds for one battery: a hung group fails the test, not the suite


def _spawn(world: int, job: str, data) -> list:
    """Run ``JOBS[job](rank, world, data)`` on ``world`` gloo ranks; return each rank's result.

    The group is killed, and the test fails, if it has not finished within ``SPAWN_TIMEOUT``."""
    with tempfile.TemporaryDirectory() as d:
        torch.save(data, Path(d) / "in.pt")
        try:
            ctx = mp.start_processes(_entry, args=(world, _free_port(), job, d), nprocs=world,
                                     join=False, start_method=START_METHOD)
            deadline = time.monotonic() + SPAWN_TIMEOUT
            while not ctx.join(timeout=0.5):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        if p.is_alive():
                            p.kill()
                        p.join()
                    raise AssertionError(f"{job} on {world} processes: no result after "
                                         f"{SPAWN_TIMEOUT:.0f} s (killed)")
        except AssertionError:
            raise
        except Exception:  # report every rank's traceback, the first failure first
            errs = sorted((f for f in [*Path(d).glob("err*.txt"), *Path(d).glob("fault*.txt")]
                           if f.stat().st_size), key=lambda f: f.stat().st_mtime)
            raise AssertionError("\n".join(f"{f.name}:\n{f.read_text()}" for f in errs)) from None
        return [torch.load(Path(d) / f"out{r}.pt", weights_only=False) for r in range(world)]


class _Counter:
    """Wraps the collectives of torch.distributed and records (name, numel, op) of each call."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter",
             "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "reduce", "gather",
             "scatter")

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        for name in self.NAMES:
            orig = getattr(dist, name)

            def wrapped(*args, _orig=orig, _name=name, **kw):
                t = args[0] if args else next(iter(kw.values()))
                if isinstance(t, list):  # all_gather(list, tensor): count the sent tensor
                    t = args[1] if len(args) > 1 else kw.get("tensor")
                op = kw.get("op", args[1] if _name == "all_reduce" and len(args) > 1 else None)
                self.calls.append((_name, t.numel(), str(op)))
                return _orig(*args, **kw)

            setattr(dist, name, wrapped)

    def take(self) -> list[tuple[str, int, str]]:
        out, self.calls = self.calls, []
        return out


# --------------------------------------------------------------------------------------------
# The battery of cases
# --------------------------------------------------------------------------------------------


def _options() -> list[dict]:
    """Every option of the loss, alone and combined (full-length weight/prior; sliced per rank)."""
    g = torch.Generator().manual_seed(7)
    w = torch.rand(K, generator=g, dtype=torch.float64) * 2 + 0.1
    prior = torch.distributions.Dirichlet(torch.ones(K, dtype=torch.float64)).sample()
    return [
        dict(),
        dict(label_smoothing=0.1),
        dict(label_smoothing=1.0),
        dict(label_smoothing=0.2, spread="others"),
        dict(label_smoothing=0.3, prior=prior),
        dict(label_smoothing=0.1, weight=w),
        dict(label_smoothing=0.1, weight=w, weight_mode="target"),
        dict(label_smoothing=0.2, weight=w, prior=prior),
        dict(label_smoothing=0.2, weight=w, prior=prior, weight_mode="target", z_loss=1e-2),
        dict(label_smoothing=0.1, weight=w, ignore=True),
        dict(label_smoothing=0.1, ignore_index=3, ignore=True),
        dict(label_smoothing=0.1, reduction="sum", ignore=True),
        dict(label_smoothing=0.1, reduction="none", ignore=True),
        dict(label_smoothing=0.1, z_loss=1e-2),
        dict(label_smoothing=0.1, softcap=2.0, scale=4.0),
        dict(label_smoothing=0.3, spread="others", weight=w, ignore=True, z_loss=1e-3,
             softcap=3.0, reduction="none", scale=3.0),
        dict(label_smoothing=0.1, weight=w, weight_mode="target", reduction="sum", softcap=1.5),
        dict(label_smoothing=0.1, shape="spatial", weight=w, ignore=True),
        dict(label_smoothing=0.1, shape="spatial", reduction="none", spread="others"),
        dict(label_smoothing=0.1, shape="vector", weight=w),
        dict(label_smoothing=0.1, ignore=True, all_ignored=True),
    ]


def _make_cases(world: int, dtypes=(torch.float64, torch.float32), impls=("auto",),
                options: list[dict] | None = None) -> list[dict]:
    g = torch.Generator().manual_seed(100 + world)
    cases = []
    for impl in impls:
        for dtype in dtypes:
            for i, opt in enumerate(options if options is not None else _options()):
                opt = dict(opt)
                shape = opt.pop("shape", "rows")
                scale = opt.pop("scale", 2.0)
                ignore = opt.pop("ignore", False)
                all_ignored = opt.pop("all_ignored", False)
                xshape = {"rows": (N, K), "spatial": (N, K, D), "vector": (K,)}[shape]
                x = (torch.randn(xshape, generator=g, dtype=torch.float64) * scale).to(dtype)
                tshape = xshape[:1] + xshape[2:] if len(xshape) > 1 else ()
                y = torch.randint(0, K, tshape, generator=g)
                ii = opt.get("ignore_index", -100)
                if ignore and y.dim() > 0:
                    y.view(-1)[::3] = ii
                if all_ignored:
                    y.fill_(ii)
                for key in ("weight", "prior"):  # bf16 logits: float32 class vectors
                    if key in opt:
                        opt[key] = opt[key].to(torch.float32 if dtype == torch.bfloat16 else dtype)
                red_shape = tshape if opt.get("reduction") == "none" else ()
                grad_out = torch.rand(red_shape, generator=g, dtype=torch.float64).to(dtype) + 0.5
                widths = WIDTHS[world][i % len(WIDTHS[world])]
                cases.append(dict(name=f"{impl}/{dtype}/{i}:{opt.keys()}", x=x, y=y, opt=opt,
                                  impl=impl, grad_out=grad_out, widths=widths,
                                  explicit=(i % 4 == 1)))
    return cases


def _job_parity(rank: int, world: int, cases: list[dict]) -> list[dict]:
    counter = _Counter()
    results = []
    for c in cases:
        widths = c["widths"]
        start = sum(widths[:rank])
        sl = slice(start, start + widths[rank])
        cdim = 1 if c["x"].dim() >= 2 else 0
        x = c["x"].narrow(cdim, sl.start, sl.stop - sl.start).clone().requires_grad_()
        opt = dict(c["opt"])
        for key in ("weight", "prior"):
            if key in opt:
                opt[key] = opt[key][sl]
        if c["explicit"]:
            opt.update(vocab_start=start, vocab_size=sum(widths))
        counter.take()
        loss = vocab_parallel_cross_entropy(x, c["y"], impl=c["impl"], **opt)
        fwd = counter.take()
        loss.backward(c["grad_out"])
        bwd = counter.take()
        results.append(dict(loss=loss.detach(), grad=x.grad, fwd=fwd, bwd=bwd))
    return results


def _single(c: dict) -> tuple[torch.Tensor, torch.Tensor]:
    x = c["x"].clone().requires_grad_()
    loss = ls.cross_entropy(x, c["y"], impl="reference", **c["opt"])
    loss.backward(c["grad_out"])
    return loss.detach(), x.grad


def _dense64(x, y, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
             spread="all", prior=None, weight_mode="torch", z_loss=0.0, softcap=None):
    """The literal formula with a materialised float64 smoothed target (sum_c q_c = 1)."""
    x = x.double()
    x = x.unsqueeze(0) if x.dim() == 1 else x.movedim(1, -1).reshape(-1, K)
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    yf = y.reshape(-1)
    valid = yf != ignore_index
    y0 = torch.where(valid, yf, 0)
    eps, onehot = label_smoothing, torch.nn.functional.one_hot(y0, K).double()
    if spread == "others":
        q = onehot * (1 - eps) + (1 - onehot) * eps / (K - 1)
    else:
        q = onehot * (1 - eps) + eps * (prior.double() if prior is not None else 1.0 / K)
    w = torch.ones(K, dtype=torch.float64) if weight is None else weight.double()
    w_y = w[y0] * valid
    logp = torch.log_softmax(x, -1)
    rows = -(w * q * logp).sum(-1) * valid if weight_mode == "torch" else -(q * logp).sum(-1) * w_y
    rows = rows + z_loss * w_y * torch.logsumexp(x, -1) ** 2
    if reduction == "none":
        return rows.reshape(y.shape)
    return rows.sum() / w_y.sum() if reduction == "mean" else rows.sum()


def _close(ours: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    nan = ref.isnan()
    assert torch.equal(ours.isnan(), nan), f"{what}: NaN pattern differs"
    o, r = ours.double().masked_fill(nan, 0), ref.double().masked_fill(nan, 0)
    err = float((o - r).abs().max()) if o.numel() else 0.0
    if dtype == torch.float64:
        tol = 1e-12 * max(1.0, float(r.abs().max()) if r.numel() else 1.0)
    else:  # relative to the largest entry
        tol = 1e-6 * (float(r.abs().max()) if r.numel() else 1.0)
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"


def _check_low_precision(c: dict, per_rank: list[dict], name: str) -> None:
    """bf16: error vs the float64 truth no larger than the single-process bf16 loss's + TOL."""
    ref_loss, ref_grad = _single(c)
    c64 = dict(c, x=c["x"].double(), grad_out=c["grad_out"].double(),
               opt={k: (v.double() if torch.is_tensor(v) else v) for k, v in c["opt"].items()})
    true_loss, true_grad = _single(c64)
    cdim = 1 if c["x"].dim() >= 2 else 0
    grad = torch.cat([p["grad"] for p in per_rank], cdim)
    assert per_rank[0]["loss"].dtype == torch.bfloat16 and grad.dtype == torch.bfloat16, name
    assert_no_worse_than(per_rank[0]["loss"], ref_loss, true_loss, TOL[torch.bfloat16],
                         f"{name}: loss")
    assert_no_worse_than(grad, ref_grad, true_grad, TOL[torch.bfloat16], f"{name}: grad")


def _check_parity(world: int, cases: list[dict], results: list[list[dict]]) -> None:
    for i, c in enumerate(cases):
        per_rank = [results[r][i] for r in range(world)]
        name = f"world={world} {c['name']} widths={c['widths']}"
        if c["x"].dtype == torch.bfloat16:
            _check_low_precision(c, per_rank, name)
            continue
        ref_loss, ref_grad = _single(c)
        # 1. the same loss, bit for bit, on every rank; equal to the single process
        for r in range(1, world):
            same = torch.equal(per_rank[r]["loss"].nan_to_num(7.0),
                               per_rank[0]["loss"].nan_to_num(7.0))
            assert same, f"{name}: rank {r}'s loss differs from rank 0's"
        _close(per_rank[0]["loss"], ref_loss, c["x"].dtype, f"{name}: loss")
        if c["x"].dtype == torch.float64:  # and the literal float64 formula
            _close(per_rank[0]["loss"], _dense64(c["x"], c["y"], **c["opt"]), torch.float64,
                   f"{name}: dense float64 formula")
        # 2. each rank's gradient is its slice of the single-process gradient
        cdim = 1 if c["x"].dim() >= 2 else 0
        grad = torch.cat([p["grad"] for p in per_rank], cdim)
        _close(grad, ref_grad, c["x"].dtype, f"{name}: grad")
        # 3. collectives: forward ≤ 3 all-reduces of per-row vectors (+ a tiny all_gather of the
        #    widths unless vocab_start/vocab_size were given); backward: none
        rows = c["y"].numel()
        assert 4 * rows + 2 < rows * K  # so the size bound below excludes an (N, K) transfer
        for p in per_rank:
            ar = [n for name_, n, _ in p["fwd"] if name_ == "all_reduce"]
            ag = [n for name_, n, _ in p["fwd"] if name_ == "all_gather"]
            others = [e for e in p["fwd"] if e[0] not in ("all_reduce", "all_gather")]
            assert not others, f"{name}: unexpected collectives {others}"
            if world == 1:
                assert p["fwd"] == [], f"{name}: one rank must not communicate: {p['fwd']}"
                continue
            assert 1 <= len(ar) <= 3, f"{name}: {len(ar)} all-reduces"
            # MAX: the N row maxima; when nothing was exchanged (vocab_start/vocab_size given)
            # and values are checked (CPU), + [v, -v], v = 2 target checksums, 1 range flag and
            # the 17 fingerprint items
            assert ar[0] == rows + (2 * (3 + 17) if c["explicit"] else 0), (
                f"{name}: MAX all-reduce size {ar[0]}, N={rows}")
            assert all(n <= 4 * rows + 2 for n in ar[1:]), (
                f"{name}: all-reduce sizes {ar}, N={rows}")
            # one all_gather of the 24-entry fingerprint (status, width, layout, target summary,
            # 17 items), which carries the shard widths; none when vocab_start and vocab_size
            # are given
            assert ag == ([] if c["explicit"] else [24]), f"{name}: all_gathers {ag}"
            assert p["bwd"] == [], f"{name}: backward communicated {p['bwd']}"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_parity_with_single_process(world: int) -> None:
    """Loss (identical on every rank) and gradient slices equal the single process, every option,
    float64 (≤ 1e-12) and float32 (≤ 1e-6 relative), uneven (and one empty) shards; the fused
    engine and the reference path; counted collectives."""
    impls = ("auto", "reference") if world > 1 else ("auto",)
    cases = _make_cases(world, impls=impls)
    if world == 2:  # low precision: no worse than the single process against float64 truth
        cases += _make_cases(world, dtypes=(torch.bfloat16,), options=_options()[:17:4])
    results = _spawn(world, "parity", cases)
    _check_parity(world, cases, results)


def test_float32_at_a_large_vocabulary() -> None:
    """K = 50021 over 3 uneven shards (one a single class), float32 logits with lse up to ≈ 28:
    the loss within 1e-6 of the single process (relative); the gradient within one float32 ulp of
    lse (1.9e-6 here: a row whose exact lse lies halfway between two float32 values may round the
    other way than in one process, which moves every p_j of that row by that ulp), and both no
    further from the float64 truth than the single process is (plus 1e-6)."""
    kb, rows = 50021, 64
    g = torch.Generator().manual_seed(21)
    w = (torch.rand(kb, generator=g, dtype=torch.float64) + 0.1).float()
    prior = torch.softmax(torch.randn(kb, generator=g, dtype=torch.float64), 0).float()
    cases = []
    for opt in (dict(label_smoothing=0.1), dict(label_smoothing=0.1, weight=w),
                dict(label_smoothing=0.2, prior=prior, weight=w, weight_mode="target", z_loss=1e-3),
                dict(label_smoothing=0.1, spread="others", softcap=20.0, reduction="sum")):
        x = (torch.randn(rows, kb, generator=g, dtype=torch.float64) * 4).float()
        y = torch.randint(0, kb, (rows,), generator=g)
        y[::5] = -100
        cases.append(dict(name=str(sorted(opt)), x=x, y=y, opt=opt, impl="auto",
                          grad_out=torch.ones(()), widths=[20000, 1, 30020], explicit=True))
    res = _spawn(3, "parity", cases)
    for i, c in enumerate(cases):
        x = c["x"].clone().requires_grad_()
        single = ls.cross_entropy(x, c["y"], **c["opt"])
        single.backward()
        x64 = c["x"].double().requires_grad_()
        opt64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in c["opt"].items()}
        truth = ls.cross_entropy(x64, c["y"], impl="reference", **opt64)
        truth.backward()
        loss, grad = res[0][i]["loss"], torch.cat([r[i]["grad"] for r in res], 1)
        cap = c["opt"].get("softcap")
        xc = c["x"].double() if cap is None else cap * torch.tanh(c["x"].double() / cap)
        lse_max = torch.logsumexp(xc, 1).abs().max().float()
        ulp = float(torch.nextafter(lse_max, torch.tensor(float("inf"))) - lse_max)
        assert 4e-7 < ulp < 2e-6  # lse in [8, 32): a rounding of lse is of the order of 1e-6
        for what, ours, one, true, tol in (("loss", loss, single.detach(), truth.detach(), 1e-6),
                                           ("grad", grad, x.grad, x64.grad, ulp)):
            scale = float(true.abs().max())
            err_one = float((ours.double() - one.double()).abs().max()) / scale
            err_true = float((ours.double() - true).abs().max()) / scale
            err_single = float((one.double() - true).abs().max()) / scale
            assert err_one <= tol, f"{c['name']} {what}: {err_one:.2e} from the single process"
            assert err_true <= err_single + 1e-6, f"{c['name']} {what}: {err_true:.2e} vs truth"


# --------------------------------------------------------------------------------------------
# Fused linear variant, DTensor, layout helper, errors raised on every rank
# --------------------------------------------------------------------------------------------


def _linear_cases() -> list[dict]:
    g = torch.Generator().manual_seed(5)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    out = []
    for dtype in (torch.float64, torch.float32):
        for i, opt in enumerate([
            dict(label_smoothing=0.1),
            dict(label_smoothing=0.2, spread="others", class_weight=w, ignore=True, z_loss=1e-2),
            dict(label_smoothing=0.1, softcap=2.0, reduction="none", bias=True),
            dict(label_smoothing=0.1, class_weight=w, weight_mode="target", reduction="sum",
                 bias=True, ignore=True),
        ]):
            opt = dict(opt)
            hid = torch.randn(2, 4, H, generator=g, dtype=torch.float64).to(dtype)  # (B, T, H)
            W = torch.randn(K, H, generator=g, dtype=torch.float64).to(dtype)
            b = torch.randn(K, generator=g, dtype=torch.float64).to(dtype)
            b = b if opt.pop("bias", False) else None
            y = torch.randint(0, K, (2, 4), generator=g)
            if opt.pop("ignore", False):
                y.view(-1)[::3] = -100
            if "class_weight" in opt:
                opt["class_weight"] = opt["class_weight"].to(dtype)
            red_shape = (2, 4) if opt.get("reduction") == "none" else ()
            grad_out = (torch.rand(red_shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
            out.append(dict(h=hid, W=W, b=b, y=y, opt=opt, grad_out=grad_out, chunk=3,
                            impl="reference" if i == 3 else "auto"))
    return out


def _job_misc(rank: int, world: int, data: dict) -> dict:
    out: dict = {}
    # Fused linear: hidden replicated, weight and bias rows sharded; chunks of 3 rows.
    counter = _Counter()
    widths = data["widths"]
    start = sum(widths[:rank])
    sl = slice(start, start + widths[rank])
    lin = []
    for c in data["linear"]:
        h = c["h"].clone().requires_grad_()
        W = c["W"][sl].clone().requires_grad_()
        b = c["b"][sl].clone().requires_grad_() if c["b"] is not None else None
        opt = dict(c["opt"])
        if "class_weight" in opt:
            opt["class_weight"] = opt["class_weight"][sl]
        counter.take()
        loss = vocab_parallel_linear_cross_entropy(h, W, c["y"], b, chunk_size=c["chunk"],
                                                   impl=c["impl"], **opt)
        fwd = counter.take()
        loss.backward(c["grad_out"])
        bwd = counter.take()
        lin.append(dict(loss=loss.detach(), gh=h.grad, gW=W.grad, gb=None if b is None else b.grad,
                        fwd=fwd, bwd=bwd))
    out["linear"] = lin

    # DTensor logits sharded on the class dimension (torch.chunk split: uneven for K=11, 3 ranks).
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    dt = distribute_tensor(data["dx"], mesh, [Shard(1)]).requires_grad_()
    loss = vocab_parallel_cross_entropy(dt, data["dy"], label_smoothing=0.1, z_loss=1e-3)
    loss.backward()
    out["dtensor"] = dict(loss=loss.detach(), grad=dt.grad.full_tensor())
    # ... and a DTensor output projection (rows = classes) for the linear variant
    c = data["linear"][0]
    h = c["h"].clone().requires_grad_()
    wt = distribute_tensor(c["W"], mesh, [Shard(0)]).requires_grad_()
    loss = vocab_parallel_linear_cross_entropy(h, wt, c["y"], **c["opt"])
    loss.backward()
    out["dtensor_linear"] = dict(loss=loss.detach(), gh=h.grad, gW=wt.grad.full_tensor())

    # Layout helper, and a bad argument raises the same error on every rank (no hang).
    out["range"] = vocab_shard_range(widths[rank])
    try:
        vocab_parallel_cross_entropy(torch.zeros(2, widths[rank]), torch.tensor([0, K]))
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    try:  # targets that differ between ranks: checksums ride in the forward's MAX all-reduce
        vocab_parallel_cross_entropy(torch.zeros(3, widths[rank]), torch.tensor([0, 1, rank]))
        out["target_error"] = None
    except ValueError as e:
        out["target_error"] = str(e)
    try:  # prior shards that do not sum to 1 over the ranks: found through the forward's SUM
        vocab_parallel_cross_entropy(torch.zeros(2, widths[rank]), torch.tensor([0, 1]),
                                     label_smoothing=0.1, prior=torch.full((widths[rank],), 0.1))
        out["prior_error"] = None
    except ValueError as e:
        out["prior_error"] = str(e)
    return out


def test_linear_dtensor_and_layout() -> None:
    """Fused linear variant (gradients of hidden, weight shard, bias shard) vs the full
    projection in one process; DTensor input; vocab_shard_range; errors on every rank."""
    world, widths = 3, [4, 5, 2]
    g = torch.Generator().manual_seed(3)
    data = dict(widths=widths, linear=_linear_cases(),
                dx=torch.randn(N, K, generator=g, dtype=torch.float64) * 2,
                dy=torch.randint(0, K, (N,), generator=g))
    res = _spawn(world, "misc", data)

    for i, c in enumerate(data["linear"]):
        h = c["h"].clone().requires_grad_()
        W = c["W"].clone().requires_grad_()
        b = c["b"].clone().requires_grad_() if c["b"] is not None else None
        logits = h @ W.T + (b if b is not None else 0)
        opt = dict(c["opt"])
        cw = opt.pop("class_weight", None)
        ref = ls.cross_entropy(logits.reshape(-1, K), c["y"].reshape(-1), cw, impl="reference",
                               **opt)
        ref = ref.reshape(c["y"].shape) if opt.get("reduction") == "none" else ref
        ref.backward(c["grad_out"])
        name, dtype = f"linear case {i} ({c['impl']}, {h.dtype})", h.dtype
        for r in range(world):
            p = res[r]["linear"][i]
            assert torch.equal(p["loss"], res[0]["linear"][i]["loss"]), name
            _close(p["gh"], h.grad, dtype, f"{name}: grad hidden, rank {r}")
            ar = [n for nm, n, _ in p["fwd"] if nm == "all_reduce"]
            assert len(ar) <= 3 and all(n <= 4 * c["y"].numel() + 2 for n in ar), (name, p["fwd"])
            # the 26-integer fingerprint (7 head entries, 19 items) carries the shard widths
            ag = [n for nm, n, _ in p["fwd"] if nm == "all_gather"]
            assert ag == [26], f"{name}: all_gathers {ag}"
            bwd_ar = [n for nm, n, _ in p["bwd"] if nm == "all_reduce"]
            assert bwd_ar == [h.numel()], f"{name}: backward all-reduces {bwd_ar} (d(hidden) only)"
        _close(res[0]["linear"][i]["loss"], ref.detach(), dtype, f"{name}: loss")
        _close(torch.cat([res[r]["linear"][i]["gW"] for r in range(world)]), W.grad, dtype,
               f"{name}: grad weight")
        if b is not None:
            _close(torch.cat([res[r]["linear"][i]["gb"] for r in range(world)]), b.grad, dtype,
                   f"{name}: grad bias")

    x = data["dx"].clone().requires_grad_()
    ref = ls.cross_entropy(x, data["dy"], label_smoothing=0.1, z_loss=1e-3, impl="reference")
    ref.backward()
    for r in range(world):
        _close(res[r]["dtensor"]["loss"], ref.detach(), torch.float64, f"dtensor loss rank {r}")
        _close(res[r]["dtensor"]["grad"], x.grad, torch.float64, f"dtensor grad rank {r}")

    c = data["linear"][0]
    h, W = c["h"].clone().requires_grad_(), c["W"].clone().requires_grad_()
    ref = ls.cross_entropy((h @ W.T).reshape(-1, K), c["y"].reshape(-1), impl="reference",
                           **c["opt"])
    ref.backward()
    for r in range(world):
        got = res[r]["dtensor_linear"]
        _close(got["loss"], ref.detach(), torch.float64, f"dtensor linear loss rank {r}")
        _close(got["gh"], h.grad, torch.float64, f"dtensor linear grad hidden rank {r}")
        _close(got["gW"], W.grad, torch.float64, f"dtensor linear grad weight rank {r}")

    assert [res[r]["range"] for r in range(world)] == [(0, K), (4, K), (9, K)]
    for r in range(world):
        err = res[r]["error"]
        assert err is not None and "`target`" in err and str(K) in err, err
        assert res[r]["prior_error"] is not None and "summing to 1.1" in res[r]["prior_error"]
        assert f"a prior of {K} entries" in res[r]["prior_error"], res[r]["prior_error"]
        assert res[r]["target_error"] is not None and "every rank" in res[r]["target_error"]
        # the message names the odd rank and carries the values (checksums), the same on all
        assert re.search(r"but rank \d's has checksums \(\d+, \d+\) where rank \d's has "
                         r"checksums \(\d+, \d+\)", res[r]["target_error"]), res[r]["target_error"]
        assert res[r]["target_error"] == res[0]["target_error"]


# --------------------------------------------------------------------------------------------
# DDP training step
# --------------------------------------------------------------------------------------------


def _model(g: torch.Generator) -> dict:
    return dict(W1=torch.randn(H, 4, generator=g, dtype=torch.float64) * 0.5,
                b1=torch.randn(H, generator=g, dtype=torch.float64) * 0.1,
                W2=torch.randn(K, H, generator=g, dtype=torch.float64) * 0.5,
                b2=torch.randn(K, generator=g, dtype=torch.float64) * 0.1)


LOSS_KW = dict(label_smoothing=0.1, spread="others", z_loss=1e-3)
LR = 0.5


def _job_ddp(rank: int, world: int, data: dict) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    tp = dist.new_group(list(range(world)))  # the vocabulary is sharded over its own group
    widths = data["widths"]
    start = sum(widths[:rank])
    sl = slice(start, start + widths[rank])
    out = {}
    for variant in ("logits", "linear"):
        m = data["model"]
        trunk = torch.nn.Linear(4, H, dtype=torch.float64)
        with torch.no_grad():
            trunk.weight.copy_(m["W1"])
            trunk.bias.copy_(m["b1"])
        trunk = DDP(trunk)
        W2 = torch.nn.Parameter(m["W2"][sl].clone())
        b2 = torch.nn.Parameter(m["b2"][sl].clone())
        params = list(trunk.parameters()) + [W2, b2]
        opt = torch.optim.SGD(params, lr=LR)
        h = torch.tanh(trunk(data["x"]))
        if variant == "logits":
            logits = copy_to_vocab_parallel(h, tp) @ W2.T + b2
            loss = vocab_parallel_cross_entropy(logits, data["y"], group=tp, **LOSS_KW)
        else:
            loss = vocab_parallel_linear_cross_entropy(h, W2, data["y"], b2, group=tp, **LOSS_KW)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out[variant] = dict(loss=loss.detach(), W1=trunk.module.weight.detach().clone(),
                            b1=trunk.module.bias.detach().clone(), W2=W2.detach(), b2=b2.detach())
    return out


def test_ddp_training_step_matches_single_process() -> None:
    """A DDP-wrapped trunk with a vocabulary-sharded head on 2 processes takes the same SGD step
    as one process with the full head (logits variant and fused linear variant)."""
    g = torch.Generator().manual_seed(11)
    data = dict(model=_model(g), x=torch.randn(N, 4, generator=g, dtype=torch.float64),
                y=torch.randint(0, K, (N,), generator=g), widths=[6, 5])
    res = _spawn(2, "ddp", data)

    p = {k: v.clone().requires_grad_() for k, v in data["model"].items()}
    h = torch.tanh(data["x"] @ p["W1"].T + p["b1"])
    loss = ls.cross_entropy(h @ p["W2"].T + p["b2"], data["y"], impl="reference", **LOSS_KW)
    loss.backward()
    new = {k: (v - LR * v.grad).detach() for k, v in p.items()}
    for variant in ("logits", "linear"):
        for r, sl in enumerate((slice(0, 6), slice(6, 11))):
            got = res[r][variant]
            _close(got["loss"], loss.detach(), torch.float64, f"{variant} loss rank {r}")
            assert float((got["W1"] - p["W1"].detach()).abs().max()) > 1e-3  # the step did move
            for k in ("W1", "b1"):
                _close(got[k], new[k], torch.float64, f"{variant} {k} rank {r}")
            for k in ("W2", "b2"):
                _close(got[k], new[k][sl], torch.float64, f"{variant} {k} rank {r}")


class _Head(torch.nn.Module):
    """This rank's rows of the output layer; the loss is computed inside forward, where FSDP has
    gathered the (data-parallel) parameter shards into plain tensors."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, tp, variant: str) -> None:
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
        self.tp, self.variant = tp, variant

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.variant == "linear":
            return vocab_parallel_linear_cross_entropy(h, self.weight, y, self.bias, group=self.tp,
                                                       **LOSS_KW)
        logits = copy_to_vocab_parallel(h, self.tp) @ self.weight.T + self.bias
        return vocab_parallel_cross_entropy(logits, y, group=self.tp, **LOSS_KW)


def _job_mesh2d(rank: int, world: int, data: dict) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    dp, tp = mesh.get_local_rank("dp"), mesh.get_local_rank("tp")
    widths = data["widths"]
    sl = slice(sum(widths[:tp]), sum(widths[:tp + 1]))
    half = data["x"].shape[0] // 2
    x, y = data["x"][dp * half:(dp + 1) * half], data["y"][dp * half:(dp + 1) * half]
    out = {"dp": dp, "tp": tp}
    for wrap, variant in (("ddp", "logits"), ("fsdp", "linear")):
        m = data["model"]
        trunk = torch.nn.Linear(4, H, dtype=torch.float64)
        with torch.no_grad():
            trunk.weight.copy_(m["W1"])
            trunk.bias.copy_(m["b1"])
        head = _Head(m["W2"][sl], m["b2"][sl], mesh.get_group("tp"), variant)
        if wrap == "ddp":  # data parallel over "dp"; vocabulary sharded over "tp"
            trunk = DDP(trunk, process_group=mesh.get_group("dp"))
            head = DDP(head, process_group=mesh.get_group("dp"))
        else:
            fully_shard(trunk, mesh=mesh["dp"])
            fully_shard(head, mesh=mesh["dp"])
        opt = torch.optim.SGD([*trunk.parameters(), *head.parameters()], lr=LR)
        loss = head(torch.tanh(trunk(x)), y)
        loss.backward()
        opt.step()
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in
                [*trunk.parameters(), *head.parameters()]]
        out[wrap] = dict(loss=loss.detach(), params=[t.detach().clone() for t in full])
    return out


def test_ddp_and_fsdp_on_a_2x2_mesh() -> None:
    """4 processes: data parallel (DDP, then FSDP2) over one mesh dimension, the vocabulary
    sharded over the other. One SGD step equals the single-process step on the whole batch."""
    g = torch.Generator().manual_seed(12)
    data = dict(model=_model(g), x=torch.randn(8, 4, generator=g, dtype=torch.float64),
                y=torch.randint(0, K, (8,), generator=g), widths=[6, 5])
    res = _spawn(4, "mesh2d", data)

    p = {k: v.clone().requires_grad_() for k, v in data["model"].items()}
    h = torch.tanh(data["x"] @ p["W1"].T + p["b1"])
    loss = ls.cross_entropy(h @ p["W2"].T + p["b2"], data["y"], impl="reference", **LOSS_KW)
    loss.backward()
    new = {k: (v - LR * v.grad).detach() for k, v in p.items()}
    for r in res:
        sl = slice(0, 6) if r["tp"] == 0 else slice(6, 11)
        want = [new["W1"], new["b1"], new["W2"][sl], new["b2"][sl]]
        for wrap in ("ddp", "fsdp"):
            for k, got, exp in zip(("W1", "b1", "W2", "b2"), r[wrap]["params"], want):
                _close(got, exp, torch.float64, f"{wrap} {k} dp={r['dp']} tp={r['tp']}")


def _job_masked(rank: int, world: int, data: dict) -> list:
    """Each rank's loss and gradient slice, for every impl, of logits with ±inf entries."""
    start = sum(data["widths"][:rank])
    out = []
    for impl in ("auto", "reference"):
        x = data["x"][:, start:start + data["widths"][rank]].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(x, data["y"], impl=impl, reduction="none",
                                            **data["opt"])
        (g,) = torch.autograd.grad(loss.sum(), x)
        out.append({"loss": loss.detach(), "grad": g})
    return out


def _job_masked_many(rank: int, world: int, cases: list) -> list:
    return [_job_masked(rank, world, c) for c in cases]


def _job_triton(rank: int, world: int, data: dict) -> dict:
    """The parity battery and the fused linear variant with impl="triton" (interpreter)."""
    start = sum(data["widths"][:rank])
    sl = slice(start, start + data["widths"][rank])
    lin = []
    for c in data["linear"]:
        h = c["h"].clone().requires_grad_()
        W = c["W"][sl].clone().requires_grad_()
        b = c["b"][sl].clone().requires_grad_() if c["b"] is not None else None
        opt = dict(c["opt"])
        if "class_weight" in opt:
            opt["class_weight"] = opt["class_weight"][sl]
        loss = vocab_parallel_linear_cross_entropy(h, W, c["y"], b, chunk_size=c["chunk"],
                                                   impl="triton", **opt)
        loss.backward(c["grad_out"])
        lin.append(dict(loss=loss.detach(), gh=h.grad, gW=W.grad,
                        gb=None if b is None else b.grad))
    return dict(parity=_job_parity(rank, world, data["cases"]), linear=lin)


JOBS = {"parity": _job_parity, "misc": _job_misc, "ddp": _job_ddp, "mesh2d": _job_mesh2d,
        "masked": _job_masked, "masked_many": _job_masked_many, "triton": _job_triton}


# --------------------------------------------------------------------------------------------
# Without a process group (no spawn)
# --------------------------------------------------------------------------------------------


def test_single_process_without_init_equals_cross_entropy() -> None:
    """Without torch.distributed initialised the loss is the plain loss (hand-checked values)."""
    x = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    loss = vocab_parallel_cross_entropy(x, y, label_smoothing=0.3)
    lse = torch.logsumexp(x.detach(), 1)[0]
    q = torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64)  # (1-ε) + ε/3 on the target
    assert abs(float(loss.detach()) - float((q * (lse - x.detach()[0])).sum())) < 1e-14
    loss.backward()
    p = torch.softmax(x.detach(), 1)[0]
    assert torch.allclose(x.grad[0], p - q, atol=1e-14, rtol=0)


def test_argument_errors() -> None:
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="`impl`"):
        vocab_parallel_cross_entropy(x, y, impl="cuda")
    with pytest.raises(ValueError, match="`weight`"):
        vocab_parallel_cross_entropy(x, y, weight=torch.ones(5))
    with pytest.raises(ValueError, match="`prior`"):
        vocab_parallel_cross_entropy(x, y, label_smoothing=0.1, prior=torch.full((4,), 0.3))
    with pytest.raises(ValueError, match="`prior`"):
        vocab_parallel_cross_entropy(x, y, label_smoothing=0.1, spread="others",
                                     prior=torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="`target`"):
        vocab_parallel_cross_entropy(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`target`"):
        vocab_parallel_cross_entropy(x, torch.tensor([0, 1, 4]))
    with pytest.raises(TypeError, match="`target`"):
        vocab_parallel_cross_entropy(x, y.float())
    with pytest.raises(ValueError, match="`vocab_start`"):
        vocab_parallel_cross_entropy(x, y, vocab_start=2, vocab_size=5)
    with pytest.raises(ValueError, match="`group`"):
        vocab_parallel_cross_entropy(x, y, group=object())
    with pytest.raises(ValueError, match="`chunk_size`"):
        vocab_parallel_linear_cross_entropy(torch.randn(3, 2), torch.randn(4, 2), y, chunk_size=0)
    with pytest.raises(ValueError, match="`memory_budget`"):
        vocab_parallel_linear_cross_entropy(torch.randn(3, 2), torch.randn(4, 2), y,
                                            memory_budget=-1)
    with pytest.raises(ValueError, match="`local_weight`"):
        vocab_parallel_linear_cross_entropy(torch.randn(3, 2), torch.randn(4, 3), y)


def test_triton_on_two_gloo_ranks_under_the_interpreter() -> None:
    """impl="triton" serves the vocabulary-parallel loss through the two-stage contract
    (row_partials / grad_rows kernels), here under TRITON_INTERPRET=1 on CPU tensors: 2 gloo ranks
    with uneven shards, float32, the same checks as the fused engine (loss identical on both ranks
    and equal to the single process, gradient slices, collectives), and the fused linear variant
    (gradients of hidden, weight shard and bias shard against the full projection)."""
    pytest.importorskip("triton")
    from labelsmooth.ops import triton_ce

    if not triton_ce.is_available(torch.device("cpu")):
        pytest.skip("Triton interpreter not enabled")
    world = 2
    options = [o for i, o in enumerate(_options()) if i in (1, 4, 7, 8, 11, 14, 15, 17, 20)]
    cases = _make_cases(world, dtypes=(torch.float32,), impls=("triton",), options=options)
    linear = [c for c in _linear_cases() if c["h"].dtype == torch.float32]
    widths = [7, 4]
    res = _spawn(world, "triton", dict(cases=cases, linear=linear, widths=widths))
    _check_parity(world, cases, [r["parity"] for r in res])
    for i, c in enumerate(linear):
        h = c["h"].clone().requires_grad_()
        W = c["W"].clone().requires_grad_()
        b = c["b"].clone().requires_grad_() if c["b"] is not None else None
        opt = dict(c["opt"])
        cw = opt.pop("class_weight", None)
        logits = (h @ W.T + (b if b is not None else 0)).reshape(-1, K)
        ref = ls.cross_entropy(logits, c["y"].reshape(-1), cw, impl="reference", **opt)
        if ref.dim():
            ref = ref.reshape(c["y"].shape)
        ref.backward(c["grad_out"])
        tol = dict(rtol=1e-5, atol=1e-6)
        for r in range(world):
            torch.testing.assert_close(res[r]["linear"][i]["loss"], ref.detach(), **tol)
            torch.testing.assert_close(res[r]["linear"][i]["gh"], h.grad, **tol)
        # rank 0 holds classes 0..6, rank 1 classes 7..10
        torch.testing.assert_close(torch.cat([res[r]["linear"][i]["gW"] for r in range(world)]),
                                   W.grad, **tol)
        if b is not None:
            torch.testing.assert_close(torch.cat([res[r]["linear"][i]["gb"] for r in range(world)]),
                                       b.grad, **tol)


def test_auto_runs_the_fused_engine_per_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """impl="auto" computes the shard statistics and gradient with labelsmooth.ops.fused's
    primitives (the linear variant once per chunk)."""
    from labelsmooth.ops import fused

    calls: list[str] = []
    for name in ("row_partials", "grad_rows"):
        orig = getattr(fused, name)
        def spy(*a, _o=orig, _n=name, **k):
            calls.append(_n)
            return _o(*a, **k)

        monkeypatch.setattr(fused, name, spy)
    x = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 1])
    vocab_parallel_cross_entropy(x, y, label_smoothing=0.1).backward()
    assert calls == ["row_partials", "grad_rows"]
    calls.clear()
    h, w = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    vocab_parallel_linear_cross_entropy(h, w, y, label_smoothing=0.1, chunk_size=2).backward()
    assert calls == ["row_partials"] * 3 + ["grad_rows"] * 3
    calls.clear()  # 4 float32 logits = 16 bytes a row: a 50-byte budget holds 3 rows
    vocab_parallel_linear_cross_entropy(h, w, y, label_smoothing=0.1, memory_budget=50).backward()
    assert calls == ["row_partials"] * 2 + ["grad_rows"] * 2


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_gradcheck_float64(impl: str) -> None:
    """The hand-written backward (no process group: one shard) passes gradcheck, every term on."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, -100, 2])
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    prior = torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0)
    kw = dict(label_smoothing=0.2, weight=w, prior=prior, z_loss=0.01, softcap=3.0, impl=impl)
    assert torch.autograd.gradcheck(lambda t: vocab_parallel_cross_entropy(t, y, **kw), (x,))
    h = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    kw = dict(label_smoothing=0.1, spread="others", class_weight=w, weight_mode="target",
              reduction="none", z_loss=0.01, chunk_size=3, impl=impl)
    assert torch.autograd.gradcheck(
        lambda a, c, d: vocab_parallel_linear_cross_entropy(a, c, y, d, **kw), (h, W, b))


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_prior_without_smoothing_and_minus_inf_logits(impl: str) -> None:
    """ε = 0 with a prior adds no smoothing term: a −inf (masked) logit leaves loss and gradient
    finite and equal to PyTorch's unsmoothed loss (0·(−inf) used to make them NaN)."""
    x = torch.tensor([[1.0, 2.0, 0.5, -math.inf], [0.0, -1.0, 3.0, -math.inf]],
                     dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 2])
    prior = torch.full((4,), 0.25, dtype=torch.float64)
    loss = vocab_parallel_cross_entropy(x, y, prior=prior, label_smoothing=0.0, impl=impl)
    (g,) = torch.autograd.grad(loss, x)
    ref = torch.nn.functional.cross_entropy(x, y)
    (g_ref,) = torch.autograd.grad(ref, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    assert torch.allclose(loss, ref, atol=1e-12, rtol=0)
    assert torch.allclose(g, g_ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_target_on_another_shard_with_minus_inf_first_column(impl: str) -> None:
    """A row whose target lives on another shard reads column 0 as a placeholder: a −inf there
    must not leak into the target logit (the reference path used to multiply it by 0 → NaN)."""
    x = torch.tensor([[-math.inf, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([4])  # global vocabulary of 5; this (only) rank holds classes 0..2
    loss = vocab_parallel_cross_entropy(x, y, vocab_start=0, vocab_size=5, impl=impl,
                                        reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    # No rank holds x_y here, so the loss is the local lse and the gradient the local softmax.
    lse = math.log(math.exp(1.0) + math.exp(2.0))
    assert abs(float(loss.detach()[0]) - lse) < 1e-12
    assert torch.allclose(g, torch.softmax(x.detach(), 1), atol=1e-12, rtol=0)


def test_prior_errors_show_the_value() -> None:
    """A bad prior shard is reported by its values (shape, first bad entry), never the whole
    vector nor a fixed description."""
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"`prior`.*but got 'a tensor of shape \(4,\)'"):
        vocab_parallel_cross_entropy(x, y, label_smoothing=0.1, spread="others",
                                     prior=torch.full((4,), 0.25))
    with pytest.raises(ValueError, match=r"`prior`.*entry 2 of this rank's 4 is not\), but got -0\.5"):
        vocab_parallel_cross_entropy(x, y, label_smoothing=0.1,
                                     prior=torch.tensor([0.5, 0.5, -0.5, 0.5]))


def test_prior_sum_tolerance_is_the_single_process_rule() -> None:
    """A float16 prior of thirds sums to 0.99976: accepted by cross_entropy (slack K·eps of the
    dtype), so accepted by the vocabulary-parallel loss too; a clearly wrong sum still fails."""
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    prior = torch.full((3,), 1 / 3, dtype=torch.float16)
    assert abs(float(prior.double().sum()) - 1) > 1e-4  # beyond the old fixed tolerance
    ref = ls.cross_entropy(x, y, prior=prior, label_smoothing=0.1)
    assert torch.allclose(vocab_parallel_cross_entropy(x, y, prior=prior, label_smoothing=0.1),
                          ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="`prior`.*summing to 0.99"):
        vocab_parallel_cross_entropy(x, y, prior=torch.full((3,), 0.33), label_smoothing=0.1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_low_precision_weight_gradient_is_summed_in_float32(dtype: torch.dtype) -> None:
    """The weight-shard gradient sums one-token chunk products in float32 without rounding each
    to half precision first: with equal logits and balanced targets the large common part of the
    hidden states cancels, and dW must be the float64 truth rounded once (per-chunk rounding was
    off by ≥ 8 ulps of the dtype)."""
    n, hd, v = 256, 4, 8
    g = torch.Generator().manual_seed(0)
    h = (64 + torch.randn(n, hd, generator=g)).to(dtype)
    y = torch.arange(n) % v
    w = torch.zeros(v, hd, dtype=dtype, requires_grad=True)
    b = torch.zeros(v, dtype=dtype, requires_grad=True)
    w64 = torch.zeros(v, hd, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.cross_entropy(h.double() @ w64.T, y, reduction="sum").backward()
    vocab_parallel_linear_cross_entropy(h, w, y, b, reduction="sum", chunk_size=1).backward()
    err = (w.grad.double() - w64.grad).abs().max()
    assert err <= torch.finfo(dtype).eps * w64.grad.abs().max(), err
    assert torch.equal(b.grad, torch.zeros_like(b))  # Σ_n (1/8 − e_y) = 0 exactly


@pytest.mark.parametrize("kw, err", [
    ({"chunk_size": 0}, ValueError), ({"memory_budget": -1}, ValueError),
    ({"chunk_size": 1.5}, TypeError), ({"chunk_size": True}, TypeError),
    ({"memory_budget": "64MiB"}, TypeError),
])
def test_chunk_arguments_fail_like_linear_cross_entropy(kw: dict, err: type) -> None:
    """One chunk-argument rule for both fused-linear losses: TypeError for a wrong type,
    ValueError for a bad value, the argument named."""
    h, w, y = torch.randn(3, 2), torch.randn(4, 2), torch.tensor([0, 1, 2])
    name = next(iter(kw))
    with pytest.raises(err, match=f"`{name}`"):
        vocab_parallel_linear_cross_entropy(h, w, y, **kw)
    with pytest.raises(err, match=f"`{name}`"):
        ls.linear_cross_entropy(h, w, y, **kw)


def test_masked_vocabulary_shards_across_ranks() -> None:
    """Shares whose maximum is ±inf merge across ranks as in one process: a rank whose whole
    shard is −inf (padded vocabulary) adds exactly nothing, a +inf logit makes the row NaN (as
    torch's log_softmax). Loss and gradient slices equal cross_entropy on the concatenated
    logits (NaN where it is)."""
    widths = [3, 2, 3]
    x = torch.tensor([[1.0, 2.0, 0.5, -math.inf, -math.inf, 0.0, -1.0, 3.0],
                      [0.5, -2.0, 1.0, -math.inf, -math.inf, 2.0, 0.0, 1.0],
                      [0.5, -2.0, 1.0, -math.inf, math.inf, 2.0, 0.0, 1.0]],
                     dtype=torch.float64)
    y = torch.tensor([7, 0, 2])
    opt = {"label_smoothing": 0.0, "z_loss": 1e-2}
    res = _spawn(3, "masked", {"x": x, "y": y, "widths": widths, "opt": opt})
    xr = x.clone().requires_grad_()
    ref = ls.cross_entropy(xr, y, reduction="none", impl="reference", **opt)
    (g_ref,) = torch.autograd.grad(ref[:2].sum(), xr)
    assert torch.isfinite(ref[:2]).all() and torch.isnan(ref[2])
    for r in range(3):
        for i, impl in enumerate(("auto", "reference")):
            got = res[r][i]
            assert torch.allclose(got["loss"][:2], ref[:2].detach(), atol=1e-12, rtol=0), impl
            assert torch.isnan(got["loss"][2]), (impl, got["loss"])
            sl = slice(sum(widths[:r]), sum(widths[:r + 1]))
            # rows 0 and 1 only: row 2's gradient is 0·inf-ridden in every implementation
            assert torch.allclose(got["grad"][:2], g_ref[:2, sl], atol=1e-12, rtol=0), (impl, r)


@pytest.mark.parametrize("world", [2, 3])
def test_large_logit_offsets_across_ranks(world: int) -> None:
    """float32 logits + 1e2/1e4/1e6 and confident rows, sharded: loss and gradient slices no worse
    than torch's on the full logits (plus 1e-6), against float64; before the row statistics were
    taken relative to the row max the loss was off by 1.6e-5 at 1e4 and 5e-3 at 1e6."""
    widths = {2: [6, 4], 3: [3, 0, 7]}[world]
    k = sum(widths)
    y = torch.randint(0, k, (8,))
    cases = []
    for offset in (1e2, 1e4, 1e6):
        for opt in ({"label_smoothing": 0.0}, {"label_smoothing": 0.1}):
            cases.append({"x": torch.randn(8, k) + offset, "y": y, "widths": widths, "opt": opt})
    xc = torch.randn(8, k)
    xc[torch.arange(8), y] = xc.amax(1) + 20  # confident rows
    cases.append({"x": xc, "y": y, "widths": widths, "opt": {"label_smoothing": 0.1}})
    res = _spawn(world, "masked_many", cases)
    for ci, c in enumerate(cases):
        x = c["x"]
        truth_l = torch.nn.functional.cross_entropy(x.double(), y, reduction="none", **c["opt"])
        xr = x.double().requires_grad_()
        (truth_g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(
            xr, y, reduction="none", **c["opt"]).sum(), xr)
        xp = x.clone().requires_grad_()
        peer_l = torch.nn.functional.cross_entropy(xp, y, reduction="none", **c["opt"])
        (peer_g,) = torch.autograd.grad(peer_l.sum(), xp)
        for r in range(world):
            sl = slice(sum(widths[:r]), sum(widths[:r + 1]))
            for i, impl in enumerate(("auto", "reference")):
                got = res[r][ci][i]
                what = f"case {ci} rank {r} {impl}"
                assert_no_worse_than(got["loss"], peer_l, truth_l, 1e-6, f"loss {what}")
                assert_no_worse_than(got["grad"], peer_g[:, sl], truth_g[:, sl], 1e-6,
                                     f"grad {what}")


# --------------------------------------------------------------------------------------------
# Padded and masked vocabularies (num_classes= global V, class_mask= this rank's shard)
# --------------------------------------------------------------------------------------------


def _job_vocab_mask(rank: int, world: int, data: dict) -> list:
    """Each case: loss and gradient slices of both losses (logits, linear), both engines."""
    widths = data["widths"]
    sl = slice(sum(widths[:rank]), sum(widths[:rank + 1]))
    out = []
    for case in data["cases"]:
        opt = dict(case["opt"])
        for name in ("weight", "prior", "class_mask"):
            if name in opt:
                opt[name] = opt[name][sl]
        res = {}
        for impl in ("auto", "reference"):
            x = case["x"][:, sl].clone().requires_grad_()
            loss = vocab_parallel_cross_entropy(x, case["y"], impl=impl, **opt)
            (g,) = torch.autograd.grad(loss, x, case["g"])
            res[impl] = (loss.detach(), g)
            h = case["h"].clone().requires_grad_()
            w = case["w"][sl].clone().requires_grad_()
            b = case["b"][sl].clone().requires_grad_()
            lopt = {("class_weight" if k == "weight" else k): v for k, v in opt.items()}
            loss = vocab_parallel_linear_cross_entropy(h, w, case["y"], b, impl=impl,
                                                       chunk_size=3, **lopt)
            res["linear-" + impl] = (loss.detach(), *torch.autograd.grad(loss, (h, w, b),
                                                                         case["g"]))
        out.append(res)
    return out


JOBS["vocab_mask"] = _job_vocab_mask


def test_padded_and_masked_vocabulary_across_ranks() -> None:
    """num_classes (global V) and class_mask shards on 2 gloo ranks: loss and gradient slices
    equal the single-process cross_entropy with the same options (itself equal to the dense loss
    on the valid sub-vocabulary); padded/masked columns and projection rows get exactly 0, and
    garbage (±inf, NaN) in masked logits is harmless."""
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    prior = torch.rand(K, generator=g, dtype=torch.float64)
    prior = prior / prior.sum()
    opts = [
        dict(label_smoothing=0.1, num_classes=9),
        dict(label_smoothing=0.2, spread="others", class_mask=mask, weight=w, z_loss=1e-2),
        dict(label_smoothing=0.3, class_mask=mask, prior=prior, weight=w, weight_mode="target",
             reduction="sum"),
        dict(label_smoothing=0.1, num_classes=10, class_mask=mask, softcap=2.0),
    ]
    cases = []
    for opt in opts:
        valid = mask.clone() if "class_mask" in opt else torch.ones(K, dtype=torch.bool)
        if "num_classes" in opt:
            valid[opt["num_classes"]:] = False
        keep = valid.nonzero()[:, 0]
        y = keep[torch.randint(0, keep.numel(), (N,), generator=g)]
        y[3] = -100
        x = torch.randn(N, K, generator=g, dtype=torch.float64) * 2
        xg = x.clone()
        junk = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
        for i, c in enumerate((~valid).nonzero()[:, 0].tolist()):
            xg[:, c] = junk[i % 3]
        cases.append(dict(x=xg, x_clean=x, y=y, opt=opt, valid=valid,
                          g=torch.tensor(1.3, dtype=torch.float64) if opt.get("reduction") else
                          torch.tensor(0.7, dtype=torch.float64),
                          h=torch.randn(N, H, generator=g, dtype=torch.float64),
                          w=torch.randn(K, H, generator=g, dtype=torch.float64),
                          b=torch.randn(K, generator=g, dtype=torch.float64)))
    res = _spawn(2, "vocab_mask", {"widths": [7, 4], "cases": cases})
    for ci, case in enumerate(cases):
        opt, valid = case["opt"], case["valid"]
        xr = case["x"].clone().requires_grad_()
        ref = ls.cross_entropy(xr, case["y"], impl="reference", **opt)
        (g_ref,) = torch.autograd.grad(ref, xr, case["g"])
        lin = [t.clone().requires_grad_() for t in (case["h"], case["w"], case["b"])]
        lref = ls.cross_entropy(lin[0] @ lin[1].T + lin[2], case["y"], impl="reference", **opt)
        lg = torch.autograd.grad(lref, lin, case["g"])
        for r, sl in enumerate((slice(0, 7), slice(7, 11))):
            for impl in ("auto", "reference"):
                what = f"case {ci} rank {r} {impl}"
                loss, grad = res[r][ci][impl]
                torch.testing.assert_close(loss, ref.detach(), msg=what)
                torch.testing.assert_close(grad, g_ref[:, sl], msg=what)
                assert torch.equal(grad[:, ~valid[sl]], torch.zeros_like(grad[:, ~valid[sl]]))
                loss, dh, dw, db = res[r][ci]["linear-" + impl]
                torch.testing.assert_close(loss, lref.detach(), msg="linear " + what)
                torch.testing.assert_close(dh, lg[0], msg="linear " + what)
                torch.testing.assert_close(dw, lg[1][sl], msg="linear " + what)
                torch.testing.assert_close(db, lg[2][sl], msg="linear " + what)
                assert torch.equal(dw[~valid[sl]], torch.zeros_like(dw[~valid[sl]]))
                assert torch.equal(db[~valid[sl]], torch.zeros_like(db[~valid[sl]]))


def test_masked_vocabulary_single_process_and_errors() -> None:
    """Without a process group the masked loss is cross_entropy's; bad options raise."""
    mask = torch.tensor([True, False, True, True])
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 3])
    for kw in (dict(class_mask=mask), dict(num_classes=3), dict(num_classes=3, class_mask=mask,
                                                                 spread="others")):
        got = vocab_parallel_cross_entropy(x, y if "num_classes" not in kw else
                                           torch.tensor([0, 2, 2]), label_smoothing=0.2, **kw)
        want = ls.cross_entropy(x, y if "num_classes" not in kw else torch.tensor([0, 2, 2]),
                                label_smoothing=0.2, **kw)
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="`target`"):
        vocab_parallel_cross_entropy(x, torch.tensor([1, 2, 3]), class_mask=mask)
    with pytest.raises(ValueError, match="`num_classes`"):
        vocab_parallel_cross_entropy(x, y, num_classes=5)
    with pytest.raises(ValueError, match="`class_mask`"):
        vocab_parallel_cross_entropy(x, y, class_mask=mask[:3])
    with pytest.raises(TypeError, match="`class_mask`"):
        vocab_parallel_cross_entropy(x, y, class_mask=mask.long())


# --------------------------------------------------------------------------------------------
# The optional terms (confidence_penalty, poly, focal_gamma) across ranks
# --------------------------------------------------------------------------------------------

TERM_SETS = [
    dict(confidence_penalty=0.7),
    dict(poly=1.5),
    dict(focal_gamma=2.0),
    dict(focal_gamma="flsd-53"),
    dict(confidence_penalty=0.3, poly=-0.5, focal_gamma=0.5),
]


def _term_cases() -> list[dict]:
    """Each term set with a rotating option set, both losses, both engines, two layouts."""
    g = torch.Generator().manual_seed(77)
    w = torch.rand(K, generator=g, dtype=torch.float64) * 2 + 0.1
    prior = torch.distributions.Dirichlet(torch.ones(K, dtype=torch.float64)).sample()
    options = [
        dict(label_smoothing=0.1),
        dict(label_smoothing=0.2, weight=w, prior=prior, ignore=True),
        dict(label_smoothing=0.3, spread="others", weight=w, weight_mode="target",
             z_loss=1e-2, reduction="none", ignore=True),
        dict(label_smoothing=0.1, softcap=2.0, reduction="sum", weight=w),
        dict(),
        # masked classes at the first column of both layouts' second shard (7 and 3) and at 0:
        # a shard whose placeholder target column is −inf while the target lives elsewhere
        dict(label_smoothing=0.2, weight=w, z_loss=1e-3, reduction="none", ignore=True,
             class_mask=torch.tensor([c not in (0, 3, 7) for c in range(K)])),
    ]
    cases = []
    pairs = [(i, j, (i + j) % (len(options) - 1)) for i in range(len(TERM_SETS)) for j in range(2)]
    pairs += [(i, i % 2, len(options) - 1) for i in range(len(TERM_SETS))]  # every term masked
    for i, j, o in pairs:
        term = TERM_SETS[i]
        opt = dict(options[o])
        ignore = opt.pop("ignore", False)
        x = torch.randn(N, K, generator=g, dtype=torch.float64) * 2.5
        h = torch.randn(N, H, generator=g, dtype=torch.float64)
        W = torch.randn(K, H, generator=g, dtype=torch.float64)
        b = torch.randn(K, generator=g, dtype=torch.float64) * 0.1
        y = torch.randint(0, K, (N,), generator=g)
        if "class_mask" in opt:  # targets at valid classes
            y = torch.where(opt["class_mask"][y], y, torch.full_like(y, 5))
        if ignore:
            y[::3] = -100
        red_shape = (N,) if opt.get("reduction") == "none" else ()
        grad_out = torch.rand(red_shape, generator=g, dtype=torch.float64) + 0.5
        for impl in ("auto", "reference"):
            cases.append(dict(name=f"{impl}/{term}/{list(opt)}", x=x, h=h, W=W, b=b, y=y,
                              opt=opt, term=term, impl=impl, grad_out=grad_out,
                              widths=[7, 4] if j == 0 else [3, 8], explicit=(i + j) % 3 == 0))
    return cases


def _job_terms(rank: int, world: int, cases: list[dict]) -> list[dict]:
    counter = _Counter()
    out = []
    for c in cases:
        widths = c["widths"]
        start = sum(widths[:rank])
        sl = slice(start, start + widths[rank])
        opt = dict(c["opt"])
        for key in ("weight", "prior", "class_mask"):
            if key in opt:
                opt[key] = opt[key][sl]
        if c["explicit"]:
            opt.update(vocab_start=start, vocab_size=sum(widths))
        x = c["x"][:, sl].clone().requires_grad_()
        counter.take()
        loss = vocab_parallel_cross_entropy(x, c["y"], impl=c["impl"], **opt, **c["term"])
        fwd = counter.take()
        loss.backward(c["grad_out"])
        res = dict(loss=loss.detach(), grad=x.grad, fwd=fwd, bwd=counter.take())
        # the fused linear variant (hidden replicated, projection rows sharded), chunks of 3 rows
        h = c["h"].clone().requires_grad_()
        W = c["W"][sl].clone().requires_grad_()
        b = c["b"][sl].clone().requires_grad_()
        if "weight" in opt:
            opt["class_weight"] = opt.pop("weight")
        counter.take()
        lin = vocab_parallel_linear_cross_entropy(h, W, c["y"], b, impl=c["impl"], chunk_size=3,
                                                  **opt, **c["term"])
        lin_fwd = counter.take()
        lin.backward(c["grad_out"])
        res.update(lin_loss=lin.detach(), gh=h.grad, gW=W.grad, gb=b.grad, lin_fwd=lin_fwd,
                   lin_bwd=counter.take())
        out.append(res)
    return out


JOBS["terms"] = _job_terms


def _single_terms(c: dict, linear: bool) -> tuple[torch.Tensor, ...]:
    """cross_entropy's reference engine (autograd through the term formulas) in one process."""
    leaves = ([c["h"].clone().requires_grad_(), c["W"].clone().requires_grad_(),
               c["b"].clone().requires_grad_()] if linear else [c["x"].clone().requires_grad_()])
    logits = leaves[0] @ leaves[1].T + leaves[2] if linear else leaves[0]
    loss = ls.cross_entropy(logits, c["y"], impl="reference", **c["opt"], **c["term"])
    grads = torch.autograd.grad(loss, leaves, c["grad_out"])
    return (loss.detach(), *grads)


def test_terms_across_two_ranks() -> None:
    """The terms on 2 gloo ranks: loss identical on every rank and equal to cross_entropy's
    reference engine on the full logits, each rank's gradient its slice (logits; hidden, weight,
    bias for the linear variant), float64, fused and reference engines, with and without the
    fingerprint exchange. Collectives: the term partials ride in the existing SUM all-reduce;
    focal with smoothing adds one SUM all-reduce of 2 numbers per row; the backward
    communicates nothing (the linear variant: its d(hidden) all-reduce only)."""
    world, cases = 2, _term_cases()
    res = _spawn(world, "terms", cases)
    for i, c in enumerate(cases):
        name = c["name"]
        per = [res[r][i] for r in range(world)]
        loss, gx = _single_terms(c, linear=False)
        lloss, gh, gW, gb = _single_terms(c, linear=True)
        for r in range(world):
            assert torch.equal(per[r]["loss"], per[0]["loss"]), f"{name}: rank {r} loss"
            assert torch.equal(per[r]["lin_loss"], per[0]["lin_loss"]), f"{name}: rank {r} linear"
            _close(per[r]["gh"], gh, torch.float64, f"{name}: linear grad hidden, rank {r}")
        _close(per[0]["loss"], loss, torch.float64, f"{name}: loss")
        _close(torch.cat([p["grad"] for p in per], 1), gx, torch.float64, f"{name}: grad")
        _close(per[0]["lin_loss"], lloss, torch.float64, f"{name}: linear loss")
        _close(torch.cat([p["gW"] for p in per]), gW, torch.float64, f"{name}: linear grad W")
        _close(torch.cat([p["gb"] for p in per]), gb, torch.float64, f"{name}: linear grad b")
        # focal's stage 1b sums over the smoothing shares: none without smoothing
        focal = c["term"].get("focal_gamma") is not None and c["opt"].get("label_smoothing", 0) > 0
        rows = c["y"].numel()
        for p in per:
            for key, bwd_expected in (("fwd", []), ("lin_fwd", None)):
                ar = [n for nm, n, _ in p[key] if nm == "all_reduce"]
                ag = [n for nm, n, _ in p[key] if nm == "all_gather"]
                # MAX + SUM (+ the focal SUM); never an (N, K) transfer
                assert len(ar) == 2 + focal, f"{name} {key}: all-reduces {ar}"
                # SUM: ≤ 6 rows (share, x_y, Σs(M−x), w_y, Σe(x−M), Σs·e) + ≤ 5 scalars
                assert all(n <= 6 * rows + 5 for n in ar[1:]), f"{name} {key}: sizes {ar}"
                if focal:
                    assert ar[2] == 2 * rows, f"{name} {key}: focal all-reduce {ar}"
                fp = 24 if key == "fwd" else 26  # 7 head entries + 17 (19) items
                assert ag == ([] if c["explicit"] else [fp]), f"{name} {key}: all_gathers {ag}"
            assert p["bwd"] == [], f"{name}: backward communicated {p['bwd']}"
            bwd_ar = [n for nm, n, _ in p["lin_bwd"] if nm == "all_reduce"]
            assert bwd_ar == [rows * H], f"{name}: linear backward all-reduces {bwd_ar}"



def _float32_term_cases(impl: str) -> list[dict]:
    cases = []
    for c in _term_cases():
        if c["impl"] != "auto":
            continue
        f32 = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
               for k, v in c.items()}
        f32["opt"] = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                      for k, v in c["opt"].items()}
        cases.append(dict(f32, impl=impl))
    return cases


def _check_float32_terms(cases: list[dict], res: list) -> None:
    tol = dict(rtol=1e-5, atol=1e-6)
    for i, c in enumerate(cases):
        loss, gx = _single_terms(c, linear=False)
        lloss, gh, gW, gb = _single_terms(c, linear=True)
        per = [res[r][i] for r in range(2)]
        assert torch.equal(per[0]["loss"], per[1]["loss"]), c["name"]
        torch.testing.assert_close(per[0]["loss"], loss, **tol, msg=c["name"])
        torch.testing.assert_close(torch.cat([p["grad"] for p in per], 1), gx, **tol,
                                   msg=c["name"])
        torch.testing.assert_close(per[0]["lin_loss"], lloss, **tol, msg=c["name"])
        for p in per:
            torch.testing.assert_close(p["gh"], gh, **tol, msg=c["name"])
        torch.testing.assert_close(torch.cat([p["gW"] for p in per]), gW, **tol, msg=c["name"])
        torch.testing.assert_close(torch.cat([p["gb"] for p in per]), gb, **tol, msg=c["name"])


def test_terms_float32_across_two_ranks() -> None:
    """The terms in float32 with the default engine per shard (fused on the CPU): both losses
    within float32 rounding of cross_entropy's reference engine on the full logits."""
    cases = _float32_term_cases("auto")
    _check_float32_terms(cases, _spawn(2, "terms", cases))


def test_terms_triton_on_two_gloo_ranks_under_the_interpreter() -> None:
    """The terms with impl="triton" on 2 gloo ranks (interpreter, CPU tensors, float32): both
    losses against cross_entropy's reference engine on the full logits."""
    pytest.importorskip("triton")
    from labelsmooth.ops import triton_ce
    from labelsmooth.ops._terms import SUPPORTED_IMPLS

    if not triton_ce.is_available(torch.device("cpu")):
        pytest.skip("Triton interpreter not enabled")
    if "triton" not in SUPPORTED_IMPLS:
        pytest.skip("the Triton engine does not evaluate the terms yet")
    cases = _float32_term_cases("triton")
    _check_float32_terms(cases, _spawn(2, "terms", cases))


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_terms_single_process_errors_and_zero_strength(impl: str) -> None:
    """Without a group: the terms equal cross_entropy's reference engine (spatial input, a
    masked vocabulary); a zero strength is no term (the same bits); bad values raise the
    single-process errors naming the argument."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, K, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (3, 2), generator=g)
    mask = torch.ones(K, dtype=torch.bool)
    mask[[2, 9]] = False
    y[y == 2], y[y == 9] = 0, 1
    term = dict(confidence_penalty=0.4, poly=0.6, focal_gamma="flsd-53")
    kw = dict(label_smoothing=0.2, z_loss=1e-3, class_mask=mask, reduction="none")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = vocab_parallel_cross_entropy(xa, y, impl=impl, **kw, **term)
    ref = ls.cross_entropy(xb, y, impl="reference", **kw, **term)
    _close(ours.detach(), ref.detach(), torch.float64, "loss")
    (ours * torch.arange(6.0, dtype=torch.float64).reshape(3, 2)).sum().backward()
    (ref * torch.arange(6.0, dtype=torch.float64).reshape(3, 2)).sum().backward()
    _close(xa.grad, xb.grad, torch.float64, "grad")
    h = torch.randn(3, 2, H, generator=g, dtype=torch.float64)
    W = torch.randn(K, H, generator=g, dtype=torch.float64)
    lin = vocab_parallel_linear_cross_entropy(h, W, y, impl=impl, chunk_size=2, **kw, **term)
    _close(lin, ls.cross_entropy((h @ W.T).movedim(-1, 1), y, impl="reference", **kw, **term),
           torch.float64, "linear loss")
    plain = vocab_parallel_cross_entropy(x, y, impl=impl, label_smoothing=0.1)
    zero = vocab_parallel_cross_entropy(x, y, impl=impl, label_smoothing=0.1,
                                        confidence_penalty=0.0, poly=0, focal_gamma=0.0)
    assert torch.equal(plain, zero)
    for bad, err in ((dict(focal_gamma=-1.0), ValueError), (dict(poly="x"), TypeError),
                     (dict(confidence_penalty=-1.0), ValueError)):
        name = next(iter(bad))
        with pytest.raises(err, match=f"`{name}`"):
            vocab_parallel_cross_entropy(x, y, impl=impl, **bad)
        with pytest.raises(err, match=f"`{name}`"):
            vocab_parallel_linear_cross_entropy(h, W, y, impl=impl, **bad)
