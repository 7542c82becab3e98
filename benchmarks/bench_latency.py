"""Forward + backward latency of label-smoothed cross-entropy, from 128×10 to 8192×128256.

What it answers (issue 15.3): does ``labelsmooth`` cost what torch costs at the shapes most
classification users run, and what does it cost at language-model shapes? Providers, all with
ε = ``--smoothing`` (default 0.1), reduction ``mean``, random class targets, validation on (the
default ``validate=None``):

* ``torch``          — eager ``F.cross_entropy(x, y, label_smoothing=ε)``;
* ``torch.compile``  — ``torch.compile`` of the same function (warm: compiled before timing);
* ``labelsmooth``    — ``labelsmooth.cross_entropy(x, y, label_smoothing=ε)`` (``impl="auto"``:
  torch's kernels below ``DIRECT_MAX_NUMEL`` elements, the fused engine above);
* ``module``         — ``labelsmooth.CrossEntropyLoss(label_smoothing=ε)(x, y)``;
* ``fused``          — ``impl="fused"``: the general path at every size (what the direct path
  replaced at small shapes).

Method: one process, one run. The logits are non-leaf, as a model gives them: before every call,
untimed, ``x = src * 1.0`` from a leaf ``src``; the timed call is the loss plus
``torch.autograd.grad(loss, x)``. Shapes up to ``--interleave-max`` elements are timed in rounds
that visit every provider in turn (``--rounds`` rounds of ``--inner`` calls each, the per-call
mean of a round is one sample), so a change in machine load hits all providers alike; larger
shapes are timed call by call (``--warmup`` untimed, then ``--repeat`` timed calls, provider after
provider). Reported: the median wall time, the median process CPU time (all threads; less
sensitive to a loaded machine than wall time, though not immune), and the ratios of the wall
medians to ``torch`` and to ``torch.compile`` from the same run.

CPU defaults skip 8192×128256 (4.2 GB of float32 logits; eager torch needs ~3× that beyond them,
more than a shared 24 GiB machine can spare): ``--big`` adds it. ``--device cuda`` runs every
shape (timed with CUDA events).

Usage::

    python benchmarks/bench_latency.py                       # CPU table, ~10 min on 2 cores
    python benchmarks/bench_latency.py --shapes 128x10,256x100 --rounds 60
    python benchmarks/bench_latency.py --device cuda --big

Measured (git ``07969cc``, 2026-12-02, ``--threads 1 --rounds 20 --inner 10``, float32, ε = 0.1) on
2 cores shared with other jobs: load average 12.8 at the start, 13.9 at the end, so wall times
are inflated ~3× over CPU times and wall ratios between near-identical paths (``labelsmooth`` and
``module`` differ by one nn.Module call) scatter by ±0.3; the CPU column is the steadier one. With 2
threads at this load every small call took 35–50 ms (OpenMP waiting for a busy core), which is
why this table uses one. Before the direct path, ``labelsmooth`` at 128×10 and 256×100 was what
``fused`` is here (5–7× torch). This run had the direct path up to 4 Mi elements; it is now
256 Ki (see ``functional.DIRECT_MAX_NUMEL`` for why), so at 1024×1000 ``labelsmooth`` and
``module`` now cost what ``fused`` costs here::

    | shape | provider | median | CPU | × torch | × torch.compile |
    |---|---|---|---|---|---|
    | 128x10 | torch | 1.6 ms | 471 µs | 1.00 | 0.86 |
    | 128x10 | torch.compile | 1.9 ms | 666 µs | 1.16 | 1.00 |
    | 128x10 | labelsmooth | 1.5 ms | 569 µs | 0.97 | 0.83 |
    | 128x10 | module | 1.6 ms | 590 µs | 0.99 | 0.85 |
    | 128x10 | fused | 8.2 ms | 2.9 ms | 5.13 | 4.43 |
    | 256x100 | torch | 870 µs | 669 µs | 1.00 | 0.78 |
    | 256x100 | torch.compile | 1.1 ms | 865 µs | 1.28 | 1.00 |
    | 256x100 | labelsmooth | 927 µs | 688 µs | 1.07 | 0.84 |
    | 256x100 | module | 1.2 ms | 774 µs | 1.35 | 1.06 |
    | 256x100 | fused | 6.4 ms | 3.4 ms | 7.34 | 5.75 |
    | 512x512 | torch | 7.1 ms | 2.3 ms | 1.00 | 1.01 |
    | 512x512 | torch.compile | 7.0 ms | 2.0 ms | 0.99 | 1.00 |
    | 512x512 | labelsmooth | 7.6 ms | 2.3 ms | 1.08 | 1.08 |
    | 512x512 | module | 7.2 ms | 2.2 ms | 1.02 | 1.02 |
    | 512x512 | fused | 23.1 ms | 7.1 ms | 3.27 | 3.29 |
    | 1024x1000 | torch | 24.9 ms | 7.8 ms | 1.00 | 1.28 |
    | 1024x1000 | torch.compile | 19.5 ms | 6.4 ms | 0.78 | 1.00 |
    | 1024x1000 | labelsmooth | 26.0 ms | 8.4 ms | 1.05 | 1.33 |
    | 1024x1000 | module | 21.8 ms | 7.2 ms | 0.87 | 1.12 |
    | 1024x1000 | fused | 64.8 ms | 20.4 ms | 2.60 | 3.33 |
    | 4096x4096 | torch | 900.1 ms | 264.7 ms | 1.00 | 1.84 |
    | 4096x4096 | torch.compile | 487.9 ms | 140.7 ms | 0.54 | 1.00 |
    | 4096x4096 | labelsmooth | 298.3 ms | 90.4 ms | 0.33 | 0.61 |
    | 4096x4096 | module | 376.1 ms | 113.3 ms | 0.42 | 0.77 |
    | 4096x4096 | fused | 256.8 ms | 79.1 ms | 0.29 | 0.53 |
    | 8192x32000 | torch | 14.70 s | 4.34 s | 1.00 | 1.84 |
    | 8192x32000 | torch.compile | 8.00 s | 2.08 s | 0.54 | 1.00 |
    | 8192x32000 | labelsmooth | 7.17 s | 2.15 s | 0.49 | 0.90 |
    | 8192x32000 | module | 7.12 s | 2.15 s | 0.48 | 0.89 |
    | 8192x32000 | fused | 7.83 s | 2.24 s | 0.53 | 0.98 |
    | 8192x128256 | skipped on this CPU (4.2 GB logits; eager torch needs ~3× that beyond) | | | | |

Writes ``--csv`` (default ``benchmarks/results/latency_<device>.csv``, the environment in ``#``
comment lines) and ``--md`` (default ``benchmarks/results/latency_<device>.md``, the markdown
table). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import labelsmooth as ls  # noqa: E402

PROVIDERS = ("torch", "torch.compile", "labelsmooth", "module", "fused")
SHAPES = ((128, 10), (256, 100), (512, 512), (1024, 1000), (4096, 4096), (8192, 32000), (8192, 128256))
BIG = (8192, 128256)


def _providers(names, eps):
    fns = {}
    for name in names:
        if name == "torch":
            fns[name] = lambda x, y: F.cross_entropy(x, y, label_smoothing=eps)
        elif name == "torch.compile":
            fns[name] = torch.compile(lambda x, y: F.cross_entropy(x, y, label_smoothing=eps))
        elif name == "labelsmooth":
            fns[name] = lambda x, y: ls.cross_entropy(x, y, label_smoothing=eps)
        elif name == "module":
            fns[name] = ls.CrossEntropyLoss(label_smoothing=eps)
        elif name == "fused":
            fns[name] = lambda x, y: ls.cross_entropy(x, y, label_smoothing=eps, impl="fused")
        else:
            raise ValueError(f"Expected `provider` to be one of {PROVIDERS}, but got {name!r}.")
    return fns


def _step(fn, src, y, sync):
    """One timed forward + backward on fresh non-leaf logits: (wall s, process CPU s)."""
    x = src * 1.0
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = fn(x, y)
    (g,) = torch.autograd.grad(loss, x)
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def measure(shape, fns, args, device, dtype):
    n, k = shape
    torch.manual_seed(0)
    src = torch.randn(n, k, device=device, dtype=dtype, requires_grad=True)
    y = torch.randint(0, k, (n,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    wall = {p: [] for p in fns}
    cpu = {p: [] for p in fns}
    if n * k <= args.interleave_max:
        for fn in fns.values():  # warm-up (compiles torch.compile for this shape)
            for _ in range(max(args.warmup, 3)):
                _step(fn, src, y, sync)
        for _ in range(args.rounds):
            for p, fn in fns.items():
                w = c = 0.0
                for _ in range(args.inner):
                    dw, dc = _step(fn, src, y, sync)
                    w, c = w + dw, c + dc
                wall[p].append(w / args.inner)
                cpu[p].append(c / args.inner)
    else:
        for p, fn in fns.items():
            for i in range(args.warmup + args.repeat):
                dw, dc = _step(fn, src, y, sync)
                if i >= args.warmup:
                    wall[p].append(dw)
                    cpu[p].append(dc)
                gc.collect()
    rows = []
    for p in fns:
        rows.append({"shape": f"{n}x{k}", "rows": n, "vocab": k, "dtype": str(dtype).replace("torch.", ""),
                     "provider": p, "samples": len(wall[p]), "median_s": C.median(wall[p]),
                     "min_s": min(wall[p]), "cpu_median_s": C.median(cpu[p])})
    base = {r["provider"]: r["median_s"] for r in rows}
    for r in rows:
        r["x_torch"] = r["median_s"] / base["torch"] if "torch" in base else float("nan")
        r["x_compile"] = (r["median_s"] / base["torch.compile"] if "torch.compile" in base
                          else float("nan"))
    return rows


def _fmt_time(s: float) -> str:
    if s != s:
        return "–"
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else (f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s")


def markdown(rows, env, skipped) -> str:
    out = [f"Forward + backward, {rows[0]['dtype'] if rows else ''}, ε = {env['smoothing']}, "
           f"{env['device']}, {env['threads']} threads, torch {env['torch']}, git {env['git_commit']}, "
           f"{env['date_utc']} UTC, load average (1/5/15 min) {env['load_average_1_5_15']} at the "
           f"start and {env.get('load_average_end', '?')} at the end. Median wall time (median "
           "process CPU time) and the wall-median ratios from this one run.", "",
           "| shape | provider | median | CPU | × torch | × torch.compile |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['shape']} | {r['provider']} | {_fmt_time(r['median_s'])} | "
                   f"{_fmt_time(r['cpu_median_s'])} | {r['x_torch']:.2f} | {r['x_compile']:.2f} |")
    for s in skipped:
        out.append(f"| {s} | (skipped) | | | | |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--shapes", default=None, help="comma-separated RxV (default: 128x10 … 8192x32000)")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--smoothing", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--big", action="store_true", help="add 8192x128256 on the CPU")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--inner", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--interleave-max", type=int, default=1 << 20,
                    help="shapes up to this many elements are timed in interleaved rounds")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    else:
        shapes = list(SHAPES)
    skipped = []
    if device.type == "cpu" and BIG in shapes and not (args.big or args.shapes):
        shapes.remove(BIG)
        skipped.append(f"{BIG[0]}x{BIG[1]} (CPU: 4.2 GB logits, eager torch ~3× more; --big)")
    fns = _providers(args.providers.split(","), args.smoothing)
    env = C.environment(device=device.type)
    env["smoothing"] = str(args.smoothing)
    env["direct_max_numel"] = str(ls.functional.DIRECT_MAX_NUMEL)
    rows = []
    for shape in shapes:
        rows += measure(shape, fns, args, device, dtype)
        for r in rows[-len(fns):]:
            print(f"{r['shape']:>12} {r['provider']:>14} {_fmt_time(r['median_s']):>10} "
                  f"cpu {_fmt_time(r['cpu_median_s']):>10}  x torch {r['x_torch']:.2f}  "
                  f"x compile {r['x_compile']:.2f}", flush=True)
        gc.collect()
    env["load_average_end"] = C.load_average()
    csv_path = args.csv or HERE / "results" / f"latency_{device.type}.csv"
    md_path = Path(args.md or HERE / "results" / f"latency_{device.type}.md")
    C.write_csv(csv_path, rows, env)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(rows, env, skipped))
    print()
    print(md_path.read_text())
    print(f"CSV: {csv_path}\nmarkdown: {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
