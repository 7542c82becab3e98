"""GPU-only checks of the paths the CPU interpreter and gloo cannot prove (issue 17 item 5).

Each judges every element against float64 truth computed from the same rounded inputs: error ≤
the peer's own error (PyTorch in the same dtype) + a relative tolerance (``assert_within_truth``,
the judge of tests/test_triton_ce.py, whose CPU tests prove that it rejects a kernel off by 1 %).

* the fused linear loss on the Triton path: loss, dh, dW, db, and its peak memory against the
  chunk budget (the in-place chunk gradient of issue 17 item 2);
* the probability-target gradient with respect to the target (distillation);
* the vocabulary-parallel loss over NCCL on 2 GPUs (skipped with fewer).

All skip without CUDA; ``benchmarks/gpu_check.sh`` runs them on a GPU machine.
"""

from __future__ import annotations

import datetime
import socket
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth.linear import linear_cross_entropy
from labelsmooth.ops import linear_ce
from tests.helpers import assert_within_truth, torch_loss_and_grad

HAS_CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (GPU-only checks)")]
RTOL = {torch.float32: 2.0 ** -14, torch.bfloat16: 2.0 ** -8}


def _judge_all(ours, peer, truth, dtype, names, scales=None, rtol=None):
    for i, (o, p, t, n) in enumerate(zip(ours, peer, truth, names)):
        assert_within_truth(o, t, rtol=rtol or RTOL[dtype], peer=p, what=n,
                            scale=scales[i] if scales else None)


# --- fused linear + cross-entropy on the Triton path ---------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_gpu_fused_linear_parity_and_memory(dtype):
    n, h, v = 4096, 1024, 32003
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    hid64 = torch.randn(n, h, generator=g, dtype=torch.float64)
    w64 = torch.randn(v, h, generator=g, dtype=torch.float64) / h ** 0.5
    b64 = torch.randn(v, generator=g, dtype=torch.float64) * 0.1
    y = torch.randint(0, v, (n,), generator=g)
    y[::7] = -100
    cw = (torch.rand(v, generator=g, dtype=torch.float64) + 0.5).to(dtype).double()  # as seen
    hid, w, b = (t.to(dtype).to(dev) for t in (hid64, w64, b64))
    y, cw = y.to(dev), cw.to(dev)
    kw = dict(label_smoothing=0.1)
    go = torch.tensor(1.25, device=dev, dtype=torch.float64)  # exact in bf16

    def grads(fn, tensors, scale):
        leaves = [t.detach().clone().requires_grad_() for t in tensors]
        out = fn(*leaves)
        return (out.detach(), *torch.autograd.grad(out, leaves, scale.to(out.dtype)))

    peer = grads(lambda a, c, d: F.cross_entropy(F.linear(a, c, d), y, cw.to(dtype), **kw),
                 (hid, w, b), go)
    # memory: everything beyond inputs and the returned gradients
    leaves = [t.detach().clone().requires_grad_() for t in (hid, w, b)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = linear_cross_entropy(leaves[0], leaves[1], y, leaves[2], class_weight=cw.to(dtype),
                               impl="triton", **kw)
    out.backward(go.to(out.dtype))
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    ours = (out.detach(), *(t.grad for t in leaves))
    # Truth: float64 from the logits as rounded in the dtype (what both losses see), then
    # dh = G W, dW = Gᵀ h, db = Σ_n G in float64: sums of rounded products, so their tolerance
    # scales with |G||W|, |G|ᵀ|h| and Σ|G| (cancellation can make the truth itself tiny).
    h64, w64 = hid.double(), w.double()
    x64 = F.linear(hid, w, b).double().requires_grad_()
    l64 = F.cross_entropy(x64, y, cw, **kw)
    (g64,) = torch.autograd.grad(l64, x64, go)
    truth = (l64.detach(), g64 @ w64, g64.t() @ h64, g64.sum(0))
    scales = [None, g64.abs() @ w64.abs(), g64.abs().t() @ h64.abs(), g64.abs().sum(0)]
    # The chunk's GEMM may round a logit differently from the whole-batch GEMM of the truth and
    # the peer (cuBLAS picks its kernel by shape): one ulp of x moves p by |x|·ulp, so the
    # relative tolerance grows with the largest |logit|.
    rtol = RTOL[dtype] * max(1.0, float(x64.detach().abs().max()))
    _judge_all(ours, peer, truth, dtype, ("loss", "dh", "dW", "db"), scales, rtol)
    chunks = linear_ce.plan_chunks(n, v, dtype, dev, engine="triton_ce")
    esz = hid.element_size()
    grads_out = (n * h + v * h + v) * esz  # the gradients handed back
    fp32_acc = (v * h + v) * 4  # float32 dW / db accumulators
    allowed = chunks.chunk_bytes + grads_out + fp32_acc + (16 << 20)
    assert extra <= allowed, (extra / 2 ** 20, allowed / 2 ** 20, chunks)


# --- probability targets: the gradient with respect to the target --------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_gpu_prob_target_gradient_wrt_the_target(dtype):
    r, k = 64, 32003
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(r, k, generator=g, dtype=torch.float64) * 3).to(dtype).to(dev)
    t = torch.softmax(torch.randn(r, k, generator=g, dtype=torch.float64) * 2, 1).to(dtype).to(dev)
    # class weights rounded to the dtype first: the truth must see the weights the losses see
    wt = (torch.rand(k, generator=g, dtype=torch.float64) + 0.5).to(dtype).double().to(dev)
    up = (torch.rand(r, generator=g, dtype=torch.float64) + 0.5).to(dtype).double().to(dev)

    def run(fn, xx, tt, w, **extra):
        xl, tl = xx.detach().clone().requires_grad_(), tt.detach().clone().requires_grad_()
        out = fn(xl, tl, weight=w, label_smoothing=0.1, reduction="none", **extra)
        dx, dt = torch.autograd.grad(out, (xl, tl), up.to(out.dtype))
        return out.detach(), dx, dt

    truth = run(F.cross_entropy, x.double(), t.double(), wt)
    peer = run(F.cross_entropy, x, t, wt.to(dtype))
    ours = run(ls.cross_entropy, x, t, wt.to(dtype), impl="triton")
    _judge_all(ours, peer, truth, dtype, ("loss", "d/dlogits", "d/dtarget"))


