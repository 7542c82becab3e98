"""Label-smoothed cross-entropy, forward + backward: time and peak memory beyond the logits.

Providers (``--providers``; ε = ``--smoothing``, reduction ``mean``, random class targets):

CPU
* ``torch``            — eager ``F.cross_entropy(x, y, label_smoothing=ε)``;
* ``torch.compile``    — ``torch.compile`` of the same function;
* ``fused``            — ``labelsmooth.cross_entropy(..., impl="fused")`` (kernels as chosen by
  ``auto``: above 4 Mi elements the hand-written native ones for float32, else Inductor-compiled
  when a compiler works, else chunked eager);
* ``fused-inplace``    — the same with ``inplace_backward=True``;
* ``fused-inductor`` / ``fused-inductor-inplace`` — the Inductor-compiled kernels
  (``LABELSMOOTH_FUSED_KERNELS=inductor``): what float32 ran before the native kernels;
* ``fused-eager`` / ``fused-eager-inplace`` — forced chunked pure-PyTorch path
  (``LABELSMOOTH_FUSED_KERNELS=eager``): what runs without a C compiler;
* ``fused-4k-pages``   — ``fused`` with ``LABELSMOOTH_HUGEPAGES=0`` (gradient buffer in ordinary
  pages), to show what the huge-page allocation of the gradient buys;
* floors: ``clone`` (``x.clone()``: one read and one write into fresh memory — what producing a
  new gradient tensor costs at least) and ``exp`` (``torch.exp(x, out=buf)`` into existing memory:
  one exponential per element; the fused in-place path needs two, so its floor is 2 × exp).

CUDA (``--device cuda``): ``torch``, ``torch.compile``, ``liger`` (``LigerCrossEntropyLoss`` when
importable, else skipped), ``triton`` and ``triton-inplace`` (``labelsmooth`` with
``impl="triton"``), and ``copy`` (a device copy of the logits, the bandwidth baseline). Effective
bandwidth = bytes that must move ÷ time: 3 × logits bytes for a loss (read in forward, read in
backward, write the gradient) and 2 × for the copy; ``bw/copy`` is the ratio to the copy.

Method (see ``benchmarks/_common.py``): every (provider, shape) runs in a fresh process. Time: the
median of ``--repeat`` forward+backward calls (``torch.autograd.grad`` of the loss w.r.t. the
logits) after ``--warmup`` calls, default allocator. The logits are non-leaf for every provider,
as a model produces them: before every call, untimed, ``x = src * 1.0`` from a leaf ``src`` (the
in-place providers refuse leaves, so leaf logits would time them out of place). Peak memory beyond the logits (CPU): a second fresh process with
``MALLOC_MMAP_THRESHOLD_=65536`` so the resident set follows live tensors; after a warm-up, reset
``VmHWM`` and report ``VmHWM − VmRSS`` around one call, the returned gradient included. CUDA:
``max_memory_allocated`` over one call minus the allocated memory before it.

Usage::

    python benchmarks/bench_cross_entropy.py                 # default CPU table, a few minutes
    python benchmarks/bench_cross_entropy.py --full          # rows 1k…64k × vocab 1k…256k
    python benchmarks/bench_cross_entropy.py --shapes 8192x32000 --providers torch,fused
    python benchmarks/bench_cross_entropy.py --device cuda   # GPU table, bf16 and fp32

Re-taken 2026-12-02 (git ``d0ba29c`` plus the ``fused-inductor`` providers of ``2f89335``,
``--shapes 8192x32000 --repeat 7``, float32, ε=0.1, 2 threads, load 0.4 → 1.5). Medians of 7 in
fresh processes, ratios from this one run; the worker confirmed that exactly the in-place
providers wrote in place:

====================== ======== ======== ======== =============== ==================
provider               median s min s    × torch  × torch.compile peak beyond logits
====================== ======== ======== ======== =============== ==================
torch                  2.21     1.60     1.00     0.26            3.00 ×
torch.compile          0.568    0.547    3.90     1.00            1.00 ×
fused                  0.535    0.214    4.14     1.06            1.00 ×
fused-inplace          0.124    0.105    17.9     4.58            0.0001 ×
fused-inductor         0.343    0.276    6.45     1.66            1.00 ×
fused-inductor-inplace 0.194    0.155    11.4     2.92            0.0001 ×
fused-eager            1.56     0.981    1.42     0.36            1.00 ×
fused-eager-inplace    0.946    0.749    2.34     0.60            0.013 ×
fused-4k-pages         0.414    0.377    5.36     1.37            1.00 ×
clone                  0.443    0.423    5.00     1.28            1.00 ×
exp (floor)            0.150    0.148    14.8     3.80
====================== ======== ======== ======== =============== ==================

In place, the native kernels (``fused-inplace``) take 0.124 s against 0.194 s for the Inductor
ones: 1.6×, as ``bench_terms.py`` measures. Out of place, every provider is dominated by the
fresh 1 GiB gradient: ``clone`` alone (allocate and write it) takes 0.44 s here, and the
``fused`` calls spread from 0.21 to over 0.5 s with whether the buffer got transparent huge
pages (``fused-inductor``'s median landing below ``fused``'s is that spread, not its kernels).

Writes a CSV (``--csv``; default ``benchmarks/results/cross_entropy_<device>.csv``) with the
environment in ``#`` comment lines. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C

CPU_PROVIDERS = (
    "torch",
    "torch.compile",
    "fused",
    "fused-inplace",
    "fused-inductor",
    "fused-inductor-inplace",
    "fused-eager",
    "fused-eager-inplace",
    "fused-4k-pages",
    "clone",
    "exp",
)
CUDA_PROVIDERS = ("torch", "torch.compile", "liger", "triton", "triton-inplace", "copy")
#: Environment of a provider's worker process (both the timing and the memory process).
PROVIDER_ENV = {
    "fused-inductor": {"LABELSMOOTH_FUSED_KERNELS": "inductor"},
    "fused-inductor-inplace": {"LABELSMOOTH_FUSED_KERNELS": "inductor"},
    "fused-eager": {"LABELSMOOTH_FUSED_KERNELS": "eager"},
    "fused-eager-inplace": {"LABELSMOOTH_FUSED_KERNELS": "eager"},
    "fused-4k-pages": {"LABELSMOOTH_HUGEPAGES": "0"},
}
#: Providers that must write the gradient over the logits: the worker checks that they did.
INPLACE = {"fused-inplace", "fused-inductor-inplace", "fused-eager-inplace", "triton-inplace",
           "liger"}
FLOORS = {"clone", "exp", "copy"}

GOAL_SHAPE = (8192, 32000)
DEFAULT_CPU = [  # (rows, vocab, providers or None for all defaults)
    (8192, 32000, CPU_PROVIDERS),
    (2048, 32000, ("torch", "torch.compile", "fused", "fused-inplace", "clone", "exp")),
    (1024, 256000, ("torch", "torch.compile", "fused", "fused-inplace", "clone", "exp")),
    (32768, 2048, ("torch", "torch.compile", "fused", "fused-inplace", "clone", "exp")),
]
FULL_ROWS = (1024, 4096, 16384, 65536)
FULL_VOCAB = (1024, 8192, 32000, 128256, 256000)
CUDA_SHAPES = [(8192, 32000), (8192, 128256), (32768, 128256), (4096, 256000)]


# ------------------------------------------------------------------------------------------------
# Worker: one provider, one shape, in this (fresh) process.


def _make(provider: str, src, y, eps: float, state: dict):
    """Return (call, setup): ``call()`` runs forward + backward and returns the gradient (and
    records in ``state["in_place"]`` whether it was written over the logits).

    Every provider gets non-leaf logits, as a model's output layer produces them: ``setup``
    (untimed, before every call) makes ``x = src * 1.0`` from the leaf ``src``, and ``call``
    differentiates with respect to that ``x``. The in-place providers refuse to overwrite a leaf
    (it would destroy data the caller owns), so leaf logits would silently time them out of place;
    a fresh ``x`` each call also means they never see logits overwritten by the previous call.
    """
    import torch
    import torch.nn.functional as F

    def setup():
        state.pop("x", None)  # free the previous logits (and gradient) first
        with torch.enable_grad():
            state["x"] = src * 1.0

    def autograd_of(loss_fn):
        def call():
            x = state["x"]
            loss = loss_fn(x, y)
            (g,) = torch.autograd.grad(loss, x)
            state["in_place"] = g.data_ptr() == x.data_ptr()
            return g

        return call

    if provider == "torch":
        return autograd_of(lambda a, b: F.cross_entropy(a, b, label_smoothing=eps)), setup
    if provider == "torch.compile":
        fn = torch.compile(lambda a, b: F.cross_entropy(a, b, label_smoothing=eps))
        return autograd_of(fn), setup
    if provider.startswith(("fused", "triton")):
        import labelsmooth as ls

        impl = "triton" if provider.startswith("triton") else "fused"
        inplace = provider.endswith("inplace")
        return autograd_of(
            lambda a, b: ls.cross_entropy(
                a, b, label_smoothing=eps, impl=impl, inplace_backward=inplace
            )
        ), setup
    if provider == "liger":
        from liger_kernel.transformers import LigerCrossEntropyLoss

        loss = LigerCrossEntropyLoss(label_smoothing=eps)
        return autograd_of(lambda a, b: loss(a, b)), setup
    if provider in ("clone", "copy"):
        return (lambda: src.detach().clone()), None
    if provider == "exp":
        buf = torch.empty_like(src)
        return (lambda: torch.exp(src.detach(), out=buf)), None
    raise ValueError(
        f"Expected `provider` to be one of {CPU_PROVIDERS + CUDA_PROVIDERS}, but got {provider!r}."
    )


def worker(case: dict) -> dict:
    import torch

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    dev = torch.device(case["device"])
    dtype = getattr(torch, case["dtype"])
    n, k = case["rows"], case["vocab"]
    src = torch.randn(n, k, device=dev, dtype=dtype).requires_grad_()
    y = torch.randint(0, k, (n,), device=dev)
    state: dict = {}
    call, setup = _make(case["provider"], src, y, case["smoothing"], state)
    cuda = dev.type == "cuda"
    if setup is not None:  # one checked call: in-place providers must really write in place
        setup()
        call()
        in_place = bool(state.get("in_place"))
        if (case["provider"] in INPLACE) != in_place:
            return {"error": f"{case['provider']}: gradient written in place = {in_place}"}

    def once():
        g = call()
        del g

    if case["measure"] == "time":
        timer = C.time_cuda if cuda else C.time_cpu
        ts = timer(once, warmup=case["warmup"], repeat=case["repeat"], setup=setup)
        return {"median_s": C.median(ts), "min_s": min(ts), "times": ts}
    for _ in range(case["warmup"]):
        if setup is not None:
            setup()
        once()
    peak = (C.peak_cuda_beyond if cuda else C.peak_rss_beyond)(once, setup)
    return {"peak_beyond_bytes": peak}


# ------------------------------------------------------------------------------------------------
# Driver


def _bytes_of(rows: int, vocab: int, dtype: str) -> int:
    return rows * vocab * {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}[dtype]


def _run_case(provider, rows, vocab, dtype, args) -> dict:
    base = {
        "provider": provider,
        "rows": rows,
        "vocab": vocab,
        "dtype": dtype,
        "device": args.device,
        "threads": args.threads,
        "smoothing": args.smoothing,
        "warmup": args.warmup,
        "repeat": args.repeat,
    }
    env = PROVIDER_ENV.get(provider, {})
    res = {"provider": provider, "rows": rows, "vocab": vocab, "dtype": dtype}
    if provider == "liger" and importlib.util.find_spec("liger_kernel") is None:
        res["error"] = "skipped: liger_kernel not importable"
        return res
    t = C.run_worker(__file__, {**base, "measure": "time"}, extra_env=env, timeout=args.timeout)
    if "error" in t:
        res["error"] = t["error"]
        return res
    res.update(median_s=t["median_s"], min_s=t["min_s"])
    if not args.no_memory and provider not in ("exp",):
        menv = {**env, **(C.MEASURE_ENV if args.device == "cpu" else {})}
        m = C.run_worker(
            __file__,
            {**base, "measure": "memory", "warmup": 1},
            extra_env=menv,
            timeout=args.timeout,
        )
        if "error" in m:
            res["error"] = "memory: " + m["error"]
        else:
            res["peak_beyond_MiB"] = m["peak_beyond_bytes"] / 2**20
            res["peak/logits"] = m["peak_beyond_bytes"] / _bytes_of(rows, vocab, dtype)
    return res


def _annotate(rows: list[dict], device: str) -> None:
    """Ratios within one (shape, dtype) group, measured in the same run."""
    by = {r["provider"]: r for r in rows if "median_s" in r}
    t = lambda p: by[p]["median_s"] if p in by else None
    for r in rows:
        if "median_s" not in r:
            continue
        s = r["median_s"]
        elems = r["rows"] * r["vocab"]
        r["ns/elem"] = s / elems * 1e9
        if t("torch"):
            r["x_vs_torch"] = t("torch") / s
        if t("torch.compile"):
            r["x_vs_compile"] = t("torch.compile") / s
        if device == "cpu" and t("exp"):
            r["/2exp"] = s / (2 * t("exp"))
        if device == "cuda":
            nbytes = _bytes_of(r["rows"], r["vocab"], r["dtype"])
            moved = (2 if r["provider"] == "copy" else 3) * nbytes
            r["GB/s"] = moved / s / 1e9
            if "copy" in by:
                r["bw/copy"] = r["GB/s"] / (2 * nbytes / by["copy"]["median_s"] / 1e9)


def _plan(args) -> list[tuple[int, int, str, tuple[str, ...]]]:
    if args.device == "cuda":
        provs = tuple(args.providers) if args.providers else CUDA_PROVIDERS
        dts = args.dtypes or ["bfloat16", "float32"]
        shapes = args.shapes or CUDA_SHAPES
        return [(n, k, dt, provs) for dt in dts for n, k in shapes]
    dts = args.dtypes or ["float32"]
    if args.shapes:
        provs = tuple(args.providers) if args.providers else CPU_PROVIDERS
        return [(n, k, dt, provs) for dt in dts for n, k in args.shapes]
    if args.full:
        provs = (
            tuple(args.providers)
            if args.providers
            else ("torch", "torch.compile", "fused", "fused-inplace", "clone", "exp")
        )
        out = []
        for dt in dts:
            for n in FULL_ROWS:
                for k in FULL_VOCAB:
                    if _bytes_of(n, k, dt) <= args.max_gib * 2**30:
                        out.append((n, k, dt, provs))
        return out
    return [
        (n, k, dt, tuple(p for p in provs if not args.providers or p in args.providers))
        for dt in dts
        for n, k, provs in DEFAULT_CPU
    ]


def _shape(text: str) -> tuple[int, int]:
    try:
        n, k = text.lower().split("x")
        return int(n), int(k)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxVOCAB such as 8192x32000, got {text!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--providers",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated subset of providers",
    )
    p.add_argument(
        "--shapes",
        type=lambda s: [_shape(v) for v in s.split(",")],
        default=None,
        help="comma-separated ROWSxVOCAB list (overrides the default table)",
    )
    p.add_argument(
        "--dtypes",
        type=lambda s: s.split(","),
        default=None,
        help="comma-separated dtypes (CPU default float32; CUDA bfloat16,float32)",
    )
    p.add_argument("--full", action="store_true", help="the whole rows × vocab grid (CPU)")
    p.add_argument(
        "--max-gib", type=float, default=2.0, help="--full skips logits larger than this (GiB)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per worker process")
    p.add_argument("--csv", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker is not None:
        import json

        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device here", file=sys.stderr)
            return 2
    env = C.environment(threads=args.threads, device=args.device)
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    cols = [
        "provider",
        "median_s",
        "min_s",
        "ns/elem",
        "x_vs_torch",
        "x_vs_compile",
        "/2exp" if args.device == "cpu" else "GB/s",
        "peak_beyond_MiB",
        "peak/logits",
        "error",
    ]
    if args.device == "cuda":
        cols.insert(7, "bw/copy")
    all_rows: list[dict] = []
    for n, k, dt, provs in _plan(args):
        group = [_run_case(pv, n, k, dt, args) for pv in provs]
        _annotate(group, args.device)
        all_rows += group
        mib = _bytes_of(n, k, dt) / 2**20
        print(
            f"\n{n} x {k} {dt} (logits {mib:.0f} MiB), eps={args.smoothing}, "
            f"threads={args.threads}, load {C.load_average()}"
        )
        print(C.format_table(group, cols), flush=True)
        if args.device == "cpu" and (n, k) == GOAL_SHAPE and dt == "float32":
            _goals(group)
    env["load_average_end"] = C.load_average()
    out = args.csv or HERE / "results" / f"cross_entropy_{args.device}.csv"
    print(f"\nwrote {C.write_csv(out, all_rows, env)}")
    return 0


def _goals(group: list[dict]) -> None:
    """The issue's goals at 8192 × 32000 float32, checked on this run's numbers."""
    by = {r["provider"]: r for r in group}

    def check(name, prov, vs, factor, peak_max):
        r = by.get(prov, {})
        if "median_s" not in r or vs not in by or "median_s" not in by[vs]:
            return
        ratio = by[vs]["median_s"] / r["median_s"]
        ok = ratio >= factor
        line = f"  {name}: {ratio:.2f}x vs {vs} (goal >= {factor}x) {'MET' if ok else 'NOT MET'}"
        if peak_max is not None and "peak/logits" in r:
            pk = r["peak/logits"]
            line += f"; peak {pk:.3f} x logits (goal <= {peak_max}) "
            line += "MET" if pk <= peak_max else "NOT MET"
        print(line)

    print("goals:")
    check("fused-inplace", "fused-inplace", "torch", 8, 0.05)
    check("fused-inplace", "fused-inplace", "torch.compile", 2, None)
    check("fused", "fused", "torch", 4, 1.05)
    check("fused", "fused", "torch.compile", 1.1, None)


if __name__ == "__main__":
    raise SystemExit(main())
