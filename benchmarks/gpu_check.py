"""The Python half of ``benchmarks/gpu_check.sh``: parity, time and memory of every provider.

Two sections, each at one shape, in one process (fresh non-leaf inputs before every call, as a
model produces them, so in-place providers really write in place):

* ``ce`` — label-smoothed cross-entropy, forward + backward w.r.t. the logits: ``torch``,
  ``torch.compile``, ``liger`` (LigerCrossEntropyLoss), ``quack`` (no label smoothing: run at ε=0),
  ``labelsmooth`` and ``labelsmooth-inplace`` (``impl="triton"``), and ``copy`` (a device copy of
  the logits: the bandwidth floor).
* ``linear`` — fused linear + cross-entropy, forward + backward w.r.t. hidden states, weight:
  ``torch`` (``F.linear`` then ``F.cross_entropy``), ``torch.compile`` of the same, ``liger``
  (LigerFusedLinearCrossEntropyLoss), ``cce`` (Cut Cross-Entropy; no label smoothing: ε=0) and
  ``labelsmooth`` (``linear_cross_entropy``, Triton per chunk).

Parity, per provider, on the first ``--parity-rows`` rows (the full vocabulary): loss and
gradients against float64 truth from the same rounded inputs, per element, with the judge of the
GPU tests (``tests/helpers.assert_within_truth``: error ≤ PyTorch's own error in the same dtype +
rtol·|truth|; rtol 2**-8 for bf16/fp16, 2**-14 for fp32). A labelsmooth provider failing it makes
the exit status 1; other libraries' verdicts are reported only. Providers that do not import are
reported as skipped.

Time: the median of ``--repeat`` calls after ``--warmup`` (CUDA events on a GPU). Memory: peak
allocated during one call beyond what was allocated before it (inputs), CUDA only.

``--dry-run`` (what CI runs): CPU tensors, Triton's interpreter, tiny shapes, no torch.compile.
``--fault`` scales labelsmooth's logits gradient by 1.01 before judging (proves exit status 1).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # tests.helpers: the judge of the GPU tests


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


def _timer(dev):
    import torch

    def run(fn, setup, warmup, repeat):
        ts = []
        for i in range(warmup + repeat):
            setup()
            if dev.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                t = a.elapsed_time(b) / 1e3
            else:
                t0 = time.perf_counter()
                fn()
                t = time.perf_counter() - t0
            if i >= warmup:
                ts.append(t)
        return statistics.median(ts)

    return run


def _peak(dev, fn, setup):
    import torch

    if dev.type != "cuda":
        return float("nan")
    setup()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ------------------------------------------------------------------------------------------------
# Providers: each returns loss_fn(inputs...) -> scalar loss, or raises ImportError (skipped).


def _ce_providers(eps: float, dry: bool):
    import torch
    import torch.nn.functional as F

    import labelsmooth as ls

    def torch_fn(x, y):
        return F.cross_entropy(x, y, label_smoothing=eps)

    def compiled():
        return torch.compile(torch_fn)

    def liger():
        from liger_kernel.transformers import LigerCrossEntropyLoss

        return LigerCrossEntropyLoss(label_smoothing=eps)

    def quack():
        from quack.cross_entropy import cross_entropy

        return lambda x, y: cross_entropy(x, y)  # no label smoothing: ε = 0

    out = {
        "torch": (lambda: torch_fn, eps),
        "torch.compile": (compiled, eps),
        "liger": (liger, eps),
        "quack": (quack, 0.0),
        "labelsmooth": (lambda: lambda x, y: ls.cross_entropy(x, y, label_smoothing=eps,
                                                               impl="triton"), eps),
        "labelsmooth-inplace": (lambda: lambda x, y: ls.cross_entropy(
            x, y, label_smoothing=eps, impl="triton", inplace_backward=True), eps),
    }
    if dry:
        out.pop("torch.compile")
    return out


def _linear_providers(eps: float, dry: bool):
    import torch
    import torch.nn.functional as F

    from labelsmooth.linear import linear_cross_entropy

    def torch_fn(h, w, y):
        return F.cross_entropy(F.linear(h, w), y, label_smoothing=eps)

    def liger():
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        m = LigerFusedLinearCrossEntropyLoss(label_smoothing=eps)
        return lambda h, w, y: m(w, h, y)

    def cce():
        from cut_cross_entropy import linear_cross_entropy as cce_lce

        return lambda h, w, y: cce_lce(h, w, y)  # no label smoothing: ε = 0

    out = {
        "torch": (lambda: torch_fn, eps),
        "torch.compile": (lambda: torch.compile(torch_fn), eps),
        "liger": (liger, eps),
        "cce": (cce, 0.0),
        "labelsmooth": (lambda: lambda h, w, y: linear_cross_entropy(
            h, w, y, label_smoothing=eps, impl="triton"), eps),
    }
    if dry:
        out.pop("torch.compile")
    return out


# ------------------------------------------------------------------------------------------------


def _judge(ours, truth, peer, dtype, scales=None, names=("loss", "grad")):
    """(passed, max relative error, message) with the GPU tests' judge."""
    import torch

    from tests.helpers import assert_within_truth

    rtol = {torch.float32: 2.0**-14}.get(dtype, 2.0**-8)
    worst, msg, ok = 0.0, "", True
    scales = scales or [None] * len(ours)
    for o, t, p, sc, name in zip(ours, truth, peer, scales, names):
        t64 = t.detach().double()
        mag = t64.abs() if sc is None else sc.double()
        rel = ((o.detach().double() - t64).abs() / mag.clamp_min(1e-30))[t64.isfinite()]
        worst = max(worst, float(rel.max()) if rel.numel() else 0.0)
        try:
            assert_within_truth(o, t, rtol=rtol, peer=p, what=name, scale=sc)
        except AssertionError as err:
            ok, msg = False, str(err).splitlines()[0]
    return ok, worst, msg