# --- vocabulary-parallel over NCCL ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_worker(rank: int, world: int, port: int, workdir: str) -> None:
    import torch.distributed as dist

    from labelsmooth.distributed import vocab_parallel_cross_entropy

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        dev = torch.device("cuda", rank)
        r, k = 64, 32003
        g = torch.Generator().manual_seed(2)
        full = torch.randn(r, k, generator=g, dtype=torch.float64) * 3
        y = torch.randint(0, k, (r,), generator=g)
        y[::5] = -100
        lo, hi = k * rank // world, k * (rank + 1) // world  # contiguous shards in rank order
        for dtype in (torch.float32, torch.bfloat16):
            xr = full.to(dtype)
            for validate in (None, True):
                local = xr[:, lo:hi].to(dev).requires_grad_()
                loss = vocab_parallel_cross_entropy(local * 1.0, y.to(dev), label_smoothing=0.1,
                                                    validate=validate)
                loss.backward()
                truth = torch_loss_and_grad(xr.double(), y, torch.ones((), dtype=torch.float64),
                                            label_smoothing=0.1)
                peer = torch_loss_and_grad(xr, y, torch.ones((), dtype=torch.float64),
                                           label_smoothing=0.1)
                assert_within_truth(loss.detach().cpu(), truth[0], rtol=RTOL[dtype],
                                    peer=peer[0], what=f"loss {dtype}")
                assert_within_truth(local.grad.cpu(), truth[1][:, lo:hi], rtol=RTOL[dtype],
                                    peer=peer[1][:, lo:hi], what=f"grad {dtype} rank {rank}")
                losses = [torch.zeros_like(loss) for _ in range(world)]
                dist.all_gather(losses, loss.detach())
                assert all(torch.equal(v, losses[0]) for v in losses), losses
    except BaseException:
        (Path(workdir) / f"err{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (NCCL)")
def test_gpu_vocab_parallel_over_nccl():
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    with tempfile.TemporaryDirectory() as d:
        try:
            mp.start_processes(_nccl_worker, args=(2, _free_port(), d), nprocs=2, join=True,
                               start_method="spawn")
        except Exception:
            errs = [f.read_text() for f in sorted(Path(d).glob("err*.txt"))]
            raise AssertionError("\n".join(errs) or "an NCCL rank failed") from None
