"""Registers, spills and vector accesses of every Triton kernel variant, compiled ahead of time.

No GPU needed: each variant of :mod:`labelsmooth.ops._triton_kernels` is compiled by Triton for
an sm_90 target (H100/H200) at the launch configuration of a 128256-wide vocabulary
(``triton_ce._launch_cfg``), and its PTX is assembled by ``ptxas -v`` with Triton's own flags (the
ptxas Triton uses for sm_90, else ``$PTXAS`` or the first on ``PATH``), which reports the registers per thread and the bytes of
register spills. The PTX is also searched for 128-bit global loads/stores
(``ld/st.global.v4.b32``), the precondition for moving the logits at bandwidth.

Specialisation as at a real launch: unit column stride and 16-divisible pointers and row stride
(K a multiple of 16), so Triton can vectorise.

Usage::

    python benchmarks/triton_resources.py            # table
    python benchmarks/triton_resources.py --json     # one JSON object (used by the tests)
    python benchmarks/triton_resources.py --csv out.csv

Exit status 0; 3 when the ahead-of-time API or ptxas is missing (nothing measured). Must run
without ``TRITON_INTERPRET=1`` (the interpreter's ``triton.jit`` objects cannot be compiled); the
script removes it from its own environment before importing Triton.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

F32 = "*fp32"
# the optional terms' arguments, unused (constexpr flags off) in the plain variants
PROB_TERM_PTRS = dict(qx_ptr=F32, sex_ptr=F32, qe_ptr=F32, te_ptr=F32, dn_ptr=F32)
NO_PROB_TERMS = dict(TERMS=False, SEX=False, QE=False, TE=False)
PROB_BWD_TERMS = dict(cp_ptr=F32, cpq_ptr=F32, cpx_ptr=F32, low_ptr="*i8", gamma="fp32",
                      eps1="fp32")
NO_PROB_BWD = dict(TERMS=False, HAS_CPQ=False, HAS_CPX=False, POW=1, FOCAL=False, POLY=False)
NO_BLOCK_TERMS = dict(TERMS=False, HAS_CPS=False, HAS_CPX=False, POW=1, FOCAL=False)


def _ptxas() -> str | None:
    """The ptxas Triton itself runs for sm_90 (its bundled CUDA 13 copy), else $PTXAS / PATH."""
    cands = []
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        cands.append(get_ptxas(90).path)
    except Exception:  # pragma: no cover - other Triton layouts / no NVIDIA backend
        pass
    cands += [os.environ.get("PTXAS"), shutil.which("ptxas")]
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def variants(vocab: int = 128256):
    """(name, kernel, arg types, constexprs, 16-divisible args) for every variant worth a row."""
    from labelsmooth.ops import _triton_kernels as kern
    from labelsmooth.ops.triton_ce import _launch_cfg

    block, warps = _launch_cfg(vocab)
    out = []
    for dt in ("bf16", "fp32"):
        common = dict(y_ptr="*i64", ct_ptr=F32, cs_ptr=F32, cz_ptr=F32, s_ptr=F32, s_sum_ptr=F32,
                      K="i32", s_uniform="fp32", softcap="fp32", x_ptr="*" + dt, stride_xr="i32")
        combos = [(0, False, False), (1, False, False), (2, False, False), (1, True, True),
                  (2, True, True), (0, True, True)]
        for smooth, z, cap in combos if dt == "bf16" else combos[3:4]:
            c = dict(stride_xc=1, SMOOTH=smooth, HAS_Z=z, SOFTCAP=cap, BLOCK=block)
            tag = f"{dt} smooth={smooth} z={int(z)} softcap={int(cap)}"
            out.append((f"index_fwd {tag}", kern._index_fwd,
                        dict(common, loss_ptr=F32, lse_ptr=F32, m_ptr=F32, logd_ptr=F32), c,
                        ("x_ptr", "stride_xr", "K")))
            out.append((f"index_bwd {tag}", kern._index_bwd,
                        dict(common, dx_ptr="*" + dt, stride_dr="i32", m_ptr=F32, logd_ptr=F32,
                             g_ptr=F32),
                        dict(c, stride_dc=1),
                        ("x_ptr", "stride_xr", "dx_ptr", "stride_dr", "K")))
        # targets in float32 next to bf16 logits (soft labels kept in full precision): more
        # registers than bf16 targets
        pc = dict(x_ptr="*" + dt, stride_xr="i32", t_ptr=F32, stride_tr="i32",
                  w_ptr=F32, b_ptr=F32, rs_ptr=F32, cz_ptr=F32, m_ptr=F32, logd_ptr=F32, K="i32",
                  a="fp32", b_uniform="fp32", softcap="fp32")
        for flags in ((False, True) if dt == "bf16" else (True,)):
            c = dict(stride_xc=1, stride_tc=1, HAS_W=flags, HAS_B=flags, HAS_Z=flags,
                     SOFTCAP=flags, BLOCK=block)
            tag = f"{dt} w=b=z=softcap={int(flags)}"
            out.append((f"prob_fwd {tag}", kern._prob_fwd,
                        dict(pc, loss_ptr=F32, lse_ptr=F32, qsum_ptr=F32, **PROB_TERM_PTRS),
                        dict(c, **NO_PROB_TERMS),
                        ("x_ptr", "stride_xr", "t_ptr", "stride_tr", "K")))
            for need_dt in ((False, True) if flags else (False,)):
                out.append((f"prob_bwd {tag} dt={int(need_dt)}", kern._prob_bwd,
                            dict(pc, dx_ptr="*" + dt, stride_dr="i32", dt_ptr=F32,
                                 stride_er="i32", qsum_ptr=F32, g_ptr=F32, **PROB_BWD_TERMS),
                            dict(c, stride_dc=1, stride_ec=1, NEED_DT=need_dt, **NO_PROB_BWD),
                            ("x_ptr", "stride_xr", "t_ptr", "stride_tr", "dx_ptr", "stride_dr",
                             "dt_ptr", "stride_er", "K")))
        if dt == "bf16":
            # the optional terms (confidence_penalty + poly + focal γ = 2, all on: the worst case)
            c = dict(stride_xc=1, stride_tc=1, HAS_W=True, HAS_B=False, HAS_Z=True, SOFTCAP=False,
                     BLOCK=block)
            tag = f"{dt} w=z=1 terms=penalty+poly+focal2"
            out.append((f"prob_fwd {tag}", kern._prob_fwd,
                        dict(pc, loss_ptr=F32, lse_ptr=F32, qsum_ptr=F32, **PROB_TERM_PTRS),
                        dict(c, TERMS=True, SEX=True, QE=True, TE=False),
                        ("x_ptr", "stride_xr", "t_ptr", "stride_tr", "K")))
            out.append((f"prob_focal {tag}", kern._prob_focal,
                        dict(pc, ref_ptr=F32, lse_ptr=F32, low_ptr="*i8", fs_ptr=F32,
                             as_ptr=F32, gamma="fp32"),
                        dict(stride_xc=1, stride_tc=1, HAS_W=True, HAS_B=False, SOFTCAP=False,
                             POW=2, BLOCK=block),
                        ("x_ptr", "stride_xr", "t_ptr", "stride_tr", "K")))
            out.append((f"prob_bwd {tag} dt=0", kern._prob_bwd,
                        dict(pc, dx_ptr="*" + dt, stride_dr="i32", dt_ptr=F32, stride_er="i32",
                             qsum_ptr=F32, g_ptr=F32, **PROB_BWD_TERMS),
                        dict(c, stride_dc=1, stride_ec=1, NEED_DT=False, TERMS=True,
                             HAS_CPQ=True, HAS_CPX=True, POW=2, FOCAL=True, POLY=True),
                        ("x_ptr", "stride_xr", "t_ptr", "stride_tr", "dx_ptr", "stride_dr",
                         "dt_ptr", "stride_er", "K")))
        # the two-stage contract (fused linear and vocabulary-parallel losses): a block's
        # statistics and its gradient, with the target mask of a column block
        bc = dict(x_ptr="*" + dt, stride_xr="i32", y_ptr="*i64", on_ptr="*i8", s_ptr=F32,
                  K="i32", s_uniform="fp32", softcap="fp32")
        stats = dict(bc, m_ptr=F32, d_ptr=F32, xy_ptr=F32, sx_ptr=F32, sex_ptr=F32, ses_ptr=F32,
                     n_ptr=F32)
        grad = dict(bc, dx_ptr="*" + dt, stride_dr="i32", ref_ptr=F32, lse_ptr=F32, cp_ptr=F32,
                    ct_ptr=F32, cs_ptr=F32, g_ptr=F32, cps_ptr=F32, cpx_ptr=F32, cpd_ptr=F32,
                    low_ptr="*i8", gamma="fp32")
        for smooth, cap in ((1, False), (2, True)) if dt == "bf16" else ((1, True),):
            c = dict(stride_xc=1, SMOOTH=smooth, SOFTCAP=cap, HAS_MASK=True, BLOCK=block)
            tag = f"{dt} smooth={smooth} softcap={int(cap)} mask=1"
            out.append((f"block_partials {tag}", kern._block_partials, stats,
                        dict(c, SEX=False, SES=False, TIES=False), ("x_ptr", "stride_xr", "K")))
            out.append((f"block_grad {tag}", kern._block_grad, grad,
                        dict(c, stride_dc=1, **NO_BLOCK_TERMS),
                        ("x_ptr", "stride_xr", "dx_ptr", "stride_dr", "K")))
        if dt == "bf16":
            # the optional terms, every flag on (share vector, penalty, Poly-1, focal): the
            # worst case for registers; and FLSD-53
            c = dict(stride_xc=1, SMOOTH=2, SOFTCAP=False, HAS_MASK=True, BLOCK=block)
            tag = f"{dt} smooth=2 mask=1 terms=penalty+poly"
            out.append((f"block_partials {tag}", kern._block_partials, stats,
                        dict(c, SEX=True, SES=True, TIES=True), ("x_ptr", "stride_xr", "K")))
            for pw, name in ((2, "focal2"), (-1, "flsd53")):
                out.append((f"block_focal {dt} smooth=2 {name}", kern._block_focal,
                            dict(bc, ref_ptr=F32, lse_ptr=F32, low_ptr="*i8", fs_ptr=F32,
                                 as_ptr=F32, gamma="fp32"),
                            dict(stride_xc=1, SMOOTH=2, SOFTCAP=False, POW=pw, BLOCK=block),
                            ("x_ptr", "stride_xr", "K")))
                out.append((f"block_grad {tag}+{name}", kern._block_grad, grad,
                            dict(c, stride_dc=1, TERMS=True, HAS_CPS=True, HAS_CPX=True,
                                 POW=pw, FOCAL=True),
                            ("x_ptr", "stride_xr", "dx_ptr", "stride_dr", "K")))
    return out, warps


def compile_ptx(fn, types, consts, div16, warps: int, arch: int = 90) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {n: ("constexpr" if n in consts else types[n]) for n in fn.arg_names}
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps}).asm["ptx"]


_USED = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")


def ptxas_report(ptx: str, ptxas: str, arch: str = "sm_90a") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        # the flags Triton's make_cubin passes (triton/backends/nvidia/compiler.py)
        res = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed: {res.stderr[-2000:]}")
    text = res.stderr + res.stdout
    used, spill, stack = _USED.search(text), _SPILL.search(text), _STACK.search(text)
    return {"registers": int(used.group(1)) if used else None,
            "spill_stores": int(spill.group(1)) if spill else 0,
            "spill_loads": int(spill.group(2)) if spill else 0,
            "stack_bytes": int(stack.group(1)) if stack else 0}


def resident_warps(regs: int | None, warps_per_cta: int) -> int | None:
    """Warps resident per SM on sm_90 as limited by registers (65536 per SM, allocated per warp
    in units of 256, at most 64 warps per SM), whole CTAs only."""
    if not regs:
        return None
    per_warp = -(-regs * 32 // 256) * 256
    ctas = min(65536 // (per_warp * warps_per_cta), 64 // warps_per_cta)
    return ctas * warps_per_cta


def measure(vocab: int = 128256) -> list[dict]:
    ptxas = _ptxas()
    if ptxas is None:
        raise FileNotFoundError("no ptxas (set $PTXAS, or install Triton's NVIDIA backend)")
    rows = []
    vs, warps = variants(vocab)
    for name, fn, types, consts, div16 in vs:
        ptx = compile_ptx(fn, types, consts, div16, warps)
        rep = ptxas_report(ptx, ptxas)
        kind = name.split()[0]
        rows.append({"variant": name, "num_warps": warps, "block": consts["BLOCK"], **rep,
                     "warps_per_sm": resident_warps(rep["registers"], warps),
                     "v4_load": "ld.global.v4.b32" in ptx,
                     "v4_store": (("st.global.v4.b32" in ptx) if kind.endswith(("bwd", "grad"))
                                  else None)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--csv", default=None)
    p.add_argument("--vocab", type=int, default=128256)
    args = p.parse_args(argv)
    try:
        rows = measure(args.vocab)
    except (ImportError, FileNotFoundError) as err:
        print(f"triton_resources: nothing measured: {err}", file=sys.stderr)
        return 3
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if args.json:
        print(json.dumps(rows))
        return 0
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
