"""OnlineLabelSmoothing: the loss against its dense formula, the epoch statistics, state_dict, and
the all-reduce at the epoch boundary on a real 2-process gloo group (run under a deadline)."""

from __future__ import annotations

import datetime
import socket
import tempfile
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.autograd import gradcheck

import labelsmooth as ls


def dense_loss(x, y, soft, alpha, ignore_index=-100, reduction="mean"):
    """(N, K) float64: −Σ_c q_c log p_c with q = α e_y + (1 − α) S_y, mean over kept rows."""
    x = x.double()
    valid = y != ignore_index
    y0 = torch.where(valid, y, 0)
    q = alpha * F.one_hot(y0, x.shape[1]).double() + (1 - alpha) * soft.double()[y0]
    rows = -(q * torch.log_softmax(x, 1)).sum(1) * valid
    if reduction == "none":
        return rows
    return rows.sum() / valid.sum() if reduction == "mean" else rows.sum()


def dense_stats(batches, k, ignore_index=-100):
    """Class-wise mean softmax of correctly classified elements, and their counts (float64)."""
    sums = torch.zeros(k, k, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.float64)
    for x, y in batches:
        p = torch.softmax(x.double(), 1)
        for n in range(x.shape[0]):
            if y[n] != ignore_index and int(p[n].argmax()) == int(y[n]):
                sums[y[n]] += p[n]
                counts[y[n]] += 1
    return sums, counts


def test_first_epoch_is_label_smoothing():
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    ols = ls.OnlineLabelSmoothing(5, alpha=0.3, smoothing=0.2)
    # q = α e_y + (1 − α)((1 − ε) e_y + ε/K): label smoothing with ε' = (1 − α) ε
    torch.testing.assert_close(ols(x, y), ls.cross_entropy(x, y, label_smoothing=0.7 * 0.2),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_matches_dense_formula_and_gradient(reduction):
    k = 6
    ols = ls.OnlineLabelSmoothing(k, alpha=0.4, reduction=reduction).double()
    soft = torch.softmax(torch.randn(k, k, dtype=torch.float64) * 2, 1)
    ols.soft_targets.copy_(soft)
    x = torch.randn(12, k, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, k, (12,))
    y[4] = -100
    ols.eval()
    out = ols(x, y)
    torch.testing.assert_close(out, dense_loss(x.detach(), y, soft, 0.4, reduction=reduction),
                               rtol=1e-12, atol=1e-12)
    g, = torch.autograd.grad(out.sum(), x)
    ref = x.detach().clone().requires_grad_()
    g_ref, = torch.autograd.grad(dense_loss(ref, y, soft, 0.4, reduction=reduction).sum(), ref)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert gradcheck(lambda t: ols(t, y), (x,))


def test_spatial_inputs_and_ignored_padding():
    k = 4
    ols = ls.OnlineLabelSmoothing(k, alpha=0.5, ignore_index=255).double()
    ols.soft_targets.copy_(torch.softmax(torch.randn(k, k, dtype=torch.float64), 1))
    x = torch.randn(3, k, 5, dtype=torch.float64)
    y = torch.randint(0, k, (3, 5))
    y[0, 0] = 255
    xp = x.clone()
    xp[0, :, 0] = float("nan")
    xp.requires_grad_()
    ols.eval()
    out = ols(xp, y)
    flat = dense_loss(x.movedim(1, -1).reshape(-1, k), y.reshape(-1), ols.soft_targets, 0.5, 255)
    torch.testing.assert_close(out, flat, rtol=1e-12, atol=1e-12)
    out.backward()
    assert torch.equal(xp.grad[0, :, 0], torch.zeros(k, dtype=torch.float64))
    assert torch.isfinite(xp.grad).all()


def test_statistics_and_epoch_boundary():
    k = 4
    ols = ls.OnlineLabelSmoothing(k, alpha=0.5, smoothing=0.1)
    start = ols.soft_targets.clone()
    batches = []
    for _ in range(3):
        x = torch.randn(20, k) * 3
        y = torch.randint(0, k - 1, (20,))  # class k−1 never appears
        y[0] = -100
        batches.append((x, y))
        ols(x, y)
    ols.eval()
    ols(torch.randn(20, k) * 3, torch.randint(0, k, (20,)))  # eval mode records nothing
    sums, counts = dense_stats(batches, k)
    torch.testing.assert_close(ols.correct_sum.double(), sums, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ols.correct_count.double(), counts)
    ols.next_epoch()
    seen = counts > 0
    assert seen[: k - 1].all() and not seen[k - 1]
    torch.testing.assert_close(ols.soft_targets[seen].double(), (sums / counts[:, None])[seen],
                               rtol=1e-6, atol=1e-7)
    # the class without a correct prediction keeps its previous target (not a zero row)
    assert torch.equal(ols.soft_targets[k - 1], start[k - 1])
    torch.testing.assert_close(ols.soft_targets.sum(1), torch.ones(k))
    assert int(ols.epoch) == 1 and ols.correct_count.sum() == 0 and ols.correct_sum.sum() == 0
    # the new targets are used from now on
    x, y = batches[0]
    torch.testing.assert_close(ols(x, y), dense_loss(x, y, ols.soft_targets, 0.5).float(),
                               rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_mid_epoch():
    k = 5
    a = ls.OnlineLabelSmoothing(k, alpha=0.5)
    for _ in range(2):
        a(torch.randn(10, k) * 3, torch.randint(0, k, (10,)))
    a.next_epoch()
    a(torch.randn(10, k) * 3, torch.randint(0, k, (10,)))  # mid-epoch statistics
    state = a.state_dict()
    assert set(state) == {"soft_targets", "correct_sum", "correct_count", "epoch"}
    b = ls.OnlineLabelSmoothing(k, alpha=0.5)
    b.load_state_dict(state)
    for name in state:
        assert torch.equal(getattr(a, name), getattr(b, name))
    a.next_epoch()
    b.next_epoch()
    assert torch.equal(a.soft_targets, b.soft_targets) and int(b.epoch) == 2


def test_errors():
    with pytest.raises(ValueError, match="`alpha`"):
        ls.OnlineLabelSmoothing(3, alpha=1.5)
    with pytest.raises(ValueError, match="`smoothing`"):
        ls.OnlineLabelSmoothing(3, smoothing=-0.1)
    with pytest.raises(ValueError, match="`num_classes`"):
        ls.OnlineLabelSmoothing(0)
    with pytest.raises(TypeError, match="`num_classes`"):
        ls.OnlineLabelSmoothing(3.0)
    ols = ls.OnlineLabelSmoothing(3)
    with pytest.raises(ValueError, match="num_classes=3"):
        ols(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        ols(torch.randn(2, 3), torch.tensor([0, 3]))


# ------------------------------------------------------------------------------------------------
# torch.distributed: two gloo ranks, each with its own batches
# ------------------------------------------------------------------------------------------------

START_METHOD = "fork" if "fork" in mp.get_all_start_methods() else "spawn"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, workdir: str) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=30))
        data = torch.load(Path(workdir) / "in.pt")
        ols = ls.OnlineLabelSmoothing(data["k"], alpha=0.5)
        for x, y in data["batches"][rank]:
            ols(x, y)
        ols.next_epoch()
        torch.save(ols.state_dict(), Path(workdir) / f"out{rank}.pt")
        dist.destroy_process_group()
    except BaseException:
        (Path(workdir) / f"err{rank}.txt").write_text(traceback.format_exc())
        raise