def run_ce(args, dev, dtype, rows_out, failures):
    import torch

    n, k = args.ce_shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    src = (torch.randn(n, k, generator=gen) * 2).to(dtype).to(dev).requires_grad_()
    y = torch.randint(0, k, (n,), generator=gen).to(dev)
    pr = min(args.parity_rows, n)
    timer = _timer(dev)
    state = {}

    def setup():
        state.pop("x", None)
        with torch.enable_grad():
            state["x"] = src * 1.0

    base_time = None
    for name, (make, eps) in _ce_providers(args.smoothing, args.dry_run).items():
        row = {"section": "ce", "provider": name, "shape": f"{n}x{k}", "dtype": str(dtype)[6:],
               "eps": eps}
        try:
            fn = make()
        except ImportError as err:
            rows_out.append({**row, "note": f"skipped: {err}"})
            continue
        try:
            def call(fn=fn):
                x = state["x"]
                (g,) = torch.autograd.grad(fn(x, y), x)
                return g

            # parity on the first rows (fresh tensors; the provider's own dtype)
            xs = src.detach()[:pr]
            x_p = (xs * 1.0).requires_grad_(False)
            leaf = x_p.clone().requires_grad_()
            xin = leaf * 1.0
            lo = fn(xin, y[:pr])
            (go,) = torch.autograd.grad(lo, xin)
            if name.startswith("labelsmooth") and args.fault:
                go = go * 1.01
            t64 = xs.double().requires_grad_()
            lt = torch.nn.functional.cross_entropy(t64, y[:pr], label_smoothing=eps)
            (gt,) = torch.autograd.grad(lt, t64)
            tp = xs.clone().requires_grad_()
            lp = torch.nn.functional.cross_entropy(tp, y[:pr], label_smoothing=eps)
            (gp,) = torch.autograd.grad(lp, tp)
            ok, worst, msg = _judge((lo.detach().reshape(()), go), (lt.detach(), gt),
                                    (lp.detach(), gp), dtype)
            if name.startswith("labelsmooth") and not ok:
                failures.append(f"ce {name}: {msg}")
            t = timer(call, setup, args.warmup, args.repeat)
            peak = _peak(dev, call, setup)
            row.update(median_ms=t * 1e3, peak_MiB=peak, parity="ok" if ok else "FAIL",
                       max_rel_err=worst, note=msg)
            if name == "torch":
                base_time = t
            if base_time:
                row["x_vs_torch"] = base_time / t
            row["GB/s"] = 3 * n * k * src.element_size() / t / 1e9
        except Exception as err:  # a provider that breaks is reported, not fatal
            row["note"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            if name.startswith("labelsmooth"):
                failures.append(f"ce {name}: {row['note']}")
                traceback.print_exc()
        rows_out.append(row)
    # the floor: a device copy (one read, one write)
    t = timer(lambda: src.detach().clone(), lambda: None, args.warmup, args.repeat)
    rows_out.append({"section": "ce", "provider": "copy", "shape": f"{n}x{k}",
                     "dtype": str(dtype)[6:], "median_ms": t * 1e3,
                     "GB/s": 2 * n * k * src.element_size() / t / 1e9,
                     "note": "floor: x.clone()"})


def run_linear(args, dev, dtype, rows_out, failures):
    import torch

    n, h, v = args.linear_shape
    gen = torch.Generator(device="cpu").manual_seed(1)
    hid = torch.randn(n, h, generator=gen).to(dtype).to(dev).requires_grad_()
    w = (torch.randn(v, h, generator=gen) / math.sqrt(h)).to(dtype).to(dev).requires_grad_()
    y = torch.randint(0, v, (n,), generator=gen).to(dev)
    pr = min(args.parity_rows, n)
    timer = _timer(dev)
    base_time = None

    def grads(fn, hh, ww, yy):
        hl, wl = hh.detach().clone().requires_grad_(), ww.detach().clone().requires_grad_()
        out = fn(hl, wl, yy)
        dh, dw = torch.autograd.grad(out, (hl, wl))
        return out.detach().reshape(()), dh, dw

    for name, (make, eps) in _linear_providers(args.smoothing, args.dry_run).items():
        row = {"section": "linear", "provider": name, "shape": f"{n}x{h}x{v}",
               "dtype": str(dtype)[6:], "eps": eps}
        try:
            fn = make()
        except ImportError as err:
            rows_out.append({**row, "note": f"skipped: {err}"})
            continue
        try:
            ours = grads(fn, hid[:pr], w, y[:pr])
            if name == "labelsmooth" and args.fault:
                ours = (ours[0], ours[1] * 1.01, ours[2])
            import torch.nn.functional as F

            def tfn(a, b, c, eps=eps):
                return F.cross_entropy(F.linear(a, b), c, label_smoothing=eps)

            h64, w64 = hid[:pr].detach().double(), w.detach().double()
            peer = grads(tfn, hid[:pr], w, y[:pr])
            # Truth: float64 from the logits as rounded in the dtype (what every provider's loss
            # sees), dh = G W and dW = Gᵀ h in float64. Those two are sums of rounded products:
            # their tolerance scales with |G||W| and |G|ᵀ|h| (cancellation can make them tiny).
            x64 = F.linear(hid[:pr].detach(), w.detach()).double().requires_grad_()
            l64 = F.cross_entropy(x64, y[:pr], label_smoothing=eps)
            (g64,) = torch.autograd.grad(l64, x64)
            truth = (l64.detach(), g64 @ w64, g64.t() @ h64)
            scales = [None, g64.abs() @ w64.abs(), g64.abs().t() @ h64.abs()]
            ok, worst, msg = _judge(ours, truth, peer, dtype, scales, ("loss", "dh", "dW"))
            if name == "labelsmooth" and not ok:
                failures.append(f"linear {name}: {msg}")

            def call(fn=fn):
                out = fn(hid, w, y)
                return torch.autograd.grad(out, (hid, w))

            t = timer(call, lambda: None, args.warmup, args.repeat)
            peak = _peak(dev, call, lambda: None)
            row.update(median_ms=t * 1e3, peak_MiB=peak, parity="ok" if ok else "FAIL",
                       max_rel_err=worst, note=msg)
            if name == "torch":
                base_time = t
            if base_time:
                row["x_vs_torch"] = base_time / t
            row["logits_MiB"] = n * v * hid.element_size() / 2**20
        except Exception as err:
            row["note"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            if name == "labelsmooth":
                failures.append(f"linear {name}: {row['note']}")
                traceback.print_exc()
        rows_out.append(row)


COLS = ["section", "provider", "shape", "dtype", "eps", "median_ms", "x_vs_torch", "GB/s",
        "peak_MiB", "logits_MiB", "parity", "max_rel_err", "note"]


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return "" if v is None else str(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--ce-shape", type=_shape, default=None)
    p.add_argument("--linear-shape", type=_shape, default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--parity-rows", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--sections", default="ce,linear")
    p.add_argument("--fault", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--csv", default="gpu_check.csv")
    p.add_argument("--summary", default=None)
    args = p.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.ce_shape = args.ce_shape or (4, 300)
        args.linear_shape = args.linear_shape or (8, 16, 300)
        args.warmup, args.repeat = 0, 1
        args.parity_rows = min(args.parity_rows, 4)
    else:
        args.ce_shape = args.ce_shape or (8192, 128256)
        args.linear_shape = args.linear_shape or (8192, 4096, 128256)
    import torch

    dev = torch.device("cpu" if args.dry_run else "cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: no CUDA device (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    rows, failures = [], []
    sections = args.sections.split(",")
    if "ce" in sections:
        run_ce(args, dev, dtype, rows, failures)
    if "linear" in sections:
        run_linear(args, dev, dtype, rows, failures)
    with open(args.csv, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLS, extrasaction="ignore")
        wr.writeheader()
        for r in rows:
            wr.writerow({c: _fmt(r.get(c)) for c in COLS})
    lines = [f"device={torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu (dry run)'} "
             f"torch={torch.__version__} dtype={args.dtype} eps={args.smoothing}"]
    show = ["section", "provider", "shape", "median_ms", "x_vs_torch", "GB/s", "peak_MiB",
            "parity", "note"]
    lines.append(" | ".join(show))
    for r in rows:
        lines.append(" | ".join(_fmt(r.get(c)) for c in show))
    lines.append("PARITY: " + ("OK" if not failures else "FAILED: " + "; ".join(failures)))
    text = "\n".join(lines)
    print(text)
    if args.summary:
        Path(args.summary).write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
