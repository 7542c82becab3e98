"""Fused linear + label-smoothed cross-entropy: time and peak memory against the unfused paths.

Forward + backward of ``loss(hidden @ weight.T)`` with label_smoothing=0.1, gradients for hidden
and weight, for:

* ``torch``          — eager ``F.cross_entropy(F.linear(h, W), y, label_smoothing=0.1)``;
* ``torch.compile``  — the same function through ``torch.compile``;
* ``labelsmooth``    — ``labelsmooth.linear_cross_entropy`` (gradients computed in forward);
* ``ls-recompute``   — the same with the logits recomputed in backward (``grad_in_forward=False``,
  what ``reduction="none"`` always does): the design choice measured;
* CUDA only: ``3 matmuls`` (logits, grad hidden, grad weight, nothing else: the floor),
  Liger-Kernel's fused linear CE and Apple's Cut Cross-Entropy (no label smoothing: run at ε=0)
  when they import.

Time: median of ``--reps`` forward+backward runs after one warm-up, methods interleaved round by
round so that a change of load on a shared machine hits all of them alike; the default allocator.
Peak memory beyond the inputs and their gradients: on CPU, one fresh process per method, the
resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) of one
forward+backward after a warm-up, minus the resident set before it, minus the gradients' bytes;
that process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors are returned to the OS and
the resident set follows the live tensors (the timing processes keep the default allocator).
On CUDA: ``torch.cuda.max_memory_allocated`` over the same window.

Usage::

    python benchmarks/bench_linear_cross_entropy.py                  # CPU, 4096 × 1024 × 32000 fp32
    python benchmarks/bench_linear_cross_entropy.py --device cuda    # 8192 × 4096 × 128256 bf16
    python benchmarks/bench_linear_cross_entropy.py --tokens 512 --vocab 8000 --reps 3   # quick

Writes a CSV (``--csv``, default ``benchmarks/results/linear_cross_entropy_<device>.csv``) with the
environment (torch version, threads, load average) in comment lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

EPS = 0.1
CPU_METHODS = ("torch", "torch.compile", "labelsmooth", "ls-recompute")
CUDA_METHODS = ("3 matmuls", "torch", "torch.compile", "labelsmooth", "ls-recompute", "liger", "cce")


# ---------------------------------------------------------------------------------------------
# Methods: each returns a callable (hidden, weight, target) -> None running forward + backward.
# ---------------------------------------------------------------------------------------------

def _torch_loss(h, w, y):
    return F.cross_entropy(F.linear(h, w), y, label_smoothing=EPS)


def make_method(name: str):
    if name == "torch":
        return _fwd_bwd(_torch_loss)
    if name == "torch.compile":
        return _fwd_bwd(torch.compile(_torch_loss))
    if name in ("labelsmooth", "ls-recompute"):
        from labelsmooth.linear import _linear_cross_entropy

        gif = name == "labelsmooth"
        return _fwd_bwd(lambda h, w, y: _linear_cross_entropy(h, w, y, label_smoothing=EPS,
                                                              grad_in_forward=gif))
    if name == "3 matmuls":
        def run(h, w, y):
            logits = h @ w.T
            h.grad = logits @ w       # grad hidden (the logits stand in for their gradient)
            w.grad = logits.T @ h     # grad weight
        return run
    if name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        fn = LigerFusedLinearCrossEntropyLoss(label_smoothing=EPS)
        return _fwd_bwd(lambda h, w, y: fn(w, h, y))
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy as cce

        return _fwd_bwd(lambda h, w, y: cce(h, w, y))  # no label smoothing in CCE
    raise ValueError(f"Expected a method in {CUDA_METHODS}, but got {name!r}.")


def _fwd_bwd(loss_fn):
    def run(h, w, y):
        loss_fn(h, w, y).backward()
    return run


def make_inputs(tokens, hidden, vocab, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(tokens, hidden, generator=g) / hidden ** 0.5).to(device, dtype)
    w = (torch.randn(vocab, hidden, generator=g)).to(device, dtype)
    y = torch.randint(0, vocab, (tokens,), generator=g).to(device)
    return h.requires_grad_(), w.requires_grad_(), y


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _clear(h, w):
    h.grad = None
    w.grad = None


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------

def measure_memory_here(name, tokens, hidden, vocab, dtype, device) -> dict:
    """Peak bytes beyond the inputs and their gradients of one forward+backward (after a warm-up)."""
    h, w, y = make_inputs(tokens, hidden, vocab, dtype, device)
    run = make_method(name)
    run(h, w, y)  # warm-up (compilation, lazy initialisation)
    _sync(device)
    grads_bytes = h.numel() * h.element_size() + w.numel() * w.element_size()
    _clear(h, w)
    if device == "cuda":
        torch.cuda.empty_cache()
        peak = C.peak_cuda_beyond(lambda: run(h, w, y))
    else:
        peak = C.peak_rss_beyond(lambda: run(h, w, y))
    return {"method": name, "peak_extra_bytes": peak - grads_bytes}


def measure_memory(name, args) -> dict | None:
    """In a fresh process (CPU), so nothing a previous method left behind is counted or reused."""
    if args.device == "cuda":
        try:
            return measure_memory_here(name, args.tokens, args.hidden, args.vocab, args.dtype,
                                       args.device)
        except ImportError:
            return None
    case = {"method": name, "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab,
            "dtype": args.dtype_name, "device": args.device, "threads": args.threads}
    out = C.run_worker(__file__, case, extra_env=C.MEASURE_ENV, timeout=1800)
    if "error" in out:
        print(f"  memory worker for {name} failed: {out['error']}", file=sys.stderr)
        return None
    return out


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------

def measure_times(methods, args) -> dict[str, list[float]]:
    h, w, y = make_inputs(args.tokens, args.hidden, args.vocab, args.dtype, args.device)
    runs = {}
    for name in methods:
        try:
            runs[name] = make_method(name)
        except ImportError as e:
            print(f"  {name}: not importable ({e}); skipped", file=sys.stderr)
    for name, run in runs.items():  # warm-up, one each
        t0 = time.perf_counter()
        run(h, w, y)
        _sync(args.device)
        _clear(h, w)
        print(f"  warm-up {name}: {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    times: dict[str, list[float]] = {n: [] for n in runs}
    for rep in range(args.reps):
        for name, run in runs.items():  # interleaved: load changes hit every method alike
            _sync(args.device)
            t0 = time.perf_counter()
            run(h, w, y)
            _sync(args.device)
            times[name].append(time.perf_counter() - t0)
            _clear(h, w)
        print(f"  round {rep + 1}/{args.reps}: " +
              ", ".join(f"{n} {ts[-1]:.2f}s" for n, ts in times.items()), file=sys.stderr)
    return times


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--tokens", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--dtype", dest="dtype_name", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--methods", help="comma-separated subset of the methods")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--csv", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)  # JSON case: one memory measurement
    args = p.parse_args(argv)
    if args.worker:
        case = json.loads(args.worker)
        torch.set_num_threads(case["threads"])
        print(json.dumps(measure_memory_here(case["method"], case["tokens"], case["hidden"],
                                             case["vocab"], getattr(torch, case["dtype"]),
                                             case["device"])))
        return
    cuda = args.device == "cuda"
    args.tokens = args.tokens or (8192 if cuda else 4096)
    args.hidden = args.hidden or (4096 if cuda else 1024)
    args.vocab = args.vocab or (128256 if cuda else 32000)
    args.dtype_name = args.dtype_name or ("bfloat16" if cuda else "float32")
    args.dtype = getattr(torch, args.dtype_name)
    torch.set_num_threads(args.threads)

    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    methods = args.methods.split(",") if args.methods else (CUDA_METHODS if cuda else CPU_METHODS)
    logits_bytes = args.tokens * args.vocab * torch.empty((), dtype=args.dtype).element_size()
    env = C.environment(args.threads, args.device)
    print(f"# fwd+bwd, {args.tokens} tokens × hidden {args.hidden} × vocab {args.vocab}, "
          f"{args.dtype_name}, ε={EPS}, {args.device}, {args.threads} threads, "
          f"load average {env['load_average_1_5_15']} at start", file=sys.stderr)
    times = measure_times(methods, args)
    env["load_average_after_timing"] = C.load_average()
    mem = {}
    if not args.no_memory:
        for name in times:
            m = measure_memory(name, args)
            if m is not None:
                mem[name] = m["peak_extra_bytes"]
    env["load_average_at_end"] = C.load_average()
    base = "3 matmuls" if "3 matmuls" in times else "torch"
    ratio = f"time_vs_{base.replace(' ', '_')}"
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({
            "method": name,
            "median_s": med,
            "min_s": min(ts),
            "runs": len(ts),
            ratio: med / statistics.median(times[base]),
            "peak_extra_MiB": mem[name] / 2**20 if name in mem else float("nan"),
            "peak_extra_vs_logits": mem[name] / logits_bytes if name in mem else float("nan"),
        })
    print(f"\nfull logits: {logits_bytes / 2**20:.0f} MiB; load average (1, 5, 15 min): start "
          f"{env['load_average_1_5_15']}, after timing {env['load_average_after_timing']}, end "
          f"{env['load_average_at_end']}")
    print(C.format_table(rows, ["method", "median_s", "min_s", ratio, "peak_extra_MiB",
                                "peak_extra_vs_logits"]))
    path = args.csv or C.REPO / "benchmarks" / "results" / f"linear_cross_entropy_{args.device}.csv"
    print(f"wrote {C.write_csv(path, rows, env)}")


if __name__ == "__main__":
    main()