def test_next_epoch_all_reduces_across_two_gloo_ranks():
    k, world = 5, 2
    batches = [[(torch.randn(8, k) * 3, torch.randint(0, k, (8,))) for _ in range(2)]
               for _ in range(world)]
    batches[1][0][1][0] = -100
    with tempfile.TemporaryDirectory() as d:
        torch.save({"k": k, "batches": batches}, Path(d) / "in.pt")
        ctx = mp.start_processes(_worker, args=(world, _free_port(), d), nprocs=world, join=False,
                                 start_method=START_METHOD)
        deadline = time.monotonic() + 90
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail("gloo ranks did not finish within 90 s (hang in next_epoch?)")
        except mp.ProcessRaisedException:
            errs = [f.read_text() for f in Path(d).glob("err*.txt")]
            pytest.fail("a rank failed:\n" + "\n".join(errs))
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        states = [torch.load(Path(d) / f"out{r}.pt") for r in range(world)]
    single = ls.OnlineLabelSmoothing(k, alpha=0.5)
    for rank_batches in batches:
        for x, y in rank_batches:
            single(x, y)
    single.next_epoch()
    for state in states:
        assert torch.equal(state["soft_targets"], states[0]["soft_targets"])
        torch.testing.assert_close(state["soft_targets"], single.soft_targets, rtol=1e-6,
                                   atol=1e-7)
        assert int(state["epoch"]) == 1 and state["correct_count"].sum() == 0
